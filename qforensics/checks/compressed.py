"""Compressed clusters: inflate every stream and require exactly one cluster (beyond qemu).

qemu-img check only bounds-checks compressed descriptors. Here each distinct
stream is inflated with its image's algorithm (raw deflate, window 12 bits,
or zstd), output capped at one cluster so a decompression bomb costs nothing,
and the bytes it really consumed give its exact end for the overlap check.

Reference: block/qcow2-threads.c qcow2_zlib_decompress, qcow2_zstd_decompress.
"""

from __future__ import annotations

import sys
import zlib

import numpy as np

from ..findings import Finding, Severity
from ..layout import Layout
from ..model import Image

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd


def inflate(raw: bytes, cluster_size: int, algorithm: int) -> tuple[bytes, int, str | None]:
    """(output, bytes consumed, error) for one stream; output is at most one cluster."""
    try:
        if algorithm == 0:
            d = zlib.decompressobj(-12)
            out = d.decompress(raw, cluster_size)
            return out, len(raw) - len(d.unconsumed_tail) - len(d.unused_data), None
        d = zstd.ZstdDecompressor()
        out = d.decompress(raw, max_length=cluster_size)
        consumed = len(raw) - len(d.unused_data) if d.eof else len(raw)
        return out, consumed, None
    except (zlib.error, zstd.ZstdError, ValueError) as exc:
        return b"", 0, str(exc)


MAX_INFLATED = 256 << 20  # total output inflated per image; the streams past it are not inflated


def check_compressed(img: Image, layout: Layout) -> tuple[list[Finding], dict[int, int]]:
    """Findings for streams that do not inflate to one cluster, and the exact end of each stream by start."""
    if not layout.compressed_ranges:
        return [], {}
    h = img.header
    cs = h.cluster_size
    start = np.concatenate([r[0] for r in layout.compressed_ranges])
    end = np.concatenate([r[1] for r in layout.compressed_ranges])
    pairs = np.unique(np.stack([start, end], axis=1), axis=0)
    out: list[Finding] = []
    exact: dict[int, int] = {}
    algorithm = h.compression_type
    name = {0: "deflate", 1: "zstd"}.get(algorithm, f"type {algorithm}")
    budget = MAX_INFLATED
    left = 0
    for s, e in pairs.tolist():
        if budget < cs and s < img.file.size:
            left += 1  # over the budget: not inflated (its stored end stands for the overlap check)
            continue
        raw = img.file.read(s, e - s)
        if len(raw) < e - s:
            out.append(Finding("compressed.truncated", Severity.WARNING, f"compressed stream at 0x{s:x} needs "
                               f"{e - s} bytes but the file ends at 0x{img.file.size:x}", "compressed data", s))
        data, consumed, error = inflate(raw, cs, algorithm)
        budget -= len(data)
        exact[s] = s + consumed
        if error is not None:
            out.append(Finding("compressed.inflate_error", Severity.WARNING,
                               f"compressed stream at 0x{s:x} ({e - s} bytes stored) does not inflate with {name}: "
                               f"{error}", "compressed data", s))
        elif len(data) != cs:
            out.append(Finding("compressed.wrong_length", Severity.WARNING,
                               f"compressed stream at 0x{s:x} inflates to {len(data)} bytes, not one cluster "
                               f"({cs})", "compressed data", s))
    if left:
        out.append(Finding("compressed.not_inflated", Severity.INFO,
                           f"{left} of {len(pairs)} compressed streams were not inflated: the {MAX_INFLATED >> 20} MiB "
                           "budget of inflated output was spent", "compressed data", None))
    return out, exact
