"""The checks: each family is a function from the image model to findings.

`check_image` runs them all and derives `qemu-img check`'s counters from the
findings that stand for qemu's own (``Finding.qemu_counts``), so qemu's
numbers stay comparable while our extra findings ride along.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .. import progress
from ..errors import ImageOpenError
from ..findings import Finding, Severity
from ..layers.chain import ChainError, Consent, open_chain
from ..layout import Layout, claim_l2_batch, finish_layout, start_layout
from ..model import Image
from ..text import clip
from .bitmaps import check_bitmap_rules
from .compressed import check_compressed
from .dedup_table import check_dedup
from .draft_dirty_bitmaps import check_draft_bitmaps
from .drafts import explain_qemu_leaks
from .journal import check_journals
from .l1_l2_entries import EntryRules
from .overlaps import check_overlaps
from .qcow2_header import check_header_rules
from .qemu_check import RefcountCheck, Stats
from .snapshot_table import check_snapshot_rules

EXIT_CLEAN, EXIT_FAILED, EXIT_CORRUPT, EXIT_LEAKS = 0, 1, 2, 3
# progress of check_image, in percent by stage (the refcount walk over the L2 tables is most of the time)
CHECK_STAGES = {"refcounts and L2 tables": 75, "compressed clusters": 10, "overlaps": 5, "entries": 5,
                "header, snapshots, bitmaps, drafts": 5}


@dataclass
class CheckReport:
    """Everything `qforensics check` found, and qemu-img check's numbers.

    ``refusals`` are the reasons `qemu-img check` cannot open the image (check mode, and with consent the
    backing chain and data file); ``unestablished`` says why qemu's verdict could not be established here
    at all (a backing file qforensics may not or cannot open). Either way, and when qemu's check itself
    fails (``stats.check_failed``), qemu prints no numbers, and neither does ``to_json``.
    """

    findings: list[Finding]
    stats: Stats
    refusals: list[Finding] = field(default_factory=list)
    unestablished: str | None = None
    layout: Layout | None = None  # the host layout the checks built (None when the tables cannot be located)

    def count(self, counter: str) -> int:
        return sum(f.repeat for f in self.findings if f.qemu_counts == counter)

    @property
    def completed(self) -> bool:
        """qemu-img check would open the image, run to the end and print its numbers."""
        return not (self.refusals or self.unestablished or self.stats.check_failed)

    @property
    def failure(self) -> str | None:
        """Why qemu-img check gives no numbers, in qemu's words where it has them."""
        if self.refusals:
            return f"Could not open the image: {self.refusals[0].qemu_message}"
        return self.unestablished or self.stats.check_failed

    @property
    def exit_code(self) -> int:
        """qemu-img check's: 1 when it would fail (open refused, internal errors), else 2, 3 or 0."""
        if self.refusals or self.unestablished or self.count("check-errors"):
            return EXIT_FAILED
        if self.count("corruptions"):
            return EXIT_CORRUPT
        if self.count("leaks"):
            return EXIT_LEAKS
        return EXIT_CLEAN

    def to_json(self, filename: str) -> dict:
        """qemu-img check's keys, always present when its check completes (qemu omits zeros), then ours.

        When it does not (``completed`` false) qemu prints no JSON at all: the counters are left out rather
        than given as zeros beside the findings, and ``qemu-check-failure`` says why.
        """
        s = self.stats
        doc = {"filename": filename, "format": "qcow2", "qemu-check-completed": self.completed}
        if self.completed:
            doc.update({
                "check-errors": self.count("check-errors"),
                "corruptions": self.count("corruptions"),
                "leaks": self.count("leaks"),
                "image-end-offset": s.image_end_offset,
                "total-clusters": s.total_clusters,
                "allocated-clusters": s.allocated_clusters,
                "fragmented-clusters": s.fragmented_clusters,
                "compressed-clusters": s.compressed_clusters,
            })
        else:
            doc["qemu-check-failure"] = self.failure
        doc["qemu-would-refuse"] = [f.qemu_message for f in self.refusals]
        doc["findings"] = [f.to_json() for f in self.findings]
        return doc


def check_image(img: Image, consent: Consent | None = None, named: str | None = None, *,
                graph: bool = False, light: bool = False) -> CheckReport:
    """Run every check family on an opened image.

    When QEMU could not open the image, its counters stay empty: the refcount
    findings are kept, without the qemu-img check lines qemu never printed.
    With ``consent`` the backing chain and external data file are opened as
    `qemu-img check` opens them (``named``: the image as the user named it, for
    qemu's messages); without it they are not, and an info finding says so.
    Progress goes to the current progress bar, if any (qforensics.progress). With ``graph`` the report's
    layout is built for the structure graph too (layout.GraphNotes), which changes none of the findings.
    ``light`` (recover's check: what it needs to judge the structures it reads through) skips hashing the
    clusters the draft dedup table describes. (Compressed streams are still inflated: without their exact
    ends, two streams that overlap by less than a sector would go unseen.)
    """
    with progress.task(total=sum(CHECK_STAGES.values())) as p:
        report = _check_image(img, p, graph, light)
    if img.backing_file or img.header.has_data_file:
        _check_chain(img, report, consent, named)
    return report


def unopened_report(exc: ImageOpenError) -> CheckReport:
    """The report on a header the model cannot read at all, which QEMU refuses for the same reason
    (``exc.qemu_message``): one finding, and qemu's verdict that it cannot open the image."""
    f = Finding(exc.code, Severity.CORRUPTION, exc.message, exc.structure, exc.offset,
                qemu_message=exc.qemu_message)
    return CheckReport([f], Stats(), [f])


def _check_chain(img: Image, report: CheckReport, consent: Consent | None, named: str | None) -> None:
    """qemu-img check opens the chain and data file before it checks; their failures are its verdict."""
    names = ([f"backing file {clip(img.backing_file)!r}"] if img.backing_file else []) + (
        [f"external data file {clip(img.data_file)!r}"] if img.data_file else [])
    if consent is None:
        report.findings.append(Finding(
            "check.chain_not_opened", Severity.INFO,
            f"the {' and the '.join(names) or 'external data file'} were not opened (no --backing-dir or "
            "--allow-image-dir): this verdict covers the image's own metadata; qemu-img check also fails when "
            "one of them is missing or cannot be opened", "backing chain"))
        return
    if report.refusals:
        return  # qemu stops at the image's own refusal before it opens anything below
    opened: list = []
    try:
        open_chain(img, consent, opened=opened, named=named)
    except ChainError as exc:
        f = Finding(exc.code, Severity.WARNING, str(exc), "backing chain", qemu_message=exc.qemu_message)
        report.findings.append(f)
        if exc.qemu_message is not None:
            report.refusals.append(f)
        else:
            report.unestablished = f"qemu-img check's verdict is not known: {exc}"
    finally:
        for f in opened:
            f.close()


def _one_pass(img: Image, groups, active_l1, layout: Layout, entries: EntryRules) -> tuple[list[Finding], Stats]:
    """The one pass over the L2 tables: the refcount walk reads and checks each batch, then the host layout
    claims its data and the entry rules judge it. Returns qemu's check (its in-memory refcount table is
    let go on return)."""
    refcounts = RefcountCheck.start(img, groups, active_l1)
    for batch in refcounts.l2_batches():
        claim_l2_batch(img, layout, batch.offsets, batch.desc, batch.contiguous_first())
        entries.batch(batch.offsets, batch.desc, batch.bitmap)
    return refcounts.finish()


def _check_image(img: Image, p, graph: bool, light: bool = False) -> CheckReport:
    refusals = img.check_refusals
    if not img.geometry_ok:
        findings = img.findings + [Finding("check.geometry_unusable", Severity.CORRUPTION,
                                           f"cluster_bits {img.header.cluster_bits} makes the tables unreadable; "
                                           "only the header was checked", "qcow2 header", 20)]
        return CheckReport(findings, Stats(), refusals)
    p.describe("refcounts and L2 tables")
    # the L1 groups and the active L1's references, worked out once for every consumer of the L2 tables
    groups = img.l1_groups()
    active = groups[0]
    active_l1 = img.l1_references(active.offset, active.entries) if active.walked and active.entries else None
    layout = start_layout(img, groups, active_l1, graph=graph)
    entries = EntryRules(img, groups, active_l1)
    refcount_findings, stats = _one_pass(img, groups, active_l1, layout, entries)
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
    findings += entries.finish()
    p.advance(CHECK_STAGES["entries"])
    p.describe("header, snapshots, bitmaps, drafts")
    findings += check_header_rules(img)
    findings += check_snapshot_rules(img)
    findings += check_bitmap_rules(img)
    findings += (check_dedup(img) if not light else []) + check_journals(img, layout) + check_draft_bitmaps(img)
    findings += explain_qemu_leaks(refcount_findings, layout)
    p.advance(CHECK_STAGES["header, snapshots, bitmaps, drafts"])
    return CheckReport(img.findings + findings, stats, refusals, layout=layout)


__all__ = ["CheckReport", "check_image", "unopened_report"]
