"""Bounded fuzzing of info, check and graph over mutated corpus images (issue 7 runs it longer)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CASES, image_path
from fuzz.mutate import exercise, mutate

SEEDS = ["v3_default", "v2_compat010", "snapshots", "bitmaps", "compressed_zstd", "extended_l2", "cluster_512",
         "refcount_bits_1", "encrypted_luks", "data_file", "draft_dedup_journal", "draft_early_bitmaps"]


class Seeds(dict):
    """The seed images' bytes; a short repr keeps hypothesis reports readable."""

    def __repr__(self) -> str:
        return f"<{len(self)} seed images>"


@pytest.fixture(scope="module")
def seeds(corpus):
    return Seeds({case: image_path(corpus, case).read_bytes() for case in SEEDS if case in CASES})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=st.sampled_from(SEEDS), seed=st.integers(0, 2**32 - 1), count=st.integers(1, 6))
def test_mutated_images_never_crash(seeds, tmp_path, case, seed, count):
    path = tmp_path / "fuzzed.qcow2"
    path.write_bytes(mutate(seeds[case], random.Random(seed), count))
    exercise(path)
