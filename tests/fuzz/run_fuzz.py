#!/usr/bin/env python3
"""Long-running fuzzer: mutate corpus images and run info, check and graph on them.

    python3 tests/fuzz/run_fuzz.py --minutes 60 [--seed N] [--out DIR]

Prints executions and every distinct failure (exception type and innermost
qforensics frame), with the seed that reproduces it. Exit 1 if any failure.
"""

from __future__ import annotations

import argparse
import gzip
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

from fuzz.mutate import exercise, mutate  # noqa: E402

CORPUS = HERE.parent / "corpus" / "images"


def load_seeds() -> dict[str, bytes]:
    out = {}
    for folder in sorted(CORPUS.iterdir()):
        for f in folder.iterdir():
            if f.name == folder.name + ".qcow2":
                out[folder.name] = f.read_bytes()
            elif f.name == folder.name + ".qcow2.gz" and f.stat().st_size < 200_000:
                out[folder.name] = gzip.decompress(f.read_bytes())
    return out


def site(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/qforensics/" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__} at {where}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--out", type=Path, help="keep one reproducer per distinct failure here")
    args = ap.parse_args()
    seeds = load_seeds()
    names = sorted(seeds)
    rng = random.Random(args.seed)
    failures: dict[str, tuple[str, int, str]] = {}
    deadline = time.monotonic() + args.minutes * 60
    runs = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed.qcow2"
        while time.monotonic() < deadline:
            case, seed, count = rng.choice(names), rng.getrandbits(32), rng.randint(1, 6)
            path.write_bytes(mutate(seeds[case], random.Random(seed), count))
            runs += 1
            try:
                exercise(path)
            except Exception as exc:  # noqa: BLE001 - every escape is a finding of the fuzzer
                key = site(exc)
                if key not in failures:
                    failures[key] = (case, seed, f"{exc}"[:200])
                    print(f"FAILURE {key}: case={case} seed={seed} count={count}: {exc!s:.200}", flush=True)
                    if args.out:
                        args.out.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(path, args.out / f"{len(failures):03d}-{case}-{seed}.qcow2")
    print(f"{runs} executions, {len(failures)} distinct failures (seed {args.seed})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
