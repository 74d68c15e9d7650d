"""`recover --carve-dir`: clusters nothing references but that hold non-zero bytes (deleted or leaked
data, stale metadata), written out with an index of what each looks like.

Runs of adjacent unreferenced clusters of the same kind go to one file, named
from their host offset only (never from image strings). What each looks like:
``l2-like`` (every entry a valid L2 descriptor: model/tables.py `table_shaped`),
``refcount-block-like`` (small refcounts, mostly 0 and 1, as the image's
refcount width), ``compressed-stream`` (inflates with the image's algorithm to
at least a sector), or ``data``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..layers.stack import read_guest
from ..layout import Layout, Role, build_layout
from ..model import Image
from ..model import tables as T
from ..model.compressed import inflate
from ..model.refcount import clusters_in_use
from ..paths import refuse_overwrite, safe_component
from .windows import WINDOW_READ, window_claims, window_view

MAX_FILES = 10_000  # carved files at most; the index says how many runs were left out
MAX_RUN = 64 << 20  # bytes in one carved file
MAX_SIGNATURES = 100  # self-locating structures listed per window in index.json


def _refcount_shaped(counts: np.ndarray) -> bool:
    """Small counts (at most 16), at least four, mostly packed at the front as QEMU allocates them.
    (Sub-byte widths are not judged: almost any byte pattern reads as small counts there.)"""
    nz = np.flatnonzero(counts)
    return len(nz) >= 4 and int(counts.max()) <= 16 and len(nz) * 2 >= int(nz[-1]) + 1


def looks_like(img: Image, raw: bytes) -> str:
    """What one cluster looks like (see the module docstring)."""
    h = img.header
    cs = h.cluster_size
    if len(raw) < cs:
        raw = raw + bytes(cs - len(raw))
    words = np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(1, -1)
    if T.table_shaped(words, h, img.file.size)[0]:
        return "l2-like"
    if h.refcount_order >= 3 and _refcount_shaped(T.refcount_block(raw, h.refcount_order)):
        return "refcount-block-like"
    out, _, error = inflate(raw, cs, h.compression_type)
    if error is None and len(out) >= 512:
        return "compressed-stream"
    return "data"


def carve(img: Image, carve_dir: Path, *, inputs: list[Path], lay: Layout | None = None,
          windows: dict[int, np.ndarray] | None = None, view=None) -> str:
    """Write the unreferenced non-zero clusters of ``img`` into ``carve_dir`` with index.json; returns a
    one-line summary. ``lay``: the command's host layout (built here if none). ``windows``: the orphan L2
    tables the scan could not place (offset -> entries), each written as a window (``write_windows``) read
    through ``view``'s chain and cipher; their clusters are not carved again one by one."""
    carve_dir.mkdir(parents=True, exist_ok=True)
    if not img.geometry_ok:
        return "carve: the cluster size is unusable; nothing carved"
    lay = lay if lay is not None else build_layout(img, journals=True)
    cb, cs = img.header.cluster_bits, img.header.cluster_size
    free = np.flatnonzero(lay.role == Role.FREE)
    window_index = write_windows(img, carve_dir, windows or {}, view, inputs) if windows else []
    if windows:
        inside = [np.array([o >> cb for o in windows], dtype=np.int64)]
        for w in windows.values():
            t = w & T.L2E_OFFSET_MASK
            inside.append((t[t != 0] >> np.uint64(cb)).astype(np.int64))
        free = np.setdiff1d(free, np.concatenate(inside))
    in_use = clusters_in_use(img, len(lay.role))
    index, written, skipped, run = [], 0, 0, None

    def flush(r) -> None:
        nonlocal written, skipped
        if r is None:
            return
        start, kind, chunks = r
        if written >= MAX_FILES:
            skipped += 1
            return
        name = safe_component(f"cluster_{start:012x}_{kind}.bin")
        path = refuse_overwrite(carve_dir / name, inputs)
        data = b"".join(chunks)
        path.write_bytes(data)
        written += 1
        first = start >> cb
        index.append({"file": name, "host-offset": start, "length": len(data), "clusters": len(data) // cs,
                      "looks-like": kind, "sha256": hashlib.sha256(data).hexdigest(),
                      "refcount": None if in_use is None else ("in use (leaked)" if in_use[first] else "zero")})

    for c in free.tolist():
        raw = img.file.read(c << cb, cs)
        if not raw.strip(b"\0"):
            flush(run)
            run = None
            continue
        kind = looks_like(img, raw)
        if run is not None and run[1] == kind and run[0] + len(run[2]) * cs == c << cb \
                and len(run[2]) * cs < MAX_RUN and kind == "data":
            run[2].append(raw)
            continue
        flush(run)
        run = (c << cb, kind, [raw])
    flush(run)
    summary = {"image": str(img.path), "cluster-size": cs, "unreferenced-clusters": int(len(free)),
               "files": written, "runs-left-out": skipped, "windows": window_index, "carved": index}
    refuse_overwrite(carve_dir / "index.json", inputs).write_text(json.dumps(summary, indent=2) + "\n")
    more = f", {skipped} more runs left out" if skipped else ""
    shown = f"{len(window_index)} windows of unplaced L2 tables and " if window_index else ""
    return (f"carve: {shown}{written} files of unreferenced non-zero clusters written to {carve_dir} "
            f"(index.json){more}")


def write_windows(img: Image, carve_dir: Path, windows: dict[int, np.ndarray], view, inputs: list[Path]) -> list:
    """Each unplaced orphan L2 table as a window: a sparse raw file the size of the guest range one L2 table
    maps, each cluster at its offset in the window (read as the table's own L1 slot would read it: compressed
    clusters inflated, encrypted ones decrypted), for file carvers and file-system tools."""
    h = img.header
    cs, span = h.cluster_size, h.l2_entries * h.cluster_size
    out = []
    claims = window_claims(img, sorted(windows)[:MAX_FILES], view)
    for off in sorted(windows)[:MAX_FILES]:
        one = window_view(img, off, view)
        length = min(span, one.size)
        name = safe_component(f"window_l2_0x{off:x}.raw")
        path = refuse_overwrite(carve_dir / name, inputs)
        clusters = 0
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            f.truncate(length)
            for at in range(0, length, WINDOW_READ):
                data = read_guest(one, at, min(WINDOW_READ, length - at))
                digest.update(data)
                for k in range(0, len(data), cs):
                    piece = data[k:k + cs]
                    if piece.count(0) != len(piece):
                        f.seek(at + k)
                        f.write(piece)
                        clusters += 1
        out.append({"file": name, "l2-host-offset": off, "clusters": clusters, "bytes": clusters * cs,
                    "window-bytes": length, "sha256": digest.hexdigest(),
                    "signatures": [{"at": c.at, "what": c.what, "frame": c.frame, "position": c.position}
                                   for c in claims.get(off, [])[:MAX_SIGNATURES]]})
    return out
