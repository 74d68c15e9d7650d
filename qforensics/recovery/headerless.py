"""A qcow2 image whose header cluster is destroyed (magic included), read through a header synthesized from
the structures that survive. The file is never written: model.image.Image parses the synthetic header
(``header_bytes=``) instead of the file's first bytes.

1. The cluster size and the L2 entry width: at each size QEMU supports (2^9 to 2^21), and with extended L2
   entries from 16 KiB on, the clusters shaped like L2 tables (model/tables.py ``l2_shaped``,
   ``extended_l2_shaped``) are found in a sample of the file, and with the clusters their entries name they
   account for a share of the file's non-zero clusters. Under the right reading nearly all of them: the
   tables and their data. Under a smaller size only the first piece of each data cluster is named; under a
   larger one the tables stop being shaped; standard tables read as extended name only every other entry.
   The reading that accounts for the most, clearly ahead of the next, is taken.
2. The whole file is then scanned at that reading: the L2-shaped clusters, the L1 copies (clusters whose
   entries all name L2-shaped or empty clusters, ``l1_shaped``), and the refcount table (a cluster whose
   entries name refcount blocks no table names, whose refcounts say the table itself and the L2 tables
   found are in use).
3. The virtual size: a GPT header (or a protective MBR) in the guest's first bytes, read through the L1
   copy (or in the data named by entry 0 of the L2 tables found) gives the disk's size; the largest guest
   offset the L1 maps is a lower bound and its L1 entries times the span an upper one.

Without an L1 copy l1_size is 0: recover's scan (recovery/scan.py) places the orphan tables it finds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from ..evidence.file import FileLayer
from ..model import tables as T
from ..model.compressed import inflate
from ..model.qcow2_header import MAGIC, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, QCOW_MAX_L1_SIZE, QCOW_MAX_REFTABLE_SIZE
from .geometry import MAX_READ, MIN_EXTENDED_BITS
from .locate import detect

SAMPLE = 256 << 20  # bytes of file data read to choose the cluster size
CHUNK = 4 << 20  # bytes read at a time (a multiple of the largest cluster, so every size aligns inside)
MAX_TABLES = 1 << 16  # L2-shaped clusters kept
MAX_CHECKS = 256  # L1 and refcount table candidates checked in full
MIN_SHARE = 0.2  # share of the non-zero clusters the chosen reading must account for
MARGIN = 1.3  # ... and by how much more than any other reading
SMALL_REFCOUNT = 255  # a refcount block's entries are small (each is a count of references)
GUEST_PROBE = 64 << 10  # guest bytes at 0 read for a partition table
MAX_PROBES = 1024  # L2 tables whose entry 0 is read for a partition table when no L1 survives
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
HEADER_LENGTH = 112


@dataclass(frozen=True)
class Synthesized:
    """The header values inferred for a file whose header is lost, and what each was inferred from."""

    cluster_bits: int
    size: int
    l1_table_offset: int = 0
    l1_size: int = 0  # 0 when no L1 copy survives
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0  # 0 when no refcount table survives
    refcount_order: int = 4
    extended_l2: bool = False
    compression_type: int = 0
    version: int = 3
    notes: tuple[str, ...] = ()
    size_stated: bool = True  # False: the size is only the span of the tables found (no L1, no partition table)

    @property
    def incompatible_features(self) -> int:
        return (1 << 4 if self.extended_l2 else 0) | (1 << 3 if self.compression_type else 0)

    def header_bytes(self) -> bytes:
        """A version 3 header of these values (no extension, no backing file, no snapshot, no encryption)."""
        fixed = struct.pack(">4sIQIIQIIQQIIQQQQII", MAGIC, self.version, 0, 0, self.cluster_bits, self.size, 0,
                            self.l1_size, self.l1_table_offset, self.refcount_table_offset,
                            self.refcount_table_clusters, 0, 0, self.incompatible_features, 0, 0,
                            self.refcount_order, HEADER_LENGTH)
        return fixed + bytes([self.compression_type]) + bytes(7) + bytes(8)  # padding, then the end extension


@dataclass
class Scan:
    """What one pass over the file found at one reading (cluster indices)."""

    cluster_bits: int
    extended: bool
    tables: list[np.ndarray] = field(default_factory=list)  # L2-shaped clusters
    targets: list[np.ndarray] = field(default_factory=list)  # clusters their entries name
    l1_like: list[tuple[int, int]] = field(default_factory=list)  # (cluster, its first entry's cluster)
    reft_like: list[tuple[int, int]] = field(default_factory=list)  # (cluster, its first entry's cluster)
    compressed: int = 0  # host offset of a compressed cluster an L2-shaped table names, 0 if none

    def table_set(self) -> np.ndarray:
        return np.unique(np.concatenate(self.tables)) if self.tables else np.zeros(0, dtype=np.int64)

    def target_set(self) -> np.ndarray:
        return np.unique(np.concatenate(self.targets)) if self.targets else np.zeros(0, dtype=np.int64)


def _chunks(file: FileLayer, limit: int):
    """(offset, words) of the file's data extents in CHUNK-aligned pieces (zeros past the end), holes
    skipped, until ``limit`` bytes have been read."""
    starts, ends = file.data_extents
    if not len(starts):
        starts, ends = np.array([0]), np.array([file.size])
    done = read = 0
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        pos = max(s // CHUNK * CHUNK, done)
        while pos < e and read < limit:
            raw = file.read(pos, CHUNK)
            read += len(raw)
            yield pos, np.frombuffer(raw.ljust(CHUNK, b"\0"), dtype=">u8").astype(np.uint64)
            pos += CHUNK
        done = max(done, pos)
        if read >= limit:
            return


def _readings() -> list[tuple[int, bool]]:
    return [(cb, False) for cb in range(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS + 1)] + \
        [(cb, True) for cb in range(MIN_EXTENDED_BITS, MAX_CLUSTER_BITS + 1)]


def plausible(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each 512-byte sector of ``words``: whether every word, and every even word, could be a table
    entry at some reading (zero, a compressed descriptor without OFLAG_COPIED, or a standard one with its
    reserved bits clear). L1, L2 and refcount table entries all pass, so a cluster whose sectors do not all
    pass is no table at any size: the shape tests run on the rest only."""
    compressed = (words & T.OFLAG_COMPRESSED) != 0
    ok = np.where(compressed, (words & T.OFLAG_COPIED) == 0, (words & T.L2E_STD_RESERVED_MASK) == 0)
    sectors = ok.reshape(-1, 64)
    return sectors.all(axis=1), sectors[:, 0::2].all(axis=1)


def _scan_chunk(scan: Scan, pos: int, words: np.ndarray, sectors: tuple[np.ndarray, np.ndarray],
                file_size: int, full: bool) -> None:
    """Add what one chunk holds at the scan's reading (``sectors``: ``plausible(words)``); ``full`` also
    looks for L1 and refcount tables."""
    cb, cs = scan.cluster_bits, 1 << scan.cluster_bits
    per = cs // 512
    cand = np.flatnonzero((sectors[1] if scan.extended and not full else sectors[0]).reshape(-1, per).all(axis=1))
    if scan.extended and full:
        cand = np.union1d(cand, np.flatnonzero(sectors[1].reshape(-1, per).all(axis=1)))
    if not len(cand):
        return
    rows = words.reshape(-1, cs // 8)[cand]
    base = pos >> cb
    if scan.extended:
        shaped = T.extended_l2_shaped(rows, cluster_bits=cb, file_size=file_size)
    else:
        shaped = T.l2_shaped(rows, cluster_bits=cb, file_size=file_size, v3=True)
    idx = np.flatnonzero(shaped)
    if len(idx) and sum(len(t) for t in scan.tables) < MAX_TABLES:
        desc = rows[idx][:, 0::2] if scan.extended else rows[idx]
        d = T.Descriptors(desc, False)
        coff, _ = T.compressed_fields(desc, cb)
        scan.tables.append(cand[idx].astype(np.int64) + base)
        if not full:
            scan.targets.append(np.concatenate([(d.offset[d.allocated] >> np.uint64(cb)).astype(np.int64),
                                                (coff[d.compressed] >> np.uint64(cb)).astype(np.int64)]))
        if not scan.compressed and d.compressed.any():
            scan.compressed = int(coff[d.compressed][0])
    if not full:
        return
    first = rows[:, 0]
    l1ish = np.flatnonzero(T.l1_shaped(rows, cluster_bits=cb, file_size=file_size))
    named = rows[l1ish, np.argmax(rows[l1ish] != 0, axis=1)] if len(l1ish) else l1ish
    for j, e in zip(l1ish[:MAX_TABLES - len(scan.l1_like)].tolist(), named.tolist()):
        scan.l1_like.append((base + int(cand[j]), int(e & int(T.L1E_OFFSET_MASK)) >> cb))
    # a refcount table names at most one block per (cs / 8) clusters of the file (64-bit refcounts)
    max_blocks = -(-(file_size >> cb) // (cs // 8))
    aligned = ((rows % np.uint64(cs) == 0) & (rows < np.uint64(file_size))).all(axis=1)
    refish = aligned & (first != 0) & (np.count_nonzero(rows, axis=1) <= max_blocks)
    for j in np.flatnonzero(refish)[:MAX_TABLES - len(scan.reft_like)].tolist():
        scan.reft_like.append((base + int(cand[j]), int(first[j]) >> cb))


def choose_reading(file: FileLayer) -> tuple[int, bool, str] | None:
    """(cluster_bits, extended L2, why) from a sample of the file, or None when no reading stands out."""
    scans = [Scan(cb, ext) for cb, ext in _readings()]
    nonzero: list[np.ndarray] = []
    for pos, words in _chunks(file, SAMPLE):
        nonzero.append(np.flatnonzero(words.reshape(-1, 64).any(axis=1)) + (pos >> 9))
        sectors = plausible(words)
        for scan in scans:
            _scan_chunk(scan, pos, words, sectors, file.size, False)
    sectors = np.concatenate(nonzero) if nonzero else np.zeros(0, dtype=np.int64)
    if not len(sectors):
        return None
    shares = []
    for scan in scans:
        nz = np.unique(sectors >> (scan.cluster_bits - 9))
        held = np.union1d(scan.table_set(), scan.target_set())
        shares.append((len(np.intersect1d(held, nz, assume_unique=True)) / len(nz), scan))
    shares.sort(key=lambda s: -s[0])
    (best, scan), (second, rival) = shares[0], shares[1]
    if best < MIN_SHARE or best < MARGIN * second:
        return None
    label = f"{'extended' if scan.extended else 'standard'} L2 entries"
    why = (f"at {1 << scan.cluster_bits}-byte clusters with {label}, {sum(len(t) for t in scan.tables)} "
           f"L2-shaped clusters and the clusters they name account for {best:.0%} of the file's non-zero "
           f"clusters; the next reading ({1 << rival.cluster_bits}-byte clusters, "
           f"{'extended' if rival.extended else 'standard'}) accounts for {second:.0%}")
    return scan.cluster_bits, scan.extended, why


def _words(file: FileLayer, cluster: int, cb: int) -> np.ndarray:
    cs = 1 << cb
    return np.frombuffer(file.read(cluster << cb, cs).ljust(cs, b"\0"), dtype=">u8").astype(np.uint64)


def _l1_copies(file: FileLayer, scan: Scan, tables: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """The L1 copies: (first cluster, clusters, entries) for each run of clusters whose entries all name
    L2-shaped or all-zero clusters, at least one L2-shaped, never the cluster itself."""
    cb = scan.cluster_bits
    table_set = set(tables.tolist())
    found: dict[int, np.ndarray] = {}
    zero: dict[int, bool] = {}
    checked = 0
    for cluster, target in scan.l1_like:
        if target not in table_set or target == cluster:
            continue  # an L1's first entry names an L2 table
        checked += 1
        if checked > MAX_CHECKS:
            break
        w = _words(file, cluster, cb)
        named = ((w & T.L1E_OFFSET_MASK)[w != 0] >> np.uint64(cb)).astype(np.int64).tolist()
        ok = True
        for t in named:
            if t == cluster or (t not in table_set and not zero.setdefault(t, not _words(file, t, cb).any())):
                ok = False
                break
            if len(zero) > MAX_CHECKS * 16:
                return []  # a hostile file of tables naming countless empty clusters
        if ok:
            found[cluster] = w
    runs: list[tuple[int, int, np.ndarray]] = []
    limit = QCOW_MAX_L1_SIZE >> cb
    for cluster in sorted(found):
        if runs and runs[-1][0] + runs[-1][1] == cluster and runs[-1][1] < limit:
            start, n, w = runs[-1]
            runs[-1] = (start, n + 1, np.concatenate([w, found[cluster]]))
        else:
            runs.append((cluster, 1, found[cluster]))
    return runs


def _copied(file: FileLayer, l1: np.ndarray, cb: int) -> int:
    """Entries with OFLAG_COPIED in an L1 copy and the L2 tables it names (at most MAX_READ bytes of them):
    the active tables hold the clusters written since the last snapshot, which only they reference."""
    offsets = (l1 & T.L1E_OFFSET_MASK)[l1 != 0]
    total = int(np.count_nonzero(l1 & T.OFLAG_COPIED))
    for off in offsets[:max(1, MAX_READ >> cb)].tolist():
        total += int(np.count_nonzero(_words(file, off >> cb, cb) & T.OFLAG_COPIED))
    return total


def _refcounts(blocks: list[bytes | None], cb: int, order: int) -> np.ndarray | None:
    """Every cluster's refcount (uint8) from a refcount table's blocks (None: an empty entry), or None
    when a block is not shaped like one at ``order`` (every entry a small count, cluster 0 in use)."""
    per_block = (8 << cb) >> order
    out = np.zeros(len(blocks) * per_block, dtype=np.uint8)
    for i, raw in enumerate(blocks):
        if raw is None:
            continue
        block = T.refcount_block(raw, order)
        if not block.any() or (block > SMALL_REFCOUNT).any():
            return None
        out[i * per_block:(i + 1) * per_block] = block
    return out if out[0] else None


def _refcount_table(file: FileLayer, scan: Scan, tables: np.ndarray) -> tuple[int, int, int, np.ndarray, str] | None:
    """(offset, clusters, refcount_order, refcounts, why) of the refcount table, or None when no candidate
    is consistent: every block shaped like one, the table itself and 90% of the L2 tables found in use."""
    cb, cs = scan.cluster_bits, 1 << scan.cluster_bits
    named = set(tables.tolist())
    starts = {c for c, _ in scan.reft_like}
    max_blocks = -(-(file.size >> cb) // (cs // 8))  # one block per cs / 8 clusters at 64-bit refcounts
    checked = budget = 0
    for cluster, target in scan.reft_like:
        if target in named or target == cluster:
            continue  # its first entry names an L2-shaped cluster (it is an L1), or itself
        checked += 1
        if checked > MAX_CHECKS or budget > 4 * MAX_READ:
            break
        n = 1
        while cluster + n in starts and (n + 1) * cs <= QCOW_MAX_REFTABLE_SIZE:
            n += 1
        entries = T.refcount_table(file.read(cluster << cb, n * cs))
        used = np.flatnonzero(entries)
        if not len(used) or int(used[-1]) >= max_blocks or not entries[0]:
            continue
        entries = entries[:int(used[-1]) + 1]
        blocks = [file.read(e & ~0x1FF, cs).ljust(cs, b"\0") if e else None for e in entries.tolist()]
        budget += len(used) * cs
        for order in range(6, -1, -1):
            counts = _refcounts(blocks, cb, order)
            if counts is None:
                continue
            inside = tables[tables < len(counts)]
            own = cluster + n <= len(counts) and bool(counts[cluster:cluster + n].all())
            held = int(np.count_nonzero(counts[inside]))
            if own and held >= 0.9 * len(inside):
                why = (f"its {len(used)} refcount blocks give {1 << order}-bit refcounts to itself and {held} "
                       f"of the {len(inside)} L2 tables found")
                return cluster << cb, n, order, counts, why
    return None


def cluster_data(file: FileLayer, entry: int, cb: int, compression: int) -> bytes:
    """The guest cluster an L2 descriptor names: its host cluster, or a compressed one inflated (never
    more than a cluster); zeros for an unallocated entry or a stream that does not inflate."""
    cs = 1 << cb
    if entry & int(T.OFLAG_COMPRESSED):
        coff, sectors = T.compressed_fields(np.array([entry], dtype=np.uint64), cb)
        raw = file.read(int(coff[0]), min(int(sectors[0]) * 512, 2 * cs))
        data = inflate(raw, cs, compression)[0]
    else:
        off = entry & int(T.L2E_OFFSET_MASK)
        data = file.read(off, cs) if off else b""
    return data[:cs].ljust(cs, b"\0")


def _guest_head(file: FileLayer, l2: np.ndarray, cb: int, extended: bool, compression: int) -> bytes:
    """The guest's first bytes (up to GUEST_PROBE) through one L2 table's entries."""
    desc = l2[0::2] if extended else l2
    return b"".join(cluster_data(file, e, cb, compression) for e in desc[:max(1, GUEST_PROBE >> cb)].tolist())


def disk_size_claim(head: bytes) -> tuple[int, str] | None:
    """The disk's size a GPT primary header (at 512) or a protective MBR (at 0) in the guest's first bytes
    states, with what stated it."""
    if len(head) < 1024 or len(head) % 512:
        return None
    claims = [c for c in detect(head, len(head)) if c.frame == "disk" and c.size > 0]
    gpt = [c for c in claims if c.what.startswith("GPT primary") and c.at == 512]
    mbr = [c for c in claims if c.what == "protective MBR" and c.at == 0]
    pick = gpt or mbr
    return (pick[0].size, pick[0].what) if pick else None


def backup_gpt_size(file: FileLayer, l2: np.ndarray, cb: int, extended: bool,
                    compression: int) -> tuple[int, str] | None:
    """The disk's size a GPT backup header (at the disk's last LBA) states, found in the data the last
    allocated entry of the L2 table ``l2`` names, at the position in the table's span it claims."""
    cs = 1 << cb
    span = (cs // (16 if extended else 8)) * cs
    desc = l2[0::2] if extended else l2
    used = np.flatnonzero((desc & T.L2E_OFFSET_MASK) != 0)
    if not len(used):
        return None
    k = int(used[-1])
    data = cluster_data(file, int(desc[k]), cb, compression)
    for c in detect(data, cs):
        if c.frame == "disk" and c.what.startswith("GPT backup") and c.position % span == k * cs + c.at \
                and c.size == c.position + 512:
            return c.size, c.what
    return None


def _size_from_l1(file: FileLayer, l1: np.ndarray, cb: int, extended: bool, capacity: int,
                  compression: int) -> tuple[int, str]:
    """The virtual size from the L1 copy: the guest's partition table when it agrees with what the L1 maps,
    else the end of the last L2 span the L1 names (an upper bound of what it maps)."""
    cs = 1 << cb
    span = (cs // (16 if extended else 8)) * cs
    used = np.flatnonzero(l1 & T.L1E_OFFSET_MASK)
    last = int(used[-1])
    tail = _words(file, int(l1[last] & T.L1E_OFFSET_MASK) >> cb, cb)
    tail_desc = tail[0::2] if extended else tail
    mapped = last * span + (int(np.flatnonzero(tail_desc)[-1]) + 1 if tail_desc.any() else 0) * cs
    head = _words(file, int(l1[0] & T.L1E_OFFSET_MASK) >> cb, cb) if l1[0] else None
    claim = disk_size_claim(_guest_head(file, head, cb, extended, compression)) if head is not None else None
    if claim is None:
        claim = backup_gpt_size(file, tail, cb, extended, compression)
    if claim and mapped <= claim[0] <= capacity:
        return claim[0], f"the {claim[1]} states it; the L1 maps up to 0x{mapped:x}, within it"
    why = f"the L1's last table (entry {last}) ends there: an upper bound of what the L1 maps"
    if claim:
        why += f" (the {claim[1]} states {claim[0]}, which the L1 does not agree with)"
    return (last + 1) * span, why


def _size_without_l1(file: FileLayer, scan: Scan, tables: np.ndarray, capacity: int,
                     compression: int) -> tuple[int, str]:
    """The virtual size when no L1 survives: a partition table in the data entry 0 of a found L2 table names,
    else as many L2 spans as tables were found (each maps its own span)."""
    cb = scan.cluster_bits
    span = ((1 << cb) // (16 if scan.extended else 8)) << cb
    sizes: dict[int, str] = {}
    for cluster in tables[:MAX_PROBES].tolist():
        w = _words(file, cluster, cb)
        desc = w[0::2] if scan.extended else w
        claim = None
        if desc[0] & T.L2E_OFFSET_MASK:
            claim = disk_size_claim(_guest_head(file, w, cb, scan.extended, compression))
            where = "entry 0"
        if claim is None:
            claim, where = backup_gpt_size(file, w, cb, scan.extended, compression), "last entry"
        if claim and claim[0] <= capacity:
            sizes.setdefault(claim[0], f"the {claim[1]} in the data of L2-shaped table 0x{cluster << cb:x}'s "
                             f"{where} states it")
    if len(sizes) == 1:
        return *next(iter(sizes.items())), True
    n = max(1, len(tables))
    why = f"no L1 copy and no partition table: {n} L2-shaped tables found, each mapping its own {span}-byte span"
    if len(sizes) > 1:
        why += f" ({len(sizes)} partition tables state different sizes)"
    return min(n * span, capacity), why, False


def synthesize(file: FileLayer) -> Synthesized | None:
    """The header of ``file`` as its surviving structures show it, or None when they do not show the
    cluster size (notes say what each value was inferred from)."""
    reading = choose_reading(file)
    if reading is None:
        return None
    cb, extended, why = reading
    cs = 1 << cb
    notes = [f"qcow2 header lost (no magic): header synthesized from the structures; cluster size {cs}: {why}"]
    scan = Scan(cb, extended)
    for pos, words in _chunks(file, file.size + CHUNK):
        _scan_chunk(scan, pos, words, plausible(words), file.size, True)
    tables = scan.table_set()
    compression = 1 if scan.compressed and file.read(scan.compressed, 4) == ZSTD_MAGIC else 0
    if scan.compressed:
        notes.append(f"compressed clusters found: {'zstd' if compression else 'zlib'} (the first one's bytes)")
    span = (cs // (16 if extended else 8)) * cs
    capacity = max(1, file.size >> cb) * span  # guest bytes the file's clusters could map, at most
    reft = _refcount_table(file, scan, tables)
    counts = reft[3] if reft else np.zeros(0, dtype=np.uint8)
    copies = _l1_copies(file, scan, tables)

    def rank(run: tuple[int, int, np.ndarray]) -> tuple:
        in_use = run[0] < len(counts) and bool(counts[run[0]])  # a stale copy was freed
        return in_use, _copied(file, run[2], cb), int(np.count_nonzero(run[2])), -run[0]
    l1 = max(copies, key=rank) if copies else None
    fields: dict = {}
    if reft:
        fields.update(refcount_table_offset=reft[0], refcount_table_clusters=reft[1], refcount_order=reft[2])
        notes.append(f"refcount table at 0x{reft[0]:x} ({reft[1]} cluster{'s' * (reft[1] > 1)}): {reft[4]}")
    else:
        notes.append("no refcount table found: refcount_table_clusters 0 (the refcounts read as unreadable)")
    if l1:
        start, n, entries = l1
        size, size_why = _size_from_l1(file, entries, cb, extended, min(capacity, n * (cs // 8) * span),
                                       compression)
        stated = True
        fields.update(l1_table_offset=start << cb, l1_size=-(-size // span))
        notes.append(f"L1 table at 0x{start << cb:x}: {int(np.count_nonzero(entries))} entries name L2-shaped "
                     f"tables" + (f" (of {len(copies)} L1 copies found, at "
                                  + ", ".join(f"0x{c[0] << cb:x}" for c in copies[:8])
                                  + ", the one in use by the refcounts whose tables hold the most OFLAG_COPIED "
                                  "entries: the others are snapshots' or stale copies)" if len(copies) > 1 else ""))
    else:
        size, size_why, stated = _size_without_l1(file, scan, tables, capacity, compression)
        notes.append("no L1 copy survives: l1_size 0; the L2 tables are orphans for recover's scan to place")
    notes.append(f"virtual size {size}: {size_why}")
    notes.append("assumed: version 3, no backing file, no encryption, no snapshots, no bitmaps (their records "
                 "were in the lost header)")
    return Synthesized(cb, size, extended_l2=extended, compression_type=compression, notes=tuple(notes),
                       size_stated=stated, **fields)
