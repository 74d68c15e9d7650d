"""Compressed clusters: inflate every stream and require exactly one cluster (beyond qemu).

qemu-img check only bounds-checks compressed descriptors. Here each distinct
stream is inflated with its image's algorithm (raw deflate, window 12 bits,
or zstd), output capped at one cluster so a decompression bomb costs nothing,
and the bytes it really consumed give its exact end for the overlap check.

Reference: block/qcow2-threads.c qcow2_zlib_decompress, qcow2_zstd_decompress.
"""

from __future__ import annotations

import numpy as np

from ..findings import Finding, Severity
from ..findings import more as more_finding
from ..layout import Layout
from ..model import Image
from ..model.compressed import inflate


MAX_INFLATED = 256 << 20  # total output inflated per image; the streams past it are not inflated
MAX_READ = 256 << 20  # stored bytes read: garbage streams fail at once, so output alone bounds nothing
MAX_STREAMS = 1 << 16  # streams tried (each costs a read and a decompressor)
MAX_LISTED = 10_000  # findings of one code listed; the rest are counted in a ".more" summary


def check_compressed(img: Image, layout: Layout) -> tuple[list[Finding], dict[int, int]]:
    """Findings for streams that do not inflate to one cluster, and the exact end of each stream inflated
    by start (a stream starting past the end of the file ends where it starts)."""
    if not layout.compressed_ranges:
        return [], {}
    h = img.header
    cs = h.cluster_size
    pairs = layout.compressed_streams()
    out: list[Finding] = []
    more: dict[str, int] = {}

    def add(code: str, message: str, offset: int) -> None:
        if listed.get(code, 0) < MAX_LISTED:
            listed[code] = listed.get(code, 0) + 1
            out.append(Finding(code, Severity.WARNING, message, "compressed data", offset))
        else:
            more[code] = more.get(code, 0) + 1

    def judge(s: int, e: int, data: bytes, error: str | None) -> None:
        if error is not None:
            add("compressed.inflate_error", f"compressed stream at 0x{s:x} ({e - s} bytes stored) does "
                f"not inflate with {name}: {error}", s)
        elif len(data) != cs:
            add("compressed.wrong_length", f"compressed stream at 0x{s:x} inflates to {len(data)} bytes, "
                f"not one cluster ({cs})", s)

    listed: dict[str, int] = {}
    exact: dict[int, int] = {}
    algorithm = h.compression_type
    name = {0: "deflate", 1: "zstd"}.get(algorithm, f"type {algorithm}")
    # sorted by start: the streams that begin past the end of the file come last, and have nothing to inflate
    inside = int(np.searchsorted(pairs[:, 0], np.uint64(img.file.size)))
    output, read, tried = MAX_INFLATED, MAX_READ, 0
    for s, e in pairs[:inside].tolist():
        if output < cs or read < e - s or tried == MAX_STREAMS:
            break  # over the budget: the rest are not inflated (their stored ends stand for the overlap check)
        tried += 1
        raw = img.file.read(s, e - s)
        read -= len(raw)
        if len(raw) < e - s:
            add("compressed.truncated", f"compressed stream at 0x{s:x} needs {e - s} bytes but the file "
                f"ends at 0x{img.file.size:x}", s)
        data, consumed, error = inflate(raw, cs, algorithm)
        output -= len(data)
        exact[s] = s + consumed
        judge(s, e, data, error)
    left = inside - tried
    past = pairs[inside:]
    if past.size:
        # nothing of them is in the file: truncated, and what inflating nothing gives, for each (each
        # consumes nothing: the overlap check takes their start as their end)
        data, _, error = inflate(b"", cs, algorithm)
        for s, e in past[:MAX_LISTED].tolist():
            add("compressed.truncated", f"compressed stream at 0x{s:x} needs {e - s} bytes but the file "
                f"ends at 0x{img.file.size:x}", s)
            judge(s, e, data, error)
        rest = len(past) - min(len(past), MAX_LISTED)
        if rest:
            more["compressed.truncated"] = more.get("compressed.truncated", 0) + rest
            code = "compressed.inflate_error" if error is not None else "compressed.wrong_length"
            more[code] = more.get(code, 0) + rest * (error is not None or len(data) != cs)
    if left:
        out.append(Finding("compressed.not_inflated", Severity.INFO,
                           f"{left} of {len(pairs)} compressed streams were not inflated: the budget of "
                           f"{MAX_INFLATED >> 20} MiB inflated, {MAX_READ >> 20} MiB read or {MAX_STREAMS} streams "
                           "was spent", "compressed data", None))
    out += [more_finding(code, n) for code, n in more.items() if n]
    return out, exact
