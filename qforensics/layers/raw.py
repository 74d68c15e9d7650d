"""A raw image as a layer (a raw backing file): guest offset = file offset, holes read as zeros."""

from __future__ import annotations

from collections.abc import Iterator

from ..evidence.file import FileLayer
from .extent import Extent, Kind, Runs
from .stack import read_guest


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
