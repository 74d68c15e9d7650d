"""The HTML audit report's facts: the evidence, the check, the info document, the structure graph, the
cluster map and the hex excerpts, gathered while the image is open; render.html_report draws the page.

The evidence is hashed before the analysis and again after it, with the same
method (`--hash`; qforensics.evidence.digest).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from . import __version__, progress
from .checks import check_image
from .evidence.digest import SPARSE_RECIPE, hash_evidence, resolve_hash_method
from .findings import Severity
from .graph import build_graph, summarize
from .info import build_info
from .model import Image
from .render.html_report import cluster_map, hexdump, render_page

MAX_EXCERPTS = 50
MAX_FINDING_ROWS = 5000  # past this the table shows the first rows (by severity); the counts by code stay complete


def verdict(report) -> str:
    """clean, leaks, corrupt, or unreadable when the tables could not even be located."""
    if any(f.code == "check.geometry_unusable" for f in report.findings):
        return "unreadable"
    if report.count("check-errors") or report.count("corruptions") or report.refusals:
        return "corrupt"
    if report.count("leaks"):
        return "leaks"
    return "clean"


def command_text(argv: list[str]) -> str:
    """The command line, quoted as a shell would need it; `python -m qforensics` shown as qforensics."""
    prog = os.path.basename(argv[0]) if argv else "qforensics"
    if prog in ("__main__.py", "qforensics", "cli.py"):
        prog = "qforensics"
    return shlex.join([prog, *argv[1:]])


def build_report(path: str | os.PathLike[str], command_line: list[str] | None = None,
                 hash_method: str = "auto") -> str:
    """Analyse the image and render the report; the image is hashed before and after, by the same method.

    Progress goes to the current progress bar (qforensics.progress), if any.
    """
    path = Path(path)
    method, reason = resolve_hash_method(path, hash_method)
    st = path.stat()
    # shares of the progress bar, in rough seconds: hashing at ~1 GB/s, the analysis a second or so
    to_hash = st.st_size / 1e9 if method == "full" else min(st.st_size, st.st_blocks * 512) / 1e9
    with progress.task(total=2 * to_hash + 2.0) as bar:
        label = "SHA-256" if method == "full" else "sparse digest"
        bar.describe(f"{label} before the analysis")
        with bar.share(to_hash):
            before = hash_evidence(path, method)
        started = datetime.now(UTC)
        with Image(path) as img:
            with bar.share(1.2):
                report = check_image(img, graph=True)  # the command's one host layout, drawn by the graph
            bar.describe("image description")
            with bar.share(0.1):
                info = build_info(img, str(path), report.layout)  # the check's layout: its journals
            bar.describe("structure graph")
            with bar.share(0.5):
                graph, lay = build_graph(img, report.layout)  # (none when the geometry is unusable: one is built)
                summary = summarize(graph)
            bar.describe("cluster map and findings")
            with bar.share(0.2):
                cb = img.header.cluster_bits if img.geometry_ok else 0
                leaks = [f.host_offset >> cb for f in report.findings
                         if f.code == "refcount.leak" and f.host_offset is not None]
                overlaps = [c.cluster for c in lay.conflicts]
                cmap = cluster_map(lay, leaks, overlaps)
                order = [str(s) for s in Severity]
                findings = sorted(report.findings, key=lambda f: (order.index(str(f.severity)), f.host_offset or 0))
                excerpts = {}
                for f in findings[:MAX_FINDING_ROWS]:
                    if f.severity == Severity.CORRUPTION and f.host_offset is not None and len(excerpts) < MAX_EXCERPTS:
                        excerpts.setdefault(f.host_offset, hexdump(img, f.host_offset))
        bar.describe(f"{label} after the analysis")
        with bar.share(to_hash):
            after = hash_evidence(path, method)
        bar.describe("rendering")
        by_code = Counter((str(f.severity), f.code) for f in findings)
        return render_page(
            evidence={"path": str(path), "size": st.st_size, "allocated": st.st_blocks * 512,
                      "mtime": datetime.fromtimestamp(st.st_mtime, UTC).isoformat(), "hash": before,
                      "hash_after": after, "hash_reason": reason, "sparse_recipe": SPARSE_RECIPE,
                      "unchanged": before["digest"] == after["digest"], "tool": f"qforensics {__version__}",
                      "time": started.isoformat(), "command": command_text(command_line or sys.argv)},
            verdict=verdict(report), check=report.to_json(str(path)), info=info,
            findings=findings[:MAX_FINDING_ROWS], total_findings=len(findings),
            by_code=sorted(by_code.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])),
            excerpts=excerpts, cmap=cmap, graph=summary, order=order,
        )
