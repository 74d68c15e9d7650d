#!/usr/bin/env python3
"""Build the file-system images of `bench_recover_scan.py` (issue 16 point 8): a guest disk with a GPT and
one ext4 partition full of files, as qcow2, intact and with its active L1 table zeroed.

    python benchmarks/make_fs_bench.py [--dir /tmp/qf-fsbench] [--size-gib 16] [--data-gib 4] [--keep-raw]
                                       [--keep-src] [--force]

What is built, in --dir (default /tmp/qf-fsbench; refused inside the repository):

  fs_intact.qcow2     `qemu-img convert -f raw -O qcow2 -o cluster_size=65536` of the raw disk below
  fs_l1zero.qcow2     a copy of it with the active L1 table zeroed (l1_size * 8 bytes at
                      l1_table_offset: header offsets 40, u64 big-endian, and 36, u32)
  fs_manifest.json    every file of the guest file system: its path, size and SHA-256
  fs_recipe.json      the recipe, the build times and the sizes of each stage
  fs.raw              the raw disk itself, only with --keep-raw (otherwise deleted after the conversion)

The raw disk: a sparse file of --size-gib GiB; a GPT (sgdisk, fixed disk and partition GUIDs) with one
Linux partition from sector 2048 (1 MiB) to the last usable sector; in it an ext4 file system (4 KiB
blocks, fixed UUID, hash seed and time) made by `mke2fs -t ext4 -d SRC -E offset=1048576`, which writes
the files of SRC straight into the disk file without mounting anything. SRC is a folder of generated
files, --data-gib GiB in all (deleted after mke2fs unless --keep-src: its contents are a function of the
seed, and the manifest keeps their hashes):

  - three big files, /big/b0.bin .. b2.bin, of 100, 250 and 500 MiB (scaled down by data/4 GiB when
    --data-gib is below 4);
  - the rest in files of 64 KiB * 256 ** (u ** 2) bytes (u uniform in [0, 1): 64 KiB to 16 MiB, most
    of them small; about 2000 files for 4 GiB), byte-sized (not block multiples), spread over 20
    folders /d00 .. /d19 as /dNN/fNNNN.bin.

Every file's content is pseudo-random, from numpy's SFC64 seeded with (seed, file number): see
`file_content`, which bench_recover_scan.py also uses to regenerate a file and count its correct blocks.

Re-runnable: each stage (the intact image with its manifest, then the damaged copy) is built under a
temporary name, renamed when complete and recorded in fs_recipe.json; a stage whose recorded recipe
matches and whose file is there with the recorded size is skipped (`--force` rebuilds all).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from make_images import human  # benchmarks/ is on sys.path when run as a script

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
REPO = Path(__file__).resolve().parent.parent

INTACT, DAMAGED, MANIFEST, RECIPE, RAW = "fs_intact.qcow2", "fs_l1zero.qcow2", "fs_manifest.json", "fs_recipe.json", "fs.raw"
PART_START_SECTOR = 2048
PART_OFFSET = PART_START_SECTOR * 512  # 1048576: the ext4 file system's offset in the disk
DISK_GUID = "5ec0f5b1-0000-4000-8000-000000000016"
PART_GUID = "5ec0f5b1-0001-4000-8000-000000000016"
FS_UUID = "5ec0f5b1-0002-4000-8000-000000000016"
FAKE_TIME = 1764547200  # 2025-12-01 00:00 UTC: mke2fs's clock and the files' times
GEN_CHUNK = 64 * MiB  # files are generated and hashed in pieces of this size


def recipe_for(size_gib: float, data_gib: float) -> dict:
    return {
        "version": 1, "size": int(size_gib * GiB), "data": int(data_gib * GiB), "seed": 20261204,
        "cluster_size": 64 * KiB, "partition": {"table": "gpt", "start_sector": PART_START_SECTOR,
                                                 "end": "last usable", "type": "8300",
                                                 "disk_guid": DISK_GUID, "part_guid": PART_GUID},
        "fs": {"type": "ext4", "block_size": 4096, "uuid": FS_UUID, "fake_time": FAKE_TIME,
               "how": "mke2fs -t ext4 -d SRC -E offset=1048576,nodiscard"},
        "files": {"big_mib": [100, 250, 500], "big_scale": "min(1, data / 4 GiB)", "small": "64 KiB * 256 ** (u ** 2)",
                  "dirs": 20, "content": "numpy SFC64((seed, index)).random_raw"},
        "damage": "active L1 table zeroed (l1_size * 8 bytes at l1_table_offset)",
    }


# -- the files -------------------------------------------------------------------------------------------

def file_list(recipe: dict) -> list[dict]:
    """[{path, size, index}] of every generated file, in generation order (a function of the recipe)."""
    rng = np.random.Generator(np.random.SFC64(recipe["seed"]))
    data = recipe["data"]
    scale = min(1.0, data / (4 * GiB))
    files = []
    for i, mib in enumerate(recipe["files"]["big_mib"]):
        files.append({"path": f"/big/b{i}.bin", "size": max(64 * KiB, int(mib * MiB * scale))})
    left = data - sum(f["size"] for f in files)
    n = 0
    while left >= 64 * KiB:
        size = min(left, int(64 * KiB * 256 ** (rng.random() ** 2)))
        d = int(rng.integers(0, recipe["files"]["dirs"]))
        files.append({"path": f"/d{d:02d}/f{n:04d}.bin", "size": size})
        left -= size
        n += 1
    for i, f in enumerate(files):
        f["index"] = i
    return files


def file_content(seed: int, index: int, size: int, chunk: int = GEN_CHUNK):
    """The bytes of file ``index``, in pieces of at most ``chunk`` bytes (chunk a multiple of 8)."""
    bg = np.random.SFC64([seed, index])
    done = 0
    while done < size:
        n = min(chunk, size - done)
        yield bg.random_raw((n + 7) // 8).view(np.uint8)[:n]
        done += n


def write_files(src: Path, recipe: dict) -> list[dict]:
    """Generate every file under src; the manifest rows (path, size, sha256)."""
    rows = []
    for f in file_list(recipe):
        path = src / f["path"].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with open(path, "wb") as out:
            for piece in file_content(recipe["seed"], f["index"], f["size"]):
                h.update(piece)
                out.write(piece)
        os.utime(path, (FAKE_TIME, FAKE_TIME))
        rows.append({"path": f["path"], "size": f["size"], "sha256": h.hexdigest(), "index": f["index"]})
    for d in sorted({p.parent for p in src.rglob("*.bin")}, reverse=True):
        os.utime(d, (FAKE_TIME, FAKE_TIME))
    return rows


# -- the disk --------------------------------------------------------------------------------------------

def run(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr}{res.stdout[-2000:]}")
    return res


def partition_sectors(raw: Path) -> tuple[int, int]:
    """(first, last) sector of partition 1, from sgdisk -i."""
    out = run(["sgdisk", "-i", "1", str(raw)]).stdout
    first = int(next(line for line in out.splitlines() if line.startswith("First sector:")).split()[2])
    last = int(next(line for line in out.splitlines() if line.startswith("Last sector:")).split()[2])
    return first, last


def build_raw(raw: Path, src: Path, recipe: dict) -> dict:
    """The raw disk: sparse file, GPT, ext4 with the files of src. Returns facts for the recipe file."""
    with open(raw, "wb") as f:
        f.truncate(recipe["size"])
    p = recipe["partition"]
    run(["sgdisk", "-U", p["disk_guid"], "-n", f"1:{p['start_sector']}:0", "-t", f"1:{p['type']}",
         "-u", f"1:{p['part_guid']}", "-c", "1:qf-fsbench", str(raw)])
    first, last = partition_sectors(raw)
    if first * 512 != PART_OFFSET:
        raise RuntimeError(f"partition 1 starts at sector {first}, expected {PART_START_SECTOR}")
    bs = recipe["fs"]["block_size"]
    blocks = (last - first + 1) * 512 // bs
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(recipe["fs"]["fake_time"]))
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(bs), "-L", "qf-fsbench", "-U", recipe["fs"]["uuid"],
         "-E", f"offset={PART_OFFSET},hash_seed={recipe['fs']['uuid']},nodiscard", "-d", str(src), str(raw),
         str(blocks)], env=env)
    verify = run(["sgdisk", "-v", str(raw)]).stdout
    if "No problems found" not in verify:
        raise RuntimeError(f"sgdisk -v after mke2fs:\n{verify}")
    return {"partition_sectors": [first, last], "fs_blocks": blocks}


def l1_of(path: Path) -> tuple[int, int]:
    """(l1_table_offset, l1_size) from the qcow2 header."""
    with open(path, "rb") as f:
        head = f.read(48)
    if head[:4] != b"QFI\xfb":
        raise RuntimeError(f"{path} is not a qcow2 image")
    return struct.unpack(">Q", head[40:48])[0], struct.unpack(">I", head[36:40])[0]


def zero_l1(path: Path) -> dict:
    off, n = l1_of(path)
    with open(path, "r+b") as f:
        f.seek(off)
        old = f.read(n * 8)
        f.seek(off)
        f.write(bytes(n * 8))
        f.flush()
        os.fsync(f.fileno())
    return {"l1_table_offset": off, "l1_size": n, "l1_nonzero_entries_zeroed": sum(
        1 for i in range(n) if old[8 * i:8 * i + 8] != bytes(8))}


# -- the stages ------------------------------------------------------------------------------------------

def sizes(path: Path) -> dict:
    st = path.stat()
    return {"file_size": st.st_size, "disk_usage": st.st_blocks * 512}


def load_state(d: Path, recipe: dict) -> dict:
    try:
        state = json.loads((d / RECIPE).read_text())
    except (OSError, ValueError):
        return {"recipe": recipe, "stages": {}}
    if state.get("recipe") != recipe:
        return {"recipe": recipe, "stages": {}}
    return state


def stage_ok(d: Path, state: dict, stage: str, name: str) -> bool:
    rec = state["stages"].get(stage)
    p = d / name
    return bool(rec) and p.is_file() and p.stat().st_size == rec["file_size"]


def save_state(d: Path, state: dict) -> None:
    tmp = d / f".{RECIPE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, d / RECIPE)


def build(d: Path, recipe: dict, keep_raw: bool = False, keep_src: bool = False, force: bool = False) -> dict:
    for tool in ("qemu-img", "sgdisk", "mke2fs"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} not found (qemu-utils, gdisk, e2fsprogs)")
    if d.resolve().is_relative_to(REPO):
        raise RuntimeError(f"{d} is inside the repository; pick a folder outside it")
    d.mkdir(parents=True, exist_ok=True)
    state = {"recipe": recipe, "stages": {}} if force else load_state(d, recipe)
    qemu_version = run(["qemu-img", "--version"]).stdout.splitlines()[0]

    if stage_ok(d, state, "intact", INTACT) and (d / MANIFEST).is_file():
        rec = state["stages"]["intact"]
        print(f"{INTACT}: up to date (built in {rec['seconds']:.1f} s), {human(rec['file_size'])}, "
              f"{rec['files']} files, {human(rec['data_bytes'])} of file data", flush=True)
        if keep_raw and not (d / RAW).is_file():
            t0 = time.perf_counter()
            run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(d / INTACT), str(d / f".{RAW}.building")])
            os.replace(d / f".{RAW}.building", d / RAW)
            print(f"{RAW}: converted back from {INTACT} in {time.perf_counter() - t0:.1f} s (--keep-raw)", flush=True)
    else:
        state["stages"] = {}
        save_state(d, state)
        for stale in (INTACT, DAMAGED, MANIFEST, RAW):
            (d / stale).unlink(missing_ok=True)
        src, raw, tmp = d / ".src.building", d / f".{RAW}.building", d / f".{INTACT}.building"
        shutil.rmtree(src, ignore_errors=True)
        raw.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
        t_all = time.perf_counter()
        try:
            print(f"files: generating {human(recipe['data'])} in {src} ...", flush=True)
            t0 = time.perf_counter()
            rows = write_files(src, recipe)
            t_files = time.perf_counter() - t0
            print(f"files: {len(rows)} files, {human(sum(r['size'] for r in rows))}, in {t_files:.1f} s", flush=True)
            t0 = time.perf_counter()
            facts = build_raw(raw, src, recipe)
            t_mkfs = time.perf_counter() - t0
            raw_sizes = sizes(raw)
            print(f"{RAW}: GPT + ext4 ({facts['fs_blocks']} blocks of 4 KiB at offset {PART_OFFSET}) in "
                  f"{t_mkfs:.1f} s, {human(raw_sizes['file_size'])} apparent, {human(raw_sizes['disk_usage'])} on "
                  f"disk", flush=True)
            src_usage = sum(p.stat().st_blocks * 512 for p in src.rglob("*") if p.is_file())
            if not keep_src:
                shutil.rmtree(src)
            t0 = time.perf_counter()
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", f"cluster_size={recipe['cluster_size']}",
                 str(raw), str(tmp)])
            t_convert = time.perf_counter() - t0
        except BaseException:
            tmp.unlink(missing_ok=True)
            raw.unlink(missing_ok=True)
            if not keep_src:
                shutil.rmtree(src, ignore_errors=True)
            raise
        (d / MANIFEST).write_text(json.dumps({"partition_offset": PART_OFFSET, "seed": recipe["seed"],
                                              "files": rows}, indent=1) + "\n")
        os.replace(tmp, d / INTACT)
        if keep_raw:
            os.replace(raw, d / RAW)
        else:
            raw.unlink()
        if keep_src:
            shutil.rmtree(d / "src", ignore_errors=True)
            os.replace(src, d / "src")
        seconds = time.perf_counter() - t_all
        l1_off, l1_size = l1_of(d / INTACT)
        state["stages"]["intact"] = {
            **sizes(d / INTACT), "seconds": round(seconds, 2), "seconds_files": round(t_files, 2),
            "seconds_raw": round(t_mkfs, 2), "seconds_convert": round(t_convert, 2), "files": len(rows),
            "data_bytes": sum(r["size"] for r in rows), "raw": raw_sizes, "src_disk_usage": src_usage, **facts,
            "l1_table_offset": l1_off, "l1_size": l1_size, "raw_kept": keep_raw,
            "built": time.strftime("%Y-%m-%d %H:%M:%S"), "qemu_img": qemu_version,
            "mke2fs": run(["mke2fs", "-V"]).stderr.splitlines()[0]}
        save_state(d, state)
        rec = state["stages"]["intact"]
        print(f"{INTACT}: built in {seconds:.1f} s (files {t_files:.1f}, raw disk {t_mkfs:.1f}, convert "
              f"{t_convert:.1f}), {human(rec['file_size'])}, {human(rec['disk_usage'])} on disk", flush=True)

    if stage_ok(d, state, "damaged", DAMAGED):
        rec = state["stages"]["damaged"]
        print(f"{DAMAGED}: up to date (built in {rec['seconds']:.1f} s), L1 of {rec['l1_size']} entries zeroed at "
              f"0x{rec['l1_table_offset']:x}", flush=True)
    else:
        tmp = d / f".{DAMAGED}.building"
        tmp.unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            shutil.copyfile(d / INTACT, tmp)
            facts = zero_l1(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, d / DAMAGED)
        seconds = time.perf_counter() - t0
        state["stages"]["damaged"] = {**sizes(d / DAMAGED), "seconds": round(seconds, 2), **facts,
                                      "from": INTACT, "built": time.strftime("%Y-%m-%d %H:%M:%S")}
        save_state(d, state)
        print(f"{DAMAGED}: built in {seconds:.1f} s: {facts['l1_size']} L1 entries "
              f"({facts['l1_nonzero_entries_zeroed']} in use) zeroed at 0x{facts['l1_table_offset']:x}", flush=True)

    used = sum(p.stat().st_blocks * 512 for p in d.rglob("*") if p.is_file())
    print(f"{d}: {human(used)} on disk in all", flush=True)
    return state


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/tmp/qf-fsbench", help="where the images go (default /tmp/qf-fsbench)")
    ap.add_argument("--size-gib", type=float, default=16, help="virtual size of the disk (default 16)")
    ap.add_argument("--data-gib", type=float, default=4, help="file data in the ext4 file system (default 4)")
    ap.add_argument("--keep-raw", action="store_true", help=f"keep the raw disk as {RAW}")
    ap.add_argument("--keep-src", action="store_true", help="keep the generated files as src/")
    ap.add_argument("--force", action="store_true", help="rebuild even when the recorded recipe matches")
    args = ap.parse_args(argv)
    if args.data_gib > args.size_gib * 0.8:
        ap.error("--data-gib must leave room in the file system (at most 80% of --size-gib)")
    try:
        build(Path(args.dir), recipe_for(args.size_gib, args.data_gib), args.keep_raw, args.keep_src, args.force)
    except RuntimeError as exc:
        sys.exit(f"make_fs_bench: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
