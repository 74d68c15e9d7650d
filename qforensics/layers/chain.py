"""The backing chain: raw layers, opening backing and data files with the user's consent, and
resolving a guest range through the chain to the layer that provides each byte.

A file name written in an image is data. It is opened only inside a folder
the user named (``--backing-dir``), or the image's own folder when the user
allowed it, and never outside it (qforensics.paths.resolve_inside). Chains
that loop, or go deeper than MAX_CHAIN, end with an error naming the image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import QforensicsError
from ..model import Image
from .extent import Extent, Kind, Runs
from .file import FileLayer

MAX_CHAIN = 64  # layers; QEMU has no fixed limit, a deeper chain is taken as hostile


class ChainError(QforensicsError):
    """A backing or data file cannot be opened as the image asks (not allowed, missing, looping)."""


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


def _resolve_name(consent: Consent, image: Path, name: str, what: str) -> Path:
    from ..paths import resolve_inside

    folder = consent.folder_for(image)
    if folder is None:
        raise ChainError(f"{image}: the {what} {name!r} is not opened without --backing-dir "
                         "(or --allow-image-dir for the image's own folder)")
    path = resolve_inside(folder, name)
    if not path.is_file():
        raise ChainError(f"{image}: the {what} {name!r} is not in {folder}")
    return path


def open_chain(img: Image, consent: Consent, *, snapshot=None, cipher=None, opened: list | None = None,
               seen: set | None = None, depth: int = 0):
    """The guest view of ``img`` with its backing chain and data file, opened as ``consent`` allows.

    Every file opened is appended to ``opened`` (the caller closes them); ``seen`` holds the resolved
    paths already in the chain, so a chain that loops is refused instead of followed.
    """
    from .qcow2 import Qcow2Layer

    opened = [] if opened is None else opened
    seen = set() if seen is None else seen
    seen.add(img.path.resolve())
    if depth >= MAX_CHAIN:
        raise ChainError(f"{img.path}: backing chain deeper than {MAX_CHAIN} layers")
    data_file = None
    if img.header.has_data_file:
        if img.data_file is None:
            raise ChainError(f"{img.path}: the image keeps its data in an external data file but does not "
                             "name it")
        path = _resolve_name(consent, img.path, img.data_file, "external data file")
        data_file = FileLayer(path)
        opened.append(data_file)
    backing = None
    if img.backing_file:
        path = _resolve_name(consent, img.path, img.backing_file, "backing file")
        if path.resolve() in seen:
            raise ChainError(f"{img.path}: the backing chain loops back to {path}")
        fmt = img.backing_format
        backing = _open_backing(path, fmt, consent, opened, seen, depth + 1)
    return Qcow2Layer(img, snapshot=snapshot, backing=backing, data_file=data_file, cipher=cipher)


def _open_backing(path: Path, fmt: str | None, consent: Consent, opened: list, seen: set, depth: int):
    """A backing layer: qcow2 when the format says so or the file is qcow2 (probed), else raw."""
    f = FileLayer(path)
    if fmt == "raw" or (fmt is None and f.read(0, 4) != b"QFI\xfb"):
        opened.append(f)
        return RawLayer(f, str(path))
    f.close()
    if fmt not in (None, "qcow2"):
        raise ChainError(f"{path}: backing format {fmt!r} is not supported (qcow2 and raw are)")
    img = Image(path)
    opened.append(img)
    if img.refusals:
        raise ChainError(f"{path}: backing file QEMU would refuse: {img.refusals[0].one_line()}")
    if img.header.crypt_method:
        raise ChainError(f"{path}: encrypted backing files are not supported")
    return open_chain(img, consent, opened=opened, seen=seen, depth=depth)
