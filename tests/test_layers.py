"""The read path's own pieces on real files: the file layer's holes, runs, and the guest view's read()."""

from __future__ import annotations

import numpy as np

from conftest import image_path, qemu_img
from qforensics.evidence.file import FileLayer
from qforensics.layers.chain import Consent, open_chain
from qforensics.layers.extent import Kind
from qforensics.model import Image


def test_file_layer_sees_holes_as_the_file_system_does(tmp_path):
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(8 << 20)
        f.seek(1 << 20)
        f.write(b"\x01" * 65536)
        f.seek(5 << 20)
        f.write(b"\x02" * 4096)
    with FileLayer(path) as layer:
        runs = layer.data_runs(0, layer.size)
        assert (1 << 20, (1 << 20) + 65536) in runs and any(lo <= 5 << 20 < hi for lo, hi in runs)
        covered = sum(hi - lo for lo, hi in runs)
        assert covered < 1 << 20  # the holes are not data
        data = path.read_bytes()
        for lo, hi in [(0, 1 << 20), ((2 << 20), (5 << 20))]:
            assert not layer.holds_data(np.array([lo]), hi - lo)[0] and not data[lo:hi].strip(b"\0")
        assert layer.holds_data(np.array([(1 << 20) - 4096, 5 << 20, 8 << 20]), 8192).tolist() == [True, True, False]
        buf = bytearray(4096)
        assert layer.read_into(5 << 20, memoryview(buf)) == 4096 and buf == b"\x02" * 4096


def test_guest_read_equals_qemu_io_read_at_odd_offsets(corpus, tmp_path):
    """read() through a 3-layer chain, at offsets that straddle clusters and layers."""
    path = image_path(corpus, "backing_chain")
    raw = tmp_path / "flat.raw"
    assert qemu_img("convert", "-O", "raw", path.name, str(raw), cwd=path.parent).returncode == 0
    flat = raw.read_bytes()
    with Image(path) as img:
        opened: list = []
        disk = open_chain(img, Consent(image_dir=True), opened=opened)
        for offset, length in [(0, 512), (65536 - 100, 300), (1020 * 1024 - 7, 9000), (4194304 - 4096, 8192)]:
            assert disk.read(offset, length) == flat[offset:offset + length]
        kinds = {e.kind for e in disk.extents(0, disk.size)}
        assert Kind.NORMAL in kinds and Kind.UNALLOCATED in kinds
        for f in opened:
            f.close()


def test_runs_cover_the_guest_exactly(corpus):
    for case in ("extended_l2", "compressed_zstd", "zero_clusters_v3", "cluster_512"):
        with Image(image_path(corpus, case)) as img:
            disk = open_chain(img, Consent())
            pos = 0
            for batch in disk.runs(0, disk.size):
                assert int(batch.start[0]) == pos
                assert (batch.start[1:] == batch.start[:-1] + batch.length[:-1]).all()
                pos = int(batch.start[-1] + batch.length[-1])
            assert pos == disk.size
