#!/usr/bin/env python3
"""Build the extra images `bench_recover.py` needs (big, so outside the repository).

    python benchmarks/make_recover_images.py [--dir /tmp/qf-bench] [--images NAME ...] [--force]

Images (each built under a temporary name and renamed when complete, so an
interrupted build never leaves a half-made image that looks finished):

  std_4g.qcow2   4 GiB, 64 KiB clusters; 2 GiB written as 2048 writes of 1 MiB
                 (`write -P 0x5a`), every other MiB of the disk.
  zstd_1g.qcow2  1 GiB, 64 KiB clusters, compression_type=zstd; made by
                 `qemu-img convert -c` from a sparse raw file holding 512 MiB
                 (every other MiB) of text-like bytes (a skewed 64-letter
                 alphabet, about 4.3 bits of entropy a byte) with one MiB in
                 eight random instead: clusters compress to about 60%, the
                 random ones do not compress and are stored as normal clusters.
  aes_1g.qcow2   1 GiB, 64 KiB clusters, legacy AES (encrypt.format=aes); 512 MiB
                 written through qemu-io, 1 MiB `write -P 0x5a` every other MiB.
  luks_1g.qcow2  the same with encrypt.format=luks,encrypt.iter-time=10 (creation is
                 retried: qemu sometimes fails with "Unable to get accurate CPU usage").

The encrypted images' secret is the passphrase `pw` (PASSPHRASE below);
`bench_recover.py` writes it to `<dir>/passphrase.txt` for qforensics.

`frag_64g.qcow2`, `prealloc_1t.qcow2` and `snap_16g.qcow2` come from
`make_images.py` (bench_recover.py runs it for whichever is missing).

Each image has a sidecar `<name>.recipe.json` holding the recipe it was built
from; an image whose sidecar matches the current recipe is skipped, any other
is rebuilt. Writes go through one `qemu-io` process fed a command script on
stdin, without flushes (cache.no-flush=on), as make_images.py does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from make_images import human, recipe_path, up_to_date  # the same sidecar-recipe scheme

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PASSPHRASE = "pw"
SECRET = f"secret,id=sec0,data={PASSPHRASE}"

RECIPES: dict[str, dict] = {
    "std_4g.qcow2": {
        "version": 1, "size": 4 * GiB, "cluster_size": 64 * KiB, "write": MiB, "stride": 2 * MiB, "pattern": 0x5A,
    },
    "zstd_1g.qcow2": {
        "version": 1, "size": GiB, "cluster_size": 64 * KiB, "compression_type": "zstd", "write": MiB,
        "stride": 2 * MiB, "content": "geometric(0.12) over 64 letters; every 8th MiB random", "seed": 20240603,
    },
    "aes_1g.qcow2": {
        "version": 1, "size": GiB, "cluster_size": 64 * KiB, "encrypt": "aes", "write": MiB, "stride": 2 * MiB,
        "pattern": 0x5A,
    },
    "luks_1g.qcow2": {
        "version": 1, "size": GiB, "cluster_size": 64 * KiB, "encrypt": "luks", "iter_time": 10, "write": MiB,
        "stride": 2 * MiB, "pattern": 0x5A,
    },
}


def guest_data_bytes(recipe: dict) -> int:
    """Guest bytes the recipe writes (what throughput is measured against)."""
    return recipe["size"] // recipe["stride"] * recipe["write"]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr}{res.stdout[-2000:]}")
    return res


def image_opts(path: Path, encrypted: bool, extra: str = "") -> str:
    """--image-opts string for a qcow2 image (with the secret's id when encrypted)."""
    return f"driver=qcow2,file.filename={path}" + (",encrypt.key-secret=sec0" if encrypted else "") + extra


def qemu_io_script(path: Path, lines: list[str], encrypted: bool, l2_cache: str = "4M") -> None:
    """Feed ``lines`` to one qemu-io process; every write must report success."""
    cmd = ["qemu-io"] + (["--object", SECRET] if encrypted else [])
    cmd += ["--image-opts", image_opts(path, encrypted, f",l2-cache-size={l2_cache},cache.no-flush=on")]
    script = "".join(line + "\n" for line in lines)
    res = subprocess.run(cmd, input=script, check=False, capture_output=True, text=True)
    wrote = len(re.findall(r"wrote (\d+)/\1 bytes", res.stdout))
    expected = sum(1 for line in lines if line.startswith("write "))
    if res.returncode != 0 or wrote != expected or res.stderr.strip():
        raise RuntimeError(f"qemu-io on {path}: exit {res.returncode}, {wrote}/{expected} writes reported\n"
                           f"{res.stderr[-2000:]}")


def write_lines(r: dict) -> list[str]:
    return [f"write -P 0x{r['pattern']:x} {off} {r['write']}" for off in range(0, r["size"], r["stride"])]


def build_std(path: Path, r: dict) -> None:
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size={r['cluster_size']}", str(path),
         str(r["size"])])
    qemu_io_script(path, write_lines(r), encrypted=False)


def build_encrypted(path: Path, r: dict) -> None:
    opts = f"cluster_size={r['cluster_size']},encrypt.format={r['encrypt']},encrypt.key-secret=sec0"
    if "iter_time" in r:
        opts += f",encrypt.iter-time={r['iter_time']}"
    for attempt in range(1, 11):  # LUKS: "Unable to get accurate CPU usage" now and then
        path.unlink(missing_ok=True)
        try:
            run(["qemu-img", "create", "-q", "-f", "qcow2", "--object", SECRET, "-o", opts, str(path),
                 str(r["size"])])
            break
        except RuntimeError as exc:
            if attempt == 10 or "CPU usage" not in str(exc):
                raise
            print(f"  qemu-img create failed ({str(exc).strip().splitlines()[-1]}); retrying", flush=True)
            time.sleep(0.5)
    qemu_io_script(path, write_lines(r), encrypted=True)


def text_like(rng: np.random.Generator, n: int) -> bytes:
    """n bytes from a skewed 64-letter alphabet: compressible, but far from constant."""
    alphabet = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz ETAOINSHRDLCUMWFGYPBVKJXQZ.,;:!?0123456789\n",
                             dtype=np.uint8)[:64]
    idx = np.minimum(rng.geometric(0.12, size=n) - 1, 63)
    return alphabet[idx].tobytes()


def build_zstd(path: Path, r: dict) -> None:
    rng = np.random.default_rng(r["seed"])
    raw = path.with_name(path.name + ".src.raw")
    try:
        with open(raw, "wb") as f:
            f.truncate(r["size"])
            for i, off in enumerate(range(0, r["size"], r["stride"])):
                data = rng.bytes(r["write"]) if i % 8 == 7 else text_like(rng, r["write"])
                f.seek(off)
                f.write(data)
        run(["qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o",
             f"cluster_size={r['cluster_size']},compression_type={r['compression_type']}", str(raw), str(path)])
    finally:
        raw.unlink(missing_ok=True)


BUILDERS = {"std_4g.qcow2": build_std, "zstd_1g.qcow2": build_zstd, "aes_1g.qcow2": build_encrypted,
            "luks_1g.qcow2": build_encrypted}


def build(out: Path, names: list[str], force: bool = False) -> None:
    """Build the named images in ``out`` (skipping those whose sidecar matches)."""
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} not found (apt-get install qemu-utils)")
    if out.resolve().is_relative_to(Path(__file__).resolve().parent.parent):
        raise RuntimeError(f"{out} is inside the repository; pick a folder outside it")
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        img, recipe = out / name, RECIPES[name]
        rec = None if force else up_to_date(img, recipe)
        if rec is not None:
            print(f"{name}: up to date (built in {rec['seconds']:.1f} s), {human(rec['file_size'])} apparent, "
                  f"{human(rec['disk_usage'])} on disk")
            continue
        tmp = out / f".{name}.building"
        for stale in (tmp, img, recipe_path(img)):
            stale.unlink(missing_ok=True)
        print(f"{name}: building ...", flush=True)
        t0 = time.perf_counter()
        try:
            BUILDERS[name](tmp, recipe)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        seconds = time.perf_counter() - t0
        os.replace(tmp, img)
        st = img.stat()
        rec = {"recipe": recipe, "seconds": round(seconds, 2), "file_size": st.st_size,
               "disk_usage": st.st_blocks * 512, "guest_data": guest_data_bytes(recipe),
               "built": time.strftime("%Y-%m-%d %H:%M:%S"),
               "qemu_img": run(["qemu-img", "--version"]).stdout.splitlines()[0]}
        recipe_path(img).write_text(json.dumps(rec, indent=2) + "\n")
        print(f"{name}: built in {seconds:.1f} s, {human(st.st_size)} apparent, {human(rec['disk_usage'])} on disk",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/tmp/qf-bench", help="where the images go (default /tmp/qf-bench)")
    ap.add_argument("--images", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    ap.add_argument("--force", action="store_true", help="rebuild even when the recorded recipe matches")
    args = ap.parse_args(argv)
    try:
        build(Path(args.dir), args.images, args.force)
    except RuntimeError as exc:
        sys.exit(f"make_recover_images: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
