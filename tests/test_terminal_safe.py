"""Image strings cannot drive the analyst's terminal: control characters and bidirectional overrides in
snapshot names, backing file names and bitmap names are shown escaped in human output and in messages,
and kept exactly in JSON (compared with live qemu-img info)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import qemu_img, run_qforensics

from qforensics.text import _UNSAFE

NAME = "evil\x1b[2J\x1b]0;pwned\x07\r\u202eRED"
BACKING = "base\x1b[31m\x9b.raw"


def unsafe(text: str) -> list[str]:
    return sorted({c for c in text if ord(c) in _UNSAFE})


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    img = d / "snap.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(img), "1M").returncode == 0
    assert qemu_img("snapshot", "-c", NAME, str(img)).returncode == 0
    top = d / "top.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", BACKING, "-F", "raw", str(top), "1M").returncode == 0
    return d, img, top


def test_snapshot_name_is_escaped_in_human_info_and_exact_in_json(hostile):
    d, img, _ = hostile
    human = run_qforensics("info", str(img), cwd=d)
    assert human.returncode == 0, human.stderr
    assert unsafe(human.stdout) == [] and "evil\\x1b[2J\\x1b]0;pwned\\x07\\x0d\\u202e" in human.stdout
    ours = json.loads(run_qforensics("info", str(img), "--output", "json", cwd=d).stdout)
    theirs = json.loads(qemu_img("info", "--output=json", str(img)).stdout)
    assert ours["snapshots"][0]["name"] == theirs["snapshots"][0]["name"] == NAME


def test_snapshot_names_are_escaped_in_errors(hostile):
    d, img, _ = hostile
    res = run_qforensics("recover", str(img), "-o", str(d / "o.raw"), "--snapshot", "nope\x1b[5m", cwd=d)
    assert res.returncode == 1
    assert unsafe(res.stderr) == [] and "\\x1b[2J" in res.stderr and "nope\\x1b[5m" in res.stderr
    assert len(res.stderr.splitlines()) == 1


def test_backing_file_name_is_escaped(hostile):
    d, _, top = hostile
    info = run_qforensics("info", str(top), cwd=d)
    assert info.returncode == 0 and unsafe(info.stdout) == [] and "base\\x1b[31m\\x9b.raw" in info.stdout
    ours = json.loads(run_qforensics("info", str(top), "--output", "json", cwd=d).stdout)
    theirs = json.loads(qemu_img("info", "--output=json", "-U", str(top)).stdout)
    assert ours["backing-filename"] == theirs["backing-filename"] == BACKING
    for command in (["map", str(top), "--allow-image-dir"], ["recover", str(top), "-o", str(d / "t.raw"),
                                                              "--allow-image-dir"]):
        res = run_qforensics(*command, cwd=d)
        assert res.returncode == 1 and unsafe(res.stderr) == [] and "\\x1b[31m" in res.stderr, res.stderr


def test_image_file_name_is_escaped(hostile, tmp_path):
    _, img, _ = hostile
    odd = tmp_path / "ev\x1b[2Jidence.qcow2"
    shutil.copyfile(img, odd)
    for command in (["map", odd.name], ["check", odd.name], ["info", odd.name, "--snapshot-nope"]):
        res = run_qforensics(*command, cwd=tmp_path)
        assert unsafe(res.stdout + res.stderr) == [], command


def test_bitmap_name_with_nul_is_escaped(corpus, tmp_path):
    from conftest import image_path

    src = image_path(corpus, "bitmaps")
    path = tmp_path / src.name
    shutil.copyfile(src, path)
    data = path.read_bytes()
    ext = data.index(bytes.fromhex("23852875"), 72)  # the bitmaps extension: its directory offset
    directory = int.from_bytes(data[ext + 24:ext + 32], "big")
    with open(path, "r+b") as f:  # both names "b\0": a duplicate, as qemu says
        for entry in (directory, directory + 32):
            f.seek(entry + 24)
            f.write(b"b\0")
    qemu = subprocess.run(["qemu-io", "-r", "-c", "quit", path.name], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert "Bitmap already exists: b" in qemu.stderr
    res = run_qforensics("info", path.name, cwd=tmp_path)
    assert res.returncode == 1 and "\0" not in res.stderr and "'b\\x00'" in res.stderr
