"""The backing chain: raw layers, opening backing and data files with the user's consent, and
resolving a guest range through the chain to the layer that provides each byte.

A file name written in an image is data. It is opened only inside a folder
the user named (``--backing-dir``), or the image's own folder when the user
allowed it, and never outside it (qforensics.paths.resolve_inside). Chains
that loop, or go deeper than MAX_CHAIN, end with an error naming the image.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import QforensicsError
from ..model import Image
from ..text import clip
from .extent import Extent, Kind, Runs
from .file import FileLayer

MAX_CHAIN = 64  # layers; QEMU has no fixed limit, a deeper chain is taken as hostile


class ChainError(QforensicsError):
    """A backing or data file cannot be opened as the image asks (not allowed, missing, looping).

    ``qemu_message`` is what qemu-img 7.2 prints after "Could not open 'IMAGE': " for the same failure
    (``Could not open backing file: Could not open 'base.qcow2': No such file or directory``), or None where
    qemu would not fail this way or qforensics cannot tell what it would do (a folder the user did not
    allow, a format qforensics does not read, a loop: qemu 7.2 recurses on a looping chain without end).
    """

    def __init__(self, message: str, *, code: str = "chain.unopened", qemu_message: str | None = None):
        super().__init__(message)
        self.code = code
        self.qemu_message = qemu_message

    def below(self, name: str | None = None) -> ChainError:
        """The same failure seen from the image whose backing file failed, as qemu words it; ``name``, the
        backing file's, when the failure is inside it (its own backing file or data file)."""
        return ChainError(str(self) if name is None else f"backing file {clip(name)!r}: {self}", code=self.code,
                          qemu_message=None if self.qemu_message is None
                          else f"Could not open backing file: {self.qemu_message}")


# qemu-img 7.2's block drivers (`qemu-img --help`, "Supported formats"): a backing format not among them is
# qemu's "Unknown driver"; one among them but not qcow2 or raw is a format qforensics does not read
QEMU_FORMATS = frozenset("blkdebug blklogwrites blkverify bochs cloop compress copy-before-write copy-on-read dmg "
                         "file ftp ftps gluster host_cdrom host_device http https iscsi iser luks nbd nfs null-aio "
                         "null-co nvme parallels preallocate qcow qcow2 qed quorum raw rbd replication "
                         "snapshot-access ssh throttle vdi vhdx vmdk vpc vvfat".split())


class RawLayer:
    """A raw image (backing file of format raw): guest offset = file offset; holes read as zeros."""

    def __init__(self, file: FileLayer, name: str | None = None):
        self.file = file
        self.name = name or str(file.path)
        self.size = file.size
        self.backing = None
        self.encrypted = False
        self.cipher = None

    def extents(self, start: int, end: int) -> Iterator[Extent]:
        end = min(end, self.size)
        pos = start
        for lo, hi in self.file.data_runs(start, end):
            if lo > pos:
                yield Extent(pos, lo - pos, Kind.RAW_HOLE, pos)
            yield Extent(lo, hi - lo, Kind.RAW_DATA, lo)
            pos = hi
        if pos < end:
            yield Extent(pos, end - pos, Kind.RAW_HOLE, pos)

    def runs(self, start: int, end: int) -> Iterator[Runs]:
        rows = list(self.extents(start, end))
        if rows:
            yield Runs([e.start for e in rows], [e.length for e in rows], [e.kind for e in rows],
                       [e.host for e in rows], [0] * len(rows))

    def read_raw(self, offset: int, length: int) -> bytes:
        raw = self.file.read(offset, length)
        return raw + bytes(length - len(raw))

    def read(self, offset: int, length: int) -> bytes:
        return read_guest(self, offset, length)


FALLS_THROUGH = (Kind.UNALLOCATED, Kind.UNALLOCATED_ALLOC)


def resolve(layer, start: int, end: int, depth: int = 0) -> Iterator[tuple[int, object, Runs]]:
    """Batches of guest runs of [start, end), each with the layer that provides it and its depth (0 = the
    top image), as QEMU's get_block_status walks the chain: unallocated runs fall to the backing file; past
    a shorter backing file they read zeros at the layer above."""
    below = layer.backing
    for batch in layer.runs(start, end):
        if below is None:
            yield depth, layer, batch
            continue
        falls = np.flatnonzero(np.isin(batch.kind, FALLS_THROUGH)).tolist()
        pos = 0
        for row in falls:
            if row > pos:
                yield depth, layer, batch.take(pos, row)
            s = int(batch.start[row])
            e = s + int(batch.length[row])
            cut = min(e, below.size)
            if s < cut:
                yield from resolve(below, s, cut, depth + 1)
            if e > cut:
                yield depth, layer, batch.take(row, row + 1).clip(max(s, cut), e)
            pos = row + 1
        if pos < len(batch):
            yield depth, layer, batch.take(pos, len(batch))


ZERO_KINDS = (Kind.UNALLOCATED, Kind.UNALLOCATED_ALLOC, Kind.ZERO_PLAIN, Kind.ZERO_ALLOC, Kind.RAW_HOLE)


def read_run(layer, ext: Extent, offset: int, length: int) -> bytes | None:
    """Bytes [offset, offset+length) inside one run of ``layer``; None when they cannot be read (INVALID,
    or a compressed cluster that does not decompress)."""
    k = ext.kind
    if k in ZERO_KINDS:
        return bytes(length)
    if k == Kind.RAW_DATA:
        return layer.read_raw(offset, length)
    if k == Kind.NORMAL:
        return layer.read_normal(offset, ext.host + (offset - ext.start), length)
    if k == Kind.COMPRESSED:
        data, _, _ = layer.compressed_cluster(ext.entry)
        if data is None:
            return None
        at = offset % layer.cs
        return data[at:at + length]
    return None


def read_guest(layer, offset: int, length: int) -> bytes:
    """Guest bytes through the chain; unreadable runs come back as zeros (recover logs them)."""
    end = min(offset + length, layer.size)
    parts = []
    for _, owner, batch in resolve(layer, offset, end):
        for ext in batch.rows():
            data = read_run(owner, ext, ext.start, ext.length)
            parts.append(data if data is not None else bytes(ext.length))
    return b"".join(parts)


@dataclass
class Consent:
    """Where the user allows backing and data files to be opened from."""

    backing_dir: Path | None = None  # --backing-dir: names are resolved inside it
    image_dir: bool = False  # the image's own folder, when the user allowed it

    def folder_for(self, image: Path) -> Path | None:
        if self.backing_dir is not None:
            return self.backing_dir
        return image.parent if self.image_dir else None


def _resolve_name(consent: Consent, image: Path, name: str, what: str, named: str) -> tuple[Path, str]:
    """The file ``name`` inside the folder the user allowed; ChainError with qemu's words when it is not there.

    qemu opens the name relative to the image's folder as the image was named (path_combine) and says
    which file it could not open in those terms, so its message is rebuilt the same way: ``named`` is the
    image as qemu names it, and the name qemu gives the file is returned with its path.
    """
    from ..paths import resolve_inside

    folder = consent.folder_for(image)
    if folder is None:
        raise ChainError(f"the {what} {clip(name)!r} is not opened without --backing-dir (or --allow-image-dir "
                         "for the image's own folder)", code="chain.not_allowed")
    try:
        path = resolve_inside(folder, name)
    except QforensicsError as exc:
        raise ChainError(f"the {what} is not opened: {exc}", code="chain.not_allowed") from None
    # qemu looks beside the image; with --backing-dir the file is looked for there instead, and named so
    base = os.path.dirname(named) if consent.backing_dir is None else str(consent.backing_dir)
    as_qemu = name if os.path.isabs(name) else os.path.join(base, name)
    try:
        st = path.stat()
    except OSError as exc:
        where = "is not in" if exc.errno == errno.ENOENT else "cannot be opened in"
        raise ChainError(f"the {what} {clip(name)!r} {where} {folder}: {exc.strerror}",
                         code="chain.missing", qemu_message=f"Could not open '{as_qemu}': {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ChainError(f"the {what} {clip(name)!r} in {folder} is not a regular file", code="chain.not_a_file",
                         qemu_message=f"'file' driver requires '{as_qemu}' to be a regular file")
    if not os.access(path, os.R_OK):
        strerror = os.strerror(errno.EACCES)
        raise ChainError(f"the {what} {clip(name)!r} in {folder} cannot be read: {strerror}",
                         code="chain.unreadable", qemu_message=f"Could not open '{as_qemu}': {strerror}")
    return path, as_qemu


def open_chain(img: Image, consent: Consent, *, snapshot=None, cipher=None, opened: list | None = None,
               seen: set | None = None, depth: int = 0, named: str | None = None):
    """The guest view of ``img`` with its backing chain and data file, opened as ``consent`` allows.

    Every file opened is appended to ``opened`` (the caller closes them); ``seen`` holds the resolved
    paths already in the chain, so a chain that loops is refused instead of followed. Failures raise
    ChainError, with qemu's message where qemu-img would fail the same way; ``named`` is the image's name as
    the user gave it (qemu's messages name the files below it relative to that).
    """
    from .qcow2 import Qcow2Layer

    opened = [] if opened is None else opened
    seen = set() if seen is None else seen
    seen.add(img.path.resolve())
    named = str(img.path) if named is None else named
    if depth >= MAX_CHAIN:
        raise ChainError(f"the backing chain is deeper than {MAX_CHAIN} layers", code="chain.too_deep")
    data_file = None
    if img.header.has_data_file:
        if img.data_file is None:
            raise ChainError("the image keeps its data in an external data file but does not name it",
                             code="chain.data_file_unnamed", qemu_message="'data-file' is required for this image")
        path, _ = _resolve_name(consent, img.path, img.data_file, "external data file", named)
        data_file = FileLayer(path)
        opened.append(data_file)
    backing = None
    if img.backing_file:
        name = img.backing_file
        try:  # every failure to open the backing file is this image's, as qemu words it
            path, as_qemu = _resolve_name(consent, img.path, name, "backing file", named)
            if path.resolve() in seen:
                raise ChainError(f"the backing chain loops back to {path}", code="chain.loop")
        except ChainError as exc:
            raise exc.below() from None
        try:
            backing = _open_backing(path, img.backing_format, consent, opened, seen, depth + 1, as_qemu)
        except ChainError as exc:
            raise exc.below(name) from None
    return Qcow2Layer(img, snapshot=snapshot, backing=backing, data_file=data_file, cipher=cipher)


def _open_backing(path: Path, fmt: str | None, consent: Consent, opened: list, seen: set, depth: int, named: str):
    """A backing layer: qcow2 when the format says so or the file is qcow2 (probed), else raw. Errors are
    the backing file's own (``open_chain`` words them as the image above sees them)."""
    if fmt is not None and fmt not in QEMU_FORMATS:
        raise ChainError(f"backing format {clip(fmt)!r} is not a format qemu knows", code="chain.format_unknown",
                         qemu_message=f"Unknown driver '{fmt}'")
    f = FileLayer(path)
    if fmt == "raw" or (fmt is None and f.read(0, 4) != b"QFI\xfb"):
        opened.append(f)
        return RawLayer(f, str(path))
    magic = f.read(0, 4)
    f.close()
    if fmt not in (None, "qcow2"):
        raise ChainError(f"backing format {fmt!r} is not read by qforensics (qcow2 and raw are)",
                         code="chain.format_unsupported")
    if magic != b"QFI\xfb":
        raise ChainError(f"{path} is not a qcow2 image (its backing format says qcow2)", code="chain.format_wrong",
                         qemu_message="Image is not in qcow2 format")
    try:
        img = Image(path)
    except QforensicsError as exc:
        raise ChainError(f"{path}: {exc}", code="chain.backing_refused") from None
    opened.append(img)
    if img.open_refusals:
        first = img.open_refusals[0]
        raise ChainError(f"{path}: QEMU would refuse it: {first.one_line()}", code="chain.backing_refused",
                         qemu_message=first.qemu_message)
    if img.header.crypt_method:
        raise ChainError(f"{path}: encrypted backing files are not supported", code="chain.backing_encrypted")
    return open_chain(img, consent, opened=opened, seen=seen, depth=depth, named=named)
