"""The structure graph: every metadata structure and data extent a node, every reference an edge.

Built from the host layout walk (layout.build_layout with graph=True), so
the graph and the checks see the same structures. Two structures that claim
the same host cluster in different roles are joined by an "overlaps" edge
both ways, which is how a table pointing into itself shows up as a cycle.
Entries of one table that name the same structure are one edge: ``index`` is
the first entry, ``count`` how many there are (an L1 of 4M entries may name
the same few L2 tables over and over).
"""

from __future__ import annotations

import networkx as nx

from .layout import Layout, build_layout
from .model import Image
from .model.journal import JournalArea


def build_graph(img: Image, journals: list[JournalArea] | None = None) -> tuple[nx.MultiDiGraph, Layout]:
    """The graph of ``img``; ``journals``, the ones the command's other layout found (else they are scanned).
    Its layout is its own: data split into extents for nodes, which would change the checks' labels."""
    lay = build_layout(img, graph=True, journals=True if journals is None else journals)
    g = nx.MultiDiGraph()
    for s in lay.structures:
        g.add_node(s.id, kind=s.role.name.lower(), offset=s.offset, offset_hex=f"0x{s.offset:x}",
                   length=s.length, owner=s.owner, label=s.label, count=s.count)
    for e in lay.edges or []:
        g.add_edge(e.src, e.dst, kind=e.kind, index=e.index, count=e.count)
    for c in lay.conflicts:
        host = f"0x{c.cluster << lay.cluster_bits:x}"
        g.add_edge(c.first, c.second, kind="overlaps", index=c.cluster, host_offset_hex=host)
        g.add_edge(c.second, c.first, kind="overlaps", index=c.cluster, host_offset_hex=host)
    return g, lay


def summarize(g: nx.MultiDiGraph, root: int = 0) -> dict:
    """Counts of nodes and edges by kind, structures unreachable from the header, and cycles."""
    nodes: dict[str, int] = {}
    for _, kind in g.nodes(data="kind"):
        nodes[kind] = nodes.get(kind, 0) + 1
    edges: dict[str, int] = {}
    for _, _, kind in g.edges(data="kind"):
        edges[kind] = edges.get(kind, 0) + 1
    reachable = nx.descendants(g, root) | {root} if root in g else set()
    unreachable = sorted(set(g.nodes) - reachable)
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    cycles += [[n] for n in nx.nodes_with_selfloops(g)]
    return {
        "nodes": len(g), "edges": g.number_of_edges(), "nodes-by-kind": dict(sorted(nodes.items())),
        "edges-by-kind": dict(sorted(edges.items())),
        "unreachable": [{"id": n, "kind": g.nodes[n]["kind"], "label": g.nodes[n]["label"]} for n in unreachable],
        "cycles": [[g.nodes[n]["label"] for n in c] for c in cycles],
    }
