"""Which host clusters the image's structures reference, counted as QEMU counts them.

Reference: block/qcow2-refcount.c calculate_refcounts, check_refcounts_l1/l2
(each L1 that reaches an L2 table counts that table and its data again, as
qemu's snapshot refcounting does). Counts are numpy arrays over the host
clusters of the file; each L2 table is read and decoded once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import tables
from .image import Image, Unreadable


@dataclass
class References:
    """Reference counts per host cluster of the file, and what lay past its end."""

    counts: np.ndarray  # uint32, one per cluster of the file
    past_eof: list[tuple[str, int]] = field(default_factory=list)  # (what, host offset)

    def add_range(self, offset: int, length: int, what: str, cluster_bits: int) -> None:
        if length <= 0:
            return
        first, last = offset >> cluster_bits, (offset + length - 1) >> cluster_bits
        if last >= len(self.counts):
            self.past_eof.append((what, offset))
            last = len(self.counts) - 1
        if first <= last:
            self.counts[first:last + 1] += 1

    def add_clusters(self, idx: np.ndarray, weight: int, what: str, cluster_bits: int) -> None:
        inside = idx < len(self.counts)
        if not inside.all():
            self.past_eof.extend((what, int(i) << cluster_bits) for i in idx[~inside][:16])
        self.counts += np.bincount(idx[inside], minlength=len(self.counts)).astype(np.uint32) * np.uint32(weight)


def l1_tables(img: Image) -> list[tuple[str, int, int]]:
    """(owner, offset, entries) of the active L1 and every snapshot's L1."""
    h = img.header
    return [("active", h.l1_table_offset, h.l1_size)] + [
        (f"snapshot {s.id}", s.l1_table_offset, s.l1_size) for s in img.snapshots]


def reference_counts(img: Image) -> References:
    """References per host cluster from every structure the model knows (qemu's calculate_refcounts + drafts)."""
    h = img.header
    cb, cs = h.cluster_bits, h.cluster_size
    refs = References(np.zeros(-(-img.file.size // cs), dtype=np.uint32))
    refs.add_range(0, cs, "header", cb)
    refs.add_range(h.refcount_table_offset, h.refcount_table_clusters * cs, "refcount table", cb)
    reft = img.refcount_table()
    if not isinstance(reft, Unreadable):
        blocks = (reft & tables.REFT_OFFSET_MASK)
        blocks = blocks[blocks != 0] >> np.uint64(cb)
        refs.add_clusters(blocks.astype(np.int64), 1, "refcount block", cb)
    if h.nb_snapshots:
        end = max((s.entry_offset for s in img.snapshots), default=h.snapshots_offset)
        refs.add_range(h.snapshots_offset, end - h.snapshots_offset + 40, "snapshot table", cb)
    l2_cache: dict[int, np.ndarray] = {}
    for owner, offset, entries in l1_tables(img):
        refs.add_range(offset, entries * 8, f"{owner} L1 table", cb)
        l1 = img.l1_table(offset, entries)
        if isinstance(l1, Unreadable):
            continue
        l2_offsets = (l1 & tables.L1E_OFFSET_MASK)
        l2_offsets = l2_offsets[l2_offsets != 0]
        refs.add_clusters((l2_offsets >> np.uint64(cb)).astype(np.int64), 1, f"{owner} L2 table", cb)
        for l2_offset in np.unique(l2_offsets).tolist():
            weight = int((l2_offsets == l2_offset).sum())
            if l2_offset not in l2_cache:
                l2_cache[l2_offset] = _data_clusters(img, l2_offset)
            refs.add_clusters(l2_cache[l2_offset], weight, f"{owner} data", cb)
    bm = img.bitmaps_extension
    if bm is not None:
        refs.add_range(bm.ofs_bitmap_directory, bm.len_bitmap_directory, "bitmap directory", cb)
        for b in img.bitmaps:
            refs.add_range(b.table_offset, b.table_size * 8, f"bitmap {b.name} table", cb)
            t = img.bitmap_table(b)
            if not isinstance(t, Unreadable):
                data = (t & tables.BME_OFFSET_MASK)
                refs.add_clusters((data[data != 0] >> np.uint64(cb)).astype(np.int64), 1, f"bitmap {b.name}", cb)
    if img.luks is not None:
        refs.add_range(img.luks.offset, img.luks.length, "LUKS header", cb)
    d = img.dedup_table
    if d is not None:
        refs.add_range(d.l1_offset, len(d.l1) * 8, "dedup L1 table", cb)
        refs.add_clusters(np.array([o >> cb for o in d.l2_offsets], dtype=np.int64), 1, "dedup L2", cb)
    for b in img.draft_bitmaps:
        refs.add_range(b.l1_table_offset, b.l1_size * 8, f"draft bitmap {b.name} L1", cb)
        l1 = img.l1_table(b.l1_table_offset, b.l1_size)
        if not isinstance(l1, Unreadable):
            data = l1 & tables.L2E_OFFSET_MASK
            refs.add_clusters((data[data != 0] >> np.uint64(cb)).astype(np.int64), 1, f"draft bitmap {b.name}", cb)
    return refs


def _data_clusters(img: Image, l2_offset: int) -> np.ndarray:
    """Host cluster indices the L2 table references (compressed spans included); empty with a data file."""
    table = img.l2_table(l2_offset)
    if isinstance(table, Unreadable) or img.header.has_data_file:
        return np.zeros(0, dtype=np.int64)
    cb = img.header.cluster_bits
    desc = table[0]
    compressed = (desc & tables.OFLAG_COMPRESSED) != 0
    std = desc[~compressed] & tables.L2E_OFFSET_MASK
    out = [(std[std != 0] >> np.uint64(cb)).astype(np.int64)]
    if compressed.any():
        offset, sectors = tables.compressed_fields(desc[compressed], cb)
        end = offset + sectors * np.uint64(512) - (offset & np.uint64(511)) - np.uint64(1)
        first, last = (offset >> np.uint64(cb)).astype(np.int64), (end >> np.uint64(cb)).astype(np.int64)
        for k in range(int((last - first).max(initial=0)) + 1):
            out.append((first + k)[first + k <= last])
    return np.concatenate(out)
