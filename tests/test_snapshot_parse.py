"""The snapshot table reader (model/snapshot_table.py, struct) against the generated Kaitai parser
(ksy/snapshot_table.ksy), on every corpus image with snapshots and on damaged copies of their tables."""

from __future__ import annotations

import dataclasses
import random
from io import BytesIO

import kaitaistruct
import pytest
from conftest import CASES, qcow2_files
from kaitaistruct import KaitaiStream

from qforensics.formats.snapshot_table import SnapshotTable
from qforensics.model import Image
from qforensics.model.kaitai import decode_name, opt
from qforensics.model.snapshot_table import read_snapshots


def kaitai_entries(data: bytes, count: int) -> list[tuple]:
    """Entries as the generated parser reads them, until one does not fit."""
    io = KaitaiStream(BytesIO(data))
    out = []
    for _ in range(count):
        pos = io.pos()
        try:
            e = SnapshotTable.SnapshotEntry(io)
        except (EOFError, kaitaistruct.KaitaiStructError, ValueError):
            break
        x = e.extra_data
        large = opt(x, "len_vm_state")
        out.append((pos, decode_name(e.id), decode_name(e.name), e.ofs_l1_table, e.num_l1_entries, e.date_sec,
                    e.date_nsec, e.vm_clock_nsec, large if large is not None else e.len_vm_state_small,
                    e.len_extra_data, io.pos() - pos, opt(x, "len_virtual_disk"), opt(x, "icount")))
    return out


def ours(img: Image, data: bytes, count: int) -> list[tuple]:
    header = dataclasses.replace(img.header, nb_snapshots=count, snapshots_offset=0)
    snaps, _ = read_snapshots(header, lambda off, n: data[off:off + n], len(data))
    return [(s.entry_offset, s.id, s.name, s.l1_table_offset, s.l1_size, s.date_sec, s.date_nsec, s.vm_clock_nsec,
             s.vm_state_size, s.extra_data_size, s.entry_size, s.disk_size, s.icount) for s in snaps]


SNAPSHOT_FILES = []
for case in sorted(CASES):
    for name in qcow2_files(case):
        SNAPSHOT_FILES.append(pytest.param(case, name, id=f"{case}/{name}"))


@pytest.mark.parametrize("case,name", SNAPSHOT_FILES)
def test_snapshot_table_reader_agrees_with_kaitai(corpus, case, name):
    with Image(corpus / case / name) as img:
        h = img.header
        if not h.nb_snapshots or img.refusals:
            pytest.skip("no snapshot table")
        count = min(h.nb_snapshots, 65536)
        table = img.file.read(h.snapshots_offset, 1 << 20)
        whole = kaitai_entries(table, count)
        assert len(whole) == count and ours(img, table, count) == whole
        assert len(img.snapshots) == count
        # damaged copies: sizes, ids and names poked, the table cut short
        rng = random.Random(f"{case}/{name}")
        used = max(e[0] + e[10] for e in whole)
        for _ in range(60):
            b = bytearray(table[:used + 64])
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(used)] = rng.randrange(256)
            cut = bytes(b[:rng.randrange(len(b) + 1)]) if rng.random() < 0.3 else bytes(b)
            # ours reads zeros past the cut (as QEMU does) and stops at extra data over 1024 bytes (as QEMU
            # does); Kaitai stops at the cut: they agree on every entry both read, and where one stops first
            # that is the reason
            a, k = ours(img, cut, count), kaitai_entries(cut, count)
            n = min(len(a), len(k))
            assert a[:n] == k[:n]
            if len(a) < len(k):
                assert k[len(a)][9] > 1024
            elif len(a) > len(k):  # the entry Kaitai could not read runs past the cut
                assert a[n][0] + a[n][10] > len(cut), (a[n], len(cut))


def test_a_full_table_of_incomplete_entries_is_one_finding_past_the_listing(corpus):
    """65536 zero entries in a version 3 image: all read, 100 findings listed, one standing for the rest."""
    with Image(corpus / "snapshots" / CASES["snapshots"]["main"]) as img:
        assert img.header.version == 3
        header = dataclasses.replace(img.header, nb_snapshots=65536, snapshots_offset=1 << 20)
    size = (1 << 20) + 65536 * 40
    snaps, findings = read_snapshots(header, lambda off, n: bytes(max(0, min(n, size - off))), size)
    assert len(snaps) == 65536 and snaps[-1].entry_offset == size - 40
    assert [f.code for f in findings].count("snapshot.extra_data_incomplete") == 100
    more = [f for f in findings if f.code == "snapshot.extra_data_incomplete.more"]
    assert len(more) == 1 and more[0].repeat == 65536 - 100
