#!/usr/bin/env python3
"""Time qforensics.recovery.locate.detect, the self-locating structure scan recover runs over the data of
orphan L2 windows (issue 16), on 64 MiB of random bytes and of zeros, at 4 KiB and 64 KiB granules.

    python benchmarks/bench_locate.py [--mib 64] [--runs 3]

Prints the best of --runs per case and the rate in GiB/s; for scale, reading 64 MiB from the page cache
is timed the same way. No image is needed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from qforensics.recovery.locate import detect


def best(fn, runs: int) -> float:
    out = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    n = args.mib << 20
    bufs = {"random": np.random.default_rng(4).bytes(n), "zeros": bytes(n)}
    with tempfile.NamedTemporaryFile() as f:
        f.write(bufs["random"])
        f.flush()
        fd = os.open(f.name, os.O_RDONLY)
        try:
            read = best(lambda: os.pread(fd, n, 0), args.runs)
        finally:
            os.close(fd)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.mib} MiB; best of {args.runs}")
    print(f"  page-cache read        {read * 1000:8.1f} ms  {n / read / (1 << 30):6.2f} GiB/s")
    for name, buf in bufs.items():
        for granule in (4096, 65536):
            t = best(lambda b=buf, g=granule: detect(b, g), args.runs)
            print(f"  detect {name:6} {granule:6}  {t * 1000:8.1f} ms  {n / t / (1 << 30):6.2f} GiB/s  "
                  f"({t / read:.2f}x the read)")


if __name__ == "__main__":
    main()
