"""Dirty bitmaps in the June 2015 draft layout (seed 003), which QEMU never released: a one-level L1 of
standard cluster descriptors. Interpretations: docs/drafts.md.
"""

from __future__ import annotations



from ..findings import Finding, Severity
from ..model import Image, Unreadable
from ..model import tables as T
from ..model.bitmaps import entries_needed
from ..text import clip


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
