#!/usr/bin/env python3
"""Time `qforensics recover` against `qemu-img convert -O raw`, side by side.

    python benchmarks/bench_recover.py [--dir /tmp/qf-bench] [--images NAME ...] [--runs 3] [--json FILE]

Images (under --dir, default /tmp/qf-bench; built when missing, see below):

  std_4g.qcow2       4 GiB, 2 GiB written in 1 MiB writes, every other MiB
  frag_64g.qcow2     64 GiB, 4 KiB clusters, 1 GiB of scattered 4 KiB writes
  prealloc_1t.qcow2  1 TiB, preallocation=metadata (no data: the output must stay sparse)
  zstd_1g.qcow2      1 GiB, 512 MiB of text-like and random data, zstd-compressed clusters
  aes_1g.qcow2       1 GiB, legacy AES, 512 MiB written
  luks_1g.qcow2      1 GiB, LUKS1, 512 MiB written
  snap_16g.qcow2     16 GiB, 4 internal snapshots; the active layer is recovered

The first three of `make_images.py`'s are reused when present (never deleted or
rebuilt; `make_images.py --images NAME` is run for a missing one), the others
come from `make_recover_images.py`, which skips images whose sidecar recipe
matches. The encrypted images' passphrase is `pw`: qemu gets it as
`--object secret,id=sec0,data=pw --image-opts driver=qcow2,file.filename=IMG,encrypt.key-secret=sec0`,
qforensics as `--passphrase-file DIR/passphrase.txt`.

For each image: one untimed warm-up of each tool (page cache warm), whose two
outputs are compared (sparse-aware: the SEEK_DATA/SEEK_HOLE extents of both
files, bytes compared wherever either has data, holes read as zeros; a 1 TiB
sparse output takes well under a second); then `--runs` interleaved timed
rounds (qemu then ours, ours then qemu, ...). Outputs go to DIR/out/ and are deleted
after every run (then `sync`, untimed, so no run pays for another's
writeback; likewise once before each image's first run). Reported per tool:
median / min / max wall-clock seconds, median CPU seconds (user + system,
from wait4: all the tool's threads, qemu-img's I/O workers included; a
steadier figure than wall-clock time on a shared machine), peak RSS (GNU
`/usr/bin/time -f %M`, the process's own ru_maxrss; without it `os.wait4`,
whose figure cannot go below this script's own RSS), throughput
in MiB/s of guest data (the bytes `qemu-img map` reports as data and not
zero, measured once, untimed), and the allocated size of the output
(st_blocks * 512). MB means MiB throughout. Besides the ratio of the medians
(what the targets judge), two steadier ratios are printed: the median of the
rounds' own ratios (two runs back to back share the machine's state), and
the ratio of each tool's fastest run.

A mismatch between the outputs, a non-zero exit of either tool, or a change to
an image (size, mtime) is printed between rows of `!!!` and makes the exit
status 1.

Targets (from the issue): no slower than qemu on std_4g; at most half qemu's
time on frag_64g; prealloc_1t recovered "in seconds" (here: median <= 10 s);
peak memory under 100 MB on every image; the output as sparse as qemu's
(allocated size at most qemu's + 1 MiB).

"ours" is `python -m qforensics` with this script's interpreter, run from a
byte-compiled copy of the `qforensics/` package taken at start-up (others edit
the tree during long runs); the header names the commit, the uncommitted files
and the hash of the code measured. `--live-tree` runs the tree itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import bench_check
from bench_check import code_hash, fingerprint, freeze_tree, gnu_time, machine  # one frozen-copy recipe for both benchmarks

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MiB, GiB = 1 << 20, 1 << 30
PASSPHRASE = "pw"
SECRET = f"secret,id=sec0,data={PASSPHRASE}"


@dataclass(frozen=True)
class Spec:
    maker: str  # "check": make_images.py (reuse, never rebuild); "recover": make_recover_images.py
    encrypted: bool = False
    ratio_target: float | None = None  # ours/qemu median at most this
    seconds_target: float | None = None  # ours median at most this


IMAGES: dict[str, Spec] = {
    "std_4g.qcow2": Spec("recover", ratio_target=1.0),
    "frag_64g.qcow2": Spec("check", ratio_target=0.5),
    "prealloc_1t.qcow2": Spec("check", seconds_target=10.0),
    "zstd_1g.qcow2": Spec("recover"),
    "aes_1g.qcow2": Spec("recover", encrypted=True),
    "luks_1g.qcow2": Spec("recover", encrypted=True),
    "snap_16g.qcow2": Spec("check"),
}
MEM_TARGET_MB = 100
SPARSE_SLACK = MiB  # ours may allocate this much more than qemu's output
CMP_CHUNK = 8 * MiB


# -- running ---------------------------------------------------------------------------------------------

@dataclass
class Run:
    seconds: float
    peak_mb: float
    exit_code: int
    stderr: str
    cpu: float = 0.0  # user + system seconds of the process (and its threads)
    allocated: int = -1  # the output's st_blocks * 512
    size: int = -1  # the output's apparent size


class Series(bench_check.Series):
    """bench_check's series of runs, with the CPU time recover's runs also carry."""

    @property
    def cpu_median(self) -> float:
        return statistics.median(r.cpu for r in self.runs)


TIME = gnu_time()


def run_once(cmd: list[str], env: dict[str, str], cwd: Path, out: Path) -> Run:
    """Run cmd to completion: wall-clock seconds, the process's own peak RSS, and the output's sizes.

    With GNU time the tool is forked from a ~1 MB process and time's %M is taken; ``os.wait4`` alone
    would report at least this script's own RSS (Linux folds the pre-exec peak into ru_maxrss).
    """
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile(mode="r", suffix=".rss") as rss:
        full = [TIME, "-f", "%M", "-o", rss.name, *cmd] if TIME else cmd
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
        peak_kib = usage.ru_maxrss  # KiB on Linux
        if TIME:
            lines = rss.read().split()
            peak_kib = int(lines[-1]) if lines and lines[-1].isdigit() else -1024
        err.seek(0)
        # wait4's CPU times are the child's, GNU time's included (it waited for the tool): a few ms over
        run = Run(seconds, peak_kib / 1024, proc.returncode, err.read().decode(errors="replace"),
                  cpu=usage.ru_utime + usage.ru_stime)
    try:
        st = out.stat()
        run.allocated, run.size = st.st_blocks * 512, st.st_size
    except FileNotFoundError:
        pass
    return run


def remove_output(out: Path) -> None:
    out.unlink(missing_ok=True)
    os.sync()  # untimed: the next run starts with nothing of ours waiting for writeback


# -- comparing outputs -----------------------------------------------------------------------------------

def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """[start, end) of the file's data extents (SEEK_DATA/SEEK_HOLE); the whole file without support."""
    out, pos = [], 0
    try:
        while pos < size:
            try:
                lo = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: a hole up to the end
                break
            hi = min(os.lseek(fd, lo, os.SEEK_HOLE), size)
            if hi <= lo:
                break
            out.append((lo, hi))
            pos = hi
    except (OSError, AttributeError):
        return [(0, size)]
    return out


def union(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for lo, hi in sorted(a + b):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def sparse_compare(a: Path, b: Path) -> tuple[str | None, int]:
    """None if the files read the same (holes as zeros), else where they first differ; and the bytes read
    from each (the union of their data extents)."""
    fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
    try:
        sa, sb = os.fstat(fa).st_size, os.fstat(fb).st_size
        if sa != sb:
            return f"sizes differ: {a.name} {sa}, {b.name} {sb}", 0
        checked = 0
        for lo, hi in union(data_extents(fa, sa), data_extents(fb, sb)):
            for at in range(lo, hi, CMP_CHUNK):
                n = min(CMP_CHUNK, hi - at)
                x, y = os.pread(fa, n, at), os.pread(fb, n, at)
                checked += n
                if x != y:
                    i = next(i for i in range(min(len(x), len(y))) if x[i] != y[i]) if len(x) == len(y) else 0
                    return (f"contents differ at offset 0x{at + i:x} ({a.name} byte {x[i:i + 1].hex() or 'EOF'}, "
                            f"{b.name} byte {y[i:i + 1].hex() or 'EOF'})"), checked
        return None, checked
    finally:
        os.close(fa)
        os.close(fb)


# -- the code measured -----------------------------------------------------------------------------------


# -- images ----------------------------------------------------------------------------------------------

def ensure_images(d: Path, names: list[str]) -> None:
    """Build what is missing: make_recover_images.py's (skipped when up to date), make_images.py's only when
    absent (an existing one is reused as it is)."""
    ours = [n for n in names if IMAGES[n].maker == "recover"]
    if ours:
        sys.path.insert(0, str(HERE))
        import make_recover_images

        try:
            make_recover_images.build(d, ours)
        except RuntimeError as exc:
            sys.exit(f"bench_recover: {exc}")
    for name in names:
        if IMAGES[name].maker == "check" and not (d / name).is_file():
            print(f"{name}: missing, running make_images.py --images {name}", flush=True)
            res = subprocess.run([sys.executable, str(HERE / "make_images.py"), "--dir", str(d), "--images", name],
                                 check=False)
            if res.returncode != 0 or not (d / name).is_file():
                sys.exit(f"bench_recover: make_images.py could not build {name}")


def qemu_source(img: Path, spec: Spec) -> list[str]:
    """qemu-img's way of naming the image (with the secret when encrypted)."""
    if not spec.encrypted:
        return [str(img)]
    return ["--object", SECRET, "--image-opts", f"driver=qcow2,file.filename={img},encrypt.key-secret=sec0"]


def guest_data(img: Path, spec: Spec) -> int:
    """Guest bytes qemu-img map reports as data and not zero (what throughput is measured against)."""
    res = subprocess.run(["qemu-img", "map", "--output=json", *qemu_source(img, spec)], check=False,
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"bench_recover: qemu-img map {img.name}: {res.stderr.strip()}")
    return sum(e["length"] for e in json.loads(res.stdout) if e.get("data") and not e.get("zero"))


# -- one image -------------------------------------------------------------------------------------------

def bench_image(img: Path, spec: Spec, data: int, runs: int, ours_cmd: list[str], env: dict[str, str], cwd: Path,
                out_dir: Path, passfile: Path) -> dict:
    q_out, o_out = out_dir / f"qemu-{img.stem}.raw", out_dir / f"ours-{img.stem}.raw"
    qemu_cmd = ["qemu-img", "convert", "-O", "raw", *qemu_source(img, spec), str(q_out)]
    ours_cmd = [*ours_cmd, "recover", str(img), "-o", str(o_out), "--quiet"]
    if spec.encrypted:
        ours_cmd += ["--passphrase-file", str(passfile)]
    print(f"\n{img.name}:", file=sys.stderr, flush=True)
    print(f"  qemu: {shlex.join(qemu_cmd)}\n  ours: {shlex.join(ours_cmd)}", file=sys.stderr, flush=True)
    print(f"  guest data (qemu-img map, data and not zero): {data / MiB:.1f} MiB", file=sys.stderr, flush=True)
    before = fingerprint(img)
    problems: list[str] = []
    series = {"qemu": Series(), "ours": Series()}

    def one(tool: str, label: str, timed: bool, keep: bool = False) -> Run:
        cmd, out = (qemu_cmd, q_out) if tool == "qemu" else (ours_cmd, o_out)
        remove_output(out)
        r = run_once(cmd, env, cwd, out)
        if r.exit_code != 0:
            problems.append(f"{tool} exited {r.exit_code} ({label}): {r.stderr.strip()[-500:]}")
        if timed:
            series[tool].runs.append(r)
        if not keep:
            remove_output(out)
        return r

    def show(label: str, q: Run, o: Run) -> None:
        print(f"  {label}: qemu {q.seconds:7.2f} s (cpu {q.cpu:6.2f}) {q.peak_mb:6.1f} MB | "
              f"ours {o.seconds:7.2f} s (cpu {o.cpu:6.2f}) {o.peak_mb:6.1f} MB", file=sys.stderr, flush=True)

    os.sync()  # untimed: nothing written before (an image just built) is still waiting for writeback
    load_before = os.getloadavg()[0]

    # warm-up, both outputs kept for the comparison
    q = one("qemu", "warm-up", timed=False, keep=True)
    o = one("ours", "warm-up", timed=False, keep=True)
    show("warm-up", q, o)
    t0 = time.perf_counter()
    diff, checked = sparse_compare(q_out, o_out) if q_out.exists() and o_out.exists() else ("an output is missing", 0)
    cmp_s = time.perf_counter() - t0
    identical = diff is None
    if diff:
        problems.append(f"OUTPUTS DIFFER: {diff}")
    print(f"  outputs {'identical' if identical else 'DIFFER'} ({checked / MiB:.1f} MiB of data extents compared in "
          f"{cmp_s:.2f} s)", file=sys.stderr, flush=True)
    remove_output(q_out)
    remove_output(o_out)
    for i in range(runs):
        # the order alternates, so neither tool always runs right after the other's output was deleted
        if i % 2:
            o = one("ours", f"run {i + 1}", timed=True)
            q = one("qemu", f"run {i + 1}", timed=True)
        else:
            q = one("qemu", f"run {i + 1}", timed=True)
            o = one("ours", f"run {i + 1}", timed=True)
        show(f"run {i + 1}/{runs}", q, o)
    load = (load_before, os.getloadavg()[0])
    print(f"  load average (1 min) {load[0]:.1f} before, {load[1]:.1f} after, on {os.cpu_count()} cores",
          file=sys.stderr, flush=True)
    if fingerprint(img) != before:
        problems.append(f"THE IMAGE CHANGED (size, mtime_ns) {before} -> {fingerprint(img)}")

    def tool_result(s: Series) -> dict:
        return {"median_s": s.median, "min_s": min(s.times), "max_s": max(s.times), "peak_mb": s.peak_mb,
                "times_s": s.times, "cpu_median_s": s.cpu_median, "cpu_s": [r.cpu for r in s.runs], "mib_per_s": data / MiB / s.median if s.median else float("inf"),
                "output_allocated": max(r.allocated for r in s.runs), "output_size": max(r.size for r in s.runs)}

    res = {"image": img.name, "runs": runs, "guest_data": data, "identical": identical, "load_avg": load,
           "qemu": tool_result(series["qemu"]), "ours": tool_result(series["ours"]),
           "qemu_cmd": qemu_cmd, "ours_cmd": ours_cmd, "problems": problems}
    res["ratio"] = res["ours"]["median_s"] / res["qemu"]["median_s"] if res["qemu"]["median_s"] else float("inf")
    # the machine's page-cache cost drifts between runs far more than the tools differ: the ratio of each
    # round's two runs (taken back to back) and of the two fastest runs are steadier than the medians' ratio
    pairs = [o / q for o, q in zip(series["ours"].times, series["qemu"].times, strict=True) if q]
    res["paired_ratio"] = statistics.median(pairs) if pairs else float("inf")
    res["best_ratio"] = res["ours"]["min_s"] / res["qemu"]["min_s"] if res["qemu"]["min_s"] else float("inf")
    res["cpu_ratio"] = (res["ours"]["cpu_median_s"] / res["qemu"]["cpu_median_s"] if res["qemu"]["cpu_median_s"]
                        else float("inf"))
    res["targets"] = targets(res, spec)
    return res


def targets(res: dict, spec: Spec) -> list[tuple[str, bool]]:
    out = []
    if spec.ratio_target is not None:
        out.append((f"time <= {spec.ratio_target:g}x qemu", res["ratio"] <= spec.ratio_target))
    if spec.seconds_target is not None:
        out.append((f"time <= {spec.seconds_target:g} s", res["ours"]["median_s"] <= spec.seconds_target))
    out.append((f"memory < {MEM_TARGET_MB} MB", res["ours"]["peak_mb"] < MEM_TARGET_MB))
    out.append(("sparse (alloc <= qemu's + 1 MiB)",
                res["ours"]["output_allocated"] <= res["qemu"]["output_allocated"] + SPARSE_SLACK))
    return out


def mib(n: int) -> str:
    return f"{n / MiB:.1f}"


def print_table(res: dict) -> None:
    print(f"\n{res['image']}  ({res['runs']} timed runs each, warm cache; guest data {mib(res['guest_data'])} MiB; "
          f"load average {res['load_avg'][0]:.1f} -> {res['load_avg'][1]:.1f})")
    print(f"  {'tool':<6} {'median s':>9} {'min s':>8} {'max s':>8} {'cpu s':>7} {'MiB/s':>8} {'peak MB':>8} "
          f"{'out alloc MiB':>14}")
    for tool in ("qemu", "ours"):
        t = res[tool]
        print(f"  {tool:<6} {t['median_s']:9.3f} {t['min_s']:8.3f} {t['max_s']:8.3f} {t['cpu_median_s']:7.2f} "
              f"{t['mib_per_s']:8.1f} {t['peak_mb']:8.1f} {mib(t['output_allocated']):>14}")
    verdicts = ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in res["targets"])
    print(f"  ratio ours/qemu: {res['ratio']:.2f}x (cpu {res['cpu_ratio']:.2f}x; median of the rounds' ratios "
          f"{res['paired_ratio']:.2f}x, fastest runs {res['best_ratio']:.2f}x)   {verdicts}")
    if res["identical"] and not res["problems"]:
        print("  outputs identical (sparse-aware compare), both tools exited 0")
    if res["problems"]:
        print("  " + "!" * 70)
        print(f"  !!! PROBLEMS on {res['image']}:")
        for p in res["problems"]:
            print(f"  !!!   {p}")
        print("  " + "!" * 70)


def check_space(out_dir: Path, data: int) -> None:
    """Refuse when two outputs of this image (the warm-up's, kept for the comparison) might not fit."""
    free = shutil.disk_usage(out_dir).free
    need = 2 * data + GiB
    if free < need:
        sys.exit(f"bench_recover: {free / GiB:.1f} GiB free in {out_dir}, need about {need / GiB:.1f} GiB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/tmp/qf-bench", help="where the images are (and are built)")
    ap.add_argument("--images", nargs="+", choices=list(IMAGES), default=list(IMAGES))
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each tool per image (default 3)")
    ap.add_argument("--ours", default=f"{shlex.quote(sys.executable)} -m qforensics",
                    help="command that runs qforensics (default: this interpreter, -m qforensics)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--live-tree", action="store_true",
                    help="run qforensics from the work tree itself rather than from a copy frozen at start-up")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    d = Path(args.dir).resolve()
    if d.is_relative_to(REPO):
        sys.exit(f"bench_recover: {d} is inside the repository; pick a folder outside it")
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            sys.exit(f"bench_recover: {tool} not found (apt-get install qemu-utils)")
    ensure_images(d, args.images)
    frozen = Path(tempfile.mkdtemp(prefix="qf-bench-code-"))
    try:
        return bench(args, d, frozen)
    finally:
        shutil.rmtree(frozen, ignore_errors=True)


def bench(args: argparse.Namespace, d: Path, frozen: Path) -> int:
    out_dir = d / "out"
    out_dir.mkdir(exist_ok=True)
    passfile = d / "passphrase.txt"
    if not passfile.exists() or passfile.read_text() != PASSPHRASE:
        passfile.write_text(PASSPHRASE)
    env = dict(os.environ)
    info = machine()
    code_root = REPO if args.live_tree else frozen
    if not args.live_tree:
        info["code_hash"] = freeze_tree(frozen)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_root), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("QFORENSICS_DEBUG", None)
    info["rss_method"] = "GNU time %M" if TIME else "os.wait4 (floor: this script's own RSS)"
    dirty = f" + uncommitted {', '.join(info['modified'])}" if info["modified"] else ""
    print(f"{info['date']}  {info['cores']} cores, {info['cpu']}, {info['ram_gib']} GiB RAM  Python {info['python']}  "
          f"{info['qemu_img']}\nqforensics at {info['commit']}{dirty} (code hash {info['code_hash']}, run from "
          f"{'the live tree' if args.live_tree else 'a frozen byte-compiled copy'})  RSS via {info['rss_method']}",
          flush=True)
    results = []
    for name in args.images:
        spec = IMAGES[name]
        img = d / name
        data = guest_data(img, spec)
        check_space(out_dir, data)
        # cwd is the code root: `python -m` puts the cwd first on sys.path
        res = bench_image(img, spec, data, args.runs, shlex.split(args.ours), env, code_root, out_dir, passfile)
        results.append(res)
        print_table(res)
        sys.stdout.flush()
    if args.live_tree and code_hash() != info["code_hash"]:
        print("\n" + "!" * 72 + "\n!!! qforensics/ CHANGED DURING THE RUN (code hash "
              f"{info['code_hash']} -> {code_hash()}): the figures mix versions; run again\n" + "!" * 72)

    print(f"\nsummary (medians of {args.runs} runs; paired = median of the rounds' ratios, best = of the fastest runs; cpu = ratio of user+sys medians; MiB/s of guest data; "
          f"out = output's allocated MiB)")
    print(f"  {'image':<18} {'data MiB':>8} {'qemu s':>7} {'ours s':>7} {'ratio':>6} {'paired':>6} {'best':>6} {'cpu':>6} "
          f"{'qemu MiB/s':>10} {'ours MiB/s':>10} {'qemu MB':>7} {'ours MB':>7} {'qemu out':>8} {'ours out':>8}  same  targets")
    for r in results:
        q, o = r["qemu"], r["ours"]
        missed = [n for n, ok in r["targets"] if not ok]
        print(f"  {r['image']:<18} {mib(r['guest_data']):>8} {q['median_s']:7.2f} {o['median_s']:7.2f} "
              f"{r['ratio']:5.2f}x {r['paired_ratio']:5.2f}x {r['best_ratio']:5.2f}x {r['cpu_ratio']:5.2f}x "
              f"{q['mib_per_s']:10.1f} {o['mib_per_s']:10.1f} {q['peak_mb']:7.1f} "
              f"{o['peak_mb']:7.1f} {mib(q['output_allocated']):>8} {mib(o['output_allocated']):>8}  "
              f"{'yes' if r['identical'] else 'NO!!'}  {'all met' if not missed else 'MISSED: ' + '; '.join(missed)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    return 0 if all(not r["problems"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
