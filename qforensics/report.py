"""The HTML audit report: one self-contained file a person reads without the tool.

Everything taken from the image reaches the page only through jinja2 with
autoescape on, its control characters and bidirectional overrides shown as
escapes (text.terminal_safe); the cluster map is drawn from numbers only. The page's one
script is the template's own, allowed by its hash in the Content-Security-
Policy, so no other script can run even if a string ever went unescaped.

The evidence is hashed before the analysis and again after it, with the same
method (`--hash`; qforensics.evidence.digest).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import sys
from collections import Counter
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import jinja2
import markupsafe
import numpy as np

from . import __version__, progress
from .checks import check_image
from .findings import Severity
from .graph import build_graph, summarize
from .info import build_info
from .evidence.digest import SPARSE_RECIPE, hash_evidence, resolve_hash_method
from .layout import Role
from .model import Image
from .text import terminal_safe

MAP_CELLS = 4096  # the cluster map is at most 64 x 64 cells, aggregated for big files
COLOURS = {
    "free": "#f4f4f4", "header": "#1f77b4", "l1_table": "#17becf", "l2_table": "#2ca02c", "data": "#bcbd22",
    "compressed": "#e7ba52", "refcount_table": "#9467bd", "refcount_block": "#c5b0d5", "snapshot_table": "#8c564b",
    "bitmap_directory": "#e377c2", "bitmap_table": "#f7b6d2", "bitmap_data": "#fcdcec", "luks_header": "#7f7f7f",
    "dedup_table": "#ff7f0e", "journal": "#ffbb78", "draft_bitmap": "#dbdb8d", "extension": "#1f77b4",
    "leaked": "#d62728", "overlap": "#000000", "past_eof": "#ff00ff",
}
HEX_CONTEXT = 32
MAX_EXCERPTS = 50
MAX_FINDING_ROWS = 5000  # past this the table shows the first rows (by severity); the counts by code stay complete
def cluster_map(lay, leaks: list[int], overlaps: list[int]) -> dict:
    """Cells of the file drawn at scale: each cell the most common role of the clusters it covers."""
    n = len(lay.role)
    names = ["?"] * (max(Role) + 1)
    for r in Role:  # indexed by value: Role's definition order is not its values' order
        names[r.value] = r.name.lower()
    extra = {"leaked": len(names), "overlap": len(names) + 1}
    all_names = names + ["leaked", "overlap"]
    roles = lay.role.astype(np.int16)
    if leaks:
        roles[np.array([c for c in leaks if c < n], dtype=np.int64)] = extra["leaked"]
    if overlaps:
        roles[np.array([c for c in overlaps if c < n], dtype=np.int64)] = extra["overlap"]
    per_cell = max(1, -(-n // MAP_CELLS))
    cells = []
    for start in range(0, n, per_cell):
        counts = np.bincount(roles[start:start + per_cell], minlength=len(all_names))
        pick = next((s for s in (extra["overlap"], extra["leaked"]) if counts[s]), int(np.argmax(counts)))
        cells.append(pick)
    used = sorted({all_names[c] for c in cells})
    side = int(np.ceil(np.sqrt(len(cells)))) or 1
    return {"cells": [(i % side, i // side, COLOURS.get(all_names[c], "#999999"), all_names[c])
                      for i, c in enumerate(cells)],
            "side": side, "rows": -(-len(cells) // side) or 1, "scale": max(10, 320 // side), "per_cell": per_cell, "clusters": n,
            "legend": [(name, COLOURS.get(name, "#999999")) for name in used]}


def hexdump(img: Image, offset: int) -> list[str]:
    """A few lines of hex around an offset, for a finding's evidence."""
    start = max(0, offset - HEX_CONTEXT) // 16 * 16
    data = img.file.read(start, 2 * HEX_CONTEXT + 16)
    lines = []
    for i in range(0, len(data), 16):
        row = data[i:i + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        mark = ">" if start + i <= offset < start + i + 16 else " "
        lines.append(f"{mark}{start + i:012x}  {row.hex(' '):47s}  {text}")
    return lines


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


def csp_hash(script: str) -> str:
    """The Content-Security-Policy source that allows exactly this inline script."""
    digest = base64.b64encode(hashlib.sha256(str(script).encode()).digest()).decode()
    return markupsafe.Markup(f"'sha256-{digest}'")  # base64 and quotes only: nothing from the image


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
                report = check_image(img)
            bar.describe("image description")
            with bar.share(0.1):
                info = build_info(img, str(path), report.layout)  # the check's layout: its journals
            bar.describe("structure graph")
            with bar.share(0.5):
                graph, lay = build_graph(img)
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
        # finalize: control characters and bidirectional overrides from image strings are written as
        # visible escapes, so a name cannot reorder the text around it (autoescape only handles <>&'")
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())), autoescape=True,
                                 undefined=jinja2.StrictUndefined,
                                 finalize=lambda v: terminal_safe(v) if isinstance(v, str) else v)
        env.filters["csp_hash"] = csp_hash
        return env.get_template("report.html.j2").render(
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


def template_dir() -> Path:
    """reports/templates, shipped inside the package as qforensics/report_templates."""
    return Path(str(resources.files("qforensics") / "report_templates"))
