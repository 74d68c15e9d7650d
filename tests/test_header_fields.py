"""model/qcow2_header.py's FIELDS (the offset of every header field, for findings and hex excerpts) agree with the
declaration in ksy/qcow2_header.ksy: poking a value at each offset changes exactly that field as the
generated parser reads it (issue 15: declarations stay declarations)."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import image_path

from qforensics.model.qcow2_header import FIELDS, parse_header

# a value each field can take without the parser refusing the header (its ksy `valid` rules)
VALUES = {"version": 2, "cluster_bits": 12, "refcount_order": 5, "header_length": 120, "compression_type": 1,
          "padding": b"\x01\x02\x03\x04\x05\x06\x07"}


@pytest.mark.parametrize("name", [n for n in FIELDS if n != "magic"])
def test_each_offset_is_the_fields(corpus, name):
    probe = bytearray(image_path(corpus, "v3_default").read_bytes()[:4096])
    offset, size = FIELDS[name]
    value = VALUES.get(name, int.from_bytes(bytes(range(0x51, 0x51 + size)), "big"))
    raw = value if isinstance(value, bytes) else value.to_bytes(size, "big")
    before = parse_header(bytes(probe))
    probe[offset:offset + size] = raw
    after = parse_header(bytes(probe))
    assert getattr(after, name) == value != getattr(before, name)
    if name != "version":  # a version 2 header has no fields past 72: they read as their defaults
        changed = [f.name for f in dataclasses.fields(after) if f.name != "parsed"
                   and getattr(after, f.name) != getattr(before, f.name)]
        assert changed == [name]


def test_magic_is_the_first_four_bytes(corpus):
    data = image_path(corpus, "v3_default").read_bytes()
    offset, size = FIELDS["magic"]
    assert data[offset:offset + size] == b"QFI\xfb"
