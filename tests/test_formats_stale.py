"""The generated parsers in qforensics/formats are exactly what ksy/ compiles to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "qforensics" / "formats"


def test_generated_parsers_are_fresh(tmp_path):
    out = tmp_path / "formats"
    subprocess.run([sys.executable, str(ROOT / "tools" / "regen_formats.py"), "--out", str(out)], check=True)
    fresh = {p.name: p.read_text() for p in out.glob("*.py")}
    committed = {p.name: p.read_text() for p in PACKAGE.glob("*.py")}
    assert sorted(fresh) == sorted(committed), "module list differs: run python tools/regen_formats.py"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated parsers {stale}: run python tools/regen_formats.py"


def test_every_spec_has_a_module():
    specs = {p.stem for p in (ROOT / "ksy").glob("*.ksy")}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert specs == modules
