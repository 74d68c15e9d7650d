"""The image model: a qcow2 file opened read-only, parsed lazily and boundedly.

Every structure is read at most once and never beyond the end of the file,
whatever the header claims. Problems become findings; only a file that is
not qcow2 at all raises (ImageOpenError).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ImageOpenError
from ..findings import Finding, Severity
from ..evidence.file import FileLayer
from ..text import clip
from . import tables
from .qcow2_header_extensions import (BACKING_FORMAT, BITMAPS, DEDUPLICATION, EXTERNAL_DATA_FILE,
                                      FULL_DISK_ENCRYPTION, BitmapsBody, Extensions, read_extensions)
from .qcow2_header import (KAITAI_TO_SPEC, FIELDS, MAGIC, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, QCOW_CRYPT_LUKS,
                     QCOW_MAX_L1_SIZE, QCOW_MAX_REFTABLE_SIZE, Header, check_header, feature_names, parse_header)
from .kaitai import StructureError, decode_name
from .snapshot_table import Snapshot, read_snapshots

if TYPE_CHECKING:  # the optional structures' readers are imported when an image has them
    from .bitmaps import Bitmap
    from .dedup_table import DedupTable
    from .draft_dirty_bitmaps import DraftBitmap
    from .luks1_header import LuksHeader

HEADER_PROBE = 4096
OVERRIDABLE = frozenset(FIELDS) - {"padding"}  # header fields recover's repair views may replace
MAX_CLUSTER0_READ = 1 << MAX_CLUSTER_BITS
# L1 entries read across the active and the distinct snapshot tables (two tables of QEMU's maximum): past
# it, snapshot tables are not walked (4096 snapshots of 32 MiB would be 128 GiB)
MAX_L1_WALK = 1 << 23
# bytes of distinct L2 tables one walk reads beyond the file's size: the distinct tables at aligned offsets
# inside the file are at most the file, so only tables at unaligned offsets (which overlap one another, up
# to cluster_size / 512 of them per cluster: 12 GB for a 100 MB file) go past it
L2_WALK_SLACK = 32 << 20
# header fields the generated parser refuses (their ksy `valid`), with QEMU's refusal for the same value
PARSE_REFUSALS = {
    "cluster_bits": ("header.cluster_bits_unsupported", "Unsupported cluster size: 2^{}"),
    "header_length": ("header.header_length_too_short", "qcow2 header too short"),
    "refcount_order": ("header.refcount_order_too_large",
                       "Reference count entry width too large; may not exceed 64 bits"),
}
# qcow2_do_open in check mode (BDRV_O_CHECK, how `qemu-img check` opens): an empty refcount table is allowed
# (the check counts every reference as a corruption) and the snapshot table is neither validated nor read
# (qcow2_check_read_snapshot_table judges it during the check, which then fails instead)
CHECK_MODE_ACCEPTS = ("header.refcount_table_missing", "header.snapshot_table", "snapshot.")


@dataclass
class L1Group:
    """One L1 table (spec "Snapshots": each snapshot has its own copy) and every owner that names it: the
    active one, or the snapshots whose entries give the same offset and size. QEMU walks the table once
    per owner; the walk is the same each time, so it is done once and its references multiplied."""

    offset: int
    entries: int
    owners: list[str]  # "active", "snapshot <id>" (ids clipped: they are repeated in every label)
    snapshots: list[Snapshot]  # the snapshots among the owners, in table order
    readable: int  # entries inside the file; the rest read as zeros and reference nothing
    walked: bool  # False: past the budget of L1 entries (MAX_L1_WALK) or QEMU's limit; only the table is counted


@dataclass(frozen=True)
class L1References:
    """The nonzero entries of an L1 table (spec "L1 table entry") and the distinct L2 offsets they name."""

    index: np.ndarray  # the L1 index of each nonzero entry
    entries: np.ndarray  # those entries
    distinct: np.ndarray  # the distinct L2 offsets (bits 9-55) in the order first named
    first: np.ndarray  # for each, the position (in ``index``) of the entry naming it first
    counts: np.ndarray  # for each, how many entries name it
    inverse: np.ndarray  # for each entry, the position of its L2 offset in ``distinct``


@dataclass(frozen=True)
class Unreadable:
    """A value that could not be read; ``reason`` says why (volatility's UnreadableValue)."""

    reason: str

    def __bool__(self) -> bool:
        return False


def check_overrides(overrides: Mapping[str, int | bool]) -> dict[str, int | bool]:
    """The header overrides, refused (ValueError) when a name is no header field or a value does not fit."""
    out: dict[str, int | bool] = {}
    for name, value in overrides.items():
        if name == "extended_l2":
            out[name] = bool(value)
            continue
        if name not in OVERRIDABLE:
            raise ValueError(f"{name!r} is not a header field that can be overridden")
        value = int(value)
        if not 0 <= value < 1 << (8 * FIELDS[name][1]):
            raise ValueError(f"header field {name} cannot hold {value}")
        out[name] = value
    return out


def with_fields(data: bytes, overrides: Mapping[str, int | bool]) -> bytes:
    """The header's bytes with fields replaced (``extended_l2`` sets or clears incompatible bit 4 after any
    incompatible_features value); a field the bytes are too short to hold is left out, as
    qcow2_header.with_cluster_bits leaves it."""
    out = bytearray(data)
    for name, value in overrides.items():
        if name == "extended_l2":
            continue
        at, size = FIELDS[name]
        if len(out) >= at + size:
            out[at:at + size] = int(value).to_bytes(size, "big")
    if "extended_l2" in overrides:
        at, size = FIELDS["incompatible_features"]
        if len(out) >= at + size:
            bits = int.from_bytes(out[at:at + size], "big") & ~(1 << 4)
            out[at:at + size] = (bits | (1 << 4 if overrides["extended_l2"] else 0)).to_bytes(size, "big")
    return bytes(out)


def c_string(raw: bytes) -> str:
    """A name as QEMU reads it: a C string, ending at the first NUL byte."""
    return decode_name(raw.split(b"\0", 1)[0])


def name_findings(raw: bytes, what: str, offset: int) -> list[Finding]:
    """A name stored with a NUL byte inside it: QEMU reads only what comes before (spec: names are not
    NUL-terminated), so the bytes after it are invisible to QEMU."""
    cut = raw.find(b"\0")
    if cut < 0:
        return []
    rest = raw[cut:].strip(b"\0")
    seen = f"QEMU reads it as {clip(c_string(raw))!r}" if cut else "QEMU reads an empty name"
    if what == "backing file name" and not cut:
        seen += " and opens no backing file"
    return [Finding("header.name_nul", Severity.WARNING,
                    f"the {what} ({len(raw)} bytes) holds a NUL byte at byte {cut}: {seen}"
                    + (f"; {len(rest)} non-zero bytes follow it, which QEMU never reads" if rest else ""),
                    what, offset + cut)]


class Image:
    """A qcow2 image opened read-only.

    >>> img = Image("disk.qcow2")            # doctest: +SKIP
    >>> img.header.cluster_size, len(img.snapshots), img.l1_table()[:4]
    """

    def __init__(self, path: str | os.PathLike[str], *, cluster_bits: int | None = None,
                 overrides: Mapping[str, int | bool] | None = None, header_bytes: bytes | None = None):
        """Recover's repair views; the file itself is never written. ``overrides`` replaces header fields
        (spec names from qcow2_header.FIELDS, and ``extended_l2`` for incompatible bit 4) by the values the
        structures show (recovery/geometry.py ``infer_header``); ``cluster_bits`` is one such field.
        ``header_bytes`` is a whole synthetic header (recovery/headerless.py) parsed instead of the file's
        first bytes: cluster 0 is then those bytes followed by zeros, nothing of the file's cluster 0."""
        self.overrides: dict[str, int | bool] = check_overrides(
            {**(overrides or {}), **({} if cluster_bits is None else {"cluster_bits": cluster_bits})})
        self.path = Path(path)
        self.file = FileLayer(path)
        self._header_bytes = None if header_bytes is None else bytes(header_bytes[:MAX_CLUSTER0_READ])
        # where the header came from: the file's bytes, repaired fields of them, or a synthetic header
        self.header_source = ("synthetic" if self._header_bytes is not None else "repaired" if self.overrides
                              else "file")
        try:
            self._open()
        except BaseException:
            self.file.close()
            raise

    def _open(self) -> None:
        probe = self.file.read(0, HEADER_PROBE) if self._header_bytes is None else self._header_bytes[:HEADER_PROBE]
        if self.overrides:
            probe = with_fields(probe, self.overrides)
        if len(probe) < 4 or probe[:4] != MAGIC:
            raise ImageOpenError(f"not a qcow2 image (magic {probe[:4].hex() or 'missing'}, expected 514649fb)",
                                 structure="qcow2 header", offset=0)
        version = int.from_bytes(probe[4:8], "big")
        if version not in (2, 3):
            # qemu probes a version below 2 as another format (1: qcow); from 4 on it is qcow2's refusal
            raise ImageOpenError(f"version is {version}; qcow2 has versions 2 and 3"
                                 + (" (version 1 is the older qcow format)" if version == 1 else ""),
                                 structure="qcow2 header", offset=FIELDS["version"][0],
                                 code="header.version_unsupported" if version > 3 else None,
                                 qemu_message=f"Unsupported qcow2 version {version}" if version > 3 else None)
        try:
            self.header: Header = parse_header(probe)
        except StructureError as exc:
            spec = KAITAI_TO_SPEC.get(exc.field or "", exc.field)
            offset = FIELDS.get(spec or "", (0, 0))[0]
            message = exc.message.replace(exc.field, spec) if exc.field and spec else exc.message
            value = int.from_bytes(probe[offset:offset + 4], "big") if spec in PARSE_REFUSALS else 0
            code, qemu = PARSE_REFUSALS.get(spec or "", (None, None))
            raise ImageOpenError(message, structure="qcow2 header", offset=offset, code=code,
                                 qemu_message=qemu.format(value) if qemu else None) from None
        h = self.header
        self.geometry_ok = MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS
        self.cluster0 = probe if not self.geometry_ok else self._cluster0(min(h.cluster_size, MAX_CLUSTER0_READ))
        self.extensions: Extensions = read_extensions(h, self.cluster0)
        self.feature_table = self.extensions.feature_table()
        self.open_findings: list[Finding] = check_header(h, self.file.size, self.extensions.qemu_feature_entries())
        self.open_findings += self.extensions.findings
        if h.crypt_method == QCOW_CRYPT_LUKS and self.extensions.first(FULL_DISK_ENCRYPTION) is None:
            self.open_findings.append(Finding("header.crypto_header_missing", Severity.CORRUPTION,
                                              "crypt_method is 2 (LUKS) but there is no full disk encryption "
                                              "header pointer extension", "qcow2 header", FIELDS["crypt_method"][0],
                                              qemu_message=f"Missing CRYPTO header for crypt method {h.crypt_method}"))
        if h.has_data_file and self.extensions.first(EXTERNAL_DATA_FILE) is None:
            self.open_findings.append(Finding("header.data_file_name_missing", Severity.WARNING,
                                              "incompatible bit 2 (external data file) is set but no external data "
                                              "file name extension says which file; QEMU needs the data-file option",
                                              "qcow2 header", FIELDS["incompatible_features"][0],
                                              qemu_message="'data-file' is required for this image",
                                              qemu_io_only=True))
        if h.autoclear_features & 2 and not h.has_data_file:
            # `qemu-img info` accepts it; a full open (check, convert, qemu-io) refuses it
            self.open_findings.append(Finding("header.data_file_raw_without_data_file", Severity.CORRUPTION,
                                              "autoclear_features bit 1 (data-file-raw) is set without "
                                              "incompatible_features bit 2 (external data file)", "qcow2 header",
                                              FIELDS["autoclear_features"][0],
                                              qemu_message="data-file-raw requires a data file", qemu_io_only=True))
        if h.backing_file_offset:
            raw = self.file.read(h.backing_file_offset, min(h.backing_file_size, 1023, MAX_CLUSTER0_READ))
            self._backing_name = c_string(raw) or None
            self.open_findings += name_findings(raw, "backing file name", h.backing_file_offset)
        else:
            self._backing_name = None
        for magic, what in ((BACKING_FORMAT, "backing file format name"),
                            (EXTERNAL_DATA_FILE, "external data file name")):
            ext = self.extensions.first(magic)
            if ext is not None:
                self.open_findings += name_findings(ext.data, what, ext.data_offset)

    def _cluster0(self, size: int) -> bytes:
        """Cluster 0 as the model reads it: the file's (its header fields overridden), or the synthetic
        header followed by zeros."""
        if self._header_bytes is not None:
            return with_fields(self._header_bytes[:size], self.overrides).ljust(size, b"\0")
        raw = self.file.read(0, size)
        return with_fields(raw, self.overrides) if self.overrides else raw

    # -- small structures ---------------------------------------------------------------------------------

    @property
    def findings(self) -> list[Finding]:
        """Everything the model notices in the structures it reads: the header and its extensions, the
        snapshot table, the bitmap directory, the LUKS header and the draft structures, each read (once) for
        the asking, so the answer never depends on what was read before."""
        out = list(self.open_findings)
        for attr in ("_snapshots", "_bitmaps", "_luks", "_dedup", "_draft_bitmaps"):
            out += getattr(self, attr)[1]
        return out

    @property
    def refusals(self) -> list[Finding]:
        """Findings for which `qemu-img info` 7.2 refuses the image (reads what qemu reads at open first)."""
        return [f for f in self.open_refusals if not f.qemu_io_only]

    @property
    def open_refusals(self) -> list[Finding]:
        """Findings for which a full QEMU open (check, convert, qemu-io) fails."""
        return [f for f in self.findings if f.refused_by_qemu]

    @property
    def check_refusals(self) -> list[Finding]:
        """Findings for which `qemu-img check` cannot open the image (check mode: CHECK_MODE_ACCEPTS are not)."""
        return [f for f in self.open_refusals if not f.code.startswith(CHECK_MODE_ACCEPTS)]

    @property
    def feature_names(self) -> dict[tuple[str, int], str]:
        return feature_names(self.feature_table)

    @property
    def backing_file(self) -> str | None:
        """The backing file name as QEMU reads it: up to its first NUL byte, None when that leaves nothing
        (QEMU then opens no backing file). Never opened here."""
        return self._backing_name

    @cached_property
    def backing_format(self) -> str | None:
        ext = self.extensions.first(BACKING_FORMAT)
        return c_string(ext.data) if ext is not None else None

    @cached_property
    def data_file(self) -> str | None:
        """The external data file name from its extension, up to its first NUL as QEMU reads it (never opened
        here)."""
        ext = self.extensions.first(EXTERNAL_DATA_FILE)
        return c_string(ext.data) if ext is not None else None

    @cached_property
    def _snapshots(self) -> tuple[list[Snapshot], list[Finding]]:
        return read_snapshots(self.header, self.file.read, self.file.size)

    @property
    def snapshots(self) -> list[Snapshot]:
        return self._snapshots[0]

    @cached_property
    def bitmaps_extension(self):
        """The upstream (24-byte) bitmaps extension body, or None."""
        ext = self.extensions.first(BITMAPS)
        if ext is None or not isinstance(ext.body, BitmapsBody):
            return None
        return ext.body

    @cached_property
    def _bitmaps(self) -> tuple[list[Bitmap], list[Finding]]:
        ext = self.bitmaps_extension
        if ext is None:
            return [], []
        from .bitmaps import check_bitmap_tables, read_bitmap_directory

        bitmaps, findings = read_bitmap_directory(self.header, self.file.read, self.file.size, ext.nb_bitmaps,
                                                  ext.bitmap_directory_offset,
                                                  min(ext.bitmap_directory_size, 1024 * 65535))
        if not any(f.qemu_message for f in findings):
            findings += check_bitmap_tables(self.header, bitmaps, self.bitmap_table)
        return bitmaps, findings

    @property
    def bitmaps(self) -> list[Bitmap]:
        return self._bitmaps[0]

    @cached_property
    def _luks(self) -> tuple[LuksHeader | None, list[Finding]]:
        ext = self.extensions.first(FULL_DISK_ENCRYPTION)
        if self.header.crypt_method != QCOW_CRYPT_LUKS or ext is None or ext.body is None:
            return None, []
        from .luks1_header import read_luks_header

        header, findings = read_luks_header(self.file.read, ext.body.offset, ext.body.length)
        if any(f.code.startswith("extension.crypto_") and f.refused_by_qemu for f in self.extensions.findings):
            # qemu stops at the refused pointer and never reads the header: what is wrong with it is ours to
            # say, not a second refusal of qemu's
            findings = [replace(f, qemu_message=None) for f in findings]
        return header, findings

    @property
    def luks(self) -> LuksHeader | None:
        return self._luks[0]

    @cached_property
    def dedup_extension(self):
        ext = self.extensions.first(DEDUPLICATION)
        return ext.body if ext is not None else None

    @cached_property
    def _dedup(self) -> tuple[DedupTable | None, list[Finding]]:
        d = self.dedup_extension
        if d is None or not self.geometry_ok:
            return None, []
        from .dedup_table import read_dedup_table

        return read_dedup_table(self.header, self.file.read, self.file.size, d.dedup_table_offset, d.dedup_table_size)

    @property
    def dedup_table(self) -> DedupTable | None:
        """Level 1 of the draft deduplication table (seed 000), when the extension is present."""
        return self._dedup[0]

    @cached_property
    def _draft_bitmaps(self) -> tuple[list[DraftBitmap], list[Finding]]:
        ext = self.extensions.first(BITMAPS)
        if ext is None or ext.length != 12 or ext.body is None:
            return [], []
        from .draft_dirty_bitmaps import read_draft_bitmaps

        return read_draft_bitmaps(self.file.read, self.file.size, ext.body.nb_dirty_bitmaps,
                                  ext.body.dirty_bitmaps_offset)

    @property
    def draft_bitmaps(self) -> list[DraftBitmap]:
        """Bitmaps in the 2015 draft layout (seed 003), when the extension has its 12-byte body."""
        return self._draft_bitmaps[0]

    # -- bulk tables (numpy) ------------------------------------------------------------------------------

    def read_table(self, offset: int, nbytes: int, limit: int) -> bytes | Unreadable:
        """Bytes of a table, refused above ``limit`` and clipped at the end of the file."""
        if nbytes > limit:
            return Unreadable(f"table of {nbytes} bytes at 0x{offset:x} exceeds the {limit}-byte limit")
        if offset >= self.file.size:
            return Unreadable(f"table at 0x{offset:x} starts past the end of the file (0x{self.file.size:x})")
        return self.file.read(offset, nbytes)

    def l1_table(self, offset: int | None = None, entries: int | None = None) -> np.ndarray | Unreadable:
        """L1 entries as uint64 (the active table by default); short if the file ends early."""
        h = self.header
        offset = h.l1_table_offset if offset is None else offset
        entries = h.l1_size if entries is None else entries
        raw = self.read_table(offset, entries * 8, QCOW_MAX_L1_SIZE)
        return raw if isinstance(raw, Unreadable) else tables.l1_entries(raw)

    def l1_groups(self, budget: int | None = None) -> list[L1Group]:
        """The active L1 and the snapshot L1s QEMU would follow, snapshots naming the same table (offset and
        size) in one group. The active table is always walked; a snapshot group only while its readable
        entries fit in what is left of ``budget`` (entries, across the groups walked). Worked out anew each
        time: a caller with several consumers works them out once and passes them on."""
        budget = MAX_L1_WALK if budget is None else budget
        h = self.header
        size = self.file.size

        def readable(offset: int, entries: int) -> int:
            return max(0, min(entries, -(-(size - offset) // 8)))

        # an active L1 over QEMU's limit: qemu refuses the image (header.l1_table_too_large) and reads nothing
        active = L1Group(h.l1_table_offset, h.l1_size, ["active"], [], readable(h.l1_table_offset, h.l1_size),
                         h.l1_size <= QCOW_MAX_L1_SIZE // 8)
        budget -= active.readable
        groups: dict[tuple[int, int], L1Group] = {}
        for s in self.snapshots:
            if s.l1_table_offset % h.cluster_size or s.l1_size > QCOW_MAX_L1_SIZE // 8:
                continue  # qemu refuses the entry (check names it)
            g = groups.get((s.l1_table_offset, s.l1_size))
            if g is None:
                n = readable(s.l1_table_offset, s.l1_size)
                g = groups[s.l1_table_offset, s.l1_size] = L1Group(s.l1_table_offset, s.l1_size, [], [], n,
                                                                    n <= budget)
                if g.walked:
                    budget -= n
            g.owners.append(f"snapshot {clip(s.id)}")
            g.snapshots.append(s)
        return [active, *groups.values()]

    def l2_walk_budget(self) -> int:
        """Bytes of distinct L2 tables inside the file a walk reads (past the file they read as zeros)."""
        return self.file.size + L2_WALK_SLACK

    def l1_references(self, offset: int, entries: int) -> L1References:
        """The nonzero entries of an L1 table as QEMU reads it (past the end of the file the table reads as
        zeros, which reference nothing, so only the part inside the file is read), and the distinct L2
        tables they name (worked out anew each time: a caller with several consumers passes them the value)."""
        n = max(0, min(entries, -(-(self.file.size - offset) // 8)))
        raw = self.file.read(offset, n * 8) if n else b""
        l1 = tables.l1_entries(raw.ljust(n * 8, b"\0"))
        index = np.flatnonzero(l1)
        l1 = l1[index]
        return L1References(index, l1, *tables.repeats(l1 & tables.L1E_OFFSET_MASK))

    def l2_references(self, offset: int, entries: int,
                      refs: L1References | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The distinct cluster-aligned L2 tables an L1 table names: their offsets, the L1 index that first
        names each, and how many entries name each (arrays: 4M entries may name a few tables over and over).
        ``refs``: the table's ``l1_references``, if the caller has them."""
        refs = self.l1_references(offset, entries) if refs is None else refs
        keep = np.flatnonzero((refs.distinct != 0) & (refs.distinct % np.uint64(self.header.cluster_size) == 0))
        return refs.distinct[keep], refs.index[refs.first[keep]], refs.counts[keep]

    def l2_batches(self, offsets: list[int], max_entries: int = 1 << 18):
        """Decode L2 tables in batches: (offsets, descriptors (B, n), subcluster bitmaps (B, n) or None).

        Bytes past the end of the file read as zeros, as QEMU reads them; offsets need not be aligned.
        """
        h = self.header
        per_batch = max(1, max_entries // h.l2_entries)
        cs = h.cluster_size
        # one read buffer for every batch (the arrays yielded are copies): fresh pages cost page faults
        buffer = np.empty(min(len(offsets), per_batch) * cs, dtype=np.uint8)
        for start in range(0, len(offsets), per_batch):
            chunk = offsets[start:start + per_batch]
            raw = buffer[:len(chunk) * cs]
            view = memoryview(raw)
            k = 0
            while k < len(chunk):  # tables that follow each other in the file are read in one go
                run = 1
                while k + run < len(chunk) and chunk[k + run] == chunk[k] + run * cs:
                    run += 1
                data = self.file.read(chunk[k], run * cs)
                view[k * cs:k * cs + len(data)] = data
                if len(data) < run * cs:
                    raw[k * cs + len(data):(k + run) * cs] = 0  # past the end of the file
                k += run
            words = raw.view(">u8").astype(np.uint64).reshape(len(chunk), -1)
            if h.extended_l2:
                yield chunk, words[:, 0::2], words[:, 1::2]
            else:
                yield chunk, words, None

    def l2_table(self, offset: int) -> tuple[np.ndarray, np.ndarray | None] | Unreadable:
        """Descriptors (and extended-L2 bitmaps) of the L2 table at ``offset``, always a whole table: the
        part past the end of the file reads as zeros, as QEMU reads it (so callers index it by L2 index)."""
        if not self.geometry_ok:
            return Unreadable(f"cluster_bits {self.header.cluster_bits} is not usable")
        cs = self.header.cluster_size
        raw = self.read_table(offset, cs, cs)
        if isinstance(raw, Unreadable):
            return raw
        return tables.l2_entries(raw.ljust(cs, b"\0"), self.header.extended_l2)

    def refcount_table(self) -> np.ndarray | Unreadable:
        h = self.header
        if not self.geometry_ok:
            return Unreadable(f"cluster_bits {h.cluster_bits} is not usable")
        raw = self.read_table(h.refcount_table_offset, h.refcount_table_clusters * h.cluster_size,
                              QCOW_MAX_REFTABLE_SIZE)
        return raw if isinstance(raw, Unreadable) else tables.refcount_table(raw)

    def refcount_block(self, offset: int) -> np.ndarray | Unreadable:
        h = self.header
        if not self.geometry_ok:
            return Unreadable(f"cluster_bits {h.cluster_bits} is not usable")
        raw = self.read_table(offset, h.cluster_size, h.cluster_size)
        return raw if isinstance(raw, Unreadable) else tables.refcount_block(raw, h.refcount_order)

    def bitmap_table(self, bitmap: Bitmap) -> np.ndarray | Unreadable:
        """Entries of one bitmap's table (spec "Bitmap table"), bounded by QEMU's BME_MAX_TABLE_SIZE."""
        from .bitmaps import BME_MAX_TABLE_SIZE

        raw = self.read_table(bitmap.table_offset, bitmap.table_size * 8, BME_MAX_TABLE_SIZE * 8)
        return raw if isinstance(raw, Unreadable) else tables.bitmap_table(raw)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
