"""The draft structures QEMU never merged: deduplication table, journal, early dirty bitmaps.

Interpretations are those of docs/drafts.md. References: seed 000 (dedup
table: SHA-256 + logical offset per physical cluster, l1_dedup_index =
physical_cluster_index / l2_dedup_cluster_entries), seed 004 (journal: entry
size 2..254, 255 only for NONE, END closes a 4096-byte journal cluster,
replay stops at the first NONE, no entry spans clusters), seed 003 (dirty
bitmaps: one-level L1 of standard cluster descriptors).
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..findings import Finding, Listing, Severity
from ..layout import Layout, Role
from ..model import Image, Unreadable
from ..model import tables as T
from ..model.bitmaps import entries_needed
from ..model.dedup_table import ENTRY_SIZE, dedup_entries
from ..model.journal import JOURNAL_CLUSTER, TYPE_END, TYPE_HASH, TYPE_NONE
from ..text import clip

MAX_PER_CODE = 1000


def guest_to_host(img: Image, guest: np.ndarray) -> np.ndarray:
    """Host cluster offset of each guest offset through the active L1/L2 (0 when unmapped or compressed)."""
    h = img.header
    out = np.zeros(guest.shape, dtype=np.uint64)
    l1 = img.l1_table()
    if isinstance(l1, Unreadable) or guest.size == 0:
        return out
    cluster = guest // np.uint64(h.cluster_size)
    l1_index = (cluster // np.uint64(h.l2_entries)).astype(np.int64)
    l2_index = (cluster % np.uint64(h.l2_entries)).astype(np.int64)
    for i in np.unique(l1_index).tolist():
        if i >= len(l1):
            continue
        l2_offset = int(l1[i] & T.L1E_OFFSET_MASK)
        table = img.l2_table(l2_offset) if l2_offset else Unreadable("unallocated")
        if isinstance(table, Unreadable):
            continue
        sel = l1_index == i
        desc = table[0][l2_index[sel]]
        out[sel] = T.Descriptors(desc, False).host()
    return out


def check_dedup(img: Image) -> list[Finding]:
    """Every dedup entry: hash = SHA-256 of its physical cluster, logical offset maps back to it."""
    d = img.dedup_table
    if d is None:
        return []
    h = img.header
    cs, per = h.cluster_size, d.entries_per_cluster
    nclusters = -(-img.file.size // cs)
    out: list[Finding] = []
    where = "deduplication table"
    digests: dict[int, bytes] = {}

    def digest(host: int) -> bytes:
        """SHA-256 of one host cluster, each read once."""
        if host not in digests:
            digests[host] = hashlib.sha256(img.file.read(host, cs).ljust(cs, b"\0")).digest()
        return digests[host]

    if len(d.l1) * per < nclusters:
        out.append(Finding("dedup.table_too_small", Severity.WARNING,
                           f"the dedup table covers {len(d.l1) * per} physical clusters; the file has {nclusters}",
                           where, d.l1_offset))
    for i, l2 in enumerate(d.l1.tolist()):
        if not l2:
            continue
        if l2 % cs or l2 + cs > img.file.size:
            out.append(Finding("dedup.l2_invalid", Severity.WARNING, f"dedup level-1 entry {i} points to 0x{l2:x}, "
                               "unaligned or past the end of the file", where, d.l1_offset + i * 8))
            continue
        entries = dedup_entries(img.file.read(l2, cs))
        used = np.nonzero(entries["hash"] != b"")[0]  # all-zero entries are not data clusters
        physical = (i * per + used).astype(np.uint64) * np.uint64(cs)
        maps_to = guest_to_host(img, entries["logical"][used].astype(np.uint64))
        for j, p, m in zip(used.tolist(), physical.tolist(), maps_to.tolist(), strict=True):
            at = l2 + j * ENTRY_SIZE
            logical = int(entries["logical"][j])
            stored = bytes(entries["hash"][j]).ljust(32, b"\0")
            if p >= img.file.size:
                out.append(Finding("dedup.entry_past_eof", Severity.WARNING, f"dedup entry for physical cluster "
                                   f"0x{p:x} lies past the end of the file (0x{img.file.size:x})", where, at, logical))
                continue
            if stored == digest(p):
                if m != p:
                    out.append(Finding("dedup.logical_elsewhere", Severity.WARNING,
                                       f"dedup entry for physical cluster 0x{p:x}: logical offset 0x{logical:x} maps "
                                       + (f"to host 0x{m:x}" if m else "to nothing") + ", not back to it", where, at,
                                       logical))
            elif m and m != p and m < img.file.size and stored == digest(m):
                out.append(Finding("dedup.out_of_order", Severity.WARNING,
                                   f"dedup entry stored for physical cluster 0x{p:x} describes cluster 0x{m:x}: the "
                                   "table is not ordered by physical cluster index", where, at, logical))
            else:
                out.append(Finding("dedup.hash_mismatch", Severity.WARNING,
                                   f"dedup entry for physical cluster 0x{p:x}: stored SHA-256 {stored.hex()[:16]}... "
                                   f"is not the cluster's ({digest(p).hex()[:16]}...)", where, at, logical))
    listing = Listing(MAX_PER_CODE)  # a table of garbage could give a finding per entry of the file
    return listing.keep(out) + listing.summaries()


def walk_journal_cluster(raw: bytes, offset: int, start: int = 0) -> tuple[list[Finding], str, int]:
    """Findings for one 4096-byte journal cluster, how it ends (end, open, empty, broken) and its entry count.

    ``start`` is where the walk begins inside the cluster (0, or where the chain resumes past a damaged entry).
    """
    out: list[Finding] = []
    pos, count = start, 0
    where = "journal"
    while pos < JOURNAL_CLUSTER:
        size = raw[pos]
        kind = raw[pos + 1] if pos + 1 < JOURNAL_CLUSTER else TYPE_NONE
        if size == 0xFF and kind == TYPE_NONE:
            return out, ("empty" if pos == 0 else "open"), count
        if kind not in (TYPE_END, TYPE_HASH):
            out.append(Finding("journal.entry_type", Severity.WARNING, f"journal entry at 0x{offset + pos:x} has "
                               f"unknown type {kind}", where, offset + pos))
            return out, "broken", count
        if kind == TYPE_END:
            if pos + size != JOURNAL_CLUSTER:
                out.append(Finding("journal.end_misplaced", Severity.WARNING, f"END entry at 0x{offset + pos:x} "
                                   f"(size {size}) does not reach the next journal cluster", where, offset + pos))
            return out, "end", count
        if not 2 <= size <= 254:
            out.append(Finding("journal.entry_size", Severity.WARNING, f"journal entry at 0x{offset + pos:x} has "
                               f"size {size}; entries are 2 to 254 bytes", where, offset + pos))
            return out, "broken", count
        if pos + size > JOURNAL_CLUSTER:
            out.append(Finding("journal.entry_spans_clusters", Severity.WARNING, f"journal entry at "
                               f"0x{offset + pos:x} ({size} bytes) runs into the next journal cluster", where,
                               offset + pos))
            return out, "broken", count
        count += 1
        pos += size
    out.append(Finding("journal.missing_end", Severity.WARNING, f"journal cluster at 0x{offset:x} is full but has "
                       "no END entry", where, offset + JOURNAL_CLUSTER - 1))
    return out, "broken", count


def check_journals(img: Image, layout: Layout) -> list[Finding]:
    """Every journal found by scanning: its clusters' entries, END entries, and what replay would miss."""
    out: list[Finding] = []
    cs = img.header.cluster_size
    for area in layout.journals:  # the layout scanned the free clusters for them
        raw = img.file.read(area.offset, cs).ljust(cs, b"\xff")
        # clusters recognised past a damaged first entry: where their chain resumes
        resumes = {jc.offset: jc.resumes - jc.offset for jc in area.clusters if jc.resumes is not None}
        stopped_at = None  # where replay stops (first NONE)
        for k in range(cs // JOURNAL_CLUSTER):
            offset = area.offset + k * JOURNAL_CLUSTER
            block = raw[k * JOURNAL_CLUSTER:(k + 1) * JOURNAL_CLUSTER]
            findings, ending, count = walk_journal_cluster(block, offset)  # reports the damaged entry
            start = resumes.get(offset, 0)
            if start:  # and the entries after it are checked like any others
                rest, ending, more = walk_journal_cluster(block, offset, start)
                findings, count = findings + rest, count + more
            if stopped_at is not None and count:
                out.append(Finding("journal.missing_end", Severity.WARNING,
                                   f"journal cluster at 0x{offset:x} holds {count} entries, but replay stops at the "
                                   f"NONE entry at 0x{stopped_at:x}: the cluster before it has no END entry",
                                   "journal", stopped_at))
                stopped_at = None
            out += findings
            if ending == "open" and stopped_at is None:
                stopped_at = offset + _first_none(block, start)
            if ending == "broken":
                break
    return out


def _first_none(raw: bytes, start: int = 0) -> int:
    pos = start
    while pos < len(raw) - 1 and not (raw[pos] == 0xFF and raw[pos + 1] == TYPE_NONE):
        pos += max(raw[pos], 2)
    return pos


def check_draft_bitmaps(img: Image) -> list[Finding]:
    """The 2015 bitmaps: L1 entries aligned and inside the file; granularity and size against the disk."""
    h = img.header
    cs = h.cluster_size
    out: list[Finding] = []
    for b in img.draft_bitmaps:
        where = f"draft bitmap '{clip(b.name)}'"
        if b.granularity < 512 or b.granularity & (b.granularity - 1):
            out.append(Finding("draft_bitmaps.granularity", Severity.WARNING, f"granularity {b.granularity} is not a "
                               "power of two of at least 512", where, b.entry_offset))
            continue
        if b.size_sectors != -(-h.size // 512):
            out.append(Finding("draft_bitmaps.size", Severity.WARNING, f"size {b.size_sectors} sectors does not match "
                               f"the virtual size {h.size}", where, b.entry_offset))
        needed = entries_needed(b.size_sectors * 512, b.granularity, cs)
        if b.l1_size != needed:
            out.append(Finding("draft_bitmaps.l1_size", Severity.WARNING, f"L1 has {b.l1_size} entries; "
                               f"{b.size_sectors} sectors at granularity {b.granularity} need {needed}", where,
                               b.entry_offset))
        l1 = img.l1_table(b.l1_table_offset, b.l1_size)
        if isinstance(l1, Unreadable):
            continue
        offsets = l1 & T.L2E_OFFSET_MASK
        for i, (e, o) in enumerate(zip(l1.tolist(), offsets.tolist(), strict=True)):
            at = b.l1_table_offset + i * 8
            if e >> 62:
                out.append(Finding("draft_bitmaps.l1_reserved", Severity.WARNING, f"L1 entry {i} has reserved bits "
                                   "62-63 set", where, at))
            if o and o % cs:
                out.append(Finding("draft_bitmaps.l1_unaligned", Severity.WARNING, f"L1 entry {i} points to 0x{o:x}, "
                                   "not cluster aligned", where, at))
            elif o and o + cs > img.file.size:
                out.append(Finding("draft_bitmaps.l1_past_eof", Severity.WARNING, f"L1 entry {i} points to 0x{o:x}, "
                                   f"past the end of the file (0x{img.file.size:x})", where, at))
    return out


def explain_qemu_leaks(findings: list[Finding], layout: Layout) -> list[Finding]:
    """qemu reports the draft structures' clusters as leaked; say what they hold."""
    out = []
    names = {Role.DEDUP_TABLE: "the deduplication table (2012 draft)", Role.JOURNAL: "a journal (2013 draft)",
             Role.DRAFT_BITMAP: "a dirty bitmap (2015 draft)"}
    for f in findings:
        if f.code != "refcount.leak" or f.host_offset is None:
            continue
        cluster = f.host_offset >> layout.cluster_bits
        role = Role(int(layout.role[cluster])) if cluster < len(layout.role) else Role.FREE
        if role in names:
            out.append(Finding("draft.qemu_leak_explained", Severity.INFO, f"by qemu-img check's rules cluster "
                               f"{cluster} is leaked; it holds {names[role]}, which qemu does not know",
                               f.structure, f.host_offset))
    return out
