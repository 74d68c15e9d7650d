"""The cluster size of an image whose header lost its ``cluster_bits``, inferred from the structures.

Every offset in a qcow2 file is a cluster offset, and the refcounts say how many
clusters are in use (spec "Header", "Host cluster management"). For each
cluster size QEMU supports (2^9 to 2^21) the header's L1, refcount table and
snapshot table offsets must be multiples of it, the refcount table's blocks too,
and the clusters with a refcount, times the cluster size, must account for the
file's allocated bytes. Only a size that passes all of it, and alone comes
closest, is used.
"""

from __future__ import annotations

import numpy as np

from ..evidence.file import FileLayer
from ..model import tables as T
from ..model.qcow2_header import MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, parse_header, with_cluster_bits
from ..model.kaitai import StructureError

MAX_READ = 64 << 20  # bytes of refcount blocks read per candidate size, at most (a hostile table is skipped)
TOLERANCE = 0.10  # the in-use clusters must account for the file's allocated bytes within this share


def infer_cluster_bits(file: FileLayer, probe: bytes) -> tuple[int, str] | None:
    """(cluster_bits, how it was found) for the header bytes ``probe`` of ``file``, or None when no size, or
    more than one, fits the structures."""
    try:  # every other field read as the header parser reads it, with any usable size in place
        h = parse_header(with_cluster_bits(probe, MIN_CLUSTER_BITS))
    except StructureError:
        return None
    if not h.refcount_table_offset or not h.refcount_table_clusters:
        return None
    offsets = [o for o in (h.refcount_table_offset, h.l1_table_offset,
                           h.snapshots_offset if h.nb_snapshots else 0) if o]
    starts, ends = file.data_extents
    allocated = int((ends - starts).sum()) if len(starts) else file.size
    fits: list[tuple[float, int, int]] = []
    for cb in range(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS + 1):
        cs = 1 << cb
        if any(o % cs or o >= file.size for o in offsets) or h.refcount_table_clusters * cs > file.size:
            continue
        table = T.refcount_table(file.read(h.refcount_table_offset, h.refcount_table_clusters * cs))
        blocks = table[table != 0] & T.REFT_OFFSET_MASK
        if not len(blocks) or len(blocks) * cs > MAX_READ or (blocks % np.uint64(cs)).any() \
                or (blocks >= np.uint64(file.size)).any():
            continue
        in_use = 0
        for block in blocks.tolist():
            raw = file.read(block, cs)
            in_use += int(np.count_nonzero(T.refcount_block(raw, h.refcount_order)))
        score = abs(in_use * cs - allocated) / max(allocated, 1)
        if score <= TOLERANCE:
            fits.append((score, cb, in_use))
    if not fits:
        return None
    fits.sort()
    if len(fits) > 1 and fits[1][0] <= 2 * fits[0][0] + 0.01:
        return None  # two sizes fit about as well: guessing would give wrong data
    _, cb, in_use = fits[0]
    return cb, (f"{in_use} clusters have a refcount; at {1 << cb} bytes each they account for the file's "
                f"{allocated} allocated bytes, and every table offset is aligned to it")
