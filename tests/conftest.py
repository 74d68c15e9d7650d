"""Shared fixtures: the corpus materialised in a temporary folder, qemu-img helpers."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CORPUS = Path(__file__).parent / "corpus" / "images"
ROOT = Path(__file__).resolve().parent.parent


def load_cases() -> dict[str, dict]:
    """provenance.json of every corpus case, by case name."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(CORPUS.glob("*/provenance.json"))}


CASES = load_cases()
VALID_CASES = sorted(name for name, prov in CASES.items() if prov.get("valid", True))


def qcow2_files(case: str) -> list[str]:
    """Every qcow2 file of a case (main image and qcow2 backing layers), uncompressed names."""
    return [f["name"] for f in CASES[case]["files"] if f["name"].endswith(".qcow2")]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """All cases unpacked into a session folder: <tmp>/<case>/<file>, gz files inflated."""
    root = tmp_path_factory.mktemp("corpus")
    for case, prov in CASES.items():
        dst = root / case
        dst.mkdir()
        for f in prov["files"]:
            src = CORPUS / case / f["stored_as"]
            if f["stored_as"].endswith(".gz") and not f["name"].endswith(".gz"):
                with gzip.open(src, "rb") as zin, open(dst / f["name"], "wb") as out:
                    shutil.copyfileobj(zin, out, 1 << 20)
            else:
                shutil.copyfile(src, dst / f["name"])
    return root


def image_path(corpus: Path, case: str, name: str | None = None) -> Path:
    return corpus / case / (name or CASES[case]["main"])


def qemu_img(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def qemu_info_json(path: Path) -> dict:
    """Live `qemu-img info --output=json` of one file (no backing chain)."""
    res = qemu_img("info", "--output=json", path.name, cwd=path.parent)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def run_qforensics(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI of this source tree (not whatever copy pip installed), as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "qforensics", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)
