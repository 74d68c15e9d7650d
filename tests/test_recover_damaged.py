"""recover on damaged images: made from valid qemu images by destroying one structure, each compared
with what the intact image gives (qemu-img convert of the original) and with what qemu-img convert
recovers from the damaged file.

The share is over the reference's non-zero 4 KiB blocks: how many the output reproduces exactly.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import image_path, qemu_img, run_qforensics

BLOCK = 4096


def share(reference: Path, output: Path) -> float:
    """Share of the reference's non-zero blocks the output reproduces (0 when there is no output)."""
    ref = np.fromfile(reference, dtype=np.uint8).reshape(-1, BLOCK)
    if not output.exists() or output.stat().st_size != reference.stat().st_size:
        return 0.0
    out = np.fromfile(output, dtype=np.uint8).reshape(-1, BLOCK)
    nonzero = ref.any(axis=1)
    return float(((ref == out).all(axis=1) & nonzero).sum() / nonzero.sum())


def header(path: Path) -> dict:
    raw = path.read_bytes()[:112]
    cluster_bits, = struct.unpack(">I", raw[20:24])
    l1_size, l1_offset, reft_offset = struct.unpack(">IQQ", raw[36:56])
    return {"cs": 1 << cluster_bits, "l1_size": l1_size, "l1": l1_offset, "reft": reft_offset}


def poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def damage(kind: str, path: Path) -> None:
    h = header(path)
    if kind == "l1_zeroed":
        poke(path, h["l1"], bytes(8 * h["l1_size"]))
    elif kind == "l2_zeroed":
        l2 = struct.unpack(">Q", path.read_bytes()[h["l1"]:h["l1"] + 8])[0] & 0x00FFFFFFFFFFFE00
        poke(path, l2, bytes(h["cs"]))
    elif kind == "refcount_table_zeroed":
        poke(path, h["reft"], bytes(h["cs"]))
    elif kind == "header_damaged":  # magic and version kept; l1_size and l1_table_offset gone
        poke(path, 36, bytes(12))
    elif kind == "cluster_bits_destroyed":
        poke(path, 20, bytes(4))
    elif kind == "truncated":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:
        raise AssertionError(kind)


def qemu_convert(path: Path, out: Path) -> bool:
    return qemu_img("convert", "-O", "raw", str(path), str(out)).returncode == 0


# (kind, corpus case, least share we must recover, exact share qemu-img convert recovers or None)
CASES = [
    ("l1_zeroed", "v3_default", 1.0, 0.0),
    ("l1_zeroed", "backing_chain_raw_base", None, None),  # a layer of a chain: checked below
    ("l2_zeroed", "snapshots", 0.5, 0.0),
    ("refcount_table_zeroed", "v3_default", 1.0, 1.0),
    ("header_damaged", "v3_default", 1.0, 0.0),
    ("cluster_bits_destroyed", "v3_default", 1.0, 0.0),
    ("truncated", "backing_chain", None, None),  # the base layer: checked against qemu map below
]


@pytest.fixture
def damaged(corpus, tmp_path):
    def make(kind: str, case: str, name: str | None = None) -> tuple[Path, Path]:
        src = image_path(corpus, case, name)
        ref = tmp_path / "reference.raw"
        assert qemu_convert(src, ref)
        path = tmp_path / src.name
        path.write_bytes(src.read_bytes())
        damage(kind, path)
        return path, ref
    return make


def recover(path: Path, tmp_path: Path, *extra: str) -> tuple[int, Path, dict, str]:
    out, log = tmp_path / "ours.raw", tmp_path / "log.json"
    res = run_qforensics("recover", str(path), "-o", str(out), "--log", str(log), *extra, cwd=tmp_path)
    assert "Traceback" not in res.stderr
    return res.returncode, out, json.loads(log.read_text()), res.stderr


@pytest.mark.parametrize("kind,case,least,qemu_share", [c for c in CASES if c[2] is not None])
def test_damaged_image(damaged, tmp_path, kind, case, least, qemu_share):
    path, ref = damaged(kind, case)
    code, out, log, _ = recover(path, tmp_path)
    ours = share(ref, out)
    theirs = share(ref, tmp_path / "qemu.raw") if qemu_convert(path, tmp_path / "qemu.raw") else 0.0
    assert ours >= least
    assert theirs == qemu_share
    assert code == (0 if log["complete"] else 2)
    assert sum(r["length"] for r in log["ranges"]) == log["virtual-size"]
    assert log["recovered-bytes"] + log["missing-bytes"] == log["virtual-size"]


def test_l1_zeroed_is_rebuilt_from_the_orphan_l2(damaged, tmp_path):
    path, ref = damaged("l1_zeroed", "v3_default")
    code, out, log, err = recover(path, tmp_path)
    assert code == 0 and log["complete"]
    assert out.read_bytes() == ref.read_bytes()
    sources = {r["source"] for r in log["ranges"] if "source" in r}
    assert any(s.startswith("carved L2 at 0x") and "the only L1 entry left" in s for s in sources)
    assert "scan:" in err


def test_header_damaged_uses_the_stale_l1_copy(damaged, tmp_path):
    path, ref = damaged("header_damaged", "v3_default")
    code, out, log, _ = recover(path, tmp_path)
    assert code == 0 and out.read_bytes() == ref.read_bytes()
    assert any("stale L1 copy at 0x" in r.get("source", "") for r in log["ranges"])


@pytest.mark.parametrize("case", ["extended_l2", "extended_l2_backing"])
@pytest.mark.parametrize("kind,evidence", [("l1_zeroed", "the only L1 entry left to fill"),
                                           ("header_damaged", "stale L1 copy at 0x")])
def test_extended_l2_tables_are_found_and_placed(damaged, tmp_path, corpus, case, kind, evidence):
    """Extended L2 tables (16-byte entries: descriptor and subcluster bitmap) are found as L2 tables (and
    carved as l2-like), the lost L1 as a stale L1 copy; subclusters left unallocated still read through
    to the backing file."""
    src = image_path(corpus, case)
    path, ref = damaged(kind, case)
    for other in src.parent.iterdir():
        if other.name != path.name and other.suffix != ".json":
            (tmp_path / other.name).write_bytes(other.read_bytes())
    theirs = share(ref, tmp_path / "qemu.raw") if qemu_convert(path, tmp_path / "qemu.raw") else 0.0
    carved = tmp_path / "carved"
    code, out, log, err = recover(path, tmp_path, "--allow-image-dir", "--carve-dir", str(carved))
    assert code == 0 and log["complete"], err
    assert out.read_bytes() == ref.read_bytes()
    placed = {int(r["source"].split()[3], 16) for r in log["ranges"] if r.get("source", "").startswith("carved L2")}
    index = json.loads((carved / "index.json").read_text())
    assert placed and placed <= {c["host-offset"] for c in index["carved"] if c["looks-like"] == "l2-like"}
    # qemu: nothing of the image alone; through the backing file, the base's older bytes where the top's are lost
    assert theirs == 0.0 if case == "extended_l2" else theirs < 1.0
    assert any(s.startswith("carved L2 at 0x") and evidence in s for s in (r.get("source", "") for r in log["ranges"]))


@pytest.mark.parametrize("case", ["cluster_512", "cluster_4096", "cluster_2097152", "refcount_bits_1",
                                  "refcount_bits_64", "extended_l2", "v2_snapshot", "compressed_zstd"])
@pytest.mark.parametrize("value", [0, 8, 22, 0xFFFFFFFF])
def test_destroyed_cluster_bits_is_inferred(damaged, tmp_path, case, value):
    """cluster_bits outside 9..21 (qemu refuses the image): the size the refcounts and offsets agree on."""
    path, ref = damaged("cluster_bits_destroyed", case)
    poke(path, 20, struct.pack(">I", value))
    assert not qemu_convert(path, tmp_path / "qemu.raw")
    code, out, log, err = recover(path, tmp_path)
    assert code == 0 and out.read_bytes() == ref.read_bytes()
    assert f"cluster_bits is {value}, which no qcow2 image can have;" in err
    assert any("inferred" in n for n in log["notes"])


def test_destroyed_cluster_bits_without_refcounts_is_read_from_the_l1s_tables(damaged, tmp_path):
    """With the refcount table gone too, the L1's tables still say which size is right (issue 16.4): the
    largest cluster size at which they stay L2-shaped, aligned, and map the most data; the note names the
    readings it was weighed against, and the bytes are the image's."""
    path, ref = damaged("refcount_table_zeroed", "v3_default")
    poke(path, 20, bytes(4))
    out = tmp_path / "o.raw"
    res = run_qforensics("recover", str(path), "-o", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "cluster_bits is 0" in res.stderr and "inferred" in res.stderr and "L1" in res.stderr
    assert out.read_bytes() == ref.read_bytes()


def test_l2_zeroed_falls_back_to_the_newest_snapshot_and_logs_the_rest(damaged, tmp_path, corpus):
    path, ref = damaged("l2_zeroed", "snapshots")
    code, out, log, _ = recover(path, tmp_path)
    assert code == 2 and not log["complete"]
    sources = {r.get("source") for r in log["ranges"]}
    assert "snapshot 2 (snapB)" in sources
    missing = [r for r in log["ranges"] if "missing" in r]
    assert missing and all("is all zeros while" in r["missing"] for r in missing)
    # what came from the snapshot is the snapshot's data, byte for byte
    snap = tmp_path / "snapB.raw"
    assert qemu_img("convert", "-l", "snapshot.name=snapB", "-O", "raw", str(image_path(corpus, "snapshots")),
                    str(snap)).returncode == 0
    ours, theirs = out.read_bytes(), snap.read_bytes()
    for r in log["ranges"]:
        if r.get("source") == "snapshot 2 (snapB)":
            assert ours[r["start"]:r["start"] + r["length"]] == theirs[r["start"]:r["start"] + r["length"]]


def test_l2_zeroed_leaked_data_is_carved(damaged, tmp_path):
    path, _ = damaged("l2_zeroed", "snapshots")
    carved = tmp_path / "carved"
    code, _, _, err = recover(path, tmp_path, "--carve-dir", str(carved))
    index = json.loads((carved / "index.json").read_text())
    assert index["files"] >= 1 and "carve:" in err
    for entry in index["carved"]:
        data = (carved / entry["file"]).read_bytes()
        assert len(data) == entry["length"] and data.strip(b"\0")
        assert data == path.read_bytes()[entry["host-offset"]:entry["host-offset"] + entry["length"]]
        assert entry["looks-like"] in ("data", "l2-like", "refcount-block-like", "compressed-stream")


def test_truncated_file_gives_everything_before_the_cut(damaged, tmp_path, corpus):
    """Every guest block whose host cluster lies before the cut (qemu-img map of the intact file says where)
    is recovered; the rest is logged missing with the reason."""
    src = image_path(corpus, "backing_chain", "base.qcow2")
    path, ref = damaged("truncated", "backing_chain", "base.qcow2")
    cut = path.stat().st_size
    entries = json.loads(qemu_img("map", "--output=json", str(src)).stdout)
    before = after = 0
    for e in entries:
        if e.get("offset") is None or not e["data"]:
            continue
        for g in range(e["start"], e["start"] + e["length"], BLOCK):
            if e["offset"] + (g - e["start"]) + BLOCK <= cut:
                before += 1
            else:
                after += 1
    assert before and after
    code, out, log, _ = recover(path, tmp_path)
    assert code == 2
    nonzero = (np.fromfile(ref, dtype=np.uint8).reshape(-1, BLOCK).any(axis=1)).sum()
    assert share(ref, out) == pytest.approx(before / nonzero)
    assert log["missing-bytes"] == after * BLOCK
    assert all("past the end of the file" in r["missing"] for r in log["ranges"] if "missing" in r)


def test_l1_zeroed_in_a_chain_layer_keeps_the_chain(damaged, tmp_path, corpus):
    """The top of a chain loses its L1: its own L2 is placed again, the backing layers still show through."""
    src = image_path(corpus, "backing_chain_raw_base")
    path, ref = damaged("l1_zeroed", "backing_chain_raw_base")
    for other in src.parent.iterdir():
        if other.name != path.name:
            (tmp_path / other.name).write_bytes(other.read_bytes())
    code, out, log, _ = recover(path, tmp_path, "--allow-image-dir")
    assert code == 0 and out.read_bytes() == ref.read_bytes()
    sources = {r.get("source", "") for r in log["ranges"]}
    assert any(s.startswith("carved L2") for s in sources) and any(s.startswith("backing") for s in sources)


@pytest.mark.parametrize("case,evidence", [
    ("draft_dedup", "dedup table: cluster 0x"),           # the draft dedup table's logical offsets
    ("combo_zstd_snapshots", "agrees with snapshot 2"),   # a snapshot L2 the orphan mostly agrees with
    ("snapshots", "the only L1 entry left to fill"),
])
def test_orphan_l2_placement_evidence(damaged, tmp_path, case, evidence):
    path, ref = damaged("l1_zeroed", case)
    code, out, log, _ = recover(path, tmp_path)
    assert code == 0 and out.read_bytes() == ref.read_bytes()
    assert any(evidence in r.get("source", "") for r in log["ranges"])


def test_json_summary_agrees_with_the_log(damaged, tmp_path):
    """`recover --output json` prints the log's summary, and its missing ranges cover what the log says is
    missing, byte for byte."""
    path, ref = damaged("l2_zeroed", "snapshots")
    out, log_path = tmp_path / "ours.raw", tmp_path / "log.json"
    res = run_qforensics("recover", str(path), "-o", str(out), "--log", str(log_path), "--output", "json",
                         cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    doc, log = json.loads(res.stdout), json.loads(log_path.read_text())
    for key in ("virtual-size", "complete", "recovered-bytes", "missing-bytes", "bytes-by-source", "missing-ranges"):
        assert doc[key] == log[key], key
    assert doc["complete"] is False and doc["output"] == str(out) and doc["log"] == str(log_path)
    assert doc["missing-ranges"] == len(doc["missing"]) > 0
    assert sum(r["length"] for r in doc["missing"]) == doc["missing-bytes"]

    def covered(ranges):
        marks = np.zeros(doc["virtual-size"] // 512, dtype=bool)
        for r in ranges:
            marks[r["start"] // 512:(r["start"] + r["length"]) // 512] = True
        return marks

    assert (covered(doc["missing"]) == covered([r for r in log["ranges"] if "missing" in r])).all()
    assert {r["reason"] for r in doc["missing"]} == {r["missing"] for r in log["ranges"] if "missing" in r}
    assert doc["recovered-bytes"] + doc["missing-bytes"] == ref.stat().st_size
