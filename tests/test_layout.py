"""The host layout accounts for every cluster qemu cannot explain in the draft images, and for nothing else."""

from __future__ import annotations

import re

import pytest

from conftest import CASES, image_path, qemu_img
from qforensics import open_image
from qforensics.layout import Role, build_layout

DRAFTS = [c for c in sorted(CASES) if c.startswith("draft_") and "early_bitmaps" not in c]


@pytest.mark.parametrize("case", DRAFTS)
def test_qemu_leaks_are_draft_structures(corpus, case):
    path = image_path(corpus, case)
    res = qemu_img("check", path.name, cwd=path.parent)
    leaked = [int(m) for m in re.findall(r"Leaked cluster (\d+) refcount=1 reference=0", res.stderr)]
    assert leaked, res.stderr
    with open_image(path) as img:
        lay = build_layout(img)
    roles = {Role(int(lay.role[c])) for c in leaked}
    assert roles <= {Role.DEDUP_TABLE, Role.JOURNAL}, roles


@pytest.mark.parametrize("case", ["v3_default", "snapshots", "compressed_zstd", "bitmaps", "encrypted_luks",
                                  "extended_l2", "prealloc_metadata", "refcount_bits_1"])
def test_layout_claims_every_allocated_cluster(corpus, case):
    """On clean qemu images every cluster with a refcount is claimed, and nothing free is."""
    from qforensics.model.refcount import stored_refcounts

    with open_image(image_path(corpus, case)) as img:
        lay = build_layout(img)
        stored = stored_refcounts(img)
    assert lay.conflicts == [] and lay.past_eof == []
    assert ((stored > 0) == (lay.role != Role.FREE)).all()
