"""Journal clusters whose first entries are damaged are still found, listed and checked (issue 14, point 6).

No header field points to a journal: it is found by scanning unreferenced clusters. A cluster whose first
entry is damaged (size 0 or 1, an unknown type, an END that does not reach the boundary) is recognised by
its tail and the entry chain that resumes after the damaged entry (qforensics/model/journal.py,
``resynchronise``). Each case pokes one byte of a corpus journal, then compares: `info --output json`
still lists the journal, `check --output json` names the damaged entry at its host offset and explains
qemu's leak as the journal, and `check`'s qemu counters and exit code equal live `qemu-img check`'s.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import CASES, CORPUS, image_path, qemu_img, run_qforensics
from corruptions import Raw, journal_start
from qforensics.model.journal import JOURNAL_CLUSTER, parse_journal_cluster, resynchronise
from test_check_vs_qemu import assert_same_as_qemu

JC = JOURNAL_CLUSTER


def journal_offset(case: str) -> int:
    return next(d for d in CASES[case]["draft_layout"] if d["draft"] == "journal")["journal_offset"]


def poked(corpus: Path, tmp_path: Path, case: str, pokes: list[tuple[int, int]]) -> Path:
    """A copy of the case's image with bytes set at offsets relative to its journal."""
    src = image_path(corpus, case)
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    data = bytearray(dst.read_bytes())
    base = journal_offset(case)
    if case == "draft_journal":  # the test-side locator of corruptions.py agrees with the writer's record
        assert journal_start(Raw(bytes(data))) == base
    for rel, value in pokes:
        data[base + rel] = value
    dst.write_bytes(bytes(data))
    return dst


def info_json(path: Path) -> dict:
    res = run_qforensics("info", "--output", "json", path.name, cwd=path.parent)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    return json.loads(res.stdout)


# (id, case, pokes relative to the journal, finding code, damaged entry (relative), endings, hash entries)
CASES_DAMAGED = [
    # first entry of journal cluster 0: the 50-byte HASH entry at byte 0; the chain resumes at byte 50
    ("first_size_0", "draft_journal", [(0, 0)], "journal.entry_size", 0, ["broken", "none"], [80, 19]),
    ("first_size_1", "draft_journal", [(0, 1)], "journal.entry_size", 0, ["broken", "none"], [80, 19]),
    ("first_type_7", "draft_journal", [(1, 7)], "journal.entry_type", 0, ["broken", "none"], [80, 19]),
    ("first_is_short_end", "draft_journal", [(1, 1)], "journal.end_misplaced", 0, ["broken", "none"], [80, 19]),
    ("second_size_0", "draft_journal", [(50, 0)], "journal.entry_size", 50, ["broken", "none"], [80, 19]),
    ("dedup_first_size_0", "draft_dedup_journal", [(0, 0)], "journal.entry_size", 0, ["broken", "none"], [80, 19]),
    # cluster 0 closes with 0xFF fill (no END) in this case: the NONE tail vouches for it
    ("without_end_first_size_0", "draft_journal_cluster_without_end", [(0, 0)], "journal.entry_size", 0,
     ["broken", "none"], [80, 19]),
    # journal cluster 1, which cluster 0's END points to
    ("cluster1_first_size_0", "draft_journal", [(JC, 0)], "journal.entry_size", JC, ["end", "broken"], [81, 18]),
    ("cluster1_first_type_7", "draft_journal", [(JC + 1, 7)], "journal.entry_type", JC, ["end", "broken"],
     [81, 18]),
    # a damaged entry in the middle (entry 3): already found by the strict parse; kept
    ("middle_size_1", "draft_journal", [(150, 1)], "journal.entry_size", 150, ["broken", "none"], [3, 19]),
    ("middle_type_7", "draft_journal", [(151, 7)], "journal.entry_type", 150, ["broken", "none"], [3, 19]),
]


@pytest.mark.parametrize(("case", "pokes", "code", "damaged", "endings", "hashes"),
                         [c[1:] for c in CASES_DAMAGED], ids=[c[0] for c in CASES_DAMAGED])
def test_damaged_journal_still_found_and_checked(corpus, tmp_path, case, pokes, code, damaged, endings, hashes):
    path = poked(corpus, tmp_path, case, pokes)
    base = journal_offset(case)

    info = info_json(path)
    (area,) = info["journals"]
    assert area["offset"] == base
    assert [j["offset"] for j in area["journal-clusters"]] == [base + k * JC for k in range(len(endings))]
    assert [j["ending"] for j in area["journal-clusters"]] == endings
    assert [j["hash-entries"] for j in area["journal-clusters"]] == hashes

    # a cluster recognised past its damaged head names the damaged entry (the strict parse, which finds a
    # damaged third entry, needs no resynchronising and names none)
    resynced = damaged < 100 or damaged == JC
    expect = [base + damaged if resynced and e == "broken" else None for e in endings]
    assert [j.get("damaged-entry") for j in area["journal-clusters"]] == expect

    human = run_qforensics("info", path.name, cwd=path.parent)
    assert human.returncode == 0
    listed = ", ".join(f"0x{base + k * JC:x} {h} hash entries, {e}"
                       + (f" (damaged entry at 0x{d:x})" if d is not None else "")
                       for k, (h, e, d) in enumerate(zip(hashes, endings, expect, strict=True)))
    assert f"  0x{base:x}: {listed}" in human.stdout.splitlines()

    report = assert_same_as_qemu(path)  # counters, exit code and qemu's per-fault lines, live
    qemu = json.loads(qemu_img("check", "--output=json", path.name, cwd=path.parent).stdout)
    assert (report["check-errors"], report["corruptions"], report["leaks"], report["image-end-offset"]) == \
        (qemu.get("check-errors", 0), qemu.get("corruptions", 0), qemu["leaks"], qemu["image-end-offset"])
    # qemu's leaks: the journal cluster (and the 2 dedup-table clusters), every one explained as a draft structure
    assert report["leaks"] == (3 if "dedup" in case else 1)

    found = [(f["code"], f["host_offset"]) for f in report["findings"] if f["code"].startswith("journal.")]
    assert (code, base + damaged) in found, found
    leaked = [f["host_offset"] for f in report["findings"] if f["code"] == "refcount.leak"]
    explained = [f["host_offset"] for f in report["findings"] if f["code"] == "draft.qemu_leak_explained"]
    assert leaked == explained and base in explained


def test_findings_after_the_damaged_entry_are_still_checked(corpus, tmp_path):
    """Past a damaged first entry the resumed chain is walked: the missing END of cluster 0 is still reported
    at the NONE where replay stops, the offset the fixture writer recorded."""
    case = "draft_journal_cluster_without_end"
    path = poked(corpus, tmp_path, case, [(0, 0)])
    report = assert_same_as_qemu(path)
    found = {(f["code"], f["host_offset"]) for f in report["findings"] if f["code"].startswith("journal.")}
    (defect,) = CASES[case]["expected"]
    assert found == {("journal.entry_size", journal_offset(case)), ("journal.missing_end", defect["host_offset"])}


# ---- negative: what is not a journal ------------------------------------------------------------------------

def _blocks() -> list[tuple[str, bytes]]:
    rng = random.Random(20130620)
    out = [("zeros", bytes(JC)), ("ff", b"\xff" * JC), ("ff_first_byte_0", b"\x00" + b"\xff" * (JC - 1)),
           ("ff_first_entry_size_0", b"\x00\x02" + b"\xff" * (JC - 2)),
           ("one_entry_then_ff", b"\x00\x02" + bytes([50, 2]) + bytes(48) + b"\xff" * (JC - 52)),
           ("refcounts_16", b"\x00\x01" * (JC // 2)), ("refcounts_8_twos", b"\x02" * JC)]
    for n in range(200):
        body = rng.randbytes(JC)
        out.append((f"random_{n}", body))
        cut = rng.randrange(64, JC - 2)  # a damaged head, random entries, then a journal-like tail
        out.append((f"random_ff_tail_{n}", b"\x00" + body[1:cut] + b"\xff" * (JC - cut)))
        end = rng.randrange(JC - 254, JC - 2)
        out.append((f"random_end_tail_{n}", b"\x00" + body[1:end] + bytes([JC - end, 1]) + b"\xff" * (JC - end - 2)))
    for n in range(3000):  # the shape random bytes pass most easily: a short random head, then long 0xFF fill
        cut = rng.randrange(4, 600)
        out.append((f"random_short_head_{n}", b"\x00" + rng.randbytes(cut) + b"\xff" * (JC - 1 - cut)))
    return out


# the strict parse (first entry valid) accepts these by its own older rule, not by resynchronisation: random
# blocks whose first two entries happen to be HASH entries (about 1 in 65536), and a run of 02 02 entries that
# fills the cluster ("unterminated"); resynchronise must still reject every one
STRICT_ACCEPTS = ("random_", "refcounts_8_twos")


def test_arbitrary_blocks_are_not_resynchronised():
    for name, block in _blocks():
        assert resynchronise(block, 0) is None, name
        if not name.startswith(STRICT_ACCEPTS):
            assert parse_journal_cluster(block, 0) is None, name


def test_resynchronisation_needs_a_chain_into_the_tail():
    """The smallest block the rule accepts, and the one-byte changes that make it reject it."""
    head, entry = b"\x00\x02", bytes([50, 2]) + bytes(48)
    good = head + entry * 3 + b"\xff" * (JC - 152)
    jc = resynchronise(good, 0x1000)
    assert jc is not None and (jc.damaged, jc.resumes, jc.ending, jc.hash_entries) == (0x1000, 0x1002, "broken", 3)
    assert jc.entries[-1] == (0x1000 + 152, 0xFF, 0xFF)
    big = bytes([254, 2]) + bytes(252)
    end = head + big * 16 + bytes([30, 1]) + b"\xff" * 28  # closed by an END at 4066 instead
    assert resynchronise(end, 0).entries[-1] == (4066, 30, 1)
    assert resynchronise(head + big * 16 + bytes([28, 1]) + b"\xff" * 28, 0) is None  # END short of the boundary
    assert resynchronise(head + entry * 2 + b"\xff" * (JC - 102), 0) is None  # two HASH entries are not enough
    assert resynchronise(head + entry * 3 + b"\x00" + b"\xff" * (JC - 153), 0) is None  # tail not 0xFF
    assert resynchronise(head + entry * 2 + bytes([50, 7]) + bytes(48) + b"\xff" * (JC - 152), 0) is None


def test_no_block_of_the_corpus_is_resynchronised_outside_its_journal():
    """L2 tables, refcount blocks, headers, data of every corpus file: no damaged-head journal is invented.

    The one hit is journal cluster 1 of draft_journal_entry_spans_clusters, whose byte 0 is the tail of the
    entry that spans from cluster 0: inside the recorded journal, and not resynchronised by the scan (the
    cluster before it does not end with an END), as test_drafts_info's ["overrun"] checks."""
    import gzip

    hits = []
    for case, prov in CASES.items():
        journals = [(d["journal_offset"], d["journal_offset"] + d["journal_bytes"])
                    for d in prov.get("draft_layout") or [] if d.get("draft") == "journal"]
        for f in prov["files"]:
            src = CORPUS / case / f["stored_as"]
            opener = gzip.open if f["stored_as"].endswith(".gz") and not f["name"].endswith(".gz") else open
            with opener(src, "rb") as fh:
                data = fh.read()
            for o in range(0, len(data) - JC + 1, JC):
                if resynchronise(data[o:o + JC], o) is not None:
                    inside = f["name"] == prov["main"] and any(a <= o < b for a, b in journals)
                    hits.append((case, f["name"], o, inside))
    assert hits == [("draft_journal_entry_spans_clusters", "draft_journal_entry_spans_clusters.qcow2",
                     journal_offset("draft_journal_entry_spans_clusters") + JC, True)]


@pytest.mark.parametrize("fill", ["zeros", "ff", "random_ff_tail"])
def test_leaked_cluster_that_is_not_a_journal_stays_unexplained(corpus, tmp_path, fill):
    """draft_journal with its journal cluster overwritten: no journal is listed and qemu's leak is not explained."""
    rng = random.Random(7)
    cs = 1 << 16
    body = {"zeros": bytes(cs), "ff": b"\xff" * cs,
            "random_ff_tail": b"".join(b"\x00" + rng.randbytes(3000) + b"\xff" * (JC - 3001) for _ in range(cs // JC))}
    path = poked(corpus, tmp_path, "draft_journal", [(i, v) for i, v in enumerate(body[fill])])
    info = info_json(path)
    assert "journals" not in info
    report = assert_same_as_qemu(path)
    assert report["leaks"] == 1
    assert [f["host_offset"] for f in report["findings"] if f["code"] == "refcount.leak"] == \
        [journal_offset("draft_journal")]
    assert not [f for f in report["findings"] if f["code"] == "draft.qemu_leak_explained"
                or f["code"].startswith("journal.")]


def test_resync_attempts_are_bounded(monkeypatch):
    """A scan never runs more resynchronisations than its budget, whatever the number of candidate clusters."""
    from qforensics.model import journal

    calls = []
    real = journal.resynchronise
    monkeypatch.setattr(journal, "resynchronise", lambda raw, offset: calls.append(offset) or real(raw, offset))
    monkeypatch.setattr(journal, "MAX_RESYNC_ATTEMPTS", 5)

    class File:
        size = 64 * JC

        def holds_data(self, offsets, length):
            return np.ones(len(offsets), bool)

        def read(self, offset, length):
            return b"\x00\x02" + b"\x02\x02" * 10 + b"\xff" * (JC - 22)  # resynchronises: a journal each

    class Img:
        file = File()

        class header:
            cluster_size = JC

    areas = journal.find_journals(Img(), np.arange(64))
    assert len(calls) == 5 and len(areas) == 5
