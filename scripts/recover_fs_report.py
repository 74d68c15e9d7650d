"""What `qforensics recover --scan` and `qemu-img convert -f qcow2 -O raw` get back from guest disks with
real file systems, damaged the way incidents damage them (tests/fsdisks.py builds and damages them).

    python3 scripts/recover_fs_report.py [--dir /tmp/qf-fsdisks] [--json FILE]
        [--cases gpt_ext4,mbr_fat,ext4_whole,gpt_multi] [--cluster-sizes 65536,4096]
        [--damages l1_zeroed,...] [--clean]

Builds every case in --dir (raw guest, manifest.json, qcow2 at each cluster size, and for gpt_ext4 a
copy written in shuffled host order), applies every damage kind to a copy, runs both tools and
extracts every manifest file from their raw output. Prints one row per image × damage:
ours: exit, files identical/total, clusters recovered (bytes from any source but `unallocated`,
in clusters), missing bytes; qemu-img convert: exit (or its refusal), files identical/total.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import fsdisks as F


def variants(cases: list[str], sizes: list[int]) -> list[tuple[str, str, int, bool]]:
    out = []
    for case in cases:
        for cs in sizes:
            out.append((f"{case}", case, cs, False))
            if case == "gpt_ext4":
                out.append((f"{case}-shuffled", case, cs, True))
    return out


def fmt_exit(r: dict) -> str:
    if r["exit"] == 0 or r.get("error") is None:
        return str(r["exit"])
    err = r["error"].splitlines()[-1] if r["error"] else ""
    err = err.replace(f"qemu-img: Could not open '{r.get('_image', '')}': ", "").removeprefix("qemu-img: ")
    return f"{r['exit']} ({err[:60]})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/qf-fsdisks", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--cases", default=",".join(F.CASES))
    ap.add_argument("--cluster-sizes", default="65536,4096")
    ap.add_argument("--damages", default=",".join(F.DAMAGES))
    ap.add_argument("--clean", action="store_true", help="remove --dir at the end")
    a = ap.parse_args(argv)
    cases = [c for c in a.cases.split(",") if c]
    sizes = [int(s) for s in a.cluster_sizes.split(",") if s]
    damages = ["intact"] + [d for d in a.damages.split(",") if d]
    for c in cases:
        if c not in F.CASES:
            ap.error(f"unknown case {c!r}: one of {', '.join(F.CASES)}")
    for d in damages[1:]:
        if d not in F.DAMAGES:
            ap.error(f"unknown damage {d!r}: one of {', '.join(F.DAMAGES)}")

    a.dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    built: dict[str, tuple[Path, dict]] = {}
    rows = []
    for name, case, cs, shuffled in variants(cases, sizes):
        if case not in built:
            shutil.rmtree(a.dir / case, ignore_errors=True)
            built[case] = F.build_case(case, a.dir / case)
            print(f"# built {case}: {len(built[case][1]['files'])} files, "
                  f"{sum(f['size'] for f in built[case][1]['files']) / F.MiB:.1f} MiB, guest "
                  f"{built[case][1]['guest_size'] / F.MiB:.0f} MiB", file=sys.stderr)
        raw, manifest = built[case]
        img = a.dir / case / f"{name}-{cs}.qcow2"
        (F.convert_shuffled if shuffled else F.convert)(raw, img, cs)
        order = F.host_order_differs(img)
        for damage in damages:
            work = a.dir / "runs" / f"{name}-{cs}-{damage}"
            work.mkdir(parents=True, exist_ok=True)
            target = img
            if damage != "intact":
                target = work / "damaged.qcow2"
                F.DAMAGES[damage](img, target)
            ours = F.run_ours(target, work, manifest)
            qemu = F.run_qemu(target, work, manifest)
            qemu["_image"] = str(target)
            ok, why = F.honest(ours)
            rows.append({"case": name, "cluster_size": cs, "damage": damage, "host_order_shuffled": order[0],
                         "ours": {k: v for k, v in ours.items() if k not in ("raw",)},
                         "qemu": {k: v for k, v in qemu.items() if k not in ("raw", "_image")},
                         "honest": ok, "why": why, "qemu_exit_text": fmt_exit(qemu)})
            shutil.rmtree(work, ignore_errors=True)
            print(f"# {name} {cs} {damage}: ours exit {ours['exit']} "
                  f"{ours['files']['identical']}/{ours['files']['total']}, qemu exit {qemu['exit']} "
                  f"{qemu['files']['identical']}/{qemu['files']['total']}", file=sys.stderr)
        img.unlink()
    shutil.rmtree(a.dir / "runs", ignore_errors=True)

    head = (f"{'case':18} {'cluster':>7} {'damage':22} | {'exit':>4} {'files':>7} {'clusters':>8} "
            f"{'missing bytes':>13} {'honest':>6} | {'qemu exit':40} {'files':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        o, q = r["ours"], r["qemu"]
        clusters = o.get("clusters_recovered")
        print(f"{r['case']:18} {r['cluster_size'] // 1024:>6}K {r['damage']:22} | {o['exit']!s:>4} "
              f"{o['files']['identical']:>3}/{o['files']['total']:<3} {'-' if clusters is None else clusters:>8} "
              f"{'-' if o.get('missing_bytes') is None else o['missing_bytes']:>13} "
              f"{'yes' if r['honest'] else 'NO':>6} | {r['qemu_exit_text'][:40]:40} "
              f"{q['files']['identical']:>3}/{q['files']['total']:<3}")
    print(f"# {len(rows)} runs in {time.time() - t0:.0f} s; honest = exit 0 only with every file identical and "
          f"nothing missing/uncertain/unplaced/unknown, else exit 2")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "manifests": {c: m for c, (_, m) in built.items()}}, indent=1))
    if a.clean:
        shutil.rmtree(a.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
