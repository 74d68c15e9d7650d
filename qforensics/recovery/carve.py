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

from ..layout import Role, build_layout
from ..model import Image
from ..model import tables as T
from ..paths import refuse_overwrite, safe_component
from ..model.compressed import inflate
from .scan import stored_refcounts

MAX_FILES = 10_000  # carved files at most; the index says how many runs were left out
MAX_RUN = 64 << 20  # bytes in one carved file


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


def carve(img: Image, carve_dir: Path, *, inputs: list[Path]) -> str:
    """Write the unreferenced non-zero clusters of ``img`` into ``carve_dir`` with index.json; returns a
    one-line summary."""
    carve_dir.mkdir(parents=True, exist_ok=True)
    if not img.geometry_ok:
        return "carve: the cluster size is unusable; nothing carved"
    lay = build_layout(img, journals=True)
    cb, cs = img.header.cluster_bits, img.header.cluster_size
    free = np.flatnonzero(lay.role == Role.FREE)
    in_use = stored_refcounts(img, len(lay.role))
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
               "files": written, "runs-left-out": skipped, "carved": index}
    refuse_overwrite(carve_dir / "index.json", inputs).write_text(json.dumps(summary, indent=2) + "\n")
    more = f", {skipped} more runs left out" if skipped else ""
    return f"carve: {written} files of unreferenced non-zero clusters written to {carve_dir} (index.json){more}"
