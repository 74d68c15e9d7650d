"""The HTML audit report: one self-contained file a person reads without the tool.

Everything taken from the image reaches the page only through jinja2 with
autoescape on; the cluster map is drawn from numbers only. The evidence is
hashed before the analysis and again after it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np

from . import __version__
from .checks import check_image
from .findings import Severity
from .graph import build_graph, summarize
from .info import build_info
from .layout import Role
from .model import Image

MAP_CELLS = 4096  # the cluster map is at most 64 x 64 cells, aggregated for big files
COLOURS = {
    "free": "#f4f4f4", "header": "#1f77b4", "l1_table": "#17becf", "l2_table": "#2ca02c", "data": "#bcbd22",
    "compressed": "#e7ba52", "refcount_table": "#9467bd", "refcount_block": "#c5b0d5", "snapshot_table": "#8c564b",
    "bitmap_directory": "#e377c2", "bitmap_table": "#f7b6d2", "bitmap_data": "#fcdcec", "luks_header": "#7f7f7f",
    "dedup_table": "#ff7f0e", "journal": "#ffbb78", "draft_bitmap": "#dbdb8d", "extension": "#1f77b4",
    "leaked": "#d62728", "overlap": "#000000", "past_eof": "#ff00ff",
}
HEX_CONTEXT = 32


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cluster_map(lay, leaks: list[int], overlaps: list[int]) -> dict:
    """Cells of the file drawn at scale: each cell the most common role of the clusters it covers."""
    roles = lay.role.copy()
    n = len(roles)
    names = [r.name.lower() for r in Role]
    extra = {"leaked": len(names), "overlap": len(names) + 1}
    roles = roles.astype(np.int16)
    if leaks:
        roles[np.array([c for c in leaks if c < n], dtype=np.int64)] = extra["leaked"]
    if overlaps:
        roles[np.array([c for c in overlaps if c < n], dtype=np.int64)] = extra["overlap"]
    per_cell = max(1, -(-n // MAP_CELLS))
    cells = []
    for start in range(0, n, per_cell):
        chunk = roles[start:start + per_cell]
        counts = np.bincount(chunk, minlength=len(names) + 2)
        special = [extra["overlap"], extra["leaked"]]
        pick = next((s for s in special if counts[s]), int(np.argmax(counts)))
        cells.append(pick)
    all_names = names + ["leaked", "overlap"]
    used = sorted({all_names[c] for c in cells})
    side = int(np.ceil(np.sqrt(len(cells)))) or 1
    return {"cells": [(i % side, i // side, COLOURS.get(all_names[c], "#999999"), all_names[c])
                      for i, c in enumerate(cells)],
            "side": side, "per_cell": per_cell, "clusters": n,
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


def build_report(path: str | os.PathLike[str], command_line: list[str] | None = None) -> str:
    """Analyse the image and render the report; the image is hashed before and after."""
    path = Path(path)
    st = path.stat()
    before = sha256_file(path)
    started = datetime.now(UTC)
    with Image(path) as img:
        info = build_info(img, str(path))
        report = check_image(img)
        graph, lay = build_graph(img)
        summary = summarize(graph)
        cb = img.header.cluster_bits if img.geometry_ok else 0
        leaks = [f.host_offset >> cb for f in report.findings if f.code == "refcount.leak" and f.host_offset is not None]
        overlaps = [c.cluster for c in lay.conflicts]
        cmap = cluster_map(lay, leaks, overlaps)
        order = [str(s) for s in Severity]
        findings = sorted(report.findings, key=lambda f: (order.index(str(f.severity)), f.host_offset or 0))
        excerpts = {}
        for f in findings:
            if f.severity == Severity.CORRUPTION and f.host_offset is not None and len(excerpts) < 50:
                excerpts.setdefault(f.host_offset, hexdump(img, f.host_offset))
    after = sha256_file(path)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2").render(
        evidence={"path": str(path), "size": st.st_size,
                  "mtime": datetime.fromtimestamp(st.st_mtime, UTC).isoformat(), "sha256_before": before,
                  "sha256_after": after, "unchanged": before == after, "tool": f"qforensics {__version__}",
                  "time": started.isoformat(), "command": " ".join(command_line or sys.argv)},
        verdict=verdict(report), check=report.to_json(str(path)), info=info, findings=findings,
        excerpts=excerpts, cmap=cmap, graph=summary, order=order,
    )


def template_dir() -> Path:
    """reports/templates, shipped inside the package as qforensics/report_templates."""
    return Path(str(resources.files("qforensics") / "report_templates"))
