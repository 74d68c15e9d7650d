"""Journals of the 2013 deduplication draft (seed 004), found by scanning.

No header field points to a journal (docs/drafts.md), so journals are found
by looking at the host clusters nothing references for 4096-byte journal
clusters: a chain of (size, type) entries of known types that closes with an
END entry, 0xFF fill, or runs off the cluster (a defect, reported).

A journal cluster whose first entries are damaged (a size below 2, an unknown
type, an END that does not reach the boundary) is recognised by the rest of it
instead: see ``resynchronise``.
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
# resynchronisation attempts per scan (each costs ~0.1 ms of numpy on one 4096-byte block, whatever its bytes):
# a file whose every cluster has a damaged head and a 0xFF tail costs at most ~0.4 s before the scan gives up
MAX_RESYNC_ATTEMPTS = 1 << 12
# HASH entries the resynchronised chain must hold before its END or 0xFF fill (with 2, one block in ~1700 of
# random bytes followed by 0xFF fill passes; with 3, none of 20000)
MIN_RESYNC_ENTRIES = 3
_POS = np.arange(JOURNAL_CLUSTER, dtype=np.int32)


@dataclass(frozen=True)
class JournalCluster:
    """One 4096-byte journal cluster: its entries and how it ends."""

    offset: int
    entries: tuple[tuple[int, int, int], ...]  # (host offset, size, type)
    ending: str  # "end", "none" (open: replay stops here), "overrun" (an entry spans clusters),
    # "unterminated", "broken" (an unknown type or an impossible size)
    damaged: int | None = None  # host offset of the damaged entry when recognised by resynchronising
    resumes: int | None = None  # host offset where the entry chain resumes after it

    @property
    def hash_entries(self) -> int:
        """HASH entries of a valid size (a damaged entry whose type byte reads 2 is not one)."""
        return sum(1 for _, s, t in self.entries if t == TYPE_HASH and 2 <= s <= MAX_ENTRY)

    @property
    def ends_with_end(self) -> bool:
        """Its last entry is an END pointing at the next journal cluster (so that one continues the chain)."""
        at, size, kind = self.entries[-1]
        return kind == TYPE_END and at + size == self.offset + JOURNAL_CLUSTER


@dataclass(frozen=True)
class JournalArea:
    offset: int
    clusters: tuple[JournalCluster, ...]

    @property
    def length(self) -> int:
        return len(self.clusters) * JOURNAL_CLUSTER


def parse_journal_cluster(raw: bytes, offset: int, *, resync: bool = True) -> JournalCluster | None:
    """The entries of a 4096-byte block if it is shaped like a journal cluster, else None.

    With ``resync`` a block whose first entries are damaged is still recognised when the rest of it
    passes ``resynchronise``'s test (its ending is then "broken" and ``damaged`` names the entry).
    """
    if len(raw) < JOURNAL_CLUSTER:
        return None
    found = _parse_strict(raw, offset)
    if found is None and resync:
        found = resynchronise(raw[:JOURNAL_CLUSTER], offset)
    return found


def _parse_strict(raw: bytes, offset: int) -> JournalCluster | None:
    """The chain from byte 0: a valid first entry, at least two entries unless it is a lone END at the boundary."""
    if not (2 <= raw[0] <= MAX_ENTRY and raw[1] in (TYPE_END, TYPE_HASH)):
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
    budget, attempts = MAX_SCAN_ENTRIES, MAX_RESYNC_ATTEMPTS
    for index in unreferenced.tolist():
        if budget <= 0:
            break  # bounded: the journals found so far are reported
        raw = img.file.read(index * cs, cs)
        if not _plausible(raw[:JOURNAL_CLUSTER]):
            continue  # neither a valid first entry nor a journal cluster's tail: not a journal
        clusters: list[JournalCluster] = []
        starts_chain = True  # byte 0 of this journal cluster must be an entry's first byte
        for pos in range(0, len(raw) - JOURNAL_CLUSTER + 1, JOURNAL_CLUSTER):
            if budget <= 0:
                break
            block = raw[pos:pos + JOURNAL_CLUSTER]
            jc = _parse_strict(block, index * cs + pos)
            # a damaged head is looked past only where the chain must start at byte 0: the host cluster's
            # first journal cluster, or the one an END points to (after an entry that spans clusters, byte 0 is
            # the spilled entry's tail, and after a NONE the next clusters are reset 0xFF)
            if jc is None and starts_chain and attempts > 0 and _tail_targets(block) is not None:
                attempts -= 1
                jc = resynchronise(block, index * cs + pos)
            if jc is None:
                if clusters and block.count(0xFF) == JOURNAL_CLUSTER:
                    starts_chain = False
                    continue  # reset (0xFF) journal clusters after the open one belong to the area
                break
            clusters.append(jc)
            starts_chain = jc.ends_with_end
            budget -= len(jc.entries)
        if clusters:
            areas.append(JournalArea(index * cs, tuple(clusters)))
    return areas


def _plausible(raw: bytes) -> bool:
    """The cheap test before any parsing: a HASH or END first entry of a valid size, or a journal cluster's tail."""
    if len(raw) < JOURNAL_CLUSTER:
        return False
    return (2 <= raw[0] <= MAX_ENTRY and raw[1] in (TYPE_END, TYPE_HASH)) or _tail_targets(raw) is not None


def _tail_targets(raw: bytes) -> tuple[int | None, int] | None:
    """Where a resynchronised chain may close in a 4096-byte block: (END offset or None, first NONE offset).

    The tail is the trailing run of 0xFF bytes (one C-speed ``rstrip``). Either an END header sits just
    before it, its size reaching exactly the boundary (its span after the 2 header bytes is 0xFF, as the
    writer leaves it), or the run itself is at least one whole NONE entry (``FF FF``): any offset in it
    can hold the NONE where replay stops. None when the block has neither (zeros, most data).
    """
    t = len(raw[:JOURNAL_CLUSTER].rstrip(b"\xff"))
    end = t - 2 if (t >= 2 and raw[t - 1] == TYPE_END and raw[t - 2] == JOURNAL_CLUSTER - (t - 2)) else None
    none_from = t if t <= JOURNAL_CLUSTER - 2 else JOURNAL_CLUSTER
    if end is None and none_from == JOURNAL_CLUSTER:
        return None
    return end, none_from


def resynchronise(raw: bytes, offset: int) -> JournalCluster | None:
    """A journal cluster whose first entries are damaged, recognised by its tail and the chain leading to it.

    The rule, and why it is strict enough for a scan of arbitrary unreferenced clusters:

    1. The chain from byte 0 is followed over valid HASH entries; the first entry that is not one (a size
       outside 2..254, an unknown type, an END that does not reach the boundary) is the *damaged* entry, at
       most the third (from the third on, the strict parse already calls the cluster a broken journal).
       A NONE there (``FF FF``) is not damage: an empty or open cluster, not recognised here.
    2. The block must end as a journal cluster does (``_tail_targets``): an END at exactly the boundary
       followed only by 0xFF, or 0xFF fill of at least 2 bytes. Zeros, L2 tables and refcount blocks end in
       zeros or data, so most blocks stop here after one ``rstrip``.
    3. Since no entry exceeds 254 bytes, the entry after the damaged one starts 2 to 254 bytes after it.
       From some start in that window (the damaged entry's own size first, when that byte is valid) the
       chain must run over HASH entries of sizes 2..254, none crossing the tail, and land exactly on the
       END or inside the 0xFF fill, with at least ``MIN_RESYNC_ENTRIES`` HASH entries on the way.

    On random bytes every hop needs its type byte to be 2 (p = 1/256): with 3 hops at least, a start passes
    with p < 6e-8, a block (253 starts) with p < 1.5e-5 in the worst shape (a few random bytes, then a long
    0xFF fill); when the fill is short the chain must cover ~3.8 KiB in steps of at most 254 bytes (16 hops
    or more: p < 1e-38). The strict parse is weaker there (one HASH entry then 0xFF fill: p ~ 1/256). Zeros
    fail (2): no 0xFF tail; an all-0xFF block fails (1) (its first entry is NONE); a 0xFF block with a
    damaged byte or two fails (3) (no HASH entry before the fill); L2 tables and refcount blocks of every
    corpus image fail (tests/test_journal_damaged.py). Starts are tested together in numpy by pointer
    doubling (12 rounds over the 4096 offsets: chains of up to 2048 entries), so a hostile block costs the
    same as any other (~0.1 ms); only the chain chosen is walked in Python, at most 2047 entries.

    Which start: the damaged entry's own size when that byte is valid (only its type was hit), else the
    nearest start that passes. A start inside the damaged entry's payload that happens to join the chain
    later would add one spurious entry; the damaged entry's host offset, the finding, does not depend on it.
    """
    raw = raw[:JOURNAL_CLUSTER]
    if len(raw) < JOURNAL_CLUSTER:
        return None
    head: list[tuple[int, int, int]] = []
    pos = 0
    while True:  # at most 3 entries: 2 HASH entries then the damaged one (3 * 254 < 4096)
        size, kind = raw[pos], raw[pos + 1]
        if size == 0xFF and kind == TYPE_NONE:
            return None  # replay stops here: an empty or open cluster, not a damaged one
        if not (kind == TYPE_HASH and 2 <= size <= MAX_ENTRY):
            break
        if len(head) == 2:
            return None  # three good entries: the strict parse's to judge
        head.append((offset + pos, size, kind))
        pos += size
    damaged = (offset + pos, size, kind)
    targets = _tail_targets(raw)
    if targets is None:
        return None
    end, none_from = targets
    lo, hi = pos + 2, min(pos + MAX_ENTRY, JOURNAL_CLUSTER - 1)
    if lo > hi:
        return None
    arr = np.frombuffer(raw, np.uint8)
    sizes = arr.astype(np.int32)
    types = np.empty(JOURNAL_CLUSTER, np.uint8)
    types[:-1], types[-1] = arr[1:], TYPE_NONE
    land = _POS + sizes
    ok = (sizes >= 2) & (sizes <= MAX_ENTRY) & (types == TYPE_HASH) & (land < JOURNAL_CLUSTER)
    done, bad = JOURNAL_CLUSTER, JOURNAL_CLUSTER + 1  # the two absorbing nodes
    step = np.full(JOURNAL_CLUSTER + 2, bad, np.int32)
    step[done] = done
    step[:JOURNAL_CLUSTER][ok] = land[ok]
    step[none_from:JOURNAL_CLUSTER - 1] = done  # a NONE entry needs 2 bytes: offsets up to 4094
    if end is not None:
        step[end] = done
    far = step
    for _ in range(12):  # 2**12 steps: longer than any chain of >= 2-byte entries in 4096 bytes
        far = far[far]
    starts = np.arange(lo, hi + 1, dtype=np.int32)
    good = far[starts] == done  # reaches the tail...
    walk = starts
    for _ in range(MIN_RESYNC_ENTRIES):  # ...over at least MIN_RESYNC_ENTRIES HASH entries (not tail offsets)
        good &= step[walk] != done
        walk = step[walk]
    if not good.any():
        return None
    preferred = pos + size if 2 <= size <= MAX_ENTRY else -1
    r = preferred if lo <= preferred <= hi and good[preferred - lo] else int(starts[good.argmax()])
    chain, at = [], r
    while at < none_from and at != end:
        chain.append((offset + at, raw[at], TYPE_HASH))
        at += raw[at]
    tail = (offset + at, JOURNAL_CLUSTER - at, TYPE_END) if at == end else (offset + at, 0xFF, TYPE_NONE)
    if len(chain) < MIN_RESYNC_ENTRIES:  # the vectorised test guarantees it; a cheap second guard
        return None
    return JournalCluster(offset, (*head, damaged, *chain, tail), "broken", offset + pos, offset + r)
