"""Where `check`, `map` and `info` meet `qemu-img` on images QEMU refuses or checks differently (issue 14):
qemu's line on stderr, no counters when qemu gives none, check mode's own open rules, the backing chain
and data file opened with consent, and what a terminal user reads. Every verdict is compared with live
qemu-img 7.2 on the same file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import CASES, image_path, qemu_img, run_qforensics
from corruptions import Raw, be32, be64
from test_check_vs_qemu import QEMU_KEYS, assert_same_as_qemu, qemu_check
from test_header_refusals import POKES, poked_copy

from qforensics.text import MAX_LINE

COULD_NOT_OPEN = re.compile(r"^qemu-img: Could not open '([^']*)': (.*)$")


def qemu_open_error(stderr: str) -> str | None:
    """qemu-img's reason after "Could not open 'NAME': ", from its first such line."""
    for line in stderr.splitlines():
        m = COULD_NOT_OPEN.match(line)
        if m:
            return m.group(2)
    return None


def qemu_check_failed(stderr: str) -> str | None:
    for line in stderr.splitlines():
        if line.startswith("qemu-img: Check failed: "):
            return line.removeprefix("qemu-img: ")
    return None


def ours(*args: str, cwd: Path):
    """qforensics as a user runs it: no traceback, and no line of human output or stderr over MAX_LINE; in
    JSON (which keeps the image's strings whole, as qemu's does) no finding's message line is over it."""
    res = run_qforensics(*args, cwd=cwd)
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    json_out = "json" in args
    for line in (res.stderr if json_out else res.stdout + res.stderr).splitlines():
        assert len(line) <= MAX_LINE, line[:200]
    if json_out and res.stdout.strip():
        doc = json.loads(res.stdout)
        findings = doc.get("findings", []) if isinstance(doc, dict) else []
        assert all(len(json.dumps(f["message"])) + 24 <= MAX_LINE for f in findings)
    return res


def assert_refused_as_qemu(path: Path, reason: str, command: str = "check") -> None:
    """Exit 1, JSON still on stdout (check), and qemu's reason on stderr as `qforensics: NAME: <reason> [...]`."""
    res = ours(command, "--output", "json", path.name, cwd=path.parent)
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert lines and lines[0].startswith(f"qforensics: {path.name}: {reason} ["), (reason, lines)
    assert all(line.startswith(f"qforensics: {path.name}: ") for line in lines)
    if command == "check":
        doc = json.loads(res.stdout)
        assert doc["qemu-check-completed"] is False
        assert doc["qemu-would-refuse"][0] == reason and len(lines) == len(doc["qemu-would-refuse"])
        assert doc["qemu-check-failure"] == f"Could not open the image: {reason}"
        assert not set(QEMU_KEYS) & set(doc), "qemu gives no numbers for an image it cannot open"
        human = ours("check", path.name, cwd=path.parent)
        assert human.returncode == 1 and human.stderr == res.stderr
        assert "No errors were found" not in human.stdout and "errors were found" not in human.stdout
        assert "qemu-img check would not check this image" in human.stdout


@pytest.mark.parametrize("poke", POKES, ids=[p.id for p in POKES])
def test_check_and_map_verdicts_on_refused_headers(corpus, tmp_path, poke):
    """Every header refusal of the iotests' kind (080, 036, 061, 244...): `check` gives qemu-img check's
    verdict (its check mode accepts some of them), `map` gives qemu-img map's."""
    path = poked_copy(corpus, tmp_path, poke)
    passphrase = CASES[poke.case].get("passphrase") if poke.file is None else None
    res, qemu_json, _ = qemu_check(path, passphrase)
    refused = qemu_open_error(res.stderr)
    if refused is not None:
        assert res.returncode == 1
        assert_refused_as_qemu(path, refused)
    elif (failed := qemu_check_failed(res.stderr)) is not None:
        # check mode opened it; the check itself failed (the snapshot table) and qemu printed no numbers
        assert res.returncode == 1 and qemu_json is None
        mine = ours("check", "--output", "json", path.name, cwd=path.parent)
        doc = json.loads(mine.stdout)
        assert mine.returncode == 1 and doc["qemu-check-completed"] is False
        assert doc["qemu-check-failure"] == failed and not set(QEMU_KEYS) & set(doc)
        assert mine.stderr.splitlines()[-1] == f"qforensics: {path.name}: {failed}"
        human = ours("check", path.name, cwd=path.parent)
        assert f"qemu-img check would not complete: {failed}" in human.stdout
        assert "No errors were found" not in human.stdout
    else:  # check mode accepts what a plain open refuses: qemu's own counts
        assert qemu_json is not None
        report = assert_same_as_qemu(path, passphrase)
        assert report["qemu-check-completed"] is True
    if passphrase:
        return  # qemu-img map needs the key to open a LUKS image at all; qforensics map needs none
    qmap = qemu_img("map", "--output=json", path.name, cwd=path.parent)
    if qmap.returncode == 0:
        assert ours("map", "--output", "json", path.name, cwd=path.parent).returncode == 0
    else:
        reason = qemu_open_error(qmap.stderr)
        assert reason is not None, qmap.stderr
        assert_refused_as_qemu(path, reason, "map")


def test_info_force_still_says_why_on_stderr(corpus, tmp_path):
    poke = next(p for p in POKES if p.id == "l1_too_small")
    path = poked_copy(corpus, tmp_path, poke)
    reason = qemu_open_error(qemu_img("info", path.name, cwd=tmp_path).stderr)
    res = ours("info", "--force", path.name, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("image:")
    assert res.stderr.startswith(f"qforensics: {path.name}: {reason} [qcow2 header at 0x24: ")


# -- check mode (BDRV_O_CHECK): what `qemu-img check` opens and `qemu-img info` refuses ---------------------------

@pytest.mark.parametrize("case", ["v3_default", "snapshots", "refcount_bits_1", "compressed_zlib", "v2_snapshot"])
def test_empty_refcount_table_is_checked_as_qemu_checks_it(corpus, tmp_path, case):
    """refcount_table_clusters 0: `qemu-img info` refuses ("Image does not contain a reference count table"),
    `qemu-img check` opens it and counts every reference as a corruption."""
    src = image_path(corpus, case)
    path = tmp_path / src.name
    shutil.copyfile(src, path)
    with open(path, "r+b") as f:
        f.seek(56)
        f.write(be32(0))
    info = qemu_img("info", path.name, cwd=tmp_path)
    assert info.returncode == 1 and qemu_open_error(info.stderr) == "Image does not contain a reference count table"
    res, qemu, _ = qemu_check(path)
    assert res.returncode == 2 and qemu["corruptions"] > 0
    report = assert_same_as_qemu(path)
    assert report["corruptions"] == qemu["corruptions"] and report["qemu-would-refuse"] == []
    assert any(f["code"] == "header.refcount_table_missing" for f in report["findings"])
    # info and map open the image as qemu-img info and map do: refused
    assert_refused_as_qemu(path, "Image does not contain a reference count table", "map")
    assert ours("info", path.name, cwd=tmp_path).returncode == 1


def test_refcount_table_past_the_end_of_the_file(corpus, tmp_path):
    """A refcount table that lies past EOF (read as zeros): both qemu commands open it, check counts."""
    src = image_path(corpus, "v3_default")
    path = tmp_path / src.name
    shutil.copyfile(src, path)
    with open(path, "r+b") as f:
        f.seek(48)
        f.write(be64(0x10000000))
    assert qemu_img("info", path.name, cwd=tmp_path).returncode == 0
    res, qemu, _ = qemu_check(path)
    assert res.returncode == 2
    assert assert_same_as_qemu(path)["corruptions"] == qemu["corruptions"]


# -- backing chain and data file, with consent --------------------------------------------------------------------

def make_chain(folder: Path) -> Path:
    """base <- mid <- top, qcow2, named relative to their folder as qemu-img create writes them."""
    for args in (["base.qcow2", "4M"], ["-b", "base.qcow2", "-F", "qcow2", "mid.qcow2"],
                 ["-b", "mid.qcow2", "-F", "qcow2", "top.qcow2"]):
        assert qemu_img("create", "-q", "-f", "qcow2", *args, cwd=folder).returncode == 0
    assert subprocess_ok(["qemu-io", "-c", "write -P 7 0 64k", "top.qcow2"], folder)
    return folder / "top.qcow2"


def subprocess_ok(cmd: list[str], cwd: Path) -> bool:
    import subprocess

    return subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=60).returncode == 0


def set_backing_format(path: Path, fmt: bytes) -> None:
    r = Raw(path.read_bytes())
    pos = r.u32(100)
    while r.u32(pos) != 0xE2792ACA:
        pos += 8 + ((r.u32(pos + 4) + 7) & ~7)
    assert len(fmt) <= ((r.u32(pos + 4) + 7) & ~7)
    with open(path, "r+b") as f:
        f.seek(pos + 4)
        f.write(be32(len(fmt)) + fmt.ljust((r.u32(pos + 4) + 7) & ~7, b"\0"))


def damage_base_missing(folder: Path) -> None:
    (folder / "base.qcow2").unlink()


def damage_base_directory(folder: Path) -> None:
    (folder / "base.qcow2").unlink()
    (folder / "base.qcow2").mkdir()


def damage_base_junk(folder: Path) -> None:
    (folder / "base.qcow2").write_bytes(b"junk\n")


def damage_base_refused(folder: Path) -> None:
    with open(folder / "base.qcow2", "r+b") as f:
        f.seek(20)
        f.write(be32(30))


def damage_mid_format_unknown(folder: Path) -> None:
    set_backing_format(folder / "top.qcow2", b"foo")


def damage_data_file_missing(folder: Path) -> None:
    (folder / "top.qcow2").unlink()
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=top.data", "top.qcow2", "4M",
                    cwd=folder).returncode == 0
    (folder / "top.data").unlink()


def damage_data_file_directory(folder: Path) -> None:
    damage_data_file_missing(folder)
    (folder / "top.data").mkdir()


CHAIN_DAMAGE = [damage_base_missing, damage_base_directory, damage_base_junk, damage_base_refused,
                damage_mid_format_unknown, damage_data_file_missing, damage_data_file_directory]


@pytest.mark.parametrize("damage", CHAIN_DAMAGE, ids=[d.__name__.removeprefix("damage_") for d in CHAIN_DAMAGE])
def test_chain_failures_are_qemus_verdict(tmp_path, damage):
    top = make_chain(tmp_path)
    damage(tmp_path)
    res, _, _ = qemu_check(top)
    reason = qemu_open_error(res.stderr)
    assert res.returncode == 1 and reason, res.stderr
    for consent in (["--allow-image-dir"], ["--backing-dir", "."]):
        mine = ours("check", "--output", "json", *consent, top.name, cwd=tmp_path)
        doc = json.loads(mine.stdout)
        assert mine.returncode == 1 and doc["qemu-check-completed"] is False
        if consent[0] == "--backing-dir":  # qemu names the file as found in the folder given, "./base.qcow2"
            reason = reason.replace("'base.qcow2'", "'./base.qcow2'").replace("'top.data'", "'./top.data'")
        assert doc["qemu-would-refuse"] == [reason], (doc["qemu-would-refuse"], reason)
        assert mine.stderr.startswith(f"qforensics: {top.name}: {reason} ["), mine.stderr
    # without consent: the image's own metadata, as before, and one info finding that says what was not opened
    mine = ours("check", "--output", "json", top.name, cwd=tmp_path)
    doc = json.loads(mine.stdout)
    assert mine.returncode == 0 and doc["qemu-check-completed"] is True
    (note,) = [f for f in doc["findings"] if f["code"] == "check.chain_not_opened"]
    assert note["severity"] == "info" and ("'mid.qcow2'" in note["message"] or "'top.data'" in note["message"])


def test_intact_chain_with_consent_is_qemus_clean_verdict(tmp_path):
    top = make_chain(tmp_path)
    res, qemu, _ = qemu_check(top)
    assert res.returncode == 0
    mine = ours("check", "--output", "json", "--allow-image-dir", top.name, cwd=tmp_path)
    doc = json.loads(mine.stdout)
    assert mine.returncode == 0 and doc["qemu-would-refuse"] == []
    assert [doc[k] for k in QEMU_KEYS] == [qemu.get(k, 0) for k in QEMU_KEYS]
    assert not [f for f in doc["findings"] if f["code"].startswith(("chain.", "check.chain"))]


def test_chain_that_loops_is_a_failure_without_qemus_words(tmp_path):
    """top -> mid -> base -> top: qemu-img 7.2 check recurses without end on it (not run here); ours stops."""
    top = make_chain(tmp_path)
    (tmp_path / "base.qcow2").unlink()
    assert qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "top.qcow2", "-F", "qcow2", "base.qcow2", "4M",
                    cwd=tmp_path).returncode == 0
    mine = ours("check", "--output", "json", "--allow-image-dir", top.name, cwd=tmp_path)
    doc = json.loads(mine.stdout)
    assert mine.returncode == 1 and doc["qemu-check-completed"] is False and doc["qemu-would-refuse"] == []
    assert "loops back to" in doc["qemu-check-failure"]
    assert [f["code"] for f in doc["findings"] if f["code"].startswith("chain.")] == ["chain.loop"]
    assert mine.stderr.startswith(f"qforensics: {top.name}: qemu-img check's verdict is not known: ")


def test_backing_name_outside_the_folder_is_not_followed(tmp_path):
    work = tmp_path / "evidence"
    work.mkdir()
    assert qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "../outside.qcow2", "-F", "qcow2", "top.qcow2", "1M",
                    cwd=work).returncode == 0
    mine = ours("check", "--output", "json", "--allow-image-dir", "top.qcow2", cwd=work)
    doc = json.loads(mine.stdout)
    assert mine.returncode == 1 and doc["qemu-would-refuse"] == [] and doc["qemu-check-completed"] is False
    assert [f["code"] for f in doc["findings"] if f["code"].startswith("chain.")] == ["chain.not_allowed"]


# -- what a terminal user reads -----------------------------------------------------------------------------------

def leaky(corpus: Path, tmp_path: Path, n: int = 100) -> Path:
    """8 MiB written, then n L2 entries cleared: n leaked data clusters in a row."""
    path = tmp_path / "leaky.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", path.name, "64M", cwd=tmp_path).returncode == 0
    assert subprocess_ok(["qemu-io", "-c", "write -P 1 0 8M", path.name], tmp_path)
    r = Raw(path.read_bytes())
    with open(path, "r+b") as f:
        for i in range(10, 10 + n):
            f.seek(r.l2_entry_at(i))
            f.write(be64(0))
    return path


def test_runs_of_one_code_are_one_line(corpus, tmp_path):
    path = leaky(corpus, tmp_path)
    res, qemu, lines = qemu_check(path)
    assert res.returncode == 3 and qemu["leaks"] == 100 and len(lines) == 100
    r = Raw(path.read_bytes())
    hosts = sorted(int(m.group(1)) for m in (re.match(r"Leaked cluster (\d+) ", x) for x in lines))
    assert hosts == list(range(hosts[0], hosts[0] + 100))
    human = ours("check", path.name, cwd=tmp_path)
    assert human.returncode == 3
    leak_lines = [x for x in human.stdout.splitlines() if x.startswith("  refcount.leak:")]
    first, last = hosts[0] * r.cs, hosts[-1] * r.cs
    assert leak_lines == [f"  refcount.leak: 100 clusters, 0x{first:x}-0x{last:x}: refcount block: cluster "
                          f"{hosts[0]}-{hosts[-1]} (0x{first:x}-0x{last:x}) has refcount 1 but 0 references"]
    assert "100 leaked clusters were found on the image." in human.stdout
    verbose = ours("check", "--verbose", path.name, cwd=tmp_path)
    assert len([x for x in verbose.stdout.splitlines() if x.startswith("  refcount.leak:")]) == 100
    doc = json.loads(ours("check", "--output", "json", path.name, cwd=tmp_path).stdout)
    assert sorted(f["host_offset"] for f in doc["findings"] if f["code"] == "refcount.leak") == \
        [h * r.cs for h in hosts]


def test_runs_that_are_not_consecutive_stay_apart_and_are_capped(corpus, tmp_path):
    """Every other cluster leaked: no two neighbours join; past 5 lines a code says how many are hidden."""
    path = tmp_path / "sparse_leaks.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", path.name, "64M", cwd=tmp_path).returncode == 0
    assert subprocess_ok(["qemu-io", "-c", "write -P 1 0 2M", path.name], tmp_path)
    r = Raw(path.read_bytes())
    cleared = list(range(2, 32, 2))
    with open(path, "r+b") as f:
        for i in cleared:
            f.seek(r.l2_entry_at(i))
            f.write(be64(0))
    res, qemu, _ = qemu_check(path)
    assert qemu["leaks"] == len(cleared)
    human = ours("check", path.name, cwd=tmp_path).stdout.splitlines()
    leak_lines = [x for x in human if x.startswith("  refcount.leak:")]
    assert len(leak_lines) == 6 and all("clusters" not in x for x in leak_lines[:5])
    assert leak_lines[5] == f"  refcount.leak: {len(cleared) - 5} more lines ({len(cleared) - 5} faults) not " \
                            "shown; --verbose shows every one"


def test_long_and_hostile_names_never_make_long_lines(corpus, tmp_path):
    """A 1023-byte backing file name, and one of 1000 NUL bytes (4 KiB of \\x00 escapes once)."""
    src = image_path(corpus, "v3_default")
    cases = {"long.qcow2": b"A" * 1023, "nul.qcow2": b"\0" * 1000, "tail.qcow2": b"ab\0cdefg"}
    for name, value in cases.items():
        path = tmp_path / name
        shutil.copyfile(src, path)
        with open(path, "r+b") as f:
            f.seek(8)
            f.write(be64(0x2000) + be32(len(value)))
            f.seek(0x2000)
            f.write(value)
        for command in (["info"], ["check"], ["map"], ["info", "--output", "json"], ["check", "--output", "json"],
                        ["map", "--allow-image-dir"], ["check", "--allow-image-dir"]):
            ours(*command, name, cwd=tmp_path)  # asserts every line of stdout and stderr is short
    # QEMU reads the name as a C string: an empty name opens no backing file, "ab\0..." names "ab"
    for name, seen in (("nul.qcow2", None), ("tail.qcow2", "ab")):
        qemu = json.loads(qemu_img("info", "--output=json", name, cwd=tmp_path).stdout)
        mine = json.loads(ours("info", "--output", "json", name, cwd=tmp_path).stdout)
        assert qemu.get("backing-filename") == mine.get("backing-filename") == seen
        (f,) = [f for f in mine["findings"] if f["code"] == "header.name_nul"]
        assert f["host_offset"] == 0x2000 + cases[name].index(b"\0") and f["severity"] == "warning"
    qmap = qemu_img("map", "--output=json", "nul.qcow2", cwd=tmp_path)
    mine = ours("map", "--output", "json", "nul.qcow2", cwd=tmp_path)
    assert qmap.returncode == mine.returncode == 0 and json.loads(mine.stdout) == json.loads(qmap.stdout)
    res, qemu, _ = qemu_check(tmp_path / "nul.qcow2")
    assert res.returncode == 0 and assert_same_as_qemu(tmp_path / "nul.qcow2")["qemu-check-completed"]
    assert os.path.getsize(tmp_path / "nul.qcow2") == os.path.getsize(src)
