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

import sys
import time
from pathlib import Path

import make_images  # the same sidecar-recipe scheme and build loop
import numpy as np
from make_images import run

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


def qemu_io_script(path: Path, lines: list[str], encrypted: bool, l2_cache: str = "4M") -> None:
    """Feed ``lines`` to one qemu-io process (with the secret when ``encrypted``)."""
    make_images.qemu_io_script(path, lines, l2_cache, secret=SECRET if encrypted else None,
                               opts=",encrypt.key-secret=sec0" if encrypted else "")


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
    make_images.build_all(out, names, RECIPES, BUILDERS, force, lambda recipe: {"guest_data": guest_data_bytes(recipe)})


def main(argv: list[str] | None = None) -> int:
    return make_images.main(argv, RECIPES, BUILDERS, lambda recipe: {"guest_data": guest_data_bytes(recipe)})


if __name__ == "__main__":
    sys.exit(main())
