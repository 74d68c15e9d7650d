"""Windows: the guest range one orphan L2 table maps, read as if the table sat in an L1 slot of its own, and
the self-locating structures found in it (recovery/locate/), which place it in the guest (issue 16).

A window is read through a one-entry view (layers/qcow2.py), so compressed
clusters are inflated, encrypted ones decrypted and extended L2 entries read as
QEMU reads them; its unallocated clusters read as zeros. Detection runs on
pieces of WINDOW_READ bytes (a structure that straddles two pieces is missed).
"""

from __future__ import annotations

import numpy as np

from ..layers.qcow2 import Qcow2Layer
from ..layers.extent import Kind
from ..layers.stack import read_guest
from ..model import Image
from .locate import Claim, Solution, detect, place_windows

WINDOW_READ = 4 << 20  # bytes of a window read at a time
KNOWN_READ = 2 << 20  # bytes read from the start of each slot the view still maps, for anchoring claims
MAX_KNOWN_SLOTS = 256  # slots read for anchoring claims, at most
MAPPED = (Kind.NORMAL, Kind.COMPRESSED)
FULL_READ = 64 << 10  # bytes at the start of a window read whole
PROBE_HEAD = 4096  # bytes read at the start of each data cluster past FULL_READ
PROBE_TAIL = 512  # and at its end
PROBE_BATCH = 4096  # clusters probed at a time
MAX_PROBED = 1 << 21  # clusters probed in all windows together (two small reads each)


def window_view(img: Image, l2_offset: int, view=None) -> Qcow2Layer:
    """A view whose L1 has one entry, the orphan table at ``l2_offset`` (the chain, cipher and data file of
    ``view``, when given)."""
    data = view.data if view is not None and view.data is not img.file else None
    return Qcow2Layer(img, l1=np.array([l2_offset], dtype=np.uint64), cipher=getattr(view, "cipher", None),
                      data_file=data)


def pieces(one: Qcow2Layer, length: int):
    """(offset, bytes) of a window, WINDOW_READ at a time, skipping what the table leaves unallocated."""
    for at in range(0, length, WINDOW_READ):
        n = min(WINDOW_READ, length - at)
        if not _maps_any(one, at, at + n):
            continue
        yield at, read_guest(one, at, n)


def _maps_any(layer, start: int, end: int) -> bool:
    """Whether the one-entry view maps anything in [start, end) (data or compressed clusters)."""
    return any(np.isin(batch.kind, MAPPED).any() for batch in layer.runs(start, end))


def _granule(data: bytes) -> int:
    """The piece is contiguous guest data: one granule, cut to whole sectors."""
    return max(512, len(data) - len(data) % 512)


def window_claims(img: Image, tables: list[int], view) -> dict[int, list[Claim]]:
    """The self-locating structures in each orphan table's window, ``at`` the offset in the window.

    The first FULL_READ bytes of a window are read whole (partition tables and their entry arrays). Past
    them, of each plain data cluster only its first PROBE_HEAD and last PROBE_TAIL bytes are read: the
    structures recover looks for sit at the start of the regions they describe (superblock copies,
    allocation group headers, boot sectors) or end them (backup GPT and NTFS boot sector), and partitions are
    aligned. Compressed or encrypted clusters, and small clusters, are read whole."""
    h = img.header
    span, cs = h.l2_entries * h.cluster_size, h.cluster_size
    plain = getattr(view, "cipher", None) is None and (view is None or view.data is img.file)
    out: dict[int, list[Claim]] = {}
    budget = [MAX_PROBED]  # clusters probed or read in all (a hostile image repeats its tables' targets)
    for off in tables:
        if budget[0] <= 0:
            out[off] = []  # past the budget: no claims, so the window stays unplaced
            continue
        one = window_view(img, off, view)
        length = min(span, one.size)
        full = min(length, max(FULL_READ, cs))
        found: list[Claim] = []
        for at, data in pieces(one, full):
            found += [_moved(c, at) for c in detect(data, _granule(data))]
        budget[0] -= full // cs
        if plain and cs >= 4 * PROBE_HEAD:
            found += _probe(img, one, full, length, budget)
        else:
            for at, data in pieces(one, length):
                budget[0] -= len(data) // cs
                if at + len(data) > full:
                    found += [_moved(c, at) for c in detect(data, _granule(data)) if c.at + at >= full]
                if budget[0] <= 0:
                    break
        out[off] = found
    return out


def _probe(img: Image, one: Qcow2Layer, start: int, end: int, budget: list[int]) -> list[Claim]:
    """Claims in the heads and tails of the data clusters of [start, end) of a window (see window_claims);
    compressed clusters are read whole."""
    cs = img.header.cluster_size
    found: list[Claim] = []
    for batch in one.runs(start, end):
        rows = np.flatnonzero(batch.kind == Kind.NORMAL)
        if len(rows):
            first = -(-batch.start[rows] // cs) * cs  # whole clusters of each run
            n = np.maximum(0, (batch.start[rows] + batch.length[rows]) // cs - first // cs)
            k = np.repeat(np.arange(len(rows)), n)
            step = (np.arange(len(k)) - np.repeat(np.cumsum(n) - n, n)) * cs
            guest = first[k] + step
            host = batch.host[rows][k] + (guest - batch.start[rows][k])
            guest, host = guest[:max(0, budget[0])], host[:max(0, budget[0])]
            budget[0] -= len(guest)
            for size, skip in ((PROBE_HEAD, 0), (PROBE_TAIL, cs - PROBE_TAIL)):
                found += _probe_at(img, guest, host, size, skip)
        for r in np.flatnonzero(batch.kind == Kind.COMPRESSED).tolist():
            g, n = int(batch.start[r]), int(batch.length[r])
            data = read_guest(one, g, n)
            found += [_moved(c, g) for c in detect(data, _granule(data))]
    return found


def _probe_at(img: Image, guest: np.ndarray, host: np.ndarray, size: int, skip: int) -> list[Claim]:
    """detect() on ``size`` bytes at ``skip`` into each cluster (its guest and host offsets), PROBE_BATCH
    clusters at a time, each piece its own granule."""
    found: list[Claim] = []
    for k in range(0, len(guest), PROBE_BATCH):
        g, hh = guest[k:k + PROBE_BATCH].tolist(), host[k:k + PROBE_BATCH].tolist()
        buf = bytearray(len(g) * size)
        for j, h in enumerate(hh):
            data = img.file.read(h + skip, size)
            buf[j * size:j * size + len(data)] = data
        for c in detect(bytes(buf), size):
            found.append(_moved(c, g[c.at // size] + skip - (c.at // size) * size))
    return found


def known_claims(view, open_slot) -> list[Claim]:
    """Self-locating structures at the start of the slots the view still maps (``open_slot(i)`` false), at
    their guest offsets: they anchor the file systems' frames for the windows."""
    out: list[Claim] = []
    span = view.span
    slots = -(-view.size // span)
    read = 0
    for i in range(slots):
        if read >= MAX_KNOWN_SLOTS:
            break
        if open_slot(i):
            continue
        read += 1
        base = i * span
        n = min(KNOWN_READ, view.size - base)
        data = read_guest(view, base, n)
        if data.count(0) == len(data):
            continue
        out += [_moved(c, base) for c in detect(data, _granule(data))]
    return out


def _moved(c: Claim, by: int) -> Claim:
    return Claim(c.at + by, c.frame, c.position, c.what, c.size, c.partitions)


def place_by_evidence(img: Image, view, tables: list[int], open_slot, *, bounded: bool = True) -> Solution:
    """Where the guest's own structures put each orphan window (recovery/locate/solver.py); ``bounded``
    False when the virtual size is only an estimate (windows may lie past it)."""
    span = img.header.l2_entries * img.header.cluster_size
    claims = window_claims(img, tables, view)
    known = known_claims(view, open_slot)
    return place_windows(claims, span, view.size if bounded else None, known, open_slot)
