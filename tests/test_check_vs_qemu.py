"""`qforensics check` agrees with live `qemu-img check`: counters, exit code, and every line qemu prints per fault."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import CASES, image_path, qcow2_files, qemu_img, run_qforensics

FILES = [(c, n) for c in sorted(CASES) for n in qcow2_files(c)]
QEMU_KEYS = ("check-errors", "corruptions", "leaks", "image-end-offset", "total-clusters", "allocated-clusters",
             "fragmented-clusters", "compressed-clusters")
FAULT_LINE = ("ERROR", "Leaked", "Can't get refcount")


def qemu_check(path: Path, passphrase: str | None = None):
    """Live qemu-img check (JSON) and the per-fault lines it prints on stderr."""
    if passphrase:
        args = ["check", "--output=json", "--object", f"secret,id=sec0,data={passphrase}", "--image-opts",
                f"driver=qcow2,file.filename={path.name},encrypt.key-secret=sec0"]
    else:
        args = ["check", "--output=json", path.name]
    res = qemu_img(*args, cwd=path.parent)
    # qemu's "Some clusters may be leaked ... to fix." hint has no newline: the next line is glued to it
    lines = [line.removeprefix("qemu-img: ").split("on the image file to fix.")[-1] for line in res.stderr.splitlines()]
    lines = [line for line in lines if line.startswith(FAULT_LINE)]
    return res, (json.loads(res.stdout) if res.stdout.strip() else None), lines


def assert_same_as_qemu(path: Path, passphrase: str | None = None) -> dict:
    res, qemu, qemu_lines = qemu_check(path, passphrase)
    ours = run_qforensics("check", "--output", "json", path.name, cwd=path.parent)
    assert "Traceback" not in ours.stderr
    report = json.loads(ours.stdout)
    assert ours.returncode == res.returncode, (res.stderr, report["findings"][:5])
    if qemu is not None:  # qemu prints no JSON when its check fails outright
        for key in QEMU_KEYS:
            assert report[key] == qemu.get(key, 0), (key, qemu, res.stderr[:2000])
    ours_lines = [f["qemu_check"] for f in report["findings"] if f["qemu_check"]]
    # past 10000 findings of one code the rest are a ".more" summary: it keeps qemu's counter, not the lines
    unlisted = sum(f["repeat"] for f in report["findings"] if f["code"].endswith(".more") and f["qemu_counts"])
    assert not Counter(ours_lines) - Counter(qemu_lines)
    assert sum((Counter(qemu_lines) - Counter(ours_lines)).values()) == unlisted
    return report


@pytest.mark.parametrize(("case", "name"), FILES, ids=[f"{c}/{n}" for c, n in FILES])
def test_check_matches_qemu_on_corpus(corpus, case, name):
    path = image_path(corpus, case, name)
    if Counter(CASES[case]["features"]) & Counter(["early_bitmaps", "draft_early_bitmaps"]):
        res, _, _ = qemu_check(path)
        assert res.returncode == 1  # qemu cannot open it at all; we still report everything
        ours = run_qforensics("check", "--output", "json", path.name, cwd=path.parent)
        assert ours.returncode == 1
        assert json.loads(ours.stdout)["qemu-would-refuse"] == ["bitmaps_ext: Invalid extension length"]
        return
    passphrase = CASES[case].get("passphrase") if name == CASES[case]["main"] else None
    report = assert_same_as_qemu(path, passphrase)
    if CASES[case].get("valid", True):  # nothing beyond qemu is invented on a valid image
        allowed = {"header.corrupt_bit"} if "draft_incompat_bit1" in CASES[case]["features"] else set()
        extra = [f for f in report["findings"] if f["severity"] in ("corruption", "leak", "warning")
                 and f["qemu_counts"] is None and f["code"] not in allowed]
        assert extra == []


from corruptions import KINDS, make  # noqa: E402


@pytest.mark.parametrize("kind", KINDS, ids=[k.id for k in KINDS])
def test_corrupted_image_matches_qemu(corpus, tmp_path, kind):
    path = make(kind, image_path(corpus, kind.base).parent, CASES[kind.base]["main"], tmp_path)
    report = assert_same_as_qemu(path)
    codes = {f["code"] for f in report["findings"]}
    missing = set(kind.codes) - codes
    assert not missing, (missing, sorted(codes))


def test_enough_corruption_kinds():
    assert len(KINDS) >= 30
