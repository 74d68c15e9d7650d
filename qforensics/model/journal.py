"""Journals of the 2013 deduplication draft (seed 004), found by scanning.

No header field points to a journal (docs/drafts.md), so journals are found
by looking at the host clusters nothing references for 4096-byte journal
clusters: a chain of (size, type) entries of known types that closes with an
END entry, 0xFF fill, or runs off the cluster (a defect, reported).
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import kaitaistruct
import numpy as np
from kaitaistruct import KaitaiStream

from ..formats.journal import Journal
from .image import Image

JOURNAL_CLUSTER = 4096
TYPE_NONE, TYPE_END, TYPE_HASH = 0xFF, 1, 2
MAX_ENTRY = 254
# journal entries parsed per scan: a file full of journal-shaped clusters (47M entries in 100 MB) stops the
# scan there; a real journal (a few clusters) is far below it
MAX_SCAN_ENTRIES = 1 << 17


@dataclass(frozen=True)
class JournalCluster:
    """One 4096-byte journal cluster: its entries and how it ends."""

    offset: int
    entries: tuple[tuple[int, int, int], ...]  # (host offset, size, type)
    ending: str  # "end", "none" (open: replay stops here), "overrun" (an entry spans clusters),
    # "unterminated", "broken" (an unknown type or an impossible size)

    @property
    def hash_entries(self) -> int:
        return sum(1 for _, _, t in self.entries if t == TYPE_HASH)


@dataclass(frozen=True)
class JournalArea:
    offset: int
    clusters: tuple[JournalCluster, ...]

    @property
    def length(self) -> int:
        return len(self.clusters) * JOURNAL_CLUSTER


def parse_journal_cluster(raw: bytes, offset: int) -> JournalCluster | None:
    """The entries of a 4096-byte block if it is shaped like a journal cluster, else None."""
    if len(raw) < JOURNAL_CLUSTER or not (2 <= raw[0] <= MAX_ENTRY and raw[1] in (TYPE_END, TYPE_HASH)):
        return None
    try:
        parsed = Journal.JournalCluster(KaitaiStream(BytesIO(raw[:JOURNAL_CLUSTER])))
    except (EOFError, kaitaistruct.KaitaiStructError, ValueError):
        return None
    entries, pos = [], 0
    for e in parsed.entries:
        kind = int(e.entry_type)
        entries.append((offset + pos, e.len_entry, kind))
        if kind == TYPE_NONE:
            break
        if kind not in (TYPE_END, TYPE_HASH) or e.len_entry < 2:
            # a bad entry after at least two good ones is a damaged journal; before that, not a journal
            return JournalCluster(offset, tuple(entries), "broken") if len(entries) > 2 else None
        pos += e.len_entry
    last_type = entries[-1][2]
    if last_type == TYPE_END:
        ending = "end" if pos == JOURNAL_CLUSTER else "overrun" if pos > JOURNAL_CLUSTER else "unterminated"
    elif last_type == TYPE_NONE:
        ending = "none"
    else:
        ending = "overrun" if pos > JOURNAL_CLUSTER else "unterminated"
    if len(entries) < 2 and ending != "end":
        return None  # a lone entry is too weak a signal on arbitrary data
    return JournalCluster(offset, tuple(entries), ending)


def find_journals(img: Image, unreferenced: np.ndarray) -> list[JournalArea]:
    """Journal areas in the given host clusters (indices), each read once and bounded by the file."""
    cs = img.header.cluster_size
    areas: list[JournalArea] = []
    if len(unreferenced):  # a hole reads as zeros: no journal there, and no need to read it
        unreferenced = unreferenced[img.file.holds_data(unreferenced.astype(np.int64) * cs, cs)]
    budget = MAX_SCAN_ENTRIES
    for index in unreferenced.tolist():
        if budget <= 0:
            break  # bounded: the journals found so far are reported
        raw = img.file.read(index * cs, cs)
        if not _plausible(raw[:JOURNAL_CLUSTER]):
            continue  # the first journal cluster's first entry must be a HASH or END of a valid size
        clusters = []
        for pos in range(0, len(raw) - JOURNAL_CLUSTER + 1, JOURNAL_CLUSTER):
            if budget <= 0:
                break
            jc = parse_journal_cluster(raw[pos:pos + JOURNAL_CLUSTER], index * cs + pos)
            if jc is None:
                if clusters and raw[pos:pos + JOURNAL_CLUSTER].count(0xFF) == JOURNAL_CLUSTER:
                    continue  # reset (0xFF) journal clusters after the open one belong to the area
                break
            clusters.append(jc)
            budget -= len(jc.entries)
        if clusters:
            areas.append(JournalArea(index * cs, tuple(clusters)))
    return areas


def _plausible(raw: bytes) -> bool:
    """The cheap test parse_journal_cluster starts with, before any parsing."""
    return len(raw) >= JOURNAL_CLUSTER and 2 <= raw[0] <= MAX_ENTRY and raw[1] in (TYPE_END, TYPE_HASH)
