"""Journals of the 2013 deduplication draft (seed 004), which QEMU never merged: entry sizes 2..254 (255
only for NONE), an END closing each 4096-byte journal cluster, replay stopping at the first NONE, no entry
spanning clusters. Interpretations: docs/drafts.md.
"""

from __future__ import annotations



from ..findings import Finding, Severity
from ..layout import Layout
from ..model import Image
from ..model.journal import JOURNAL_CLUSTER, TYPE_END, TYPE_HASH, TYPE_NONE


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
