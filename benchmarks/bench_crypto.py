#!/usr/bin/env python3
"""Decryption speed of qforensics.crypto, side by side with `qemu-img convert -O raw`.

    python benchmarks/bench_crypto.py [--mib 64] [--runs 3] [--dir DIR]

1. Cipher throughput (in process, best of --runs): --mib MiB of random bytes decrypted with
   AES-128-CBC-plain64 (qcow2 legacy AES) and AES-256-XTS-plain64 (LUKS default), batched as
   qforensics does it, in 1 MiB calls (as a read path calls it) and in one call (which pays for
   one --mib MiB output buffer), and the naive way (one `cryptography` Cipher object per 512-byte
   sector, timed on 8 MiB) for reference.
2. Whole image (best of --runs, each a fresh process): an AES and a LUKS qcow2 image with --mib
   MiB written by qemu-io, turned into a raw file by `qemu-img convert -O raw` and by this
   script's own `--convert` worker (python start-up, imports, key derivation, L1/L2 walk, reads,
   decryption and the raw file write all included; "in process" is the same work without the
   interpreter start-up and imports). The two raw files must be identical.

The images are made in a temporary folder (or --dir) and only ever opened read-only by both tools.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PASSPHRASE = "qforensics-bench-pass"
MIB = 1 << 20


def convert_worker(image: str, passphrase: str, out: str) -> None:
    """Our equivalent of `qemu-img convert -O raw` for the allocated clusters of an encrypted image."""
    from qforensics.crypto import open_cipher
    from qforensics.crypto.aes import sample_clusters
    from qforensics.model.image import Image

    with Image(image) as img, open(out, "wb") as f:
        cipher = open_cipher(img, passphrase.encode())
        cs = img.header.cluster_size
        f.truncate(img.header.size)
        clusters = sample_clusters(img, limit=1 << 62)
        i = 0
        while i < len(clusters):  # runs contiguous in guest and host: one read and one decrypt call each
            guest, host = clusters[i]
            n = 1
            while (i + n < len(clusters) and clusters[i + n] == (guest + n * cs, host + n * cs)
                   and n * cs < MIB):
                n += 1
            data = img.file.read(host, n * cs)
            data += bytes(-len(data) % 512)
            f.seek(guest)
            f.write(cipher.decrypt(data, (host if cipher.physical else guest) // 512))
            i += n


def best(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def sh(*cmd: str) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: {res.stderr.strip()}")
    return res


def make_image(path: Path, fmt: str, mib: int) -> None:
    obj = f"secret,id=sec0,data={PASSPHRASE}"
    opts = "encrypt.format=aes,encrypt.key-secret=sec0" if fmt == "aes" else \
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"
    for _ in range(8):  # qemu's PBKDF2 benchmark sometimes says "Unable to get accurate CPU usage"
        path.unlink(missing_ok=True)
        res = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "--object", obj, "-o", opts, str(path),
                              f"{mib}M"], capture_output=True, text=True)
        if res.returncode == 0:
            break
    else:
        sys.exit(f"qemu-img create failed: {res.stderr.strip()}")
    sh("qemu-io", "--object", obj, "--image-opts", "-c", f"write -P 0x5c 0 {mib}M",
       f"driver=qcow2,file.filename={path},encrypt.key-secret=sec0")


def cipher_throughput(mib: int, runs: int) -> None:
    import numpy as np
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from qforensics.crypto.aes import legacy_aes_cipher
    from qforensics.crypto.sector import CipherSpec, ModeCipher

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, mib * MIB, dtype=np.uint8).tobytes()
    xts_key = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    ciphers = {
        "aes-128-cbc-plain64 (legacy AES)": (legacy_aes_cipher(PASSPHRASE.encode()),
                                             lambda iv: Cipher(algorithms.AES(PASSPHRASE.encode()[:16]),
                                                               modes.CBC(iv))),
        "aes-256-xts-plain64 (LUKS)": (ModeCipher(CipherSpec("aes", "xts", "plain64"), xts_key, physical=True),
                                       lambda iv: Cipher(algorithms.AES(xts_key), modes.XTS(iv))),
    }
    naive_bytes = min(len(data), 8 * MIB)
    view = memoryview(data)
    print(f"\n1. cipher throughput, {mib} MiB of random data, best of {runs} (MB = MiB)")
    print(f"   {'mode':34} {'1 MiB calls':>13} {'one call':>13} {'one Cipher per sector':>22}")
    for name, (ours, make) in ciphers.items():
        t_calls = best(lambda: [ours.decrypt(view[o:o + MIB], o // 512) for o in range(0, len(data), MIB)], runs)
        t_one = best(lambda: ours.decrypt(data, 0), runs)

        def naive():
            out = []
            for k in range(naive_bytes // 512):
                d = make(k.to_bytes(16, "little")).decryptor()
                out.append(d.update(data[k * 512:(k + 1) * 512]) + d.finalize())
            return b"".join(out)

        assert naive() == ours.decrypt(data[:naive_bytes], 0), name
        t_naive = best(naive, runs) * len(data) / naive_bytes
        print(f"   {name:34} {mib / t_calls:8.0f} MB/s {mib / t_one:8.0f} MB/s {mib / t_naive:17.0f} MB/s")


def whole_image(mib: int, runs: int, folder: Path) -> None:
    print(f"\n2. whole image to raw: {mib} MiB written, 64 KiB clusters, best of {runs} (fresh process per run)")
    print(f"   {'image':10} {'qemu-img convert':>18} {'qforensics':>18} {'ours/qemu':>10} {'in process':>18}  same raw")
    for fmt in ("aes", "luks"):
        image = folder / f"bench_{fmt}.qcow2"
        make_image(image, fmt, mib)
        stat = image.stat()
        q_out, o_out = folder / f"{fmt}.qemu.raw", folder / f"{fmt}.ours.raw"
        qemu = ["qemu-img", "convert", "--object", f"secret,id=sec0,data={PASSPHRASE}", "--image-opts",
                f"driver=qcow2,file.filename={image},encrypt.key-secret=sec0", "-O", "raw", str(q_out)]
        ours = [sys.executable, __file__, "--convert", str(image), PASSPHRASE, str(o_out)]
        t_qemu = best(lambda: sh(*qemu), runs)  # noqa: B023 - called right away
        t_ours = best(lambda: sh(*ours), runs)  # noqa: B023
        t_inproc = best(lambda: convert_worker(str(image), PASSPHRASE, str(o_out)), runs)  # noqa: B023
        same = hashlib.sha256(q_out.read_bytes()).digest() == hashlib.sha256(o_out.read_bytes()).digest()
        after = image.stat()
        assert (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns), "image changed"
        print(f"   {fmt:10} {t_qemu:6.3f} s {mib / t_qemu:4.0f} MB/s {t_ours:6.3f} s {mib / t_ours:4.0f} MB/s "
              f"{t_ours / t_qemu:9.2f}x {t_inproc:6.3f} s {mib / t_inproc:4.0f} MB/s  {'yes' if same else 'NO'}")
        if not same:
            sys.exit("the raw files differ")
        for p in (q_out, o_out):
            p.unlink()


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--convert":
        convert_worker(*sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=64, help="MiB decrypted / written (default 64)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs, best kept (default 3)")
    ap.add_argument("--dir", type=Path, help="folder for the images (default: a temporary one)")
    args = ap.parse_args()
    import cryptography

    print(f"qforensics.crypto benchmark: python {sys.version.split()[0]}, cryptography {cryptography.__version__}, "
          f"{sh('qemu-img', '--version').stdout.splitlines()[0]}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}")
    cipher_throughput(args.mib, args.runs)
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        whole_image(args.mib, args.runs, args.dir)
    else:
        with tempfile.TemporaryDirectory(prefix="qf-bench-crypto-") as d:
            whole_image(args.mib, args.runs, Path(d))


if __name__ == "__main__":
    main()
