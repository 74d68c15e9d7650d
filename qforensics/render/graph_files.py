"""`qforensics graph`'s files: the structure graph (graph.build_graph) as GraphML for Gephi and yEd, its
image strings made fit for XML 1.0, or as node-link JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import networkx as nx

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value):
    """A string from the image made fit for XML 1.0: characters XML cannot hold (controls, lone surrogates)
    are written as \\xNN / \\uNNNN escapes; anything that is not a string is left as it is."""
    if not isinstance(value, str):
        return value
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
                        value)


def write_graph(g: nx.MultiDiGraph, path: Path) -> None:
    """GraphML (Gephi, yEd) for .graphml, node-link JSON for .json."""
    if path.suffix == ".graphml":
        clean = nx.MultiDiGraph()
        clean.add_nodes_from((xml_text(n), {k: xml_text(v) for k, v in d.items()}) for n, d in g.nodes(data=True))
        clean.add_edges_from((xml_text(u), xml_text(v), k, {a: xml_text(b) for a, b in d.items()})
                             for u, v, k, d in g.edges(keys=True, data=True))
        nx.write_graphml(clean, path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(nx.node_link_data(g, edges="links"), indent=1) + "\n")
    else:
        raise ValueError(f"unknown graph format {path.suffix!r}: use .graphml or .json")
