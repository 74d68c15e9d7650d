"""Compressed clusters (spec "Compressed Clusters Descriptor"): inflating one stream as QEMU does, with the
image's algorithm (raw deflate with a 4 KiB window, or zstd), never past one cluster, so a decompression
bomb costs nothing; the bytes it consumed give the stream's exact end.

Reference: block/qcow2-threads.c qcow2_zlib_decompress, qcow2_zstd_decompress.
"""

from __future__ import annotations

import sys
import zlib
from functools import cache


@cache
def _zstd():
    """The zstd module, imported when a zstd image needs it (2.4 ms of every start-up otherwise)."""
    if sys.version_info >= (3, 14):
        from compression import zstd
    else:
        from backports import zstd
    return zstd


def inflate(raw: bytes, cluster_size: int, algorithm: int) -> tuple[bytes, int, str | None]:
    """(output, bytes consumed, error) for one stream; output is at most one cluster."""
    try:
        if algorithm == 0:
            d = zlib.decompressobj(-12)
            out = d.decompress(raw, cluster_size)
            return out, len(raw) - len(d.unconsumed_tail) - len(d.unused_data), None
        zstd = _zstd()
        d = zstd.ZstdDecompressor()
        out = d.decompress(raw, max_length=cluster_size)
        consumed = len(raw) - len(d.unused_data) if d.eof else len(raw)
        return out, consumed, None
    except (zlib.error, _zstd().ZstdError, ValueError) as exc:
        return b"", 0, str(exc)
