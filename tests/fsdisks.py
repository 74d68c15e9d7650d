"""Guest disks with real partition tables and file systems, damaged the way incidents damage them.

A module of plain functions, used by tests/test_recover_fs.py and scripts/recover_fs_report.py.
Nothing is ever mounted: file systems are built and populated by their own tools
(mke2fs -d and debugfs, mkfs.vfat and mcopy, mkfs.btrfs --rootdir), partition tables are
written by sgdisk (GPT) or here (MBR: the 16-byte entry at 446, signature 0x55AA at 510).

Building (`build_case`) gives, for one case, a sparse raw guest disk and a manifest: every
file's path, size and SHA-256, and how to extract it from a raw disk. `convert` makes qcow2
images of it (64 KiB or 4 KiB clusters); `convert_shuffled` writes the same guest into an empty
qcow2 chunk by chunk in a seeded random order with qemu-io (`write -s CHUNKFILE OFF LEN`, one
qemu-io process reading its commands from stdin), so the host order of the clusters differs
from the guest order (`host_order_differs` checks it with `qemu-img map --output=json`).

`DAMAGES` maps each damage kind to a function (src qcow2, dst path) that writes a damaged copy;
the original is never touched. `run_ours` / `run_qemu` run `qforensics recover --scan` and
`qemu-img convert -O raw` on a damaged image and extract every manifest file from their raw
output (`extract_files`), compared with the manifest's SHA-256.

Everything is seeded: the file contents (random.Random(seed:path)), the fs UUIDs and times,
the shuffle and the damage.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SECTOR = 512
FAKE_TIME = 1700000000  # 2023-11-14, every timestamp the tools write
ENV = {**os.environ, "E2FSPROGS_FAKE_TIME": str(FAKE_TIME), "SOURCE_DATE_EPOCH": str(FAKE_TIME),
       "MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0", "LC_ALL": "C", "TZ": "UTC"}
UUID_A = "6a1f7c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
UUID_B = "0f9e8d7c-6b5a-4938-a7b6-c5d4e3f2a1b0"
UUID_C = "11223344-5566-4778-899a-abbccddeeff0"


class ToolError(RuntimeError):
    pass


def run(cmd: list[str], timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], check=False, capture_output=True, timeout=timeout,
                         env=kw.pop("env", ENV), **kw)
    if check and res.returncode != 0:
        err = res.stderr.decode(errors="replace") if isinstance(res.stderr, bytes) else res.stderr
        raise ToolError(f"{cmd[0]} exited {res.returncode}: {err[-2000:]}")
    return res


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# file trees

def file_content(seed: str, path: str, size: int) -> bytes:
    """Pseudo-random bytes of one file: the same seed and path give the same bytes."""
    return random.Random(f"{seed}:{path}").randbytes(size)


def file_sizes(seed: str, total: int, *, least: int = 3 * KiB, most: int = 6 * MiB) -> list[int]:
    """Sizes from a few KiB to several MiB (log-uniform, never a multiple of 4 KiB), adding up to ~total."""
    rng = random.Random(f"{seed}:sizes")
    sizes, left = [], total
    while left > least:
        s = int(least * (most / least) ** rng.random()) + rng.randrange(1, 4096)
        s = min(s, left)
        sizes.append(s)
        left -= s
    return sizes


def make_tree(root: Path, seed: str, total: int, *, most: int = 6 * MiB, prefix: str = "") -> list[tuple[str, int]]:
    """Files under root (some in subfolders, two levels deep); returns [(/path, size)] in creation order."""
    dirs = ["", "docs", "docs/2023", "photos", "var/log", "src/lib"]
    rng = random.Random(f"{seed}:dirs")
    out = []
    for i, size in enumerate(file_sizes(seed, total, most=most)):
        d = rng.choice(dirs)
        rel = f"{d}/{prefix}f{i:03d}.bin".lstrip("/")
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(file_content(seed, "/" + rel, size))
        os.utime(p, (FAKE_TIME, FAKE_TIME))
        out.append(("/" + rel, size))
    for d in sorted({p.parent for p in root.rglob("*")} | {root}, reverse=True):
        os.utime(d, (FAKE_TIME, FAKE_TIME))
    return out


def _entries(root: Path, files: list[tuple[str, int]], fs: str, part: int, offset: int, size: int) -> list[dict]:
    return [{"path": p, "size": s, "sha256": sha256_file(root / p.lstrip("/")), "fs": fs, "partition": part,
             "offset": offset, "fs_size": size} for p, s in files]


# ---------------------------------------------------------------------------------------------
# file systems, each into a file (a partition image or the whole disk at an offset)

def mkfs_ext4(target: Path, size: int, src: Path | None, *, offset: int = 0) -> None:
    """ext4 of `size` bytes at `offset` of target (mke2fs -E offset=, so the disk stays sparse)."""
    args = ["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-U", UUID_A, "-E",
            f"hash_seed={UUID_B},root_owner=0:0,offset={offset},nodiscard", "-L", "qfdata"]
    if src is not None:
        args += ["-d", src]
    run(args + [target, str(size // 1024) + "k"])
    if src is not None:
        pin_ctimes(target, ["/" + p.relative_to(src).as_posix() for p in sorted(src.rglob("*"))], offset=offset)


def pin_ctimes(target: Path, paths: list[str], *, offset: int = 0) -> None:
    """mke2fs -d copies each source file's ctime (which utime cannot set): pin it to FAKE_TIME, so the
    same seed gives the same disk byte for byte (inode checksums follow)."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(FAKE_TIME))
    debugfs(target, [f"sif {p} ctime {stamp}" for p in paths], offset=offset, write=True)


def debugfs(target: Path, commands: list[str], *, offset: int = 0, write: bool = False,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """debugfs running a command file on the fs at offset (unix io manager's ?offset=)."""
    with tempfile.NamedTemporaryFile("w", suffix=".cmds", delete=False) as f:
        f.write("\n".join(commands) + "\n")
    try:
        spec = f"{target}?offset={offset}" if offset else str(target)
        return run(["debugfs", *(["-w"] if write else ["-c", "-n"]), "-f", f.name, spec], timeout=timeout,
                   check=False)
    finally:
        os.unlink(f.name)


def mkfs_fat32(disk: Path, offset: int, size: int, src: Path) -> None:
    """FAT32 at offset of the disk (mkfs.vfat --offset, hidden sectors = the offset), filled by mcopy."""
    run(["mkfs.vfat", "-F", "32", "-s", "2", "-n", "QFFAT", "-i", "1A2B3C4D", "--invariant",
         "--offset", str(offset // SECTOR), "-h", str(offset // SECTOR), disk, str(size // 1024)])
    img = f"{disk}@@{offset}"
    for d in sorted({p.relative_to(src) for p in src.rglob("*") if p.is_dir()}, key=lambda p: len(p.parts)):
        run(["mmd", "-i", img, f"::/{d.as_posix()}"])
    for p in sorted(src.rglob("*")):
        if p.is_file():
            run(["mcopy", "-m", "-i", img, p, f"::/{p.relative_to(src).as_posix()}"])


def mkfs_btrfs(part: Path, size: int, src: Path) -> None:
    with open(part, "wb") as f:
        f.truncate(size)
    run(["mkfs.btrfs", "-q", "-f", "-U", UUID_C, "-L", "qfbtrfs", "--rootdir", src, part])


def mkfs_ntfs(part: Path, size: int, sector_offset: int) -> None:
    """An empty NTFS (mkntfs cannot populate): boot sector, MFT, MFT mirror and backup boot sector."""
    with open(part, "wb") as f:
        f.truncate(size)
    run(["mkntfs", "-q", "-F", "-f", "-L", "qfntfs", "-p", str(sector_offset), "-H", "16", "-S", "63", part])


def dd_into(disk: Path, part: Path, offset: int) -> None:
    """Copy a partition image into the disk at offset, keeping both sparse (zero blocks skipped)."""
    zero = bytes(1 << 16)
    with open(part, "rb") as fin, open(disk, "r+b") as fout:
        pos = 0
        while True:
            try:
                data_at = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            hole_at = os.lseek(fin.fileno(), data_at, os.SEEK_HOLE)
            fin.seek(data_at)
            p = data_at
            while p < hole_at:
                chunk = fin.read(min(1 << 16, hole_at - p))
                if chunk != zero[:len(chunk)]:
                    fout.seek(offset + p)
                    fout.write(chunk)
                p += len(chunk)
            pos = hole_at


def write_mbr(disk: Path, parts: list[tuple[int, int, int]], signature: int = 0x51F0D15C) -> None:
    """A classic MBR: parts = [(type, first LBA, sectors)], CHS set to the LBA-only 0xFEFFFF."""
    mbr = bytearray(512)
    struct.pack_into("<I", mbr, 440, signature)
    for i, (ptype, lba, count) in enumerate(parts):
        struct.pack_into("<B3sB3sII", mbr, 446 + 16 * i, 0x80 if i == 0 else 0, b"\xfe\xff\xff", ptype,
                         b"\xfe\xff\xff", lba, count)
    mbr[510:512] = b"\x55\xaa"
    with open(disk, "r+b") as f:
        f.write(mbr)


def gpt(disk: Path, parts: list[tuple[int, int, str, str]]) -> None:
    """GPT by sgdisk: parts = [(first sector, last sector, type code, name)], fixed GUIDs."""
    args = ["sgdisk", "-o", "-U", UUID_B]
    for i, (first, last, code, name) in enumerate(parts, 1):
        args += [f"-n{i}:{first}:{last}", f"-t{i}:{code}", f"-c{i}:{name}", f"-u{i}:{UUID_C[:-2]}{i:02x}"]
    run(args + [disk])


def new_disk(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


# ---------------------------------------------------------------------------------------------
# the cases

def case_gpt_ext4(work: Path, *, guest: int = 96 * MiB, data: int = 40 * MiB, seed: str = "gpt_ext4") -> dict:
    """GPT, one ext4 partition at 1 MiB to 1 MiB before the end, ~data bytes of files."""
    disk, src = work / "disk.raw", work / "src"
    files = make_tree(src, seed, data)
    new_disk(disk, guest)
    first, last = 2048, guest // SECTOR - 2048 - 1
    gpt(disk, [(first, last, "8300", "data")])
    off, size = first * SECTOR, (last - first + 1) * SECTOR
    mkfs_ext4(disk, size, src, offset=off)
    return {"guest_size": guest, "table": "gpt",
            "partitions": [{"index": 1, "fs": "ext4", "offset": off, "size": size}],
            "files": _entries(src, files, "ext4", 1, off, size)}


def case_mbr_fat(work: Path, *, guest: int = 80 * MiB, data: int = 30 * MiB, seed: str = "mbr_fat") -> dict:
    """MBR (written here), one FAT32 partition (type 0x0c) at 1 MiB, filled with mcopy."""
    disk, src = work / "disk.raw", work / "src"
    files = make_tree(src, seed, data, most=4 * MiB)
    new_disk(disk, guest)
    off, size = 1 * MiB, guest - 2 * MiB
    mkfs_fat32(disk, off, size, src)
    write_mbr(disk, [(0x0C, off // SECTOR, size // SECTOR)])
    return {"guest_size": guest, "table": "mbr",
            "partitions": [{"index": 1, "fs": "vfat", "offset": off, "size": size}],
            "files": _entries(src, files, "vfat", 1, off, size)}


def case_ext4_whole(work: Path, *, guest: int = 1228 * MiB, data: int = 8 * MiB, seed: str = "ext4_whole") -> dict:
    """ext4 on the whole disk (no partition table), with files in three 512 MiB windows.

    mke2fs -d puts its files low (window 0). The rest is written by debugfs after a filler file
    has been given every block up to the next window with `fallocate` (uninitialised extents: the
    disk stays zero there), and the fillers are removed afterwards, so files lie at ~512 MiB and
    ~1 GiB. `placement` in the manifest says, per file, the disk byte ranges debugfs reports.
    """
    disk, src = work / "disk.raw", work / "src"
    files = make_tree(src / "w0", seed + ":w0", data)
    files = [("/w0" + p, s) for p, s in files]
    new_disk(disk, guest)
    mkfs_ext4(disk, guest, src)
    bs = 4096
    for w, window in ((1, 512 * MiB), (2, 1024 * MiB)):
        wsrc = src / f"w{w}"
        wfiles = make_tree(wsrc, f"{seed}:w{w}", data, most=3 * MiB)
        # the filler takes every free block from the bottom up to ~8 MiB past the window's start
        filler = _free_below(disk, window // bs) + 2048
        cmds = [f"write /dev/null /filler{w}", f"fallocate /filler{w} 0 {filler - 1}", f"mkdir /w{w}"]
        for d in sorted({str(Path(p).parent) for p, _ in wfiles} - {"/"}, key=len):
            parts = Path(d).parts[1:]
            for k in range(1, len(parts) + 1):
                cmds.append(f"mkdir /w{w}/{'/'.join(parts[:k])}")
        cmds += [f"write {wsrc}{p} /w{w}{p}" for p, _ in wfiles]
        debugfs(disk, cmds, write=True, timeout=300)
        files += [(f"/w{w}{p}", s) for p, s in wfiles]
    debugfs(disk, ["rm /filler1", "rm /filler2"], write=True)
    pin_ctimes(disk, ["/", "/w1", "/w2"] + sorted({str(Path(p).parent) for p, _ in files} | {p for p, _ in files}))
    manifest = {"guest_size": guest, "table": "none",
                "partitions": [{"index": 0, "fs": "ext4", "offset": 0, "size": guest}],
                "files": _entries(src, files, "ext4", 0, 0, guest)}
    res = debugfs(disk, [f"blocks {f['path']}" for f in manifest["files"]])
    lines = [ln for ln in res.stdout.decode().splitlines() if ln and not ln.startswith("debugfs")]
    for f, ln in zip(manifest["files"], lines):
        blocks = [int(b) for b in ln.split()]
        f["first_byte"], f["last_byte"] = min(blocks) * bs, (max(blocks) + 1) * bs
    manifest["windows_with_data"] = sorted({f["first_byte"] // (512 * MiB) for f in manifest["files"]})
    return manifest


def _free_below(disk: Path, block: int) -> int:
    """Free blocks of the (whole-disk) ext4 below `block`, from dumpe2fs's free ranges."""
    out = run(["dumpe2fs", disk]).stdout.decode()
    free = 0
    for line in re.findall(r"^\s+Free blocks: (.*)$", out, re.MULTILINE):
        for r in filter(None, (x.strip() for x in line.split(","))):
            a, _, b = r.partition("-")
            a, b = int(a), int(b or a)
            if a < block:
                free += min(b, block - 1) - a + 1
    return free


def case_gpt_multi(work: Path, *, guest: int = 200 * MiB, data: int = 12 * MiB, seed: str = "gpt_multi") -> dict:
    """GPT with ext4, btrfs (mkfs.btrfs --rootdir) and an empty NTFS (boot sector, MFT, mirror, backup)."""
    disk = work / "disk.raw"
    new_disk(disk, guest)
    mib = MiB // SECTOR
    layout = [(1 * mib, 48 * mib - 1, "8300", "ext4"), (48 * mib, 178 * mib - 1, "8300", "btrfs"),
              (178 * mib, 198 * mib - 1, "0700", "ntfs")]
    gpt(disk, layout)
    parts, entries = [], []
    for i, (first, last, _, fs) in enumerate(layout, 1):
        off, size = first * SECTOR, (last - first + 1) * SECTOR
        parts.append({"index": i, "fs": fs, "offset": off, "size": size})
        if fs == "ntfs":
            img = work / "p.ntfs"
            mkfs_ntfs(img, size, first)
            dd_into(disk, img, off)
            img.unlink()
            continue
        src = work / f"src_{fs}"
        files = make_tree(src, f"{seed}:{fs}", data, most=3 * MiB)
        if fs == "ext4":
            mkfs_ext4(disk, size, src, offset=off)
        else:
            img = work / "p.btrfs"
            mkfs_btrfs(img, size, src)
            dd_into(disk, img, off)
            img.unlink()
        entries += _entries(src, files, fs, i, off, size)
    return {"guest_size": guest, "table": "gpt", "partitions": parts, "files": entries}


CASES = {"gpt_ext4": case_gpt_ext4, "mbr_fat": case_mbr_fat, "ext4_whole": case_ext4_whole,
         "gpt_multi": case_gpt_multi}


def build_case(name: str, work: Path, **kw) -> tuple[Path, dict]:
    """The raw guest disk of one case in work/, and its manifest (also written as manifest.json)."""
    work.mkdir(parents=True, exist_ok=True)
    manifest = {"case": name, **CASES[name](work, **kw)}
    for f in manifest["files"]:
        f["extract"] = extract_command(f, "DISK.raw", "OUT")
    shutil.rmtree(work / "src", ignore_errors=True)
    for p in work.glob("src_*"):
        shutil.rmtree(p)
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return work / "disk.raw", manifest


# ---------------------------------------------------------------------------------------------
# extraction from a raw disk

def extract_command(f: dict, disk: str, out: str) -> str:
    """How one file is extracted by hand from a raw disk (what extract_files does)."""
    if f["fs"] == "ext4":
        spec = f"{disk}?offset={f['offset']}" if f["offset"] else disk
        return f"debugfs -c -n -R 'dump -p {f['path']} {out}' '{spec}'"
    if f["fs"] == "vfat":
        return f"mcopy -n -i {disk}@@{f['offset']} ::{f['path']} {out}"
    if f["fs"] == "btrfs":
        return (f"dd if={disk} of=part.img bs=1M skip={f['offset'] // MiB} count={f['fs_size'] // MiB} && "
                f"btrfs restore -i part.img DIR && cp DIR{f['path']} {out}")
    raise ValueError(f["fs"])


def _slice(disk: Path, offset: int, size: int, out: Path) -> None:
    """The partition range of a disk as its own sparse file."""
    with open(out, "wb") as f:
        f.truncate(size)
    with open(disk, "rb") as fin, open(out, "r+b") as fout:
        pos = 0
        end = min(size, max(0, os.fstat(fin.fileno()).st_size - offset))
        while pos < end:
            fin.seek(offset + pos)
            chunk = fin.read(min(4 * MiB, end - pos))
            if not chunk:
                break
            if chunk.count(0) != len(chunk):
                fout.seek(pos)
                fout.write(chunk)
            pos += len(chunk)


def file_key(f: dict) -> str:
    """partition:path, a file's name across the disk (two partitions may hold the same path)."""
    return f"{f['partition']}:{f['path']}"


def extract_files(disk: Path, manifest: dict, work: Path) -> dict[str, str | None]:
    """SHA-256 of every manifest file (by file_key) as extracted from the raw disk, None where unreadable."""
    result: dict[str, str | None] = {file_key(f): None for f in manifest["files"]}
    if not disk.exists():
        return result
    work.mkdir(parents=True, exist_ok=True)
    by_part: dict[int, list[dict]] = {}
    for f in manifest["files"]:
        by_part.setdefault(f["partition"], []).append(f)
    for part, files in by_part.items():
        fs, off, size = files[0]["fs"], files[0]["offset"], files[0]["fs_size"]
        out = work / f"p{part}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        names = {f["path"]: out / f"{i:04d}" for i, f in enumerate(files)}
        try:
            if fs == "ext4":
                debugfs(disk, [f"dump -p {p} {n}" for p, n in names.items()], offset=off, timeout=300)
            elif fs == "vfat":
                for p, n in names.items():
                    run(["mcopy", "-n", "-i", f"{disk}@@{off}", f"::{p}", n], check=False, timeout=60)
            elif fs == "btrfs":
                img = work / "part.btrfs"
                _slice(disk, off, size, img)
                rdir = out / "restore"
                rdir.mkdir()
                run(["btrfs", "restore", "-i", img, rdir], check=False, timeout=120)
                img.unlink()
                for p, n in names.items():
                    if (rdir / p.lstrip("/")).is_file():
                        (rdir / p.lstrip("/")).rename(n)
        except (subprocess.TimeoutExpired, ToolError):
            pass
        for p, n in names.items():
            if n.is_file():
                result[f"{part}:{p}"] = sha256_file(n)
        shutil.rmtree(out, ignore_errors=True)
    return result


def compare(manifest: dict, got: dict[str, str | None]) -> dict:
    """identical / differing / unreadable counts (and the paths of the ones not identical)."""
    ident, differ, unread = [], [], []
    for f in manifest["files"]:
        h = got.get(file_key(f))
        (unread if h is None else ident if h == f["sha256"] else differ).append(file_key(f))
    return {"total": len(manifest["files"]), "identical": len(ident), "differing": len(differ),
            "unreadable": len(unread), "not_identical": differ + unread}


# ---------------------------------------------------------------------------------------------
# qcow2 images of a raw guest

def convert(raw: Path, out: Path, cluster_size: int = 65536) -> Path:
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", f"cluster_size={cluster_size}", raw, out],
        timeout=300)
    return out


def convert_shuffled(raw: Path, out: Path, cluster_size: int = 65536, chunk: int = 64 * KiB,
                     seed: str = "shuffle") -> Path:
    """The guest written into an empty qcow2 one chunk at a time, chunks in a seeded random order.

    qemu-img create makes the empty image; one qemu-io process reads `write -q -s FILE OFF LEN`
    commands from stdin, FILE being that chunk's bytes (qemu-io's -s fills the write buffer from a
    file's start). All-zero chunks are not written. qemu allocates data clusters (and L2 tables)
    in the order of the writes, so the host order follows the shuffle, not the guest order.
    """
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster_size}", out,
         str(raw.stat().st_size)])
    chunks = []
    with open(raw, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                data_at = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            start = data_at - data_at % chunk
            hole_at = os.lseek(f.fileno(), data_at, os.SEEK_HOLE)
            for c in range(start, hole_at, chunk):
                f.seek(c)
                data = f.read(min(chunk, size - c))
                if data.count(0) != len(data) and (not chunks or chunks[-1][0] != c):
                    chunks.append((c, data))
            pos = max(hole_at, start + chunk)
    random.Random(seed).shuffle(chunks)
    with tempfile.TemporaryDirectory(prefix="qf-shuffle-", dir=out.parent) as tmp:
        lines = []
        for i, (c, data) in enumerate(chunks):
            p = Path(tmp) / f"{i}"
            p.write_bytes(data)
            lines.append(f"write -q -s {p} {c} {len(data)}")
        lines.append("quit")
        res = run(["qemu-io", "-f", "qcow2", out], input="\n".join(lines).encode() + b"\n", timeout=600)
        if b"error" in res.stdout.lower() or b"failed" in res.stdout.lower():
            raise ToolError(res.stdout.decode()[-2000:])
    return out


def qemu_map(image: Path) -> list[dict]:
    return json.loads(run(["qemu-img", "map", "--output=json", image]).stdout)


def host_order_differs(image: Path) -> tuple[bool, int]:
    """Whether the data extents' host offsets are out of guest order, and how many inversions."""
    offsets = [e["offset"] for e in qemu_map(image) if e.get("data") and "offset" in e]
    inversions = sum(1 for a, b in itertools.pairwise(offsets) if b < a)
    return inversions > 0, inversions


def _data_regions(f) -> list[tuple[int, int]]:
    size, pos, out = os.fstat(f.fileno()).st_size, 0, []
    while pos < size:
        try:
            start = os.lseek(f.fileno(), pos, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(f.fileno(), start, os.SEEK_HOLE)
        out.append((start, end))
        pos = end
    return out


def same_file(a: Path, b: Path) -> bool:
    """Byte for byte, reading only where either file has data (holes of both read as zeros)."""
    if not a.exists() or not b.exists() or a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        regions = sorted(_data_regions(fa) + _data_regions(fb))
        merged: list[list[int]] = []
        for s, e in regions:
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        for s, e in merged:
            fa.seek(s)
            fb.seek(s)
            while s < e:
                n = min(4 * MiB, e - s)
                if fa.read(n) != fb.read(n):
                    return False
                s += n
    return True


# ---------------------------------------------------------------------------------------------
# damage: each writes a damaged copy of src at dst; src is never touched

def qcow2_header(path: Path) -> dict:
    with open(path, "rb") as f:
        raw = f.read(112)
    cluster_bits, = struct.unpack_from(">I", raw, 20)
    l1_size, l1_offset, reft_offset, reft_clusters = struct.unpack_from(">IQQI", raw, 36)
    return {"cs": 1 << cluster_bits, "l1_size": l1_size, "l1": l1_offset, "reft": reft_offset,
            "reft_clusters": reft_clusters}


def _poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def _zero_l1(path: Path) -> None:
    h = qcow2_header(path)
    _poke(path, h["l1"], bytes(8 * h["l1_size"]))


def damage_l1_zeroed(src: Path, dst: Path) -> None:
    _zero_l1(_copy(src, dst))


def damage_head_1m_zeroed(src: Path, dst: Path) -> None:
    _copy(src, dst)
    _poke(dst, 0, bytes(min(MiB, dst.stat().st_size)))


def damage_head_4m_random(src: Path, dst: Path) -> None:
    _copy(src, dst)
    _poke(dst, 0, random.Random("head_4m_random").randbytes(min(4 * MiB, dst.stat().st_size)))


def damage_l1_refcounts_zeroed(src: Path, dst: Path) -> None:
    """The active L1 and every refcount block the refcount table names (the table itself kept)."""
    _copy(src, dst)
    h = qcow2_header(dst)
    with open(dst, "rb") as f:
        f.seek(h["reft"])
        table = f.read(h["reft_clusters"] * h["cs"])
    _zero_l1(dst)
    for (e,) in struct.iter_unpack(">Q", table):
        if e & 0x00FFFFFFFFFFFE00:
            _poke(dst, e & 0x00FFFFFFFFFFFE00, bytes(h["cs"]))


def damage_truncated_60(src: Path, dst: Path) -> None:
    _copy(src, dst)
    with open(dst, "r+b") as f:
        f.truncate(dst.stat().st_size * 60 // 100)


def damage_clusters_3pct_zeroed(src: Path, dst: Path) -> None:
    """3% of the host clusters (any kind but the header cluster) zeroed, seeded."""
    _copy(src, dst)
    cs = qcow2_header(dst)["cs"]
    n = dst.stat().st_size // cs
    picks = random.Random("clusters_3pct").sample(range(1, n), max(1, -(-3 * (n - 1) // 100)))
    with open(dst, "r+b") as f:
        for c in sorted(picks):
            f.seek(c * cs)
            f.write(bytes(cs))


def damage_snapshot_l1_zeroed(src: Path, dst: Path) -> None:
    """An internal snapshot (qemu-img snapshot -c snap1) of the same content, then the active L1 zeroed."""
    _copy(src, dst)
    run(["qemu-img", "snapshot", "-c", "snap1", dst])
    _zero_l1(dst)


DAMAGES = {"l1_zeroed": damage_l1_zeroed, "head_1m_zeroed": damage_head_1m_zeroed,
           "head_4m_random": damage_head_4m_random, "l1_refcounts_zeroed": damage_l1_refcounts_zeroed,
           "truncated_60": damage_truncated_60, "clusters_3pct_zeroed": damage_clusters_3pct_zeroed,
           "snapshot_l1_zeroed": damage_snapshot_l1_zeroed}


# ---------------------------------------------------------------------------------------------
# the two tools

DOUBT_WORDS = ("uncertain", "unplaced", "unknown", "ambiguous", "guess")


def _significant(v) -> bool:
    """A value that says something is there: a non-zero number, a true flag, a non-empty list or string."""
    if isinstance(v, dict):
        return any(_significant(x) for x in v.values())
    if isinstance(v, (list, tuple, str)):
        return len(v) > 0
    return bool(v)


def doubts(log: dict) -> dict:
    """Every key of the log's summary about uncertain / unplaced / unknown data whose value is not
    nothing (e.g. uncertain-bytes, unknown-bytes, unplaced.bytes, unplaced-evidence), and the count
    of guest ranges carrying an `uncertain` or `unknown` key."""
    found = {k: v for k, v in log.items()
             if k != "ranges" and any(w in k.lower() for w in DOUBT_WORDS) and _significant(v)}
    rows = sum(1 for r in log.get("ranges", []) if any(w in k.lower() for k in r for w in DOUBT_WORDS))
    if rows:
        found["ranges-with-doubt"] = rows
    return found


def run_ours(image: Path, work: Path, manifest: dict, *, keep_raw: bool = False, timeout: float = 600) -> dict:
    """qforensics recover --scan on image, every manifest file extracted from its output."""
    work.mkdir(parents=True, exist_ok=True)
    out, log = work / "ours.raw", work / "ours.log.json"
    for p in (out, log):
        p.unlink(missing_ok=True)
    env = {**ENV, "PYTHONPATH": str(ROOT)}
    try:
        res = subprocess.run([sys.executable, "-m", "qforensics", "recover", "--scan", str(image), "-o", str(out),
                              "--log", str(log), "--output", "json"], check=False, capture_output=True, text=True,
                             timeout=timeout, env=env, cwd=work)
        code, stderr = res.returncode, res.stderr
    except subprocess.TimeoutExpired:
        code, stderr = "timeout", f"timed out after {timeout} s"
    r = {"tool": "qforensics", "exit": code, "stderr": stderr[-3000:]}
    if log.exists():
        lg = json.loads(log.read_text())
        cs = qcow2_header(image)["cs"] if image.stat().st_size >= 112 else 0
        by_source = lg.get("bytes-by-source", {})
        data_bytes = sum(v for k, v in by_source.items() if k != "unallocated")
        r.update({"complete": lg.get("complete"), "missing_bytes": lg.get("missing-bytes"),
                  "recovered_bytes": lg.get("recovered-bytes"), "bytes_by_source": by_source,
                  "clusters_recovered": data_bytes // cs if cs and 9 <= cs.bit_length() - 1 <= 21 else None,
                  "data_bytes": data_bytes, "doubts": doubts(lg), "notes": lg.get("notes", [])[:20],
                  "missing_ranges": lg.get("missing-ranges"), "unknown_bytes": lg.get("unknown-bytes"),
                  "uncertain_bytes": lg.get("uncertain-bytes"), "unplaced": lg.get("unplaced"),
                  "zero_clusters": lg.get("zero-clusters")})
    r["files"] = compare(manifest, extract_files(out, manifest, work / "extract"))
    r["raw"] = str(out) if keep_raw else None
    if not keep_raw:
        out.unlink(missing_ok=True)
    return r


def run_qemu(image: Path, work: Path, manifest: dict, *, keep_raw: bool = False, timeout: float = 600) -> dict:
    """qemu-img convert -f qcow2 -O raw on image (its refusal recorded), every manifest file extracted.

    -f qcow2: without it, qemu probes a file whose magic is destroyed as raw and "converts" the
    qcow2 file itself, exit 0; the format is known, so it is given, as a responder would give it."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "qemu.raw"
    out.unlink(missing_ok=True)
    try:
        res = run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, out], check=False, timeout=timeout)
        code, err = res.returncode, res.stderr.decode(errors="replace").strip()
    except subprocess.TimeoutExpired:
        code, err = "timeout", f"timed out after {timeout} s"
    r = {"tool": "qemu-img convert", "exit": code, "error": err[-1000:] if code != 0 else None}
    # a refused convert may leave a partial file: extract from whatever it wrote, as a user would
    r["files"] = compare(manifest, extract_files(out, manifest, work / "extract"))
    r["raw"] = str(out) if keep_raw else None
    if not keep_raw:
        out.unlink(missing_ok=True)
    return r


def honest(ours: dict) -> tuple[bool, str]:
    """The invariant: exit 0 only when every file is identical and the log admits no gap or doubt;
    a run that loses or may have corrupted data exits 2. One exception, which the log must then state:
    allocated clusters that hold written zeros in an image no check faults read as what they are (zeros);
    a guest may write zeros as well as damage may wipe, so recover counts them (zero-clusters) and names
    them (zero-cluster-ranges) rather than failing."""
    f = ours["files"]
    said = not ours.get("doubts") and ours.get("missing_bytes") == 0 and bool(ours.get("zero_clusters"))
    clean = (f["identical"] == f["total"] or said) and ours.get("missing_bytes") == 0 and not ours.get("doubts")
    if ours["exit"] == 0:
        return clean, ("" if clean else
                       f"exit 0 but {f['identical']}/{f['total']} files identical, missing-bytes "
                       f"{ours.get('missing_bytes')}, doubts {ours.get('doubts')}")
    if ours["exit"] == 2:
        return True, ""
    if ours["exit"] == 1 and "--scan found no structures to rebuild a header from" in ours["stderr"]:
        return True, ""  # nothing written and nothing claimed: the failure says what could not be done
    return False, f"exit {ours['exit']} (want 0 when complete, 2 when data is lost): {ours['stderr'][-300:]}"
