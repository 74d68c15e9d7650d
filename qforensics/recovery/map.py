"""`qforensics map`: the guest-to-host mapping, entry for entry as `qemu-img map --output=json` 7.2 gives it.

QEMU 7.2 qemu-img.c img_map/get_block_status/entry_mergeable and block/io.c
bdrv_co_block_status: a run's depth is the layer that provides it, ``present``
says a layer allocates it, ``offset`` is given only where the bytes lie raw in
a file (not for compressed or encrypted clusters). With metadata
preallocation QEMU also asks the file which data clusters are holes
(BDRV_BLOCK_RECURSE) and reports those as zero.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..layers.chain import resolve
from ..layers.extent import BLOCK_STATUS, Kind, Runs

OFFSET_KINDS = (Kind.NORMAL, Kind.ZERO_ALLOC, Kind.UNALLOCATED_ALLOC, Kind.RAW_DATA, Kind.RAW_HOLE)
_N = max(Kind) + 1
DATA = np.array([BLOCK_STATUS[Kind(k)][0] for k in range(_N)])
ZERO = np.array([BLOCK_STATUS[Kind(k)][1] for k in range(_N)])
PRESENT = np.array([BLOCK_STATUS[Kind(k)][2] for k in range(_N)])
HAS_OFFSET = np.array([Kind(k) in OFFSET_KINDS for k in range(_N)])


@dataclass
class MapEntry:
    start: int
    length: int
    depth: int
    present: bool
    zero: bool
    data: bool
    offset: int | None = None
    unreadable: str | None = None  # QEMU stops here with EIO; the reason

    def to_json(self) -> dict:
        out = {"start": self.start, "length": self.length, "depth": self.depth, "present": self.present,
               "zero": self.zero, "data": self.data}
        if self.offset is not None:
            out["offset"] = self.offset
        if self.unreadable:
            out["unreadable"] = self.unreadable
        return out


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


def map_rows(layer) -> Iterator[_Rows]:
    """The merged map of a guest view over its whole size, in batches of rows."""
    carry: _Rows | None = None
    for depth, owner, runs in resolve(layer, 0, layer.size):
        if not len(runs):
            continue
        rows = _rows(depth, owner, runs)
        merged = _merge(rows if carry is None else _Rows.concat([carry, rows]))
        n = len(merged.start)
        if n > 1:
            yield _take(merged, 0, n - 1)
        carry = _take(merged, n - 1, n)
    if carry is not None:
        yield carry


def guest_map(layer) -> Iterator[MapEntry]:
    """The merged map as MapEntry objects."""
    for rows in map_rows(layer):
        for i, (s, n, d, p, z, a, o) in enumerate(zip(
                rows.start.tolist(), rows.length.tolist(), rows.depth.tolist(), rows.present.tolist(),
                rows.zero.tolist(), rows.data.tolist(), rows.offset.tolist(), strict=True)):
            yield MapEntry(s, n, d, p, z, a, o if o >= 0 else None, rows.reasons.get(i))


def json_lines(entries: Iterable[MapEntry]) -> Iterator[str]:
    """The text `qemu-img map --output=json` prints, byte for byte, in pieces (plus "unreadable" where
    QEMU stops)."""
    t = {True: "true", False: "false"}
    first = True
    yield "["
    for e in entries:
        line = (f'{{ "start": {e.start}, "length": {e.length}, "depth": {e.depth}, "present": {t[e.present]}, '
                f'"zero": {t[e.zero]}, "data": {t[e.data]}')
        if e.offset is not None:
            line += f', "offset": {e.offset}'
        if e.unreadable:
            line += f', "unreadable": {json.dumps(e.unreadable)}'
        yield line + "}" if first else ",\n" + line + "}"
        first = False
    yield "]\n"


def render_json(entries: Iterable[MapEntry]) -> str:
    return "".join(json_lines(entries))


def human_lines(entries: Iterable[MapEntry], names: list[str]) -> Iterator[str]:
    """A table of every run: guest range, the layer that provides it, what it is, where it lies."""
    yield f"{'Offset':<18}{'Length':<18}{'Depth':<7}{'Reads':<12}{'Mapped to':<18}File\n"
    for e in entries:
        if e.unreadable:
            what = "UNREADABLE"
        elif e.data and not e.zero:
            what = "data"
        elif e.data:
            what = "data(hole)"
        elif e.present:
            what = "zero"
        else:
            what = "unallocated"
        where = f"0x{e.offset:x}" if e.offset is not None else ("-" if not e.data else "(no raw offset)")
        name = names[e.depth] if e.depth < len(names) else ""
        yield f"0x{e.start:<16x}0x{e.length:<16x}{e.depth:<7}{what:<12}{where:<18}{name}\n"
        if e.unreadable:
            yield f"    {e.unreadable}\n"


def render_human(entries: Iterable[MapEntry], names: list[str]) -> str:
    return "".join(human_lines(entries, names))
