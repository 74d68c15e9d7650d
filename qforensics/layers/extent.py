"""What a layer says about a guest range: one `Extent` per run of units of the same kind.

The kinds (`Kind`, from model/tables.py) are QEMU's subcluster types (block/qcow2.h
QCow2SubclusterType), plus the raw kinds of a raw layer and ``INVALID`` for metadata QEMU would
refuse to follow (it returns EIO there); ``reason`` says why.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..model.tables import Kind  # the kinds are the cluster mapping's rule, so they live with it in the model


class UnknownReason(str):
    """The reason of a run that reads as unallocated but may not be: a table found by a scan, which could not
    be placed, could map it. recover logs it as ``unknown`` rather than ``missing`` (and counts it in both)."""


class Extent(NamedTuple):
    start: int  # guest offset
    length: int
    kind: Kind
    host: int = -1  # host offset of ``start`` in the data-holding file, -1 when none
    entry: int = 0  # the L2 descriptor, for compressed clusters
    reason: str = ""

    @property
    def end(self) -> int:
        return self.start + self.length


# qemu's BDRV_BLOCK_* view of each kind: (data, zero, allocated at this layer)
BLOCK_STATUS = {
    Kind.UNALLOCATED: (False, False, False),
    Kind.UNALLOCATED_ALLOC: (False, False, False),
    Kind.NORMAL: (True, False, True),
    Kind.COMPRESSED: (True, False, True),
    Kind.ZERO_PLAIN: (False, True, True),
    Kind.ZERO_ALLOC: (False, True, True),
    Kind.RAW_DATA: (True, False, True),
    Kind.RAW_HOLE: (False, True, True),
    Kind.INVALID: (False, False, False),
}


class Runs:
    """A batch of consecutive extents of one layer as numpy arrays (the hot path's form of Extent)."""

    __slots__ = ("start", "length", "kind", "host", "entry", "reasons")

    def __init__(self, start, length, kind, host, entry, reasons: dict[int, str] | None = None):
        self.start = np.asarray(start, dtype=np.int64)
        self.length = np.asarray(length, dtype=np.int64)
        self.kind = np.asarray(kind, dtype=np.uint8)
        self.host = np.asarray(host, dtype=np.int64)
        self.entry = np.asarray(entry, dtype=np.uint64)
        self.reasons = reasons or {}  # row -> why (INVALID rows, and notes such as an L2 table past EOF)

    @classmethod
    def of(cls, ext: Extent) -> Runs:
        return cls([ext.start], [ext.length], [ext.kind], [ext.host], [ext.entry],
                   {0: ext.reason} if ext.reason else None)

    @classmethod
    def concat(cls, parts: list[Runs]) -> Runs:
        reasons, n = {}, 0
        for p in parts:
            reasons.update({n + i: r for i, r in p.reasons.items()})
            n += len(p)
        cat = np.concatenate
        return cls(cat([p.start for p in parts]), cat([p.length for p in parts]), cat([p.kind for p in parts]),
                   cat([p.host for p in parts]), cat([p.entry for p in parts]), reasons)

    def __len__(self) -> int:
        return len(self.start)

    def take(self, lo: int, hi: int) -> Runs:
        reasons = {i - lo: r for i, r in self.reasons.items() if lo <= i < hi}
        return Runs(self.start[lo:hi], self.length[lo:hi], self.kind[lo:hi], self.host[lo:hi], self.entry[lo:hi],
                    reasons)

    def clip(self, start: int, end: int) -> Runs:
        """The part inside guest [start, end) (rows are in order and contiguous)."""
        ends = self.start + self.length
        lo = int(np.searchsorted(ends, start, side="right"))
        hi = int(np.searchsorted(self.start, end, side="left"))
        out = self.take(lo, hi)
        if len(out):
            out.start, out.length, out.host = out.start.copy(), out.length.copy(), out.host.copy()
            cut = start - int(out.start[0])
            if cut > 0:
                out.start[0] += cut
                out.length[0] -= cut
                if out.host[0] >= 0:
                    out.host[0] += cut
            over = int(out.start[-1] + out.length[-1]) - end
            if over > 0:
                out.length[-1] -= over
        return out

    def rows(self):
        """The runs as Extent tuples (for callers off the hot path)."""
        for i, (s, n, k, h, e) in enumerate(zip(self.start.tolist(), self.length.tolist(), self.kind.tolist(),
                                                self.host.tolist(), self.entry.tolist(), strict=True)):
            yield Extent(s, n, Kind(k), h, e, self.reasons.get(i, ""))
