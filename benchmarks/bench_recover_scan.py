#!/usr/bin/env python3
"""Time `qforensics recover --scan` on a file-system guest whose active L1 table is zeroed, against
`qemu-img convert -O raw` of the intact image, and count the guest's files that come back (issue 16
point 8).

    python benchmarks/make_fs_bench.py [--dir /tmp/qf-fsbench]        # the images, see there
    python benchmarks/bench_recover_scan.py [--dir /tmp/qf-fsbench] [--runs 3] [--json FILE]

The images (make_fs_bench.py): fs_intact.qcow2, a 16 GiB disk with a GPT and one ext4 partition at
1 MiB holding 4 GiB of files (fs_manifest.json: path, size and SHA-256 of each), and fs_l1zero.qcow2,
the same with the active L1 table zeroed.

Runs, interleaved (qemu then ours, ours then qemu, ...), after reading both images once (untimed, so
the page cache is warm for both):

  qemu: qemu-img convert -O raw fs_intact.qcow2 out/qemu.raw           (the baseline)
  ours: python -m qforensics recover --scan fs_l1zero.qcow2 -o out/ours.raw --log out/ours-log.json --quiet

Outputs are deleted after every run, then `sync` (untimed). The outputs of the last round are kept
for the file check, then deleted. Reported per tool: median / min / max wall-clock seconds, median
CPU seconds (user + system), peak RSS (GNU `/usr/bin/time -f %M`, see bench_recover.run_once), the
output's allocated size, the exit code of each run; the ratio of the medians ours/qemu (and the
median of the rounds' own ratios); the 1-minute load average before and after each run; and the
summary keys of our log (complete, missing-bytes, unknown-bytes, uncertain-bytes, unplaced,
bytes-by-source). Our exit code is reported, not judged (recover exits 2 when something is missing).

The file check: every manifest file is extracted from the output with debugfs, in batches of about
512 MiB (`debugfs -c -n -f CMDS 'OUT.raw?offset=1048576'`, one `dump -p /path FILE` per file:
catastrophic mode, no bitmaps, read-only), hashed and deleted. When debugfs cannot open the primary
superblock, the first backup (`-s 32768 -b 4096`) is tried. A file counts as recovered when its
SHA-256 matches; for the others the script regenerates the expected content from the seed
(make_fs_bench.file_content) and counts the 4 KiB blocks that match, so a partial recovery shows
too. qemu's output of the intact image is checked the same way (it must give every file back: a
check of the manifest and of the extraction; `--no-check-qemu` skips it).

Targets (issue 16): ours at most 1.5 x qemu's time; peak memory under 200 MB.

"ours" runs from a byte-compiled copy of `qforensics/` frozen at start-up (bench_check.freeze_tree),
as bench_recover.py does; `--live-tree` runs the tree itself. This script runs no git command: the
header gives the HEAD commit read from .git and the hash of the code measured.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

import make_fs_bench
import numpy as np
from bench_check import code_hash, fingerprint, freeze_tree
from bench_recover import TIME, Run, run_once

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MiB, GiB = 1 << 20, 1 << 30
TIME_TARGET = 1.5  # ours / qemu, medians
MEM_TARGET_MB = 200
SUMMARY_KEYS = ("complete", "missing-bytes", "unknown-bytes", "uncertain-bytes", "unplaced", "bytes-by-source")
BATCH = 512 * MiB  # file data extracted per debugfs run
BLOCK = 4096


# -- the machine, without git ----------------------------------------------------------------------------

def head_commit() -> str:
    """HEAD's commit, read from .git (no git command is run)."""
    try:
        git = REPO / ".git"
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:7]
        ref = head[5:]
        for base in (git, Path((git / "commondir").read_text().strip()) if (git / "commondir").is_file() else git):
            base = base if base.is_absolute() else git / base
            if (base / ref).is_file():
                return (base / ref).read_text().strip()[:7]
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0][:7]
    except (OSError, IndexError):
        pass
    return "unknown"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cores": os.cpu_count(), "cpu": cpu,
            "ram_gib": round(mem_kb / 2**20, 1), "python": platform.python_version(),
            "qemu_img": subprocess.run(["qemu-img", "--version"], check=False, capture_output=True,
                                       text=True).stdout.splitlines()[0],
            "debugfs": next(iter(subprocess.run(["debugfs", "-V"], check=False, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True).stdout.splitlines()), "?"),
            "commit": head_commit(), "code_hash": code_hash()}


# -- the file check --------------------------------------------------------------------------------------

def debugfs_base(raw: Path, offset: int) -> tuple[list[str] | None, str]:
    """The debugfs command (without -R/-f) that opens the file system in raw, and which superblock it used;
    (None, why) if neither the primary nor the first backup superblock opens."""
    spec = f"{raw}?offset={offset}"
    why = ""
    for extra, name in (([], "primary"), (["-s", "32768", "-b", "4096"], "backup at block 32768")):
        cmd = ["debugfs", "-c", "-n", *extra]
        res = subprocess.run([*cmd, "-R", "stats", spec], check=False, capture_output=True, text=True, timeout=600)
        if "Filesystem magic number:  0xEF53" in res.stdout:
            return [*cmd], name
        lines = [x for x in res.stderr.splitlines() if "while" in x] or res.stderr.strip().splitlines() or ["no stats"]
        why += f"{name}: {lines[0].strip()}; "
    return None, why.rstrip("; ")


def block_matches(seed: int, index: int, size: int, path: Path) -> int:
    """4 KiB blocks of the file at path (possibly short or missing) equal to the expected content's."""
    good = 0
    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError:
        return 0
    with f:
        for piece in make_fs_bench.file_content(seed, index, size):
            got = np.frombuffer(f.read(len(piece)), dtype=np.uint8)
            n = len(got) // BLOCK * BLOCK
            if n:
                same = (got[:n].reshape(-1, BLOCK) == piece[:n].reshape(-1, BLOCK)).all(axis=1)
                good += int(same.sum())
            if len(got) % BLOCK and len(got) == len(piece):  # the file's last, partial block
                good += int(np.array_equal(got[n:], piece[n:]))
            if len(got) < len(piece):
                break
    return good


def check_files(raw: Path, manifest: dict, work: Path) -> dict:
    """Extract every manifest file from raw's ext4 with debugfs; count those whose SHA-256 matches."""
    t0 = time.perf_counter()
    files = manifest["files"]
    total_blocks = sum(-(-f["size"] // BLOCK) for f in files)
    res = {"files": len(files), "ok": 0, "wrong": 0, "absent": 0, "bytes": sum(f["size"] for f in files),
           "ok_bytes": 0, "blocks": total_blocks, "ok_blocks": 0, "superblock": None, "error": None,
           "first_bad": []}
    base, sb = debugfs_base(raw, manifest["partition_offset"])
    if base is None:
        res.update(error=f"debugfs cannot open the file system ({sb})", absent=len(files))
        res["seconds"] = time.perf_counter() - t0
        return res
    res["superblock"] = sb
    spec = f"{raw}?offset={manifest['partition_offset']}"
    work.mkdir(parents=True, exist_ok=True)
    batch: list[dict] = []

    def flush() -> None:
        cmds = work / "cmds.txt"
        cmds.write_text("".join(f'dump -p "{f["path"]}" "{work / str(f["index"])}"\n' for f in batch))
        try:
            subprocess.run([*base, "-f", str(cmds), spec], check=False, capture_output=True, timeout=3600)
        except subprocess.TimeoutExpired:
            res["error"] = "a debugfs batch timed out (3600 s)"
        for f in batch:
            out = work / str(f["index"])
            ok = False
            if out.is_file():
                h = hashlib.sha256()
                with open(out, "rb") as fh:
                    while chunk := fh.read(8 * MiB):
                        h.update(chunk)
                ok = h.hexdigest() == f["sha256"] and out.stat().st_size == f["size"]
                if ok:
                    res["ok"] += 1
                    res["ok_bytes"] += f["size"]
                    res["ok_blocks"] += -(-f["size"] // BLOCK)
                else:
                    res["wrong"] += 1
                    res["ok_blocks"] += block_matches(manifest["seed"], f["index"], f["size"], out)
            else:
                res["absent"] += 1
            if not ok and len(res["first_bad"]) < 10:
                res["first_bad"].append(f["path"] + (" (wrong content)" if out.is_file() else " (not extracted)"))
            out.unlink(missing_ok=True)
        batch.clear()

    size = 0
    for f in files:
        batch.append(f)
        size += f["size"]
        if size >= BATCH:
            flush()
            size = 0
    if batch:
        flush()
    shutil.rmtree(work, ignore_errors=True)
    res["seconds"] = time.perf_counter() - t0
    return res


def describe_check(c: dict) -> str:
    if c is None:
        return "not checked"
    s = (f"{c['ok']}/{c['files']} files ({100 * c['ok'] / c['files']:.1f}%, {100 * c['ok_bytes'] / c['bytes']:.1f}% "
         f"of the bytes); 4 KiB blocks right {100 * c['ok_blocks'] / c['blocks']:.2f}%; wrong content {c['wrong']}, "
         f"not extracted {c['absent']}")
    if c["superblock"] and c["superblock"] != "primary":
        s += f"; superblock: {c['superblock']}"
    if c["error"]:
        s += f"; {c['error']}"
    return s


# -- the runs --------------------------------------------------------------------------------------------

def warm(path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 * MiB)
        while f.readinto(buf):
            pass
    return time.perf_counter() - t0


def remove(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)
    os.sync()


def log_summary(log: Path) -> dict | None:
    try:
        data = json.loads(log.read_text())
    except (OSError, ValueError):
        return None
    return {k: data.get(k) for k in SUMMARY_KEYS}


def stats(runs: list[Run]) -> dict:
    t = [r.seconds for r in runs]
    return {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "times_s": t,
            "cpu_median_s": statistics.median(r.cpu for r in runs), "peak_mb": max(r.peak_mb for r in runs),
            "exit_codes": [r.exit_code for r in runs], "output_allocated": max(r.allocated for r in runs),
            "output_size": max(r.size for r in runs)}


def bench(args: argparse.Namespace, d: Path, frozen: Path) -> int:
    state = json.loads((d / make_fs_bench.RECIPE).read_text())
    manifest = json.loads((d / make_fs_bench.MANIFEST).read_text())
    intact, damaged = d / make_fs_bench.INTACT, d / make_fs_bench.DAMAGED
    out_dir = d / "out"
    out_dir.mkdir(exist_ok=True)
    q_out, o_out, o_log = out_dir / "qemu.raw", out_dir / "ours.raw", out_dir / "ours-log.json"
    need = 2 * state["stages"]["intact"]["file_size"] + GiB
    free = shutil.disk_usage(out_dir).free
    if free < need:
        sys.exit(f"bench_recover_scan: {free / GiB:.1f} GiB free in {out_dir}, need about {need / GiB:.1f} GiB")

    env = dict(os.environ)
    info = machine()
    code_root = REPO if args.live_tree else frozen
    if not args.live_tree:
        info["code_hash"] = freeze_tree(frozen)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_root), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("QFORENSICS_DEBUG", None)
    info["rss_method"] = "GNU time %M" if TIME else "os.wait4 (floor: this script's own RSS)"
    r = state["recipe"]
    st = state["stages"]["intact"]
    print(f"{info['date']}  {info['cores']} cores, {info['cpu']}, {info['ram_gib']} GiB RAM  Python {info['python']}  "
          f"{info['qemu_img']}  {info['debugfs']}\nqforensics at {info['commit']} (HEAD, read from .git; code hash "
          f"{info['code_hash']}, run from {'the live tree' if args.live_tree else 'a frozen byte-compiled copy'})  "
          f"RSS via {info['rss_method']}", flush=True)
    print(f"guest: {r['size'] / GiB:g} GiB disk, GPT + ext4 at {manifest['partition_offset']}, {st['files']} files, "
          f"{st['data_bytes'] / GiB:.2f} GiB of file data; {intact.name} {st['file_size'] / MiB:.1f} MiB, "
          f"{damaged.name}: L1 ({state['stages']['damaged']['l1_size']} entries) zeroed", flush=True)

    qemu_cmd = ["qemu-img", "convert", "-O", "raw", str(intact), str(q_out)]
    ours_cmd = [*shlex.split(args.ours), "recover", "--scan", str(damaged), "-o", str(o_out), "--log", str(o_log),
                "--quiet"]
    print(f"  qemu: {shlex.join(qemu_cmd)}\n  ours: {shlex.join(ours_cmd)}", file=sys.stderr, flush=True)
    before = {p: fingerprint(p) for p in (intact, damaged)}
    remove(q_out, o_out, o_log)
    print(f"  warm-up: read {intact.name} in {warm(intact):.1f} s, {damaged.name} in {warm(damaged):.1f} s",
          file=sys.stderr, flush=True)

    runs: dict[str, list[Run]] = {"qemu": [], "ours": []}
    loads: list[dict] = []
    summaries: list[dict | None] = []
    problems: list[str] = []

    def one(tool: str, i: int, last: bool) -> Run:
        cmd, out = (qemu_cmd, q_out) if tool == "qemu" else (ours_cmd, o_out)
        remove(out, *([o_log] if tool == "ours" else []))
        la = os.getloadavg()[0]
        run = run_once(cmd, env, code_root, out)  # cwd is the code root: `python -m` puts it first on sys.path
        loads.append({"tool": tool, "run": i + 1, "before": la, "after": os.getloadavg()[0]})
        runs[tool].append(run)
        extra = ""
        if tool == "qemu" and run.exit_code != 0:
            problems.append(f"qemu-img exited {run.exit_code} (run {i + 1}): {run.stderr.strip()[-500:]}")
        if tool == "ours":
            s = log_summary(o_log)
            summaries.append(s)
            if s is None:
                problems.append(f"ours (run {i + 1}, exit {run.exit_code}) left no readable log: "
                                f"{run.stderr.strip()[-500:]}")
            else:
                extra = f" exit {run.exit_code}, complete {s['complete']}, missing {s['missing-bytes'] / MiB:.1f} MiB"
        print(f"  run {i + 1}/{args.runs} {tool}: {run.seconds:7.2f} s (cpu {run.cpu:6.2f}) {run.peak_mb:6.1f} MB, "
              f"out {run.allocated / MiB:.0f} MiB allocated, load {la:.2f} -> {os.getloadavg()[0]:.2f}{extra}",
              file=sys.stderr, flush=True)
        if not last:
            remove(out)
        return run

    for i in range(args.runs):
        last = i == args.runs - 1
        for tool in (("qemu", "ours") if i % 2 == 0 else ("ours", "qemu")):
            one(tool, i, last)
    for p, fp in before.items():
        if fingerprint(p) != fp:
            problems.append(f"THE IMAGE {p.name} CHANGED (size, mtime_ns) {fp} -> {fingerprint(p)}")

    print("  checking the files of the last outputs with debugfs ...", file=sys.stderr, flush=True)
    checks: dict[str, dict | None] = {"ours": None, "qemu": None}
    if o_out.exists():
        checks["ours"] = check_files(o_out, manifest, out_dir / "extract")
        print(f"  ours: {describe_check(checks['ours'])} ({checks['ours']['seconds']:.1f} s)", file=sys.stderr,
              flush=True)
    if not args.no_check_qemu and q_out.exists():
        checks["qemu"] = check_files(q_out, manifest, out_dir / "extract")
        print(f"  qemu: {describe_check(checks['qemu'])} ({checks['qemu']['seconds']:.1f} s)", file=sys.stderr,
              flush=True)
        if checks["qemu"]["ok"] != checks["qemu"]["files"]:
            problems.append("qemu's conversion of the intact image does not give every file back: the manifest or "
                            "the extraction is wrong")
    last_log = o_log.read_text() if o_log.exists() else None
    if args.keep_log and last_log is not None:
        shutil.copyfile(o_log, Path(args.keep_log))
    remove(q_out, o_out, o_log)

    q, o = stats(runs["qemu"]), stats(runs["ours"])
    ratio = o["median_s"] / q["median_s"] if q["median_s"] else float("inf")
    pairs = [a.seconds / b.seconds for a, b in zip(runs["ours"], runs["qemu"], strict=True) if b.seconds]
    paired = statistics.median(pairs) if pairs else float("inf")
    la = [x["before"] for x in loads] + [x["after"] for x in loads]
    summary = summaries[-1] if summaries else None

    print(f"\nfs_l1zero ({args.runs} interleaved timed runs each, warm cache; load average (1 min) {min(la):.2f} to "
          f"{max(la):.2f} during the runs, on {os.cpu_count()} cores)")
    print(f"  {'tool':<6} {'median s':>9} {'min s':>8} {'max s':>8} {'cpu s':>7} {'peak MB':>8} {'out alloc MiB':>14}"
          f"  exit codes")
    for name, t in (("qemu", q), ("ours", o)):
        print(f"  {name:<6} {t['median_s']:9.2f} {t['min_s']:8.2f} {t['max_s']:8.2f} {t['cpu_median_s']:7.2f} "
              f"{t['peak_mb']:8.1f} {t['output_allocated'] / MiB:14.1f}  {t['exit_codes']}")
    t_ok, m_ok = ratio <= TIME_TARGET, o["peak_mb"] < MEM_TARGET_MB
    print(f"  ratio ours/qemu: {ratio:.2f}x (median of the rounds' ratios {paired:.2f}x)   target <= {TIME_TARGET}x: "
          f"{'met' if t_ok else 'MISSED'};  peak memory {o['peak_mb']:.1f} MB, target < {MEM_TARGET_MB} MB: "
          f"{'met' if m_ok else 'MISSED'}")
    print(f"  files recovered (ours, from {damaged.name}): {describe_check(checks['ours'])}")
    print(f"  files (qemu, from {intact.name}): {describe_check(checks['qemu'])}")
    if summary is not None:
        print("  our log's summary (last run): " + ", ".join(f"{k} {json.dumps(summary[k])}" for k in SUMMARY_KEYS))
        if any(s != summary for s in summaries):
            print("  (the summary differed between runs: " + "; ".join(json.dumps(s) for s in summaries) + ")")
    if problems:
        print("  " + "!" * 70)
        for p in problems:
            print(f"  !!!   {p}")
        print("  " + "!" * 70)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": info, "recipe": r, "images": state["stages"], "runs": args.runs, "qemu_cmd": qemu_cmd,
            "ours_cmd": ours_cmd, "qemu": q, "ours": o, "ratio": ratio, "paired_ratio": paired, "loads": loads,
            "targets": {"time": [TIME_TARGET, t_ok], "memory_mb": [MEM_TARGET_MB, m_ok]}, "files": checks,
            "log_summaries": summaries, "problems": problems}, indent=2) + "\n")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/tmp/qf-fsbench", help="where make_fs_bench.py put the images")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each tool (default 3)")
    ap.add_argument("--ours", default=f"{shlex.quote(sys.executable)} -m qforensics",
                    help="command that runs qforensics (default: this interpreter, -m qforensics)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--keep-log", metavar="FILE", help="copy our last run's LOG.json to FILE")
    ap.add_argument("--no-check-qemu", action="store_true", help="do not check the files of qemu's output")
    ap.add_argument("--live-tree", action="store_true",
                    help="run qforensics from the work tree itself rather than from a copy frozen at start-up")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    d = Path(args.dir).resolve()
    if d.is_relative_to(REPO):
        sys.exit(f"bench_recover_scan: {d} is inside the repository; pick a folder outside it")
    for tool in ("qemu-img", "debugfs"):
        if not shutil.which(tool):
            sys.exit(f"bench_recover_scan: {tool} not found")
    missing = [n for n in (make_fs_bench.INTACT, make_fs_bench.DAMAGED, make_fs_bench.MANIFEST, make_fs_bench.RECIPE)
               if not (d / n).is_file()]
    if missing:
        sys.exit(f"bench_recover_scan: missing {', '.join(missing)} in {d}; run benchmarks/make_fs_bench.py "
                 f"--dir {d} first")
    frozen = Path(tempfile.mkdtemp(prefix="qf-bench-code-"))
    try:
        return bench(args, d, frozen)
    finally:
        shutil.rmtree(frozen, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
