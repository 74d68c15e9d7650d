"""check validates the draft structures; every defect the fixture writer injected is found where it put it."""

from __future__ import annotations

import json

import pytest

from conftest import CASES, image_path, run_qforensics

DRAFTS = sorted(c for c in CASES if c.startswith("draft_"))
# the writer's defect names -> our finding code, and which recorded offset the finding must carry
DEFECTS = {
    "dedup_hash_mismatch": ("dedup.hash_mismatch", "entry_offset"),
    "dedup_entry_past_eof": ("dedup.entry_past_eof", "entry_offset"),
    "dedup_logical_maps_elsewhere": ("dedup.logical_elsewhere", "entry_offset"),
    "dedup_entries_out_of_order": ("dedup.out_of_order", "entry_offset"),
    "journal_entry_spans_clusters": ("journal.entry_spans_clusters", "host_offset"),
    "journal_cluster_without_end": ("journal.missing_end", "host_offset"),
    "early_bitmap_l1_entry_past_eof": ("draft_bitmaps.l1_past_eof", "entry_offset"),
}
DRAFT_CODES = ("dedup.", "journal.", "draft_bitmaps.")


def check(corpus, case) -> dict:
    path = image_path(corpus, case)
    res = run_qforensics("check", "--output", "json", path.name, cwd=path.parent)
    assert "Traceback" not in res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("case", DRAFTS)
def test_draft_defects_found_where_injected(corpus, case):
    report = check(corpus, case)
    found = {(f["code"], f["host_offset"]) for f in report["findings"]}
    expected = CASES[case].get("expected") or []
    if CASES[case]["valid"]:
        assert not [c for c, _ in found if c.startswith(DRAFT_CODES)], found
    for defect in expected:
        code, where = DEFECTS[defect["defect"]]
        assert (code, defect[where]) in found, (code, defect[where], sorted(found))


@pytest.mark.parametrize("case", [c for c in DRAFTS if "draft_early_bitmaps" not in CASES[c]["features"]])
def test_qemu_leaks_are_explained(corpus, case):
    """Every cluster qemu-img check calls leaked in a draft image is named as the draft structure it holds."""
    report = check(corpus, case)
    leaks = {f["host_offset"] for f in report["findings"] if f["code"] == "refcount.leak"}
    explained = {f["host_offset"] for f in report["findings"] if f["code"] == "draft.qemu_leak_explained"}
    assert leaks and leaks == explained
    assert report["leaks"] == len(leaks)  # qemu's count is unchanged by the explanation


def test_every_defect_kind_has_a_fixture():
    kinds = {d["defect"] for c in DRAFTS for d in CASES[c].get("expected") or []}
    assert kinds == set(DEFECTS)


def test_deduplicated_clusters_have_refcount_equal_to_their_references(corpus):
    """Seed 000 via qemu's rule: each shared cluster's refcount is its number of L2 references."""
    from qforensics import open_image
    from qforensics.model.refcount import stored_refcounts

    layout = next(d for d in CASES["draft_dedup"]["draft_layout"] if d["draft"] == "dedup")
    path = image_path(corpus, "draft_dedup")
    with open_image(path) as img:
        stored = stored_refcounts(img)
        cs = img.header.cluster_size
    for shared in layout["shared_clusters"]:
        assert int(stored[shared["host"] // cs]) == len(shared["guests"]) == shared["refcount"]
    report = check(corpus, "draft_dedup")
    hosts = {s["host"] for s in layout["shared_clusters"]}
    assert not [f for f in report["findings"] if f["host_offset"] in hosts
                and f["code"] in ("refcount.too_low", "refcount.leak", "l2.copied_mismatch")]
