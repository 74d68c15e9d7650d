"""`qforensics info --output json` states every fact `qemu-img info --output=json` states, with the same value."""

from __future__ import annotations

import json

import pytest

from conftest import CASES, VALID_CASES, image_path, qcow2_files, qemu_img, run_qforensics

FILES = [(case, name) for case in VALID_CASES for name in qcow2_files(case)]


def run_info(path, *extra):
    return run_qforensics("info", "--output", "json", path.name, *extra, cwd=path.parent)


def assert_states_same_facts(qemu, ours, where="$"):
    """Every key qemu gives is in ours with an equal value (recursively); ours may add keys."""
    if isinstance(qemu, dict):
        assert isinstance(ours, dict), f"{where}: qemu has an object, we have {ours!r}"
        for key, value in qemu.items():
            assert key in ours, f"{where}: key {key!r} missing (qemu: {value!r})"
            assert_states_same_facts(value, ours[key], f"{where}.{key}")
    elif isinstance(qemu, list):
        assert isinstance(ours, list) and len(ours) == len(qemu), f"{where}: qemu {qemu!r}, ours {ours!r}"
        for i, (q, o) in enumerate(zip(qemu, ours, strict=True)):
            assert_states_same_facts(q, o, f"{where}[{i}]")
    else:
        assert ours == qemu, f"{where}: qemu says {qemu!r}, we say {ours!r}"


@pytest.mark.parametrize(("case", "name"), FILES, ids=[f"{c}/{n}" for c, n in FILES])
def test_info_matches_qemu(corpus, case, name):
    path = image_path(corpus, case, name)
    qemu = qemu_img("info", "--output=json", path.name, cwd=path.parent)
    res = run_info(path)
    if qemu.returncode != 0:
        # qemu refuses this image (a draft layout): we refuse it for the same stated reason
        reason = qemu.stderr.strip().split(f"Could not open '{path.name}': ", 1)[-1]
        assert res.returncode == 1 and res.stdout == ""
        assert res.stderr.startswith(f"qforensics: {path.name}: {reason} [")
        forced = json.loads(run_info(path, "--force").stdout)
        assert forced["qemu-would-refuse"] == [reason]
        return
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    ours = json.loads(res.stdout)
    assert_states_same_facts(json.loads(qemu.stdout), ours)
    assert ours["qemu-would-refuse"] == []
    if "draft_journal" not in CASES[case]["features"]:
        assert "journals" not in ours  # no journal-shaped cluster invented in qemu's own images


@pytest.mark.parametrize("case", VALID_CASES)
def test_every_corpus_image_parses_as_provenance_says(corpus, case):
    """Header fields and counts agree with what the corpus script recorded when it made the image."""
    from qforensics import open_image

    prov = CASES[case]
    with open_image(image_path(corpus, case)) as img:
        recorded = prov.get("header")
        if recorded:
            h = img.header
            assert (h.version, h.cluster_bits, h.crypt_method, h.nb_snapshots, h.refcount_order) == (
                recorded["version"], recorded["cluster_bits"], recorded["crypt_method"], recorded["nb_snapshots"],
                recorded["refcount_order"])
            assert (h.incompatible_features, h.compatible_features, h.autoclear_features) == (
                recorded["incompat"], recorded["compat"], recorded["autoclear"])
        assert len(img.snapshots) == img.header.nb_snapshots
        if "virtual_size" in prov:
            assert img.header.size == prov["virtual_size"]
        l1 = img.l1_table()
        assert len(l1) == img.header.l1_size


def test_human_output_names_every_feature(corpus):
    case = next(c for c in VALID_CASES if "bitmaps" in CASES[c]["features"])
    path = image_path(corpus, case)
    res = run_qforensics("info", path.name, cwd=path.parent)
    assert res.returncode == 0, res.stderr
    assert "bit 0 bitmaps" in res.stdout
    assert "feature name table" in res.stdout
