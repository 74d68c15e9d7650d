"""The host layout: which structure owns each cluster of the file.

One walk over everything the image references (header, L1/L2 tables and
their data, refcount structures, snapshots, bitmaps, LUKS, and the draft
structures) fills two numpy arrays over the file's clusters: the role and
the structure id of the first claimant. A second claim with another role is
a conflict (an overlap, which refcounts alone cannot name). Clusters shared
in the same role (snapshot COW of L2 tables and data, several compressed
streams in one cluster) are not conflicts; refcounts judge those.

Data is claimed per L2 table, not per cluster object, so the walk stays at
structure granularity: memory is a byte and an int32 per host cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from .model import Image, Unreadable
from .model import tables as T
from .model.journal import find_journals


class Role(IntEnum):
    FREE = 0
    HEADER = 1
    L1_TABLE = 2
    L2_TABLE = 3
    DATA = 4
    COMPRESSED = 5
    REFCOUNT_TABLE = 6
    REFCOUNT_BLOCK = 7
    SNAPSHOT_TABLE = 8
    BITMAP_DIRECTORY = 9
    BITMAP_TABLE = 10
    BITMAP_DATA = 11
    LUKS_HEADER = 12
    DEDUP_TABLE = 13
    JOURNAL = 14
    DRAFT_BITMAP = 15


SHAREABLE = {Role.L2_TABLE, Role.DATA, Role.COMPRESSED, Role.BITMAP_DATA}


@dataclass
class Structure:
    """A metadata structure or a set of data clusters referenced by one table."""

    id: int
    role: Role
    offset: int
    length: int
    owner: str  # active, snapshot <id>, bitmap <name>, image
    label: str


@dataclass
class Conflict:
    cluster: int
    first: int  # structure ids
    second: int


@dataclass
class Layout:
    cluster_bits: int
    file_size: int
    role: np.ndarray
    owner: np.ndarray
    structures: list[Structure] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    past_eof: list[tuple[int, int]] = field(default_factory=list)  # (structure id, host offset)
    compressed_ranges: list[tuple[np.ndarray, np.ndarray, int]] = field(default_factory=list)

    def add(self, role: Role, offset: int, length: int, owner: str, label: str) -> Structure:
        s = Structure(len(self.structures), role, offset, length, owner, label)
        self.structures.append(s)
        return s

    def claim_range(self, s: Structure) -> None:
        """Claim a structure's byte range, clipped to the file (a hostile length allocates nothing)."""
        if s.length <= 0:
            return
        n = len(self.role)
        first = s.offset >> self.cluster_bits
        last = (s.offset + s.length - 1) >> self.cluster_bits
        if last >= n:
            self.past_eof.append((s.id, max(s.offset, n << self.cluster_bits)))
            last = n - 1
        if first <= last:
            self.claim(np.arange(first, last + 1, dtype=np.int64), s)

    def claim(self, clusters: np.ndarray, s: Structure) -> None:
        """Claim clusters for a structure; record conflicts and clusters past the end of the file."""
        n = len(self.role)
        outside = clusters >= n
        if outside.any():
            self.past_eof.append((s.id, int(clusters[outside][0]) << self.cluster_bits))
            clusters = clusters[~outside]
        if clusters.size == 0:
            return
        clusters = np.unique(clusters)
        current = self.role[clusters]
        free = current == Role.FREE
        self.role[clusters[free]] = s.role
        self.owner[clusters[free]] = s.id
        taken = clusters[~free]
        if taken.size:
            same = self.role[taken] == s.role
            clash = taken[~same | (s.role not in SHAREABLE)]
            clash = clash[self.owner[clash] != s.id]
            self.conflicts += [Conflict(int(c), int(self.owner[c]), s.id) for c in clash[:1000].tolist()]

    def free_clusters(self) -> np.ndarray:
        return np.nonzero(self.role == Role.FREE)[0]


def build_layout(img: Image, *, journals: bool = True) -> Layout:
    """Walk every referenced structure once and claim its clusters."""
    h = img.header
    cb, cs = h.cluster_bits, h.cluster_size
    n = -(-img.file.size // cs)
    lay = Layout(cb, img.file.size, np.zeros(n, dtype=np.int8), np.full(n, -1, dtype=np.int32))
    lay.claim_range(lay.add(Role.HEADER, 0, cs, "image", "header and extensions"))
    lay.claim_range(lay.add(Role.REFCOUNT_TABLE, h.refcount_table_offset, h.refcount_table_clusters * cs, "image",
                            "refcount table"))
    reft = img.refcount_table()
    if not isinstance(reft, Unreadable):
        for i, offset in enumerate((reft & T.REFT_OFFSET_MASK).tolist()):
            if offset and offset % cs == 0:
                lay.claim_range(lay.add(Role.REFCOUNT_BLOCK, offset, cs, "image", f"refcount block {i}"))
    if img.snapshots:
        last = img.snapshots[-1]
        lay.claim_range(lay.add(Role.SNAPSHOT_TABLE, h.snapshots_offset,
                                last.entry_offset + last.entry_size - h.snapshots_offset, "image", "snapshot table"))
    l1s = [("active", h.l1_table_offset, h.l1_size)] + [
        (f"snapshot {s.id}", s.l1_table_offset, s.l1_size) for s in img.snapshots
        if s.l1_table_offset % cs == 0 and s.l1_size <= 1 << 22]
    seen_l2: dict[int, Structure] = {}
    for owner, offset, size in l1s:
        if not size:
            continue
        lay.claim_range(lay.add(Role.L1_TABLE, offset, size * 8, owner, f"{owner} L1 table"))
        l1 = img.l1_table(offset, size)
        if isinstance(l1, Unreadable):
            continue
        for l2_offset in np.unique(l1 & T.L1E_OFFSET_MASK).tolist():
            if not l2_offset or l2_offset in seen_l2 or l2_offset % cs:
                continue
            s = lay.add(Role.L2_TABLE, l2_offset, cs, owner, f"{owner} L2 table at 0x{l2_offset:x}")
            seen_l2[l2_offset] = s
            lay.claim_range(s)
            _claim_data(img, lay, l2_offset, owner)
    bm = img.bitmaps_extension
    if bm is not None:
        lay.claim_range(lay.add(Role.BITMAP_DIRECTORY, bm.ofs_bitmap_directory, bm.len_bitmap_directory, "image",
                                "bitmap directory"))
        for b in img.bitmaps:
            lay.claim_range(lay.add(Role.BITMAP_TABLE, b.table_offset, b.table_size * 8, f"bitmap {b.name}",
                                    f"bitmap '{b.name}' table"))
            t = img.bitmap_table(b)
            if not isinstance(t, Unreadable):
                data = t & T.BME_OFFSET_MASK
                data = data[(data != 0) & (data % np.uint64(cs) == 0)]
                lay.claim((data >> np.uint64(cb)).astype(np.int64),
                          lay.add(Role.BITMAP_DATA, 0, 0, f"bitmap {b.name}", f"bitmap '{b.name}' data"))
    if img.luks is not None:
        lay.claim_range(lay.add(Role.LUKS_HEADER, img.luks.offset, img.luks.length, "image", "LUKS header"))
    d = img.dedup_table
    if d is not None:
        lay.claim_range(lay.add(Role.DEDUP_TABLE, d.l1_offset, len(d.l1) * 8, "image", "dedup level-1 table"))
        for o in d.l2_offsets:
            lay.claim_range(lay.add(Role.DEDUP_TABLE, o, cs, "image", f"dedup level-2 cluster at 0x{o:x}"))
    for b in img.draft_bitmaps:
        lay.claim_range(lay.add(Role.DRAFT_BITMAP, b.l1_table_offset, b.l1_size * 8, f"draft bitmap {b.name}",
                                f"draft bitmap '{b.name}' L1"))
        l1 = img.l1_table(b.l1_table_offset, b.l1_size)
        if not isinstance(l1, Unreadable):
            data = l1 & T.L2E_OFFSET_MASK
            lay.claim((data[data != 0] >> np.uint64(cb)).astype(np.int64),
                      lay.add(Role.DRAFT_BITMAP, 0, 0, f"draft bitmap {b.name}", f"draft bitmap '{b.name}' data"))
    if journals:
        for area in find_journals(img, lay.free_clusters()):
            lay.claim_range(lay.add(Role.JOURNAL, area.offset, area.length, "image",
                                    f"journal at 0x{area.offset:x}"))
    return lay


def _claim_data(img: Image, lay: Layout, l2_offset: int, owner: str) -> None:
    """Data clusters and compressed byte ranges that one L2 table references."""
    h = img.header
    table = img.l2_table(l2_offset)
    if isinstance(table, Unreadable) or h.has_data_file:
        return
    desc = table[0]
    cb = h.cluster_bits
    compressed = (desc & T.OFLAG_COMPRESSED) != 0
    std = desc[~compressed] & T.L2E_OFFSET_MASK
    std = std[(std != 0) & (std % np.uint64(h.cluster_size) == 0)]
    if std.size:
        lay.claim((std >> np.uint64(cb)).astype(np.int64),
                  lay.add(Role.DATA, 0, 0, owner, f"data of L2 table at 0x{l2_offset:x}"))
    if compressed.any():
        start, sectors = T.compressed_fields(desc[compressed], cb)
        end = start + sectors * np.uint64(512) - (start & np.uint64(511))
        s = lay.add(Role.COMPRESSED, 0, 0, owner, f"compressed data of L2 table at 0x{l2_offset:x}")
        lay.compressed_ranges.append((start, end, s.id))
        first, last = (start >> np.uint64(cb)).astype(np.int64), ((end - np.uint64(1)) >> np.uint64(cb)).astype(np.int64)
        clusters = np.concatenate([(first + k)[first + k <= last] for k in range(int((last - first).max()) + 1)])
        lay.claim(clusters, s)
