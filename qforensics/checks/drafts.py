"""What the draft structures QEMU never merged (deduplication table, journal, early dirty bitmaps) explain
of qemu-img check's leaks: qemu counts their clusters as leaked, since it does not know them.
Interpretations: docs/drafts.md.
"""

from __future__ import annotations



from ..findings import Finding, Severity
from ..layout import Layout, Role


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
