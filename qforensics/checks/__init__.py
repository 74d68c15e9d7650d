"""The checks: each family is a function from the image model to findings.

`check_image` runs them all and derives `qemu-img check`'s counters from the
findings that stand for qemu's own (``Finding.qemu_counts``), so qemu's
numbers stay comparable while our extra findings ride along.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .. import progress
from ..findings import Finding, Severity
from ..model import Image
from ..layout import claim_l2_batch, finish_layout, start_layout
from .compressed import check_compressed
from .drafts import check_dedup, check_draft_bitmaps, check_journals, explain_qemu_leaks
from .entries import check_entries
from .structures import check_bitmap_rules, check_header_rules, check_snapshot_rules
from .overlaps import check_overlaps
from .refcounts import Stats, check_refcounts

EXIT_CLEAN, EXIT_FAILED, EXIT_CORRUPT, EXIT_LEAKS = 0, 1, 2, 3
# progress of check_image, in percent by stage (the refcount walk over the L2 tables is most of the time)
CHECK_STAGES = {"refcounts and L2 tables": 75, "compressed clusters": 10, "overlaps": 5, "entries": 5,
                "header, snapshots, bitmaps, drafts": 5}


@dataclass
class CheckReport:
    """Everything `qforensics check` found, and qemu-img check's numbers."""

    findings: list[Finding]
    stats: Stats
    refusals: list[Finding] = field(default_factory=list)

    def count(self, counter: str) -> int:
        return sum(f.repeat for f in self.findings if f.qemu_counts == counter)

    @property
    def exit_code(self) -> int:
        """qemu-img check's: 1 when it would fail (open refused, internal errors), else 2, 3 or 0."""
        if self.refusals or self.count("check-errors"):
            return EXIT_FAILED
        if self.count("corruptions"):
            return EXIT_CORRUPT
        if self.count("leaks"):
            return EXIT_LEAKS
        return EXIT_CLEAN

    def to_json(self, filename: str) -> dict:
        """qemu-img check's keys, always present (qemu omits zeros), then ours."""
        s = self.stats
        return {
            "filename": filename,
            "format": "qcow2",
            "check-errors": self.count("check-errors"),
            "corruptions": self.count("corruptions"),
            "leaks": self.count("leaks"),
            "image-end-offset": s.image_end_offset,
            "total-clusters": s.total_clusters,
            "allocated-clusters": s.allocated_clusters,
            "fragmented-clusters": s.fragmented_clusters,
            "compressed-clusters": s.compressed_clusters,
            "qemu-would-refuse": [f.qemu_message for f in self.refusals],
            "findings": [f.to_json() for f in self.findings],
        }


def check_image(img: Image) -> CheckReport:
    """Run every check family on an opened image.

    When QEMU could not open the image, its counters stay empty: the refcount
    findings are kept, without the qemu-img check lines qemu never printed.
    Progress goes to the current progress bar, if any (qforensics.progress).
    """
    with progress.task(total=sum(CHECK_STAGES.values())) as p:
        return _check_image(img, p)


def _check_image(img: Image, p) -> CheckReport:
    # check mode skips the snapshot table at open (BDRV_O_CHECK); qcow2_check_read_snapshot_table judges it
    refusals = [f for f in img.open_refusals if not f.code.startswith(("snapshot.", "header.snapshot_table"))]
    if not img.geometry_ok:
        findings = img.findings + [Finding("check.geometry_unusable", Severity.CORRUPTION,
                                           f"cluster_bits {img.header.cluster_bits} makes the tables unreadable; "
                                           "only the header was checked", "qcow2 header", 20)]
        return CheckReport(findings, Stats(), refusals)
    p.describe("refcounts and L2 tables")
    layout = start_layout(img)
    refcount_findings, stats = check_refcounts(
        img, on_batch=lambda offsets, desc: claim_l2_batch(img, layout, offsets, desc))
    if refusals:
        refcount_findings = [replace(f, qemu_check=None, qemu_counts=None) for f in refcount_findings]
    findings = list(refcount_findings)
    finish_layout(img, layout)
    p.advance(CHECK_STAGES["refcounts and L2 tables"])
    p.describe("compressed clusters")
    compressed_findings, exact_ends = check_compressed(img, layout)
    findings += compressed_findings
    p.advance(CHECK_STAGES["compressed clusters"])
    p.describe("overlaps")
    findings += check_overlaps(layout, exact_ends)
    p.advance(CHECK_STAGES["overlaps"])
    p.describe("entries")
    findings += check_entries(img)
    p.advance(CHECK_STAGES["entries"])
    p.describe("header, snapshots, bitmaps, drafts")
    findings += check_header_rules(img)
    findings += check_snapshot_rules(img)
    findings += check_bitmap_rules(img)
    findings += check_dedup(img) + check_journals(img, layout) + check_draft_bitmaps(img)
    findings += explain_qemu_leaks(refcount_findings, layout)
    p.advance(CHECK_STAGES["header, snapshots, bitmaps, drafts"])
    return CheckReport(img.findings + findings, stats, refusals)


def render_human(report: CheckReport, filename: str) -> str:
    """Findings grouped by severity, offsets in hex, then qemu-img check's summary lines."""
    lines = [f"image: {filename}"]
    if report.refusals:
        lines.append("QEMU would refuse to open this image:")
        lines += [f"  {f.qemu_message}" for f in report.refusals]
    for severity in Severity:
        group = [f for f in report.findings if f.severity == severity]
        if not group:
            continue
        lines.append(f"\n{severity.upper()} ({len(group)}):")
        for f in group:
            at = "" if f.host_offset is None else f" at 0x{f.host_offset:x}"
            lines.append(f"  {f.code}: {f.structure}{at}: {f.message}")
    c, lk, e = report.count("corruptions"), report.count("leaks"), report.count("check-errors")
    lines.append("")
    if not (c or lk or e):
        lines.append("No errors were found on the image.")
    if c:
        lines.append(f"{c} errors were found on the image.\nData may be corrupted, or further writes to the image "
                     "may corrupt it.")
    if lk:
        lines.append(f"{lk} leaked clusters were found on the image.\nThis means waste of disk space, but no harm "
                     "to data.")
    if e:
        lines.append(f"{e} internal errors have occurred during the check.")
    s = report.stats
    if s.total_clusters and s.allocated_clusters:
        lines.append(f"{s.allocated_clusters}/{s.total_clusters} = {s.allocated_clusters * 100 / s.total_clusters:.2f}% "
                     f"allocated, {s.fragmented_clusters * 100 / s.allocated_clusters:.2f}% fragmented, "
                     f"{s.compressed_clusters * 100 / s.allocated_clusters:.2f}% compressed clusters")
    if s.image_end_offset:
        lines.append(f"Image end offset: {s.image_end_offset}")
    return "\n".join(lines) + "\n"


__all__ = ["CheckReport", "check_image", "render_human"]
