"""Finding as data: its JSON is what dataclasses.asdict gave (built directly, for speed), and no image
string makes one message huge, while qemu's message stays qemu's, byte for byte."""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct

import pytest
from conftest import CASES, image_path, qemu_img, run_qforensics
from corruptions import KINDS, make
from test_header_refusals import find_extension

from qforensics import open_image
from qforensics.checks import check_image
from qforensics.findings import MAX_MESSAGE, Finding, Severity, clip_message
from qforensics.text import MAX_LINE, clip

# corrupted images with many findings of different shapes (offsets, guest offsets, qemu_check, repeats)
JSON_KINDS = ["reftable_zeroed", "two_guests_one_host", "l2_entry_into_l1", "snapshot_l1_unaligned",
              "compressed_streams_overlap", "bitmap_in_use", "extl2_alloc_and_zero", "data_file_offset_not_guest"]


def asdict_json(f: Finding) -> dict:
    """The former Finding.to_json."""
    data = dataclasses.asdict(f)
    data["severity"] = str(f.severity)
    return data


@pytest.mark.parametrize("name", JSON_KINDS)
def test_to_json_is_asdict(corpus, tmp_path, name):
    kind = next(k for k in KINDS if k.id == name)
    path = make(kind, image_path(corpus, kind.base).parent, CASES[kind.base]["main"], tmp_path)
    with open_image(path) as img:
        findings = check_image(img).findings + img.findings
    assert findings
    for f in findings:
        mine, reference = f.to_json(), asdict_json(f)
        assert json.dumps(mine) == json.dumps(reference)  # same keys, same order, same values
        assert type(mine["severity"]) is str


def test_clip_message():
    assert clip_message("abc", 3) == "abc"
    assert clip_message("a" * 30, 20) == "aaa… (30 characters)"
    f = Finding("x.y", Severity.INFO, "m" * (MAX_MESSAGE + 10), "s", qemu_message="q" * (MAX_MESSAGE + 10))
    tail = f"… ({MAX_MESSAGE + 10} characters)"
    assert f.message == "m" * (MAX_MESSAGE - len(tail)) + tail and len(f.message) == MAX_MESSAGE
    assert f.qemu_message == "q" * (MAX_MESSAGE + 10)  # qemu's words are never ours to shorten
    assert dataclasses.replace(f, repeat=2).message == f.message


def long_bitmap_name_image(corpus, tmp_path):
    """The bitmaps corpus image with its directory moved to a new cluster at the end of the file, holding one
    entry whose name is 65535 bytes of 'n' (name_size is 16 bits; qemu allows 1023)."""
    path = tmp_path / "longname.qcow2"
    shutil.copyfile(image_path(corpus, "bitmaps"), path)
    data = bytearray(path.read_bytes())
    ext = find_extension(bytes(data), 0x23852875)
    directory = struct.unpack_from(">Q", data, ext + 8 + 16)[0]
    entry = bytearray(data[directory:directory + 24])
    entry[18:20] = struct.pack(">H", 0xFFFF)
    new = bytes(entry) + b"n" * 0xFFFF
    new += bytes(-len(new) % 8)
    at = len(data) + -len(data) % 65536
    data += bytes(at - len(data)) + new
    data[ext + 8:ext + 32] = struct.pack(">IIQQ", 1, 0, len(new), at)
    path.write_bytes(bytes(data))
    return path


def test_long_image_string_is_clipped_but_qemu_message_is_whole(corpus, tmp_path):
    path = long_bitmap_name_image(corpus, tmp_path)
    res = qemu_img("info", path.name, cwd=tmp_path)
    qemu = f"Bitmap '{'n' * 0xFFFF}' doesn't satisfy the constraints"
    assert res.returncode == 1 and res.stderr.strip().endswith(f": {qemu}"), res.stderr[:200]
    with open_image(path) as img:
        refusals = img.refusals
    assert [f.qemu_message for f in refusals] == [qemu]
    message = refusals[0].message  # the name is clipped where it is written into the message
    assert message == f"bitmap {clip('n' * 0xFFFF)}: name_size 65535 exceeds 1023"
    ours = run_qforensics("info", path.name, cwd=tmp_path)
    # stderr carries qemu's line, clipped to MAX_LINE characters (the JSON below keeps it whole)
    (line,) = ours.stderr.splitlines()
    full = f"qforensics: {path.name}: {qemu}"
    assert ours.returncode == 1 and len(line) == MAX_LINE
    assert line.startswith(full[:MAX_LINE - 30]) and line.endswith(" characters)")
    forced = run_qforensics("info", "--force", "--output", "json", path.name, cwd=tmp_path)
    shown = json.loads(forced.stdout)["findings"]
    assert all(len(f["message"]) <= MAX_MESSAGE for f in shown)
    assert qemu in [f["qemu_message"] for f in shown]


def test_image_findings_do_not_depend_on_what_was_read_first(corpus, tmp_path):
    """A snapshot table past the end of the file: its findings are there on the first ask, before anything
    touched the snapshots (they used to appear only once something had read the table)."""
    src = image_path(corpus, "snapshots")
    path = tmp_path / src.name
    shutil.copyfile(src, path)
    with open(path, "r+b") as f:
        f.seek(64)
        f.write(struct.pack(">Q", (src.stat().st_size // 65536 + 16) * 65536))
    with open_image(path) as img:
        first = [f.code for f in img.findings]
        img.snapshots  # noqa: B018
        assert [f.code for f in img.findings] == first
    assert "snapshot.table_past_eof" in first


def test_runs_read_decimals_with_leading_zeros():
    """Numbers in messages are hex (0x...) or decimal, leading zeros included ("07" in a date or a digest):
    folding them used to raise, taking the whole human output of check down."""
    from qforensics.findings import runs

    fs = [Finding("dedup.hash_mismatch", Severity.WARNING, f"stored SHA-256 07{i}ab...", "dedup table", 0x1000 + 8 * i)
          for i in range(3)]
    (run,) = runs(fs, 65536)
    assert (run.findings, run.text) == (3, "dedup table: stored SHA-256 070-072ab...")
