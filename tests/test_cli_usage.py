"""Usage errors exit 1, as qemu-img's do (checked live), never 2: check's 2 means corruptions and
recover's 2 ranges missing, so a typo must not read as a verdict on the evidence."""

from __future__ import annotations

import pytest
from conftest import image_path, qemu_img, run_qforensics

COMMANDS = {"info": [], "check": [], "map": [], "report": ["-o", "r.html"], "recover": ["-o", "o.raw"],
            "graph": ["-o", "g.json"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_unknown_option_exits_1(corpus, tmp_path, command):
    img = image_path(corpus, "v3_default")
    res = run_qforensics(command, str(img), *COMMANDS[command], "--no-such-option", cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert "unrecognized arguments: --no-such-option" in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == "" and not list(tmp_path.iterdir())  # nothing was written
    if command in ("info", "check", "map"):
        assert qemu_img(command, "--no-such-option", str(img), cwd=tmp_path).returncode == res.returncode


@pytest.mark.parametrize("args", [["recover", "IMG"], ["check", "IMG", "--output", "xml"], ["frobnicate", "IMG"],
                                  []])
def test_missing_or_bad_arguments_exit_1(corpus, tmp_path, args):
    img = str(image_path(corpus, "v3_default"))
    res = run_qforensics(*[img if a == "IMG" else a for a in args], cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert "error:" in res.stderr and "Traceback" not in res.stderr


def test_help_and_version_exit_0(tmp_path):
    for args in (["--help"], ["--version"], ["recover", "--help"]):
        res = run_qforensics(*args, cwd=tmp_path)
        assert res.returncode == 0 and res.stdout, args
