"""An L2 table cut by the end of the file reads as a whole table with zeros past the cut, as QEMU reads it
(found by the fuzzer: the dedup check indexed a 64-entry table by L2 index 64)."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
from conftest import image_path
from test_check_vs_qemu import QEMU_KEYS, qemu_check

from qforensics import open_image
from qforensics.checks import check_image
from qforensics.checks.dedup_table import guest_to_host
from qforensics.model import tables as T


def test_a_cut_l2_table_reads_whole_with_zeros(corpus, tmp_path):
    src = image_path(corpus, "draft_dedup")
    with open_image(src) as img:
        l1 = img.l1_table()
        l2_offsets = sorted(int(o) for o in l1 & T.L1E_OFFSET_MASK if o)
        last = l2_offsets[-1]
        whole = img.l2_table(last)[0]
        entries = img.header.l2_entries
    path = tmp_path / "cut.qcow2"
    shutil.copyfile(src, path)
    with open(path, "r+b") as f:
        f.truncate(last + 512)  # 64 entries of the last L2 table left
    with open_image(path) as img:
        cut = img.l2_table(last)[0]
        assert len(cut) == entries
        assert np.array_equal(cut[:64], whole[:64]) and not cut[64:].any()
        index = next(i for i, o in enumerate((l1 & T.L1E_OFFSET_MASK).tolist()) if o == last)
        cs = img.header.cluster_size
        guest = np.array([(index * entries + k) * cs for k in (0, 63, 64, entries - 1)], dtype=np.uint64)
        host = guest_to_host(img, guest)
        assert host[0] == whole[0] & T.L2E_OFFSET_MASK and host[1] == whole[63] & T.L2E_OFFSET_MASK
        assert host[2] == 0 and host[3] == 0
        report = check_image(img)  # the dedup, journal and refcount checks run to the end on the cut file
    # and give qemu-img check's verdict on it: the references past the cut are corruptions, line for line
    res, qemu, qemu_lines = qemu_check(path)
    doc = report.to_json(path.name)
    assert report.completed and report.exit_code == res.returncode == 2, res.stderr[-2000:]
    assert {key: doc[key] for key in QEMU_KEYS} == {key: qemu.get(key, 0) for key in QEMU_KEYS}
    assert Counter(f.qemu_check for f in report.findings if f.qemu_check) == Counter(qemu_lines)
    codes = {f.code for f in report.findings}
    assert {"refcount.reference_past_eof", "dedup.l1_past_eof", "dedup.table_too_small"} <= codes, sorted(codes)
