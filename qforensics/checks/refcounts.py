"""Refcount consistency, as `qemu-img check` judges it, plus OFLAG_COPIED and L1/L2 entry rules.

Reference: block/qcow2-refcount.c (QEMU 7.2) qcow2_check_refcounts,
calculate_refcounts, check_refcounts_l1/l2, check_refblocks,
compare_refcounts, check_oflag_copied; block/qcow2-bitmap.c
qcow2_check_bitmaps_refcounts; block/qcow2-snapshot.c
qcow2_check_read_snapshot_table. Each finding carries the line qemu prints
(`qemu_check`) and the counter it adds to (`qemu_counts`).

References are counted in a numpy array (the in-memory refcount table).
QEMU walks an L2 table once for every L1 entry that names it, and a snapshot's
L1 once for every snapshot entry; here each distinct L2 table is read once,
across the active walk and across all snapshot walks, and its references and
findings are multiplied (the counters stay qemu's to the unit).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..findings import Finding, Severity
from ..model import Image, Unreadable, image
from ..model import tables as T
from ..model.header import QCOW_MAX_L1_SIZE, QCOW_MAX_SNAPSHOTS, _table_offset_invalid
from ..model.image import L1Group
from ..text import clip

MAX_FINDINGS_PER_CODE = 10_000
MAX_RUNS = 256  # sorted references in at most this many contiguous runs are counted run by run
BLOCK_CACHE = 32  # decoded refcount blocks kept for lookups out of order (lookups are grouped by block)
COMPARE_CHUNK = 1 << 20  # clusters compared at a time (the unit in which findings are grouped)
COMPARE_PIECE = 1 << 15  # within a chunk whose refcounts are all readable, clusters compared at a time
L2_BITMAP_ALL_ALLOC = np.uint64(0xFFFFFFFF)
# qcow2_get_cluster_type
UNALLOCATED, NORMAL, COMPRESSED, ZERO_PLAIN, ZERO_ALLOC = range(5)
# stands for the owner in the texts of a walk several owners share; each finding is written once per owner
OWNER = "\ue000owner\ue000"
Refs = list[tuple[str | None, int]]  # (owner, references) behind one fault; owner None: the text is final


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
class Stats:
    """The numbers `qemu-img check` reports besides its counters (BlockFragInfo, image_end_offset)."""

    total_clusters: int = 0
    allocated_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0
    image_end_offset: int = 0
    # qemu-img's "Check failed: <strerror>" when qcow2_co_check_locked itself fails: it then prints no numbers
    check_failed: str | None = None


@dataclass
class _Run:
    img: Image
    findings: list[Finding] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    per_code: dict[str, int] = field(default_factory=dict)
    dropped: dict[tuple[str, str | None], int] = field(default_factory=dict)  # (code, counter) -> unlisted
    qemu_stopped: bool = False  # past the point where qemu-img check gives up: our findings only

    def __post_init__(self) -> None:
        h = self.img.header
        self.cb, self.cs = h.cluster_bits, h.cluster_size
        self.file_size = self.img.file.size
        self.nb_clusters = -(-self.file_size // self.cs)
        self.refcount_max = (1 << h.refcount_bits) - 1
        self.dtype = np.dtype(np.uint8 if h.refcount_bits <= 8 else np.uint16 if h.refcount_bits <= 16
                              else np.uint32 if h.refcount_bits <= 32 else np.uint64)
        # the in-memory refcount table, as wide as the image's refcounts; one spare cluster because qemu
        # accepts references less than a cluster past EOF and grows its table
        self.imrt = np.zeros(self.nb_clusters + 1, dtype=self.dtype)
        self.overflows: dict[int, int] = {}  # cluster -> increments qemu refused at refcount_max
        self.extent = self.nb_clusters
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()
        reft = self.img.refcount_table()
        self.reftable = np.zeros(0, dtype=np.uint64) if isinstance(reft, Unreadable) else reft
        self.reftable_entries = h.refcount_table_clusters * self.cs // 8
        self.per_block = self.cs * 8 // h.refcount_bits
        self._one: tuple[np.ndarray, np.ndarray | None] | None = None  # packed bits: refcount == 1, unreadable

    # -- findings ---------------------------------------------------------------------------------------

    def add(self, code: str, severity: Severity, message: str, structure: str, host_offset: int | None,
            qemu_check: str | None, counts: str | None = "corruptions", guest_offset: int | None = None,
            refs: Refs | None = None) -> None:
        """One finding, or with ``refs`` one per reference (``OWNER`` in the texts replaced by each owner)."""
        if self.qemu_stopped:
            qemu_check = counts = None
        for owner, times in refs or ((None, 1),):
            listed = min(times, self.room(code))
            if listed:
                self.per_code[code] = self.per_code.get(code, 0) + listed
                f = Finding(code, severity, message if owner is None else message.replace(OWNER, owner),
                            structure if owner is None else structure.replace(OWNER, owner), host_offset,
                            guest_offset, qemu_check=qemu_check, qemu_counts=counts)
                self.findings.extend((f,) * listed)
            self.skip(code, times - listed, counts)  # the summary still adds to qemu's counter, so it stays exact

    def room(self, code: str) -> int:
        """How many more findings of ``code`` can be listed before the cap."""
        return max(0, MAX_FINDINGS_PER_CODE - self.per_code.get(code, 0))

    def skip(self, code: str, k: int, counts: str | None = "corruptions") -> None:
        """``k`` more findings of ``code`` past the cap: counted (for the .more summary), never formatted."""
        if k <= 0:
            return
        self.per_code[code] = self.per_code.get(code, 0) + k
        key = (code, None if self.qemu_stopped else counts)
        self.dropped[key] = self.dropped.get(key, 0) + k

    # -- in-memory refcount table ------------------------------------------------------------------------

    def inc_range(self, offset: int, size: int, what: str, refs: Refs | None = None) -> None:
        """qcow2_inc_refcounts_imrt for one byte range, once, or once for each reference of ``refs``."""
        if size <= 0:
            return
        if offset + size - self.file_size >= self.cs:
            self.add("refcount.reference_past_eof", Severity.CORRUPTION,
                     f"{what} at 0x{offset:x} (+0x{size:x}) runs one cluster or more past the end of the file "
                     f"(0x{self.file_size:x})", what, offset,
                     f"ERROR: counting reference for region exceeding the end of the file by one cluster or more: "
                     f"offset 0x{offset:x} size 0x{size:x}", refs=refs)
            return
        first, last = offset >> self.cb, (offset + size - 1) >> self.cb
        self.extent = max(self.extent, last + 1)
        self.increment_range(first, last + 1, 1 if refs is None else sum(t for _, t in refs))

    def inc_clusters(self, offsets: np.ndarray, sizes: np.ndarray | int, what: str,
                     weights: np.ndarray | int | None = None, refs_of: Callable[[int], Refs] | None = None) -> None:
        """inc_range for many ranges at once (vectorised); range ``k`` ``weights[k]`` times (made by
        ``refs_of(k)``, for the findings) when weights are given."""
        if offsets.size == 0:
            return
        offsets = offsets.astype(np.uint64, copy=False)
        if isinstance(sizes, int) and sizes == self.cs and not (offsets & np.uint64(self.cs - 1)).any() and \
                int(offsets.max()) < self.file_size:
            # aligned, inside the file
            self._increment_clusters((offsets >> np.uint64(self.cb)).astype(np.int64), weights)
            return
        sizes = np.broadcast_to(np.asarray(sizes, dtype=np.uint64), offsets.shape)
        end = offsets + sizes
        past = end > np.uint64(self.file_size) + np.uint64(self.cs - 1)
        per_range = weights is not None and np.ndim(weights) > 0
        if past.any():
            code = "refcount.reference_past_eof"
            weight_of = None if weights is None else \
                (lambda where: weights[where]) if per_range else (lambda where: np.full(where.size, weights))
            for k in _listed(self, code, past, weight_of=weight_of):
                self.inc_range(int(offsets[k]), int(sizes[k]), what, None if refs_of is None else refs_of(k))
            offsets, end = offsets[~past], end[~past]
            if per_range:
                weights = weights[~past]
        if offsets.size == 0:
            return
        first = (offsets >> np.uint64(self.cb)).astype(np.int64)
        last = ((end - np.uint64(1)) >> np.uint64(self.cb)).astype(np.int64)
        self.extent = max(self.extent, int(last.max()) + 1)
        span = last - first
        for k in range(int(span.max()) + 1):
            sel = span >= k
            self._increment_clusters((first + k)[sel], weights[sel] if per_range else weights)

    def _increment_clusters(self, idx: np.ndarray, weights: np.ndarray | int | None = None) -> None:
        """One reference to each listed cluster (repeats counted), or ``weights[k]`` to cluster ``idx[k]``."""
        if idx.size == 0:
            return
        if weights is not None and np.ndim(weights) > 0:
            if (weights == weights[0]).all():
                weights = int(weights[0])
            else:
                order = np.argsort(idx, kind="stable")
                idx = idx[order]
                starts = np.flatnonzero(np.concatenate(([True], idx[1:] != idx[:-1])))
                self.increment(idx[starts], np.add.reduceat(weights[order].astype(np.int64), starts))
                return
        times = 1 if weights is None else int(weights)
        steps = np.diff(idx)
        breaks = np.flatnonzero(steps != 1)
        if breaks.size <= MAX_RUNS and (steps > 0).all():
            # a few contiguous runs (preallocation, sequential writes): slices instead of gathers
            starts = np.concatenate(([0], breaks + 1))
            ends = np.concatenate((breaks + 1, [idx.size]))
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                self.increment_range(int(idx[a]), int(idx[b - 1]) + 1, times)
        elif (steps > 0).all():
            self.increment(idx, times)
        else:
            idx, n = np.unique(idx, return_counts=True)
            self.increment(idx, n * times)

    def increment_range(self, lo: int, hi: int, times: int = 1) -> None:
        """imrt[lo:hi] += times for a contiguous run, saturating as ``increment`` does."""
        seg = self.imrt[lo:hi]
        if seg.size and int(seg.max()) > self.refcount_max - times:  # a reduction, no temporary: saturation is rare
            wide = seg.astype(object if self.refcount_max >= 0xFFFFFFFF else np.int64) + times
            over = wide > self.refcount_max
            for c, extra in zip((np.flatnonzero(over) + lo).tolist(), (wide[over] - self.refcount_max).tolist(),
                                strict=True):
                self.overflows[c] = self.overflows.get(c, 0) + int(extra)
            seg[:] = np.minimum(wide, self.refcount_max).astype(self.dtype)
        else:
            seg += times

    def increment(self, idx: np.ndarray, n: np.ndarray | int) -> None:
        """imrt[idx] += n for distinct idx, saturating at refcount_max as qemu does (each refused
        increment is an overflow error)."""
        if self.refcount_max >= 0xFFFFFFFF:  # exact for 64-bit refcounts
            new = self.imrt[idx].astype(object) + (int(n) if np.ndim(n) == 0 else np.asarray(n).astype(object))
        else:
            new = self.imrt[idx].astype(np.int64) + n
        over = new > self.refcount_max
        if over.any():
            for c, extra in zip(idx[over].tolist(), (new[over] - self.refcount_max).tolist(), strict=True):
                self.overflows[c] = self.overflows.get(c, 0) + int(extra)
            new = np.where(over, self.refcount_max, new)
        self.imrt[idx] = np.asarray(new).astype(self.dtype)

    # -- stored refcounts (qcow2_get_refcount) -------------------------------------------------------------

    def block(self, rt_index: int, cache: bool = True) -> np.ndarray | None:
        """Refcounts of one block (qcow2_get_refcount); None when qemu's lookup fails (unaligned block)."""
        if rt_index >= self.reftable_entries or rt_index >= len(self.reftable):
            return np.zeros(self.per_block, dtype=self.dtype)
        offset = int(self.reftable[rt_index] & T.REFT_OFFSET_MASK)
        if offset == 0:
            return np.zeros(self.per_block, dtype=self.dtype)
        if offset % self.cs:
            return None
        blk = self._blocks.get(offset)
        if blk is None:
            raw = self.img.file.read(offset, self.cs).ljust(self.cs, b"\0")  # qemu reads zeros past EOF
            blk = T.refcount_block(raw, self.img.header.refcount_order).astype(self.dtype, copy=False)
            if cache:
                self._blocks[offset] = blk
                if len(self._blocks) > BLOCK_CACHE:
                    self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(offset)
        return blk

    def block_readable(self, rt_index: int) -> bool:
        """Whether qemu can look up the refcounts of block ``rt_index`` (``block`` returns an array)."""
        if rt_index >= self.reftable_entries or rt_index >= len(self.reftable):
            return True
        return int(self.reftable[rt_index] & T.REFT_OFFSET_MASK) % self.cs == 0

    def stored_range(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray | None]:
        """On-disk refcounts of clusters [lo, hi), and the mask of those qemu cannot read (None if all can)."""
        values = np.zeros(hi - lo, dtype=self.dtype)
        bad = None
        for r in range(lo // self.per_block, -(-hi // self.per_block)):
            a, b = max(lo, r * self.per_block), min(hi, (r + 1) * self.per_block)
            blk = self.block(r, cache=False)
            if blk is None:
                bad = np.zeros(hi - lo, dtype=bool) if bad is None else bad
                bad[a - lo:b - lo] = True
            else:
                values[a - lo:b - lo] = blk[a - r * self.per_block:b - r * self.per_block]
        return values, bad

    def refcount_ones(self, lo: int, hi: int) -> int | None:
        """How many clusters of [lo, hi) have an on-disk refcount of exactly 1; None if qemu cannot read
        one of them. Blocks come from the cache: consecutive ranges share them."""
        ones = 0
        for r in range(lo // self.per_block, -(-hi // self.per_block)):
            blk = self.block(r)
            if blk is None:
                return None
            base = r * self.per_block
            ones += int(np.count_nonzero(blk[max(lo, base) - base:min(hi, base + self.per_block) - base] == 1))
        return ones

    def refcount_is_one(self, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whether each cluster's on-disk refcount is exactly 1, and whether qemu cannot read it.

        OFLAG_COPIED needs only that bit, so it is kept for the whole file as packed bits (2 MB for a
        1 TiB image) instead of looking the refcounts up table by table.
        """
        n = self.nb_clusters
        if self._one is None:
            one = np.zeros(-(-n // 8), dtype=np.uint8)
            bad_bits = None
            chunk = max(self.per_block, COMPARE_CHUNK // self.per_block * self.per_block)
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                stored, bad = self.stored_range(lo, hi)
                one[lo // 8:-(-hi // 8)] |= np.packbits(np.concatenate(
                    (np.zeros(lo % 8, dtype=bool), stored == 1)), bitorder="little")
                if bad is not None:
                    bad_bits = np.zeros_like(one) if bad_bits is None else bad_bits
                    bad_bits[lo // 8:-(-hi // 8)] |= np.packbits(np.concatenate(
                        (np.zeros(lo % 8, dtype=bool), bad)), bitorder="little")
            self._one = (one, bad_bits)
        inside = clusters < n
        if not inside.all():
            values, bad = self.stored(clusters)
            return values == 1, bad
        one, bad_bits = self._one
        shift = (clusters & 7).astype(np.uint8)
        is_one = ((one[clusters >> 3] >> shift) & 1).astype(bool)
        bad = np.zeros(clusters.shape, dtype=bool) if bad_bits is None else \
            ((bad_bits[clusters >> 3] >> shift) & 1).astype(bool)
        return is_one, bad

    def stored(self, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """On-disk refcounts of the given cluster indices and a mask of those qemu cannot read."""
        values = np.zeros(clusters.shape, dtype=np.uint64)
        bad = np.zeros(clusters.shape, dtype=bool)
        if clusters.size == 0:
            return values, bad
        lo, hi = int(clusters[0]), int(clusters[-1]) + 1
        if hi - lo == clusters.size and hi <= self.extent and (np.diff(clusters) == 1).all():
            stored, unreadable = self.stored_range(lo, hi)  # a contiguous run: whole blocks at a time
            return stored.astype(np.uint64), (bad if unreadable is None else unreadable)
        rt = clusters // self.per_block
        # clusters past the table or under a zero entry have refcount 0: only real blocks are looked up
        # (garbage entries name a different block each, millions of them)
        at = np.flatnonzero(rt < min(self.reftable_entries, len(self.reftable)))
        block_offsets = self.reftable[rt[at]] & T.REFT_OFFSET_MASK
        at, block_offsets = at[block_offsets != 0], block_offsets[block_offsets != 0]
        unaligned = block_offsets % np.uint64(self.cs) != 0
        bad[at[unaligned]] = True
        at = at[~unaligned]
        if at.size:
            order = at[np.argsort(rt[at], kind="stable")]
            edges = np.flatnonzero(np.diff(rt[order])) + 1
            for sel in np.split(order, edges):
                values[sel] = self.block(int(rt[sel[0]]))[clusters[sel] % self.per_block]
        return values, bad


def _cluster_types(desc: np.ndarray, extended: bool, data_file: bool) -> np.ndarray:
    """qcow2_get_cluster_type for every entry of an L2 table."""
    offset = desc & T.L2E_OFFSET_MASK
    types = np.full(desc.shape, NORMAL, dtype=np.int8)
    types[(offset == 0) & ~(data_file & ((desc & T.OFLAG_COPIED) != 0))] = UNALLOCATED
    if not extended:
        zero = (desc & T.OFLAG_ZERO) != 0
        types[zero & (offset != 0)] = ZERO_ALLOC
        types[zero & (offset == 0)] = ZERO_PLAIN
    types[(desc & T.OFLAG_COMPRESSED) != 0] = COMPRESSED
    return types


def _check_l2_batch(run: _Run, b: _Batch, desc2: np.ndarray, bitmap2: np.ndarray | None, owner: str,
                    frag: bool) -> tuple[np.ndarray, np.ndarray]:
    """check_refcounts_l2 for a batch of distinct L2 tables (rows), vectorised, each as many times as it is
    referenced (``b.weight``).

    Returns the indices of the allocated entries (NORMAL and ZERO_ALLOC) and their host offsets.
    """
    h = run.img.header
    n, esize = desc2.shape[1], h.l2_entry_size
    desc = desc2.ravel()
    offsets = b.offsets
    extended = bitmap2 is not None
    if not extended and not h.has_data_file:
        # the usual batch: no compressed, zero-flagged, reserved-bit or unaligned entry: no rule can fire
        unusual = T.OFLAG_COMPRESSED | T.OFLAG_ZERO | T.L2E_STD_RESERVED_MASK | np.uint64((h.cluster_size - 1) & ~0x1FF)
        if not (desc & unusual).any():
            offs = desc & T.L2E_OFFSET_MASK
            alloc = np.flatnonzero(offs)
            offs = offs[alloc]
            _count_allocated(run, b, alloc, offs, n, frag, owner)
            return alloc, offs
    bitmap = bitmap2.ravel() if extended else None
    types = _cluster_types(desc, h.extended_l2, h.has_data_file)
    weight_of = None if b.weight is None else (lambda where: b.weight[where // n])  # findings per entry

    def where(k: int) -> tuple[str, int]:
        return f"{owner} L2 table at 0x{offsets[k // n]:x}", offsets[k // n] + (k % n) * esize

    for k in _listed(run, "l2.reserved_bits", (types != COMPRESSED) & ((desc & T.L2E_STD_RESERVED_MASK) != 0),
                     weight_of=weight_of):
        e = int(desc[k])
        run.add("l2.reserved_bits", Severity.CORRUPTION, f"L2 entry {k % n} 0x{e:016x} has reserved bits set "
                f"(0x{e & int(T.L2E_STD_RESERVED_MASK):x})", *where(k),
                f"ERROR found l2 entry with reserved bits set: {e:x}", refs=b.refs(k // n))

    comp = types == COMPRESSED
    if comp.any():
        mask = (1 << (62 - (h.cluster_bits - 8))) - 1
        for k in _listed(run, "l2.compressed_copied", comp & ((desc & T.OFLAG_COPIED) != 0), weight_of=weight_of):
            run.add("l2.compressed_copied", Severity.CORRUPTION, f"compressed L2 entry {k % n} has OFLAG_COPIED set",
                    *where(k), f"ERROR: coffset=0x{int(desc[k]) & mask:x}: copied flag must never be set for "
                    "compressed clusters", refs=b.refs(k // n))
        refused = comp.copy() if h.has_data_file else (comp & (bitmap != 0) if extended else np.zeros_like(comp))
        if h.has_data_file:
            for k in _listed(run, "l2.compressed_with_data_file", refused, weight_of=weight_of):
                run.add("l2.compressed_with_data_file", Severity.CORRUPTION, f"compressed L2 entry {k % n} in an "
                        "image with an external data file", *where(k),
                        f"ERROR compressed cluster {k % n} with data file, entry=0x{int(desc[k]) & ~(1 << 63):x}",
                        refs=b.refs(k // n))
        else:
            for k in _listed(run, "l2.compressed_subcluster_bitmap", refused, weight_of=weight_of):
                run.add("l2.compressed_subcluster_bitmap", Severity.CORRUPTION, f"compressed L2 entry {k % n} has "
                        f"subcluster bitmap 0x{int(bitmap[k]):x} (must be 0)", *where(k),
                        f"ERROR compressed cluster {k % n} with non-zero subcluster allocation bitmap, "
                        f"entry=0x{int(desc[k]) & ~(1 << 63):x}", refs=b.refs(k // n))
        counted = np.flatnonzero(comp & ~refused)
        if counted.size:
            coffset, sectors = T.compressed_fields(desc[counted], h.cluster_bits)
            w = None if b.weight is None else b.weight[counted // n]
            run.inc_clusters(coffset, sectors * np.uint64(512) - (coffset & np.uint64(511)),
                             f"{owner} compressed data", w, lambda j: b.refs(int(counted[j]) // n))
            if frag:
                c = counted.size if w is None else int(w.sum())
                run.stats.allocated_clusters += c
                run.stats.compressed_clusters += c
                run.stats.fragmented_clusters += c

    alloc = np.flatnonzero((types == NORMAL) | (types == ZERO_ALLOC))
    if alloc.size:
        offs = desc[alloc] & T.L2E_OFFSET_MASK
        alloc_weight = None if b.weight is None else (lambda where: b.weight[alloc[where] // n])
        if extended:
            bms = bitmap[alloc]
            for j in _listed(run, "l2.subcluster_alloc_and_zero", ((bms >> np.uint64(32)) & bms) != 0,
                             weight_of=alloc_weight):
                k = int(alloc[j])
                run.add("l2.subcluster_alloc_and_zero", Severity.CORRUPTION, f"L2 entry {k % n}: subclusters both "
                        f"allocated and zero (bitmap 0x{int(bitmap[k]):016x})", *where(k),
                        f"ERROR offset={int(offs[j]):x}: Allocated cluster has corrupted subcluster allocation bitmap",
                        refs=b.refs(k // n))
        unaligned = (offs % np.uint64(h.cluster_size)) != 0
        if unaligned.any():
            # qemu names a cluster with data (allocated subclusters, or no zero flag) apart from a preallocated one
            data = (bitmap[alloc] & L2_BITMAP_ALL_ALLOC) != 0 if h.extended_l2 else (desc[alloc] & T.OFLAG_ZERO) == 0
            for j in _listed(run, "l2.data_unaligned", unaligned & data, weight_of=alloc_weight):
                k, o = int(alloc[j]), int(offs[j])
                run.add("l2.data_unaligned", Severity.CORRUPTION, f"L2 entry {k % n}: data cluster offset 0x{o:x} "
                        "is not cluster aligned", *where(k),
                        f"ERROR offset={o:x}: Data cluster is not properly aligned; L2 entry corrupted.",
                        refs=b.refs(k // n))
            for j in _listed(run, "l2.preallocated_unaligned", unaligned & ~data, weight_of=alloc_weight):
                k, o = int(alloc[j]), int(offs[j])
                run.add("l2.preallocated_unaligned", Severity.CORRUPTION, f"L2 entry {k % n}: preallocated zero "
                        f"cluster offset 0x{o:x} is not cluster aligned", *where(k),
                        f"ERROR offset={o:x}: Preallocated cluster is not properly aligned; L2 entry corrupted.",
                        refs=b.refs(k // n))
        _count_allocated(run, b, alloc, offs, n, frag, owner)
    else:
        offs = np.zeros(0, dtype=np.uint64)

    if extended:
        for k in _listed(run, "l2.unallocated_with_alloc_bits",
                         (types == UNALLOCATED) & ((bitmap & L2_BITMAP_ALL_ALLOC) != 0), weight_of=weight_of):
            run.add("l2.unallocated_with_alloc_bits", Severity.CORRUPTION, f"unallocated L2 entry {k % n} has "
                    f"subcluster allocation bits 0x{int(bitmap[k]) & 0xFFFFFFFF:x}", *where(k),
                    "ERROR: Unallocated cluster has non-zero subcluster allocation map", refs=b.refs(k // n))
    return alloc, offs


def _count_allocated(run: _Run, b: _Batch, alloc: np.ndarray, offs: np.ndarray, n: int, frag: bool,
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


def _walk(run: _Run, groups: list[L1Group], active: bool, on_batch) -> None:
    """check_refcounts_l1 for every owner of every group; for the active L1 also check_oflag_copied
    (which reads only on-disk refcounts, so it can run in the same pass).

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
        l1refs = run.img.l1_references(g.offset, g.entries)
        index, l1 = l1refs.index, l1refs.entries
        distinct, counts, inverse = l1refs.distinct, l1refs.counts, l1refs.inverse
        times = len(refs)
        each = None if times == 1 else (lambda where, times=times: np.full(where.size, times))
        where = f"{owner} L1 table at 0x{g.offset:x}"
        for k in _listed(run, "l1.reserved_bits", (l1 & T.L1E_RESERVED_MASK) != 0, weight_of=each):
            i, e = int(index[k]), int(l1[k])
            run.add("l1.reserved_bits", Severity.CORRUPTION, f"L1 entry {i} 0x{e:016x} has reserved bits set",
                    where, g.offset + i * 8, f"ERROR found L1 entry with reserved bits set: {e:x}", refs=refs)
        l2_offsets = l1 & T.L1E_OFFSET_MASK
        run.inc_clusters(distinct, run.cs, f"{owner} L2 table", counts * times,
                         lambda k, owners=g.owners, counts=counts: [(o, int(counts[k])) for o in owners])
        for k in _listed(run, "l1.l2_unaligned", l2_offsets % np.uint64(run.cs) != 0, weight_of=each):
            i, o = int(index[k]), int(l2_offsets[k])
            run.add("l1.l2_unaligned", Severity.CORRUPTION, f"L1 entry {i}: L2 table offset 0x{o:x} is not "
                    "cluster aligned", where, g.offset + i * 8,
                    f"ERROR l2_offset={o:x}: Table is not cluster aligned; L1 entry corrupted", refs=refs)
        if active:
            _oflag_l1(run, index, l1, distinct, inverse)
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
        if on_batch is not None:
            on_batch(offsets, desc)  # the host layout claims data from the same decoded tables
        weight = tables.weight[rows]
        b = _Batch(offsets, None if (weight == 1).all() else weight, lambda r, rows=rows: tables.refs(int(rows[r])))
        if bitmap is None and _contiguous_batch(run, b, desc, active, active):
            continue
        alloc, offs = _check_l2_batch(run, b, desc, bitmap, owner, active)
        if active:
            _oflag_l2(run, b, desc, alloc, offs)


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


def _not_walked(run: _Run, g: L1Group) -> None:
    """A snapshot L1 past the budget: said once for all its snapshots, rather than skipped silently."""
    names = ", ".join(g.owners[:8]) + (f" and {len(g.owners) - 8} more" if len(g.owners) > 8 else "")
    run.add("check.not_walked", Severity.WARNING, f"L1 table at 0x{g.offset:x} ({g.entries} entries) of "
            f"{names} was not walked: the budget of {image.MAX_L1_WALK} L1 entries read across the snapshots was "
            "spent. Its L2 tables and their data are not counted, so refcount findings may differ from "
            "qemu-img check's", 
            "snapshot table", g.snapshots[0].entry_offset if g.snapshots else None, None, None)


def _contiguous_batch(run: _Run, b: _Batch, desc: np.ndarray, frag: bool, active: bool) -> bool:
    """The whole of check_refcounts_l2 and check_oflag_copied for a batch whose every table is one run of
    contiguous normal clusters (``tables.contiguous_rows``), when no finding can come of it; False (and
    nothing done) otherwise, for the general path to judge the batch.

    No entry rule can fire on such rows and none is fragmented; each row adds one reference to a range
    of clusters (for each reference to the table), and OFLAG_COPIED holds when the refcounts of the range
    are all 1 (flag set) or none is (flag clear).
    """
    if run.img.header.has_data_file or 0 in b.offsets:
        return False  # data file: no references counted; offset 0: qemu skips the L1 entry for OFLAG_COPIED
    first = T.contiguous_rows(desc, run.cs)
    if first is None:
        return False
    n = desc.shape[1]
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


def check_refcounts(img: Image, on_batch=None) -> tuple[list[Finding], Stats]:
    """qcow2_co_check_locked without repair: every qemu check finding, and qemu's statistics.

    ``on_batch(offsets, descriptors)`` is called for every batch of L2 tables read, so other passes
    can use them without reading the tables again.
    """
    run = _Run(img)
    h = img.header
    run.stats.total_clusters = -(-(-(-h.size // 512) * 512) // run.cs)

    # qcow2_check_read_snapshot_table: a bad table ends qemu's check; ours goes on without the snapshots
    snapshots_ok = _check_snapshot_table(run)
    run.qemu_stopped = not snapshots_ok

    run.inc_range(0, run.cs, "header")
    groups = img.l1_groups()
    _walk(run, groups[:1], active=True, on_batch=on_batch)
    if snapshots_ok:
        if h.has_data_file and h.nb_snapshots:
            run.add("snapshot.with_data_file", Severity.CORRUPTION, f"{h.nb_snapshots} snapshots in an image with an "
                    "external data file", "snapshot table", h.snapshots_offset,
                    f"ERROR {h.nb_snapshots} snapshots in image with data file")
        for s in img.snapshots:
            label = f"snapshot {clip(s.id)} ({clip(s.name)})"
            if s.l1_table_offset % run.cs:
                run.add("snapshot.l1_unaligned", Severity.CORRUPTION, f"{label}: L1 table offset "
                        f"0x{s.l1_table_offset:x} is not cluster aligned", "snapshot table", s.entry_offset,
                        f"ERROR snapshot {s.id} ({s.name}) l1_offset={_hash_x(s.l1_table_offset)}: L1 table is not "
                        "cluster aligned; snapshot table entry corrupted")
            elif s.l1_size > QCOW_MAX_L1_SIZE // 8:
                run.add("snapshot.l1_too_large", Severity.CORRUPTION, f"{label}: l1_size {s.l1_size} exceeds "
                        f"{QCOW_MAX_L1_SIZE // 8}", "snapshot table", s.entry_offset,
                        f"ERROR snapshot {s.id} ({s.name}) l1_size={_hash_x(s.l1_size)}: L1 table is too large; "
                        "snapshot table entry corrupted")
        _walk(run, groups[1:], active=False, on_batch=on_batch)
        if img.snapshots:
            last = img.snapshots[-1]
            run.inc_range(h.snapshots_offset, last.entry_offset + last.entry_size - h.snapshots_offset,
                          "snapshot table")
    run.inc_range(h.refcount_table_offset, h.refcount_table_clusters * run.cs, "refcount table")
    if img.luks is not None:
        run.inc_range(img.luks.offset, img.luks.length, "LUKS header")
    _check_bitmaps(run)
    _check_refblocks(run)
    _compare(run)
    run.qemu_stopped = True
    _refcounts_past_eof(run)
    for (code, counts), n in run.dropped.items():
        run.findings.append(Finding(code + ".more", Severity.INFO, f"{n} more findings of {code} not listed",
                                    "report", None, qemu_counts=counts, repeat=n))
    return run.findings, run.stats


def _hash_x(v: int) -> str:
    """C's %#x: 0 prints as 0, others with 0x."""
    return f"{v:#x}" if v else "0"


def _check_snapshot_table(run: _Run) -> bool:
    """The parts of qcow2_check_read_snapshot_table that add to the counters."""
    img, h = run.img, run.img.header
    if h.nb_snapshots > QCOW_MAX_SNAPSHOTS:
        run.add("snapshot.table_too_large", Severity.CORRUPTION, f"nb_snapshots {h.nb_snapshots} exceeds "
                f"{QCOW_MAX_SNAPSHOTS}", "snapshot table", h.snapshots_offset, "ERROR snapshot table too large",
                counts="check-errors")
        run.stats.check_failed = "Check failed: File too large"  # qcow2_validate_table: -EFBIG
        return False
    if _table_offset_invalid(h.snapshots_offset, h.nb_snapshots * 40, run.cs):
        run.add("snapshot.table_offset_invalid", Severity.CORRUPTION, f"snapshots_offset 0x{h.snapshots_offset:x} "
                "is invalid", "snapshot table", h.snapshots_offset, "ERROR snapshot table offset invalid",
                counts="check-errors")
        run.stats.check_failed = "Check failed: Invalid argument"  # -EINVAL
        return False
    for f in img.findings:
        if f.code in ("snapshot.extra_data_too_large", "snapshot.table_too_big"):
            run.add(f.code, Severity.CORRUPTION, f.message, f.structure, f.host_offset,
                    f"ERROR failed to read the snapshot table: {f.qemu_message}", counts="check-errors")
            run.stats.check_failed = "Check failed: File too large"  # qcow2_do_read_snapshots: -EFBIG
            return False
    for s in img.snapshots:
        if h.version >= 3 and s.extra_data_size < 16:
            run.add("snapshot.extra_data_incomplete", Severity.CORRUPTION, f"snapshot entry {s.index} has "
                    f"{s.extra_data_size} bytes of extra data; version 3 requires 16", "snapshot table",
                    s.entry_offset, f"ERROR snapshot table entry {s.index} is incomplete")
    return True


def _check_bitmaps(run: _Run) -> None:
    """qcow2_check_bitmaps_refcounts: only when the extension is valid and autoclear bit 0 is set."""
    img = run.img
    ext = img.bitmaps_extension
    if ext is None or not img.header.autoclear_features & 1 or not ext.num_bitmaps:
        return
    run.inc_range(ext.ofs_bitmap_directory, ext.len_bitmap_directory, "bitmap directory")
    for b in img.bitmaps:
        name = clip(b.name)
        run.inc_range(b.table_offset, b.table_size * 8, f"bitmap {name} table")
        table = img.bitmap_table(b)
        if isinstance(table, Unreadable):
            run.add("bitmap.table_unreadable", Severity.CORRUPTION, f"bitmap '{name}' table: {table.reason}",
                    "bitmap table", b.table_offset, None)
            continue
        offsets = table & T.BME_OFFSET_MASK
        bad = ((table & T.BME_RESERVED_MASK) != 0) | ((offsets != 0) & (
            ((table & T.BME_ALL_ONES) != 0) | (offsets % np.uint64(run.cs) != 0)))
        for i in _listed(run, "bitmap.table_entry_invalid", bad):
            run.add("bitmap.table_entry_invalid", Severity.CORRUPTION, f"bitmap '{name}' table entry {i} "
                    f"0x{int(table[i]):016x} is invalid (reserved bits, or bit 0 / misalignment with an offset)",
                    "bitmap table", b.table_offset + i * 8, None)
        good = offsets[~bad & (offsets != 0)]
        run.inc_clusters(good, run.cs, f"bitmap {name} data")


def _check_refblocks(run: _Run) -> None:
    """check_refblocks (no repair), vectorised: entry by entry as qemu goes, each block's refcount
    judged after the increments of the entries before it."""
    entries = run.reftable[: run.reftable_entries]
    idx = np.flatnonzero(entries)  # a zero entry is no block, and nothing to judge
    if not idx.size:
        return
    e = entries[idx]
    offset = e & T.REFT_OFFSET_MASK
    table = run.img.header.refcount_table_offset
    where = "refcount table"

    reserved = (e & T.REFT_RESERVED_MASK) != 0
    for k in _listed(run, "refcount.table_reserved_bits", reserved):
        i, v = int(idx[k]), int(e[k])
        run.add("refcount.table_reserved_bits", Severity.CORRUPTION, f"refcount table entry {i} 0x{v:x} has "
                "reserved bits set", where, table + i * 8, f"ERROR refcount table entry {i} has reserved bits set")
    unaligned = ~reserved & (offset % np.uint64(run.cs) != 0)
    for k in _listed(run, "refcount.block_unaligned", unaligned):
        i, o = int(idx[k]), int(offset[k])
        run.add("refcount.block_unaligned", Severity.CORRUPTION, f"refcount block {i} offset 0x{o:x} is "
                "not cluster aligned", where, table + i * 8,
                f"ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted")
    ok = ~reserved & ~unaligned
    cluster = (offset >> np.uint64(run.cb)).astype(np.int64)
    outside = ok & (cluster >= run.extent)
    for k in _listed(run, "refcount.block_outside_image", outside):
        i, o = int(idx[k]), int(offset[k])
        run.add("refcount.block_outside_image", Severity.CORRUPTION, f"refcount block {i} at 0x{o:x} is "
                f"past the end of the file (0x{run.file_size:x})", where, table + i * 8,
                f"ERROR refcount block {i} is outside image")
    inside = np.flatnonzero(ok & ~outside & (offset != 0))
    if not inside.size:
        return
    off, cl = offset[inside], cluster[inside]
    past = off >= np.uint64(run.file_size)  # inc_range refuses those (one cluster or more past EOF)
    pk = np.flatnonzero(past)
    room = run.room("refcount.reference_past_eof")
    for o in off[pk[:room]].tolist():
        run.inc_range(o, run.cs, "refcount block")
    run.skip("refcount.reference_past_eof", pk.size - min(room, pk.size))
    # the refcount each entry sees: the table's before, plus the increments of this entry and those before
    order = np.argsort(cl, kind="stable")
    inc = (~past[order]).astype(np.int64)
    cum = np.cumsum(inc)
    group_start = np.concatenate(([True], cl[order][1:] != cl[order][:-1]))
    base = np.maximum.accumulate(np.where(group_start, cum - inc, 0))
    seen = np.empty(cl.size, dtype=np.int64)
    seen[order] = cum - base
    before = run.imrt[cl].astype(np.int64) if run.refcount_max < (1 << 62) else run.imrt[cl].astype(object)
    value = np.minimum(before + seen, run.refcount_max)
    done = cl[~past]
    if done.size:
        u, n = np.unique(done, return_counts=True)
        run.increment(u, n)
    for k in _listed(run, "refcount.block_refcount", value != 1):
        i, o, r = int(idx[inside[k]]), int(off[k]), int(value[k])
        run.add("refcount.block_refcount", Severity.CORRUPTION, f"refcount block {i} at 0x{o:x} is "
                f"referenced {r} times; it must be referenced once", "refcount block", o,
                f"ERROR refcount block {i} refcount={r}")


def _listed(run: _Run, code: str, sel: np.ndarray, counts: str | None = "corruptions", weight_of=None):
    """Positions of ``sel`` (a mask, or positions) to list as findings of ``code`` (up to the cap); the rest,
    once these are listed, are counted only. ``weight_of(positions)``: how many findings each position
    stands for (one each by default); the last position listed may fill the cap with only part of them,
    the caller's ``add`` counts the rest."""
    listed, rest = _room_for(run, code, sel, weight_of)
    yield from listed.tolist()
    run.skip(code, rest, counts)


def _room_for(run: _Run, code: str, sel: np.ndarray, weight_of=None) -> tuple[np.ndarray, int]:
    """``_listed`` without the counting: the positions to list, and how many findings the others stand for
    (to ``skip`` once the listed ones are added)."""
    where = np.flatnonzero(sel) if sel.dtype == bool else sel
    room = run.room(code)
    if weight_of is None:
        return where[:room], max(0, where.size - room)
    w = np.asarray(weight_of(where), dtype=np.int64)
    head = w[:room]  # each position stands for one finding at least
    k = int(np.searchsorted(np.cumsum(head) - head, room, side="left"))  # positions that begin before the cap
    return where[:k], int(w.sum()) - int(w[:k].sum())


def _compare(run: _Run) -> None:
    """compare_refcounts: on-disk refcount vs references, for every cluster up to the end of the file.

    Done in chunks of whole refcount blocks, so memory stays flat whatever the file size.
    """
    for i, extra in sorted(run.overflows.items()):
        # one error per increment refused: a table named millions of times makes millions of them
        run.add("refcount.overflow", Severity.CORRUPTION, f"cluster {i} has more references than "
                f"{run.img.header.refcount_bits}-bit refcounts can hold", "refcount block", i << run.cb,
                f"ERROR: overflow cluster offset=0x{i << run.cb:x}", refs=[(None, extra)])
    n = run.extent
    chunk = max(run.per_block, COMPARE_CHUNK // run.per_block * run.per_block)
    highest = 0
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        if all(run.block_readable(r) for r in range(lo // run.per_block, -(-hi // run.per_block))):
            highest = _compare_readable(run, lo, hi, highest)
            continue
        stored, bad = run.stored_range(lo, hi)
        refs = run.imrt[lo:hi]
        readable = np.ones(hi - lo, dtype=bool) if bad is None else ~bad
        if bad is not None:
            for i in (np.nonzero(bad)[0] + lo).tolist():
                run.add("refcount.unreadable", Severity.WARNING, f"refcount of cluster {i} cannot be read: its "
                        "refcount block offset is not cluster aligned", "refcount table", i << run.cb,
                        f"Can't get refcount for cluster {i}: Input/output error", counts="check-errors")
        used = np.nonzero(readable & ((stored > 0) | (refs > 0)))[0]
        if used.size:
            highest = lo + int(used[-1])
        for i in (np.nonzero(readable & (stored != refs))[0] + lo).tolist():
            _mismatch(run, i, int(stored[i - lo]), int(refs[i - lo]))
    run.stats.image_end_offset = (highest + 1) * run.cs


def _compare_readable(run: _Run, lo: int, hi: int, highest: int) -> int:
    """_compare for clusters [lo, hi) whose refcounts qemu can all read, in small pieces (temporaries
    malloc can reuse); returns the highest cluster in use so far."""
    piece = max(run.per_block, COMPARE_PIECE // run.per_block * run.per_block)
    last_used = None  # the last piece with a cluster in use: searched once, at the end
    for a in range(lo, hi, piece):
        b = min(hi, a + piece)
        stored, _ = run.stored_range(a, b)
        refs = run.imrt[a:b]
        differ = stored != refs
        if differ.any():
            for k in np.flatnonzero(differ).tolist():
                _mismatch(run, a + k, int(stored[k]), int(refs[k]))
            if (stored | refs).any():
                last_used = a, b
        elif stored.any():
            last_used = a, b
    if last_used is None:
        return highest
    a, b = last_used
    used = (run.stored_range(a, b)[0] | run.imrt[a:b]) != 0
    return b - 1 - int(used[::-1].argmax())


def _mismatch(run: _Run, i: int, s: int, r: int) -> None:
    """One compare_refcounts message: refcount below the references is corruption, above is a leak."""
    if s < r:
        run.add("refcount.too_low", Severity.CORRUPTION, f"cluster {i} (0x{i << run.cb:x}) has refcount {s} but "
                f"{r} references", "refcount block", i << run.cb, f"ERROR cluster {i} refcount={s} reference={r}")
    else:
        run.add("refcount.leak", Severity.LEAK, f"cluster {i} (0x{i << run.cb:x}) has refcount {s} but {r} "
                "references", "refcount block", i << run.cb, f"Leaked cluster {i} refcount={s} reference={r}",
                counts="leaks")


def _oflag_l1(run: _Run, index: np.ndarray, l1: np.ndarray, distinct: np.ndarray, inverse: np.ndarray) -> None:
    """check_oflag_copied, L1 part: COPIED must say whether the L2 table's refcount is exactly 1
    (``index``, ``l1``: the nonzero entries and where they are; ``distinct[inverse]``: their L2 offsets)."""
    refcounts, bad = run.stored((distinct >> np.uint64(run.cb)).astype(np.int64))  # each table looked up once
    # qemu skips entries with offset 0, and says nothing of refcounts it cannot read
    refcounts, bad = refcounts[inverse], bad[inverse] | (distinct[inverse] == 0)
    copied = (l1 >> np.uint64(63)) != 0
    for k in _listed(run, "l1.copied_mismatch", ~bad & ((refcounts == 1) != copied)):
        i, e, rc = int(index[k]), int(l1[k]), int(refcounts[k])
        run.add("l1.copied_mismatch", Severity.CORRUPTION, f"L1 entry {i}: OFLAG_COPIED is "
                f"{'set' if e >> 63 else 'clear'} but the L2 table's refcount is {rc}", "active L1 table",
                run.img.header.l1_table_offset + i * 8,
                f"ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} refcount={rc}")


def _oflag_l2(run: _Run, b: _Batch, desc2: np.ndarray, alloc: np.ndarray, offs: np.ndarray) -> None:
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
    wrong, rest = _room_for(run, "l2.copied_mismatch", wrong, weight_of)
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


def _refcounts_past_eof(run: _Run) -> None:
    """Beyond qemu: refcounts set for clusters past the end of the file (compare_refcounts stops at EOF).

    Listed block by block up to the cap; each distinct block is read once and its nonzero refcounts are
    counted (a hostile table may name the same clusters a million times, with 2 MiB clusters each a block
    of a million refcounts)."""
    first_block = run.extent // run.per_block
    table = run.reftable[first_block:min(run.reftable_entries, len(run.reftable))] & T.REFT_OFFSET_MASK
    rows = np.flatnonzero((table != 0) & (table % np.uint64(run.cs) == 0) & (table < np.uint64(run.file_size)))
    if not rows.size:
        return
    code = "refcount.past_eof"
    order = run.img.header.refcount_order
    distinct, inverse = np.unique(table[rows], return_inverse=True)
    nonzero = np.array([np.count_nonzero(T.refcount_block(_read_block(run, o), order)) for o in distinct.tolist()],
                       dtype=np.int64)
    per_row = nonzero[inverse]
    if rows[0] == 0:  # the block holding the end of the file: only its refcounts past the extent count
        blk = run.block(first_block)
        per_row[0] = np.count_nonzero(blk[run.extent - first_block * run.per_block:])
    listed = 0
    for j in rows[per_row > 0].tolist():
        room = run.room(code)
        if room == 0:
            break
        r = first_block + j
        offset = int(table[j])
        blk = run.block(r)
        start = r * run.per_block
        found = np.flatnonzero(blk)
        found = found[start + found >= run.extent][:room]
        for k in found.tolist():
            cluster = start + k
            run.add(code, Severity.WARNING, f"cluster {cluster} (0x{cluster << run.cb:x}) lies past "
                    f"the end of the file (0x{run.file_size:x}) but has refcount {int(blk[k])}; qemu-img check does "
                    "not look there", "refcount block", offset + k * run.img.header.refcount_bits // 8, None, None)
        listed += found.size
    run.skip(code, int(per_row.sum()) - listed, None)


def _read_block(run: _Run, offset: int) -> bytes:
    return run.img.file.read(offset, run.cs).ljust(run.cs, b"\0")
