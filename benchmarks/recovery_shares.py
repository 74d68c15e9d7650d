"""How much of each damaged image qforensics recover and qemu-img convert get back.

    python benchmarks/recovery_shares.py [--dir /tmp/qf-shares]

Uses the damage kinds of tests/test_recover_damaged.py on the corpus images, and prints for each the
share of the intact image's non-zero 4 KiB blocks that each tool reproduces exactly.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_recover_damaged import damage, share  # noqa: E402

CORPUS = ROOT / "tests" / "corpus" / "images"
RUNS = [("l1_zeroed", "v3_default"), ("l1_zeroed", "snapshots"), ("l1_zeroed", "draft_dedup"),
        ("l1_zeroed", "combo_zstd_snapshots"), ("l2_zeroed", "snapshots"), ("refcount_table_zeroed", "v3_default"),
        ("header_damaged", "v3_default"), ("truncated", "compressed_zlib"), ("truncated", "backing_chain"),
        ("l1_zeroed", "extended_l2"), ("header_damaged", "extended_l2"), ("cluster_bits_destroyed", "v3_default"),
        ("cluster_bits_destroyed", "cluster_512")]


def unpack(case: str, dst: Path) -> Path:
    prov = json.loads((CORPUS / case / "provenance.json").read_text())
    for f in prov["files"]:
        src = CORPUS / case / f["stored_as"]
        with (gzip.open(src, "rb") if f["stored_as"].endswith(".gz") else open(src, "rb")) as zin, \
                open(dst / f["name"], "wb") as out:
            shutil.copyfileobj(zin, out)
    return dst / ("base.qcow2" if case == "backing_chain" else prov["main"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/qf-shares")
    args = ap.parse_args()
    print(f"{'damage':<24}{'image':<24}{'qforensics':>12}{'qemu-img':>10}  exit  notes")
    for kind, case in RUNS:
        work = Path(args.dir) / f"{kind}-{case}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        path = unpack(case, work)
        ref = work / "reference.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(path), str(ref)], check=True)
        damage(kind, path)
        ours, theirs = work / "ours.raw", work / "qemu.raw"
        res = subprocess.run([sys.executable, "-m", "qforensics", "recover", str(path), "-o", str(ours), "--quiet",
                              "--allow-image-dir", "--log", str(work / "log.json")], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        q = subprocess.run(["qemu-img", "convert", "-O", "raw", str(path), str(theirs)], capture_output=True, text=True)
        qshare = share(ref, theirs) if q.returncode == 0 else 0.0
        note = "" if q.returncode == 0 else "qemu: " + q.stderr.strip().splitlines()[-1][:60]
        print(f"{kind:<24}{case:<24}{share(ref, ours):>11.1%}{qshare:>10.1%}  {res.returncode:>4}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
