"""recover never calls itself complete when it is not (issue 16 point 1), on real images made by qemu-img and
damaged as the iotests damage them; the expected ranges come from live `qemu-img map` and `check`.

- ranges read through a structure `check` faults are `uncertain`, with the finding's code, and exit 2;
- L2 tables found and not placed make the recovery incomplete, the ranges they could map are `unknown`, and
  `--carve-dir` writes each as a window whose bytes are the guest range it maps;
- an active L1 that shared a snapshot's tables and lost them takes the snapshot's tables back;
- allocated clusters of written zeros are counted, and uncertain when the checks find damage.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from conftest import CASES, image_path, qemu_img, run_qforensics
from corruptions import KINDS, make
from qforensics import open_image
from qforensics.checks import check_image


def recover(path: Path, tmp: Path, *extra: str) -> tuple[int, dict]:
    res = run_qforensics("recover", path.name, "-o", str(tmp / "out.raw"), "--log", str(tmp / "log.json"),
                         "--quiet", *extra, cwd=path.parent)
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    return res.returncode, json.loads((tmp / "log.json").read_text())


def damaged_kind(corpus: Path, tmp: Path, kind_id: str) -> Path:
    kind = next(k for k in KINDS if k.id == kind_id)
    return make(kind, image_path(corpus, kind.base).parent, CASES[kind.base]["main"], tmp)


def zero_l1(path: Path) -> None:
    with open(path, "r+b") as f:
        head = f.read(48)
        l1_size, l1_offset = struct.unpack(">I", head[36:40])[0], struct.unpack(">Q", head[40:48])[0]
        f.seek(l1_offset)
        f.write(bytes(8 * l1_size))


def copy_case(corpus: Path, case: str, tmp: Path) -> Path:
    src = image_path(corpus, case)
    dst = tmp / src.name
    dst.write_bytes(src.read_bytes())
    return dst


def qemu_raw(path: Path, out: Path) -> bytes:
    res = qemu_img("convert", "-O", "raw", str(path), str(out))
    assert res.returncode == 0, res.stderr
    return out.read_bytes()


def guest_ranges_at(path: Path, host_cluster: int, cs: int) -> list[tuple[int, int]]:
    """The guest ranges that qemu-img map says read host cluster ``host_cluster``."""
    rows = json.loads(qemu_img("map", "--output=json", str(path)).stdout)
    out = []
    for r in rows:
        if "offset" not in r or not r["data"]:
            continue
        lo, hi = max(r["offset"], host_cluster * cs), min(r["offset"] + r["length"], (host_cluster + 1) * cs)
        if lo < hi:
            out.append((r["start"] + lo - r["offset"], hi - lo))
    return out


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s, n in sorted(ranges):
        if out and out[-1][0] + out[-1][1] == s:
            out[-1][1] += n
        else:
            out.append([s, n])
    return [tuple(r) for r in out]


def uncertain_ranges(log: dict) -> dict[str, list[tuple[int, int]]]:
    found: dict[str, list[tuple[int, int]]] = {}
    for r in log["ranges"]:
        if "uncertain" in r:
            found.setdefault(r["uncertain"], []).append((r["start"], r["length"]))
    return found


@pytest.mark.parametrize("kind_id,code", [("two_guests_one_host", "refcount.too_low"),
                                          ("l2_entry_into_l1", "overlap.structures"),
                                          ("l2_entry_into_refblock", "overlap.structures")])
def test_ranges_through_faulted_clusters_are_uncertain(corpus, tmp_path, kind_id, code):
    path = damaged_kind(corpus, tmp_path, kind_id)
    with open_image(path) as img:
        report = check_image(img)
        cs = img.header.cluster_size
    faulted = sorted({f.host_offset // cs for f in report.findings if f.code == code and f.host_offset is not None}
                     | (set(report.stats.shared) if code == "refcount.too_low" else set()))
    assert faulted, f"check names no {code} on {kind_id}"
    expected = sorted(r for c in faulted for r in guest_ranges_at(path, c, cs))
    assert expected, "qemu-img map reads no guest range through the faulted cluster"
    rc, log = recover(path, tmp_path)
    assert rc == 2 and log["complete"] is False
    got = uncertain_ranges(log)
    assert sorted(got) == [code] and merged(got[code]) == merged(expected)
    assert log["uncertain-by-code"] == {code: sum(n for _, n in expected)}
    assert log["uncertain-bytes"] + log["recovered-bytes"] + log["missing-bytes"] == log["virtual-size"]


def test_snapshots_sharing_a_cluster_at_one_guest_offset_are_not_a_fault(corpus, tmp_path):
    """A snapshot and the active view share clusters at the same guest offsets (copy-on-write): even where
    their refcount is too low, nothing is read at two guest positions, so nothing is uncertain."""
    path = copy_case(corpus, "snapshots", tmp_path)
    mask = (1 << 56) - 1 & ~0x1FF
    with open_image(path) as img:
        mine = img.l2_table(int(img.l1_table()[0]) & mask)[0] & mask
        snap = img.snapshots[0]
        theirs = img.l2_table(int(img.l1_table(snap.l1_table_offset, snap.l1_size)[0]) & mask)[0] & mask
        shared = int(next(m for m, t in zip(mine.tolist(), theirs.tolist(), strict=True) if m and m == t))
        refblock = int(img.refcount_table()[0])
        assert img.header.refcount_order == 4
    with open(path, "r+b") as f:  # refcount 1 for a cluster two views name
        f.seek(refblock + 2 * (shared >> 16))
        f.write(struct.pack(">H", 1))
    checked = json.loads(qemu_img("check", "--output=json", str(path)).stdout)
    assert checked["corruptions"] >= 1  # qemu: "ERROR cluster N refcount=1 reference=2"
    rc, log = recover(path, tmp_path)
    assert rc == 0 and log["uncertain-by-code"] == {}
    assert (tmp_path / "out.raw").read_bytes() == qemu_raw(image_path(corpus, "snapshots"), tmp_path / "q.raw")


def test_unplaced_tables_are_incomplete_and_carved_as_windows(corpus, tmp_path):
    intact = image_path(corpus, "cluster_4096")
    path = copy_case(corpus, "cluster_4096", tmp_path)
    with open_image(intact) as img:
        l1 = img.l1_table()
        span = img.header.l2_entries * img.header.cluster_size
        slots = {int(e) & ((1 << 56) - 1) & ~0x1FF: i for i, e in enumerate(l1.tolist()) if e}
    assert len(slots) == 2
    zero_l1(path)
    carve = tmp_path / "carved"
    rc, log = recover(path, tmp_path, "--scan", "--carve-dir", str(carve))
    assert rc == 2 and log["complete"] is False
    assert log["unplaced"]["tables"] == 2
    assert log["unknown-bytes"] == log["missing-bytes"] == log["virtual-size"]
    assert all("unknown" in r for r in log["ranges"])
    assert sorted(int(e["l2-table"], 16) for e in log["unplaced-evidence"] if "l2-table" in e) == sorted(slots)
    truth = qemu_raw(intact, tmp_path / "q.raw")
    index = json.loads((carve / "index.json").read_text())
    assert sorted(w["l2-host-offset"] for w in index["windows"]) == sorted(slots)
    for w in index["windows"]:
        window = (carve / w["file"]).read_bytes()
        slot = slots[w["l2-host-offset"]]
        assert len(window) == span and window == truth[slot * span:(slot + 1) * span]
        assert w["file"] == f"window_l2_0x{w['l2-host-offset']:x}.raw"


def test_active_l1_lost_takes_back_the_snapshot_tables_it_shared(corpus, tmp_path):
    """qemu-img snapshot -c shares every L2 table between the snapshot and the active view; with the active L1
    zeroed those tables' refcounts are above their references, and they are the active view's."""
    path = copy_case(corpus, "v3_default", tmp_path)
    assert qemu_img("snapshot", "-c", "kept", str(path)).returncode == 0
    truth = qemu_raw(path, tmp_path / "q.raw")
    zero_l1(path)
    rc, log = recover(path, tmp_path)
    assert rc == 0 and log["complete"] is True
    assert (tmp_path / "out.raw").read_bytes() == truth
    assert any(k.startswith("snapshot 1 (kept) L2 table at 0x") for k in log["bytes-by-source"])


def _zero_a_data_cluster(path: Path) -> tuple[int, int]:
    """Write zeros over the first data cluster qemu-img map names; its (guest offset, cluster size)."""
    rows = json.loads(qemu_img("map", "--output=json", str(path)).stdout)
    with open_image(path) as img:
        cs = img.header.cluster_size
    row = next(r for r in rows if r["data"] and "offset" in r and r["length"] >= cs)
    with open(path, "r+b") as f:
        f.seek(row["offset"])
        f.write(bytes(cs))
    return row["start"], cs


def test_written_zero_clusters_are_reported(corpus, tmp_path):
    path = copy_case(corpus, "v3_default", tmp_path)
    guest, cs = _zero_a_data_cluster(path)
    rc, log = recover(path, tmp_path)
    assert rc == 0  # no check faults the image: the cluster holds zeros, which the log says
    assert log["zero-clusters"] == 1 and log["zero-cluster-ranges"] == [{"start": guest, "length": cs}]


def test_written_zero_clusters_in_a_damaged_image_are_uncertain(corpus, tmp_path):
    path = damaged_kind(corpus, tmp_path, "refblock_self_refcount_zero")
    guest, cs = _zero_a_data_cluster(path)
    with open_image(path) as img:
        assert any(str(f.severity) == "corruption" for f in check_image(img).findings)
    rc, log = recover(path, tmp_path)
    assert rc == 2
    assert log["uncertain-by-code"].get("recover.zeroed_cluster") == cs
    assert {"start": guest, "length": cs} in log["zero-cluster-ranges"]


def test_loose_clusters_holding_self_locating_structures_are_placed_alone(tmp_path):
    """With the only L2 table wiped, no table names the data clusters; those that hold an MBR, a GPT backup
    header or the ext4 superblock (whose partition the GPT gives) go back to the guest offsets they state."""
    import shutil
    import subprocess

    if not (shutil.which("sgdisk") and shutil.which("mke2fs")):
        pytest.skip("sgdisk or mke2fs missing")
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(24 << 20)
    subprocess.run(["sgdisk", "-n", "1:2048:0", "-t", "1:8300", str(raw)], check=True, capture_output=True)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-E", "offset=1048576", str(raw), "20M"], check=True,
                   capture_output=True)
    path = tmp_path / "d.qcow2"
    assert qemu_img("convert", "-O", "qcow2", str(raw), str(path)).returncode == 0
    truth = raw.read_bytes()
    mapped = sum(r["length"] for r in json.loads(qemu_img("map", "--output=json", str(path)).stdout) if r["data"])
    with open_image(path) as img:
        l2 = int(img.l1_table()[0]) & ((1 << 56) - 1) & ~0x1FF
        cs = img.header.cluster_size
    with open(path, "r+b") as f:
        f.seek(l2)
        f.write(bytes(cs))
    rc, log = recover(path, tmp_path)
    assert rc == 2  # the other data clusters stay unplaced
    alone = {r["start"]: r["source"] for r in log["ranges"] if "placed alone" in r.get("source", "")}
    assert {0, 1 << 20, len(truth) - cs} <= set(alone)  # and the clusters of ext4's backup superblocks
    assert "protective MBR at guest 0x0" in alone[0] and "ext4 superblock (group 0)" in alone[1 << 20]
    assert "GPT backup header" in alone[len(truth) - cs]
    out = (tmp_path / "out.raw").read_bytes()
    for g in alone:
        assert out[g:g + cs] == truth[g:g + cs]
    # the clusters the table named: three placed alone, the rest listed as unplaced
    assert log["unplaced"]["clusters"] + len(alone) == mapped // cs


def test_backing_bytes_under_unplaced_tables_are_uncertain(tmp_path):
    """A top image whose L1 is lost over a backing file: QEMU would read the backing file where the top's
    tables are gone, but the unplaced tables may map those ranges, so the backing's bytes there are uncertain,
    never reported as recovered."""
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(base), "4M").returncode == 0
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "base.qcow2", "-F", "qcow2",
                    str(top)).returncode == 0
    import subprocess

    subprocess.run(["qemu-io", "-c", "write -P 0x11 0 4M", str(base)], check=True, capture_output=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x22 0 64K", "-c", "write -P 0x33 3M 64K", str(top)], check=True,
                   capture_output=True)
    zero_l1(top)
    rc, log = recover(top, tmp_path, "--allow-image-dir")
    assert rc == 2 and log["unplaced"]["tables"] == 2
    below = [r for r in log["ranges"] if r.get("source", "").startswith("backing 1")]
    assert below and all(r.get("uncertain") == "recover.unplaced_tables" for r in below)
    assert sum(r["length"] for r in below) == log["uncertain-by-code"]["recover.unplaced_tables"] == 4 << 20
