"""qforensics.recovery.locate: detectors of self-locating structures and the window solver, on real file
systems and partition tables built with the tools installed here (never mounted)."""

from __future__ import annotations

import mmap
import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qforensics.recovery.locate import (
    detect, detect_btrfs, detect_ext, detect_fat, detect_gpt, detect_luks, detect_lvm, detect_mbr, detect_ntfs,
    detect_xfs, place_windows)

MiB = 1 << 20


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"tool missing: {', '.join(missing)}")


def run(*cmd, **kw) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw).stdout


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def read(path: Path) -> bytes:
    return path.read_bytes()


def mapped(path: Path) -> memoryview:
    f = open(path, "rb")
    return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))


def tool_or_skip(images: dict, name: str):
    if isinstance(images[name], str):
        pytest.skip(images[name])
    return images[name]


def _populate(root: Path) -> Path:
    d = root / "content"
    d.mkdir(exist_ok=True)
    (d / "random.bin").write_bytes(random.Random(7).randbytes(600_000))
    (d / "hello.txt").write_text("hello\n" * 1000)
    return d


def _ext(tmp: Path, name: str, size: int, *opts) -> Path:
    path = sparse(tmp / name, size)
    run("mke2fs", "-q", "-F", "-E", "root_owner=0:0", *opts, "-d", _populate(tmp), path)
    return path


def _gpt_disk(tmp: Path, ext4: Path, fat16: Path) -> Path:
    disk = sparse(tmp / "gpt.img", 64 * MiB)
    run("sgdisk", "-n", "1:2048:+40M", "-t", "1:8300", "-n", "2:0:0", "-t", "2:0700", disk)
    parts = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)", run("sgdisk", "-p", disk), re.M)
    for (_, start, _), fs in zip(parts, (ext4, fat16)):
        run("dd", f"if={fs}", f"of={disk}", "bs=512", f"seek={start}", "conv=notrunc,sparse", "status=none")
    return disk


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> dict:
    """Every image once per session; a tool that is missing leaves the reason in place of the image."""
    tmp = tmp_path_factory.mktemp("locate")
    out: dict = {}

    def build(name, tools, fn):
        missing = [t for t in tools if shutil.which(t) is None]
        out[name] = f"tool missing: {', '.join(missing)}" if missing else fn()

    build("ext4", ["mke2fs"], lambda: _ext(tmp, "ext4.img", 32 * MiB, "-t", "ext4", "-b", "4096", "-g", "2048"))
    build("ext2_1k", ["mke2fs"], lambda: _ext(tmp, "ext2.img", 16 * MiB, "-t", "ext2", "-b", "1024", "-g", "1024",
                                              "-N", "256"))
    build("part_ext4", ["mke2fs"], lambda: _ext(tmp, "part_ext4.img", 40 * MiB, "-t", "ext4", "-b", "1024",
                                                "-g", "1024", "-N", "512"))

    def fat(name, size, *opts):
        path = sparse(tmp / name, size)
        run("mkfs.vfat", *opts, path)
        return path
    build("fat32", ["mkfs.vfat"], lambda: fat("fat32.img", 64 * MiB, "-F", "32", "-s", "1", "-i", "1234abcd"))
    build("fat16", ["mkfs.vfat"], lambda: fat("fat16.img", 23 * MiB, "-F", "16", "-i", "0badf00d"))
    if not any(isinstance(out[n], str) for n in ("part_ext4", "fat16")):
        build("gpt", ["sgdisk"], lambda: _gpt_disk(tmp, out["part_ext4"], out["fat16"]))
        if not isinstance(out["gpt"], str):
            def to_mbr():
                path = tmp / "mbr.img"
                shutil.copyfile(out["gpt"], path)
                run("sgdisk", "-m", "1:2", path)
                return path
            build("mbr", ["sgdisk"], to_mbr)
    else:
        out["gpt"] = out["mbr"] = "tool missing: mke2fs or mkfs.vfat"

    def xfs():
        path = sparse(tmp / "xfs.img", 320 * MiB)
        run("mkfs.xfs", "-q", "-f", path)
        return path
    build("xfs", ["mkfs.xfs", "xfs_db"], xfs)

    def btrfs():
        path = sparse(tmp / "btrfs.img", 128 * MiB)
        run("mkfs.btrfs", "-q", "-f", "--rootdir", _populate(tmp), path)
        return path
    build("btrfs", ["mkfs.btrfs", "btrfs"], btrfs)

    def ntfs():
        path = sparse(tmp / "ntfs.img", 16 * MiB)
        run("mkntfs", "-q", "-F", "-f", "-s", "512", path)
        return path
    build("ntfs", ["mkntfs"], ntfs)
    return out


# ---------------------------------------------------------------- detectors


def _superblocks(path: Path) -> tuple[list[int], str, int]:
    """dumpe2fs's superblock byte offsets, the UUID (hex) and the size in bytes."""
    text = run("dumpe2fs", path)
    bs = int(re.search(r"^Block size:\s+(\d+)", text, re.M).group(1))
    blocks = int(re.search(r"^Block count:\s+(\d+)", text, re.M).group(1))
    uuid = re.search(r"^Filesystem UUID:\s+(\S+)", text, re.M).group(1).replace("-", "")
    offs = [int(b) * bs for b in re.findall(r"superblock at (\d+)", text)]
    return [1024 if o == 0 else o for o in offs], uuid, blocks * bs


@pytest.mark.parametrize("name", ["ext4", "ext2_1k", "part_ext4"])
def test_ext_superblocks_where_dumpe2fs_puts_them(images, name):
    need("dumpe2fs")
    path = tool_or_skip(images, name)
    offsets, uuid, size = _superblocks(path)
    assert len(offsets) >= 3
    for granule in (4096, 65536):
        claims = detect_ext(read(path), granule)
        assert [c.at for c in claims] == offsets
        assert [c.position for c in claims] == offsets  # a whole file system: its own frame is the file
        assert {c.frame for c in claims} == {f"ext4:{uuid}"} and {c.size for c in claims} == {size}
    assert claims[0].what == "ext4 superblock (group 0)" and "copy (group 1)" in claims[1].what


def test_gpt_headers_and_partitions_as_sgdisk_says(images):
    path = tool_or_skip(images, "gpt")
    rows = re.findall(r"^\s+\d+\s+(\d+)\s+(\d+)", run("sgdisk", "-p", path), re.M)
    want = tuple((int(a) * 512, (int(b) - int(a) + 1) * 512) for a, b in rows)
    buf = read(path)
    claims = detect_gpt(buf, 65536)
    assert [(c.at, c.position, c.size) for c in claims] == [(512, 512, 64 * MiB), (64 * MiB - 512,) * 2 + (64 * MiB,)]
    assert all(c.partitions == want for c in claims)
    # in 4 KiB granules the 16 KiB entry array is never whole: no partitions, the headers still count
    assert [(c.position, c.partitions) for c in detect_gpt(buf, 4096)] == [(512, ()), (64 * MiB - 512, ())]
    mbr = detect_mbr(buf, 4096)
    assert [(c.position, c.what, c.size) for c in mbr] == [(0, "protective MBR", 64 * MiB)]


def test_mbr_partitions_as_sgdisk_wrote_them(images):
    path = tool_or_skip(images, "mbr")
    rows = re.findall(r"^\s+\d+\s+(\d+)\s+(\d+)", run("sgdisk", "-p", images["gpt"]), re.M)
    want = tuple((int(a) * 512, (int(b) - int(a) + 1) * 512) for a, b in rows)
    claims = detect_mbr(read(path), 4096)
    assert [(c.at, c.position, c.partitions) for c in claims] == [(0, 0, want)]
    assert detect_gpt(read(path), 65536) == []


def test_xfs_ag_headers_as_xfs_db_says(images):
    path = tool_or_skip(images, "xfs")
    text = run("xfs_db", "-r", "-c", "sb 0", "-c", "p uuid agblocks blocksize agcount dblocks sectsize", path)
    f = dict(re.findall(r"^(\w+) = (\S+)", text, re.M))
    ag = int(f["agblocks"]) * int(f["blocksize"])
    sect = int(f["sectsize"])
    claims = detect_xfs(mapped(path), 65536)
    want = [(n * ag + k * sect) for n in range(int(f["agcount"])) for k in range(3)]
    assert [c.at for c in claims] == want and [c.position for c in claims] == want
    assert {c.frame for c in claims} == {f"xfs:{f['uuid']}"}
    assert {c.size for c in claims} == {int(f["dblocks"]) * int(f["blocksize"])}
    assert claims[3].what == "XFS superblock copy (AG 1)"
    # a superblock alone (its AGF and AGI in other granules) does not say its AG
    assert detect_xfs(mapped(path), 512) == []


def test_btrfs_superblocks_as_dump_super_says(images):
    path = tool_or_skip(images, "btrfs")
    text = run("btrfs", "inspect-internal", "dump-super", "-a", path)
    bytenrs = [int(b) for b in re.findall(r"^bytenr\s+(\d+)", text, re.M)]
    fsid = re.search(r"^fsid\s+(\S+)", text, re.M).group(1).replace("-", "")
    dev = int(re.search(r"^dev_item.total_bytes\s+(\d+)", text, re.M).group(1))
    claims = detect_btrfs(read(path), 65536)
    assert bytenrs == [0x10000, 0x4000000]
    assert [(c.at, c.position) for c in claims] == [(b, b) for b in bytenrs]
    assert {c.frame for c in claims} == {f"btrfs:{fsid}"} and {c.size for c in claims} == {dev}
    damaged = bytearray(read(path)[:0x20000])
    damaged[0x10000 + 0x100] ^= 1  # one bit inside the checksummed area
    assert detect_btrfs(bytes(damaged), 65536) == []


def test_ntfs_boot_sector_and_backup(images):
    path = tool_or_skip(images, "ntfs")
    buf = read(path)
    size = len(buf)
    serial = int.from_bytes(buf[0x48:0x50], "little")
    claims = detect_ntfs(buf, 65536)
    assert [(c.at, c.position) for c in claims] == [(0, 0), (size - 512, size - 512)]
    assert {c.frame for c in claims} == {f"ntfs:{serial:016x}"} and {c.size for c in claims} == {size}
    assert "backup" in claims[1].what
    # 4 KiB granules: the primary starts a granule; the backup, ending one, is ambiguous and left out
    assert [c.position for c in detect_ntfs(buf, 4096)] == [0]


def test_fat32_boot_sector_backup_and_fsinfo(images):
    path = tool_or_skip(images, "fat32")
    buf = read(path)
    claims = detect_fat(buf, 4096)
    assert [(c.at, c.position) for c in claims] == [(0, 0), (512, 512), (3072, 3072), (3584, 3584)]
    assert {c.frame for c in claims} == {"fat:1234abcd"} and {c.size for c in claims} == {64 * MiB}
    assert ["backup" in c.what for c in claims] == [False, False, True, False]
    # a granule that holds the backup but not the primary cannot tell them apart: nothing is claimed
    assert detect_fat(buf[3072:4096], 1024) == []


def test_fat16_boot_sector(images):
    path = tool_or_skip(images, "fat16")
    claims = detect_fat(read(path), 4096)
    assert [(c.at, c.frame, c.position, c.size) for c in claims] == [(0, "fat:0badf00d", 0, 23 * MiB)]


def test_luks1_header_written_by_qemu_img():
    """The corpus's encrypted qcow2 (made by qemu-img) holds a real LUKS1 header in its host clusters."""
    import gzip
    from conftest import CORPUS
    path = CORPUS / "encrypted_luks" / "encrypted_luks.qcow2.gz"
    if not path.exists():
        pytest.skip("corpus image encrypted_luks missing")
    buf = gzip.open(path).read()
    at = buf.find(b"LUKS\xba\xbe")
    uuid = buf[at + 168:at + 208].split(b"\0")[0].decode()
    assert [(c.at, c.frame, c.position) for c in detect_luks(buf, 65536)] == [(at, f"luks:{uuid}", 0)]
    assert detect_luks(buf[:at] + b"LUKS\xba\xbe\0\x07" + buf[at + 8:], 65536) == []  # version 7


def test_lvm_needs_its_tools():
    need("pvcreate")  # not installed here: no real PV label can be made


FAMILIES = {"ext4": "ext4:", "ext2_1k": "ext4:", "xfs": "xfs:", "btrfs": "btrfs:", "ntfs": "ntfs:",
            "fat32": "fat:", "fat16": "fat:"}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_image_holds_only_its_own_family(images, name):
    path = tool_or_skip(images, name)
    claims = detect(mapped(path), 65536)
    assert claims and {c.frame.split(":")[0] + ":" for c in claims} == {FAMILIES[name]}


def test_nothing_in_random_bytes_or_zeros():
    rnd = np.random.default_rng(3).bytes(32 * MiB)
    for buf in (rnd, bytes(32 * MiB)):
        for granule in (512, 4096, 65536):
            assert detect(buf, granule) == []


# ---------------------------------------------------------------- the solver

SPAN, CLUSTER = 2 * MiB, 4096  # a 4 KiB-cluster qcow2: one L2 table maps 512 clusters


def _windows(disk: bytes, seed: int = 5) -> tuple[dict[int, list], dict[int, int]]:
    """The disk cut into windows as orphan L2 tables would map it: each window's allocated (non-zero)
    clusters concatenated, scanned with detect(), ``at`` turned into the offset in the window; keyed by
    made-up host offsets in shuffled order. Returns the windows and each key's true base."""
    order = list(range(len(disk) // SPAN))
    random.Random(seed).shuffle(order)
    windows, truth = {}, {}
    for n, w in enumerate(order):
        key = 0x50000 + n * 0x10000
        window = disk[w * SPAN:(w + 1) * SPAN]
        entries = [k for k in range(SPAN // CLUSTER) if any(window[k * CLUSTER:(k + 1) * CLUSTER])]
        buf = b"".join(window[k * CLUSTER:(k + 1) * CLUSTER] for k in entries)
        claims = detect(buf, CLUSTER)
        windows[key] = [c.__class__(entries[c.at // CLUSTER] * CLUSTER + c.at % CLUSTER, c.frame, c.position,
                                    c.what, c.size, c.partitions) for c in claims]
        truth[key] = w * SPAN
    return windows, truth


@pytest.fixture(scope="session")
def gpt_windows(images):
    disk = read(tool_or_skip(images, "gpt"))
    return disk, *_windows(disk)


def _frame(claims, prefix):
    return next(c.frame for c in claims if c.frame.startswith(prefix))


def test_windows_go_back_to_their_bases(gpt_windows):
    disk, windows, truth = gpt_windows
    sol = place_windows(windows, SPAN, len(disk))
    truths = detect(disk, CLUSTER)
    ext4, fat = _frame(truths, "ext4:"), _frame(truths, "fat:")
    with_ext4 = {c.at // SPAN for c in truths if c.frame in ("disk", ext4)}
    assert len(with_ext4) >= 8  # MBR+GPT+primary, 7 ext4 copies, the GPT backup
    for key, base in truth.items():
        if base // SPAN in with_ext4:
            assert sol.placed[key].base == base and sol.placed[key].slot == base // SPAN
        else:
            assert key not in sol.placed
    assert sol.frames == {ext4: MiB}
    assert sol.disk_size == 64 * MiB
    empty = [k for k, c in windows.items() if not c]
    assert empty and all(sol.unplaced[k] == "no self-locating structure" for k in empty)
    # the FAT16 partition: in 4 KiB clusters the GPT entry array is never whole, so its start is unknown
    fat_key = next(k for k, c in windows.items() if any(x.frame == fat for x in c))
    assert f"origin of {fat} unresolved" in sol.unplaced[fat_key]
    first = next(k for k, b in truth.items() if b == 0)
    assert sol.placed[first].evidence == "protective MBR at guest 0x0"


def test_partition_table_anchors_the_file_systems(images):
    """The MBR made from the same layout lists the partitions: the FAT16 frame is anchored at its start,
    and without the ext4 primary superblock the ext4 frame too."""
    disk = read(tool_or_skip(images, "mbr"))
    windows, truth = _windows(disk, seed=9)
    first = next(k for k, b in truth.items() if b == 0)
    windows[first] = [c for c in windows[first] if c.frame == "disk"]
    sol = place_windows(windows, SPAN, len(disk))
    truths = detect(disk, CLUSTER)
    ext4, fat = _frame(truths, "ext4:"), _frame(truths, "fat:")
    assert sol.frames == {ext4: MiB, fat: 41 * MiB}
    held = {c.at // SPAN for c in truths}
    assert {truth[k] // SPAN for k in sol.placed} == held
    assert all(sol.placed[k].base == truth[k] for k in sol.placed)
    fat_key = next(k for k in sol.placed if truth[k] == 40 * MiB)
    assert sol.placed[fat_key].evidence == f"FAT12/16 boot sector at guest {41 * MiB:#x}"


def test_known_data_anchors_a_frame(gpt_windows):
    disk, windows, truth = gpt_windows
    first = next(k for k, b in truth.items() if b == 0)
    known = list(windows[first])  # window 0 read from the intact disk: at = guest offset (base 0)
    rest = {k: v for k, v in windows.items() if k != first}
    sol = place_windows(rest, SPAN, len(disk), known=known, is_open=lambda slot: slot != 0)
    ext4 = _frame(known, "ext4:")
    assert sol.frames[ext4] == MiB
    copies = [k for k, c in rest.items() if any(x.frame == ext4 for x in c)]
    assert len(copies) >= 6 and all(sol.placed[k].base == truth[k] for k in copies)
    assert first not in sol.placed and first not in sol.unplaced


def test_contradictions_leave_windows_unplaced(gpt_windows):
    disk, windows, truth = gpt_windows
    ext4_keys = sorted(k for k, c in windows.items() if c and truth[k] and any(x.frame.startswith("ext4:") for x in c))
    copy_of, other = ext4_keys[0], ext4_keys[1]
    twins = dict(windows)
    twins[0xdead0000] = list(windows[copy_of])  # the same window found twice
    mixed = [*windows[copy_of], *windows[other]]  # one window claiming two bases
    twins[0xbeef0000] = mixed
    sol = place_windows(twins, SPAN, len(disk))
    slot = truth[copy_of] // SPAN
    for key in (copy_of, 0xdead0000):
        assert key not in sol.placed and f"slot {slot} claimed by 2 windows" in sol.unplaced[key]
    assert sol.unplaced[0xbeef0000].startswith("claims disagree")
    assert sol.placed[other].base == truth[other]
    # a bound that excludes the window's slot, and a virtual size too small
    sol = place_windows(windows, SPAN, 16 * MiB)
    backup = next(k for k, b in truth.items() if b == 62 * MiB)
    assert "past the virtual size" in sol.unplaced[backup]
