"""The in-memory refcount table of `qemu-img check`, the on-disk refcounts it is compared with, and the findings.

Reference: block/qcow2-refcount.c (QEMU 7.2) qcow2_inc_refcounts_imrt (the in-memory refcount table,
saturating at the refcount width as qemu does, each refused increment an overflow) and qcow2_get_refcount
(the stored refcounts, through a cache of decoded refcount blocks); spec (docs/interop/qcow2.txt) "Host
cluster management". ``CheckRun`` is one run of the check: the table, the refcount lookups and the findings
with their cap (``capped``, ``room_for``; what the cap leaves unlisted is counted for the ``.more``
summaries). Private to the package; its phases live in the modules beside it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ...findings import Finding, Listing, Severity
from ...model import Image, Unreadable
from ...model import tables as T

MAX_FINDINGS_PER_CODE = 10_000
MAX_RUNS = 256  # sorted references in at most this many contiguous runs are counted run by run
BLOCK_CACHE = 32  # decoded refcount blocks kept for lookups out of order (lookups are grouped by block)
COMPARE_CHUNK = 1 << 20  # clusters compared at a time (the unit in which findings are grouped)
# stands for the owner in the texts of a walk several owners share; each finding is written once per owner
OWNER = "\ue000owner\ue000"
Refs = list[tuple[str | None, int]]  # (owner, references) behind one fault; owner None: the text is final


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
    # clusters referenced more than once whose refcount is below their references (two guest ranges or two
    # tables share what the refcount gives to one): recover cannot trust what reads through them
    shared: list[int] = field(default_factory=list)
    shared_capped: bool = False  # more than MAX_SHARED: the list is not all of them
    # clusters still referenced whose refcount is above their references: a structure that shared them (an
    # active L1 or L2 table sharing a snapshot's) was lost; recover takes the snapshot's table for its range
    overcounted: list[int] = field(default_factory=list)


MAX_SHARED = 1 << 20


@dataclass
class CheckRun:
    img: Image
    findings: list[Finding] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    listing: Listing = field(default_factory=lambda: Listing(MAX_FINDINGS_PER_CODE))  # the cap, and what it left
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
                self.listing.add(code, listed)
                f = Finding(code, severity, message if owner is None else message.replace(OWNER, owner),
                            structure if owner is None else structure.replace(OWNER, owner), host_offset,
                            guest_offset, qemu_check=qemu_check, qemu_counts=counts)
                self.findings.extend((f,) * listed)
            self.skip(code, times - listed, counts)  # the summary still adds to qemu's counter, so it stays exact

    def room(self, code: str) -> int:
        """How many more findings of ``code`` can be listed before the cap."""
        return self.listing.room(code)

    def skip(self, code: str, k: int, counts: str | None = "corruptions") -> None:
        """``k`` more findings of ``code`` past the cap: counted (for the .more summary), never formatted."""
        self.listing.drop(code, k, None if self.qemu_stopped else counts)

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
            for k in capped(self, code, past, weight_of=weight_of):
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


def capped(run: CheckRun, code: str, sel: np.ndarray, counts: str | None = "corruptions", weight_of=None):
    """Positions of ``sel`` (a mask, or positions) to list as findings of ``code`` (up to the cap); the rest,
    once these are listed, are counted only. ``weight_of(positions)``: how many findings each position
    stands for (one each by default); the last position listed may fill the cap with only part of them,
    the caller's ``add`` counts the rest."""
    listed, rest = room_for(run, code, sel, weight_of)
    yield from listed.tolist()
    run.skip(code, rest, counts)


def room_for(run: CheckRun, code: str, sel: np.ndarray, weight_of=None) -> tuple[np.ndarray, int]:
    """``capped`` without the counting: the positions to list, and how many findings the others stand for
    (to ``skip`` once the listed ones are added)."""
    where = np.flatnonzero(sel) if sel.dtype == bool else sel
    room = run.room(code)
    if weight_of is None:
        return where[:room], max(0, where.size - room)
    w = np.asarray(weight_of(where), dtype=np.int64)
    head = w[:room]  # each position stands for one finding at least
    k = int(np.searchsorted(np.cumsum(head) - head, room, side="left"))  # positions that begin before the cap
    return where[:k], int(w.sum()) - int(w[:k].sum())
