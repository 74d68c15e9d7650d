"""`qforensics check`'s human output: the findings by severity, runs of one code folded onto one line, then
qemu-img check's own closing lines (qemu-img.c check_image), or why qemu would give none."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..findings import Run, Severity, runs

if TYPE_CHECKING:  # the checks load when check runs; the command line reads MAX_LINES_PER_CODE at start
    from ..checks import CheckReport

MAX_LINES_PER_CODE = 5  # lines of one finding code in human output, unless verbose


def render_human(report: CheckReport, filename: str, cluster_size: int = 0, verbose: bool = False) -> str:
    """Findings grouped by severity, runs of one code over consecutive clusters or entries on one line, at
    most MAX_LINES_PER_CODE lines a code unless ``verbose``; then qemu-img check's summary lines, or, when
    its check would not complete, why (never its "No errors were found" then)."""
    lines = [f"image: {filename}"]
    if report.refusals:
        lines.append("QEMU would refuse to open this image:")
        lines += [f"  {f.qemu_message}" for f in report.refusals]
    for severity in Severity:
        group = [f for f in report.findings if f.severity == severity]
        if not group:
            continue
        lines.append(f"\n{severity.upper()} ({sum(f.repeat for f in group)}):")
        shown: dict[str, int] = {}
        hidden: dict[str, list[int]] = {}
        for run in (runs(group, cluster_size) if not verbose else [Run(f, f.repeat, 1, f.host_offset, None, "")
                                                                     for f in group]):
            code = run.first.code
            if not verbose and shown.get(code, 0) >= MAX_LINES_PER_CODE:
                hidden.setdefault(code, [0, 0])
                hidden[code][0] += 1
                hidden[code][1] += run.count
                continue
            shown[code] = shown.get(code, 0) + 1
            f = run.first
            if run.findings == 1:
                at = "" if f.host_offset is None or f.structure.endswith(f"at 0x{f.host_offset:x}") \
                    else f" at 0x{f.host_offset:x}"
                lines.append(f"  {code}: {f.structure}{at}: {f.message}")
            else:
                lines.append(f"  {code}: {_span(run, cluster_size)}: {run.text}")
        lines += [f"  {code}: {n} more lines ({k} faults) not shown; --verbose shows every one"
                  for code, (n, k) in hidden.items()]
    lines.append("")
    if report.completed:
        lines += _qemu_summary(report)
    elif report.refusals:
        lines.append("qemu-img check would not check this image: it cannot open it, prints no counts and exits 1.")
    else:
        lines.append(f"qemu-img check would not complete: {report.failure}; it prints no counts and exits 1.")
    by = {sev: sum(f.repeat for f in report.findings if f.severity == sev) for sev in Severity}
    lines.append("qforensics findings: " + (", ".join(f"{n} {sev}" for sev, n in by.items() if n) or "none"))
    return "\n".join(lines) + "\n"


def _span(run, cluster_size: int) -> str:
    """How many findings a run folds and where they lie: a host range over consecutive clusters or entries."""
    f = run.first
    unit = "clusters" if run.step == cluster_size else "entries" if run.step in (8, 16) else "findings"
    if f.host_offset is None:
        return f"{run.findings} {unit}"
    if not run.step:
        return f"{run.findings} {unit} at 0x{f.host_offset:x}"
    return f"{run.findings} {unit}, 0x{f.host_offset:x}-0x{run.host_end:x}"


def _qemu_summary(report: CheckReport) -> list[str]:
    """qemu-img check's own closing lines (qemu-img.c check_image's human output)."""
    lines = []
    c, lk, e = report.count("corruptions"), report.count("leaks"), report.count("check-errors")
    if not (c or lk or e):
        lines.append("No errors were found on the image.")
    if c:
        lines.append(f"{c} errors were found on the image.\nData may be corrupted, or further writes to the image "
                     "may corrupt it.")
    if lk:
        lines += [""] if c else []  # qemu starts each of these blocks with a blank line
        lines.append(f"{lk} leaked clusters were found on the image.\nThis means waste of disk space, but no harm "
                     "to data.")
    if e:
        lines += [""] if c or lk else []
        lines.append(f"{e} internal errors have occurred during the check.")
    s = report.stats
    if s.total_clusters and s.allocated_clusters:
        lines.append(f"{s.allocated_clusters}/{s.total_clusters} = {s.allocated_clusters * 100 / s.total_clusters:.2f}% "
                     f"allocated, {s.fragmented_clusters * 100 / s.allocated_clusters:.2f}% fragmented, "
                     f"{s.compressed_clusters * 100 / s.allocated_clusters:.2f}% compressed clusters")
    if s.image_end_offset:
        lines.append(f"Image end offset: {s.image_end_offset}")
    return lines
