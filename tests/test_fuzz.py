"""Bounded fuzzing of every command (mutate.EXERCISES) over mutated corpus images; run_fuzz.py runs it longer.

The CI budget is about 150 examples (~15 s), one command each, derandomized so CI
is reproducible; run_fuzz.py explores. The survey the mutations aim
with is checked against the model's own reading of the same images, so the
fuzzer pokes the structures it claims to poke.
"""

from __future__ import annotations

import random
import shutil

import pytest
from conftest import CASES, image_path
from fuzz import mutate as harness
from fuzz.mutate import EXERCISES, OPERATORS, cached_survey, exercise, mutate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qforensics import open_image

SEEDS = ["v3_default", "v2_compat010", "snapshots", "bitmaps", "compressed_zlib", "compressed_zstd", "extended_l2",
         "cluster_512", "refcount_bits_1", "encrypted_luks", "data_file", "draft_dedup", "draft_dedup_journal",
         "draft_journal", "draft_early_bitmaps", "combo_snapshots_bitmaps", "combo_extl2_compressed"]


class Seeds(dict):
    """The seed images' bytes; a short repr keeps hypothesis reports readable."""

    def __repr__(self) -> str:
        return f"<{len(self)} seed images>"


@pytest.fixture(scope="module")
def seeds(corpus):
    return Seeds({case: image_path(corpus, case).read_bytes() for case in SEEDS if case in CASES})


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=st.sampled_from(SEEDS), seed=st.integers(0, 2**32 - 1), count=st.integers(1, 6),
       command=st.sampled_from(sorted(EXERCISES)))
def test_mutated_images_never_crash(seeds, tmp_path, case, seed, count, command):
    """One command per example keeps the budget; every command of EXERCISES gets its share."""
    path = tmp_path / "fuzzed.qcow2"
    path.write_bytes(mutate(seeds[case], random.Random(seed), count))
    exercise(path, [command], tmp_path)


def test_mutation_is_reproducible(seeds):
    for case in ("snapshots", "draft_dedup_journal", "encrypted_luks"):
        a = mutate(seeds[case], random.Random(42), 6)
        assert a == mutate(seeds[case], random.Random(42), 6) and a != seeds[case]


def test_survey_finds_what_the_model_reads(corpus, seeds):
    """The raw survey and the tool's model agree on where each structure is."""
    for case in SEEDS:
        s = cached_survey(seeds[case])
        with open_image(image_path(corpus, case)) as img:
            h = img.header
            assert s.anchors["active L1"] == h.l1_table_offset
            assert s.anchors["refcount table"] == h.refcount_table_offset
            assert s.cluster_bits == h.cluster_bits and s.extended_l2 == h.extended_l2
            if img.snapshots:
                assert s.anchors["snapshot table"] == h.snapshots_offset
                for snap in img.snapshots:
                    assert snap.entry_offset in {f.pos for f in s.fields if f.what.endswith("l1 offset")}
                    assert (f"snapshot {snap.index} name", snap.entry_offset + 40 + snap.extra_data_size +
                            len(snap.id.encode()), len(snap.name.encode())) in s.strings
            if img.bitmaps:
                assert s.anchors["bitmap directory"] == img.bitmaps_extension.bitmap_directory_offset
                assert {b.entry_offset for b in img.bitmaps} <= {f.pos for f in s.fields
                                                                 if f.what.endswith("table offset")}
            if img.luks is not None:
                assert s.anchors["LUKS header"] == img.luks.offset
                slots = [f for f in s.fields if f.what.startswith("LUKS key slot") and f.what.endswith("stripes")]
                assert [f.pos for f in slots] == [img.luks.offset + 208 + 48 * k + 44 for k in range(8)]
                assert ("LUKS cipher name", img.luks.offset + 8, 32) in s.strings
            if img.dedup_table is not None:
                assert s.anchors["dedup L1"] == img.dedup_table.l1_offset
                assert s.anchors["dedup L2"] == img.dedup_table.l2_offsets[0]
            if img.draft_bitmaps:
                assert s.anchors["draft bitmap table"] == img.draft_bitmaps[0].entry_offset
                assert s.anchors["draft bitmap L1"] == img.draft_bitmaps[0].l1_table_offset
        if case.startswith("compressed") or case == "combo_extl2_compressed":
            assert s.compressed, case
    journal = cached_survey(seeds["draft_journal"])
    assert "journal" in journal.anchors and any(f.what == "journal entry type" for f in journal.fields)


def test_every_operator_applies_somewhere(seeds):
    """Each mutation operator finds a target on some seed and changes the bytes."""
    for weight, op in OPERATORS:
        applied = 0
        for case in SEEDS:
            b = bytearray(seeds[case])
            if op(b, cached_survey(seeds[case]), random.Random(7)) and bytes(b) != seeds[case]:
                applied += 1
        assert applied, op.__name__


def test_self_references_point_at_their_own_tables(seeds):
    """op_self_reference writes an entry whose value is the offset of a table (the entry's own, the L1's...)."""
    s = cached_survey(seeds["v3_default"])
    tables = {s.anchors[k] for k in ("active L1", "active L2", "refcount table", "header") if k in s.anchors}
    rng = random.Random(3)
    for _ in range(20):
        b = bytearray(seeds["v3_default"])
        assert harness.op_self_reference(b, s, rng)
        changed = [i for i in range(0, len(b), 8) if b[i:i + 8] != seeds["v3_default"][i:i + 8]]
        assert len(changed) == 1
        value = int.from_bytes(b[changed[0]:changed[0] + 8], "big") & 0x00FFFFFFFFFFFE00
        assert value in tables


def test_exercise_fails_when_a_command_writes_the_evidence(corpus, tmp_path, monkeypatch):
    path = tmp_path / "x.qcow2"
    shutil.copyfile(image_path(corpus, "v3_default"), path)
    monkeypatch.setitem(EXERCISES, "vandal", lambda p, out: p.write_bytes(p.read_bytes()[:-1]))
    with pytest.raises(AssertionError, match="modified"):
        exercise(path, ["info", "vandal"], tmp_path)


def test_graphml_is_well_formed_with_control_characters_in_names(corpus, tmp_path, monkeypatch):
    """A snapshot id of '\\x00' (a mutation the fuzzer found) must still give well-formed GraphML."""
    data = bytearray(image_path(corpus, "snapshots").read_bytes())
    s = cached_survey(bytes(data))
    _, offset, length = next(x for x in s.strings if x[0] == "snapshot 0 id")
    data[offset:offset + length] = b"\0" * length
    path = tmp_path / "ctl.qcow2"
    path.write_bytes(bytes(data))
    monkeypatch.setattr(harness, "TOLERATED", set())
    exercise(path, ["graph"], tmp_path)
