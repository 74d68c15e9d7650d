"""The stack of layers walked as QEMU's block status walks a backing chain: which layer gives each guest
byte (``resolve``), and reading guest bytes through it (``read_run``, ``read_guest``). Layers below call
nothing here but ``read_guest``; the stack knows layers only by their ``runs``, ``backing`` and readers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .extent import Extent, Kind, Runs


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
