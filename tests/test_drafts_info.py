"""info reads the draft structures where the fixture writer put them (its layout record is the oracle)."""

from __future__ import annotations

import json

import pytest

from conftest import CASES, image_path, run_qforensics
from qforensics import open_image
from qforensics.model.dedup_table import dedup_entries


def layout(case: str, draft: str) -> dict:
    return next(d for d in CASES[case]["draft_layout"] if d["draft"] == draft)


def info_json(path):
    res = run_qforensics("info", "--output", "json", "--force", path.name, cwd=path.parent)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_dedup_table_located_and_decoded(corpus):
    want = layout("draft_dedup", "dedup")
    path = image_path(corpus, "draft_dedup")
    info = info_json(path)
    dd = info["deduplication"]
    assert (dd["table-offset"], dd["table-size"]) == (want["table_offset"], want["table_size"])
    assert dd["l2-cluster-offsets"] == want["l2_dedup_offsets"]
    assert dd["l2-entries-per-cluster"] == want["l2_dedup_cluster_entries"]
    bit1 = next(b for b in info["features"]["incompatible"] if b["bit"] == 1)
    assert bit1["interpretation"] == "corrupt (upstream); deduplication (2012 draft, dedup extension present)"
    with open_image(path) as img:
        entries = dedup_entries(img.file.read(want["l2_dedup_offsets"][0], img.header.cluster_size))
    used = entries[entries["logical"] != 0]
    assert (entries["hash"] != b"").sum() == want["data_entries"]
    shared = {s["host"] // 65536: s["first_logical"] for s in want["shared_clusters"]}
    for phys, logical in shared.items():
        assert int(entries["logical"][phys]) == logical
    assert len(used) >= len(shared) - 1  # guest offset 0 is a legitimate logical offset


def test_early_bitmaps_located(corpus):
    want = layout("draft_early_bitmaps", "early_bitmaps")["bitmaps"]
    info = info_json(image_path(corpus, "draft_early_bitmaps"))
    got = info["early-dirty-bitmaps"]
    assert [(b["name"], b["granularity"], b["size-sectors"], b["l1-table-offset"], b["l1-size"]) for b in got] == \
        [(b["name"], b["granularity"], b["size_sectors"], b["l1_offset"], b["l1_entries"]) for b in want]
    assert info["qemu-would-refuse"] == ["bitmaps_ext: Invalid extension length"]
    assert any(e["name"] == "dirty bitmaps (2015 draft layout)" for e in info["extensions"])


@pytest.mark.parametrize(("case", "endings"), [
    ("draft_journal", ["end", "none"]),
    ("draft_dedup_journal", ["end", "none"]),
    ("draft_journal_entry_spans_clusters", ["overrun"]),
    ("draft_journal_cluster_without_end", ["none", "none"]),
])
def test_journal_found_by_scanning(corpus, case, endings):
    want = layout(case, "journal")
    info = info_json(image_path(corpus, case))
    (area,) = info["journals"]
    assert area["offset"] == want["journal_offset"]
    assert [j["ending"] for j in area["journal-clusters"]] == endings
    if CASES[case]["valid"]:
        assert sum(j["hash-entries"] for j in area["journal-clusters"]) == want["hash_entries"]
