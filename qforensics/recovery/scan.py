"""Orphan L2 tables: clusters no structure references that are shaped like L2 tables, and where in the
guest they belong.

When the L1 table (or the header pointing at it) is lost, the L2 tables and
their data usually survive in clusters nothing references any more. A
candidate must look like an L2 table in every entry (spec "Standard Cluster
Descriptor", "Compressed Clusters Descriptor": reserved bits clear, offsets
aligned and inside the file), point only at clusters that are data or
unreferenced, and, where the refcounts are readable, only at clusters with a
refcount. A candidate whose entries point at other candidates is a stale L1
copy instead, and tells where they go. With extended L2 entries (spec "Extended
L2 Entries") each entry is a descriptor and a subcluster bitmap: the
descriptor's bit 0 must be clear, a compressed cluster's bitmap zero, and no
subcluster both allocated and zero. Placement evidence, strongest first:
a stale L1 copy, a snapshot L2 table the candidate mostly agrees with, the
dedup table's logical offsets (draft, seed 000), the only L1 slot left open.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layout import Role, build_layout
from ..model import Image, Unreadable
from ..model import tables as T
from ..model.refcount import stored_refcounts as model_refcounts
from ..model.snapshot_table import distinct_snapshots
from ..layers.extent import Kind

READ_CLUSTERS = 256  # clusters read at a time while scanning
MAX_CANDIDATES = 1 << 16
SIMILAR_BUDGET = 4096  # snapshot L2 tables compared with the candidates, at most
SIMILAR = 0.5  # share of a candidate's entries equal to a snapshot L2's for it to take that L2's place


@dataclass
class Placement:
    offset: int  # the candidate L2 table
    l1_index: int
    evidence: str

    @property
    def label(self) -> str:
        return f"carved L2 at 0x{self.offset:x} ({self.evidence})"


def stored_refcounts(img: Image, n_clusters: int) -> np.ndarray | None:
    """Whether each of the file's clusters has a non-zero refcount; None if the table is unreadable."""
    in_use = model_refcounts(img, dtype=bool)
    if isinstance(in_use, Unreadable):
        return None
    out = np.zeros(n_clusters, dtype=bool)
    out[:min(n_clusters, len(in_use))] = in_use[:n_clusters]
    return out


def find_candidates(img: Image, clusters: np.ndarray, role: np.ndarray,
                    refcounts: np.ndarray | None) -> dict[int, np.ndarray]:
    """L2-shaped tables among ``clusters`` (indices), by host offset, with their entries."""
    h = img.header
    cb, cs = h.cluster_bits, h.cluster_size
    out: dict[int, np.ndarray] = {}
    l1_like: dict[int, np.ndarray] = {}  # extended L2 images: stale L1 copies are not L2-shaped there
    n_file = len(role)
    for k in range(0, len(clusters), READ_CLUSTERS):
        chunk = clusters[k:k + READ_CLUSTERS]
        raw = bytearray(len(chunk) * cs)
        for j, c in enumerate(chunk.tolist()):
            data = img.file.read(c << cb, cs)
            raw[j * cs:j * cs + len(data)] = data
        words = np.frombuffer(bytes(raw), dtype=">u8").astype(np.uint64).reshape(len(chunk), -1)
        shaped = T.table_shaped(words, h, img.file.size)
        if h.extended_l2:
            l1ish = np.flatnonzero(~shaped & T.l1_shaped(words, cluster_bits=cb, file_size=img.file.size))
            for j in l1ish[:max(0, MAX_CANDIDATES - len(l1_like))].tolist():
                l1_like[int(chunk[j]) << cb] = words[j].copy()
        for j in np.flatnonzero(shaped).tolist():
            w = words[j, 0::2] if h.extended_l2 else words[j]  # the descriptors
            d = T.Descriptors(w, False)
            targets = (d.offset[d.allocated] >> np.uint64(cb)).astype(np.int64)
            targets = targets[targets < n_file]
            if np.isin(role[targets], (Role.FREE, Role.DATA), invert=True).any():
                continue  # points into metadata: a refcount table, an L1 of known tables, ...
            if refcounts is not None and refcounts.any() and (~refcounts[targets]).any():
                continue  # data clusters must be in use
            out[int(chunk[j]) << cb] = w.copy()
            if len(out) >= MAX_CANDIDATES:
                return out
    for off, w in l1_like.items():  # kept when every entry points at a table found (place() tells them apart)
        targets = (w & T.L1E_OFFSET_MASK)[w != 0].tolist()
        if all(t in out and t != off for t in targets) and len(out) < MAX_CANDIDATES:
            out[off] = w
    return out


def place(img: Image, candidates: dict[int, np.ndarray], open_slots: OpenSlots,
          ) -> tuple[list[Placement], dict[int, int], list[int]]:
    """Where each candidate goes: (placements, stale L1 copies {offset: tables placed}, unplaced offsets)."""
    h = img.header
    cs = h.cluster_size
    mask = T.L1E_OFFSET_MASK
    offsets = set(candidates)
    # stale L1 copies: candidates whose entries all point at other candidates
    l1_copies: dict[int, dict[int, int]] = {}
    for off, w in candidates.items():
        targets = w & mask
        idx = np.flatnonzero(targets).tolist()
        if idx and all(int(targets[i]) in offsets and int(targets[i]) != off for i in idx):
            l1_copies[off] = {int(targets[i]): i for i in idx}
    tables = {o: w for o, w in candidates.items() if o not in l1_copies}
    placed: dict[int, Placement] = {}

    def take(off: int, index: int, evidence: str) -> None:
        if off in placed or index not in open_slots:
            return
        placed[off] = Placement(off, index, evidence)
        open_slots.take(index)

    for copy, refs in sorted(l1_copies.items()):
        for off, index in refs.items():
            if off in tables:
                take(off, index, f"stale L1 copy at 0x{copy:x}, entry {index}")
    masked = ~T.OFLAG_COPIED
    compared: set[int] = set()  # each snapshot L2 table is read once, and only SIMILAR_BUDGET of them
    for snap in distinct_snapshots(img.snapshots):
        if len(placed) == len(tables) or len(compared) >= SIMILAR_BUDGET:
            break
        l1 = img.l1_table(snap.l1_table_offset, snap.l1_size)
        if isinstance(l1, Unreadable):
            continue
        offs = l1 & mask
        ok = np.flatnonzero((offs != 0) & (offs % np.uint64(cs) == 0) & (offs < np.uint64(img.file.size)))
        uniq, first = np.unique(offs[ok], return_index=True)
        for l2_off, index in zip(uniq.tolist(), ok[first].tolist(), strict=True):
            if l2_off in compared or len(compared) >= SIMILAR_BUDGET:
                continue
            compared.add(l2_off)
            theirs = img.l2_table(l2_off)
            if isinstance(theirs, Unreadable):
                continue
            for off, w in tables.items():
                if off in placed or off == l2_off:
                    continue
                nz = w != 0
                same = np.count_nonzero((w[nz] & masked) == (theirs[0][: len(w)][nz] & masked))
                if nz.any() and same >= SIMILAR * np.count_nonzero(nz):
                    take(off, index, f"agrees with snapshot {snap.id} L2 table at 0x{l2_off:x} in {same} of "
                                     f"{int(np.count_nonzero(nz))} entries")
    dedup = _dedup_positions(img)
    if dedup:
        span_clusters = h.l2_entries
        for off, w in tables.items():
            if off in placed:
                continue
            for k in np.flatnonzero(w & T.L2E_OFFSET_MASK).tolist():
                logical = dedup.get(int(w[k] & T.L2E_OFFSET_MASK))
                if logical is not None and (logical // cs) % span_clusters == k:
                    take(off, logical // cs // span_clusters, f"dedup table: cluster 0x{int(w[k] & mask):x} "
                                                              f"has logical offset 0x{logical:x}")
                    break
    rest = [o for o in tables if o not in placed]
    only = open_slots.only_one()
    if len(rest) == 1 and only is not None:
        take(rest[0], only, "the only L1 entry left to fill")
    unplaced = [o for o in tables if o not in placed]
    return sorted(placed.values(), key=lambda p: p.l1_index), {o: len(r) for o, r in l1_copies.items()}, unplaced


def _dedup_positions(img: Image) -> dict[int, int]:
    """Physical cluster offset -> logical (guest) offset from the draft dedup table, when there is one."""
    table = img.dedup_table
    if table is None:
        return {}
    from ..model.dedup_table import dedup_entries

    out: dict[int, int] = {}
    cs = img.header.cluster_size
    for i, l2 in enumerate(table.l2_offsets):
        entries = dedup_entries(img.file.read(l2, cs))
        for j, logical in enumerate(entries["logical"].tolist()):
            if logical:
                out[(i * table.entries_per_cluster + j) * cs] = int(logical)
    return out


class OpenSlots:
    """L1 indices a found table may take: inside the virtual size, and unallocated, past the L1's end, or
    damaged. Kept as a predicate and counts, since a hostile size can make them billions."""

    def __init__(self, l1: np.ndarray, n: int, damaged: set[int]):
        self.l1 = l1[:n]
        self.n = n
        self.damaged = {i for i in damaged if i < n}
        self.taken: set[int] = set()

    def __contains__(self, index: int) -> bool:
        if not 0 <= index < self.n or index in self.taken:
            return False
        return index >= len(self.l1) or not int(self.l1[index] & T.L1E_OFFSET_MASK) or index in self.damaged

    def take(self, index: int) -> None:
        self.taken.add(index)

    def only_one(self) -> int | None:
        """The index when exactly one slot is still open."""
        zero = np.flatnonzero((self.l1 & T.L1E_OFFSET_MASK) == 0)
        tail = self.n - len(self.l1)
        count = len(zero) + tail + sum(1 for i in self.damaged if i < len(self.l1) and self.l1[i] & T.L1E_OFFSET_MASK)
        count -= len(self.taken)
        if count != 1:
            return None
        for i in [*zero.tolist(), *sorted(self.damaged), *range(len(self.l1), min(self.n, len(self.l1) + 2))]:
            if i in self:
                return i
        return None


def damaged_slots(layer) -> tuple[OpenSlots, bool]:
    """The open L1 slots of the active view, and whether it shows damage at all (unreadable tables,
    refused entries, tables past the end of the file)."""
    l1 = layer.l1
    n = max(1, -(-layer.size // layer.span))
    if isinstance(l1, Unreadable):
        return OpenSlots(np.zeros(0, dtype=np.uint64), n, set()), True
    damaged: set[int] = set()
    for batch in layer.runs(0, layer.size):
        bad = (batch.kind == Kind.INVALID) | np.isin(np.arange(len(batch)), list(batch.reasons))
        for row in np.flatnonzero(bad).tolist()[:MAX_CANDIDATES]:
            damaged.add(int(batch.start[row]) // layer.span)
    return OpenSlots(l1, n, damaged), bool(damaged)


def augment(img: Image, layer, *, snapshot=None, force: bool = False):
    """The active view with orphan L2 tables placed where the evidence puts them; and notes on what was
    found. Reads the unreferenced clusters that still have a refcount; all unreferenced clusters with
    ``force`` (--scan), when the active view shows damage, or when the refcounts are unreadable or zero."""
    from ..layers.qcow2 import Qcow2Layer

    notes: list[str] = []
    if snapshot is not None or not img.geometry_ok:
        return layer, notes
    lay = build_layout(img, journals=False)
    role = lay.role
    free = np.flatnonzero(role == Role.FREE)
    if not len(free):  # every cluster is referenced: nothing to scan (and no need to walk the view for damage)
        return layer, notes
    slots, damaged = damaged_slots(layer)
    refcounts = stored_refcounts(img, len(role))
    # without signs of damage only the leaked clusters (in use, referenced by nothing) are read
    leaked = refcounts is not None and refcounts.any() and not (force or damaged)
    scan = free[refcounts[free]] if leaked else free
    if not len(scan):
        return layer, notes
    lost = _zeroed_tables(img, layer, int(len(scan))) if leaked else {}
    slots.damaged |= {i for i in lost if i < slots.n}
    candidates = find_candidates(img, scan, role, refcounts)
    if not candidates and not lost:
        return layer, notes
    placements, copies, unplaced = place(img, candidates, slots)
    tables = len(candidates) - len(copies)
    notes.append(f"scan: {len(scan)} unreferenced clusters read, {tables} L2-shaped tables and {len(copies)} "
                 f"stale L1 copies found; {len(placements)} placed, {len(unplaced)} left unplaced")
    for off in unplaced[:20]:
        notes.append(f"scan: L2-shaped table at 0x{off:x} has no evidence of its guest position (--carve-dir "
                     "writes it out)")
    for index, why in sorted(lost.items()):
        lo = index * layer.span
        notes.append(f"scan: guest 0x{lo:x}+0x{min(layer.span, layer.size - lo):x}: {why}")
    if not placements and not lost:
        return layer, notes
    n = max([len(layer.l1) if not isinstance(layer.l1, Unreadable) else 0] + [p.l1_index + 1 for p in placements])
    l1 = np.zeros(n, dtype=np.uint64)
    if not isinstance(layer.l1, Unreadable):
        l1[:len(layer.l1)] = layer.l1
    for index in lost:
        l1[index] = 0
    labels = {}
    for p in placements:
        l1[p.l1_index] = np.uint64(p.offset)
        labels[p.l1_index] = p.label
        notes.append(f"scan: {p.label} placed at L1 index {p.l1_index} (guest 0x{p.l1_index * layer.span:x})")
    view = Qcow2Layer(img, backing=layer.backing, data_file=layer.data if layer.data is not img.file else None,
                      cipher=layer.cipher, l1=l1, labels=labels,
                      lost={i: w for i, w in lost.items() if i not in labels})
    return view, notes


def _zeroed_tables(img: Image, layer, leaked: int) -> dict[int, str]:
    """Active L1 entries whose L2 table reads as all zeros while clusters are leaked: a table QEMU
    never writes that way unless it was wiped (a discarded range frees its clusters, it leaks none)."""
    out: dict[int, str] = {}
    l1 = layer.l1
    if isinstance(l1, Unreadable):
        return out
    offsets = l1 & T.L1E_OFFSET_MASK
    cs = img.header.cluster_size
    _, first = np.unique(offsets, return_index=True)
    for index in sorted(first.tolist()):
        off = int(offsets[index])
        if off and off % cs == 0 and off < img.file.size:
            raw = img.file.read(off, cs)
            if not raw.strip(b"\0"):
                out[index] = (f"L2 table at 0x{off:x} (L1 index {index}) is all zeros while {leaked} clusters "
                              "have a refcount but no reference: its entries were lost")
    return out
