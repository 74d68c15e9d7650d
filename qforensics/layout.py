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
from .model.image import L1Group, L1References
from .model.journal import JournalArea, find_journals
from .text import clip


class Role(IntEnum):
    FREE = 0
    EXTENSION = 16
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


MAX_NODES = 4096  # structures of one kind (refcount blocks, L2 tables) kept one by one; the rest are grouped
MAX_LISTED = 1000
MAX_CONFLICTS = 10_000  # conflicts recorded in all (each is a finding): hostile overlaps stop there
MAX_EXTENTS = 1 << 13  # data extents kept one by one in the graph; past it, each L2 table's data is one node
MAX_STORED_RUNS = 1 << 20  # data runs kept for the graph in all (24 bytes each)
MAX_SHARED_EDGES = 1 << 16  # edges from the L1 nodes of snapshots sharing one table; past it, the first only
FREE = int(Role.FREE)  # for comparisons with the role array: numpy widens an IntEnum operand to int64
SHAREABLE = {Role.L2_TABLE, Role.DATA, Role.COMPRESSED, Role.BITMAP_DATA, Role.JOURNAL}
# roles claimed in bulk, whose owner is not kept per cluster (memory: one int per cluster of a 1 TiB file)
UNOWNED = {Role.DATA, Role.COMPRESSED}


@dataclass
class Structure:
    """A metadata structure or a set of data clusters referenced by one table."""

    id: int
    role: Role
    offset: int
    length: int
    owner: str  # active, snapshot <id>, bitmap <name>, image
    label: str
    count: int = 1  # clusters of a data extent, streams of a compressed node


@dataclass(frozen=True)
class Edge:
    """A reference: structure ``src`` points at ``dst`` through entry ``index`` of its table (the first of
    ``count`` entries that name it: an L1 may name one L2 table millions of times)."""

    src: int
    dst: int
    kind: str
    index: int = 0
    count: int = 1


@dataclass
class Conflict:
    cluster: int
    first: int  # structure ids
    second: int


@dataclass
class DataRuns:
    """The data of one L2 table as the graph draws it: runs of contiguous host clusters named by consecutive
    entries. The arrays (first entry, first host offset, clusters of each run) are kept while there are at
    most MAX_EXTENTS runs in the table and MAX_STORED_RUNS in all; past that the graph draws one node."""

    clusters: int
    lowest: int  # host offset of the lowest cluster
    runs: int
    first_entry: int
    entry: np.ndarray | None = None
    host: np.ndarray | None = None
    length: np.ndarray | None = None


@dataclass
class GraphNotes:
    """What the graph needs beyond the claims, kept only when the layout is built for it (``graph=True``).
    The claims stay the checks' (one data structure per L2 table); the graph draws extents from these."""

    first_l1: dict[int, int] = field(default_factory=dict)  # L2 offset -> first L1 entry naming it
    after: dict[int, list[Structure]] = field(default_factory=dict)  # a group's last new L2 id -> its new L2s
    data: dict[int, DataRuns] = field(default_factory=dict)  # L2 offset -> its data runs
    compressed: dict[int, tuple[int, int]] = field(default_factory=dict)  # L2 offset -> (structure id, entry)
    bulk: set[int] = field(default_factory=set)  # ids of the per-table data and compressed structures
    stored: int = 0  # runs whose arrays are kept


@dataclass
class Layout:
    cluster_bits: int
    file_size: int
    role: np.ndarray
    owner: dict[int, int] = field(default_factory=dict)  # cluster -> structure id, metadata roles only
    data_of_l2: dict[int, int] = field(default_factory=dict)  # L2 table offset -> id of its data structure
    l2_tables: dict[int, Structure] = field(default_factory=dict)  # every L2 table met, by offset
    pending_data: dict[int, Structure] = field(default_factory=dict)  # L2 tables whose data is not claimed yet
    structures: list[Structure] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    past_eof: list[tuple[int, int]] = field(default_factory=list)  # (structure id, host offset)
    # past the caps: claims of a taken cluster not examined for a conflict, structures past EOF not listed
    unlisted: dict[str, int] = field(default_factory=dict)
    journals: list[JournalArea] = field(default_factory=list)  # found among the free clusters (finish_layout)
    compressed_ranges: list[tuple[np.ndarray, np.ndarray, int]] = field(default_factory=list)
    edges: list[Edge] | None = None  # recorded only when the layout is built for the graph
    notes: GraphNotes | None = None  # likewise
    l2_entries: int = 0
    header_node: Structure | None = None
    extents: int = 0  # data extent nodes made so far (graph)
    _streams: np.ndarray | None = None

    def link(self, src: Structure, dst: Structure, kind: str, index: int = 0, count: int = 1) -> None:
        if self.edges is not None:
            self.edges.append(Edge(src.id, dst.id, kind, index, count))

    def add(self, role: Role, offset: int, length: int, owner: str, label: str, count: int = 1) -> Structure:
        s = Structure(len(self.structures), role, offset, length, owner, label, count)
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
        if first > last:
            return
        seg = self.role[first:last + 1]
        if not seg.any():  # all free (Role.FREE is 0), the usual case: nothing to compare with
            seg[:] = s.role
            if s.role not in UNOWNED:
                self.owner.update(dict.fromkeys(range(first, last + 1), s.id))
            return
        self.claim(np.arange(first, last + 1, dtype=np.int64), s)

    def claim(self, clusters: np.ndarray, s: Structure) -> None:
        """Claim clusters for one structure."""
        self.claim_many(clusters, np.full(clusters.shape, s.id, dtype=np.int32), s.role)

    def claim_many(self, clusters: np.ndarray, sids: np.ndarray, role: Role) -> None:
        """Claim clusters for structures of one role (one id per cluster); record conflicts and
        clusters past the end of the file."""
        n = len(self.role)
        outside = clusters >= n
        if outside.any():
            self.past_eof.append((int(sids[outside][0]), int(clusters[outside][0]) << self.cluster_bits))
            clusters, sids = clusters[~outside], sids[~outside]
        if clusters.size == 0:
            return
        steps = np.diff(clusters)
        if clusters.size > 1 and not (steps > 0).all():
            order = np.argsort(clusters, kind="stable")
            clusters, sids = clusters[order], sids[order]
            first = np.concatenate(([True], clusters[1:] != clusters[:-1]))
            clusters, sids = clusters[first], sids[first]  # same role twice in one claim: sharing
        elif role in UNOWNED and self._claim_runs(clusters, steps, role):
            return
        free = self.role[clusters] == FREE
        self.role[clusters[free]] = role
        if role not in UNOWNED:
            self.owner.update(zip(clusters[free].tolist(), sids[free].tolist(), strict=True))
        taken, by = clusters[~free], sids[~free]
        if taken.size:
            clash = (self.role[taken] != role) | (role not in SHAREABLE)
            room = min(1000, max(0, MAX_CONFLICTS - len(self.conflicts)))
            self._unlisted("overlap.structures", int(clash.sum()) - room)
            for c, b in zip(taken[clash][:room].tolist(), by[clash][:room].tolist(), strict=True):
                first = self.owner.get(c, -1)  # -1: data, named after the walk (resolve_data_owners)
                if first != b:
                    self.conflicts.append(Conflict(c, first, b))

    def _unlisted(self, code: str, k: int) -> None:
        if k > 0:
            self.unlisted[code] = self.unlisted.get(code, 0) + k

    def _claim_runs(self, clusters: np.ndarray, steps: np.ndarray, role: Role) -> bool:
        """Claim sorted, owner-less clusters run by run with slices, when they form a few free runs."""
        breaks = np.flatnonzero(steps != 1)
        if breaks.size > 256:
            return False
        starts = np.concatenate(([0], breaks + 1)).tolist()
        ends = np.concatenate((breaks + 1, [clusters.size])).tolist()
        runs = [(int(clusters[a]), int(clusters[b - 1]) + 1) for a, b in zip(starts, ends, strict=True)]
        if any(self.role[lo:hi].any() for lo, hi in runs):  # FREE is 0
            return False  # something is already there: the general path names the conflicts
        for lo, hi in runs:
            self.role[lo:hi] = role
        return True

    def compressed_streams(self) -> np.ndarray:
        """The distinct (start, end) byte ranges of the compressed streams, sorted, as rows: identical ranges
        are one shared stream. Kept once made (a lexsort of the millions a garbage table may hold)."""
        if self._streams is None:
            if not self.compressed_ranges:
                self._streams = np.zeros((0, 2), dtype=np.uint64)
            else:
                start = np.concatenate([r[0] for r in self.compressed_ranges])
                end = np.concatenate([r[1] for r in self.compressed_ranges])
                order = np.lexsort((end, start))
                start, end = start[order], end[order]
                keep = np.concatenate(([True], (start[1:] != start[:-1]) | (end[1:] != end[:-1])))
                self._streams = np.stack([start[keep], end[keep]], axis=1)
        return self._streams

    def free_clusters(self) -> np.ndarray:
        return self.clusters_with(Role.FREE)

    def clusters_with(self, role: Role) -> np.ndarray:
        """Indices of the clusters claimed in ``role``."""
        return np.flatnonzero(self.role == int(role))  # an IntEnum would be compared as int64: 20x slower


def build_layout(img: Image, *, journals: bool | list[JournalArea] = True, graph: bool = False) -> Layout:
    """Walk every referenced structure once and claim its clusters.

    With ``graph`` the references are kept as edges, and the data runs of each
    L2 table as GraphNotes (the graph's extents; the claims are the same).
    ``journals``: scan the free clusters for them, or the ones another layout of the command already found.
    """
    lay = start_layout(img, img.l1_groups(), graph=graph)
    finish_layout(img, lay, journals=journals)
    return lay


def start_layout(img: Image, groups: list[L1Group], active_l1: L1References | None = None, *,
                 graph: bool = False) -> Layout:
    """Claim the metadata up to the L2 tables; their data waits in ``pending_data``, to be claimed from
    L2 batches someone else already read (``claim_l2_batch``) or by ``finish_layout``. ``groups``:
    ``img.l1_groups()``; ``active_l1``: the active L1's ``img.l1_references``, if the caller has it."""
    h = img.header
    cb, cs = h.cluster_bits, h.cluster_size
    n = -(-img.file.size // cs)
    lay = Layout(cb, img.file.size, np.zeros(n, dtype=np.int8), edges=[] if graph else None,
                 notes=GraphNotes() if graph else None, l2_entries=h.l2_entries)
    header = lay.add(Role.HEADER, 0, cs, "image", "header and extensions")
    lay.claim_range(header)
    lay.header_node = header
    if not img.geometry_ok:
        return lay  # cluster_bits unusable: nothing past the header can be located
    for e in img.extensions.items:
        lay.link(header, lay.add(Role.EXTENSION, e.offset, 8 + e.length, "image", f"{e.name} extension"),
                 "extension")
    reftable = lay.add(Role.REFCOUNT_TABLE, h.refcount_table_offset, h.refcount_table_clusters * cs, "image",
                       "refcount table")
    lay.claim_range(reftable)
    lay.link(header, reftable, "refcount_table_offset")
    reft = img.refcount_table()
    if not isinstance(reft, Unreadable):
        _claim_refcount_blocks(lay, reftable, reft)
    snaptable = None
    if img.snapshots:
        last = img.snapshots[-1]
        snaptable = lay.add(Role.SNAPSHOT_TABLE, h.snapshots_offset,
                            last.entry_offset + last.entry_size - h.snapshots_offset, "image", "snapshot table")
        lay.claim_range(snaptable)
        lay.link(header, snaptable, "snapshots_offset")
    seen_l2: dict[int, Structure] = {}
    for k_group, group in enumerate(groups):
        if not group.entries:
            continue
        l1_nodes = []
        for k, owner in enumerate(group.owners):
            l1_node = lay.add(Role.L1_TABLE, group.offset, group.entries * 8, owner,
                              f"{owner} L1 table" + ("" if group.walked or not group.snapshots
                                                     else " (not walked: budget)"))
            lay.claim_range(l1_node)
            if group.snapshots:
                # one kind for all entries (4096 snapshots are not 4096 kinds of edge); the index says which
                lay.link(snaptable, l1_node, "snapshot entry", group.snapshots[k].index)
            else:
                lay.link(header, l1_node, "l1_table_offset")
            l1_nodes.append(l1_node)
        # identical tables are walked once; past the budget of entries, snapshot tables are claimed only
        if not group.walked:
            continue
        distinct, index, counts = img.l2_references(group.offset, group.entries,
                                                    active_l1 if k_group == 0 else None)
        owner = group.owners[0]
        past = distinct >= np.uint64(img.file.size)
        links: list[tuple[Structure, int, int]] = []  # (L2 node, first L1 index, entries naming it)
        if past.any() and int(past.sum()) + len(seen_l2) > MAX_NODES:
            # tables wholly past the end of the file read as zeros and claim nothing: one node for all of
            # this table's, rather than millions
            at = np.flatnonzero(past)
            s = lay.add(Role.L2_TABLE, int(distinct[at].min()), cs, owner,
                        f"{owner}: {at.size} L2 tables past the end of the file", count=int(at.size))
            lay.past_eof.append((s.id, s.offset))
            links.append((s, int(index[at].min()), int(counts[at].sum())))
            keep = np.flatnonzero(~past)
            distinct, index, counts = distinct[keep], index[keep], counts[keep]
        made = [lay.add(Role.L2_TABLE, o, cs, owner, f"{owner} L2 table at 0x{o:x}")
                for o in distinct.tolist() if o not in seen_l2]
        seen_l2.update((s.offset, s) for s in made)
        if lay.edges is not None:
            links += zip([seen_l2[o] for o in distinct.tolist()], index.tolist(), counts.tolist(), strict=True)
            for l1_node in l1_nodes if len(l1_nodes) * len(links) <= MAX_SHARED_EDGES else l1_nodes[:1]:
                for s, i, c in links:
                    lay.link(l1_node, s, "L1 entry", i, c)
        if made:
            lay.claim_many(np.array([s.offset >> cb for s in made], dtype=np.int64),
                           np.array([s.id for s in made], dtype=np.int32), Role.L2_TABLE)
            lay.pending_data.update((s.offset, s) for s in made if s.offset < img.file.size)
            if lay.notes is not None:
                first_index = dict(zip(distinct.tolist(), index.tolist(), strict=True))
                lay.notes.first_l1.update((s.offset, first_index[s.offset]) for s in made)
                lay.notes.after[made[-1].id] = made
    lay.l2_tables = seen_l2
    return lay


def _claim_refcount_blocks(lay: Layout, reftable: Structure, reft: np.ndarray) -> None:
    """Claim the refcount blocks in bulk: a structure for each of the first MAX_NODES blocks, one
    structure for all the rest (a hostile table of 1M entries costs arrays, not objects)."""
    cb, cs = lay.cluster_bits, 1 << lay.cluster_bits
    offsets = reft & T.REFT_OFFSET_MASK
    index = np.flatnonzero((offsets != 0) & (offsets % np.uint64(cs) == 0))
    if not index.size:
        return
    offsets = offsets[index]
    k = min(index.size, MAX_NODES)
    sids = np.empty(index.size, dtype=np.int32)
    for j, (i, offset) in enumerate(zip(index[:k].tolist(), offsets[:k].tolist(), strict=True)):
        block = lay.add(Role.REFCOUNT_BLOCK, offset, cs, "image", f"refcount block {i}")
        lay.link(reftable, block, "refcount table entry", i)
        sids[j] = block.id
    if index.size > k:
        rest = lay.add(Role.REFCOUNT_BLOCK, int(offsets[k:].min()), (index.size - k) * cs, "image",
                       f"refcount blocks {int(index[k])}..{int(index[-1])} ({index.size - k} entries)",
                       count=index.size - k)
        lay.link(reftable, rest, "refcount table entries", int(index[k]))
        sids[k:] = rest.id
    clusters = (offsets >> np.uint64(cb)).astype(np.int64)
    outside = clusters >= len(lay.role)
    lay._unlisted("layout.past_eof", int(outside.sum()) - MAX_LISTED)
    for sid, offset in zip(sids[outside][:MAX_LISTED].tolist(), offsets[outside][:MAX_LISTED].tolist(),
                           strict=True):
        lay.past_eof.append((sid, offset))
    clusters, sids = clusters[~outside], sids[~outside]
    if not clusters.size:
        return
    _, first = np.unique(clusters, return_index=True)
    first.sort()
    lay.claim_many(clusters[first], sids[first], Role.REFCOUNT_BLOCK)
    again = np.ones(clusters.size, dtype=bool)
    again[first] = False
    for c, sid in zip(clusters[again][:MAX_LISTED].tolist(), sids[again][:MAX_LISTED].tolist(), strict=True):
        lay.claim_many(np.array([c], dtype=np.int64), np.array([sid], dtype=np.int32), Role.REFCOUNT_BLOCK)


def claim_l2_batch(img: Image, lay: Layout, offsets: list[int], desc: np.ndarray, first: np.ndarray | None) -> None:
    """Claim the data of the L2 tables in a batch already decoded elsewhere (each table once); ``first``:
    ``tables.contiguous_rows`` of the batch, as the reader worked it out."""
    rows, tables = [], []
    for r, o in enumerate(offsets):
        table = lay.pending_data.pop(o, None)  # a table listed twice in the batch is claimed once
        if table is not None:
            rows.append(r)
            tables.append(table)
    if not rows:
        return
    if len(rows) == len(offsets):
        _claim_batch(img, lay, tables, desc, first)
    else:
        _claim_batch(img, lay, tables, desc[rows])


def finish_layout(img: Image, lay: Layout, *, journals: bool | list[JournalArea] = True) -> None:
    """Claim the data still pending, then the structures outside the L1/L2 tree, then name overlaps."""
    if not img.geometry_ok:
        return
    h = img.header
    cb, cs = h.cluster_bits, h.cluster_size
    header = lay.header_node
    seen_l2 = lay.l2_tables
    if lay.pending_data:
        _claim_data_batched(img, lay, list(lay.pending_data.values()))
        lay.pending_data.clear()
    bm = img.bitmaps_extension
    if bm is not None:
        directory = lay.add(Role.BITMAP_DIRECTORY, bm.bitmap_directory_offset, bm.bitmap_directory_size, "image",
                            "bitmap directory")
        lay.claim_range(directory)
        lay.link(header, directory, "bitmaps extension")
        for b in img.bitmaps:
            name = clip(b.name)
            table_node = lay.add(Role.BITMAP_TABLE, b.table_offset, b.table_size * 8, f"bitmap {name}",
                                 f"bitmap '{name}' table")
            lay.claim_range(table_node)
            lay.link(directory, table_node, "bitmap directory entry", b.index)
            t = img.bitmap_table(b)
            if not isinstance(t, Unreadable):
                data = t & T.BME_OFFSET_MASK
                data = data[(data != 0) & (data % np.uint64(cs) == 0)]
                if data.size:
                    node = lay.add(Role.BITMAP_DATA, int(data.min()), int(data.size) * cs, f"bitmap {name}",
                                   f"bitmap '{name}' data ({data.size} clusters)")
                    lay.claim((data >> np.uint64(cb)).astype(np.int64), node)
                    lay.link(table_node, node, "bitmap table entries")
    if img.luks is not None:
        luks = lay.add(Role.LUKS_HEADER, img.luks.offset, img.luks.length, "image", "LUKS header")
        lay.claim_range(luks)
        lay.link(header, luks, "full disk encryption header pointer")
    d = img.dedup_table
    if d is not None:
        dedup = lay.add(Role.DEDUP_TABLE, d.l1_offset, len(d.l1) * 8, "image", "dedup level-1 table")
        lay.claim_range(dedup)
        lay.link(header, dedup, "deduplication extension")
        for i, o in enumerate(d.l1.tolist()):
            if o:
                node = lay.add(Role.DEDUP_TABLE, o, cs, "image", f"dedup level-2 cluster at 0x{o:x}")
                lay.claim_range(node)
                lay.link(dedup, node, "dedup level-1 entry", i)
    if img.draft_bitmaps:  # the 2015 draft's directory: from its offset to the cluster of its last entry
        first = img.draft_bitmaps[0].entry_offset
        directory = lay.add(Role.DRAFT_BITMAP, first, img.draft_bitmaps[-1].entry_offset - first + 1, "image",
                            "draft bitmap directory")
        lay.claim_range(directory)
        lay.link(header, directory, "dirty bitmaps extension")
    for b in img.draft_bitmaps:
        name = clip(b.name)
        l1_node = lay.add(Role.DRAFT_BITMAP, b.l1_table_offset, b.l1_size * 8, f"draft bitmap {name}",
                          f"draft bitmap '{name}' L1")
        lay.claim_range(l1_node)
        lay.link(directory, l1_node, "dirty bitmap table entry", b.index)
        l1 = img.l1_table(b.l1_table_offset, b.l1_size)
        if not isinstance(l1, Unreadable):
            data = l1 & T.L2E_OFFSET_MASK
            data = data[data != 0]
            if data.size:
                node = lay.add(Role.DRAFT_BITMAP, int(data.min()), int(data.size) * cs, f"draft bitmap {name}",
                               f"draft bitmap '{name}' data")
                lay.claim((data >> np.uint64(cb)).astype(np.int64), node)
                lay.link(l1_node, node, "L1 entries")
    resolve_data_owners(img, lay, seen_l2)
    if journals:
        lay.journals = journals if isinstance(journals, list) else find_journals(img, lay.free_clusters())
        for area in lay.journals:
            previous = None
            for k, jc in enumerate(area.clusters):
                node = lay.add(Role.JOURNAL, jc.offset, 4096, "image",
                               f"journal cluster at 0x{jc.offset:x} ({jc.hash_entries} hash entries, {jc.ending})")
                lay.claim_range(node)
                if previous is not None:
                    lay.link(previous, node, "journal END entry", k)
                previous = node


def resolve_data_owners(img: Image, lay: Layout, l2_tables: dict[int, Structure]) -> None:
    """Name the data side of conflicts whose first claimant was data (its owner is not kept per cluster)."""
    unknown = {c.cluster for c in lay.conflicts if c.first == -1}
    if not unknown:
        return
    found: dict[int, int] = {}
    wanted = np.array(sorted(unknown), dtype=np.uint64)
    for offsets, desc, _ in img.l2_batches([o for o in l2_tables if o < img.file.size]):
        hits = np.isin((desc & T.L2E_OFFSET_MASK) >> np.uint64(lay.cluster_bits), wanted)
        for r, k in zip(*np.nonzero(hits), strict=True):
            cluster = int(desc[r, k] & T.L2E_OFFSET_MASK) >> lay.cluster_bits
            found.setdefault(cluster, lay.data_of_l2.get(offsets[r], l2_tables[offsets[r]].id))
    lay.conflicts = [c if c.first != -1 else Conflict(c.cluster, found.get(c.cluster, c.second), c.second)
                     for c in lay.conflicts]


def _claim_data_batched(img: Image, lay: Layout, tables: list[Structure]) -> None:
    """The data and compressed ranges of many L2 tables, read and claimed a batch at a time."""
    by_offset = {s.offset: s for s in tables}
    for offsets, desc, _ in img.l2_batches([s.offset for s in tables]):
        _claim_batch(img, lay, [by_offset[o] for o in offsets], desc)


def _claim_batch(img: Image, lay: Layout, l2s: list[Structure], desc: np.ndarray, first=False) -> None:
    """Claim the data clusters and compressed ranges of decoded L2 tables (rows of ``desc``; ``first``:
    their ``tables.contiguous_rows`` if known, False if not yet worked out)."""
    h = img.header
    if h.has_data_file:
        return
    cb, cs = h.cluster_bits, h.cluster_size
    if first is False:
        first = T.contiguous_rows(desc, cs)
    if first is not None:
        _claim_contiguous(lay, l2s, first, desc.shape[1])
        return
    d = T.Descriptors(desc, False)  # (no external data file here)
    compressed, data, valid = d.compressed, d.offset, d.aligned_data(cs)
    rows = np.nonzero(valid.any(axis=1))[0]
    if rows.size:
        data_ids = np.full(len(l2s), -1, dtype=np.int32)
        for r in rows.tolist():
            data_ids[r] = _data_node(lay, l2s[r])
            if lay.notes is not None:
                index = np.flatnonzero(valid[r])
                _note_runs(lay.notes, l2s[r], index, data[r][index], cs)
        lay.claim_many((data[valid] >> np.uint64(cb)).astype(np.int64), np.repeat(data_ids, valid.sum(axis=1)),
                       Role.DATA)
    for r in np.nonzero(compressed.any(axis=1))[0].tolist():
        start, sectors = T.compressed_fields(desc[r][compressed[r]], cb)
        end = start + sectors * np.uint64(512) - (start & np.uint64(511))
        s = lay.add(Role.COMPRESSED, int(start.min()), int((end - start).sum()), l2s[r].owner,
                    f"compressed data of L2 table at 0x{l2s[r].offset:x}", count=int(compressed[r].sum()))
        if lay.notes is not None:
            lay.notes.compressed[l2s[r].offset] = (s.id, int(np.flatnonzero(compressed[r])[0]))
            lay.notes.bulk.add(s.id)
        _claim_compressed(lay, start, end, s)


def _data_node(lay: Layout, l2: Structure) -> int:
    """The structure standing for the data of one L2 table (claimed in bulk, without extents)."""
    sid = lay.add(Role.DATA, 0, 0, l2.owner, f"data of L2 table at 0x{l2.offset:x}").id
    lay.data_of_l2[l2.offset] = sid
    if lay.notes is not None:
        lay.notes.bulk.add(sid)
    return sid


def _note_runs(notes: GraphNotes, l2: Structure, index: np.ndarray, host: np.ndarray, cs: int) -> None:
    """Keep the runs of one table's data for the graph: entries ``index`` name the clusters at ``host``."""
    breaks = np.flatnonzero((np.diff(host) != np.uint64(cs)) | (np.diff(index) != 1)) + 1
    runs = DataRuns(int(host.size), int(host.min()), int(breaks.size) + 1, int(index[0]))
    if runs.runs <= MAX_EXTENTS and notes.stored + runs.runs <= MAX_STORED_RUNS:
        starts = np.concatenate(([0], breaks))
        runs.entry, runs.host = index[starts], host[starts]
        runs.length = np.diff(np.concatenate((starts, [host.size])))
        notes.stored += runs.runs
    notes.data[l2.offset] = runs


def _claim_contiguous(lay: Layout, l2s: list[Structure], first: np.ndarray, n: int) -> None:
    """_claim_batch for rows that are each one run of ``n`` contiguous data clusters from ``first``:
    slices of the role array when the runs are in order, apart and free, as they are in a preallocated
    image; otherwise the cluster by cluster claim, which names the conflicts."""
    ids = [_data_node(lay, s) for s in l2s]
    if lay.notes is not None:
        for s, host in zip(l2s, (first & T.L2E_OFFSET_MASK).tolist(), strict=True):  # one run each
            lay.notes.data[s.offset] = DataRuns(n, host, 1, 0, np.zeros(1, np.int64), np.array([host], np.uint64),
                                                np.array([n], np.int64))
            lay.notes.stored += 1
    lo = ((first & T.L2E_OFFSET_MASK) >> np.uint64(lay.cluster_bits)).astype(np.int64)
    starts = lo.tolist()
    in_order = all(b >= a + n for a, b in zip(starts, starts[1:]))
    if in_order and starts[-1] + n <= len(lay.role) and not any(lay.role[a:a + n].any() for a in starts):
        for a in starts:
            lay.role[a:a + n] = Role.DATA
        return
    clusters = (lo[:, None] + np.arange(n, dtype=np.int64)).ravel()
    lay.claim_many(clusters, np.repeat(np.array(ids, dtype=np.int32), n), Role.DATA)


def _claim_compressed(lay: Layout, start: np.ndarray, end: np.ndarray, s: Structure) -> None:
    """Record compressed byte ranges and claim every host cluster they touch."""
    lay.compressed_ranges.append((start, end, s.id))
    first = (start >> np.uint64(lay.cluster_bits)).astype(np.int64)
    last = ((end - np.uint64(1)) >> np.uint64(lay.cluster_bits)).astype(np.int64)
    lay.claim(np.concatenate([(first + k)[first + k <= last] for k in range(int((last - first).max()) + 1)]), s)
