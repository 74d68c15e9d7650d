"""`qforensics map`'s output: the JSON `qemu-img map --output=json` 7.2 prints, byte for byte, and the
human table, both from recovery.map's merged rows, a batch at a time."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import numpy as np

from ..recovery.map import _Rows, map_rows

_FLAGS = {(p << 2) | (z << 1) | d: f'"present": {"true" if p else "false"}, "zero": {"true" if z else "false"}, '
                                   f'"data": {"true" if d else "false"}'
          for p in (0, 1) for z in (0, 1) for d in (0, 1)}


def _flags(rows: _Rows) -> list[int]:
    return ((rows.present.astype(np.int8) << 2) | (rows.zero.astype(np.int8) << 1) | rows.data).tolist()


def json_chunks(batches: Iterable[_Rows]) -> Iterator[str]:
    """The text `qemu-img map --output=json` prints, byte for byte, one piece per batch of rows (plus
    "unreadable" where QEMU stops). Formatted a batch at a time: a hostile image may map to millions of
    unmergeable runs (every L2 entry of a garbage table pointing somewhere else)."""
    sep = "["
    for rows in batches:
        lines = [f'{{ "start": {s}, "length": {n}, "depth": {d}, {_FLAGS[f]}'
                 + (f', "offset": {o}}}' if o >= 0 else "}")
                 for s, n, d, f, o in zip(rows.start.tolist(), rows.length.tolist(), rows.depth.tolist(),
                                          _flags(rows), rows.offset.tolist(), strict=True)]
        for i, why in rows.reasons.items():
            lines[i] = lines[i][:-1] + f', "unreadable": {json.dumps(why)}}}'
        if lines:
            yield sep + ",\n".join(lines)
            sep = ",\n"
    yield ("[" if sep == "[" else "") + "]\n"


def render_json(layer) -> str:
    """The whole JSON map of a guest view."""
    return "".join(json_chunks(map_rows(layer)))


_WHAT = {(p << 2) | (z << 1) | d: ("data" if d and not z else "data(hole)" if d else "zero" if p else "unallocated")
         for p in (0, 1) for z in (0, 1) for d in (0, 1)}


def human_chunks(batches: Iterable[_Rows], names: list[str]) -> Iterator[str]:
    """A table of every run: guest range, the layer that provides it, what it is, where it lies."""
    yield f"{'Offset':<18}{'Length':<18}{'Depth':<7}{'Reads':<12}{'Mapped to':<18}File\n"
    what = {f: f"{w:<12}" for f, w in _WHAT.items()}
    nowhere = {0: f"{'-':<18}", 1: f"{'(no raw offset)':<18}"}
    name = [names[d] if d < len(names) else "" for d in range(max(len(names), 1) + 1)]
    for rows in batches:
        depth = np.minimum(rows.depth, len(name) - 1).tolist()
        # %-formatting: a quarter faster than f-strings with format specs, for millions of rows
        lines = ["0x%-16x0x%-16x%-7d%s%s%s\n" % (s, n, d, what[f], "0x%-16x" % o if o >= 0  # noqa: UP031
                                                    else nowhere[f & 1], name[d])
                 for s, n, d, f, o in zip(rows.start.tolist(), rows.length.tolist(), depth, _flags(rows),
                                          rows.offset.tolist(), strict=True)]
        for i, why in rows.reasons.items():  # UNREADABLE in the Reads column, and the reason below
            o, d = int(rows.offset[i]), depth[i]
            where = f"0x{o:x}" if o >= 0 else "(no raw offset)" if rows.data[i] else "-"
            lines[i] = (f"0x{int(rows.start[i]):<16x}0x{int(rows.length[i]):<16x}{d:<7}{'UNREADABLE':<12}"
                        f"{where:<18}{name[d]}\n    {why}\n")
        yield "".join(lines)
