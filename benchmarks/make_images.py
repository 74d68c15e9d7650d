#!/usr/bin/env python3
"""Build the benchmark images for `bench_check.py` (big, so outside the repository).

    python benchmarks/make_images.py [--dir /tmp/qf-bench] [--images NAME ...] [--force]

Images (each built under a temporary name and renamed when complete, so an
interrupted build never leaves a half-made image that looks finished):

  prealloc_1t.qcow2  1 TiB, 64 KiB clusters, preallocation=metadata: every L2 entry
                     (16 M of them) points at a cluster; ~160 MiB on disk, sparse.
  frag_64g.qcow2     64 GiB, 4 KiB clusters, 262144 single-cluster writes (1 GiB) in
                     random guest order (fixed seed), so host allocation is scattered:
                     ~87% of clusters are fragmented by qemu-img check's count.
  snap_16g.qcow2     16 GiB, 64 KiB clusters, 4 rounds of "write ~300 MiB (1 MiB chunks
                     at random, partly overlapping offsets, a new pattern per round),
                     then qemu-img snapshot -c", then 128 MiB more on the active layer,
                     so snapshots share clusters and diverge.

Each image has a sidecar `<name>.recipe.json` holding the recipe it was built
from; an image whose sidecar matches the current recipe is skipped, any other
is rebuilt. Creation time of each image is printed (and kept in the sidecar).
The writes go through one `qemu-io` process fed a command script on stdin,
with cache=unsafe semantics (no flushes) and an L2 cache big enough for the
whole image, which is what makes 262144 writes take about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

RECIPES: dict[str, dict] = {
    "prealloc_1t.qcow2": {
        "version": 1, "size": TiB, "cluster_size": 64 * KiB, "preallocation": "metadata",
    },
    "frag_64g.qcow2": {
        "version": 1, "size": 64 * GiB, "cluster_size": 4 * KiB,
        "writes": 262144, "write_size": 4 * KiB, "pattern": 0x5A, "seed": 20240601,
    },
    "snap_16g.qcow2": {
        "version": 1, "size": 16 * GiB, "cluster_size": 64 * KiB, "seed": 20240602,
        "snapshots": 4, "chunk": MiB, "chunks_per_round": 300, "final_chunks": 128,
    },
}


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr}{res.stdout[-2000:]}")
    return res


def qemu_img_create(path: Path, size: int, **opts) -> None:
    o = ",".join(f"{k}={v}" for k, v in opts.items())
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", o, str(path), str(size)])


def qemu_io_script(path: Path, lines: list[str], l2_cache: str = "4M", *, secret: str | None = None,
                   opts: str = "") -> None:
    """Feed `lines` to one qemu-io process (with the --object ``secret`` and extra image ``opts``, if
    any); every write must report success."""
    cmd = ["qemu-io"] + (["--object", secret] if secret else [])
    cmd += ["--image-opts", f"driver=qcow2,file.filename={path}{opts},l2-cache-size={l2_cache},cache.no-flush=on"]
    script = "".join(line + "\n" for line in lines)
    res = subprocess.run(cmd, input=script, check=False, capture_output=True, text=True)
    wrote = len(re.findall(r"wrote (\d+)/\1 bytes", res.stdout))
    expected = sum(1 for line in lines if line.startswith("write "))
    if res.returncode != 0 or wrote != expected or res.stderr.strip():
        raise RuntimeError(f"qemu-io on {path}: exit {res.returncode}, {wrote}/{expected} writes reported\n"
                           f"{res.stderr[-2000:]}")


def build_prealloc(path: Path, r: dict) -> None:
    qemu_img_create(path, r["size"], preallocation=r["preallocation"], cluster_size=r["cluster_size"])


def build_frag(path: Path, r: dict) -> None:
    qemu_img_create(path, r["size"], cluster_size=r["cluster_size"])
    rng = random.Random(r["seed"])
    slots = rng.sample(range(r["size"] // r["write_size"]), r["writes"])  # distinct, random guest order
    ws = r["write_size"]
    lines = [f"write -P 0x{r['pattern']:x} {s * ws} {ws}" for s in slots]
    qemu_io_script(path, lines, l2_cache="256M")


def build_snap(path: Path, r: dict) -> None:
    qemu_img_create(path, r["size"], cluster_size=r["cluster_size"])
    rng = random.Random(r["seed"])
    chunk = r["chunk"]
    n_chunks = r["size"] // chunk
    # Each round writes a fresh random sample of chunks: on a 16 GiB disk 300 of 16384
    # chunks, so rounds overlap a little (diverging copies) and mostly share.
    for i in range(1, r["snapshots"] + 1):
        picks = rng.sample(range(n_chunks), r["chunks_per_round"])
        qemu_io_script(path, [f"write -P 0x{0x10 * i:x} {c * chunk} {chunk}" for c in picks], l2_cache="4M")
        run(["qemu-img", "snapshot", "-c", f"snap{i}", str(path)])
    picks = rng.sample(range(n_chunks), r["final_chunks"])
    qemu_io_script(path, [f"write -P 0xee {c * chunk} {chunk}" for c in picks], l2_cache="4M")


BUILDERS = {"prealloc_1t.qcow2": build_prealloc, "frag_64g.qcow2": build_frag, "snap_16g.qcow2": build_snap}


def recipe_path(img: Path) -> Path:
    return img.with_name(img.name + ".recipe.json")


def up_to_date(img: Path, recipe: dict) -> dict | None:
    side = recipe_path(img)
    if not (img.exists() and side.exists()):
        return None
    try:
        rec = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("recipe") == recipe and rec.get("file_size") == img.stat().st_size else None


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def build_all(out: Path, names: list[str], recipes: dict[str, dict], builders: dict, force: bool = False,
              record=lambda recipe: {}) -> None:
    """Build the named images in ``out``, each under a temporary name renamed when complete, skipping
    those whose sidecar matches their recipe; ``record(recipe)`` adds fields to the sidecar."""
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} not found (apt-get install qemu-utils)")
    if out.resolve().is_relative_to(Path(__file__).resolve().parent.parent):
        raise RuntimeError(f"{out} is inside the repository; pick a folder outside it")
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        img, recipe = out / name, recipes[name]
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
            builders[name](tmp, recipe)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        seconds = time.perf_counter() - t0
        os.replace(tmp, img)
        st = img.stat()
        rec = {"recipe": recipe, "seconds": round(seconds, 2), "file_size": st.st_size,
               "disk_usage": st.st_blocks * 512, **record(recipe), "built": time.strftime("%Y-%m-%d %H:%M:%S"),
               "qemu_img": run(["qemu-img", "--version"]).stdout.splitlines()[0]}
        recipe_path(img).write_text(json.dumps(rec, indent=2) + "\n")
        print(f"{name}: built in {seconds:.1f} s, {human(st.st_size)} apparent, {human(rec['disk_usage'])} on disk",
              flush=True)


def main(argv: list[str] | None = None, recipes: dict[str, dict] = RECIPES, builders: dict = BUILDERS,
         record=lambda recipe: {}) -> int:
    """The command line of this script and of make_recover_images.py (their own recipes and builders)."""
    prog = Path(sys.argv[0]).stem
    ap = argparse.ArgumentParser(prog=prog, description=(sys.modules["__main__"].__doc__ or "").split("\n\n")[0])
    ap.add_argument("--dir", default="/tmp/qf-bench", help="where the images go (default /tmp/qf-bench)")
    ap.add_argument("--images", nargs="+", choices=sorted(recipes), default=list(recipes))
    ap.add_argument("--force", action="store_true", help="rebuild even when the recorded recipe matches")
    args = ap.parse_args(argv)
    try:
        build_all(Path(args.dir), args.images, recipes, builders, args.force, record)
    except RuntimeError as exc:
        sys.exit(f"{prog}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
