"""The structure graph: every metadata structure and data extent a node, every reference an edge.

Drawn from the command's one host layout (built with graph=True: the check's
in the report), so the graph and the checks see the same structures. Two structures that claim
the same host cluster in different roles are joined by an "overlaps" edge
both ways, which is how a table pointing into itself shows up as a cycle.
Entries of one table that name the same structure are one edge: ``index`` is
the first entry, ``count`` how many there are (an L1 of 4M entries may name
the same few L2 tables over and over).
"""

from __future__ import annotations

import bisect

import networkx as nx

from .layout import MAX_EXTENTS, Layout, Role, Structure, build_layout
from .model import Image


def build_graph(img: Image, lay: Layout | None = None) -> tuple[nx.MultiDiGraph, Layout]:
    """The graph of ``img``, drawn from ``lay``: the command's layout, built with ``graph=True`` (the check's,
    in the report), or one built here. Each L2 table's data is drawn as its extents (GraphNotes)."""
    if lay is None:
        lay = build_layout(img, graph=True)
    if lay.notes is None:
        raise ValueError("the layout was not built for the graph (graph=True)")
    return _Drawing(lay).g, lay


class _Drawing:
    """Nodes in the layout's order, with the data of a group's new L2 tables after the last of them; the
    layout's per-table data structures replaced by their extents (and a conflict's by the one it hits)."""

    def __init__(self, lay: Layout):
        self.lay, self.notes = lay, lay.notes
        self.g = nx.MultiDiGraph()
        self.node_of: dict[int, int] = {}  # layout structure id -> node
        self.extents_of: dict[int, tuple[list[int], list[int]]] = {}  # data structure id -> (hosts, nodes)
        self.extents = 0
        data_of = {sid: offset for offset, sid in lay.data_of_l2.items()}
        for s in lay.structures:
            if s.id in self.notes.bulk:
                continue
            self.node_of[s.id] = self.add(s.role, s.offset, s.length, s.owner, s.label, s.count)
            for l2 in self.notes.after.get(s.id, ()):
                self.draw_data(l2, lay.data_of_l2.get(l2.offset))
        for e in lay.edges or []:
            self.g.add_edge(self.node_of[e.src], self.node_of[e.dst], kind=e.kind, index=e.index, count=e.count)
        for c in lay.conflicts:
            first, second = self.at(c.first, c.cluster, data_of), self.at(c.second, c.cluster, data_of)
            host = f"0x{c.cluster << lay.cluster_bits:x}"
            self.g.add_edge(first, second, kind="overlaps", index=c.cluster, host_offset_hex=host)
            self.g.add_edge(second, first, kind="overlaps", index=c.cluster, host_offset_hex=host)

    def add(self, role, offset: int, length: int, owner: str, label: str, count: int = 1) -> int:
        n = len(self.g)
        self.g.add_node(n, kind=role.name.lower(), offset=offset, offset_hex=f"0x{offset:x}", length=length,
                        owner=owner, label=label, count=count)
        return n

    def draw_data(self, l2: Structure, data_sid: int | None) -> None:
        """One table's data extents (or one node past the budget) and its compressed streams."""
        cs, l2_node = 1 << self.lay.cluster_bits, self.node_of[l2.id]
        runs = self.notes.data.get(l2.offset)
        if runs is not None and data_sid is not None:
            if runs.entry is None or self.extents + runs.runs > MAX_EXTENTS:
                node = self.add(Role.DATA, runs.lowest, runs.clusters * cs, l2.owner,
                                f"data of L2 table at 0x{l2.offset:x} ({runs.clusters} clusters in {runs.runs} "
                                "extents)", runs.clusters)
                self.g.add_edge(l2_node, node, kind="L2 entries", index=runs.first_entry, count=runs.clusters)
                self.extents_of[data_sid] = ([runs.lowest], [node])
            else:
                self.extents += runs.runs
                hosts, nodes = runs.host.tolist(), []
                first_l1 = self.notes.first_l1.get(l2.offset, 0)
                for entry, host, length in zip(runs.entry.tolist(), hosts, runs.length.tolist(), strict=True):
                    guest = (first_l1 * self.lay.l2_entries + entry) * cs
                    nodes.append(self.add(Role.DATA, host, length * cs, l2.owner,
                                          f"data 0x{host:x}+{length * cs:#x} (guest 0x{guest:x})", length))
                    self.g.add_edge(l2_node, nodes[-1], kind="L2 entry", index=entry, count=1)
                order = sorted(range(len(hosts)), key=hosts.__getitem__)
                self.extents_of[data_sid] = ([hosts[k] for k in order], [nodes[k] for k in order])
        if l2.offset in self.notes.compressed:
            sid, entry = self.notes.compressed[l2.offset]
            s = self.lay.structures[sid]
            self.node_of[sid] = self.add(s.role, s.offset, s.length, s.owner, f"{s.label} ({s.count} streams)",
                                         s.count)
            self.g.add_edge(l2_node, self.node_of[sid], kind="L2 entries (compressed)", index=entry, count=1)

    def at(self, sid: int, cluster: int, data_of: dict[int, int]) -> int:
        """The node standing for structure ``sid`` at ``cluster``: a data structure's extent holding it."""
        if sid in self.extents_of:
            hosts, nodes = self.extents_of[sid]
            return nodes[max(0, bisect.bisect_right(hosts, cluster << self.lay.cluster_bits) - 1)]
        return self.node_of[sid]


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
