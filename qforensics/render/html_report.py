"""The HTML audit report's page: one self-contained file a person reads without the tool.

Everything taken from the image reaches the page only through jinja2 with
autoescape on, its control characters and bidirectional overrides shown as
escapes (text.terminal_safe); the cluster map is drawn from numbers only. The page's one
script is the template's own, allowed by its hash in the Content-Security-
Policy, so no other script can run even if a string ever went unescaped.
The facts come from report.build_report.
"""

from __future__ import annotations

import base64
import hashlib
from importlib import resources
from pathlib import Path

import jinja2
import markupsafe
import numpy as np

from ..layout import Role
from ..model import Image
from ..text import terminal_safe

MAP_CELLS = 4096  # the cluster map is at most 64 x 64 cells, aggregated for big files
COLOURS = {
    "free": "#f4f4f4", "header": "#1f77b4", "l1_table": "#17becf", "l2_table": "#2ca02c", "data": "#bcbd22",
    "compressed": "#e7ba52", "refcount_table": "#9467bd", "refcount_block": "#c5b0d5", "snapshot_table": "#8c564b",
    "bitmap_directory": "#e377c2", "bitmap_table": "#f7b6d2", "bitmap_data": "#fcdcec", "luks_header": "#7f7f7f",
    "dedup_table": "#ff7f0e", "journal": "#ffbb78", "draft_bitmap": "#dbdb8d", "extension": "#1f77b4",
    "leaked": "#d62728", "overlap": "#000000", "past_eof": "#ff00ff",
}
HEX_CONTEXT = 32


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


def csp_hash(script: str) -> str:
    """The Content-Security-Policy source that allows exactly this inline script."""
    digest = base64.b64encode(hashlib.sha256(str(script).encode()).digest()).decode()
    return markupsafe.Markup(f"'sha256-{digest}'")  # base64 and quotes only: nothing from the image


def render_page(**context) -> str:
    """The page: report.html.j2 rendered from the report's facts (report.build_report gathers them)."""
    # finalize: control characters and bidirectional overrides from image strings are written as
    # visible escapes, so a name cannot reorder the text around it (autoescape only handles <>&'")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())), autoescape=True,
                             undefined=jinja2.StrictUndefined,
                             finalize=lambda v: terminal_safe(v) if isinstance(v, str) else v)
    env.filters["csp_hash"] = csp_hash
    return env.get_template("report.html.j2").render(**context)


def template_dir() -> Path:
    """reports/templates, shipped inside the package as qforensics/report_templates."""
    return Path(str(resources.files("qforensics") / "report_templates"))
