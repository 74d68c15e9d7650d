#!/usr/bin/env python3
"""Long-running fuzzer: mutate every corpus image and run the commands of mutate.EXERCISES on it.

    python3 tests/fuzz/run_fuzz.py --minutes 60 [--seed N] [--commands info,check] [--cases a,b] [--out DIR]
    python3 tests/fuzz/run_fuzz.py --replay CASE/FILE:SEED:COUNT [--commands ...]

Every qcow2 file of every corpus case is a seed (backing layers too); the
mutated file replaces its pristine copy inside a copy of its case's folder,
so backing and data files stay beside it, and when a layer other than the
main image is mutated the main image is exercised as well.

A failure is any exception other than the tool's own clean error
(QforensicsError), a command running longer than --timeout seconds (the
traceback then shows where it was), a MemoryError under the address-space
limit (--max-memory-mb), or the input file changing. Failures are told apart
by exception type and innermost qforensics frame; the first reproducer of
each is printed (CASE/FILE:SEED:COUNT, replayable with --replay) and, with
--out, kept with its traceback. Prints executions as it goes, a summary at the
end, and exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

from fuzz import mutate as harness
from fuzz.mutate import EXERCISES, KNOWN_ISSUES, mutate
from qforensics.errors import QforensicsError

CORPUS = HERE.parent / "corpus" / "images"


class Timeout(BaseException):
    """A command ran past --timeout (BaseException, so no `except Exception` in the tool swallows it)."""


class EvidenceChanged(Exception):
    pass


def load_corpus(cases: list[str] | None) -> dict[str, dict]:
    """case -> {"main": name, "files": {name: bytes}} for every case (gz inflated), qcow2 and raw files."""
    out = {}
    for prov_path in sorted(CORPUS.glob("*/provenance.json")):
        prov = json.loads(prov_path.read_text())
        case = prov_path.parent.name
        if cases and case not in cases:
            continue
        files = {}
        for f in prov["files"]:
            raw = (prov_path.parent / f["stored_as"]).read_bytes()
            files[f["name"]] = gzip.decompress(raw) if f["stored_as"].endswith(".gz") and \
                not f["name"].endswith(".gz") else raw
        out[case] = {"main": prov["main"], "files": files,
                     "layers": [n for n in files if n.endswith(".qcow2")] or [prov["main"]]}
    return out


def site(exc: BaseException) -> str:
    """Exception type and innermost qforensics frame (else the innermost frame of the harness)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.name != "_alarm"]
    ours = [f for f in frames if "/qforensics/" in f.filename]
    if not ours:
        ours = [f for f in frames if "/tests/" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{type(exc).__name__} at {where}"


def _alarm(signum, frame):
    raise Timeout("command ran past the time limit")


def run_one(folder: Path, target: str, main: str, commands: list[str], timeout: float,
            times: dict[str, list[tuple[float, str]]], label: str = "") -> None:
    """The commands on the mutated file (and on the main image when a lower layer was mutated)."""
    paths = [folder / target] + ([folder / main] if main != target else [])
    before = {p: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    out = folder / "out"
    out.mkdir(exist_ok=True)
    for path in paths:
        for name in commands:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            start = time.perf_counter()
            try:
                EXERCISES[name](path, out)
            except QforensicsError:
                pass
            except BaseException as exc:
                exc.add_note(f"command: {name} on {path.name}")
                raise
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                times.setdefault(name, []).append((time.perf_counter() - start, f"{label} on {path.name}"))
    for p, data in before.items():
        if p.read_bytes() != data:
            raise EvidenceChanged(f"{p.name} changed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--commands", default=",".join(EXERCISES),
                    help=f"comma-separated, from: {', '.join(EXERCISES)} (default: all)")
    ap.add_argument("--cases", help="comma-separated corpus cases (default: every case)")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds per command before it counts as a failure (default 30)")
    ap.add_argument("--slow", type=float, default=10.0,
                    help="commands slower than this are listed in the summary (the issue's bound: 10 s)")
    ap.add_argument("--max-memory-mb", type=int, default=1536, help="address-space limit (default 1536)")
    ap.add_argument("--out", type=Path, help="keep one reproducer image and traceback per distinct failure here")
    ap.add_argument("--strict", action="store_true",
                    help="also check the known issues of mutate.KNOWN_ISSUES (skipped by default)")
    ap.add_argument("--replay", metavar="CASE/FILE:SEED:COUNT", help="run one reproducer and print its traceback")
    args = ap.parse_args()
    commands = [c for c in args.commands.split(",") if c]
    unknown = [c for c in commands if c not in EXERCISES]
    if unknown:
        ap.error(f"unknown command(s) {', '.join(unknown)}; known: {', '.join(EXERCISES)}")
    if args.strict:
        harness.TOLERATED.clear()
    limit = args.max_memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _alarm)
    corpus = load_corpus(args.cases.split(",") if args.cases else None)
    if args.replay:
        return replay(corpus, args.replay, commands, args.timeout)
    rng = random.Random(args.seed)
    names = sorted(corpus)
    failures: dict[str, tuple[str, int]] = {}  # site -> (reproducer, hits)
    per_case: Counter[str] = Counter()
    times: dict[str, list[tuple[float, str]]] = {}
    deadline = time.monotonic() + args.minutes * 60
    started = time.monotonic()
    next_progress = started + 60
    runs = 0
    print(f"fuzzing {len(names)} cases ({sum(len(c['layers']) for c in corpus.values())} qcow2 files) with "
          f"{', '.join(commands)} for {args.minutes:g} min, seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="qf-fuzz-") as tmp:
        root = Path(tmp)
        for case, c in corpus.items():
            (root / case).mkdir()
            for name, data in c["files"].items():
                (root / case / name).write_bytes(data)
        while time.monotonic() < deadline:
            case = rng.choice(names)
            c = corpus[case]
            target = c["main"] if rng.random() < 0.75 or len(c["layers"]) == 1 else rng.choice(c["layers"])
            seed, count = rng.getrandbits(32), rng.randint(1, 6)
            folder = root / case
            (folder / target).write_bytes(mutate(c["files"][target], random.Random(seed), count))
            runs += 1
            per_case[case] += 1
            try:
                run_one(folder, target, c["main"], commands, args.timeout, times, f"{case}/{target}:{seed}:{count}")
            except BaseException as exc:  # noqa: BLE001 - every escape is a finding of the fuzzer
                if isinstance(exc, KeyboardInterrupt):
                    break
                key = site(exc)
                repro = f"{case}/{target}:{seed}:{count}"
                if key not in failures:
                    failures[key] = (repro, 0)
                    note = "; ".join(getattr(exc, "__notes__", []))
                    print(f"FAILURE {key} ({note}): {repro}: {exc!s:.200}", flush=True)
                    if args.out:
                        args.out.mkdir(parents=True, exist_ok=True)
                        stem = f"{len(failures):03d}-{case}-{seed}-{count}"
                        shutil.copyfile(folder / target, args.out / f"{stem}-{target}")
                        (args.out / f"{stem}.txt").write_text(
                            f"{key}\n{repro}\n{note}\n\n" + "".join(traceback.format_exception(exc)))
                failures[key] = (failures[key][0], failures[key][1] + 1)
            finally:
                (folder / target).write_bytes(c["files"][target])
                shutil.rmtree(folder / "out", ignore_errors=True)
            if time.monotonic() >= next_progress:
                next_progress += 60
                print(f"[{(time.monotonic() - started) / 60:.0f} min] {runs} executions, {len(failures)} distinct "
                      "failures", flush=True)
    elapsed = time.monotonic() - started
    print(f"\n{runs} executions in {elapsed / 60:.1f} min ({runs / max(elapsed, 1e-9):.1f}/s) over {len(per_case)} "
          f"cases, {len(failures)} distinct failures (seed {args.seed})")
    for name, ts in times.items():
        ts = sorted(ts)
        slow = [t for t in ts if t[0] > args.slow]
        print(f"  {name}: {len(ts)} runs, median {ts[len(ts) // 2][0]:.3f} s, max {ts[-1][0]:.2f} s "
              f"({ts[-1][1]}), {len(slow)} over {args.slow:g} s")
        for t, what in slow[-5:]:
            print(f"    slow: {t:.1f} s {name} {what}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    print(f"  peak RSS of the fuzzer process: {peak} MiB")
    for key, (repro, hits) in sorted(failures.items()):
        print(f"  {key}: {hits} hits, first {repro}")
    for name in sorted(harness.TOLERATED):
        print(f"  not checked (known, reported to its owner): {name}: {KNOWN_ISSUES[name]}")
    return 1 if failures else 0


def replay(corpus: dict[str, dict], spec: str, commands: list[str], timeout: float) -> int:
    where, seed, count = spec.rsplit(":", 2)
    case, target = where.split("/", 1)
    c = corpus[case]
    with tempfile.TemporaryDirectory(prefix="qf-replay-") as tmp:
        folder = Path(tmp)
        for name, data in c["files"].items():
            (folder / name).write_bytes(data)
        (folder / target).write_bytes(mutate(c["files"][target], random.Random(int(seed)), int(count)))
        keep = Path.cwd() / f"replay-{case}-{seed}-{count}-{target}"
        shutil.copyfile(folder / target, keep)
        print(f"mutated image kept as {keep}")
        times: dict[str, list[tuple[float, str]]] = {}
        try:
            run_one(folder, target, c["main"], commands, timeout, times)
        except BaseException as exc:  # noqa: BLE001
            traceback.print_exception(exc)
            return 1
        finally:
            for name, ts in times.items():
                print(f"{name}: " + ", ".join(f"{t:.2f} s" for t, _ in ts))
    print("no failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
