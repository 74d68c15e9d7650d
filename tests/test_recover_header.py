"""Header fields QEMU refuses and headers lost (issue 16, points 4 and 5), on real images: a raw disk with a GPT
(sgdisk) and an ext4 holding files (mke2fs -d), converted by qemu-img at 64 KiB and 4 KiB clusters, and
images written by qemu-io; damaged copies of them are read through recovery/geometry.py ``infer_header`` and
recovery/headerless.py ``synthesize`` and compared with `qemu-img convert -O raw` of the undamaged image.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import run_qforensics

from qforensics.errors import ImageOpenError
from qforensics.evidence.file import FileLayer
from qforensics.layers.qcow2 import Qcow2Layer
from qforensics.layers.stack import read_guest
from qforensics.model import Image
from qforensics.model.image import HEADER_PROBE
from qforensics.recovery.geometry import infer_header
from qforensics.recovery.headerless import synthesize

MiB = 1 << 20
GUEST = 64 * MiB
TOOLS = ("qemu-img", "qemu-io", "sgdisk", "mke2fs")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS), reason="needs " + ", ".join(TOOLS))


def run(*args) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True, timeout=120)


def to_raw(image: Path, out: Path) -> bytes:
    run("qemu-img", "convert", "-O", "raw", image, out)
    return out.read_bytes()


def gpt_ext4_disk(work: Path) -> Path:
    """64 MiB: a GPT, one ext4 partition from 1 MiB to 1 MiB before the end holding ~12 MiB of files."""
    src = work / "src"
    src.mkdir()
    rnd = random.Random("recover-header")
    left, i = 12 * MiB, 0
    while left > 0:
        n = min(left, rnd.randint(20_000, 3 * MiB))
        (src / f"f{i:03d}.bin").write_bytes(rnd.randbytes(n))
        left, i = left - n, i + 1
    disk = work / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(GUEST)
    first, last = 2048, GUEST // 512 - 2048 - 1
    run("sgdisk", "-o", "-U", "6a1f7c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b", f"-n1:{first}:{last}", "-t1:8300", disk)
    run("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-U", "0f9e8d7c-6b5a-4938-a7b6-c5d4e3f2a1b0",
        "-E", f"offset={first * 512},nodiscard", "-d", src, disk, f"{(last - first + 1) // 2}k")
    return disk


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict:
    """{cluster size: (qcow2, its guest as qemu-img convert writes it)}, and "ext": an extended-L2 image."""
    work = tmp_path_factory.mktemp("recover_header")
    disk = gpt_ext4_disk(work)
    out: dict = {}
    for cs in (65536, 4096):
        image = work / f"c{cs}.qcow2"
        run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", f"cluster_size={cs}", disk, image)
        out[cs] = (image, to_raw(image, work / f"c{cs}.raw"))
    ext = work / "ext.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536,extended_l2=on", ext, "48M")
    run("qemu-io", "-c", "write -P 0x5a 0 3M", "-c", "write -P 0xc3 8M 40k", "-c", "write -P 0x17 20M 1M",
        "-c", "write -P 0x99 47M 4k", ext)
    out["ext"] = (ext, to_raw(ext, work / "ext.raw"))
    small = work / "small.qcow2"  # one L2 table: the L1 is large enough under either entry width
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", small, "1M")
    run("qemu-io", "-c", "write -P 0xa5 0 64k", "-c", "write -P 0x3c 512k 12k", "-c", "write -P 0x11 1016k 8k", small)
    out["small"] = (small, to_raw(small, work / "small.raw"))
    return out


def damaged(tmp_path: Path, src: Path, pokes: list[tuple[int, bytes]]) -> Path:
    dst = tmp_path / ("damaged-" + src.name)
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        for offset, data in pokes:
            f.seek(offset)
            f.write(data)
    return dst


def fields(path: Path) -> dict:
    raw = path.read_bytes()[:112]
    return {"cluster_bits": struct.unpack(">I", raw[20:24])[0], "l1_size": struct.unpack(">I", raw[36:40])[0],
            "l1_table_offset": struct.unpack(">Q", raw[40:48])[0],
            "refcount_table_offset": struct.unpack(">Q", raw[48:56])[0],
            "incompatible_features": struct.unpack(">Q", raw[72:80])[0]}


def with_incompatible(path: Path, bit: int) -> list[tuple[int, bytes]]:
    return [(72, struct.pack(">Q", fields(path)["incompatible_features"] | 1 << bit))]


def infer(path: Path):
    with FileLayer(path) as f:
        return infer_header(f, f.read(0, HEADER_PROBE))


def guest(img: Image) -> bytes:
    layer = Qcow2Layer(img)
    return read_guest(layer, 0, layer.size)


def qemu_refuses(path: Path) -> bool:
    return subprocess.run(["qemu-img", "info", str(path)], capture_output=True, timeout=60, check=False).returncode != 0


# -- point 4: header fields QEMU refuses ------------------------------------------------------------------

def test_intact_headers_need_no_repair(images):
    for key in (65536, 4096, "ext", "small"):
        assert infer(images[key][0]) is None


@pytest.mark.parametrize("key", [4096, "small"])
def test_extended_l2_bit_with_small_clusters(images, tmp_path, key):
    """(a) extended_l2 set on a standard 4 KiB-cluster image: the standard reading is the one the L1's tables
    agree with (on the 64 MiB disk the extended one also breaks the L1 size rule; on the 1 MiB image it does
    not, and the tables decide)."""
    src, reference = images[key]
    path = damaged(tmp_path, src, with_incompatible(src, 4))
    assert qemu_refuses(path)
    overrides, notes = infer(path)
    assert overrides == {"extended_l2": False, "incompatible_features": fields(src)["incompatible_features"]}
    assert len(notes) == 1 and "read with standard L2 entries" in notes[0] and "4096-byte clusters" in notes[0]
    with Image(path, overrides=overrides) as img:
        assert not img.header.extended_l2 and img.header_source == "repaired"
        assert not [f for f in img.open_refusals if f.code == "header.subcluster_size_unsupported"]
        assert guest(img) == reference
    with Image(path) as img:  # without the overrides the model still says what qemu says
        assert "header.subcluster_size_unsupported" in [f.code for f in img.open_refusals]


@pytest.mark.parametrize("key", [65536, 4096, "ext"])
def test_unknown_incompatible_bit(images, tmp_path, key):
    """(b) incompatible bit 10: noted, and the image read as if it were clear (the tables are consistent)."""
    src, reference = images[key]
    path = damaged(tmp_path, src, with_incompatible(src, 10))
    assert qemu_refuses(path)
    overrides, notes = infer(path)
    assert overrides == {"incompatible_features": fields(src)["incompatible_features"]}
    assert "unknown incompatible feature bits 0x400" in notes[0] and "read as if they were clear" in notes[0]
    with Image(path, overrides=overrides) as img:
        assert not img.open_refusals
        assert guest(img) == reference


@pytest.mark.parametrize("key", [65536, 4096, "ext"])
@pytest.mark.parametrize("refcounts", ["kept", "zeroed"])
def test_cluster_bits_31(images, tmp_path, key, refcounts):
    """(c) cluster_bits 31: the refcounts give the size; with the refcount table zeroed too, the L1's
    tables do (every other size breaks a header rule or maps less)."""
    src, reference = images[key]
    h = fields(src)
    pokes = [(20, struct.pack(">I", 31))]
    if refcounts == "zeroed":
        pokes.append((h["refcount_table_offset"], bytes(1 << h["cluster_bits"])))
    path = damaged(tmp_path, src, pokes)
    assert qemu_refuses(path)
    overrides, notes = infer(path)
    assert overrides == {"cluster_bits": h["cluster_bits"]}
    assert notes[0].startswith(f"qcow2 header: cluster_bits is 31, which no qcow2 image can have; {h['cluster_bits']}")
    with Image(path, overrides=overrides) as img:
        assert guest(img) == reference
    with Image(path, cluster_bits=h["cluster_bits"]) as img:  # the older keyword still works
        assert img.header.cluster_bits == h["cluster_bits"] and img.overrides == overrides


def test_inconsistent_tables_are_not_read_on(images, tmp_path):
    """An unknown bit on an image whose L1 names tables that are not L2-shaped: with one table of ten
    destroyed the reading still holds (the check faults that table); with half of them none is offered."""
    src, _ = images[4096]
    h = fields(src)
    raw = src.read_bytes()
    l1 = struct.unpack(f">{h['l1_size']}Q", raw[h["l1_table_offset"]:h["l1_table_offset"] + 8 * h["l1_size"]])
    tables = [e & ((1 << 56) - 512) for e in l1 if e]
    noise = random.Random(3).randbytes(4096)
    path = damaged(tmp_path, src, with_incompatible(src, 10) + [(tables[0], noise)])
    _, notes = infer(path)
    assert f"{len(tables) - 1} of the {len(tables)} non-empty L2 tables" in notes[0]
    path = damaged(tmp_path, src, with_incompatible(src, 10) + [(t, noise) for t in tables[::2]])
    assert infer(path) is None


def test_overrides_are_checked():
    sample = Path(__file__).parent / "corpus" / "images" / "sample" / "sample.qcow2"
    with pytest.raises(ValueError):
        Image(sample, overrides={"magic_number": 1})
    with pytest.raises(ValueError):
        Image(sample, overrides={"cluster_bits": 1 << 32})


# -- point 5: the header lost ---------------------------------------------------------------------------

def mapped_ranges_match(img: Image, reference: bytes) -> int:
    """Bytes of data the view maps (normal clusters), asserting each run reads as the reference."""
    layer = Qcow2Layer(img)
    total = 0
    for batch in layer.runs(0, layer.size):
        for ext in batch.rows():
            if ext.kind.name == "NORMAL":
                assert read_guest(layer, ext.start, ext.length) == reference[ext.start:ext.end]
                total += ext.length
    return total


@pytest.mark.parametrize("fill", ["zeros", "random"])
def test_first_cluster_lost_64k(images, tmp_path, fill):
    """(d) the first 64 KiB (the header cluster) zeroed or random: everything else survives, so the
    synthesized header is the lost one's geometry and the guest reads as the undamaged image."""
    src, reference = images[65536]
    h = fields(src)
    head = bytes(64 << 10) if fill == "zeros" else random.Random(fill).randbytes(64 << 10)
    path = damaged(tmp_path, src, [(0, head)])
    with pytest.raises(ImageOpenError):
        Image(path)  # info and check refuse it, as QEMU does
    with FileLayer(path) as f:
        s = synthesize(f)
    assert s is not None and s.cluster_bits == 16 and not s.extended_l2
    assert (s.l1_table_offset, s.l1_size) == (h["l1_table_offset"], h["l1_size"])
    assert s.refcount_table_offset == h["refcount_table_offset"] and s.refcount_table_clusters == 1
    assert s.size == GUEST  # the GPT primary header at guest 512 states it, within what the L1 maps
    assert any("GPT primary header" in n for n in s.notes)
    with Image(path, header_bytes=s.header_bytes()) as img:
        assert img.header_source == "synthetic" and not img.open_refusals
        assert mapped_ranges_match(img, reference) >= 12 * MiB
        assert guest(img) == reference
    assert path.read_bytes()[:64 << 10] == head  # never written


def test_first_64k_lost_4k(images, tmp_path):
    """(d) at 4 KiB clusters the first 64 KiB hold the header, refcount table, refcount block, L1 and the
    first L2 table: the cluster size is still found, no L1 is claimed, and the size comes from the GPT
    backup header at the disk's end (in the data the last L2 table names)."""
    src, _ = images[4096]
    h = fields(src)
    assert h["l1_table_offset"] < 64 << 10 and h["refcount_table_offset"] < 64 << 10
    path = damaged(tmp_path, src, [(0, bytes(64 << 10))])
    with FileLayer(path) as f:
        s = synthesize(f)
    assert s is not None and s.cluster_bits == 12 and not s.extended_l2
    assert s.l1_size == 0 and s.refcount_table_clusters == 0
    assert s.size == GUEST and any("GPT backup header" in n for n in s.notes)
    with Image(path, header_bytes=s.header_bytes()) as img:
        assert img.header.cluster_size == 4096 and Qcow2Layer(img).size == GUEST


def test_first_4m_lost(images, tmp_path):
    """(e) the first 4 MiB random. At 4 KiB clusters the L1 and a third of the file are gone, the later L2
    tables survive: the cluster size, and the size from the GPT backup header, are still found. At 64 KiB the
    disk's only L2 table was in those 4 MiB: nothing shows the cluster size, and nothing is made up."""
    src4, _ = images[4096]
    path = damaged(tmp_path, src4, [(0, random.Random(4).randbytes(4 * MiB))])
    with FileLayer(path) as f:
        s = synthesize(f)
    assert s is not None and s.cluster_bits == 12 and s.l1_size == 0 and s.size == GUEST
    src64, _ = images[65536]
    path = damaged(tmp_path, src64, [(0, random.Random(4).randbytes(4 * MiB))])
    with FileLayer(path) as f:
        assert synthesize(f) is None


def test_extended_l2_header_lost(images, tmp_path):
    """A lost header of an extended-L2 image: the entry width is found with the cluster size."""
    src, reference = images["ext"]
    path = damaged(tmp_path, src, [(0, bytes(64 << 10))])
    with FileLayer(path) as f:
        s = synthesize(f)
    assert s is not None and s.cluster_bits == 16 and s.extended_l2
    assert s.l1_size == fields(src)["l1_size"]
    # no partition table: the size is the end of the last L2 span the L1 names (256 MiB), an upper bound
    assert 48 * MiB <= s.size <= 256 * MiB
    with Image(path, header_bytes=s.header_bytes()) as img:
        layer = Qcow2Layer(img)
        assert read_guest(layer, 0, 48 * MiB) == reference
        assert mapped_ranges_match(img, reference) >= 4 * MiB


def test_compressed_header_lost(images, tmp_path):
    """A zstd-compressed image (qemu-img convert -c) with its header cluster zeroed: the compression type
    from the first compressed cluster's bytes, the size from the GPT in the inflated guest cluster 0."""
    src = tmp_path / "zstd.qcow2"
    run("qemu-img", "convert", "-c", "-f", "qcow2", "-O", "qcow2", "-o", "cluster_size=65536,compression_type=zstd",
        images[65536][0], src)
    reference = images[65536][1]
    path = damaged(tmp_path, src, [(0, bytes(64 << 10))])
    with FileLayer(path) as f:
        s = synthesize(f)
    assert s is not None and (s.cluster_bits, s.compression_type, s.size) == (16, 1, GUEST)
    with Image(path, header_bytes=s.header_bytes()) as img:
        assert guest(img) == reference


def test_snapshot_l1_is_not_taken_for_the_active_one(tmp_path):
    """An internal snapshot leaves a second L1 in use: the active one is the one whose tables hold the
    clusters written since (OFLAG_COPIED), and the guest reads as qemu reads the active state."""
    src = tmp_path / "snap.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", src, "64M")
    run("qemu-io", "-c", "write -P 0x11 0 4M", src)
    run("qemu-img", "snapshot", "-c", "s1", src)
    run("qemu-io", "-c", "write -P 0x22 1M 1M", "-c", "write -P 0x33 40M 1M", src)
    reference = to_raw(src, tmp_path / "snap.raw")
    path = damaged(tmp_path, src, [(0, bytes(64 << 10))])
    with FileLayer(path) as f:
        s = synthesize(f)
    assert s is not None and s.l1_table_offset == fields(src)["l1_table_offset"]
    assert "of 2 L1 copies found" in " ".join(s.notes)
    with Image(path, header_bytes=s.header_bytes()) as img:
        layer = Qcow2Layer(img)
        assert read_guest(layer, 0, len(reference)) == reference


@pytest.mark.parametrize("content", ["empty", "zeros", "random"])
def test_no_structures_no_header(tmp_path, content):
    path = tmp_path / "junk"
    path.write_bytes({"empty": b"", "zeros": bytes(MiB), "random": random.Random(5).randbytes(MiB)}[content])
    with FileLayer(path) as f:
        assert synthesize(f) is None


def test_check_and_info_still_refuse(images, tmp_path):
    src, _ = images[65536]
    path = damaged(tmp_path, src, [(0, bytes(64 << 10))])
    for command in ("info", "check"):
        res = run_qforensics(command, str(path), cwd=tmp_path)
        assert res.returncode == 1 and "not a qcow2 image" in res.stderr + res.stdout
