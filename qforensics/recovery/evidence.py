"""Recovery as a whole: open the image and what it needs (with consent), pick the view, gather the
evidence a damaged image still holds, and write the guest disk.

Evidence, in the order it is trusted:
1. the active L1/L2 tables (or the snapshot's, with ``--snapshot``): what QEMU reads;
2. for guest ranges those tables cannot give (unreadable tables, refused entries, clusters past the
   end of the file), a snapshot whose L1 still maps the range;
3. L2 tables found by scanning unreferenced clusters (recovery/scan.py), placed in the guest from a
   stale L1 copy, a snapshot L2 they resemble, dedup logical offsets, or the only L1 slot left.
Every range's source is in the log; what none of them gives is logged as missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .. import __version__
from ..errors import ImageOpenError, QforensicsError, UsageError
from ..evidence.file import FileLayer
from ..layers.chain import Consent, open_chain
from ..layers.extent import Kind
from ..layers.stack import read_run
from ..model import Image
from ..model.snapshot_table import distinct_snapshots, find_snapshot
from ..paths import refuse_overwrite
from ..checks import check_image
from ..findings import Severity
from .carve import carve
from .recover import Recovery, recover
from .scan import augment
from .trust import Faults


MAX_VIEWS = 4  # snapshot views kept open at once by the fallback
USABLE = (Kind.NORMAL, Kind.COMPRESSED, Kind.ZERO_PLAIN, Kind.ZERO_ALLOC)  # what a snapshot may stand in with


@dataclass
class RecoverResult:
    recovery: Recovery
    notes: list[str] = field(default_factory=list)  # one-line remarks for stderr (and the log)


def _cipher(img: Image, passphrase: bytes | None, notes: list[str]):
    """The sector cipher of an encrypted image, with the key checked as far as the format allows."""
    if not img.header.crypt_method:
        return None
    from ..crypto import open_cipher, verify_aes_key

    if passphrase is None:
        kind = "LUKS" if img.header.crypt_method == 2 else "AES"
        raise UsageError(f"qcow2 header: the image is encrypted ({kind}); give --passphrase-file")
    cipher = open_cipher(img, passphrase)
    if img.header.crypt_method == 1:
        verdict, why = verify_aes_key(img, cipher)
        if verdict == "wrong":
            raise QforensicsError(f"AES passphrase: wrong passphrase ({why})")
        if verdict == "unverifiable":
            notes.append(f"AES passphrase not verified: {why}; the output may be garbage")
    return cipher


def _snapshot_fallback(img: Image, top, skip_id: str | None, faults: Faults):
    """fallback(start, end) for `recover`: the runs of [start, end) that some snapshot's L1 maps, through
    structures no check faults (a faulted snapshot is no evidence). Views are made when first needed (an
    intact image never pays for them)."""
    from ..layers.qcow2 import Qcow2Layer

    snaps = [s for s in distinct_snapshots(img.snapshots, skip_id) if s.id not in faults.snapshots]
    views: dict[str, Qcow2Layer] = {}

    def view(snap) -> Qcow2Layer:
        if snap.id not in views:
            if len(views) >= MAX_VIEWS:  # each holds its L1 (a hostile one is millions of entries)
                del views[next(iter(views))]
            views[snap.id] = Qcow2Layer(img, snapshot=snap, backing=top.backing, cipher=top.cipher,
                                        data_file=top.data if top.data is not img.file else None)
        return views[snap.id]

    def usable(snap, lo: int, hi: int):
        """The runs of [lo, hi) the snapshot maps to data or zeros through structures no check faults."""
        v = view(snap)
        for batch in v.runs(lo, hi):
            doubt = faults.rows(v, batch, data=v.data is img.file)
            for i, ext in enumerate(batch.rows()):
                if ext.kind in USABLE and not ext.reason and i not in doubt:
                    data = read_run(v, ext, ext.start, ext.length)
                    if data is not None:
                        yield ext, data

    def fallback(start: int, end: int):
        """The newest snapshot that maps each part wins (it is the closest to the lost active state)."""
        gaps, found = [(start, end)], []
        for snap in snaps:
            if not gaps:
                break
            left = []
            for lo, hi in gaps:
                pos = lo
                for ext, data in usable(snap, lo, hi):
                    if ext.start > pos:
                        left.append((pos, ext.start))
                    found.append((ext.start, ext.length, data, f"snapshot {snap.id} ({snap.name})"))
                    pos = ext.end
                if pos < hi:
                    left.append((pos, hi))
            gaps = left
        yield from sorted(found, key=lambda f: f[0])

    return fallback if snaps else None


def _open_image(image: str, notes: list[str], scan: bool = False) -> tuple[Image, bool]:
    """The image; when its header holds a field no qcow2 image can have (qemu refuses it) but the tables
    show the reading it must have, the image as if the header said so; when the header is lost (the magic
    gone) and ``scan`` is asked, the image under a header rebuilt from its structures. The notes say what was
    inferred and why. check and info never come here: they refuse such files as QEMU does. Also returns
    whether the virtual size is one the image states (False: a rebuilt header's estimate, which placed
    windows may extend)."""
    from ..model.image import HEADER_PROBE
    from ..model.qcow2_header import MAGIC
    from .geometry import infer_header
    from .headerless import synthesize

    with FileLayer(image) as file:
        probe = file.read(0, HEADER_PROBE)
        if probe[:4] != MAGIC:
            synth = synthesize(file) if scan else None
            if synth is None:
                return _refused(image, scan), True
            notes.extend(synth.notes)
            return Image(image, header_bytes=synth.header_bytes()), synth.size_stated
        found = infer_header(file, probe)
    if found is None:
        return Image(image), True
    overrides, why = found
    notes.extend(why)
    return Image(image, overrides=overrides), True


def _refused(image: str, scan: bool) -> Image:
    """The image as the model opens it, which raises the header's own error (as qemu refuses it), saying
    what --scan could or could not do about it."""
    try:
        return Image(image)
    except ImageOpenError as exc:
        hint = ("--scan found no structures to rebuild a header from (no cluster size that L2-shaped clusters "
                "agree on)" if scan else "recover --scan rebuilds a lost header from the structures that survive")
        raise ImageOpenError(f"{exc.message}; {hint}", structure=exc.structure, offset=exc.offset, code=exc.code,
                             qemu_message=exc.qemu_message) from None


def recover_image(image: str, out: Path, *, passphrase: bytes | None = None, backing_dir: Path | None = None,
                  allow_image_dir: bool = False, snapshot: str | None = None, scan: bool = False,
                  carve_dir: Path | None = None, log_path: Path | None = None,
                  argv: list[str] | None = None) -> RecoverResult:
    """Recover the guest disk of ``image`` into ``out`` (raw, sparse); see the module docstring."""
    notes: list[str] = []
    opened: list = []
    img, size_stated = _open_image(image, notes, scan)
    with img:
        try:
            cipher = _cipher(img, passphrase, notes)
            snap = find_snapshot(img.snapshots, snapshot) if snapshot else None
            layer = open_chain(img, Consent(backing_dir, allow_image_dir), snapshot=snap, cipher=cipher,
                               opened=opened)
            inputs = [img.path] + [Path(f.path) for f in opened]
            refuse_overwrite(out, inputs)
            if log_path is not None:
                refuse_overwrite(log_path, inputs)
            top_label = "active" if snap is None else f"snapshot {snap.id} ({snap.name})"
            # the check's findings say which structures cannot be trusted; its layout is the command's one
            report = check_image(img, light=True)
            faults = Faults.of(img, report)
            faults.confirm_shared(layer)
            if faults.capped:
                notes.append(f"check: more {faults.capped} findings than are listed: the faulted structures are "
                             "not all known, so no range is certain")
            view_fault = faults.snapshots.get(snap.id) if snap is not None else None
            view_fault = view_fault or (f"{faults.capped}.more" if faults.capped else None)
            found = augment(img, layer, report.layout, snapshot=snap, force=scan, faulted=faults.slots(layer),
                            overcounted=report.stats.overcounted, size_stated=size_stated)
            layer = found.view
            notes += found.notes
            damaged = any(f.severity == Severity.CORRUPTION for f in report.findings)
            # the check's findings and layout are let go before the copy (the layout kept for --carve-dir)
            lay, report = report.layout if carve_dir is not None else None, None
            header = {"tool": f"qforensics {__version__}", "image": str(image), "output": str(out),
                      "view": top_label, "time": datetime.now(UTC).isoformat(timespec="seconds"),
                      "command": argv or [], "header": img.header_source, "notes": notes,
                      "unplaced-evidence": found.listing()}
            rec = recover(layer, out, log_path=log_path, top_label=top_label, header=header,
                          fallback=_snapshot_fallback(img, layer, snap.id if snap else None, faults),
                          faults=faults, view_fault=view_fault, unplaced=found.unplaced(),
                          watch_zeros=damaged)
            if carve_dir is not None:
                notes.append(carve(img, carve_dir, inputs=inputs, lay=lay, windows=found.unplaced_tables,
                                   view=layer))
        finally:
            for f in opened:
                f.close()
    return RecoverResult(rec, notes)
