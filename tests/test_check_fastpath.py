"""The contiguous-run fast path of `check` agrees with the general path, and with qemu-img check.

A batch of L2 tables whose every table is one run of contiguous clusters
(preallocated and sequentially written images) is checked run by run
(``tables.contiguous_rows``). Here each image is checked twice in process, as
it is and with ``contiguous_rows`` forced to answer None (the general, entry by
entry path), and every finding, counter and the exit code must be the same;
the images are then checked against live qemu-img check. The images are
preallocated ones made with qemu-img, with one fault poked in each, and the
corpus and its corruptions.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from conftest import CASES, image_path, qcow2_files, qemu_img
from corruptions import KINDS, make
from qforensics.checks import check_image
from qforensics.model import Image
from qforensics.model import tables
from test_check_vs_qemu import assert_same_as_qemu

OFFSET = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63
BASES = {  # name: (virtual size, qemu-img create options)
    "prealloc_4k": ("16M", "preallocation=metadata,cluster_size=4k"),
    "prealloc_64k": ("1G", "preallocation=metadata,cluster_size=64k"),  # L2 tables between their data
    "prealloc_4k_refbits1": ("16M", "preallocation=metadata,cluster_size=4k,refcount_bits=1"),
    "prealloc_4k_refbits64": ("16M", "preallocation=metadata,cluster_size=4k,refcount_bits=64"),
}


class Img:
    """The few header fields a poke needs (struct only, independent of the code under test)."""

    def __init__(self, path: Path):
        self.path = path
        d = self.read(0, 4096)
        self.cb = struct.unpack_from(">I", d, 20)[0]
        self.cs = 1 << self.cb
        self.l1_offset = struct.unpack_from(">Q", d, 40)[0]
        self.reft_offset = struct.unpack_from(">Q", d, 48)[0]
        self.order = struct.unpack_from(">I", d, 96)[0]

    def read(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def u64(self, offset: int) -> int:
        return struct.unpack(">Q", self.read(offset, 8))[0]

    def poke(self, offset: int, data: bytes) -> None:
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def l2(self, i: int) -> int:
        return self.u64(self.l1_offset + 8 * i) & OFFSET

    def set_refcount(self, cluster: int, value: int) -> None:
        bits = 1 << self.order
        per_block = self.cs * 8 // bits
        block = self.u64(self.reft_offset + 8 * (cluster // per_block)) & ~0x1FF
        k = cluster % per_block
        if bits >= 8:
            self.poke(block + k * bits // 8, value.to_bytes(bits // 8, "big"))
        else:
            with open(self.path, "r+b") as f:
                f.seek(block + k * bits // 8)
                byte = f.read(1)[0]
                shift = k * bits % 8
                byte = byte & ~(((1 << bits) - 1) << shift) | (value << shift)
                f.seek(block + k * bits // 8)
                f.write(bytes([byte]))

    def first_data_cluster(self, table: int = 0) -> int:
        return (self.u64(self.l2(table)) & OFFSET) >> self.cb


def _refcount_2(m: Img) -> None:
    m.set_refcount(m.first_data_cluster() + 5, 2)


def _refcount_0(m: Img) -> None:
    m.set_refcount(m.first_data_cluster() + 5, 0)


def _copied_cleared_table(m: Img) -> None:
    """A whole table with OFLAG_COPIED clear: still one contiguous run, every entry wrong."""
    n = m.cs // 8
    raw = bytearray(m.read(m.l2(1), m.cs))
    for k in range(n):
        struct.pack_into(">Q", raw, 8 * k, struct.unpack_from(">Q", raw, 8 * k)[0] & ~COPIED)
    m.poke(m.l2(1), bytes(raw))


def _copied_cleared_entry(m: Img) -> None:
    at = m.l2(0) + 8 * 3
    m.poke(at, struct.pack(">Q", m.u64(at) & ~COPIED))


def _table_copied_over_another(m: Img) -> None:
    """L2 table 1 becomes a copy of table 0: two runs over the same clusters."""
    m.poke(m.l2(1), m.read(m.l2(0), m.cs))


def _run_over_metadata(m: Img) -> None:
    """Table 0 maps one contiguous run starting at cluster 1: over the L1, refcount and L2 clusters."""
    n = m.cs // 8
    m.poke(m.l2(0), b"".join(struct.pack(">Q", COPIED | (1 + k) * m.cs) for k in range(n)))


def _same_table_twice(m: Img) -> None:
    """Two L1 entries name the same L2 table."""
    m.poke(m.l1_offset + 8, struct.pack(">Q", m.u64(m.l1_offset)))


def _reftable_unaligned(m: Img) -> None:
    m.poke(m.reft_offset, struct.pack(">Q", m.u64(m.reft_offset) + 0x200))


def _truncated(m: Img) -> None:
    """The file ends before the last data clusters (as qemu's preallocation lays them out)."""
    size = m.path.stat().st_size
    with open(m.path, "r+b") as f:
        f.truncate(size - 16 * m.cs)


def _past_eof_run(m: Img) -> None:
    """Table 1's run moved so that its second half lies past the end of the file."""
    n = m.cs // 8
    start = (m.path.stat().st_size >> m.cb) - n // 2
    m.poke(m.l2(1), b"".join(struct.pack(">Q", COPIED | (start + k) * m.cs) for k in range(n)))


def _snapshot(m: Img) -> None:
    """A snapshot: every data cluster shared (refcount 2) and OFLAG_COPIED clear in the active tables."""
    res = subprocess.run(["qemu-img", "snapshot", "-c", "s1", m.path.name], cwd=m.path.parent,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


POKES = {
    "clean": None,
    "refcount_2": _refcount_2,
    "refcount_0": _refcount_0,
    "copied_cleared_table": _copied_cleared_table,
    "copied_cleared_entry": _copied_cleared_entry,
    "table_copied_over_another": _table_copied_over_another,
    "run_over_metadata": _run_over_metadata,
    "same_table_twice": _same_table_twice,
    "reftable_unaligned": _reftable_unaligned,
    "truncated": _truncated,
    "past_eof_run": _past_eof_run,
    "snapshot": _snapshot,
}
CASES_MADE = [(b, p) for b in BASES for p in POKES
              if not (p == "snapshot" and b == "prealloc_4k_refbits1")]  # qemu cannot share a 1-bit refcount


def _create(base: str, folder: Path) -> Path:
    """A fresh base image (qemu-img writes only metadata: copying the sparse data would be slower)."""
    size, options = BASES[base]
    res = qemu_img("create", "-q", "-f", "qcow2", "-o", options, f"{base}.qcow2", size, cwd=folder)
    assert res.returncode == 0, res.stderr
    return folder / f"{base}.qcow2"


def _both_paths(path: Path, monkeypatch) -> tuple[int, list[dict]]:
    """Check in process with and without the fast path; the reports must be the same.
    Returns how many batches were found contiguous, and the findings."""
    real = tables.contiguous_rows
    found = [0]

    def spy(desc, cluster_size):
        answer = real(desc, cluster_size)
        found[0] += answer is not None
        return answer

    reports = []
    for fast in (True, False):
        monkeypatch.setattr(tables, "contiguous_rows", spy if fast else (lambda desc, cluster_size: None))
        with Image(path) as img:
            r = check_image(img)
        reports.append(([f.to_json() for f in r.findings], r.stats, r.exit_code, r.to_json(path.name)))
    monkeypatch.setattr(tables, "contiguous_rows", real)
    fast, general = reports
    assert fast[0] == general[0]  # every finding, in the same order
    assert fast[1:] == general[1:]
    return found[0], fast[0]


@pytest.mark.parametrize(("base", "poke"), CASES_MADE, ids=[f"{b}/{p}" for b, p in CASES_MADE])
def test_fast_path_agrees_on_made_images(tmp_path, monkeypatch, base, poke):
    path = _create(base, tmp_path)
    if POKES[poke] is not None:
        POKES[poke](Img(path))
    contiguous, findings = _both_paths(path, monkeypatch)
    if poke in ("clean", "snapshot"):
        assert contiguous, "the fast path was never taken on a preallocated image"
    # past 10000 findings of one code the rest are only counted (a ".more" finding that keeps qemu's counter)
    assert_same_as_qemu(path)


FILES = [(c, n) for c in sorted(CASES) for n in qcow2_files(c)]


@pytest.mark.parametrize(("case", "name"), FILES, ids=[f"{c}/{n}" for c, n in FILES])
def test_fast_path_agrees_on_corpus(corpus, monkeypatch, case, name):
    _both_paths(image_path(corpus, case, name), monkeypatch)


@pytest.mark.parametrize("kind", KINDS, ids=[k.id for k in KINDS])
def test_fast_path_agrees_on_corruptions(corpus, tmp_path, monkeypatch, kind):
    _both_paths(make(kind, image_path(corpus, kind.base).parent, CASES[kind.base]["main"], tmp_path), monkeypatch)
