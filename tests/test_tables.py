"""The numpy table decoders agree with the Kaitai parsers generated from ksy/, on real tables.

Kaitai is the reference description; numpy is what runs on millions of
entries. Each test decodes the same bytes both ways.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from kaitaistruct import KaitaiStream

from conftest import CASES, image_path
from qforensics import open_image
from qforensics.formats.bitmaps import Bitmaps
from qforensics.formats.l1_l2_entries import L1L2Entries
from qforensics.formats.refcount import Refcount
from qforensics.model import tables


def ks(data: bytes) -> KaitaiStream:
    return KaitaiStream(BytesIO(data))


def allocated_l2_offsets(img) -> list[int]:
    """L2 tables of the active L1 and of every snapshot's L1."""
    l1s = [img.l1_table()] + [img.l1_table(s.l1_table_offset, s.l1_size) for s in img.snapshots]
    return sorted({int(x) for l1 in l1s for x in (l1 & tables.L1E_OFFSET_MASK) if x})


@pytest.mark.parametrize("case", ["v3_default", "snapshots", "cluster_512", "prealloc_metadata"])
def test_l1_entries(corpus, case):
    with open_image(image_path(corpus, case)) as img:
        h = img.header
        raw = img.file.read(h.l1_table_offset, h.l1_size * 8)
        parsed = L1L2Entries.L1Table(h.l1_size, ks(raw)).entries
        ours = tables.l1_entries(raw)
        assert len(parsed) == len(ours) == h.l1_size
        assert [e.ofs_l2_table for e in parsed] == [int(x) for x in ours & tables.L1E_OFFSET_MASK]
        assert [e.copied for e in parsed] == [bool(x >> np.uint64(63)) for x in ours]
        assert [e.reserved_high << 56 | e.reserved_low for e in parsed] == \
            [int(x) for x in ours & tables.L1E_RESERVED_MASK]
        assert any(e.ofs_l2_table for e in parsed)


@pytest.mark.parametrize("case", ["v3_default", "compressed_zlib", "compressed_zstd", "zero_clusters_v3",
                                  "cluster_2097152", "extended_l2", "combo_extl2_compressed"])
def test_l2_entries(corpus, case):
    with open_image(image_path(corpus, case)) as img:
        h = img.header
        seen_compressed = False
        offsets = allocated_l2_offsets(img)
        assert offsets  # every case maps data: an empty walk would compare nothing
        for offset in offsets:
            raw = img.file.read(offset, h.cluster_size)
            parsed = L1L2Entries.L2Table(h.l2_entries, h.cluster_bits, h.extended_l2, ks(raw)).entries
            desc, bitmaps = tables.l2_entries(raw, h.extended_l2)
            plain = [p.entry for p in parsed] if h.extended_l2 else parsed
            assert len(plain) == len(desc) == h.l2_entries
            assert [p.copied for p in plain] == [bool(x >> np.uint64(63)) for x in desc]
            assert [p.compressed for p in plain] == [bool(x >> np.uint64(62) & np.uint64(1)) for x in desc]
            assert [p.ofs_host_cluster for p in plain] == [int(x) for x in desc & tables.L2E_OFFSET_MASK]
            assert [p.reads_as_zero for p in plain] == [bool(x & tables.OFLAG_ZERO) for x in desc]
            c_off, c_sec = tables.compressed_fields(desc, h.cluster_bits)
            for p, o, n in zip(plain, c_off, c_sec, strict=True):
                if p.compressed:
                    seen_compressed = True
                    assert (p.ofs_compressed, p.num_additional_sectors + 1) == (int(o), int(n))
            if h.extended_l2:
                assert [p.alloc_bitmap for p in parsed] == [int(x) & 0xFFFFFFFF for x in bitmaps]
                assert [p.zero_bitmap for p in parsed] == [int(x) >> 32 for x in bitmaps]
        assert seen_compressed == ("compressed" in case)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16, 32, 64])
def test_refcount_blocks_every_order(corpus, bits):
    case = f"refcount_bits_{bits}"
    with open_image(image_path(corpus, case)) as img:
        h = img.header
        assert h.refcount_bits == bits
        reftable_raw = img.file.read(h.refcount_table_offset, h.refcount_table_clusters * h.cluster_size)
        reft = tables.refcount_table(reftable_raw)
        parsed_reft = Refcount.RefcountTable(len(reft), ks(reftable_raw)).entries
        assert [e.ofs_refcount_block for e in parsed_reft] == [int(x) for x in reft & tables.REFT_OFFSET_MASK]
        blocks = [int(x) for x in reft & tables.REFT_OFFSET_MASK if x]
        assert blocks
        for block in blocks:
            raw = img.file.read(block, h.cluster_size)
            ours = tables.refcount_block(raw, h.refcount_order)
            parsed = Refcount.RefcountBlock(h.refcount_order, h.cluster_size, ks(raw)).entries
            if h.refcount_order < 3:
                parsed = [int(v) for packed in parsed for v in packed.refcounts]
            assert len(ours) == h.cluster_size * 8 // bits
            assert [int(v) for v in parsed] == [int(v) for v in ours]
            # cluster 0 (the header) is always in use
            assert ours[0] == 1
        # a snapshot shares clusters, so some refcount is 2 (width 1 cannot hold it: no snapshot there)
        if CASES[case]["header"]["nb_snapshots"]:
            assert (tables.refcount_block(img.file.read(blocks[0], h.cluster_size), h.refcount_order) == 2).any()


@pytest.mark.parametrize("case", ["bitmaps", "combo_snapshots_bitmaps"])
def test_bitmap_tables(corpus, case):
    with open_image(image_path(corpus, case)) as img:
        assert img.bitmaps
        for b in img.bitmaps:
            raw = img.file.read(b.table_offset, b.table_size * 8)
            parsed = Bitmaps.BitmapTable(b.table_size, ks(raw)).entries
            ours = img.bitmap_table(b)
            assert [e.ofs_data_cluster for e in parsed] == [int(x) for x in ours & tables.BME_OFFSET_MASK]
            assert [e.all_ones for e in parsed] == [bool(x & tables.BME_ALL_ONES) for x in ours]
            assert [e.reserved_high << 56 | e.reserved_low << 1 for e in parsed] == \
                [int(x) for x in ours & tables.BME_RESERVED_MASK]


def test_refcount_block_decoder_on_synthetic_patterns():
    """Sub-byte packing is LSB first: 0b11100100 holds 0,1,2,3 at 2 bits."""
    assert tables.refcount_block(bytes([0b11100100]), 1).tolist() == [0, 1, 2, 3]
    assert tables.refcount_block(bytes([0x21]), 2).tolist() == [1, 2]
    assert tables.refcount_block(bytes([0b00000101]), 0).tolist() == [1, 0, 1, 0, 0, 0, 0, 0]
