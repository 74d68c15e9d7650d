"""Hostile sizes in the header never make the model read or allocate without bound; evidence is never written.

Each case claims an absurd table size on a real image; the bytes read
through the file layer are counted while everything `info` shows is built.
The same holds for sizes inside the structures (snapshot entries, bitmap
directory entries, the LUKS header, the dedup extension, the 2015 draft
bitmaps), found with the fuzzer's raw survey; there `check` runs too, and
the verdict is compared with live `qemu-img info`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct

import pytest
from conftest import VALID_CASES, image_path, qemu_img, run_qforensics
from fuzz.mutate import cached_survey
from test_header_refusals import POKES, find_extension, poked_copy

from qforensics import open_image
from qforensics.checks import check_image
from qforensics.info import build_info
from qforensics.evidence.file import FileLayer
from qforensics.model import Unreadable

HOSTILE = {
    "l1_2e32_entries": ("v3_default", [(36, struct.pack(">I", 0xFFFFFFFF))]),
    "l1_offset_past_eof": ("v3_default", [(40, struct.pack(">Q", 1 << 40))]),
    "refcount_table_past_eof": ("v3_default", [(48, struct.pack(">Q", 1 << 40))]),
    "refcount_table_2e32_clusters": ("v3_default", [(56, struct.pack(">I", 0xFFFFFFFF))]),
    "snapshots_2e32": ("snapshots", [(60, struct.pack(">I", 0xFFFFFFFF))]),
    "snapshots_past_eof": ("snapshots", [(64, struct.pack(">Q", 1 << 40))]),
    "backing_name_2e32": ("backing_chain", [(16, struct.pack(">I", 0xFFFFFFFF))]),
    "size_2e63": ("v3_default", [(24, struct.pack(">Q", (1 << 63) - 1))]),
}


@pytest.fixture
def count_reads(monkeypatch):
    counter = {"bytes": 0, "largest": 0}
    original = FileLayer.read

    def counting(self, offset, length):
        data = original(self, offset, length)
        counter["bytes"] += len(data)
        counter["largest"] = max(counter["largest"], length)
        return data

    monkeypatch.setattr(FileLayer, "read", counting)
    return counter


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_sizes_are_bounded(corpus, tmp_path, count_reads, name):
    case, pokes = HOSTILE[name]
    src = image_path(corpus, case, "top.qcow2" if case == "backing_chain" else None)
    path = tmp_path / src.name
    shutil.copyfile(src, path)
    with open(path, "r+b") as f:
        for offset, value in pokes:
            f.seek(offset)
            f.write(value)
    size = path.stat().st_size
    with open_image(path) as img:
        info = build_info(img, str(path))
        json.dumps(info)
        l1 = img.l1_table()
        reft = img.refcount_table()
        assert isinstance(l1, Unreadable) or len(l1) * 8 <= size
        assert isinstance(reft, Unreadable) or len(reft) * 8 <= size
        assert img.refusals or img.findings
    assert count_reads["bytes"] <= 4 * size + (4 << 20), count_reads
    assert count_reads["largest"] <= max(size, 64 << 20), count_reads


# name -> (case, field as the survey names it, width, value)
FIELD_POKES = {
    "snapshot_l1_2e32": ("snapshots", "snapshot 0 l1 size", 4, 0xFFFFFFFF),
    "snapshot_extra_2e32": ("snapshots", "snapshot 0 extra data size", 4, 0xFFFFFFFF),
    "snapshot_name_2e16": ("snapshots", "snapshot 0 name length", 2, 0xFFFF),
    "bitmap_table_2e32": ("bitmaps", "bitmap 0 table size", 4, 0xFFFFFFFF),
    "bitmap_name_2e16": ("bitmaps", "bitmap 0 name size", 2, 0xFFFF),
    "bitmap_extra_2e32": ("bitmaps", "bitmap 0 extra data size", 4, 0xFFFFFFFF),
    # qemu's entry size is a C int: these wrap to a negative size and to 8 bytes
    "bitmap_extra_2e31": ("bitmaps", "bitmap 0 extra data size", 4, 0x80000000),
    "bitmap_extra_wraps_to_8": ("bitmaps", "bitmap 0 extra data size", 4, 0xFFFFFFE8),
    "luks_past_eof": ("encrypted_luks", "encryption header pointer offset", 8, 1 << 40),
    "luks_length_2e63": ("encrypted_luks", "encryption header pointer length", 8, 1 << 63),
    "luks_stripes_2e32": ("encrypted_luks", "LUKS key slot 0 stripes", 4, 0xFFFFFFFF),
    "luks_key_bytes_2e32": ("encrypted_luks", "LUKS key bytes", 4, 0xFFFFFFFF),
    "luks_key_offset_2e32": ("encrypted_luks", "LUKS key slot 0 key material offset", 4, 0xFFFFFFFF),
    "dedup_l1_2e32": ("draft_dedup", "dedup extension size", 4, 0xFFFFFFFF),
    "draft_bitmaps_2e32": ("draft_early_bitmaps", "draft bitmaps extension count", 4, 0xFFFFFFFF),
    "draft_bitmap_l1_2e32": ("draft_early_bitmaps", "draft bitmap 0 l1 size", 4, 0xFFFFFFFF),
    "draft_bitmap_name_2e16": ("draft_early_bitmaps", "draft bitmap 0 name size", 2, 0xFFFF),
}


def field_poked_copy(corpus, tmp_path, name):
    case, what, width, value = FIELD_POKES[name]
    data = bytearray(image_path(corpus, case).read_bytes())
    fields = [f for f in cached_survey(bytes(data)).fields if f.what == what]
    assert len(fields) == 1 and fields[0].width == width, (what, fields)
    data[fields[0].pos:fields[0].pos + width] = value.to_bytes(width, "big")
    path = tmp_path / f"{name}.qcow2"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("name", list(FIELD_POKES))
def test_hostile_sizes_in_structures_are_bounded(corpus, tmp_path, count_reads, name):
    path = field_poked_copy(corpus, tmp_path, name)
    size = path.stat().st_size
    with open_image(path) as img:
        json.dumps(build_info(img, str(path)))
        report = check_image(img)
        json.dumps(report.to_json(str(path)))
        refused = [f.qemu_message for f in img.refusals]
    assert count_reads["bytes"] <= 8 * size + (8 << 20), count_reads
    assert count_reads["largest"] <= max(size, 64 << 20), count_reads
    res = qemu_img("info", "--output=json", path.name, cwd=tmp_path)
    if res.returncode:  # qemu refuses: we refuse with its message
        assert any(m and m in res.stderr for m in refused), (res.stderr, refused)
    else:
        assert not refused, refused
    if name not in ("luks_length_2e63", "luks_key_offset_2e32"):  # harmless to qemu and to us
        assert report.findings, "a hostile size went unnoticed"


@pytest.mark.parametrize("poke", POKES, ids=[p.id for p in POKES])
def test_force_describes_every_refused_image(corpus, tmp_path, poke):
    """--force: the full description, with qemu's reasons as findings, never a traceback."""
    path = poked_copy(corpus, tmp_path, poke)
    res = run_qforensics("info", "--output", "json", "--force", path.name, cwd=tmp_path)
    assert "Traceback" not in res.stderr
    if poke.code is None:  # the header itself is unparsable: nothing to describe
        assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
        return
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["qemu-would-refuse"]
    assert poke.code in [f["code"] for f in info["findings"]]


def digest(folder):
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.mark.parametrize("case", VALID_CASES)
def test_info_leaves_evidence_untouched(corpus, case):
    folder = image_path(corpus, case).parent
    before = digest(folder)
    for output in ("human", "json"):
        res = run_qforensics("info", "--force", "--output", output, image_path(corpus, case).name, cwd=folder)
        assert res.returncode == 0, res.stderr
    assert digest(folder) == before


def test_file_layer_is_read_only(corpus):
    layer = FileLayer(image_path(corpus, "v3_default"))
    try:
        with pytest.raises(OSError):
            os.write(layer._fd, b"x")
    finally:
        layer.close()


def test_not_qcow2_is_one_line(tmp_path):
    for name, content in (("empty", b""), ("short", b"QFI"), ("raw", b"\0" * 4096),
                          ("qcow1", b"QFI\xfb" + struct.pack(">I", 1) + b"\0" * 64)):
        (tmp_path / name).write_bytes(content)
        res = run_qforensics("info", name, cwd=tmp_path)
        assert res.returncode == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"qforensics: {name}: qcow2 header at 0x"), lines
    res = run_qforensics("info", "missing.qcow2", cwd=tmp_path)
    assert res.returncode == 1 and "No such file" in res.stderr


def test_extension_walk_reports_every_structure_by_offset(corpus):
    """The bitmaps extension is found where the raw walk finds it."""
    path = image_path(corpus, "bitmaps")
    with open_image(path) as img:
        raw_offset = find_extension(img.file.read(0, 4096), 0x23852875)
        assert img.extensions.first(0x23852875).offset == raw_offset
