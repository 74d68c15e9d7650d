"""The walk of the L1 and L2 tables in `qemu-img check`, and OFLAG_COPIED.

Reference: block/qcow2-refcount.c (QEMU 7.2) check_refcounts_l1, check_refcounts_l2 and
check_oflag_copied (which reads only the on-disk refcounts, so it runs in the same pass over the
active tables); block/qcow2.h qcow2_get_cluster_type. Spec (docs/interop/qcow2.txt) "Cluster
mapping", "Extended L2 Entries", "Compressed Clusters Descriptor", and "Snapshots" for the snapshots'
L1 tables.

QEMU walks an L2 table once for every L1 entry that names it, and a snapshot's L1 once for every
snapshot entry; here each distinct L2 table is read once, across the active walk and across all
snapshot walks, and its references and findings are multiplied (the counters stay qemu's to the unit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ...findings import Severity
from ...model import image
from ...model import tables as T
from ...model.qcow2_header import QCOW_MAX_L1_SIZE
from ...model.image import L1Group
from ...model.tables import Kind
from .imrt import OWNER, CheckRun, Refs, capped, room_for


@dataclass
class L2Batch:
    """A batch of distinct L2 tables as the walk read them (``Image.l2_batches``): their offsets, descriptors
    (rows) and extended-L2 subcluster bitmaps (else None), handed on to every other consumer of the tables."""

    offsets: list[int]
    desc: np.ndarray
    bitmap: np.ndarray | None
    cluster_size: int
    data_file: bool  # the image has an external data file: its entries reference no host cluster here
    _first: tuple[np.ndarray | None] | None = field(default=None, repr=False)

    def contiguous_first(self) -> np.ndarray | None:
        """``tables.contiguous_rows`` of the batch (None with an external data file, where no fast path
        applies), worked out at most once for the walk and the host layout."""
        if self._first is None:
            self._first = (None if self.data_file else T.contiguous_rows(self.desc, self.cluster_size),)
        return self._first[0]


@dataclass
class _Batch:
    """A batch of distinct L2 tables being checked: ``weight[r]`` references to table ``r`` in all (None: one
    each), ``refs(r)`` who makes them."""

    offsets: list[int]
    weight: np.ndarray | None
    refs: Callable[[int], Refs]


@dataclass
class _Tables:
    """The distinct L2 tables of a walk, in the order QEMU first meets them, and who references each."""

    offsets: np.ndarray
    weight: np.ndarray
    refs: Callable[[int], Refs]


@dataclass
class _L2Entries:
    """The entries of a batch of L2 tables as check_refcounts_l2 judges them, past the fast path: ``desc``
    flattened (``n`` entries a table), ``bitmap`` the subcluster bitmaps of extended entries (else None),
    ``types`` their qcow2_get_cluster_type (`tables.cluster_types`)."""

    run: CheckRun
    b: _Batch
    desc: np.ndarray
    bitmap: np.ndarray | None
    n: int
    types: np.ndarray
    owner: str
    frag: bool

    def __post_init__(self) -> None:
        b, n = self.b, self.n
        self.weight_of = None if b.weight is None else (lambda where: b.weight[where // n])  # findings per entry

    def where(self, k: int) -> tuple[str, int]:
        """The structure and host offset of entry ``k``, for its findings."""
        offsets, n = self.b.offsets, self.n
        return (f"{self.owner} L2 table at 0x{offsets[k // n]:x}",
                offsets[k // n] + (k % n) * self.run.img.header.l2_entry_size)


def _check_l2_batch(run: CheckRun, b: _Batch, desc2: np.ndarray, bitmap2: np.ndarray | None, owner: str,
                    frag: bool) -> tuple[np.ndarray, np.ndarray]:
    """check_refcounts_l2 for a batch of distinct L2 tables (rows), vectorised, each as many times as it is
    referenced (``b.weight``).

    Returns the indices of the allocated entries (NORMAL and ZERO_ALLOC) and their host offsets.
    """
    h = run.img.header
    n = desc2.shape[1]
    desc = desc2.ravel()
    extended = bitmap2 is not None
    # the usual batch: no compressed, zero-flagged, reserved-bit or unaligned entry: no rule can fire
    if not extended and not h.has_data_file and not (desc & T.unusual_bits(h.cluster_size)).any():
        offs = desc & T.L2E_OFFSET_MASK
        alloc = np.flatnonzero(offs)
        offs = offs[alloc]
        _count_allocated(run, b, alloc, offs, n, frag, owner)
        return alloc, offs
    l2 = _L2Entries(run, b, desc, bitmap2.ravel() if extended else None, n,
                    T.cluster_types(desc, extended=h.extended_l2, has_data_file=h.has_data_file), owner, frag)
    _reserved_bits(l2)
    _compressed(l2)
    alloc, offs = _allocated(l2)
    if extended:
        _unallocated_with_alloc_bits(l2)
    return alloc, offs


def _reserved_bits(l2: _L2Entries) -> None:
    """check_refcounts_l2: reserved bits set in an entry that is not compressed."""
    run, b, desc, n, where = l2.run, l2.b, l2.desc, l2.n, l2.where
    for k in capped(run, "l2.reserved_bits", (l2.types != Kind.COMPRESSED) & ((desc & T.L2E_STD_RESERVED_MASK) != 0),
                    weight_of=l2.weight_of):
        e = int(desc[k])
        run.add("l2.reserved_bits", Severity.CORRUPTION, f"L2 entry {k % n} 0x{e:016x} has reserved bits set "
                f"(0x{e & int(T.L2E_STD_RESERVED_MASK):x})", *where(k),
                f"ERROR found l2 entry with reserved bits set: {e:x}", refs=b.refs(k // n))


def _compressed(l2: _L2Entries) -> None:
    """check_refcounts_l2, QCOW2_CLUSTER_COMPRESSED: no OFLAG_COPIED, no data file, no subcluster bitmap;
    the others reference the host clusters their data spans (and count as allocated, compressed and
    fragmented)."""
    run, b, desc, bitmap, n, where, weight_of = l2.run, l2.b, l2.desc, l2.bitmap, l2.n, l2.where, l2.weight_of
    h = run.img.header
    extended = bitmap is not None
    comp = l2.types == Kind.COMPRESSED
    if not comp.any():
        return
    for k in capped(run, "l2.compressed_copied", comp & ((desc & T.OFLAG_COPIED) != 0), weight_of=weight_of):
        coffset = int(T.compressed_fields(desc[k:k + 1], h.cluster_bits)[0][0])
        run.add("l2.compressed_copied", Severity.CORRUPTION, f"compressed L2 entry {k % n} has OFLAG_COPIED set",
                *where(k), f"ERROR: coffset=0x{coffset:x}: copied flag must never be set for "
                "compressed clusters", refs=b.refs(k // n))
    refused = comp.copy() if h.has_data_file else (comp & (bitmap != 0) if extended else np.zeros_like(comp))
    if h.has_data_file:
        for k in capped(run, "l2.compressed_with_data_file", refused, weight_of=weight_of):
            run.add("l2.compressed_with_data_file", Severity.CORRUPTION, f"compressed L2 entry {k % n} in an "
                    "image with an external data file", *where(k),
                    f"ERROR compressed cluster {k % n} with data file, entry=0x{int(desc[k]) & ~(1 << 63):x}",
                    refs=b.refs(k // n))
    else:
        for k in capped(run, "l2.compressed_subcluster_bitmap", refused, weight_of=weight_of):
            run.add("l2.compressed_subcluster_bitmap", Severity.CORRUPTION, f"compressed L2 entry {k % n} has "
                    f"subcluster bitmap 0x{int(bitmap[k]):x} (must be 0)", *where(k),
                    f"ERROR compressed cluster {k % n} with non-zero subcluster allocation bitmap, "
                    f"entry=0x{int(desc[k]) & ~(1 << 63):x}", refs=b.refs(k // n))
    counted = np.flatnonzero(comp & ~refused)
    if counted.size:
        coffset, sectors = T.compressed_fields(desc[counted], h.cluster_bits)
        w = None if b.weight is None else b.weight[counted // n]
        run.inc_clusters(coffset, sectors * np.uint64(512) - (coffset & np.uint64(511)),
                         f"{l2.owner} compressed data", w, lambda j: b.refs(int(counted[j]) // n))
        if l2.frag:
            c = counted.size if w is None else int(w.sum())
            run.stats.allocated_clusters += c
            run.stats.compressed_clusters += c
            run.stats.fragmented_clusters += c


def _allocated(l2: _L2Entries) -> tuple[np.ndarray, np.ndarray]:
    """check_refcounts_l2, QCOW2_CLUSTER_NORMAL and ZERO_ALLOC: the subcluster bitmap, the alignment of the
    host offset, then the references and fragmentation (``_count_allocated``). Returns the entries' indices
    and host offsets."""
    run, b, desc, bitmap, n, where = l2.run, l2.b, l2.desc, l2.bitmap, l2.n, l2.where
    h = run.img.header
    alloc = np.flatnonzero((l2.types == Kind.NORMAL) | (l2.types == Kind.ZERO_ALLOC))
    if not alloc.size:
        return alloc, np.zeros(0, dtype=np.uint64)
    offs = desc[alloc] & T.L2E_OFFSET_MASK
    alloc_weight = None if b.weight is None else (lambda where: b.weight[alloc[where] // n])
    if bitmap is not None:
        bms = bitmap[alloc]
        for j in capped(run, "l2.subcluster_alloc_and_zero", T.allocated_and_zero(bms),
                        weight_of=alloc_weight):
            k = int(alloc[j])
            run.add("l2.subcluster_alloc_and_zero", Severity.CORRUPTION, f"L2 entry {k % n}: subclusters both "
                    f"allocated and zero (bitmap 0x{int(bitmap[k]):016x})", *where(k),
                    f"ERROR offset={int(offs[j]):x}: Allocated cluster has corrupted subcluster allocation bitmap",
                    refs=b.refs(k // n))
    unaligned = (offs % np.uint64(h.cluster_size)) != 0
    if unaligned.any():
        # qemu names a cluster with data (allocated subclusters, or no zero flag) apart from a preallocated one
        data = T.any_allocated(bitmap[alloc]) if h.extended_l2 else (desc[alloc] & T.OFLAG_ZERO) == 0
        for j in capped(run, "l2.data_unaligned", unaligned & data, weight_of=alloc_weight):
            k, o = int(alloc[j]), int(offs[j])
            run.add("l2.data_unaligned", Severity.CORRUPTION, f"L2 entry {k % n}: data cluster offset 0x{o:x} "
                    "is not cluster aligned", *where(k),
                    f"ERROR offset={o:x}: Data cluster is not properly aligned; L2 entry corrupted.",
                    refs=b.refs(k // n))
        for j in capped(run, "l2.preallocated_unaligned", unaligned & ~data, weight_of=alloc_weight):
            k, o = int(alloc[j]), int(offs[j])
            run.add("l2.preallocated_unaligned", Severity.CORRUPTION, f"L2 entry {k % n}: preallocated zero "
                    f"cluster offset 0x{o:x} is not cluster aligned", *where(k),
                    f"ERROR offset={o:x}: Preallocated cluster is not properly aligned; L2 entry corrupted.",
                    refs=b.refs(k // n))
    _count_allocated(run, b, alloc, offs, n, l2.frag, l2.owner)
    return alloc, offs


def _unallocated_with_alloc_bits(l2: _L2Entries) -> None:
    """check_refcounts_l2, QCOW2_CLUSTER_UNALLOCATED in an extended L2 table: no allocated subcluster."""
    run, bitmap, n = l2.run, l2.bitmap, l2.n
    for k in capped(run, "l2.unallocated_with_alloc_bits",
                    (l2.types == Kind.UNALLOCATED) & T.any_allocated(bitmap), weight_of=l2.weight_of):
        run.add("l2.unallocated_with_alloc_bits", Severity.CORRUPTION, f"unallocated L2 entry {k % n} has "
                f"subcluster allocation bits 0x{int(bitmap[k]) & 0xFFFFFFFF:x}", *l2.where(k),
                "ERROR: Unallocated cluster has non-zero subcluster allocation map", refs=l2.b.refs(k // n))


def _count_allocated(run: CheckRun, b: _Batch, alloc: np.ndarray, offs: np.ndarray, n: int, frag: bool,
                     owner: str) -> None:
    """Fragmentation statistics (within each L2 table) and one reference per allocated cluster, each
    times the table is referenced."""
    h = run.img.header
    w = None if b.weight is None else b.weight[alloc // n]
    if frag and alloc.size:
        same_table = (alloc[1:] // n) == (alloc[:-1] // n)
        fragmented = same_table & (offs[1:] != offs[:-1] + np.uint64(h.cluster_size))
        if w is None:
            run.stats.allocated_clusters += int(alloc.size)
            run.stats.fragmented_clusters += int(fragmented.sum())
        else:
            run.stats.allocated_clusters += int(w.sum())
            run.stats.fragmented_clusters += int(w[1:][fragmented].sum())
    if not h.has_data_file:
        run.inc_clusters(offs, h.cluster_size, f"{owner} data", w, lambda j: b.refs(int(alloc[j]) // n))


def walk(run: CheckRun, groups: list[L1Group], active: bool,
         active_l1: image.L1References | None = None) -> Iterator[L2Batch]:
    """check_refcounts_l1 for every owner of every group; for the active L1 also check_oflag_copied
    (which reads only on-disk refcounts, so it can run in the same pass). Yields each batch of L2 tables
    once it is checked, for the caller to hand on (``active_l1``: the active L1's references, if known).

    Each distinct L2 table is read once for all the groups and counted as often as QEMU would walk it
    (spec "L1 table": an L2 table may be named by several entries, a snapshot's L1 by several snapshots,
    the same L2 table by several snapshots' L1s).
    """
    owner = "active" if active else OWNER
    found: list[tuple[L1Group, np.ndarray, np.ndarray]] = []  # group, its distinct L2 offsets, references
    for g in groups:
        if not g.entries or g.entries > QCOW_MAX_L1_SIZE // 8:
            continue  # too large: qemu refuses to open the image (header.l1_table_too_large), and so reads nothing
        refs = [(o, 1) for o in g.owners]
        run.inc_range(g.offset, g.entries * 8, f"{owner} L1 table", refs=refs)
        if not g.walked:
            _not_walked(run, g)
            continue
        l1refs = active_l1 if active and active_l1 is not None else run.img.l1_references(g.offset, g.entries)
        index, l1 = l1refs.index, l1refs.entries
        distinct, counts, inverse = l1refs.distinct, l1refs.counts, l1refs.inverse
        times = len(refs)
        each = None if times == 1 else (lambda where, times=times: np.full(where.size, times))
        where = f"{owner} L1 table at 0x{g.offset:x}"
        for k in capped(run, "l1.reserved_bits", (l1 & T.L1E_RESERVED_MASK) != 0, weight_of=each):
            i, e = int(index[k]), int(l1[k])
            run.add("l1.reserved_bits", Severity.CORRUPTION, f"L1 entry {i} 0x{e:016x} has reserved bits set",
                    where, g.offset + i * 8, f"ERROR found L1 entry with reserved bits set: {e:x}", refs=refs)
        l2_offsets = l1 & T.L1E_OFFSET_MASK
        run.inc_clusters(distinct, run.cs, f"{owner} L2 table", counts * times,
                         lambda k, owners=g.owners, counts=counts: [(o, int(counts[k])) for o in owners])
        for k in capped(run, "l1.l2_unaligned", l2_offsets % np.uint64(run.cs) != 0, weight_of=each):
            i, o = int(index[k]), int(l2_offsets[k])
            run.add("l1.l2_unaligned", Severity.CORRUPTION, f"L1 entry {i}: L2 table offset 0x{o:x} is not "
                    "cluster aligned", where, g.offset + i * 8,
                    f"ERROR l2_offset={o:x}: Table is not cluster aligned; L1 entry corrupted", refs=refs)
        if active:
            oflag_l1(run, index, l1, distinct, inverse)
        found.append((g, distinct, counts))
    tables = _distinct_tables(found)
    # a table wholly past the end of the file reads as zeros: no entry of it references anything
    inside = np.flatnonzero(tables.offsets < np.uint64(run.file_size))
    room = run.img.l2_walk_budget() // run.cs
    if inside.size > room:
        cut, inside = inside[room:], inside[:room]
        who = "the active L1" if active else "the snapshot L1s"
        run.add("check.not_walked", Severity.WARNING, f"{cut.size} of the {inside.size + cut.size} distinct L2 "
                f"tables named by {who} were not walked: the budget of {room * run.cs} bytes of L2 tables read "
                "was spent (tables at unaligned offsets overlap one another). Their entries and data are not "
                "counted, so refcount findings may differ from qemu-img check's", "L2 tables",
                int(tables.offsets[cut[0]]), None, None)
    done = 0
    for offsets, desc, bitmap in run.img.l2_batches(tables.offsets[inside].tolist()):
        rows = inside[done:done + len(offsets)]
        done += len(offsets)
        batch = L2Batch(offsets, desc, bitmap, run.cs, run.img.header.has_data_file)
        weight = tables.weight[rows]
        b = _Batch(offsets, None if (weight == 1).all() else weight, lambda r, rows=rows: tables.refs(int(rows[r])))
        if bitmap is None and _contiguous_batch(run, b, batch, active, active):
            yield batch
            continue
        alloc, offs = _check_l2_batch(run, b, desc, bitmap, owner, active)
        if active:
            oflag_l2(run, b, desc, alloc, offs)
        yield batch


def _distinct_tables(found: list[tuple[L1Group, np.ndarray, np.ndarray]]) -> _Tables:
    """The distinct L2 tables named by the groups walked, in the order QEMU first meets them, with the
    references to each (a group's count for each of its owners)."""
    found = [f for f in found if f[1].size]
    if not found:
        return _Tables(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64), lambda i: [])
    if len(found) == 1:
        g, distinct, counts = found[0]
        owners = g.owners
        return _Tables(distinct, counts * len(owners), lambda i: [(o, int(counts[i])) for o in owners])
    offsets = np.concatenate([d for _, d, _ in found])
    counts = np.concatenate([c for _, _, c in found])
    group = np.concatenate([np.full(d.size, k, dtype=np.int64) for k, (_, d, _) in enumerate(found)])
    owners = [g.owners for g, _, _ in found]
    weight = counts * np.array([len(o) for o in owners], dtype=np.int64)[group]
    order = np.argsort(offsets, kind="stable")  # stable: each run starts at the table's first mention
    starts = np.flatnonzero(np.concatenate(([True], offsets[order][1:] != offsets[order][:-1])))
    ends = np.append(starts[1:], order.size)
    total = np.add.reduceat(weight[order], starts)
    first = np.argsort(order[starts], kind="stable")  # the runs in the order the groups meet their tables
    starts, ends, total = starts[first], ends[first], total[first]

    def refs(i: int) -> Refs:
        return [(o, int(counts[p])) for p in order[starts[i]:ends[i]].tolist() for o in owners[group[p]]]

    return _Tables(offsets[order[starts]], total, refs)


def _not_walked(run: CheckRun, g: L1Group) -> None:
    """A snapshot L1 past the budget: said once for all its snapshots, rather than skipped silently."""
    names = ", ".join(g.owners[:8]) + (f" and {len(g.owners) - 8} more" if len(g.owners) > 8 else "")
    run.add("check.not_walked", Severity.WARNING, f"L1 table at 0x{g.offset:x} ({g.entries} entries) of "
            f"{names} was not walked: the budget of {image.MAX_L1_WALK} L1 entries read across the snapshots was "
            "spent. Its L2 tables and their data are not counted, so refcount findings may differ from "
            "qemu-img check's", 
            "snapshot table", g.snapshots[0].entry_offset if g.snapshots else None, None, None)


def _contiguous_batch(run: CheckRun, b: _Batch, batch: L2Batch, frag: bool, active: bool) -> bool:
    """The whole of check_refcounts_l2 and check_oflag_copied for a batch whose every table is one run of
    contiguous normal clusters (``tables.contiguous_rows``), when no finding can come of it; False (and
    nothing done) otherwise, for the general path to judge the batch.

    No entry rule can fire on such rows and none is fragmented; each row adds one reference to a range
    of clusters (for each reference to the table), and OFLAG_COPIED holds when the refcounts of the range
    are all 1 (flag set) or none is (flag clear).
    """
    if run.img.header.has_data_file or 0 in b.offsets:
        return False  # data file: no references counted; offset 0: qemu skips the L1 entry for OFLAG_COPIED
    first = batch.contiguous_first()
    if first is None:
        return False
    n = batch.desc.shape[1]
    lo = ((first & T.L2E_OFFSET_MASK) >> np.uint64(run.cb)).astype(np.int64).tolist()
    if max(lo) + n > run.nb_clusters:
        return False  # past the end of the file: inc_range names those references
    if active:
        copied = ((first & T.OFLAG_COPIED) != 0).tolist()
        for a, c in zip(lo, copied, strict=True):
            if run.refcount_ones(a, a + n) != (n if c else 0):
                return False  # a mismatch (or an unreadable refcount) somewhere: the general path names it
    weight = [1] * len(lo) if b.weight is None else b.weight.tolist()
    if frag:
        run.stats.allocated_clusters += n * sum(weight)
    for a, w in zip(lo, weight, strict=True):
        run.increment_range(a, a + n, w)
    return True


def oflag_l1(run: CheckRun, index: np.ndarray, l1: np.ndarray, distinct: np.ndarray, inverse: np.ndarray) -> None:
    """check_oflag_copied, L1 part: COPIED must say whether the L2 table's refcount is exactly 1
    (``index``, ``l1``: the nonzero entries and where they are; ``distinct[inverse]``: their L2 offsets)."""
    refcounts, bad = run.stored((distinct >> np.uint64(run.cb)).astype(np.int64))  # each table looked up once
    # qemu skips entries with offset 0, and says nothing of refcounts it cannot read
    refcounts, bad = refcounts[inverse], bad[inverse] | (distinct[inverse] == 0)
    copied = (l1 >> np.uint64(63)) != 0
    for k in capped(run, "l1.copied_mismatch", ~bad & ((refcounts == 1) != copied)):
        i, e, rc = int(index[k]), int(l1[k]), int(refcounts[k])
        run.add("l1.copied_mismatch", Severity.CORRUPTION, f"L1 entry {i}: OFLAG_COPIED is "
                f"{'set' if e >> 63 else 'clear'} but the L2 table's refcount is {rc}", "active L1 table",
                run.img.header.l1_table_offset + i * 8,
                f"ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} refcount={rc}")


def oflag_l2(run: CheckRun, b: _Batch, desc2: np.ndarray, alloc: np.ndarray, offs: np.ndarray) -> None:
    """check_oflag_copied, L2 part, for the allocated entries of a batch of active L2 tables, each as
    often as the L1 names it (qemu skips L1 entries with offset 0)."""
    h = run.img.header
    n = desc2.shape[1]
    offsets = b.offsets
    row_ok = np.array(offsets, dtype=np.uint64) != 0
    if not row_ok.all():
        keep = row_ok[alloc // n]
        alloc, offs = alloc[keep], offs[keep]
    if alloc.size == 0:
        return
    entries = desc2.ravel()[alloc]
    if h.has_data_file:
        is_one, bads = np.ones(alloc.shape, dtype=bool), np.zeros(alloc.shape, dtype=bool)
    else:
        clusters = (offs >> np.uint64(run.cb)).astype(np.int64)
        is_one, bads = run.refcount_is_one(clusters)
    wrong = np.flatnonzero(~bads & (is_one != ((entries >> np.uint64(63)) != 0)))
    weight_of = None if b.weight is None else (lambda where: b.weight[alloc[where] // n])
    wrong, rest = room_for(run, "l2.copied_mismatch", wrong, weight_of)
    exact = np.ones(wrong.shape, dtype=np.uint64) if h.has_data_file else run.stored(clusters[wrong])[0]
    for j, rc2 in zip(wrong.tolist(), exact.tolist(), strict=True):
        k = int(alloc[j])
        l2_offset = offsets[k // n]
        e2 = int(entries[j])
        run.add("l2.copied_mismatch", Severity.CORRUPTION, f"L2 entry {k % n}: OFLAG_COPIED is "
                f"{'set' if e2 >> 63 else 'clear'} but the data cluster's refcount is {rc2}",
                f"active L2 table at 0x{l2_offset:x}", l2_offset + (k % n) * h.l2_entry_size,
                f"ERROR OFLAG_COPIED data cluster: l2_entry={e2:x} refcount={rc2}", refs=b.refs(k // n))
    run.skip("l2.copied_mismatch", rest)
