#!/usr/bin/env python3
"""Time `qforensics report` on the benchmark images, and the report's load in headless Chromium.

    python benchmarks/bench_report.py [--dir /tmp/qf-bench] [--images prealloc_1t.qcow2 ...] [--runs 3]
                                      [--hash auto|full|sparse] [--keep DIR] [--json FILE]

Build the images first (`python benchmarks/make_images.py --images prealloc_1t.qcow2`).
For each image: one untimed warm-up, then `--runs` interleaved timed runs of
`qemu-img check IMG` (for scale: the whole check qemu does) and `qforensics
report IMG -o REPORT.html --quiet`. Reported: median / min / max wall-clock
seconds, peak RSS (GNU time's %M when installed, as in bench_check.py), the
report's size (target: under 5 MB) and the evidence hash method the report
used. Then the report is opened from a file:// URL in Debian's chromium
(selenium + chromium-driver, as the browser tests do), `--runs` times in a
fresh tab each: the navigation's load-event time and the wall-clock time of
`driver.get` (target: a few seconds, taken as 3 s). The browser part is
skipped, saying why, when selenium or chromium is missing.

The package is run from a frozen copy of the tree (bench_check.freeze_tree),
so edits made by others during a run cannot mix versions; the images are
only read (the script checks size and mtime).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_check import TIME, fingerprint, freeze_tree, machine, run_once

SIZE_TARGET = 5_000_000  # bytes, from the issue: "stay under 5 MB"
LOAD_TARGET_S = 3.0  # "render in a few seconds"


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "all": xs}


def browser_load(report: Path, runs: int) -> dict:
    """Load-event time (navigation timing) and driver.get wall time of the report, in seconds."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return {"skipped": "selenium is not installed (pip install selenium)"}
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        return {"skipped": "chromium / chromium-driver are not installed (apt-get install chromium chromium-driver)"}
    import time

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    loads, gets, rows, cells = [], [], None, None
    try:
        driver.get("about:blank")
        for _ in range(runs):
            driver.switch_to.new_window("tab")
            t0 = time.perf_counter()
            driver.get(report.resolve().as_uri())  # returns after the load event
            gets.append(time.perf_counter() - t0)
            nav = driver.execute_script("const n = performance.getEntriesByType('navigation')[0];"
                                        "return [n.loadEventEnd, n.domContentLoadedEventEnd];")
            loads.append(nav[0] / 1000)
            rows = driver.execute_script("return document.querySelectorAll('tr.finding').length")
            cells = driver.execute_script("return document.querySelectorAll('svg rect').length")
            driver.close()
            driver.switch_to.window(driver.window_handles[0])
    finally:
        driver.quit()
    return {"load_event_s": stats(loads), "get_s": stats(gets), "finding_rows": rows, "map_cells": cells}


def bench_image(path: Path, args, ours: list[str], env: dict, cwd: Path, out_dir: Path) -> dict:
    report = out_dir / (path.stem + ".html")
    qemu_cmd = ["qemu-img", "check", str(path)]
    ours_cmd = [*ours, "report", str(path), "-o", str(report), "--quiet", "--hash", args.hash]
    before = fingerprint(path)
    q_runs, o_runs = [], []
    print(f"{path.name}:", file=sys.stderr, flush=True)
    for i in range(args.runs + 1):
        q = run_once(qemu_cmd, env, cwd)
        o = run_once(ours_cmd, env, cwd)
        if o.exit_code != 0:
            sys.exit(f"bench_report: qforensics report failed ({o.exit_code}): {o.stderr.strip()[:500]}")
        label = "warm-up" if i == 0 else f"run {i}/{args.runs}"
        print(f"  {label}: qemu-img check {q.seconds:6.2f} s {q.peak_mb:6.1f} MB (exit {q.exit_code}) | "
              f"report {o.seconds:6.2f} s {o.peak_mb:6.1f} MB", file=sys.stderr, flush=True)
        if i:
            q_runs.append(q)
            o_runs.append(o)
    changed = fingerprint(path) != before
    html = report.read_text(encoding="utf-8")
    method = "sparse" if "Sparse digest before analysis" in html else "full"
    res = {
        "image": path.name, "runs": args.runs, "apparent_bytes": path.stat().st_size,
        "allocated_bytes": path.stat().st_blocks * 512, "hash": method,
        "qemu_check": {**stats([r.seconds for r in q_runs]), "peak_mb": max(r.peak_mb for r in q_runs),
                       "exit": q_runs[-1].exit_code},
        "report": {**stats([r.seconds for r in o_runs]), "peak_mb": max(r.peak_mb for r in o_runs)},
        "report_bytes": report.stat().st_size, "image_changed": changed,
    }
    print(f"  browser: {args.runs} loads of {report.name}", file=sys.stderr, flush=True)
    res["browser"] = browser_load(report, args.runs)
    return res


def print_result(r: dict) -> None:
    gib = r["apparent_bytes"] / 2**30
    print(f"\n{r['image']}  ({gib:.0f} GiB apparent, {r['allocated_bytes'] / 2**20:.0f} MiB on disk; "
          f"{r['runs']} timed runs, warm cache; evidence hash: {r['hash']})")
    print(f"  {'':<22} {'median s':>9} {'min s':>7} {'max s':>7} {'peak MB':>8}")
    for key, name in (("qemu_check", "qemu-img check"), ("report", "qforensics report")):
        t = r[key]
        print(f"  {name:<22} {t['median']:9.3f} {t['min']:7.3f} {t['max']:7.3f} {t['peak_mb']:8.1f}")
    size_ok = r["report_bytes"] < SIZE_TARGET
    print(f"  report size: {r['report_bytes']:,} bytes ({r['report_bytes'] / 1e6:.2f} MB): "
          f"{'OK' if size_ok else 'MISSED'} (target < 5 MB)")
    b = r["browser"]
    if "skipped" in b:
        print(f"  browser: skipped: {b['skipped']}")
    else:
        le, g = b["load_event_s"], b["get_s"]
        ok = le["max"] < LOAD_TARGET_S
        print(f"  chromium load event: median {le['median']:.3f} s (min {le['min']:.3f}, max {le['max']:.3f}); "
              f"driver.get {g['median']:.3f} s; {b['finding_rows']} finding rows, {b['map_cells']} map cells: "
              f"{'OK' if ok else 'MISSED'} (target < {LOAD_TARGET_S:g} s)")
    if r["image_changed"]:
        print("  !!! THE IMAGE CHANGED during the runs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/tmp/qf-bench", help="where make_images.py put the images")
    ap.add_argument("--images", nargs="+", default=["prealloc_1t.qcow2"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hash", choices=("auto", "full", "sparse"), default="auto")
    ap.add_argument("--keep", metavar="DIR", help="keep the reports in DIR (default: a temporary folder)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    missing = [n for n in args.images if not (Path(args.dir) / n).is_file()]
    if missing:
        sys.exit(f"bench_report: missing {', '.join(missing)} in {args.dir}; "
                 f"run python benchmarks/make_images.py --images {' '.join(missing)}")
    frozen = Path(tempfile.mkdtemp(prefix="qf-bench-code-"))
    out_dir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="qf-bench-reports-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        info = machine()
        info["code_hash"] = freeze_tree(frozen)
        env = {**os.environ, "PYTHONPATH": str(frozen), "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("QFORENSICS_DEBUG", None)
        ours = [sys.executable, "-m", "qforensics"]
        print(f"{info['date']}  {info['cores']} cores, {info['cpu']}, {info['ram_gib']} GiB RAM  Python "
              f"{info['python']}  {info['qemu_img']}\nqforensics at {info['commit']}"
              f"{' + uncommitted ' + ', '.join(info['modified']) if info['modified'] else ''} "
              f"(code hash {info['code_hash']})  RSS via {'GNU time %M' if TIME else 'os.wait4'}  "
              f"command: {shlex.join(ours)} report IMG -o REPORT --quiet --hash {args.hash}")
        results = []
        for name in args.images:
            r = bench_image(Path(args.dir).resolve() / name, args, ours, env, frozen, out_dir)
            results.append(r)
            print_result(r)
        if args.keep:
            print(f"\nreports kept in {out_dir}")
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
        ok = all(r["report_bytes"] < SIZE_TARGET and not r["image_changed"] for r in results)
        return 0 if ok else 1
    finally:
        shutil.rmtree(frozen, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
