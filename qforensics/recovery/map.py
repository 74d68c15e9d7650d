"""`qforensics map`: the guest-to-host mapping, entry for entry as `qemu-img map --output=json` 7.2 gives it
(as rows; render.map_output prints them).

QEMU 7.2 qemu-img.c img_map/get_block_status/entry_mergeable and block/io.c
bdrv_co_block_status: a run's depth is the layer that provides it, ``present``
says a layer allocates it, ``offset`` is given only where the bytes lie raw in
a file (not for compressed or encrypted clusters). With metadata
preallocation QEMU also asks the file which data clusters are holes
(BDRV_BLOCK_RECURSE) and reports those as zero.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..layers.stack import resolve
from ..layers.extent import BLOCK_STATUS, Kind, Runs

OFFSET_KINDS = (Kind.NORMAL, Kind.ZERO_ALLOC, Kind.UNALLOCATED_ALLOC, Kind.RAW_DATA, Kind.RAW_HOLE)
_N = max(Kind) + 1
DATA = np.array([BLOCK_STATUS[Kind(k)][0] for k in range(_N)])
ZERO = np.array([BLOCK_STATUS[Kind(k)][1] for k in range(_N)])
PRESENT = np.array([BLOCK_STATUS[Kind(k)][2] for k in range(_N)])
HAS_OFFSET = np.array([Kind(k) in OFFSET_KINDS for k in range(_N)])


class _Rows:
    """Map rows as arrays: start, length, depth, present, zero, data, offset (-1: none), and reasons."""

    def __init__(self, start, length, depth, present, zero, data, offset, reasons):
        self.start, self.length, self.depth = start, length, depth
        self.present, self.zero, self.data, self.offset = present, zero, data, offset
        self.reasons = reasons  # row -> why QEMU cannot read it

    @classmethod
    def concat(cls, parts: list[_Rows]) -> _Rows:
        reasons, n = {}, 0
        for p in parts:
            reasons.update({n + i: r for i, r in p.reasons.items()})
            n += len(p.start)
        cat = np.concatenate
        return cls(*(cat([getattr(p, a) for p in parts]) for a in
                     ("start", "length", "depth", "present", "zero", "data", "offset")), reasons)


def _rows(depth: int, layer, runs: Runs) -> _Rows:
    """qemu's block status of each run (bdrv_co_block_status and qcow2_co_block_status)."""
    k = runs.kind
    present = PRESENT[k]
    zero = ZERO[k] | ~present  # fell through the whole chain, or past a shorter backing file
    data = DATA[k]
    invalid = k == Kind.INVALID
    zero &= ~invalid
    encrypted = getattr(layer, "encrypted", False)
    offset = np.where(HAS_OFFSET[k] & (not encrypted), runs.host, -1)
    reasons = {i: r for i, r in runs.reasons.items() if invalid[i]}
    n = len(k)
    rows = _Rows(runs.start, runs.length, np.full(n, depth), present, zero, data, offset, reasons)
    if not encrypted and getattr(layer, "metadata_preallocation", False):
        rows = _recurse(rows, k, layer.data)
    return rows


def _recurse(rows: _Rows, kind: np.ndarray, file) -> _Rows:
    """BDRV_BLOCK_RECURSE: data runs split where the file has holes (or ends); those parts read as zeros."""
    normal = np.flatnonzero(kind == Kind.NORMAL).tolist()
    if not normal:
        return rows
    parts, pos = [], 0
    depth = int(rows.depth[0])
    for row in normal:
        if row > pos:
            parts.append(_take(rows, pos, row))
        g, h, n = int(rows.start[row]), int(rows.offset[row]), int(rows.length[row])
        pieces = file.pieces(h, n)
        m = len(pieces)
        parts.append(_Rows(np.array([g + a - h for a, _, _ in pieces], dtype=np.int64),
                           np.array([b - a for a, b, _ in pieces], dtype=np.int64), np.full(m, depth),
                           np.ones(m, bool), np.array([z for _, _, z in pieces], dtype=bool), np.ones(m, bool),
                           np.array([a for a, _, _ in pieces], dtype=np.int64), {}))
        pos = row + 1
    if pos < len(rows.start):
        parts.append(_take(rows, pos, len(rows.start)))
    return _Rows.concat(parts)


def _take(rows: _Rows, lo: int, hi: int) -> _Rows:
    return _Rows(rows.start[lo:hi], rows.length[lo:hi], rows.depth[lo:hi], rows.present[lo:hi], rows.zero[lo:hi],
                 rows.data[lo:hi], rows.offset[lo:hi], {i - lo: r for i, r in rows.reasons.items() if lo <= i < hi})


def _merge(rows: _Rows) -> _Rows:
    """qemu-img.c entry_mergeable over consecutive rows: same flags and depth, offsets contiguous."""
    n = len(rows.start)
    same = np.zeros(n, dtype=bool)
    if n > 1:
        o = rows.offset
        same[1:] = ((rows.zero[1:] == rows.zero[:-1]) & (rows.data[1:] == rows.data[:-1])
                    & (rows.depth[1:] == rows.depth[:-1]) & (rows.present[1:] == rows.present[:-1])
                    & ((o[1:] < 0) == (o[:-1] < 0)) & ((o[1:] < 0) | (o[:-1] + rows.length[:-1] == o[1:]))
                    & (rows.length[:-1] > 0))
        for i in rows.reasons:
            same[i] = False
            if i + 1 < n:
                same[i + 1] = False
    heads = np.flatnonzero(~same)
    group = np.cumsum(~same) - 1
    length = np.bincount(group, weights=rows.length, minlength=len(heads)).astype(np.int64)
    reasons = {int(group[i]): r for i, r in rows.reasons.items()}
    return _Rows(rows.start[heads], length, rows.depth[heads], rows.present[heads], rows.zero[heads],
                 rows.data[heads], rows.offset[heads], reasons)


GROUP_ROWS = 8192  # runs gathered before they are merged: a damaged view comes in many tiny batches


def _grouped(layer) -> Iterator[tuple[int, object, Runs]]:
    """resolve()'s batches, consecutive ones of the same layer joined up to GROUP_ROWS runs (a garbage L1
    gives a batch or two per entry; merging each alone cost more than the runs themselves)."""
    parts: list[Runs] = []
    size = 0
    key, head = (0, 0), None
    for depth, owner, runs in resolve(layer, 0, layer.size):
        if not len(runs):
            continue
        if parts and (key != (depth, id(owner)) or size + len(runs) > GROUP_ROWS):
            yield key[0], head, parts[0] if len(parts) == 1 else Runs.concat(parts)
            parts, size = [], 0
        if not parts:
            key, head = (depth, id(owner)), owner
        parts.append(runs)
        size += len(runs)
    if parts:
        yield key[0], head, parts[0] if len(parts) == 1 else Runs.concat(parts)


def map_rows(layer) -> Iterator[_Rows]:
    """The merged map of a guest view over its whole size, in batches of rows."""
    carry: _Rows | None = None
    for depth, owner, runs in _grouped(layer):
        rows = _rows(depth, owner, runs)
        merged = _merge(rows if carry is None else _Rows.concat([carry, rows]))
        n = len(merged.start)
        if n > 1:
            yield _take(merged, 0, n - 1)
        carry = _take(merged, n - 1, n)
    if carry is not None:
        yield carry
