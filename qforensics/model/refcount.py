"""Stored refcounts of every host cluster of the file (spec "Host cluster management"), as one numpy array."""

from __future__ import annotations

import numpy as np

from . import tables
from .image import Image, Unreadable


def stored_refcounts(img: Image, dtype=np.uint64) -> np.ndarray | Unreadable:
    """Refcount of each cluster of the file as the refcount blocks state it (0 where no block); with
    ``dtype=bool``, whether it is in use (one byte a cluster instead of eight).

    Blocks that are unaligned or outside the file are skipped (check reports them);
    refcounts of clusters past the end of the file are not in this array.
    """
    h = img.header
    reft = img.refcount_table()
    if isinstance(reft, Unreadable):
        return reft
    nclusters = -(-img.file.size // h.cluster_size)
    per_block = h.cluster_size * 8 // h.refcount_bits
    out = np.zeros(nclusters, dtype=dtype)
    blocks = (reft & tables.REFT_OFFSET_MASK).tolist()
    for i, offset in enumerate(blocks[: -(-nclusters // per_block)]):
        if offset == 0 or offset % h.cluster_size or offset >= img.file.size:
            continue
        block = img.refcount_block(offset)
        if isinstance(block, Unreadable):
            continue
        start = i * per_block
        n = min(per_block, nclusters - start, len(block))
        out[start:start + n] = block[:n]
    return out


def clusters_in_use(img: Image, n_clusters: int) -> np.ndarray | None:
    """Whether each of ``n_clusters`` clusters has a non-zero stored refcount (False past what the blocks
    cover); None when the refcount table is unreadable."""
    in_use = stored_refcounts(img, dtype=bool)
    if isinstance(in_use, Unreadable):
        return None
    out = np.zeros(n_clusters, dtype=bool)
    out[:min(n_clusters, len(in_use))] = in_use[:n_clusters]
    return out
