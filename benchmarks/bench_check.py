#!/usr/bin/env python3
"""Time `qforensics check` against `qemu-img check` on the benchmark images.

    python benchmarks/bench_check.py [--dir /tmp/qf-bench] [--images NAME ...] [--runs 5] [--json FILE]

For each image: one untimed warm-up of each tool (page cache warm), then
`--runs` interleaved timed runs (qemu, ours, qemu, ours, ...). Reported per
tool: median / min / max wall-clock seconds and peak RSS (the largest
`ru_maxrss` over the runs, the process's own peak and not its siblings', taken
with GNU `/usr/bin/time -f %M` when installed, else from `os.wait4`, which
cannot go below this script's own RSS, see `run_once`). MB means MiB (2**20).

Every run's JSON is compared with qemu's on qemu's keys (qemu omits keys whose
value is zero); any disagreement is printed loudly and makes the exit status 1.

The images are only ever opened by the two tools, both of which open them
read-only (`qemu-img check` without `-r`); the script also checks that each
image's size and mtime are unchanged after its runs.

"ours" is `python -m qforensics` (the interpreter running this script), not
the pyenv shim, whose bash start-up would be charged to us; `--ours` replaces
the command. The package is copied from this work tree to a temporary folder
at start-up and run from there (PYTHONPATH), so that edits others make to the
tree during a long run cannot mix versions in one table; the header names the
commit, the uncommitted files and a hash of the code measured. The copy is
byte-compiled, as an installed package is (the runs have PYTHONDONTWRITEBYTECODE
set, so nothing is written next to the sources; without .pyc files every run
would compile every module, ~65 ms); `--no-compile` measures that case.
`--live-tree` runs the tree itself, compiling at every run (and warns if the
code changed during the run).
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGES = ("prealloc_1t.qcow2", "frag_64g.qcow2", "snap_16g.qcow2")
QEMU_KEYS = ("check-errors", "corruptions", "leaks", "image-end-offset", "total-clusters", "allocated-clusters",
             "fragmented-clusters", "compressed-clusters")
# From the issue: ours/qemu time at most this on the image; never slower than qemu; peak memory below 128 MB.
TIME_TARGET = {"prealloc_1t.qcow2": 0.5, "frag_64g.qcow2": 0.33}
MEM_TARGET_MB = 128


@dataclass
class Run:
    seconds: float
    peak_mb: float
    exit_code: int
    stdout: str
    stderr: str


@dataclass
class Series:
    runs: list[Run] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return [r.seconds for r in self.runs]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def peak_mb(self) -> float:
        return max(r.peak_mb for r in self.runs)


def gnu_time() -> str | None:
    """/usr/bin/time if it is GNU time (``-f %M -o FILE``), else None."""
    path = shutil.which("time", path="/usr/bin:/bin")
    if path is None:
        return None
    res = subprocess.run([path, "-f", "%M", "true"], check=False, capture_output=True, text=True)
    return path if res.returncode == 0 and res.stderr.strip().isdigit() else None


TIME = gnu_time()


def run_once(cmd: list[str], env: dict[str, str], cwd: Path) -> Run:
    """Run cmd to completion; wall-clock seconds and the process's own peak RSS.

    A child forked from this (Python) process inherits our resident set as its
    high-water mark: Linux folds the pre-exec peak into ``ru_maxrss``, so
    ``os.wait4`` alone would never report less than our own ~16 MB. With GNU
    time the tool is forked from a ~1 MB process instead, and time's ``%M``
    (the tool's ``ru_maxrss``) is taken; without it the floor remains.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(mode="r", suffix=".rss") as rss:
        full = [TIME, "-f", "%M", "-o", rss.name, *cmd] if TIME else cmd
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
        peak_kib = usage.ru_maxrss  # KiB on Linux
        if TIME:
            lines = rss.read().split()
            peak_kib = int(lines[-1]) if lines and lines[-1].isdigit() else -1024
        out.seek(0)
        err.seek(0)
        return Run(seconds, peak_kib / 1024, proc.returncode,
                   out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def compare(qemu: Run, ours: Run) -> list[str]:
    """Disagreements on qemu's keys (qemu omits zeros), as printable lines."""
    problems = []
    if qemu.exit_code != ours.exit_code:
        problems.append(f"exit code: qemu {qemu.exit_code}, ours {ours.exit_code}")
    try:
        q = json.loads(qemu.stdout)
    except ValueError:
        return problems + [f"qemu printed no JSON: {qemu.stderr.strip()[:300]}"]
    try:
        o = json.loads(ours.stdout)
    except ValueError:
        return problems + [f"ours printed no JSON: {ours.stderr.strip()[:300]}"]
    for key in QEMU_KEYS:
        if o.get(key) != q.get(key, 0):
            problems.append(f"{key}: qemu {q.get(key, 0)}, ours {o.get(key)}")
    return problems


def fingerprint(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def code_hash(root: Path = REPO) -> str:
    """Hash of the qforensics sources under root (the package's .py files)."""
    h = hashlib.sha1()
    for f in sorted((root / "qforensics").rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def freeze_tree(dest: Path, compile_code: bool = True) -> str:
    """Copy the package into dest, so edits made to the tree during a long run cannot mix versions,
    and byte-compile the copy.

    The copy is taken twice if the tree changed while copying; returns its code hash.
    """
    for _ in range(5):
        before = code_hash()
        shutil.rmtree(dest / "qforensics", ignore_errors=True)
        shutil.copytree(REPO / "qforensics", dest / "qforensics",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if code_hash(dest) == before == code_hash():
            if compile_code:
                # byte-compiled, as `pip install` leaves an installed package: PYTHONDONTWRITEBYTECODE (set
                # for the runs, and in some environments) would otherwise charge every run ~65 ms of compiling
                compileall.compile_dir(dest / "qforensics", quiet=1)
            return before
        time.sleep(1)
    sys.exit("bench_check: qforensics/ keeps changing while being copied; try again")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))

    def git(*a: str) -> str:
        res = subprocess.run(["git", "-C", str(REPO), *a], check=False, capture_output=True, text=True)
        return res.stdout.strip()

    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cores": os.cpu_count(), "cpu": cpu,
            "ram_gib": round(mem_kb / 2**20, 1), "python": platform.python_version(),
            "qemu_img": subprocess.run(["qemu-img", "--version"], check=False, capture_output=True,
                                       text=True).stdout.splitlines()[0],
            "commit": git("rev-parse", "--short", "HEAD"),
            "modified": [line.split(maxsplit=1)[1] for line in
                         git("status", "--porcelain", "--untracked-files=no", "--", "qforensics").splitlines()],
            "code_hash": code_hash()}


def bench_image(path: Path, runs: int, ours_cmd: list[str], env: dict[str, str], cwd: Path) -> dict:
    qemu_cmd = ["qemu-img", "check", "--output=json", str(path)]
    ours_cmd = [*ours_cmd, "check", "--output", "json", str(path)]
    before = fingerprint(path)
    series = {"qemu": Series(), "ours": Series()}
    problems: set[str] = set()

    def step(label: str, timed: bool) -> None:
        q = run_once(qemu_cmd, env, cwd)
        o = run_once(ours_cmd, env, cwd)
        problems.update(compare(q, o))
        if timed:
            series["qemu"].runs.append(q)
            series["ours"].runs.append(o)
        print(f"  {label}: qemu {q.seconds:7.2f} s {q.peak_mb:6.1f} MB | ours {o.seconds:7.2f} s {o.peak_mb:6.1f} MB",
              file=sys.stderr, flush=True)

    print(f"{path.name}:", file=sys.stderr, flush=True)
    step("warm-up", timed=False)
    for i in range(runs):
        step(f"run {i + 1}/{runs}", timed=True)
    if fingerprint(path) != before:
        problems.add(f"THE IMAGE CHANGED (size, mtime_ns) {before} -> {fingerprint(path)}")
    q, o = series["qemu"], series["ours"]
    return {
        "image": path.name, "runs": runs,
        "qemu": {"median_s": q.median, "min_s": min(q.times), "max_s": max(q.times), "peak_mb": q.peak_mb,
                 "times_s": q.times},
        "ours": {"median_s": o.median, "min_s": min(o.times), "max_s": max(o.times), "peak_mb": o.peak_mb,
                 "times_s": o.times},
        "ratio": o.median / q.median if q.median else float("inf"),
        "agree": not problems, "problems": sorted(problems),
    }


def verdict(res: dict) -> str:
    target = TIME_TARGET.get(res["image"])
    parts = []
    if target is not None:
        parts.append(f"time {'OK' if res['ratio'] <= target else 'MISSED'} (target <= {target}x)")
    parts.append(f"memory {'OK' if res['ours']['peak_mb'] < MEM_TARGET_MB else 'MISSED'} (target < {MEM_TARGET_MB} MB)")
    return ", ".join(parts)


def print_table(res: dict) -> None:
    print(f"\n{res['image']}  ({res['runs']} timed runs each, warm cache)")
    print(f"  {'tool':<6} {'median s':>9} {'min s':>8} {'max s':>8} {'peak MB':>8}")
    for tool in ("qemu", "ours"):
        t = res[tool]
        print(f"  {tool:<6} {t['median_s']:9.3f} {t['min_s']:8.3f} {t['max_s']:8.3f} {t['peak_mb']:8.1f}")
    print(f"  ratio ours/qemu: {res['ratio']:.2f}x   {verdict(res)}")
    if res["agree"]:
        print(f"  outputs agree with qemu on {', '.join(QEMU_KEYS)}")
    else:
        print("  " + "!" * 70)
        print(f"  !!! MISMATCH with qemu-img check on {res['image']}:")
        for p in res["problems"]:
            print(f"  !!!   {p}")
        print("  " + "!" * 70)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/tmp/qf-bench", help="where make_images.py put the images")
    ap.add_argument("--images", nargs="+", choices=IMAGES, default=list(IMAGES))
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each tool per image (default 5)")
    ap.add_argument("--ours", default=f"{shlex.quote(sys.executable)} -m qforensics",
                    help="command that runs qforensics (default: this interpreter, -m qforensics)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--live-tree", action="store_true",
                    help="run qforensics from the work tree itself rather than from a copy frozen at start-up")
    ap.add_argument("--no-compile", action="store_true",
                    help="do not byte-compile the frozen copy: every run compiles the package's modules again")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    missing = [n for n in args.images if not (Path(args.dir) / n).is_file()]
    if missing:
        sys.exit(f"bench_check: missing {', '.join(missing)} in {args.dir}; run benchmarks/make_images.py first")
    frozen = Path(tempfile.mkdtemp(prefix="qf-bench-code-"))
    try:
        return bench(args, frozen)
    finally:
        shutil.rmtree(frozen, ignore_errors=True)


def bench(args: argparse.Namespace, frozen: Path) -> int:
    env = dict(os.environ)
    info = machine()
    if args.live_tree:
        code_root = REPO
    else:
        info["code_hash"] = freeze_tree(frozen, compile_code=not args.no_compile)
        code_root = frozen
    info["bytecode"] = "compiled at every run" if args.live_tree or args.no_compile else "byte-compiled copy"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_root), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # nothing written next to the sources
    env.pop("QFORENSICS_DEBUG", None)
    info["rss_method"] = "GNU time %M" if TIME else "os.wait4 (floor: this script's own RSS)"
    dirty = f" + uncommitted {', '.join(info['modified'])}" if info["modified"] else ""
    where = "the live tree" if args.live_tree else "a frozen copy"
    print(f"{info['date']}  {info['cores']} cores, {info['cpu']}, {info['ram_gib']} GiB RAM  Python {info['python']}  "
          f"{info['qemu_img']}\nqforensics at {info['commit']}{dirty} (code hash {info['code_hash']}, run from "
          f"{where}, {info['bytecode']})  RSS via {info['rss_method']}")
    results = []
    for name in args.images:
        # cwd is the code root too: `python -m` puts the cwd first on sys.path
        res = bench_image(Path(args.dir).resolve() / name, args.runs, shlex.split(args.ours), env, code_root)
        results.append(res)
        print_table(res)
        sys.stdout.flush()

    if args.live_tree and code_hash() != info["code_hash"]:
        print("\n" + "!" * 72 + "\n!!! qforensics/ CHANGED DURING THE RUN (code hash "
              f"{info['code_hash']} -> {code_hash()}): the figures mix versions; run again\n" + "!" * 72)
    print("\nsummary")
    print(f"  {'image':<20} {'qemu s':>8} {'ours s':>8} {'ours/qemu':>10} {'qemu MB':>8} {'ours MB':>8}  agree")
    for r in results:
        print(f"  {r['image']:<20} {r['qemu']['median_s']:8.3f} {r['ours']['median_s']:8.3f} {r['ratio']:9.2f}x "
              f"{r['qemu']['peak_mb']:8.1f} {r['ours']['peak_mb']:8.1f}  {'yes' if r['agree'] else 'NO !!!'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    return 0 if all(r["agree"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
