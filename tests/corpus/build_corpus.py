#!/usr/bin/env python3
"""Rebuild the qemu-made qcow2 test corpus for qforensics.

Every case is built from scratch by qemu-img / qemu-io into
``tests/corpus/images/<case>/`` (cwd = that folder, so every backing-file and
data-file name recorded inside an image is relative).  After building, each case
is verified (``qemu-img check``, ``qemu-img info --output=json``, header feature
bits), the guest view is hashed (``qemu-img convert -O raw``, also per internal
snapshot), files larger than 256 KiB are gzipped (level 9, mtime 0, no file name
in the gzip header) and ``provenance.json`` is written.

Only the folders of the cases defined here are wiped and recreated; other
folders under ``images/`` (e.g. hand-made draft-structure cases added by a
sibling script) are never touched.

Usage:
    python3 tests/corpus/build_corpus.py              # all cases
    python3 tests/corpus/build_corpus.py --only v3_default --only bitmaps
    python3 tests/corpus/build_corpus.py --list

Standard library only.  Needs qemu-img and qemu-io (written against 7.2).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"
README = HERE / "README.md"

GZ_THRESHOLD = 256 * 1024  # files strictly larger than this are stored as <name>.gz
KiB = 1024
MiB = 1024 * 1024

PASSPHRASE = "qforensics-test-pass"
SECRET_OBJ = f"secret,id=sec0,data={PASSPHRASE}"

# feature bits (qcow2 spec)
INC_DIRTY, INC_CORRUPT, INC_DATA_FILE, INC_COMPRESSION, INC_EXTL2 = 1, 2, 4, 8, 16
COMPAT_LAZY = 1
AC_BITMAPS, AC_DATA_FILE_RAW = 1, 2


class BuildError(RuntimeError):
    pass


def _no_core() -> None:  # preexec_fn: the dirty case aborts qemu-io on purpose
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def qemu_version() -> str:
    out = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0].strip()  # "qemu-img version 7.2.22 (Debian 1:7.2+dfsg-...)"
    return first.replace("qemu-img version ", "qemu-img ", 1)


# --------------------------------------------------------------------------------------
# deterministic content for raw sources
# --------------------------------------------------------------------------------------

def _prng(seed: int, tag: int, n: int) -> bytes:
    out = bytearray()
    ctr = 0
    while len(out) < n:
        out += hashlib.sha256(struct.pack(">III", seed, tag, ctr)).digest()
        ctr += 1
    return bytes(out[:n])


def mixed_content(size: int, seed: int) -> bytes:
    """Varied, partly compressible content in 64 KiB chunks (chunk kind = index % 8).

    0 text lines, 1 zeros, 2 one-byte fill, 3 big-endian counter, 4 zeros,
    5 first: fully pseudo-random (incompressible), others: sparse 16-byte records,
    6 repeated 4 KiB motif with a 4 KiB pseudo-random block, 7 zeros.
    """
    chunk = 64 * KiB
    out = bytearray()
    for i in range(size // chunk):
        kind = i % 8
        if kind == 0:
            buf = bytearray()
            line = 0
            while len(buf) < chunk:
                buf += (f"seed={seed:02x} chunk={i:04d} line={line:05d} the quick brown fox "
                        f"jumps over the lazy dog; qforensics corpus\n").encode()
                line += 1
            data = bytes(buf[:chunk])
        elif kind in (1, 4, 7):
            data = bytes(chunk)
        elif kind == 2:
            data = bytes([(seed * 16 + i) & 0xFF or 0x5A]) * chunk
        elif kind == 3:
            data = b"".join(struct.pack(">I", (seed << 24) + i * chunk + n) for n in range(0, chunk, 4))
        elif kind == 5:
            if i == 5:
                data = _prng(seed, i, chunk)
            else:
                rec = bytearray(chunk)
                for off in range(0, chunk, 512):
                    rec[off:off + 16] = struct.pack(">IIQ", 0xC0FFEE00 + seed, i, off)
                data = bytes(rec)
        else:  # kind 6
            motif = bytes((j * 7 + i) & 0xFF for j in range(4 * KiB))
            data = motif * 8 + _prng(seed, i, 4 * KiB) + motif * 7
        assert len(data) == chunk
        out += data
    return bytes(out)


# --------------------------------------------------------------------------------------
# case builder
# --------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    main: str
    features: list[str]
    notes: str
    build: Callable[["Builder"], None]
    passphrase: str | None = None
    encrypted: bool = False
    expect_check: int = 0                 # expected exit code of `qemu-img check` on main
    expect_header: dict = field(default_factory=dict)   # header field -> value
    expect_info: dict = field(default_factory=dict)     # dotted path in info json -> value
    folder: str | None = None             # defaults to name


CASES: dict[str, Case] = {}


def case(name, main, features, notes, **kw):
    def deco(fn):
        CASES[name] = Case(name=name, main=main, features=features, notes=notes, build=fn, **kw)
        return fn
    return deco


class Builder:
    def __init__(self, c: Case, folder: Path):
        self.case = c
        self.dir = folder
        self.commands: list[str] = []
        self.log: list[str] = []

    # -- process helpers ---------------------------------------------------------------
    def run(self, argv: list[str], *, ok_codes=(0,), record=True, retry_on: str | None = None,
            retries: int = 0, cleanup: str | None = None) -> subprocess.CompletedProcess:
        attempt = 0
        while True:
            p = subprocess.run(argv, cwd=self.dir, capture_output=True, text=True, preexec_fn=_no_core)
            if (p.returncode not in ok_codes and retry_on and retry_on in p.stderr
                    and attempt < retries):
                attempt += 1
                self.log.append(f"retry {attempt} of {shlex.join(argv)}: {p.stderr.strip()}")
                if cleanup:
                    (self.dir / cleanup).unlink(missing_ok=True)
                continue
            break
        if p.returncode not in ok_codes:
            raise BuildError(f"[{self.case.name}] command failed (rc={p.returncode}): {shlex.join(argv)}\n"
                             f"stdout: {p.stdout}\nstderr: {p.stderr}")
        if argv[0] == "qemu-io" and re.search(r"(?im)^(.*(failed|error).*)$", p.stdout + p.stderr):
            raise BuildError(f"[{self.case.name}] qemu-io reported an error: {shlex.join(argv)}\n"
                             f"{p.stdout}{p.stderr}")
        if record:
            self.commands.append(shlex.join(argv))
        return p

    def create(self, img: str, size: str | None, *opts: str, backing: str | None = None,
               backing_fmt: str | None = None, fmt: str = "qcow2", secret: bool = False,
               retry_luks: bool = False) -> None:
        argv = ["qemu-img", "create", "-q", "-f", fmt]
        if secret:
            argv += ["--object", SECRET_OBJ]
        if opts:
            argv += ["-o", ",".join(opts)]
        if backing:
            argv += ["-b", backing, "-F", backing_fmt or "qcow2"]
        argv.append(img)
        if size is not None:
            argv.append(size)
        if retry_luks:
            # LUKS PBKDF benchmark is flaky on this VM: "Unable to get accurate CPU usage"
            self.run(argv, retry_on="Unable to get accurate CPU usage", retries=30, cleanup=img)
        else:
            self.run(argv)

    def io(self, img: str, *cmds: str, fmt: str = "qcow2", ok_codes=(0,)) -> None:
        argv = ["qemu-io", "-f", fmt]
        for c in cmds:
            argv += ["-c", c]
        argv.append(img)
        self.run(argv, ok_codes=ok_codes)

    def io_secret(self, img: str, *cmds: str) -> None:
        argv = ["qemu-io", "--object", SECRET_OBJ, "--image-opts"]
        for c in cmds:
            argv += ["-c", c]
        argv.append(f"driver=qcow2,file.filename={img},encrypt.key-secret=sec0")
        self.run(argv)

    def img(self, *args: str) -> None:
        self.run(["qemu-img", *args])

    def write_file(self, name: str, data: bytes, how: str) -> None:
        (self.dir / name).write_bytes(data)
        self.commands.append(f"# build_corpus.py writes {name} ({len(data)} bytes): {how}")


# --------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------

# --- versions ---------------------------------------------------------------------------

@case("v2_compat010", "v2_compat010.qcow2", ["v2", "cluster_size:65536", "refcount_bits:16"],
      "qcow2 version 2 (compat=0.10): 72-byte header, no feature fields, aligned and unaligned writes",
      expect_header={"version": 2})
def _(b: Builder):
    img = "v2_compat010.qcow2"
    b.create(img, "4M", "compat=0.10")
    b.io(img, "write -P 0x21 0 64k", "write -P 0x22 100k 200k", "write -P 0x23 1M 4k",
         "write -P 0x24 3000k 3000")


@case("v3_default", "v3_default.qcow2", ["v3", "cluster_size:65536", "refcount_bits:16"],
      "qcow2 version 3 with qemu-img defaults (compat=1.1, 64 KiB clusters, zlib, 16-bit refcounts)",
      expect_header={"version": 3, "incompat": 0, "compat": 0, "autoclear": 0, "header_length": 112})
def _(b: Builder):
    img = "v3_default.qcow2"
    b.create(img, "4M")
    b.io(img, "write -P 0x31 0 64k", "write -P 0x32 100k 200k", "write -P 0x33 1M 4k",
         "write -P 0x34 3000k 3000")


@case("v2_snapshot", "v2_snapshot.qcow2", ["v2", "snapshots", "cluster_size:65536"],
      "v2 image with one internal snapshot (v2 snapshot table entries, no extra data requirement)",
      expect_header={"version": 2, "nb_snapshots": 1})
def _(b: Builder):
    img = "v2_snapshot.qcow2"
    b.create(img, "4M", "compat=0.10")
    b.io(img, "write -P 0x41 0 512k", "write -P 0x42 2M 64k")
    b.img("snapshot", "-c", "snapA", img)
    b.io(img, "write -P 0x43 256k 512k", "write -P 0x44 3M 4k")


@case("v2_backing", "top.qcow2", ["v2", "backing_chain", "backing_file"],
      "v2 overlay on a v2 base (relative backing name, backing format extension 'qcow2')",
      expect_header={"version": 2})
def _(b: Builder):
    b.create("base.qcow2", "4M", "compat=0.10")
    b.io("base.qcow2", "write -P 0x51 0 2M")
    b.create("top.qcow2", None, "compat=0.10", backing="base.qcow2", backing_fmt="qcow2")
    b.io("top.qcow2", "write -P 0x52 1M 2M", "write -P 0x53 4k 4k")


# --- cluster sizes ------------------------------------------------------------------------

def _cluster_case(cs: int, vsize: str, extra_writes: tuple[str, ...] = ()):
    name = f"cluster_{cs}"
    img = f"{name}.qcow2"
    pat = {512: 0x61, 1024: 0x62, 4096: 0x63, 16384: 0x64, 65536: 0x65, 262144: 0x66,
           2097152: 0x67}[cs]

    @case(name, img, ["v3", f"cluster_size:{cs}"],
          f"cluster_bits={cs.bit_length() - 1}: {cs} byte clusters with writes crossing cluster and L2 boundaries",
          expect_header={"cluster_bits": cs.bit_length() - 1})
    def _(b: Builder):
        b.create(img, vsize, f"cluster_size={cs}")
        b.io(img, f"write -P 0x{pat:02x} 0 {cs}", f"write -P 0x{pat + 0x10:02x} {cs + 300} {cs * 2}",
             f"write -P 0x{pat + 0x20:02x} 1M 64k", *extra_writes)


_cluster_case(512, "4M", ("write -P 0x91 2M 100k", "write -P 0x92 4000k 1k"))
_cluster_case(1024, "4M", ("write -P 0x93 2M 100k",))
_cluster_case(4096, "4M", ("write -P 0x94 2M 100k",))
_cluster_case(16384, "4M", ("write -P 0x95 3M 20k",))
_cluster_case(65536, "4M", ("write -P 0x96 3M 200k",))
_cluster_case(262144, "8M", ("write -P 0x97 6M 300k",))
_cluster_case(2097152, "16M", ("write -P 0x98 9M 3M", "write -P 0x99 15M 4k"))


# --- refcount widths ----------------------------------------------------------------------

def _refcount_case(bits: int):
    name = f"refcount_bits_{bits}"
    img = f"{name}.qcow2"
    order = bits.bit_length() - 1
    snap = bits >= 2
    feats = ["v3", f"refcount_bits:{bits}"] + (["snapshots"] if snap else [])
    notes = (f"refcount_order={order}: {bits}-bit refcount entries"
             + ("; one snapshot so shared clusters have refcount 2" if snap else
                "; no snapshot possible (max refcount 1)"))

    @case(name, img, feats, notes,
          expect_header={"refcount_order": order, "nb_snapshots": 1 if snap else 0})
    def _(b: Builder):
        b.create(img, "4M", f"refcount_bits={bits}")
        b.io(img, f"write -P 0x{0x70 + order:02x} 0 256k", "write -P 0x7f 1M 64k")
        if snap:
            b.img("snapshot", "-c", "s1", img)
            b.io(img, "write -P 0x7e 128k 64k")


for _bits in (1, 2, 4, 8, 16, 32, 64):
    _refcount_case(_bits)


# --- lazy refcounts -------------------------------------------------------------------------

@case("lazy_refcounts_clean", "lazy_refcounts_clean.qcow2", ["v3", "lazy_refcounts"],
      "compat bit 0 (lazy refcounts) set, closed cleanly so the dirty bit is clear",
      expect_header={"compat": COMPAT_LAZY, "incompat": 0})
def _(b: Builder):
    img = "lazy_refcounts_clean.qcow2"
    b.create(img, "4M", "lazy_refcounts=on")
    b.io(img, "write -P 0x81 0 128k", "write -P 0x82 1M 64k")


@case("lazy_refcounts_dirty", "lazy_refcounts_dirty.qcow2", ["v3", "lazy_refcounts", "dirty"],
      "lazy refcounts + qemu-io abort (iotest 039): incompat bit 0 (dirty) set, refcounts of the last "
      "write missing; qemu-img check exit 2 (refcount=0 reference=1 errors) is expected",
      expect_check=2, expect_header={"compat": COMPAT_LAZY, "incompat": INC_DIRTY},
      expect_info={"dirty-flag": True})
def _(b: Builder):
    img = "lazy_refcounts_dirty.qcow2"
    b.create(img, "4M", "lazy_refcounts=on")
    b.io(img, "write -P 0x83 0 128k")
    # abort() -> SIGABRT, subprocess returncode -6 (shell: 134)
    b.io(img, "write -P 0x84 1M 128k", "abort", ok_codes=(-6, 134))


# --- compression ----------------------------------------------------------------------------

def _compressed_case(name: str, ctype: str, seed: int):
    img = f"{name}.qcow2"
    feats = ["v3", "compressed", ctype]
    exp_inc = INC_COMPRESSION if ctype == "zstd" else 0

    @case(name, img, feats,
          f"qemu-img convert -c ({ctype}) of a varied raw source (text, counters, random, zeros), then "
          f"qemu-io write -c into holes, a partial overwrite of a compressed cluster and write -z over one",
          expect_header={"incompat": exp_inc},
          expect_info={"format-specific.data.compression-type": ctype})
    def _(b: Builder):
        b.write_file("source.raw", mixed_content(2 * MiB, seed),
                     f"mixed_content(size=2097152, seed={seed}) (64 KiB chunks: text, zeros, fill, counter, "
                     "random, sparse records, motif+random)")
        argv = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c"]
        if ctype == "zstd":
            argv += ["-o", "compression_type=zstd"]
        argv += ["source.raw", img]
        b.run(argv)
        b.io(img, "write -c -P 0xc1 64k 64k", "write -c -P 0xc2 576k 64k",
             "write -P 0xc3 8k 4k", "write -z 128k 64k")


_compressed_case("compressed_zlib", "zlib", 1)
_compressed_case("compressed_zstd", "zstd", 2)


# --- extended L2 ----------------------------------------------------------------------------

@case("extended_l2", "extended_l2.qcow2", ["v3", "extended_l2", "subclusters", "zero_clusters", "discard",
                                           "cluster_size:65536"],
      "extended L2 (64 KiB clusters, 2 KiB subclusters): partial subcluster allocation, write -z of "
      "subclusters, whole-cluster discard, unallocated subclusters",
      expect_header={"incompat": INC_EXTL2},
      expect_info={"format-specific.data.extended-l2": True})
def _(b: Builder):
    img = "extended_l2.qcow2"
    b.create(img, "4M", "extended_l2=on", "cluster_size=64k")
    b.io(img,
         "write -P 0xe1 0 2k",          # subcluster 0 of cluster 0
         "write -P 0xe2 8k 4k",         # subclusters 4-5
         "write -P 0xe3 70k 6k",        # cluster 1, subclusters 3-5
         "write -P 0xe4 128k 64k",      # cluster 2 fully
         "write -z 132k 8k",            # cluster 2 subclusters 2-5 -> zero bits
         "write -z 256k 4k",            # cluster 4: zero bits on an unallocated cluster
         "write -P 0xe5 1M 64k",
         "discard 1M 64k",              # whole-cluster discard -> all-zero bitmap
         "write -P 0xe6 2M 2k",
         "write -P 0xe7 2174k 2k")      # cluster 33, last subcluster


@case("extended_l2_backing", "top.qcow2", ["v3", "extended_l2", "subclusters", "backing_file",
                                           "zero_clusters", "cluster_size:131072"],
      "extended L2 overlay (128 KiB clusters, 4 KiB subclusters) on a normal 64 KiB-cluster base: "
      "unallocated subclusters read through to the base, some zeroed",
      expect_header={"incompat": INC_EXTL2, "cluster_bits": 17})
def _(b: Builder):
    b.create("base.qcow2", "4M", "cluster_size=64k")
    b.io("base.qcow2", "write -P 0xb0 0 1M", "write -P 0xb1 2M 256k")
    b.create("top.qcow2", None, "extended_l2=on", "cluster_size=128k", backing="base.qcow2",
             backing_fmt="qcow2")
    b.io("top.qcow2", "write -P 0xe1 4k 4k", "write -P 0xe2 132k 8k", "write -z 200k 8k",
         "write -P 0xe3 2052k 4k", "write -z 2176k 12k", "write -P 0xe4 3M 4k")


# --- external data file ------------------------------------------------------------------------

@case("data_file", "data_file.qcow2", ["v3", "data_file"],
      "external data file (data_file_raw=off) with a relative name; guest data lives in data_file.data",
      expect_header={"incompat": INC_DATA_FILE, "autoclear": 0},
      expect_info={"format-specific.data.data-file": "data_file.data",
                   "format-specific.data.data-file-raw": False})
def _(b: Builder):
    img = "data_file.qcow2"
    b.create(img, "4M", "data_file=data_file.data", "data_file_raw=off")
    b.io(img, "write -P 0xd1 0 64k", "write -P 0xd2 200k 100k", "write -P 0xd3 2M 4k")


@case("data_file_raw", "data_file_raw.qcow2", ["v3", "data_file", "data_file_raw"],
      "external data file with data_file_raw=on (autoclear bit 1): data_file_raw.data is a valid raw image",
      expect_header={"incompat": INC_DATA_FILE, "autoclear": AC_DATA_FILE_RAW},
      expect_info={"format-specific.data.data-file": "data_file_raw.data",
                   "format-specific.data.data-file-raw": True})
def _(b: Builder):
    img = "data_file_raw.qcow2"
    b.create(img, "4M", "data_file=data_file_raw.data", "data_file_raw=on")
    b.io(img, "write -P 0xd4 0 64k", "write -P 0xd5 200k 100k", "write -P 0xd6 2M 4k")


# --- backing chains ------------------------------------------------------------------------

@case("backing_chain", "top.qcow2", ["v3", "backing_chain", "backing_file"],
      "base.qcow2 <- mid.qcow2 <- top.qcow2 (relative names, -F qcow2); each layer writes a different, "
      "partly overlapping range, plus partial-cluster writes that COW from below",
      expect_info={"backing-filename": "mid.qcow2", "backing-filename-format": "qcow2"})
def _(b: Builder):
    b.create("base.qcow2", "4M")
    b.io("base.qcow2", "write -P 0xa0 0 2M")
    b.create("mid.qcow2", None, backing="base.qcow2", backing_fmt="qcow2")
    b.io("mid.qcow2", "write -P 0xa1 1M 2M", "write -P 0xa2 100k 4k")
    b.create("top.qcow2", None, backing="mid.qcow2", backing_fmt="qcow2")
    b.io("top.qcow2", "write -P 0xa3 2560k 1M", "write -P 0xa4 1020k 8k", "write -P 0xa5 3968k 128k")


@case("backing_chain_raw_base", "top.qcow2", ["v3", "backing_chain", "backing_file", "raw_backing"],
      "base.raw <- mid.qcow2 (-F raw) <- top.qcow2 (-F qcow2): chain whose bottom layer is a raw file",
      expect_info={"backing-filename": "mid.qcow2"})
def _(b: Builder):
    b.create("base.raw", "4M", fmt="raw")
    b.io("base.raw", "write -P 0xa6 0 2M", fmt="raw")
    b.create("mid.qcow2", None, backing="base.raw", backing_fmt="raw")
    b.io("mid.qcow2", "write -P 0xa7 1M 2M")
    b.create("top.qcow2", None, backing="mid.qcow2", backing_fmt="qcow2")
    b.io("top.qcow2", "write -P 0xa8 2560k 1M", "write -P 0xa9 60k 8k")


@case("backing_raw_fmt", "overlay.qcow2", ["v3", "backing_file", "raw_backing", "backing_format_ext"],
      "single qcow2 overlay on a raw file; the backing-format header extension (0xE2792ACA) says 'raw'",
      expect_info={"backing-filename": "base.raw", "backing-filename-format": "raw"})
def _(b: Builder):
    b.create("base.raw", "2M", fmt="raw")
    b.io("base.raw", "write -P 0xaa 0 1M", fmt="raw")
    b.create("overlay.qcow2", None, backing="base.raw", backing_fmt="raw")
    b.io("overlay.qcow2", "write -P 0xab 512k 1M", "write -P 0xac 1000 1000")


# --- snapshots / bitmaps ---------------------------------------------------------------------

@case("snapshots", "snapshots.qcow2", ["v3", "snapshots"],
      "two internal snapshots (snapA, snapB) with different data in each and in the active layer",
      expect_header={"nb_snapshots": 2})
def _(b: Builder):
    img = "snapshots.qcow2"
    b.create(img, "4M")
    b.io(img, "write -P 0x11 0 1M", "write -P 0x12 3M 64k")
    b.img("snapshot", "-c", "snapA", img)
    b.io(img, "write -P 0x13 512k 1M", "write -P 0x14 8k 4k")
    b.img("snapshot", "-c", "snapB", img)
    b.io(img, "write -P 0x15 1M 1M", "write -P 0x16 3M 4k")


@case("bitmaps", "bitmaps.qcow2", ["v3", "bitmaps"],
      "persistent dirty bitmaps: b0 (64 KiB granularity, enabled/auto) and b1 (128 KiB, disabled); "
      "data written before, between and after",
      expect_header={"autoclear": AC_BITMAPS})
def _(b: Builder):
    img = "bitmaps.qcow2"
    b.create(img, "4M")
    b.io(img, "write -P 0x10 0 128k")
    b.img("bitmap", "--add", img, "b0")
    b.img("bitmap", "--add", "-g", "128k", img, "b1")
    b.io(img, "write -P 0x11 1M 256k")
    b.img("bitmap", "--disable", img, "b1")
    b.io(img, "write -P 0x12 2M 64k", "write -P 0x13 3M 4k")


# --- encryption ------------------------------------------------------------------------------

@case("encrypted_aes", "encrypted_aes.qcow2", ["v3", "aes", "encrypted"],
      "legacy AES-CBC (crypt_method 1); key = passphrase bytes, IV = plain64 guest sector",
      passphrase=PASSPHRASE, encrypted=True, expect_header={"crypt_method": 1})
def _(b: Builder):
    img = "encrypted_aes.qcow2"
    b.create(img, "4M", "encrypt.format=aes", "encrypt.key-secret=sec0", secret=True)
    b.io_secret(img, "write -P 0xf1 0 64k", "write -P 0xf2 1M 4k", "write -P 0xf3 2M 512")


@case("encrypted_luks", "encrypted_luks.qcow2", ["v3", "luks", "encrypted"],
      "LUKS1 inside qcow2 (crypt_method 2, FDE header extension); iter-time=10 ms",
      passphrase=PASSPHRASE, encrypted=True, expect_header={"crypt_method": 2})
def _(b: Builder):
    img = "encrypted_luks.qcow2"
    b.create(img, "4M", "encrypt.format=luks", "encrypt.key-secret=sec0", "encrypt.iter-time=10",
             secret=True, retry_luks=True)
    b.io_secret(img, "write -P 0xf4 0 64k", "write -P 0xf5 1M 4k", "write -P 0xf6 2M 512")


# --- preallocation / zero / discard -----------------------------------------------------------------

@case("prealloc_metadata", "prealloc_metadata.qcow2", ["v3", "prealloc_metadata", "cluster_size:65536"],
      "preallocation=metadata, 64 MiB: every L2 entry points at a preallocated zero cluster "
      "(ZERO_ALLOC), some overwritten with data")
def _(b: Builder):
    img = "prealloc_metadata.qcow2"
    b.create(img, "64M", "preallocation=metadata", "cluster_size=64k")
    b.io(img, "write -P 0x71 0 64k", "write -P 0x72 10M 100k", "write -P 0x73 63M 4k")


@case("zero_clusters_v3", "zero_clusters_v3.qcow2", ["v3", "zero_clusters", "discard"],
      "v3 zero flags: write -z over data (ZERO_ALLOC keeps the host cluster), write -z -u (ZERO_PLAIN), "
      "write -z on unallocated, discard (becomes a zero cluster in v3), sub-cluster write -z")
def _(b: Builder):
    img = "zero_clusters_v3.qcow2"
    b.create(img, "4M")
    b.io(img, "write -P 0x51 0 512k", "write -z 64k 64k", "write -z -u 128k 64k", "discard 256k 64k",
         "write -z 1M 128k", "write -z -u 2M 64k", "write -P 0x52 3M 64k", "write -z 3080k 4k",
         "discard 3M 32k")


@case("zero_writes_v2", "zero_writes_v2.qcow2", ["v2", "zero_writes", "discard"],
      "v2 has no zero flag: write -z over data without a backing file becomes unallocated, discard frees "
      "clusters, sub-cluster zero writes are written as zero bytes",
      expect_header={"version": 2})
def _(b: Builder):
    img = "zero_writes_v2.qcow2"
    b.create(img, "4M", "compat=0.10")
    b.io(img, "write -P 0x53 0 512k", "write -z 64k 64k", "write -z -u 128k 64k", "discard 256k 64k",
         "write -z 1M 128k", "write -z 2M 4k", "write -z 400k 4k")


# --- combinations ------------------------------------------------------------------------------

@case("combo_snapshots_bitmaps", "combo_snapshots_bitmaps.qcow2", ["v3", "snapshots", "bitmaps"],
      "2 snapshots + 2 bitmaps (one disabled); note: qemu-img check -r on such an image drops the "
      "snapshot table in 7.2 (see qemu-notes), never repair this file",
      expect_header={"nb_snapshots": 2, "autoclear": AC_BITMAPS})
def _(b: Builder):
    img = "combo_snapshots_bitmaps.qcow2"
    b.create(img, "4M")
    b.io(img, "write -P 0x31 0 256k")
    b.img("bitmap", "--add", img, "dirty0")
    b.io(img, "write -P 0x32 1M 64k")
    b.img("snapshot", "-c", "s1", img)
    b.img("bitmap", "--add", "-g", "256k", img, "dirty1")
    b.io(img, "write -P 0x33 128k 256k")
    b.img("snapshot", "-c", "s2", img)
    b.img("bitmap", "--disable", img, "dirty0")
    b.io(img, "write -P 0x34 2M 64k")


@case("combo_zstd_snapshots", "combo_zstd_snapshots.qcow2", ["v3", "compressed", "zstd", "snapshots"],
      "zstd compressed clusters (qemu-io write -c) shared by two snapshots, later overwritten/COWed",
      expect_header={"incompat": INC_COMPRESSION, "nb_snapshots": 2})
def _(b: Builder):
    img = "combo_zstd_snapshots.qcow2"
    b.create(img, "4M", "compression_type=zstd")
    b.io(img, "write -c -P 0x41 0 64k", "write -c -P 0x42 64k 64k", "write -c -P 0x43 1M 128k",
         "write -P 0x44 2M 64k")
    b.img("snapshot", "-c", "s1", img)
    b.io(img, "write -P 0x45 4k 4k", "write -c -P 0x46 3M 64k")
    b.img("snapshot", "-c", "s2", img)
    b.io(img, "write -z 64k 64k", "write -P 0x47 1M 64k")


@case("combo_extl2_compressed", "combo_extl2_compressed.qcow2",
      ["v3", "extended_l2", "subclusters", "compressed", "zlib", "snapshots", "lazy_refcounts"],
      "extended L2 with compressed clusters (bitmap must be 0), a partial overwrite of a compressed "
      "cluster, lazy refcounts (clean) and one snapshot",
      expect_header={"incompat": INC_EXTL2, "compat": COMPAT_LAZY, "nb_snapshots": 1})
def _(b: Builder):
    img = "combo_extl2_compressed.qcow2"
    b.create(img, "4M", "extended_l2=on", "cluster_size=64k", "lazy_refcounts=on")
    b.io(img, "write -c -P 0x61 0 64k", "write -P 0x62 64k 4k", "write -c -P 0x63 128k 64k")
    b.img("snapshot", "-c", "s1", img)
    b.io(img, "write -P 0x64 130k 2k", "write -z 8k 4k", "write -P 0x65 1M 6k")


# --- demo ---------------------------------------------------------------------------------------

@case("sample", "sample.qcow2", ["v3", "snapshots", "bitmaps", "cluster_size:4096"],
      "small demo image for the README: v3, 1 snapshot, 1 bitmap, a few writes; 4 KiB clusters so it "
      "stays under 256 KiB (with 64 KiB clusters the same content is ~960 KiB)",
      expect_header={"nb_snapshots": 1, "autoclear": AC_BITMAPS})
def _(b: Builder):
    img = "sample.qcow2"
    b.create(img, "1M", "cluster_size=4k")
    b.io(img, "write -P 0x5a 0 16k")
    b.img("snapshot", "-c", "snap1", img)
    b.io(img, "write -P 0xa5 16k 16k")
    b.img("bitmap", "--add", img, "bm0")
    b.io(img, "write -P 0x3c 64k 8k")


# --------------------------------------------------------------------------------------
# verification, hashing, gzip, provenance
# --------------------------------------------------------------------------------------

def parse_header(path: Path) -> dict:
    with open(path, "rb") as f:
        h = f.read(4096)
    magic, version, bfo, bfs, cbits, size, crypt, l1s, l1o, rto, rtc, nbs, so = struct.unpack_from(
        ">IIQIIQIIQQIIQ", h, 0)
    d = {"magic": magic, "version": version, "cluster_bits": cbits, "size": size, "crypt_method": crypt,
         "nb_snapshots": nbs, "backing_file_offset": bfo}
    if version >= 3:
        inc, comp, ac, ro, hl = struct.unpack_from(">QQQII", h, 72)
        d.update(incompat=inc, compat=comp, autoclear=ac, refcount_order=ro, header_length=hl)
        d["compression_type"] = h[104] if hl > 104 else 0
    else:
        d.update(incompat=0, compat=0, autoclear=0, refcount_order=4, header_length=72, compression_type=0)
    return d


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def dig(obj, dotted: str):
    for k in dotted.split("."):
        obj = obj[k]
    return obj


def _secret_args(c: Case, img: str) -> list[str]:
    if c.encrypted:
        return ["--object", SECRET_OBJ, "--image-opts",
                f"driver=qcow2,file.filename={img},encrypt.key-secret=sec0"]
    return ["-f", "qcow2", img]


def verify(c: Case, folder: Path) -> dict:
    """Run qemu-img check/info/convert; return facts for provenance. Raises on unexpected results."""
    res: dict = {}

    def run(argv):
        return subprocess.run(argv, cwd=folder, capture_output=True, text=True)

    # check every qcow2 file of the case (main must match expect_check, others must be clean)
    checks = {}
    for p in sorted(folder.iterdir()):
        if p.suffix != ".qcow2":
            continue
        r = run(["qemu-img", "check", *_secret_args(c, p.name)])
        text = (r.stderr + r.stdout).strip()
        checks[p.name] = {"exit": r.returncode, "output": text.splitlines()[:8]}
        want = c.expect_check if p.name == c.main else 0
        if r.returncode != want:
            raise BuildError(f"[{c.name}] qemu-img check {p.name}: exit {r.returncode}, expected {want}\n{text}")
    res["check"] = checks

    r = run(["qemu-img", "info", "--output=json", "--backing-chain", *_secret_args(c, c.main)])
    if r.returncode != 0:
        raise BuildError(f"[{c.name}] qemu-img info failed: {r.stderr}")
    info_list = json.loads(r.stdout)
    info = info_list[0] if isinstance(info_list, list) else info_list
    res["info"] = info
    for k, v in c.expect_info.items():
        got = dig(info, k)
        if got != v:
            raise BuildError(f"[{c.name}] info {k} = {got!r}, expected {v!r}")
    # also plain info without secret must work (qcow2 metadata is not encrypted)
    r2 = run(["qemu-img", "info", "--output=json", c.main])
    if r2.returncode != 0:
        raise BuildError(f"[{c.name}] plain qemu-img info failed: {r2.stderr}")

    hdr = parse_header(folder / c.main)
    if hdr["magic"] != 0x514649FB:
        raise BuildError(f"[{c.name}] bad magic")
    for k, v in c.expect_header.items():
        if hdr[k] != v:
            raise BuildError(f"[{c.name}] header {k} = {hdr[k]:#x}, expected {v:#x}")
    res["header"] = hdr

    # guest view hashes (whole virtual disk; per snapshot)
    with tempfile.TemporaryDirectory(prefix="qfcorpus-") as td:
        def conv(extra: list[str]) -> str:
            out = Path(td) / "guest.raw"
            r = run(["qemu-img", "convert", *extra, "-O", "raw", str(out)])
            if r.returncode != 0:
                raise BuildError(f"[{c.name}] convert failed: {r.stderr}")
            d = sha256_file(out)
            out.unlink()
            return d
        if c.encrypted:
            res["guest_sha256"] = conv(["--object", SECRET_OBJ, "--image-opts",
                                        f"driver=qcow2,file.filename={c.main},encrypt.key-secret=sec0"])
        else:
            res["guest_sha256"] = conv(["-f", "qcow2", c.main])
        snaps = {}
        for s in info.get("snapshots", []):
            snaps[s["name"]] = conv(["-f", "qcow2", "-l", f"snapshot.name={s['name']}", c.main])
        if snaps:
            res["snapshot_sha256"] = snaps
    return res


def gzip_file(src: Path) -> Path:
    dst = src.with_name(src.name + ".gz")
    with open(src, "rb") as fi, open(dst, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as gz:
            shutil.copyfileobj(fi, gz, 1 << 20)
    src.unlink()
    return dst


def build_case(c: Case, made_by: str) -> dict:
    folder = IMAGES / (c.folder or c.name)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    b = Builder(c, folder)
    c.build(b)
    if not (folder / c.main).exists():
        raise BuildError(f"[{c.name}] main file {c.main} missing")
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith("core")]
    if leftovers:
        raise BuildError(f"[{c.name}] unexpected files: {leftovers}")

    before = {p.name: sha256_file(p) for p in folder.iterdir() if p.is_file()}
    facts = verify(c, folder)
    after = {p.name: sha256_file(p) for p in folder.iterdir() if p.is_file()}
    if before != after:
        raise BuildError(f"[{c.name}] verification modified files: "
                         f"{sorted(k for k in after if before.get(k) != after[k])}")

    files = []
    for p in sorted(folder.iterdir()):
        size = p.stat().st_size
        entry = {"name": p.name, "sha256": after[p.name], "size": size}
        stored = gzip_file(p) if size > GZ_THRESHOLD else p
        entry["stored_as"] = stored.name
        entry["stored_size"] = stored.stat().st_size
        files.append(entry)

    hdr = facts["header"]
    prov = {
        "case": c.name,
        "main": c.main,
        "files": files,
        "made_by": made_by,
        "commands": b.commands,
        "passphrase": c.passphrase,
        "features": c.features,
        "valid": True,
        "notes": c.notes,
        "virtual_size": facts["info"]["virtual-size"],
        "header": {k: hdr[k] for k in ("version", "cluster_bits", "crypt_method", "nb_snapshots",
                                       "incompat", "compat", "autoclear", "refcount_order",
                                       "header_length", "compression_type")},
        "qemu_img_check": {"exit": facts["check"][c.main]["exit"],
                           "output": facts["check"][c.main]["output"]},
        "guest_sha256": facts["guest_sha256"],
    }
    unstable = []
    if "snapshots" in c.features:
        unstable.append("snapshot table holds the creation time (date_sec/date_nsec)")
    if "luks" in c.features:
        unstable.append("LUKS salts, IVs and master key are random")
    prov["byte_stable"] = not unstable
    if unstable:
        prov["byte_stable_note"] = "rebuilds differ in bytes (guest_sha256 does not): " + "; ".join(unstable)
    if "snapshot_sha256" in facts:
        prov["snapshot_sha256"] = facts["snapshot_sha256"]
    if b.log:
        prov["build_log"] = b.log
    if c.passphrase is None:
        del prov["passphrase"]
    (folder / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    return prov


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# --------------------------------------------------------------------------------------
# README table
# --------------------------------------------------------------------------------------

TABLE_BEGIN = "<!-- cases:begin (generated by build_corpus.py) -->"
TABLE_END = "<!-- cases:end -->"


def cases_table() -> str:
    rows = ["| case | main | features | what it is for |", "|---|---|---|---|"]
    for c in CASES.values():
        rows.append(f"| `{c.name}` | `{c.main}` | {', '.join(c.features)} | {c.notes} |")
    return "\n".join(rows)


def update_readme() -> None:
    if not README.exists():
        return
    text = README.read_text()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        return
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    README.write_text(f"{head}{TABLE_BEGIN}\n{cases_table()}\n{TABLE_END}{tail}")


# --------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", metavar="CASE", help="build only this case (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)

    if args.list:
        for c in CASES.values():
            print(f"{c.name:26} {c.main:32} {','.join(c.features)}")
        return 0

    names = args.only or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"unknown case(s): {', '.join(unknown)} (see --list)")
    for tool in ("qemu-img", "qemu-io"):
        if shutil.which(tool) is None:
            print(f"error: {tool} not found", file=sys.stderr)
            return 2

    made_by = qemu_version()
    IMAGES.mkdir(parents=True, exist_ok=True)
    failures = []
    rows = []
    for n in names:
        c = CASES[n]
        try:
            prov = build_case(c, made_by)
        except BuildError as e:
            failures.append(n)
            print(f"FAILED {n}: {e}", file=sys.stderr)
            continue
        stored = dir_size(IMAGES / (c.folder or c.name))
        rows.append((n, c.main, prov["virtual_size"], len(prov["files"]), stored,
                     prov["qemu_img_check"]["exit"], ",".join(c.features)))

    if not args.only:
        update_readme()

    print(f"\n{'case':26} {'main':32} {'vsize':>9} {'files':>5} {'stored':>9} {'check':>5}  features")
    for r in rows:
        print(f"{r[0]:26} {r[1]:32} {r[2]:>9} {r[3]:>5} {r[4]:>9} {r[5]:>5}  {r[6]}")
    total = dir_size(HERE)
    print(f"\nbuilt {len(rows)} case(s), {len(failures)} failed; tests/corpus/ total {total} bytes "
          f"({total / MiB:.2f} MiB)")
    if failures:
        print("failed: " + ", ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
