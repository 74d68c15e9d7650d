"""Spec rules qemu does not check (issue 14, point 5): each case pokes a real corpus image, asks
`qforensics check` for the new finding at the exact host offset of the offending bytes, and compares
qemu's counters and exit code with live `qemu-img check` on the same file (qemu finds nothing to
count in any of them, so the new findings leave its numbers alone).

The pokes are located with the struct-only reader of tests/corruptions.py, never with the code under test.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from conftest import CASES, image_path, qemu_img, qemu_info_json, run_qforensics
from corruptions import OFFSET, Raw, be32, be64, extension, extensions_end
from test_check_vs_qemu import assert_same_as_qemu
from test_info_vs_qemu import assert_states_same_facts

FEATURE_NAME_TABLE = 0x6803F857
BITMAPS = 0x23852875
BACKING_FORMAT = 0xE2792ACA
ENTRY = 48  # feature name table entry size


def poked(corpus: Path, tmp_path: Path, case: str, pokes, *, name: str | None = None) -> Path:
    """The case's files copied to tmp_path, ``pokes(Raw)`` -> [(offset, bytes)] applied to its main image."""
    for f in (corpus / case).iterdir():
        shutil.copyfile(f, tmp_path / f.name)
    path = tmp_path / (name or CASES[case]["main"])
    raw = Raw(path.read_bytes())
    with open(path, "r+b") as f:
        for offset, value in pokes(raw):
            f.seek(offset)
            f.write(value)
    return path


def findings(report: dict, code: str) -> list[dict]:
    return [f for f in report["findings"] if f["code"] == code]


def only(report: dict, code: str) -> dict:
    found = findings(report, code)
    assert len(found) == 1, (code, [(f["code"], f["host_offset"]) for f in report["findings"]])
    f = found[0]
    assert f["qemu_counts"] is None and f["qemu_check"] is None and f["qemu_message"] is None
    return f


def check_clean_as_qemu(path: Path) -> dict:
    """qemu-img check finds the image clean (exit 0) and so do qemu's counters in ours."""
    res = qemu_img("check", "--output=json", path.name, cwd=path.parent)
    assert res.returncode == 0, res.stderr
    report = assert_same_as_qemu(path)
    assert (report["corruptions"], report["leaks"], report["check-errors"]) == (0, 0, 0)
    return report


def unallocated(r: Raw, n: int) -> list[int]:
    return [i for i in range(r.cs // r.esize) if r.l2(i) == 0][:n]


# -- 1. OFLAG_COPIED on an entry with host offset 0 -------------------------------------------------------------

def test_copied_on_unallocated_and_zero_plain_entries(corpus, tmp_path):
    src = Raw(image_path(corpus, "v3_default").read_bytes())
    a, b = unallocated(src, 2)
    path = poked(corpus, tmp_path, "v3_default", lambda r: [(r.l2_entry_at(a), be64(1 << 63)),
                                                            (r.l2_entry_at(b), be64((1 << 63) | 1))])
    report = check_clean_as_qemu(path)  # qemu reads them as UNALLOCATED / ZERO_PLAIN and checks no COPIED there
    found = findings(report, "l2.copied_unallocated")
    assert [(f["host_offset"], f["guest_offset"], f["severity"]) for f in found] == [
        (src.l2_entry_at(a), a * src.cs, "warning"), (src.l2_entry_at(b), b * src.cs, "warning")]
    assert "an unallocated cluster" in found[0]["message"] and "bit 63" in found[0]["message"]
    assert "a zero cluster without allocation" in found[1]["message"]
    assert all(f["structure"] == f"active L2 table at 0x{src.l2_offset(0):x}" for f in found)


def test_copied_on_unallocated_extended_l2(corpus, tmp_path):
    src = Raw(image_path(corpus, "extended_l2").read_bytes())
    (a,) = unallocated(src, 1)
    path = poked(corpus, tmp_path, "extended_l2", lambda r: [(r.l2_entry_at(a), be64(1 << 63))])
    report = check_clean_as_qemu(path)
    assert only(report, "l2.copied_unallocated")["host_offset"] == src.l2_entry_at(a)


def test_copied_listing_is_capped_and_counted(corpus, tmp_path):
    src = Raw(image_path(corpus, "v3_default").read_bytes())
    idx = unallocated(src, 100)
    path = poked(corpus, tmp_path, "v3_default", lambda r: [(r.l2_entry_at(i), be64(1 << 63)) for i in idx])
    report = check_clean_as_qemu(path)
    listed = findings(report, "l2.copied_unallocated")
    assert [f["host_offset"] for f in listed] == [src.l2_entry_at(i) for i in idx[:64]]
    more = only(report, "l2.copied_unallocated.more")
    assert (more["repeat"], more["host_offset"], more["severity"]) == (36, src.l2_entry_at(idx[64]), "info")


def test_copied_listing_is_capped_image_wide(tmp_path):
    """2048 distinct 512-byte L2 tables, every entry COPIED with offset 0: 10000 listed, the rest counted."""
    path = tmp_path / "many.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", path.name, "64M",
                    cwd=tmp_path).returncode == 0
    r = Raw(path.read_bytes())
    end = -(-len(r.d) // 512) * 512
    with open(path, "r+b") as f:
        for i in range(r.l1_size):
            f.seek(r.l1_offset + 8 * i)
            f.write(be64((1 << 63) | (end + i * 512)))
            f.seek(end + i * 512)
            f.write(be64(1 << 63) * 64)
    report = assert_same_as_qemu(path)  # qemu: the tables are not refcounted (corruptions), nothing about COPIED
    listed = findings(report, "l2.copied_unallocated")
    more = [f for f in report["findings"] if f["code"] == "l2.copied_unallocated.more"]
    assert len(listed) == 10_000 and len(more) == 1
    assert len(listed) + more[0]["repeat"] == r.l1_size * 64


def test_copied_with_offset_zero_is_allocated_with_a_data_file(corpus):
    """With an external data file, offset 0 with bit 63 is the host cluster at offset 0: no finding."""
    path = image_path(corpus, "data_file")
    r = Raw(path.read_bytes())
    assert any(r.l2(i) & (OFFSET | (1 << 63) | (1 << 62)) == 1 << 63 for i in range(r.cs // 8))
    report = assert_same_as_qemu(path)
    assert not findings(report, "l2.copied_unallocated")


# -- 2. extension area without its end marker -------------------------------------------------------------------

def test_extensions_without_end_marker(corpus, tmp_path):
    src = Raw(image_path(corpus, "v3_default").read_bytes())
    end = extensions_end(src)
    # an unknown extension in place of the end marker, filling the rest of cluster 0 exactly
    path = poked(corpus, tmp_path, "v3_default",
                 lambda r: [(end, be32(0x12345678) + be32(r.cs - end - 8))])
    report = check_clean_as_qemu(path)  # qemu's walk stops at the end of cluster 0 and accepts it
    f = only(report, "extension.end_marker_missing")
    assert (f["host_offset"], f["severity"], f["structure"]) == (end, "warning", "header extensions")
    assert qemu_img("info", "--output=json", path.name, cwd=path.parent).returncode == 0


# -- 3. feature name table entries out of range -----------------------------------------------------------------

def test_feature_name_bit_and_type_out_of_range(corpus, tmp_path):
    src = Raw(image_path(corpus, "v3_default").read_bytes())
    table = extension(src, FEATURE_NAME_TABLE) + 8
    path = poked(corpus, tmp_path, "v3_default", lambda r: [(table + 1, b"\x40"), (table + ENTRY, b"\x03")])
    report = check_clean_as_qemu(path)
    bit = only(report, "extension.feature_name_bit_invalid")
    kind = only(report, "extension.feature_name_type_invalid")
    assert (bit["host_offset"], kind["host_offset"]) == (table + 1, table + ENTRY)
    assert bit["structure"] == kind["structure"] == "feature name table extension"
    assert "bit number 64" in bit["message"] and "'dirty bit'" in bit["message"]
    assert "type 3" in kind["message"] and "'corrupt bit'" in kind["message"]
    assert not findings(report, "extension.unparsable")
    # the other entries are still read (the table is not dropped for one bad entry)
    res = run_qforensics("info", "--output", "json", path.name, cwd=path.parent)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    entries = next(e for e in info["extensions"] if e["magic"] == f"0x{FEATURE_NAME_TABLE:08x}")["entries"]
    assert [(e["type"], e["bit"]) for e in entries][:3] == [(0, 64), (3, 1), (0, 2)] and len(entries) == 8
    assert_states_same_facts(qemu_info_json(path), info)


# -- 4. padding and reserved fields -----------------------------------------------------------------------------

def test_bitmap_directory_entry_padding(corpus, tmp_path):
    src = Raw(image_path(corpus, "bitmaps").read_bytes())
    entry = src.bitmap_entry(0)
    name_size = struct.unpack_from(">H", src.d, entry + 18)[0]
    end = entry + 24 + src.u32(entry + 20) + name_size
    assert end % 8, "the first entry needs padding for this case"
    at = entry + ((end - entry + 7) & ~7) - 1  # the last padding byte
    path = poked(corpus, tmp_path, "bitmaps", lambda r: [(at, b"\x5a")])
    report = check_clean_as_qemu(path)  # bitmap_list_load never reads the padding
    f = only(report, "bitmap.padding_nonzero")
    assert (f["host_offset"], f["severity"], f["structure"]) == (at, "warning", "bitmap directory")
    assert_states_same_facts(qemu_info_json(path), json.loads(
        run_qforensics("info", "--output", "json", path.name, cwd=path.parent).stdout))


def test_bitmaps_extension_reserved_with_autoclear_clear(corpus, tmp_path):
    """With autoclear bit 0 clear qemu ignores the extension (and never checks its reserved field)."""
    src = Raw(image_path(corpus, "bitmaps").read_bytes())
    reserved = extension(src, BITMAPS) + 8 + 4
    path = poked(corpus, tmp_path, "bitmaps", lambda r: [(88, be64(r.u64(88) & ~1)), (reserved, be32(7))])
    report = assert_same_as_qemu(path)  # qemu: the bitmap clusters are leaks, exit 3
    f = only(report, "extension.bitmaps_reserved")
    assert (f["host_offset"], f["severity"]) == (reserved, "warning")
    assert "0x7" in f["message"]


def test_bitmaps_extension_reserved_with_autoclear_set_is_qemus_refusal(corpus, tmp_path):
    """With the bit set, qemu refuses the image for it: our finding is the refusal, not a second warning."""
    src = Raw(image_path(corpus, "bitmaps").read_bytes())
    path = poked(corpus, tmp_path, "bitmaps", lambda r: [(extension(src, BITMAPS) + 12, be32(7))])
    res = qemu_img("check", "--output=json", path.name, cwd=path.parent)
    assert res.returncode == 1 and "bitmaps_ext: Reserved field is not zero" in res.stderr
    report = assert_same_as_qemu(path)
    (f,) = findings(report, "extension.bitmaps_reserved")
    assert f["qemu_message"] == "bitmaps_ext: Reserved field is not zero"


def test_feature_name_padding(corpus, tmp_path):
    src = Raw(image_path(corpus, "v3_default").read_bytes())
    table = extension(src, FEATURE_NAME_TABLE) + 8
    name = src.d[table + 2:table + ENTRY].split(b"\0", 1)[0]
    at = table + 2 + len(name) + 5  # inside the zero padding after "dirty bit"
    path = poked(corpus, tmp_path, "v3_default", lambda r: [(at, b"X")])
    report = check_clean_as_qemu(path)
    f = only(report, "extension.feature_name_padding_nonzero")
    assert (f["host_offset"], f["severity"], f["structure"]) == (at, "warning", "feature name table extension")


def test_extension_padding_is_information(corpus, tmp_path):
    """The spec does not promise zero padding after an extension's data: reported, as information only."""
    top = CASES["backing_chain"]["main"]
    src = Raw(image_path(corpus, "backing_chain", top).read_bytes())
    ext = extension(src, BACKING_FORMAT)
    length = src.u32(ext + 4)
    assert length % 8
    at = ext + 8 + ((length + 7) & ~7) - 1
    path = poked(corpus, tmp_path, "backing_chain", lambda r: [(at, b"\x01")], name=top)
    report = check_clean_as_qemu(path)
    f = only(report, "extension.padding_nonzero")
    assert (f["host_offset"], f["severity"]) == (at, "info")
    assert qemu_info_json(path)["backing-filename-format"] == "qcow2"


# -- 5. raw external data file with a backing file --------------------------------------------------------------

def test_data_file_raw_with_backing_file(corpus, tmp_path):
    for f in (corpus / "backing_chain").iterdir():
        shutil.copyfile(f, tmp_path / f.name)
    src = Raw(image_path(corpus, "data_file_raw").read_bytes())
    name_at = extensions_end(src) + 8
    path = poked(corpus, tmp_path, "data_file_raw",
                 lambda r: [(8, be64(name_at) + be32(10)), (name_at, b"base.qcow2")])
    # qemu-img create refuses the combination ("Backing file and data-file-raw cannot be used at the same
    # time"); qemu 7.2 opens such an image and checks it clean
    report = check_clean_as_qemu(path)
    f = only(report, "header.data_file_raw_with_backing")
    assert (f["host_offset"], f["severity"]) == (88, "warning")
    qemu = qemu_info_json(path)
    assert qemu["backing-filename"] == "base.qcow2" and qemu["format-specific"]["data"]["data-file-raw"] is True
    info = run_qforensics("info", "--output", "json", path.name, cwd=path.parent)
    assert info.returncode == 0, info.stderr
    assert_states_same_facts(qemu, json.loads(info.stdout))


def test_qemu_img_create_refuses_data_file_raw_with_backing(tmp_path):
    assert qemu_img("create", "-q", "-f", "qcow2", "base.qcow2", "1M", cwd=tmp_path).returncode == 0
    res = qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=t.data,data_file_raw=on", "-b", "base.qcow2",
                   "-F", "qcow2", "t.qcow2", "1M", cwd=tmp_path)
    assert res.returncode == 1 and "Backing file and data-file-raw cannot be used at the same time" in res.stderr


# -- 6. data between the end of the extensions and the end of cluster 0 -----------------------------------------

def test_cluster0_data_after_extensions(corpus, tmp_path):
    path = poked(corpus, tmp_path, "v3_default", lambda r: [(0x1000, b"\xaa\xbb"), (r.cs - 1, b"\x01")])
    report = check_clean_as_qemu(path)
    f = only(report, "header.cluster0_extra_data")
    assert (f["host_offset"], f["severity"]) == (0x1000, "warning")
    assert f["message"].startswith("3 non-zero bytes in ")


def test_cluster0_data_after_backing_name(corpus, tmp_path):
    top = CASES["backing_chain"]["main"]
    src = Raw(image_path(corpus, "backing_chain", top).read_bytes())
    name_end = src.u64(8) + src.u32(16)
    path = poked(corpus, tmp_path, "backing_chain", lambda r: [(name_end + 3, b"junk")], name=top)
    report = check_clean_as_qemu(path)
    f = only(report, "header.cluster0_extra_data")
    assert (f["host_offset"], f["severity"]) == (name_end + 3, "warning")
    assert "between the backing file name and the end of cluster 0" in f["message"]
    assert qemu_info_json(path)["backing-filename"] == src.d[src.u64(8):name_end].decode()


# -- 7. header_length not a multiple of 8 -----------------------------------------------------------------------

def shifted(hl: int):
    """header_length set to ``hl`` and the extension area moved to start there, as a writer would put it."""
    def pokes(r: Raw):
        area = r.d[112:extensions_end(r) + 8]
        return [(100, be32(hl)), (hl, area + b"\0" * (112 - hl))]
    return pokes


@pytest.mark.parametrize("hl", [105, 106, 108])
def test_header_length_unaligned_extensions_read_as_qemu(corpus, tmp_path, hl):
    """qemu reads the extensions at header_length exactly (qcow2_read_extensions(bs, header.header_length, ...)):
    the bitmaps it lists prove it found the extension there."""
    src = Raw(image_path(corpus, "bitmaps").read_bytes())
    path = poked(corpus, tmp_path, "bitmaps", shifted(hl))
    qemu = qemu_info_json(path)
    assert [b["name"] for b in qemu["format-specific"]["data"]["bitmaps"]] == ["b0", "b1"]
    res = run_qforensics("info", "--output", "json", path.name, cwd=path.parent)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert_states_same_facts(qemu, info)
    assert info["header"]["header-length"] == hl
    shift = 112 - hl
    assert [(e["offset"], e["magic"]) for e in info["extensions"]] == [
        (extension(src, FEATURE_NAME_TABLE) - shift, "0x6803f857"), (extension(src, BITMAPS) - shift, "0x23852875")]
    report = check_clean_as_qemu(path)
    f = only(report, "header.header_length_unaligned")
    assert (f["host_offset"], f["severity"]) == (100, "warning")


@pytest.mark.parametrize("hl", [106, 108])
def test_header_length_unaligned_extension_type_is_not_padding(corpus, tmp_path, hl):
    """With header_length 106..111 the bytes from header_length on are the first extension's type, not header
    padding: no padding finding may quote them."""
    path = poked(corpus, tmp_path, "bitmaps", shifted(hl))
    report = check_clean_as_qemu(path)
    assert not findings(report, "header.padding_nonzero"), findings(report, "header.padding_nonzero")


def test_header_length_unaligned_without_moving_the_extensions(corpus, tmp_path):
    """header_length 108 over a 112-byte header: qemu reads an extension of type 0 (the padding) whose length
    is the feature name table's magic, and refuses the image; so do we, for the same reason."""
    path = poked(corpus, tmp_path, "v3_default", lambda r: [(100, be32(108))])
    qemu = qemu_img("info", "--output=json", path.name, cwd=path.parent)
    assert qemu.returncode == 1 and "Header extension too large" in qemu.stderr
    res = run_qforensics("info", "--output", "json", path.name, cwd=path.parent)
    assert res.returncode == 1 and res.stderr.startswith(f"qforensics: {path.name}: Header extension too large [")
    report = assert_same_as_qemu(path)
    assert report["qemu-would-refuse"] == ["Header extension too large"]
