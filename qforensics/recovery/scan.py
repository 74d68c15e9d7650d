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

from dataclasses import dataclass, field

import numpy as np

from ..layout import Role
from ..model import Image, Unreadable
from ..model import tables as T
from ..model.refcount import clusters_in_use
from ..model.snapshot_table import distinct_snapshots
from .carve import looks_like
from .locate import detect
from .windows import place_by_evidence
from ..layers.extent import Kind, UnknownReason

READ_CLUSTERS = 256  # clusters read at a time while scanning
MAX_NOTES = 20  # placements and unplaced tables named one by one in the notes
MAX_CLASSIFIED = 4096  # unplaced clusters told apart from stale metadata by their look, at most
HEAD = 512  # bytes of each scanned cluster read first: 64 entries, enough to rule out most data clusters
# what nothing references: free clusters, and journal areas, which the layout finds by their shape among
# the free clusters (orphaned guest data can look like one)
UNREFERENCED = (Role.FREE, Role.JOURNAL)
TABLE_TARGETS = [int(r) for r in (*UNREFERENCED, Role.DATA)]  # what an orphan table's entries may point at
MAX_CANDIDATES = 1 << 16
SIMILAR_BUDGET = 4096  # snapshot L2 tables compared with the candidates, at most
SIMILAR = 0.5  # share of a candidate's entries equal to a snapshot L2's for it to take that L2's place


@dataclass
class Placement:
    offset: int  # the candidate L2 table
    l1_index: int
    evidence: str
    borrowed: str | None = None  # the snapshot whose table it is, when the active view shared it

    @property
    def label(self) -> str:
        if self.borrowed:
            return f"{self.borrowed} L2 table at 0x{self.offset:x} ({self.evidence})"
        return f"carved L2 at 0x{self.offset:x} ({self.evidence})"


def find_candidates(img: Image, clusters: np.ndarray, role: np.ndarray, refcounts: np.ndarray | None,
                    nonzero: list[np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """L2-shaped tables among ``clusters`` (indices), by host offset, with their entries; the clusters read
    that hold anything but zeros are appended to ``nonzero``."""
    h = img.header
    cb, cs = h.cluster_bits, h.cluster_size
    out: dict[int, np.ndarray] = {}
    l1_like: dict[int, np.ndarray] = {}  # extended L2 images: stale L1 copies are not L2-shaped there
    n_file = len(role)
    for k in range(0, len(clusters), READ_CLUSTERS):
        chunk = clusters[k:k + READ_CLUSTERS]
        if not h.extended_l2 and cs > HEAD:
            chunk = _heads_could_be_tables(img, chunk, nonzero)
            if not len(chunk):
                continue
        raw = bytearray(len(chunk) * cs)
        for j, c in enumerate(chunk.tolist()):
            data = img.file.read(c << cb, cs)
            raw[j * cs:j * cs + len(data)] = data
        words = np.frombuffer(bytes(raw), dtype=">u8").astype(np.uint64).reshape(len(chunk), -1)
        if nonzero is not None:
            nonzero.append(chunk[words.any(axis=1)])
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
            if np.isin(role[targets], TABLE_TARGETS, invert=True).any():
                continue  # points into metadata: a refcount table, an L1 of known tables, ...
            if refcounts is not None and refcounts.any() and (~refcounts[targets]).any():
                continue  # data clusters must be in use
            out[int(chunk[j]) << cb] = w.copy()
            if len(out) >= MAX_CANDIDATES:
                break
        if len(out) >= MAX_CANDIDATES:
            break
    for off, w in l1_like.items():  # kept when every entry points at a table found (place() tells them apart)
        targets = (w & T.L1E_OFFSET_MASK)[w != 0].tolist()
        if all(t in out and t != off for t in targets) and len(out) < MAX_CANDIDATES:
            out[off] = w
    return out


def _heads_could_be_tables(img: Image, chunk: np.ndarray, nonzero: list[np.ndarray] | None) -> np.ndarray:
    """The clusters of ``chunk`` whose first HEAD bytes are valid standard L2 entries or zeros, which are then
    read whole; a data cluster almost always fails here, so most of the scan reads HEAD bytes a cluster.
    Clusters whose head holds anything are appended to ``nonzero`` (the others are counted when read)."""
    cb = img.header.cluster_bits
    heads = bytearray(len(chunk) * HEAD)
    for j, c in enumerate(chunk.tolist()):
        data = img.file.read(c << cb, HEAD)
        heads[j * HEAD:j * HEAD + len(data)] = data
    words = np.frombuffer(bytes(heads), dtype=">u8").astype(np.uint64).reshape(len(chunk), -1)
    zero = ~words.any(axis=1)
    valid = T.table_shaped(words, img.header, img.file.size) | zero
    if nonzero is not None:
        nonzero.append(chunk[~zero & ~valid])  # read no further: non-zero, and not a table
    return chunk[valid]


def place(img: Image, candidates: dict[int, np.ndarray], open_slots: OpenSlots, view=None,
          reasons: dict[int, str] | None = None, frames: dict[str, int] | None = None,
          ) -> tuple[list[Placement], dict[int, int], list[int]]:
    """Where each candidate goes: (placements, stale L1 copies {offset: tables placed}, unplaced offsets).
    Evidence, strongest first: a stale L1 copy, the guest's own self-locating structures in the window
    (read through ``view``'s chain and cipher), a snapshot L2 table the candidate agrees with, the dedup
    table, the only slot left. ``reasons`` gets why the guest's evidence left a window unplaced, ``frames``
    the file systems' origins it resolved."""
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
    rest = [o for o in tables if o not in placed]
    if rest and view is not None:
        solution = place_by_evidence(img, view, rest, open_slots.__contains__, bounded=open_slots.bounded)
        for off, p in sorted(solution.placed.items(), key=lambda kv: kv[1].slot):
            take(off, p.slot, f"placed by {p.evidence}")
        if reasons is not None:
            reasons.update(solution.unplaced)
        if frames is not None:
            frames.update(solution.frames)
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
        self.bounded = True  # the virtual size is stated: no slot past it

    def __contains__(self, index: int) -> bool:
        if not 0 <= index < self.n or index in self.taken:
            return False
        return index >= len(self.l1) or not int(self.l1[index] & T.L1E_OFFSET_MASK) or index in self.damaged

    def take(self, index: int) -> None:
        self.taken.add(index)

    def count(self) -> int:
        """How many slots are still open."""
        zero = int(np.count_nonzero((self.l1 & T.L1E_OFFSET_MASK) == 0))
        broken = sum(1 for i in self.damaged if i < len(self.l1) and self.l1[i] & T.L1E_OFFSET_MASK)
        return zero + (self.n - len(self.l1)) + broken - len(self.taken)

    def only_one(self) -> int | None:
        """The index when exactly one slot is still open."""
        if self.count() != 1:
            return None
        zero = np.flatnonzero((self.l1 & T.L1E_OFFSET_MASK) == 0)
        for i in [*zero.tolist(), *sorted(self.damaged), *range(len(self.l1), min(self.n, len(self.l1) + 2))]:
            if i in self:
                return i
        return None


def damaged_slots(layer, l1_size: int = 0) -> tuple[OpenSlots, bool]:
    """The open L1 slots of the active view, and whether it shows damage at all (unreadable tables,
    refused entries, tables past the end of the file). ``l1_size`` (the header's) bounds the slots when
    it is sane: QEMU reads nothing past it."""
    l1 = layer.l1
    n = max(1, -(-layer.size // layer.span))
    if 0 < l1_size < n:
        n = l1_size
    if isinstance(l1, Unreadable):
        return OpenSlots(np.zeros(0, dtype=np.uint64), n, set()), True
    damaged: set[int] = set()
    for batch in layer.runs(0, layer.size):
        bad = (batch.kind == Kind.INVALID) | np.isin(np.arange(len(batch)), list(batch.reasons))
        for row in np.flatnonzero(bad).tolist()[:MAX_CANDIDATES]:
            damaged.add(int(batch.start[row]) // layer.span)
    return OpenSlots(l1, n, damaged), bool(damaged)


@dataclass
class ScanResult:
    """What the scan of unreferenced clusters found: the view with the tables it placed, notes for the log,
    and what it could not place (which makes the recovery incomplete)."""

    view: object
    notes: list[str] = field(default_factory=list)
    unplaced_tables: dict[int, np.ndarray] = field(default_factory=dict)  # L2 offset -> its entries
    loose: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # unplaced data clusters
    stray_tables: dict[int, np.ndarray] = field(default_factory=dict)  # unplaced, with no open slot to take
    frames: dict[str, int] = field(default_factory=dict)  # file systems' origins the window solver resolved
    loose_claims: list = field(default_factory=list)  # (host offset, Claim) found in the loose clusters
    cluster_size: int = 0

    def unplaced(self) -> dict:
        """Counts for the summary: tables, the clusters they and the loose clusters hold, and their bytes."""
        clusters = sum(int(np.count_nonzero(_data_targets(w))) for w in self.unplaced_tables.values())
        clusters += len(self.loose)
        return {"tables": len(self.unplaced_tables), "clusters": clusters, "bytes": clusters * self.cluster_size}

    def listing(self) -> list[dict]:
        """Each unplaced table, and each run of loose clusters, for the log."""
        cs = self.cluster_size
        out: list[dict] = [{"l2-table": f"0x{o:x}", "clusters": int(np.count_nonzero(_data_targets(w)))}
                           for o, w in sorted(self.unplaced_tables.items())]
        if len(self.loose):
            cuts = np.flatnonzero(np.diff(self.loose) != 1) + 1
            for run in np.split(self.loose, cuts):
                out.append({"host": f"0x{int(run[0]) * cs:x}", "clusters": len(run), "bytes": len(run) * cs,
                            "why": "data in use (refcount above zero, or refcounts unreadable) that no table "
                                   "references"})
        return out


def _classify_loose(img: Image, clusters: np.ndarray) -> tuple[np.ndarray, list]:
    """The clusters that look like guest data, not like stale metadata (an orphaned refcount block or table,
    which holds no guest byte): carve.looks_like, for the first MAX_CLASSIFIED (the rest count as data);
    and the self-locating structures those hold, as (host offset, Claim), read in the same pass."""
    cb, cs = img.header.cluster_bits, img.header.cluster_size
    head, rest = clusters[:MAX_CLASSIFIED], clusters[MAX_CLASSIFIED:]
    keep, claims = [], []
    for c in head.tolist():
        raw = img.file.read(c << cb, cs)
        if looks_like(img, raw) in ("data", "compressed-stream"):
            keep.append(c)
            claims += [(c << cb, claim) for claim in detect(raw, cs)]
    return np.concatenate((np.array(keep, dtype=np.int64), rest)), claims


def _data_targets(w: np.ndarray) -> np.ndarray:
    """The allocated data descriptors of a candidate table's entries."""
    return w & T.L2E_OFFSET_MASK


def augment(img: Image, layer, lay, *, snapshot=None, force: bool = False,
            faulted: dict[int, str] | None = None, overcounted: list[int] | None = None,
            size_stated: bool = True) -> ScanResult:
    """The active view with orphan L2 tables placed where the evidence puts them, notes on what was found,
    and what could not be placed. ``lay``: the command's host layout (the check's). Reads the unreferenced
    clusters that still have a refcount; every unreferenced cluster with ``force`` (--scan), or when the
    active view shows damage, the refcounts are unreadable or zero, or the leaked clusters hold L2 tables
    (the notes say why the full scan was implied). ``faulted``: L1 slots whose table the checks fault;
    ``overcounted``: clusters whose refcount is above their references (qemu_check Stats.overcounted).
    ``size_stated`` False (a rebuilt header's estimate): windows may be placed past the virtual size, which
    the view then grows to cover."""
    if snapshot is not None or not img.geometry_ok or lay is None:
        return ScanResult(layer)
    out = ScanResult(layer, cluster_size=img.header.cluster_size)
    role = lay.role
    free = np.flatnonzero((role == int(Role.FREE)) | (role == int(Role.JOURNAL)))  # int8 compares, no upcast
    overcounted = np.array(sorted(overcounted or ()), dtype=np.int64) if img.snapshots else np.zeros(0, np.int64)
    if not len(free) and not len(overcounted):
        return out  # every cluster is referenced as its refcount says: nothing to scan, no view to walk
    slots, damaged = damaged_slots(layer, img.header.l1_size)
    if not size_stated:
        slots.n = max(slots.n, -(-img.file.size // img.header.cluster_size))  # any slot a table could take
    slots.bounded = size_stated
    slots.damaged |= {i for i in (faulted or {}) if i < slots.n}
    borrowed = _borrow_snapshot_tables(img, slots, overcounted) if len(overcounted) else []
    if not len(free):
        if borrowed:
            _place_into(img, layer, out, {}, slots, {}, 0, borrowed)
        return out
    refcounts = clusters_in_use(img, len(role))
    refs_ok = refcounts is not None and bool(refcounts.any())
    full = force or damaged or bool(faulted) or not refs_ok
    if full and not force:
        why = ("the refcounts are unreadable" if refcounts is None else "the refcounts are all zero"
               if not refs_ok else "the active view shows damage")
        out.notes.append(f"scan: --scan implied: {why}")
    scan = free if full else free[refcounts[free]]
    if not len(scan):
        if borrowed:
            _place_into(img, layer, out, {}, slots, {}, 0, borrowed)
        return out
    lost = _zeroed_tables(img, layer, int(len(scan))) if not full else {}
    slots.damaged |= {i for i in lost if i < slots.n}
    nonzero: list[np.ndarray] = []
    candidates = find_candidates(img, scan, role, refcounts, nonzero)
    if not full and (candidates or lost):
        why = "the leaked clusters hold L2-shaped tables" if candidates else "an L2 table reads all zeros"
        out.notes.append(f"scan: --scan implied: {why}; every unreferenced cluster read")
        rest = np.setdiff1d(free, scan, assume_unique=True)
        candidates.update(find_candidates(img, rest, role, refcounts, nonzero))
        scan, full = free, True
    if candidates or lost or borrowed:
        _place_into(img, layer, out, candidates, slots, lost, len(scan), borrowed)
    _account_loose(img, out, candidates, nonzero, refcounts if refs_ok else None, role)
    _place_alone(img, out, slots)
    return out


def _place_alone(img: Image, out: ScanResult, slots: OpenSlots) -> None:
    """Loose data clusters (no table names them) that hold a self-locating structure, placed alone at the
    guest offset it states (in the disk's frame, or a file system's whose origin the windows resolved), where
    the view maps nothing: each said so in the notes and the log. Two clusters for one offset take none."""
    from ..layers.qcow2 import Qcow2Layer

    view = out.view
    if not len(out.loose) or isinstance(getattr(view, "l1", None), Unreadable) or not hasattr(view, "span"):
        return
    cb, cs = img.header.cluster_bits, img.header.cluster_size
    claims = out.loose_claims
    frames = dict(out.frames)
    starts = {p[0] for _, claim in claims if claim.frame == "disk" for p in claim.partitions}
    for frame in {claim.frame for _, claim in claims} - set(frames) - {"disk"}:
        mine = [claim for _, claim in claims if claim.frame == frame]
        fits = [o for o in (starts or {0}) if all((o + c.position - c.at) % cs == 0 for c in mine)]
        if len(fits) == 1:  # one partition start (or the disk's start, with no partition table) fits them all
            frames[frame] = fits[0]
    found: dict[int, list[tuple[int, str]]] = {}
    for host, claim in claims:
        origin = 0 if claim.frame == "disk" else frames.get(claim.frame)
        if origin is None:
            continue
        g = origin + claim.position - claim.at
        slot = g // view.span if g >= 0 else -1
        if g % cs or not 0 <= g < view.size or slot not in slots or view.labels.get(slot):
            continue
        found.setdefault(g, [])
        if all(h != host for h, _ in found[g]):
            found[g].append((host, f"cluster at 0x{host:x} placed alone by {claim.what} at guest "
                                   f"0x{origin + claim.position:x}"))
    alone = {g: v[0] for g, v in found.items() if len(v) == 1}
    if not alone:
        return
    for k, (g, (_, label)) in enumerate(sorted(alone.items())):
        if k < MAX_NOTES:
            out.notes.append(f"scan: {label}")
    placed = np.array(sorted(h >> cb for h, _ in alone.values()), dtype=np.int64)
    out.loose = np.setdiff1d(out.loose, placed)
    out.view = Qcow2Layer(img, backing=view.backing, data_file=view.data if view.data is not img.file else None,
                          cipher=view.cipher, l1=view.l1, labels=view.labels, lost=view.lost, unknown=view.unknown,
                          size=view.size, alone=alone)


def _borrow_snapshot_tables(img: Image, slots: OpenSlots, overcounted: np.ndarray) -> list[Placement]:
    """Open slots of the active view for which a snapshot's L2 table has a refcount above its references:
    the active L1 shared that table (QEMU shares L2 tables between a snapshot and the active view until one
    of them writes) and lost its entry, so the snapshot's table is the active one. Newest snapshot first."""
    out: list[Placement] = []
    cb = img.header.cluster_bits
    for snap in distinct_snapshots(img.snapshots):
        l1 = img.l1_table(snap.l1_table_offset, snap.l1_size)
        if isinstance(l1, Unreadable):
            continue
        offs = (l1 & T.L1E_OFFSET_MASK).astype(np.int64)
        hit = np.flatnonzero((offs != 0) & np.isin(offs >> cb, overcounted))
        for i in hit.tolist():
            if i in slots:
                slots.take(i)
                out.append(Placement(int(offs[i]), i, "the active view shared it: its refcount is above its "
                                                      "references", borrowed=f"snapshot {snap.id} ({snap.name})"))
    return out


def _place_into(img: Image, layer, out: ScanResult, candidates: dict[int, np.ndarray], slots, lost: dict,
                scanned: int, borrowed: list[Placement] = ()) -> None:
    """Place the candidates, note what was found, and build the view when anything changed."""
    from ..layers.qcow2 import Qcow2Layer

    reasons: dict[int, str] = {}
    placements, copies, unplaced = (place(img, candidates, slots, layer, reasons, out.frames) if candidates
                                    else ([], {}, []))
    placements = sorted([*borrowed, *placements], key=lambda p: p.l1_index)
    if unplaced and slots.count() <= 0:
        # no L1 slot of the active view is open: the tables are history (a snapshot's lost tables), not data
        # the active disk misses
        out.notes.append(f"scan: {len(unplaced)} L2-shaped tables left unplaced, but no L1 entry of the active "
                         "view is open to them: they are not part of the active disk")
        out.stray_tables = {o: candidates[o] for o in unplaced}
        unplaced = []
    out.unplaced_tables = {o: candidates[o] for o in unplaced}
    tables = len(candidates) - len(copies)
    if candidates or lost:
        out.notes.append(f"scan: {scanned} unreferenced clusters read, {tables} L2-shaped tables and {len(copies)} "
                     f"stale L1 copies found; {len(placements)} placed, {len(unplaced)} left unplaced")
    for off in unplaced[:MAX_NOTES]:
        why = reasons.get(off, "no self-locating structure")
        out.notes.append(f"scan: L2-shaped table at 0x{off:x} left unplaced ({why}; --carve-dir writes it out "
                         "as a window)")
    for index, why in sorted(lost.items()):
        lo = index * layer.span
        out.notes.append(f"scan: guest 0x{lo:x}+0x{min(layer.span, layer.size - lo):x}: {why}")
    if not placements and not lost and not unplaced:
        return
    n = max([len(layer.l1) if not isinstance(layer.l1, Unreadable) else 0] + [p.l1_index + 1 for p in placements])
    l1 = np.zeros(n, dtype=np.uint64)
    if not isinstance(layer.l1, Unreadable):
        l1[:len(layer.l1)] = layer.l1
    for index in lost:
        l1[index] = 0
    labels = {}
    for k, p in enumerate(placements):
        l1[p.l1_index] = np.uint64(p.offset)
        labels[p.l1_index] = p.label
        if k < MAX_NOTES:
            out.notes.append(f"scan: {p.label} placed at L1 index {p.l1_index} (guest 0x{p.l1_index * layer.span:x})")
    if len(placements) > MAX_NOTES:
        out.notes.append(f"scan: {len(placements) - MAX_NOTES} more tables placed (the log names each range's source)")
    unknown = None
    if unplaced:
        unknown = UnknownReason(f"unallocated in the tables, but {len(unplaced)} L2 tables found by the scan "
                                "could not be placed and may map it")
    size = None
    if not slots.bounded and placements:
        size = max(layer.size, (max(p.l1_index for p in placements) + 1) * layer.span)
        if size > layer.size:
            out.notes.append(f"virtual size grown to {size}: the furthest window placed ends there")
    out.view = Qcow2Layer(img, backing=layer.backing, data_file=layer.data if layer.data is not img.file else None,
                          cipher=layer.cipher, l1=l1, labels=labels,
                          lost={i: w for i, w in lost.items() if i not in labels}, unknown=unknown, size=size)


def _account_loose(img: Image, out: ScanResult, candidates: dict[int, np.ndarray], nonzero: list[np.ndarray],
                   refcounts: np.ndarray | None, role: np.ndarray) -> None:
    """Clusters read by the scan that hold data in use (a refcount above zero; any non-zero cluster when the
    refcounts are unreadable or wiped) which neither a candidate is nor a candidate references, nor a journal
    area explains."""
    if not nonzero:
        return
    cb = img.header.cluster_bits
    held = np.concatenate(nonzero)
    held = held[role[held] == int(Role.FREE)]
    if refcounts is not None:
        held = held[refcounts[held]]  # a free cluster's stale bytes are normal (QEMU does not zero what it frees)
    held = np.sort(held)
    if len(held) and candidates:
        covered = [np.array([o >> cb for o in candidates], dtype=np.int64)]
        for w in candidates.values():
            t = _data_targets(w)
            covered.append((t[t != 0] >> np.uint64(cb)).astype(np.int64))
        held = np.setdiff1d(held, np.concatenate(covered))
    out.loose, out.loose_claims = _classify_loose(img, held)


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
