"""Corrupted images made from valid corpus images by poking bytes, modelled on qemu-iotests.

A small test-side reader (struct only) locates the structures, so the pokes do
not depend on the code under test. Each kind names the iotest it follows.
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

OFFSET = 0x00FFFFFFFFFFFE00


class Raw:
    """Just enough of an image to find where to poke."""

    def __init__(self, data: bytes):
        self.d = data
        (self.version, self.cluster_bits, self.size, self.l1_size, self.l1_offset, self.reft_offset,
         self.reft_clusters, self.nb_snapshots, self.snap_offset) = (
            self.u32(4), self.u32(20), self.u64(24), self.u32(36), self.u64(40), self.u64(48), self.u32(56),
            self.u32(60), self.u64(64))
        self.cs = 1 << self.cluster_bits
        self.incompat = self.u64(72) if self.version >= 3 else 0
        self.esize = 16 if self.incompat & 16 else 8
        self.order = self.u32(96) if self.version >= 3 else 4

    def u32(self, o: int) -> int:
        return struct.unpack_from(">I", self.d, o)[0]

    def u64(self, o: int) -> int:
        return struct.unpack_from(">Q", self.d, o)[0]

    def l1(self, i: int = 0) -> int:
        return self.u64(self.l1_offset + 8 * i)

    def l2_offset(self, i: int = 0) -> int:
        return self.l1(i) & OFFSET

    def l2_entry_at(self, index: int, l1_index: int = 0) -> int:
        return self.l2_offset(l1_index) + index * self.esize

    def l2(self, index: int, l1_index: int = 0) -> int:
        return self.u64(self.l2_entry_at(index, l1_index))

    def allocated_l2_indices(self, l1_index: int = 0) -> list[int]:
        return [i for i in range(self.cs // self.esize) if self.l2(i, l1_index) & OFFSET
                and not self.l2(i, l1_index) & (1 << 62)]

    def refblock(self, i: int = 0) -> int:
        return self.u64(self.reft_offset + 8 * i) & ~0x1FF

    def refcount_entry(self, cluster: int) -> tuple[int, int]:
        """(byte offset, width in bytes) of a cluster's refcount, refcount_order >= 3."""
        width = (1 << self.order) // 8
        per_block = self.cs // width
        return self.refblock(cluster // per_block) + (cluster % per_block) * width, width

    def snapshot_field(self, n: int, what: str) -> int:
        """Offset of a snapshot entry's id or name bytes."""
        pos = self.snapshot_entry(n)
        extra, id_len = self.u32(pos + 36), struct.unpack_from(">H", self.d, pos + 12)[0]
        return pos + 40 + extra + (0 if what == "id" else id_len)

    def bitmap_entry(self, n: int = 0) -> int:
        """Offset of bitmap directory entry n (walks the raw extension area and directory)."""
        pos = self.u32(100) if self.version >= 3 else 72
        while self.u32(pos) != 0x23852875:
            pos += 8 + ((self.u32(pos + 4) + 7) & ~7)
        entry = self.u64(pos + 8 + 16)
        for _ in range(n):
            extra, name = self.u32(entry + 20), struct.unpack_from(">H", self.d, entry + 18)[0]
            entry += (24 + extra + name + 7) & ~7
        return entry

    def snapshot_entry(self, n: int = 0) -> int:
        pos = self.snap_offset
        for _ in range(n):
            extra, id_len, name_len = self.u32(pos + 36), struct.unpack_from(">H", self.d, pos + 12)[0], \
                struct.unpack_from(">H", self.d, pos + 14)[0]
            pos += (40 + extra + id_len + name_len + 7) & ~7
        return pos


def deflate_raw(data: bytes) -> bytes:
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, -12)
    return c.compress(data) + c.flush()


def be64(v: int) -> bytes:
    return struct.pack(">Q", v)


def be32(v: int) -> bytes:
    return struct.pack(">I", v)


@dataclass
class Kind:
    id: str
    base: str  # corpus case
    iotest: str
    codes: tuple[str, ...]  # finding codes that must appear
    pokes: callable  # Raw -> list[(offset, bytes)] or a callable taking the path
    truncate_clusters: int = 0
    truncate_to: callable = None  # Raw -> new file size


def set_refcount(r: Raw, cluster: int, value: int) -> tuple[int, bytes]:
    offset, width = r.refcount_entry(cluster)
    return offset, value.to_bytes(width, "big")


def extension(r: Raw, magic: int) -> int:
    """Offset of a header extension (raw walk from header_length)."""
    pos = r.u32(100) if r.version >= 3 else 72
    while r.u32(pos) not in (magic, 0):
        pos += 8 + ((r.u32(pos + 4) + 7) & ~7)
    assert r.u32(pos) == magic, hex(magic)
    return pos


def extensions_end(r: Raw) -> int:
    """Offset of the end-of-extensions marker."""
    pos = r.u32(100) if r.version >= 3 else 72
    while r.u32(pos) != 0:
        pos += 8 + ((r.u32(pos + 4) + 7) & ~7)
    return pos


def all_compressed(r: Raw) -> list[tuple[int, int]]:
    """(entry offset, entry) of every compressed L2 entry reachable from the active and first snapshot L1."""
    l1s = [(r.l1_offset, r.l1_size)]
    if r.nb_snapshots:
        e = r.snapshot_entry(0)
        l1s.append((r.u64(e), r.u32(e + 8)))
    out = []
    for off, size in l1s:
        for i in range(size):
            l2 = r.u64(off + 8 * i) & OFFSET
            for j in range(r.cs // r.esize if l2 else 0):
                entry = r.u64(l2 + j * r.esize)
                if entry & (1 << 62):
                    out.append((l2 + j * r.esize, entry))
    return out


def journal_start(r: Raw) -> int:
    """First host cluster that opens with a journal hash entry (size 50, type 2); journals have no pointer."""
    return next(o for o in range(r.cs, len(r.d), r.cs) if r.d[o] == 50 and r.d[o + 1] == 2)


def early_bitmap_entry(r: Raw) -> int:
    """First entry of the 2015-layout bitmap table (12-byte extension: u32 count, u64 offset)."""
    return r.u64(extension(r, 0x23852875) + 12)


def dedup_l1(r: Raw) -> int:
    return r.u64(extension(r, 0xCD8E819B) + 8)


def compressed_pair(r: Raw) -> tuple[int, int]:
    """L2 indices of two compressed entries of table 0."""
    found = [i for i in range(r.cs // 8) if r.l2(i) & (1 << 62)]
    return found[0], found[1]


def first_unallocated(r: Raw) -> int:
    """L2 index of the first all-zero entry of L2 table 0."""
    return next(i for i in range(r.cs // r.esize) if r.l2(i) == 0)


def bitmap_entry_padding(r: Raw) -> int:
    """Offset of the first padding byte after bitmap directory entry 0's name."""
    entry = r.bitmap_entry(0)
    end = entry + 24 + r.u32(entry + 20) + struct.unpack_from(">H", r.d, entry + 18)[0]
    assert end % 8, "entry 0 has no padding"
    return end


def feature_name_padding(r: Raw) -> int:
    """Offset of a byte in the zero padding after the feature name table's first name."""
    table = extension(r, 0x6803F857) + 8
    return table + 2 + len(r.d[table + 2:table + 48].split(b"\0", 1)[0]) + 5


def extension_padding(r: Raw, magic: int) -> int:
    """Offset of the last padding byte after an extension's data (the data's length is not a multiple of 8)."""
    ext = extension(r, magic)
    assert r.u32(ext + 4) % 8
    return ext + 8 + ((r.u32(ext + 4) + 7) & ~7) - 1


def first_data(r: Raw) -> tuple[int, int]:
    """(L2 index, host cluster index) of the first allocated standard entry of L2 table 0."""
    i = r.allocated_l2_indices()[0]
    return i, (r.l2(i) & OFFSET) >> r.cluster_bits


KINDS = [
    Kind("leak_cleared_l2_entry", "v3_default", "peers.md leak", ("refcount.leak",),
         lambda r: [(r.l2_entry_at(first_data(r)[0]), be64(0))]),
    Kind("two_guests_one_host", "v3_default", "peers.md dup", ("refcount.too_low", "refcount.leak"),
         lambda r: [(r.l2_entry_at(r.allocated_l2_indices()[1]), be64(r.l2(r.allocated_l2_indices()[0])))]),
    Kind("l2_entry_into_l1", "v3_default", "060 L2 into L1", ("refcount.too_low", "overlap.structures"),
         lambda r: [(r.l2_entry_at(first_data(r)[0]), be64((1 << 63) | r.l1_offset))]),
    Kind("l2_entry_into_refblock", "v3_default", "060 data into refblock",
         ("refcount.too_low", "refcount.block_refcount", "overlap.structures"),
         lambda r: [(r.l2_entry_at(first_data(r)[0]), be64((1 << 63) | r.refblock(0)))]),
    Kind("l1_entry_into_itself", "v3_default", "060 L2 table is the L1", ("refcount.too_low", "overlap.structures"),
         lambda r: [(r.l1_offset, be64((1 << 63) | r.l1_offset))]),
    Kind("l1_reserved_bits", "v3_default", "060", ("l1.reserved_bits",),
         lambda r: [(r.l1_offset, be64(r.l1(0) | (1 << 60)))]),
    Kind("l1_unaligned_l2", "v3_default", "060 0x42a00", ("l1.l2_unaligned",),
         lambda r: [(r.l1_offset, be64(r.l1(0) + 0x200))]),
    Kind("l2_reserved_bits", "v3_default", "060", ("l2.reserved_bits",),
         lambda r: [(r.l2_entry_at(first_data(r)[0]), be64(r.l2(first_data(r)[0]) | (1 << 58)))]),
    Kind("l2_data_unaligned", "v3_default", "060/271", ("l2.data_unaligned",),
         lambda r: [(r.l2_entry_at(first_data(r)[0]), be64(r.l2(first_data(r)[0]) + 0x200))]),
    Kind("l2_prealloc_zero_unaligned", "v3_default", "060 0x2a00", ("l2.preallocated_unaligned",),
         lambda r: [(r.l2_entry_at(first_data(r)[0]), be64(r.l2(first_data(r)[0]) + 0x200 | 1))]),
    Kind("compressed_with_copied", "compressed_zlib", "qemu check rule", ("l2.compressed_copied",),
         lambda r: [(r.l2_entry_at(i), be64(r.l2(i) | (1 << 63)))
                    for i in [next(i for i in range(r.cs // 8) if r.l2(i) & (1 << 62))]]),
    Kind("reftable_reserved_bits", "v3_default", "108", ("refcount.table_reserved_bits",),
         lambda r: [(r.reft_offset, be64(r.u64(r.reft_offset) | 0x100))]),
    Kind("refblock_unaligned", "v3_default", "060 unaligned reftable entry", ("refcount.block_unaligned",),
         lambda r: [(r.reft_offset, be64(r.u64(r.reft_offset) + 0x200))]),
    Kind("refblock_past_eof", "v3_default", "060/108 refblock outside image", ("refcount.block_outside_image",),
         lambda r: [(r.reft_offset + 8, be64(1 << 30))]),
    Kind("refblock_self_refcount_zero", "v3_default", "108 refblock entry zeroed",
         ("refcount.too_low",), lambda r: [set_refcount(r, r.refblock(0) >> r.cluster_bits, 0)]),
    Kind("data_refcount_zero", "v3_default", "108", ("refcount.too_low", "l2.copied_mismatch"),
         lambda r: [set_refcount(r, first_data(r)[1], 0)]),
    Kind("data_refcount_two", "v3_default", "138 COPIED", ("refcount.leak", "l2.copied_mismatch"),
         lambda r: [set_refcount(r, first_data(r)[1], 2)]),
    Kind("l1_points_past_eof", "v3_default", "138 2^55", ("refcount.reference_past_eof",),
         lambda r: [(r.l1_offset, be64((1 << 63) | (1 << 40)))]),
    Kind("l2_points_past_eof", "v3_default", "138", ("refcount.reference_past_eof",),
         lambda r: [(r.l2_entry_at(first_data(r)[0]), be64((1 << 63) | (1 << 40)))]),
    Kind("reftable_zeroed", "v3_default", "108/060 empty reftable", ("refcount.too_low",),
         lambda r: [(r.reft_offset, be64(0))]),
    Kind("refcount_at_max_16", "refcount_bits_16", "112 refcount 0xffff", ("refcount.leak",),
         lambda r: [set_refcount(r, first_data(r)[1], 0xFFFF)]),
    Kind("refcount_overflow_width_1", "refcount_bits_1", "112 overflow", ("refcount.overflow",),
         lambda r: [(r.l2_entry_at(r.allocated_l2_indices()[1]), be64(r.l2(r.allocated_l2_indices()[0])))]),
    Kind("snapshot_l1_unaligned", "snapshots", "080 0x400200", ("snapshot.l1_unaligned", "refcount.leak"),
         lambda r: [(r.snapshot_entry(0), be64(r.u64(r.snapshot_entry(0)) + 0x200))]),
    Kind("snapshot_l1_too_large", "snapshots", "080 0x10000000", ("snapshot.l1_too_large", "refcount.leak"),
         lambda r: [(r.snapshot_entry(0) + 8, be32(0x10000000))]),
    Kind("snapshot_extra_shifted", "snapshots", "261 extra_data_size 8 (entry 1 misparsed)",
         ("snapshot.extra_data_too_large",), lambda r: [(r.snapshot_entry(0) + 36, be32(8))]),
    Kind("snapshot_extra_too_large", "snapshots", "261 extra data 65536", ("snapshot.extra_data_too_large",),
         lambda r: [(r.snapshot_entry(0) + 36, be32(65536))]),
    Kind("extl2_alloc_and_zero", "extended_l2", "271 both set", ("l2.subcluster_alloc_and_zero",),
         lambda r: [(r.l2_entry_at(first_data(r)[0]) + 8, be64(0x0000000100000001))]),
    Kind("extl2_unallocated_with_alloc_bits", "extended_l2", "271 bits on unallocated",
         ("l2.unallocated_with_alloc_bits",),
         lambda r: [(r.l2_entry_at(next(i for i in range(r.cs // 16) if r.l2(i) == 0)) + 8, be64(0x3))]),
    Kind("l2_copied_cleared", "v3_default", "138/061", ("l2.copied_mismatch",),
         lambda r: [(r.l2_entry_at(first_data(r)[0]), be64(r.l2(first_data(r)[0]) & ~(1 << 63)))]),
    Kind("l1_copied_cleared", "v3_default", "138", ("l1.copied_mismatch",),
         lambda r: [(r.l1_offset, be64(r.l1(0) & ~(1 << 63)))]),
    Kind("data_file_compressed_entry", "data_file", "244", ("l2.compressed_with_data_file",),
         lambda r: [(r.l2_entry_at(0), be64((1 << 62) | 0x10000))]),
    Kind("compressed_streams_overlap", "compressed_zlib", "beyond qemu", ("overlap.compressed",
                                                                         "compressed.inflate_error"),
         lambda r: [(r.l2_entry_at(j), be64(r.l2(i) + 16)) for i, j in [compressed_pair(r)]]),
    Kind("compressed_stream_garbage", "compressed_zstd", "beyond qemu", ("compressed.inflate_error",),
         lambda r: [(r.l2(compressed_pair(r)[0]) & ((1 << 54) - 1), b"\xde\xad\xbe\xef" * 4)]),
    Kind("compressed_into_l2_table", "compressed_zlib", "beyond qemu", ("overlap.compressed_metadata",),
         lambda r: [(r.l2_entry_at(i), be64((1 << 62) | r.l2_offset(0))) for i in [compressed_pair(r)[0]]]),
    Kind("zero_flag_in_v2", "v2_compat010", "beyond qemu (runtime-only in qemu)", ("l2.zero_flag_in_v2",),
         lambda r: [(r.l2_entry_at(first_data(r)[0]), be64(r.l2(first_data(r)[0]) | 1))]),
    Kind("extended_descriptor_zero_flag", "extended_l2", "271 TODO", ("l2.extended_zero_flag",),
         lambda r: [(r.l2_entry_at(first_data(r)[0]), be64(r.l2(first_data(r)[0]) | 1))]),
    Kind("data_file_offset_not_guest", "data_file", "244 / beyond qemu", ("datafile.offset_mismatch",),
         lambda r: [(r.l2_entry_at(0), be64((1 << 63) | (3 * r.cs)))]),
    Kind("snapshot_duplicate_name", "snapshots", "beyond qemu", ("snapshot.duplicate_name",),
         lambda r: [(r.snapshot_field(1, "name"), r.d[r.snapshot_field(0, "name"):r.snapshot_field(0, "name") + 5])]),
    Kind("snapshot_duplicate_id", "snapshots", "beyond qemu", ("snapshot.duplicate_id",),
         lambda r: [(r.snapshot_field(1, "id"), r.d[r.snapshot_field(0, "id"):r.snapshot_field(0, "id") + 1])]),
    Kind("snapshot_disk_size_beyond_l1", "snapshots", "beyond qemu", ("snapshot.l1_too_small",),
         lambda r: [(r.snapshot_entry(0) + 48, be64(1 << 40))]),
    Kind("bitmap_in_use", "bitmaps", "291 inconsistent bitmap", ("bitmap.in_use",),
         lambda r: [(r.bitmap_entry(0) + 12, be32(r.u32(r.bitmap_entry(0) + 12) | 1))]),
    Kind("bitmap_tail_bits", "bitmaps", "beyond qemu", ("bitmap.tail_bits",),
         lambda r: [((r.u64(r.u64(r.bitmap_entry(0))) & OFFSET) + r.cs - 1, b"\x80")]),
    Kind("dirty_without_lazy_refcounts", "v3_default", "039", ("header.dirty_without_lazy_refcounts",),
         lambda r: [(72, be64(1))]),
    Kind("bitmaps_bit_without_extension", "v3_default", "beyond qemu", ("header.bitmaps_bit_without_extension",),
         lambda r: [(88, be64(1))]),
    Kind("bitmap_table_entry_reserved", "bitmaps", "qemu check_table_entry (no message)",
         ("bitmap.table_invalid", "bitmap.table_entry_invalid"),
         lambda r: [(r.u64(r.bitmap_entry(0)) & OFFSET, be64(r.u64(r.u64(r.bitmap_entry(0)) & OFFSET) | 0x2))]),
    Kind("bitmaps_autoclear_cleared", "bitmaps", "qemu warning: bitmaps inconsistent",
         ("extension.bitmaps_autoclear_clear",), lambda r: [(88, be64(r.u64(88) & ~1))]),
    Kind("compressed_stream_short", "compressed_zlib", "beyond qemu", ("compressed.wrong_length",),
         lambda r: [(all_compressed(r)[0][1] & ((1 << 54) - 1), deflate_raw(b"x" * 100))]),
    Kind("compressed_stream_cut_by_eof", "compressed_zlib", "beyond qemu", ("compressed.truncated",),
         lambda r: [], truncate_to=lambda r: max((e & ((1 << 54) - 1)) for _, e in all_compressed(r)) + 64),
    Kind("extl2_compressed_with_bitmap", "combo_extl2_compressed", "271", ("l2.compressed_subcluster_bitmap",),
         lambda r: [(all_compressed(r)[0][0] + 8, be64(1))]),
    Kind("dedup_table_past_eof", "draft_dedup", "draft", ("dedup.l1_past_eof",),
         lambda r: [(extension(r, 0xCD8E819B) + 8, be64(len(r.d) // r.cs * r.cs + 4 * r.cs))]),
    Kind("dedup_table_unaligned", "draft_dedup", "draft", ("dedup.l1_unaligned",),
         lambda r: [(extension(r, 0xCD8E819B) + 8, be64(r.u64(extension(r, 0xCD8E819B) + 8) + 0x200))]),
    Kind("dedup_table_too_large", "draft_dedup", "draft", ("dedup.l1_too_large",),
         lambda r: [(extension(r, 0xCD8E819B) + 16, be32(0xFFFFFFFF))]),
    Kind("early_bitmap_table_past_eof", "draft_early_bitmaps", "draft", ("draft_bitmaps.table_past_eof",),
         lambda r: [(extension(r, 0x23852875) + 12, be64(len(r.d) // r.cs * r.cs + 4 * r.cs))]),
    Kind("early_bitmap_table_truncated", "draft_early_bitmaps", "draft", ("draft_bitmaps.table_truncated",),
         lambda r: [(extension(r, 0x23852875) + 8, be32(60000))]),
    Kind("extension_duplicated", "v3_default", "031 (unknown extensions preserved)", ("extension.duplicate",),
         lambda r: [(extensions_end(r), r.d[extension(r, 0x6803F857):extensions_end(r)] + be64(0))]),
    Kind("feature_table_partial_entry", "v3_default", "036", ("extension.feature_table_partial_entry",),
         lambda r: [(extension(r, 0x6803F857) + 4, be32(380))]),
    Kind("feature_table_bit_64", "v3_default", "036", ("extension.feature_name_bit_invalid",),
         lambda r: [(extension(r, 0x6803F857) + 8 + 1, b"\x40")]),
    Kind("feature_table_type_3", "v3_default", "spec: feature types 0-2", ("extension.feature_name_type_invalid",),
         lambda r: [(extension(r, 0x6803F857) + 8 + 48, b"\x03")]),
    Kind("feature_name_padding", "v3_default", "spec: names padded with zeros",
         ("extension.feature_name_padding_nonzero",), lambda r: [(feature_name_padding(r), b"X")]),
    Kind("extension_end_marker_missing", "v3_default", "spec: end of extensions (qemu blind)",
         ("extension.end_marker_missing",),
         lambda r: [(extensions_end(r), be32(0x12345678) + be32(r.cs - extensions_end(r) - 8))]),
    Kind("extension_padding_nonzero", "backing_chain", "spec: extension padding", ("extension.padding_nonzero",),
         lambda r: [(extension_padding(r, 0xE2792ACA), b"\x01")]),
    Kind("cluster0_after_extensions", "v3_default", "spec: header cluster (qemu blind)",
         ("header.cluster0_extra_data",), lambda r: [(0x1000, b"\xaa\xbb")]),
    Kind("bitmap_entry_padding", "bitmaps", "spec: bitmap directory entry padding", ("bitmap.padding_nonzero",),
         lambda r: [(bitmap_entry_padding(r), b"\x5a")]),
    Kind("copied_on_unallocated", "v3_default", "spec: OFLAG_COPIED (qemu blind)", ("l2.copied_unallocated",),
         lambda r: [(r.l2_entry_at(first_unallocated(r)), be64(1 << 63))]),
    Kind("data_file_raw_with_backing", "data_file_raw", "spec: data_file_raw (qemu 7.2 opens it)",
         ("header.data_file_raw_with_backing",),
         # the backing file named is the data file itself, so qemu opens the chain and checks the image
         lambda r: [(8, be64(extensions_end(r) + 8) + be32(18)), (extensions_end(r) + 8, b"data_file_raw.data")]),
    # 8 of the 12 bytes: the walk then reads the last 4 and the padding as an empty unknown extension
    Kind("dedup_extension_short", "draft_dedup", "draft", ("extension.unparsable",),
         lambda r: [(extension(r, 0xCD8E819B) + 4, be32(8))]),
    # a NUL and 3 more bytes after the name: QEMU reads the name up to the NUL, and still opens the backing file
    Kind("backing_name_nul", "backing_chain", "spec: backing file name (C string in qemu)", ("header.name_nul",),
         lambda r: [(16, be32(r.u32(16) + 4)), (r.u64(8) + r.u32(16), b"\0xyz")]),
    Kind("extension_area_cut_by_eof", "v3_default", "beyond qemu (qemu reads zeros)", ("extension.truncated",),
         lambda r: [], truncate_to=lambda r: 200),
    Kind("no_end_marker_before_backing_name", "backing_chain", "beyond qemu",
         ("header.extensions_overlap_backing_name",), lambda r: [(8, be64(extensions_end(r)))]),
    Kind("header_length_116", "v3_default", "spec: multiple of 8", ("header.header_length_unaligned",),
         lambda r: [(100, be32(116)), (116, r.d[112:extensions_end(r) + 8])]),
    Kind("header_padding_nonzero", "v3_default", "spec: padding zero", ("header.padding_nonzero",),
         lambda r: [(108, b"\x01")]),
    Kind("data_file_raw_without_data_file", "v3_default", "info accepts, open refuses",
         ("header.data_file_raw_without_data_file",),
         lambda r: [(88, be64(2))]),
    Kind("data_file_name_missing", "data_file", "244 'data-file' is required", ("header.data_file_name_missing",),
         lambda r: [(extension(r, 0x44415441), be32(0x12345678))]),
    Kind("snapshots_in_data_file_image", "data_file", "244", ("snapshot.with_data_file",),
         lambda r: [(60, be32(1)), (64, be64(len(r.d) // r.cs * r.cs + 2 * r.cs))]),
    Kind("bitmap_table_into_data", "bitmaps", "beyond qemu (data claimed first)", ("overlap.structures",),
         lambda r: [(r.bitmap_entry(0), be64(r.l2(r.allocated_l2_indices()[0]) & OFFSET))]),
    Kind("dedup_l2_pointer_unaligned", "draft_dedup", "draft", ("dedup.l2_invalid",),
         lambda r: [(dedup_l1(r), be64(r.u64(dedup_l1(r)) + 0x200))]),
    Kind("journal_unknown_entry_type", "draft_journal", "draft", ("journal.entry_type",),
         lambda r: [(journal_start(r) + 50 * 3 + 1, b"\x07")]),
    Kind("journal_entry_size_1", "draft_journal", "draft", ("journal.entry_size",),
         lambda r: [(journal_start(r) + 50 * 3, b"\x01")]),
    Kind("journal_end_short", "draft_journal", "draft", ("journal.end_misplaced",),
         lambda r: [(journal_start(r) + 4050, b"\x0a")]),
    Kind("early_bitmap_l1_reserved", "draft_early_bitmaps", "draft", ("draft_bitmaps.l1_reserved",),
         lambda r: [(r.u64(early_bitmap_entry(r)), be64(r.u64(r.u64(early_bitmap_entry(r))) | (1 << 62)))]),
    Kind("early_bitmap_l1_unaligned", "draft_early_bitmaps", "draft", ("draft_bitmaps.l1_unaligned",),
         lambda r: [(r.u64(early_bitmap_entry(r)), be64(r.u64(r.u64(early_bitmap_entry(r))) + 0x200))]),
    Kind("early_bitmap_l1_size", "draft_early_bitmaps", "draft", ("draft_bitmaps.l1_size",),
         lambda r: [(early_bitmap_entry(r) + 8, be32(2))]),
    Kind("early_bitmap_disk_size", "draft_early_bitmaps", "draft", ("draft_bitmaps.size",),
         lambda r: [(early_bitmap_entry(r) + 16, be64(r.u64(early_bitmap_entry(r) + 16) + 8))]),
    Kind("early_bitmap_granularity", "draft_early_bitmaps", "draft", ("draft_bitmaps.granularity",),
         lambda r: [(early_bitmap_entry(r) + 12, be32(1000))]),
    Kind("truncated_last_clusters", "v3_default", "108 shrunken file", ("refcount.reference_past_eof",),
         lambda r: [], truncate_clusters=2),
    Kind("refcount_past_eof", "v3_default", "notes 7.2 (qemu blind)", ("refcount.past_eof",),
         lambda r: [set_refcount(r, (len(r.d) >> r.cluster_bits) + 5, 1)]),
    Kind("l2_table_shared_by_two_l1_entries", "cluster_4096", "060 shared L2", ("refcount.too_low",),
         lambda r: [(r.l1_offset + 8, be64(r.l1(0)))]),
    # unknown compatible and autoclear bits: qemu opens and checks the image as if they were clear
    Kind("compatible_feature_unknown", "v3_default", "036 unknown compatible bit",
         ("header.compatible_feature_unknown",), lambda r: [(80, be64(r.u64(80) | 1 << 23))]),
    Kind("autoclear_feature_unknown", "v3_default", "036 unknown autoclear bit",
         ("header.autoclear_feature_unknown",), lambda r: [(88, be64(r.u64(88) | 1 << 23))]),
]


def make(kind: Kind, src_folder: Path, main: str, dst_folder: Path) -> Path:
    """Copy the case folder and apply the kind's pokes to its main image."""
    for f in src_folder.iterdir():
        shutil.copyfile(f, dst_folder / f.name)
    path = dst_folder / main
    with open(path, "r+b") as f:
        data = f.read()
        raw = Raw(data)
        for offset, value in kind.pokes(raw):
            f.seek(offset)
            f.write(value)
        if kind.truncate_clusters:
            f.truncate(len(data) - kind.truncate_clusters * raw.cs)
        if kind.truncate_to:
            f.truncate(kind.truncate_to(raw))
    return path
