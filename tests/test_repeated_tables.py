"""Repeated tables: an L2 table named by several L1 entries, a snapshot L1 named by several snapshots.

qemu-img check walks an L2 table once per L1 entry naming it and a snapshot L1 once per snapshot entry;
qforensics reads each distinct table once and multiplies its references. The images here are made by
qemu-img and qemu-io, then a few bytes are edited so that tables repeat; ``check`` must give qemu's
counters and every line qemu prints, to the unit (tests/test_check_vs_qemu.assert_same_as_qemu).
"""

from __future__ import annotations

import json
import struct
import subprocess
import time
from pathlib import Path

import pytest
from conftest import image_path, qemu_img, run_qforensics
from test_check_vs_qemu import assert_same_as_qemu

from qforensics import open_image
from qforensics.checks import check_image
from qforensics.graph import build_graph
from qforensics.model import image as image_model
from qforensics.text import clip

COPIED = 1 << 63


def qemu_io(path: Path, *commands: str) -> None:
    args = ["qemu-io", "-f", "qcow2"]
    for c in commands:
        args += ["-c", c]
    subprocess.run([*args, str(path)], check=True, capture_output=True, timeout=60)


def create(path: Path, size: str, *options: str) -> Path:
    res = qemu_img("create", "-f", "qcow2", *(a for o in options for a in ("-o", o)), str(path), size)
    assert res.returncode == 0, res.stderr
    return path


def u32(data: bytes, offset: int) -> int:
    return struct.unpack_from(">I", data, offset)[0]


def u64(data: bytes, offset: int) -> int:
    return struct.unpack_from(">Q", data, offset)[0]


def poke(path: Path, offset: int, fmt: str, *values: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def snapshot_entries(data: bytes) -> list[tuple[int, int]]:
    """(entry offset, L1 offset) of each snapshot table entry (spec "Snapshot table entry")."""
    out, pos = [], u64(data, 64)
    for _ in range(u32(data, 60)):
        id_len, name_len = struct.unpack_from(">HH", data, pos + 12)
        extra = u32(data, pos + 36)
        out.append((pos, u64(data, pos)))
        pos += 40 + extra + id_len + name_len
        pos += -pos % 8
    return out


def l1_repeating_one_table(folder: Path, refcount_bits: int = 16) -> Path:
    """8 GiB at 4 KiB clusters (an L1 of 4096 entries): 64 clusters of data under L1 entry 0, then every
    L1 entry pointed at entry 0's L2 table, and three of its entries given a reserved bit."""
    path = create(folder / "repeat.qcow2", "8G", "cluster_size=4096", f"refcount_bits={refcount_bits}")
    qemu_io(path, "write -P 0x5a 0 128k", "write -P 0x33 512k 128k")
    data = path.read_bytes()
    l1, entries = u64(data, 40), u32(data, 36)
    first = u64(data, l1)
    l2 = first & 0x00FFFFFFFFFFFE00
    poke(path, l1, f">{entries}Q", *[first] * entries)
    for i in (1, 2, 130):  # 3 entries x 4096 references: past the listing cap of 10000 per code
        poke(path, l2 + 8 * i, ">Q", u64(data, l2 + 8 * i) | 1 << 56)
    return path


def test_l2_table_named_by_every_l1_entry(tmp_path):
    path = l1_repeating_one_table(tmp_path)
    report = assert_same_as_qemu(path)
    codes = {f["code"] for f in report["findings"]}
    assert {"l2.reserved_bits", "l2.reserved_bits.more", "refcount.too_low"} <= codes
    more = next(f for f in report["findings"] if f["code"] == "l2.reserved_bits.more")
    assert more["repeat"] == 3 * 4096 - 10_000
    # 64 data clusters, each counted once per L1 entry, as qemu counts them
    assert report["allocated-clusters"] == 64 * 4096


def test_overflowing_references_are_counted(tmp_path):
    """refcount_bits=1: every reference past the first to a data cluster is an overflow error in qemu."""
    path = l1_repeating_one_table(tmp_path, refcount_bits=1)
    report = assert_same_as_qemu(path)
    assert "refcount.overflow.more" in {f["code"] for f in report["findings"]}


def test_graph_has_one_edge_per_distinct_table(tmp_path):
    path = l1_repeating_one_table(tmp_path)
    with open_image(path) as img:
        g, _ = build_graph(img)
    edges = [d for _, _, d in g.edges(data=True) if d["kind"] == "L1 entry"]
    assert [(e["index"], e["count"]) for e in edges] == [(0, 4096)]
    assert sum(1 for _, d in g.nodes(data=True) if d["kind"] == "l2_table") == 1


def snapshots_sharing_l1(folder: Path) -> Path:
    """Three snapshots taken with no write between (their L1 copies are identical), a write, then
    snapshots 2 and 3 edited to name snapshot 1's L1 copy (theirs are left leaked)."""
    path = create(folder / "snaps.qcow2", "1G")
    qemu_io(path, "write -P 0x11 0 256k", "write -P 0x22 600M 64k")
    for name in ("s1", "s2", "s3"):
        assert qemu_img("snapshot", "-c", name, str(path)).returncode == 0
    qemu_io(path, "write -P 0x44 64k 64k")
    data = path.read_bytes()
    (_, l1_first), (e2, l1_second), (e3, _) = snapshot_entries(data)
    # the same L2 tables (only OFLAG_COPIED differs: it was still set when snapshot 1's copy was made)
    assert l1_first != l1_second
    assert [u64(data, l1_first + 8 * i) & ~COPIED for i in range(2)] == \
        [u64(data, l1_second + 8 * i) & ~COPIED for i in range(2)]
    poke(path, e2, ">Q", l1_first)
    poke(path, e3, ">Q", l1_first)
    return path


def test_snapshots_naming_one_l1(tmp_path):
    path = snapshots_sharing_l1(tmp_path)
    report = assert_same_as_qemu(path)
    codes = {f["code"] for f in report["findings"]}
    assert {"refcount.too_low", "refcount.leak"} <= codes  # snapshot 1's L1 named thrice, 2's and 3's leaked
    with open_image(path) as img:
        groups = img.l1_groups()
    assert [g.owners for g in groups] == [["active"], ["snapshot 1", "snapshot 2", "snapshot 3"]]


def test_identical_snapshot_l1_copies(tmp_path):
    """Untouched: three identical L1 copies at three offsets share their L2 tables with the active L1."""
    path = create(tmp_path / "same.qcow2", "1G")
    qemu_io(path, "write -P 0x11 0 256k")
    for name in ("a", "b", "c"):
        assert qemu_img("snapshot", "-c", name, str(path)).returncode == 0
    report = assert_same_as_qemu(path)
    assert report["corruptions"] == report["leaks"] == 0


def test_snapshot_walk_past_the_budget_is_said(tmp_path, monkeypatch):
    """A budget too small for snapshot 1's L1: check names it instead of skipping it silently."""
    path = snapshots_sharing_l1(tmp_path)
    monkeypatch.setattr(image_model, "MAX_L1_WALK", 2)  # the active L1 (2 entries) spends it all
    with open_image(path) as img:
        findings = check_image(img).findings
    cut = [f for f in findings if f.code == "check.not_walked"]
    assert len(cut) == 1 and "snapshot 1, snapshot 2, snapshot 3" in cut[0].message
    assert cut[0].qemu_counts is None


def test_long_snapshot_ids_are_clipped(tmp_path):
    """A 4 KiB snapshot id is shown once (info) and clipped in the labels of what the snapshot owns."""
    path = create(tmp_path / "long.qcow2", "64M")
    qemu_io(path, "write -P 0x11 0 64k")
    long_id = "i" * 4000
    assert qemu_img("snapshot", "-c", "n" * 3000, str(path)).returncode == 0
    data = path.read_bytes()
    (entry, _), = snapshot_entries(data)
    # rewrite the one entry with a longer id: the table is the last thing qemu wrote, so it may grow
    name_len = struct.unpack_from(">H", data, entry + 14)[0]
    extra = u32(data, entry + 36)
    head = bytearray(data[entry:entry + 40 + extra])
    struct.pack_into(">H", head, 12, len(long_id))
    body = bytes(head) + long_id.encode() + b"n" * name_len
    body += bytes(-len(body) % 8)
    with open(path, "r+b") as f:
        f.seek(entry)
        f.write(body)
    poke(path, 60, ">I", 1)
    with open_image(path) as img:
        s = img.snapshots[0]
        assert s.id == long_id
        graph, _ = build_graph(img)
        findings = check_image(img).findings
    labels = [d["label"] for _, d in graph.nodes(data=True)] + [d["owner"] for _, d in graph.nodes(data=True)]
    assert f"snapshot {clip(long_id)} L1 table" in labels
    assert not any(long_id in text for text in labels)
    assert not any(long_id in f.message or long_id in f.structure for f in findings)
    info = json.loads(run_qforensics("info", "--output", "json", path.name, cwd=tmp_path).stdout)
    assert long_id in json.dumps(info)


@pytest.mark.parametrize("value, shown", [("abc", "abc"), ("x" * 64, "x" * 64),
                                          ("é" * 65, "'" + "é" * 64 + "…' (130 bytes)")])
def test_clip(value, shown):
    assert clip(value) == shown


def big_cluster_l1(corpus: Path, folder: Path, entries: int) -> Path:
    """cluster_2097152 (2 MiB clusters, L2 tables of 262144 entries) with an L1 of ``entries`` entries, each
    naming the image's one L2 table, written past the end of the file."""
    src = image_path(corpus, "cluster_2097152")
    data = bytearray(src.read_bytes())
    cs = 1 << 21
    first = u64(data, u64(data, 40))
    l1 = len(data)
    data += struct.pack(f">{entries}Q", *[first] * entries)
    data += bytes(-len(data) % cs)
    struct.pack_into(">Q", data, 24, entries * (cs // 8) * cs)
    struct.pack_into(">IQ", data, 36, entries, l1)
    path = folder / "big.qcow2"
    path.write_bytes(bytes(data))
    return path


def test_big_clusters_named_by_a_few_l1_entries(corpus, tmp_path):
    assert_same_as_qemu(big_cluster_l1(corpus, tmp_path, 4))


def test_big_clusters_named_by_many_l1_entries(corpus, tmp_path):
    """65536 L1 entries naming one 2 MiB L2 table were 128 GiB of L2 reads (over 30 s). qemu would take as
    long; the counters are qemu's arithmetic: 7 data clusters per walk, and 16-bit refcounts refuse the
    65536th reference to the L2 table and to each data cluster."""
    path = big_cluster_l1(corpus, tmp_path, 1 << 16)
    start = time.monotonic()
    ours = run_qforensics("check", "--output", "json", path.name, cwd=tmp_path)
    assert time.monotonic() - start < 10
    report = json.loads(ours.stdout)
    assert report["allocated-clusters"] == 7 << 16
    too_low = [f for f in report["findings"] if f["code"] == "refcount.too_low"]
    # the L2 table and its 7 data clusters saturate (the new L1 itself has no refcount: refcount=0 reference=1)
    assert sum(f["qemu_check"].endswith("refcount=1 reference=65535") for f in too_low) == 8
    assert sum(f["code"] == "refcount.overflow" for f in report["findings"]) == 8


def test_long_bitmap_names_are_clipped_in_messages(tmp_path):
    """A 1000-byte bitmap name (qemu's limit is 1023): clipped in our message, whole in qemu's."""
    path = create(tmp_path / "bm.qcow2", "64M")
    name = "b" * 1000
    assert subprocess.run(["qemu-img", "bitmap", "--add", str(path), name], capture_output=True).returncode == 0
    with open_image(path) as img:
        (b,) = img.bitmaps
        table_offset = b.table_offset
    with open(path, "r+b") as f:  # a reserved bit in the bitmap table's first entry
        f.seek(table_offset)
        f.write(struct.pack(">Q", 1 << 2))
    qemu = subprocess.run(["qemu-img", "info", str(path)], capture_output=True, text=True)
    with open_image(path) as img:
        assert img.bitmaps  # read, with its findings
        (finding,) = [f for f in img.findings if f.code == "bitmap.table_invalid"]
    assert clip(name) in finding.message and name not in finding.message
    assert finding.qemu_message in qemu.stderr and name in finding.qemu_message
