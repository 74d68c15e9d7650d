"""One SEEK_DATA/SEEK_HOLE walk (layers/file.py seek_extents) for reading and for the report's sparse digest:
reading falls back to one extent, the digest never does."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest
from conftest import image_path

from qforensics.evidence import file as file_layer
from qforensics.evidence.file import FileLayer, seek_extents
from qforensics.evidence.digest import data_extents

MIB = 1 << 20


def holed_copy(corpus, tmp_path, chunks: int = 5):
    """v3_default, then ``chunks`` 4 KiB runs of data 1 MiB apart past its end, holes between."""
    path = tmp_path / "holes.qcow2"
    shutil.copyfile(image_path(corpus, "v3_default"), path)
    head = path.stat().st_size
    with open(path, "r+b") as f:
        for k in range(chunks):
            f.seek(4 * MIB + k * MIB)
            f.write(b"\xab" * 4096)
        f.truncate(4 * MIB + chunks * MIB + MIB)
    layout = [(0, head)] + [(4 * MIB + k * MIB, 4 * MIB + k * MIB + 4096) for k in range(chunks)]
    fd = os.open(path, os.O_RDONLY)
    try:
        if seek_extents(fd, path.stat().st_size, strict=True) != layout:
            pytest.skip("this file system does not keep the holes written")
    finally:
        os.close(fd)
    return path, layout


def test_reading_and_digest_walks_agree(corpus, tmp_path):
    path, layout = holed_copy(corpus, tmp_path)
    size = path.stat().st_size
    with FileLayer(path) as layer:
        starts, ends = layer.data_extents
        assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == layout
        assert seek_extents(layer._fd, size) == layout
        assert data_extents(layer._fd, size) == [(s, e - s) for s, e in layout]
        assert layer.data_runs(0, size) == layout


def test_preallocated_image_is_mostly_holes(tmp_path):
    """A qemu-made image: metadata preallocated over 1 GiB, data nowhere; both walks see the same extents."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", "p.qcow2", "1G"],
                   cwd=tmp_path, check=True)
    path = tmp_path / "p.qcow2"
    with FileLayer(path) as layer:
        walked = seek_extents(layer._fd, layer.size)
        assert walked == seek_extents(layer._fd, layer.size, strict=True)
        assert sum(e - s for s, e in walked) <= layer.allocated_bytes + 4096 < layer.size


def test_no_seek_data_reads_as_one_extent_but_digest_raises():
    """A pipe has no SEEK_DATA (ESPIPE): reading takes the whole range as data, the sparse digest refuses."""
    r, w = os.pipe()
    try:
        assert seek_extents(r, 1000) == [(0, 1000)]
        assert seek_extents(r, 0) == []
        with pytest.raises(OSError) as exc:
            seek_extents(r, 1000, strict=True)
        assert exc.value.errno == errno.ESPIPE
        with pytest.raises(OSError):
            data_extents(r, 1000)
    finally:
        os.close(r)
        os.close(w)


def test_only_reading_merges_past_the_extent_cap(corpus, tmp_path, monkeypatch):
    """Past MAX_EXTENTS reading takes the rest as one extent; the digest lists every extent, as its recipe does."""
    path, layout = holed_copy(corpus, tmp_path)
    monkeypatch.setattr(file_layer, "MAX_EXTENTS", 3)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        assert seek_extents(fd, size) == [*layout[:3], (layout[2][1], size)]
        assert seek_extents(fd, size, strict=True) == layout
    finally:
        os.close(fd)
