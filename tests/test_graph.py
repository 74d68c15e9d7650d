"""The structure graph: built on every image, exported and read back, checked against qemu's counts."""

from __future__ import annotations

import json

import networkx as nx
import pytest

from conftest import CASES, VALID_CASES, image_path, qemu_img, run_qforensics
from corruptions import KINDS, make
from qforensics import open_image
from qforensics.checks import check_image
from qforensics.graph import build_graph, summarize

PLAIN = [c for c in VALID_CASES if not set(CASES[c]["features"]) & {"luks", "aes", "data_file"}]


@pytest.mark.parametrize("case", PLAIN)
def test_graph_accounts_for_qemus_allocated_clusters(corpus, case):
    """Data extents + compressed streams reached from the active L1 = qemu-img check's allocated-clusters."""
    path = image_path(corpus, case)
    if "draft_early_bitmaps" in CASES[case]["features"]:
        pytest.skip("qemu cannot open the 2015 bitmaps layout")
    qemu = json.loads(qemu_img("check", "--output=json", path.name, cwd=path.parent).stdout)
    with open_image(path) as img:
        g, _ = build_graph(img)
    active = sum(d["count"] for _, d in g.nodes(data=True)
                 if d["kind"] in ("data", "compressed") and d["owner"] == "active")
    assert active == qemu.get("allocated-clusters", 0)
    s = summarize(g)
    assert s["cycles"] == []
    assert {u["kind"] for u in s["unreachable"]} <= {"journal"}  # journals have no pointer by design
    assert s["nodes-by-kind"]["header"] == 1 and s["nodes-by-kind"]["l1_table"] == 1 + len(img.snapshots)


@pytest.mark.parametrize("fmt", ["graphml", "json"])
def test_export_reads_back(corpus, tmp_path, fmt):
    path = image_path(corpus, "combo_snapshots_bitmaps")
    out = tmp_path / f"g.{fmt}"
    res = run_qforensics("graph", path.name, "-o", str(out), "--output", "json", cwd=path.parent)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    back = nx.read_graphml(out) if fmt == "graphml" else nx.node_link_graph(json.loads(out.read_text()),
                                                                             edges="links")
    assert (back.number_of_nodes(), back.number_of_edges()) == (summary["nodes"], summary["edges"])
    kinds = {d["kind"] for _, d in back.nodes(data=True)}
    assert {"header", "l1_table", "l2_table", "snapshot_table", "bitmap_directory", "bitmap_table",
            "refcount_table", "refcount_block", "data"} <= kinds


@pytest.mark.parametrize("kind_id", ["l1_entry_into_itself", "l2_entry_into_l1"])
def test_tables_pointing_into_themselves_are_cycles(corpus, tmp_path, kind_id):
    kind = next(k for k in KINDS if k.id == kind_id)
    path = make(kind, image_path(corpus, kind.base).parent, CASES[kind.base]["main"], tmp_path)
    with open_image(path) as img:
        g, _ = build_graph(img)
    s = summarize(g)
    assert s["cycles"], s
    assert s["edges-by-kind"]["overlaps"] >= 2


def test_graph_refuses_to_overwrite_the_image(corpus, tmp_path):
    path = image_path(corpus, "v3_default")
    res = run_qforensics("graph", path.name, "-o", path.name, cwd=path.parent)
    assert res.returncode == 1 and "refusing to write" in res.stderr and "Traceback" not in res.stderr
    res = run_qforensics("graph", path.name, "-o", str(tmp_path / "x.dot"), cwd=path.parent)
    assert res.returncode == 1 and ".graphml or .json" in res.stderr


def _drawn(g: nx.MultiDiGraph) -> tuple[list, list]:
    nodes = [tuple(sorted(d.items())) for _, d in sorted(g.nodes(data=True))]
    edges = sorted((u, v, tuple(sorted(d.items()))) for u, v, d in g.edges(data=True))
    return nodes, edges


@pytest.mark.parametrize("kind", KINDS, ids=[k.id for k in KINDS])
def test_the_checks_layout_draws_the_same_graph(corpus, tmp_path, kind):
    """The report draws its graph from the check's layout (one layout per command): the same graph as the
    graph command's own, and the check's findings are the ones it gives without the graph's notes."""
    path = make(kind, image_path(corpus, kind.base).parent, CASES[kind.base]["main"], tmp_path)
    with open_image(path) as img:
        own, _ = build_graph(img)
        plain = check_image(img)
        drawn = check_image(img, graph=True)
        assert [f.to_json() for f in drawn.findings] == [f.to_json() for f in plain.findings]
        if drawn.layout is None:
            return
        shared, lay = build_graph(img, drawn.layout)
    assert lay is drawn.layout
    assert _drawn(shared) == _drawn(own)
    for u, v, d in shared.edges(data=True):  # an overlap names the extent holding the cluster
        if d["kind"] == "overlaps" and shared.nodes[u]["kind"] == "data":
            node = shared.nodes[u]
            host = int(d["host_offset_hex"], 16)
            assert node["offset"] <= host < node["offset"] + node["length"], (node, d)


def test_report_builds_one_host_layout(corpus, monkeypatch):
    import qforensics.checks as checks_module
    import qforensics.layout as layout_module
    from qforensics.report import build_report

    made = []
    for module in (checks_module, layout_module):
        real = module.start_layout
        monkeypatch.setattr(module, "start_layout",
                            lambda *a, _real=real, **k: made.append(k.get("graph")) or _real(*a, **k))
    scans = []
    real_scan = layout_module.find_journals
    monkeypatch.setattr(layout_module, "find_journals", lambda *a: scans.append(1) or real_scan(*a))
    page = build_report(image_path(corpus, "draft_dedup_journal"), ["qforensics", "report"])
    assert made == [True] and len(scans) == 1
    assert "journal cluster at 0x720000" in page


def test_extents_past_the_budget_are_one_node_per_table(corpus, monkeypatch):
    import qforensics.graph as graph_module

    path = image_path(corpus, "draft_dedup_journal")
    with open_image(path) as img:
        whole, _ = build_graph(img)
        monkeypatch.setattr(graph_module, "MAX_EXTENTS", 4)
        cut, _ = build_graph(img)
    extents = [d for _, d in whole.nodes(data=True) if d["kind"] == "data"]
    assert len(extents) > 4
    data = [d for _, d in cut.nodes(data=True) if d["kind"] == "data"]
    assert len(data) == 1 and data[0]["label"].endswith(f"({sum(d['count'] for d in extents)} clusters in "
                                                        f"{len(extents)} extents)")
    assert data[0]["count"] == sum(d["count"] for d in extents)
    assert data[0]["offset"] == min(d["offset"] for d in extents)
