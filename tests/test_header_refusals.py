"""Every condition for which QEMU refuses to open an image gives a clear one-line error and exit 1.

Each case pokes one field of a valid corpus image, then asks live qemu-img for
its verdict: our finding must carry qemu's exact message, and `qforensics
info` must print one line per refusal naming the structure and offset.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass

import pytest

from conftest import image_path, qemu_img, run_qforensics


def be(fmt: str, value: int) -> bytes:
    return struct.pack(">" + fmt, value)


def find_extension(data: bytes, magic: int) -> int:
    """Offset of a header extension, walking the raw area from header_length (test-side reader)."""
    pos = struct.unpack_from(">I", data, 100)[0] if struct.unpack_from(">I", data, 4)[0] >= 3 else 72
    while pos + 8 <= len(data):
        m, n = struct.unpack_from(">II", data, pos)
        if m == magic:
            return pos
        if m == 0:
            break
        pos += 8 + ((n + 7) & ~7)
    raise AssertionError(f"extension 0x{magic:08x} not found")


@dataclass
class Poke:
    id: str
    case: str
    code: str | None  # our finding code, or None when the generated parser itself rejects the header
    field: str  # what the one-line error must name
    pokes: callable  # data -> list of (offset, bytes)
    file: str | None = None
    info_crashes: bool = False  # qemu-img 7.2 info segfaults here; qemu-io's open gives qemu's verdict


def bitmap_dir(d: bytes) -> int:
    """Offset of the first bitmap directory entry (from the bitmaps extension)."""
    return struct.unpack_from(">Q", d, find_extension(d, 0x23852875) + 24)[0]


def snapshot_entry(d: bytes) -> int:
    return struct.unpack_from(">Q", d, 64)[0]


POKES = [
    Poke("cluster_bits_22", "v3_default", "header.cluster_bits_unsupported", "cluster_bits",
         lambda d: [(20, be("I", 22))]),
    Poke("cluster_bits_8", "v3_default", None, "cluster_bits", lambda d: [(20, be("I", 8))]),
    Poke("version_4", "v3_default", None, "version", lambda d: [(4, be("I", 4))]),
    Poke("header_length_huge", "v3_default", "header.header_length_exceeds_cluster", "header_length",
         lambda d: [(100, be("I", 0xFFFFFFF8))]),
    Poke("header_length_short", "v3_default", None, "header_length", lambda d: [(100, be("I", 96))]),
    Poke("backing_offset_huge", "v3_default", "header.backing_file_offset_invalid", "backing_file_offset",
         lambda d: [(8, be("Q", 0xFFFFFFFFFFFFFFFF))]),
    Poke("compression_type_unknown", "v3_default", "header.compression_type_unknown", "compression_type",
         lambda d: [(104, b"\x05")]),
    Poke("compression_bit_with_zlib", "v3_default", "header.compression_type_bit_set", "incompatible_features",
         lambda d: [(72, be("Q", 1 << 3))]),
    Poke("zstd_without_bit", "compressed_zstd", "header.compression_type_bit_clear", "incompatible_features",
         lambda d: [(72, be("Q", 0))]),
    Poke("unknown_incompatible_bit", "v3_default", "header.incompatible_feature_unknown", "incompatible_features",
         lambda d: [(72, be("Q", 1 << 61))]),
    Poke("unknown_incompatible_bit_named", "v3_default", "header.incompatible_feature_unknown",
         "incompatible_features",
         # rename the table's entry for incompatible bit 1 to bit 40, then set bit 40
         lambda d: [(72, be("Q", 1 << 40)), (find_extension(d, 0x6803F857) + 8 + 48 + 1, b"\x28")]),
    # qemu walks the table in order (the first entry naming a bit wins) and shifts by the bit number mod 64
    Poke("unknown_incompatible_bit_named_twice", "v3_default", "header.incompatible_feature_unknown",
         "incompatible_features", lambda d: [(72, be("Q", 1 << 40)), (find_extension(d, 0x6803F857) + 8 + 1, b"\x28"),
                                             (find_extension(d, 0x6803F857) + 8 + 48 + 1, b"\x28")]),
    Poke("unknown_incompatible_bit_wrapped", "v3_default", "header.incompatible_feature_unknown",
         "incompatible_features", lambda d: [(72, be("Q", 1 << 5)), (find_extension(d, 0x6803F857) + 8 + 1, b"\x45")]),
    Poke("subcluster_too_small", "cluster_4096", "header.subcluster_size_unsupported", "incompatible_features",
         lambda d: [(72, be("Q", 1 << 4))]),
    Poke("refcount_order_7", "v3_default", None, "refcount_order", lambda d: [(96, be("I", 7))]),
    Poke("crypt_method_3", "v3_default", "header.crypt_method_unknown", "crypt_method", lambda d: [(32, be("I", 3))]),
    Poke("no_refcount_table", "v3_default", "header.refcount_table_missing", "refcount_table_clusters",
         lambda d: [(56, be("I", 0))]),
    Poke("refcount_table_too_large", "v3_default", "header.refcount_table_too_large", "refcount_table_clusters",
         lambda d: [(56, be("I", 0xFFFFFFFF))]),
    Poke("refcount_table_unaligned", "v3_default", "header.refcount_table_offset_invalid", "refcount_table_offset",
         lambda d: [(48, be("Q", 0x10200))]),
    Poke("refcount_table_huge_offset", "v3_default", "header.refcount_table_offset_invalid",
         "refcount_table_offset", lambda d: [(48, be("Q", 0xFFFFFFFFFFFF0000)), (56, be("I", 0x7F))]),
    Poke("nb_snapshots_huge", "snapshots", "header.snapshot_table_too_large", "nb_snapshots",
         lambda d: [(60, be("I", 0xFFFFFFFF))]),
    Poke("snapshot_offset_unaligned", "snapshots", "header.snapshot_table_offset_invalid", "snapshots_offset",
         lambda d: [(64, be("Q", struct.unpack_from(">Q", d, 64)[0] + 0x200))]),
    Poke("l1_too_large", "v3_default", "header.l1_table_too_large", "l1_size", lambda d: [(36, be("I", 0x10000000))]),
    Poke("l1_offset_unaligned", "v3_default", "header.l1_table_offset_invalid", "l1_table_offset",
         lambda d: [(40, be("Q", struct.unpack_from(">Q", d, 40)[0] + 0x200))]),
    Poke("l1_too_small", "v3_default", "header.l1_table_too_small", "l1_size", lambda d: [(36, be("I", 0))]),
    Poke("image_too_big", "cluster_512", "header.image_too_big", "size", lambda d: [(24, be("Q", 1 << 62))]),
    Poke("backing_name_too_long", "backing_chain", "header.backing_file_name_too_long", "backing_file_size",
         lambda d: [(16, be("I", 0xFFFFFFFF))], file="top.qcow2"),
    Poke("extension_too_large", "v3_default", "extension.too_large", "header extension",
         lambda d: [(find_extension(d, 0x6803F857) + 4, be("I", 0x7FFFFFFF))]),
    Poke("backing_format_too_long", "backing_chain", "extension.backing_format_too_long", "backing file format",
         lambda d: [(find_extension(d, 0xE2792ACA) + 4, be("I", 16))], file="top.qcow2"),
    Poke("crypto_ext_without_luks", "encrypted_luks", "extension.crypto_without_luks", "encryption",
         lambda d: [(32, be("I", 1))]),
    Poke("luks_without_crypto_ext", "encrypted_luks", "header.crypto_header_missing", "crypt_method",
         lambda d: [(find_extension(d, 0x0537BE77), be("I", 0x12345678))], info_crashes=True),
    Poke("bitmaps_ext_length", "bitmaps", "extension.bitmaps_length", "bitmaps",
         lambda d: [(find_extension(d, 0x23852875) + 4, be("I", 16))]),
    Poke("bitmaps_ext_reserved", "bitmaps", "extension.bitmaps_reserved", "bitmaps",
         lambda d: [(find_extension(d, 0x23852875) + 12, be("I", 1))]),
    Poke("bitmaps_ext_zero", "bitmaps", "extension.bitmaps_zero", "bitmaps",
         lambda d: [(find_extension(d, 0x23852875) + 8, be("I", 0))]),
    Poke("bitmaps_ext_too_many", "bitmaps", "extension.bitmaps_too_many", "bitmaps",
         lambda d: [(find_extension(d, 0x23852875) + 8, be("I", 65536))]),
    Poke("bitmaps_directory_unaligned", "bitmaps", "extension.bitmaps_directory_unaligned", "bitmaps",
         lambda d: [(find_extension(d, 0x23852875) + 24,
                     be("Q", struct.unpack_from(">Q", d, find_extension(d, 0x23852875) + 24)[0] + 8))]),
    Poke("bitmaps_directory_too_large", "bitmaps", "extension.bitmaps_directory_too_large", "bitmaps",
         lambda d: [(find_extension(d, 0x23852875) + 16, be("Q", 1 << 40))]),
    # bitmap directory entries (block/qcow2-bitmap.c check_dir_entry), read by qemu at open
    Poke("bitmap_granularity_8", "bitmaps", "bitmap.entry_constraints", "bitmap directory",
         lambda d: [(bitmap_dir(d) + 17, b"\x08")]),
    Poke("bitmap_type_2", "bitmaps", "bitmap.entry_invalid", "bitmap directory",
         lambda d: [(bitmap_dir(d) + 16, b"\x02")]),
    Poke("bitmap_reserved_flag", "bitmaps", "bitmap.entry_constraints", "bitmap directory",
         lambda d: [(bitmap_dir(d) + 12, be("I", 0x8 | 0x2))]),
    Poke("bitmap_table_unaligned", "bitmaps", "bitmap.entry_constraints", "bitmap directory",
         lambda d: [(bitmap_dir(d), be("Q", struct.unpack_from(">Q", d, bitmap_dir(d))[0] + 0x200))]),
    Poke("bitmap_table_size_0", "bitmaps", "bitmap.entry_constraints", "bitmap directory",
         lambda d: [(bitmap_dir(d) + 8, be("I", 0))]),
    Poke("bitmap_fewer_than_announced", "bitmaps", "bitmap.directory_too_few", "bitmap directory",
         lambda d: [(find_extension(d, 0x23852875) + 8, be("I", 3))]),
    Poke("bitmap_more_than_announced", "bitmaps", "bitmap.directory_too_many", "bitmap directory",
         lambda d: [(find_extension(d, 0x23852875) + 8, be("I", 1))]),
    Poke("bitmap_directory_broken", "bitmaps", "bitmap.directory_broken", "bitmap directory",
         lambda d: [(find_extension(d, 0x23852875) + 16, be("Q", 40))]),
    Poke("crypto_ext_length", "encrypted_luks", "extension.crypto_length", "encryption",
         lambda d: [(find_extension(d, 0x0537BE77) + 4, be("I", 24)),
                    (find_extension(d, 0x0537BE77) + 24, d[find_extension(d, 0x0537BE77) + 24:][:480])]),
    Poke("crypto_offset_unaligned", "encrypted_luks", "extension.crypto_offset_unaligned", "encryption",
         lambda d: [(find_extension(d, 0x0537BE77) + 8,
                     be("Q", struct.unpack_from(">Q", d, find_extension(d, 0x0537BE77) + 8)[0] + 0x200))]),
    Poke("bitmap_table_entry_reserved", "bitmaps", "bitmap.table_invalid", "bitmap table",
         lambda d: [(struct.unpack_from(">Q", d, bitmap_dir(d))[0],
                     be("Q", struct.unpack_from(">Q", d, struct.unpack_from(">Q", d, bitmap_dir(d))[0])[0] | 2))]),
    Poke("luks_magic", "encrypted_luks", "luks.magic_invalid", "LUKS header",
         lambda d: [(struct.unpack_from(">Q", d, find_extension(d, 0x0537BE77) + 8)[0], b"XXXX")]),
    Poke("bitmap_duplicate_name", "bitmaps", "bitmap.duplicate_name", "bitmap directory",
         lambda d: [(bitmap_dir(d) + 24 + 32, d[bitmap_dir(d) + 24:bitmap_dir(d) + 26])]),
    # names that differ only after a NUL byte: qemu reads them as C strings, so both are ""
    Poke("bitmap_duplicate_c_name", "bitmaps", "bitmap.duplicate_name", "bitmap directory",
         lambda d: [(bitmap_dir(d) + 24, b"\0a"), (bitmap_dir(d) + 24 + 32, b"\0b")]),
    # snapshot table (block/qcow2-snapshot.c qcow2_do_read_snapshots)
    Poke("snapshot_extra_data_too_large", "snapshots", "snapshot.extra_data_too_large", "snapshot table",
         lambda d: [(snapshot_entry(d) + 36, be("I", 2000))]),
]


def poked_copy(corpus, tmp_path, poke: Poke):
    src = image_path(corpus, poke.case, poke.file)
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    for other in src.parent.iterdir():  # backing files and data files stay beside it
        if other.name != src.name:
            shutil.copyfile(other, tmp_path / other.name)
    with open(dst, "r+b") as f:
        data = f.read(1 << 21)
        for offset, value in poke.pokes(data):
            f.seek(offset)
            f.write(value)
    return dst


@pytest.mark.parametrize("poke", POKES, ids=[p.id for p in POKES])
def test_refusal_matches_qemu(corpus, tmp_path, poke):
    path = poked_copy(corpus, tmp_path, poke)
    qemu = qemu_img("info", "--output=json", path.name, cwd=tmp_path)
    if poke.info_crashes:
        assert qemu.returncode < 0, "qemu-img info no longer crashes here: use its verdict"
        qemu = subprocess.run(["qemu-io", "-r", "-c", "quit", path.name], capture_output=True, text=True,
                              cwd=tmp_path, timeout=60)
        qemu_reason = qemu.stderr.strip().splitlines()[-1].split(f"can't open device {path.name}: ", 1)[-1]
    else:
        assert qemu.returncode == 1, f"qemu accepted the poked image: {qemu.stdout[:200]}"
        opening = next(line for line in qemu.stderr.splitlines() if "Could not open" in line)
        qemu_reason = opening.split(f"Could not open '{path.name}': ", 1)[-1]  # later lines are hints

    ours = run_qforensics("info", path.name, cwd=tmp_path)
    assert ours.returncode == 1
    assert ours.stdout == ""
    assert "Traceback" not in ours.stderr
    lines = ours.stderr.strip().splitlines()
    assert lines, "no error printed"
    assert all(line.startswith(f"qforensics: {path.name}: ") for line in lines)
    assert any(poke.field in line for line in lines), lines

    if poke.code is None:  # the generated parser rejected the header: one line with field, offset and value
        assert len(lines) == 1 and " at 0x" in lines[0]
        return
    from qforensics import open_image

    with open_image(path) as img:
        refusals = img.refusals
    assert poke.code in [f.code for f in refusals]
    assert refusals[0].qemu_message == qemu_reason, [f.qemu_message for f in refusals]
    # qemu's own line first (as `qemu-img: Could not open 'X': <reason>` reads), then where and what
    assert lines[0].startswith(f"qforensics: {path.name}: {qemu_reason} ["), lines
