"""Mutations of real images for fuzzing: where to poke is chosen from the image's own structures.

Used by tests/test_fuzz.py (bounded, in CI) and tests/fuzz/run_fuzz.py (long runs).
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

from qforensics import ImageOpenError, open_image
from qforensics.checks import check_image
from qforensics.graph import build_graph, summarize
from qforensics.info import build_info
from qforensics.report import build_report

HEADER_FIELDS = [(4, 4), (8, 8), (16, 4), (20, 4), (24, 8), (32, 4), (36, 4), (40, 8), (48, 8), (56, 4), (60, 4),
                 (64, 8), (72, 8), (80, 8), (88, 8), (96, 4), (100, 4), (104, 1)]
INTERESTING = [0, 1, 2, 7, 8, 9, 21, 22, 63, 64, 0x1FF, 0x200, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               1 << 40, (1 << 63) - 1, (1 << 64) - 1]


def _u(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset:offset + size], "big") if offset + size <= len(data) else 0


def targets(data: bytes) -> list[tuple[str, int, int]]:
    """(what, offset, length) of the structures worth mutating, read from the raw bytes."""
    cs = 1 << min(max(_u(data, 20, 4), 9), 21)
    out = [("header", 0, 112), ("extensions", 72, min(cs, 4096) - 72)]
    for what, field in (("l1", 40), ("reftable", 48), ("snapshots", 64)):
        off = _u(data, field, 8)
        if 0 < off < len(data):
            out.append((what, off, min(cs, len(data) - off)))
    l1 = _u(data, 40, 8)
    l2 = _u(data, l1, 8) & 0x00FFFFFFFFFFFE00 if 0 < l1 < len(data) else 0
    if 0 < l2 < len(data):
        out.append(("l2", l2, min(cs, len(data) - l2)))
    rt = _u(data, 48, 8)
    rb = _u(data, rt, 8) & ~0x1FF if 0 < rt < len(data) else 0
    if 0 < rb < len(data):
        out.append(("refblock", rb, min(cs, len(data) - rb)))
    return out


def mutate(data: bytes, rng: random.Random, count: int = 3) -> bytes:
    """A copy of ``data`` with a few field- or byte-level mutations in its structures."""
    b = bytearray(data)
    spots = targets(data)
    for _ in range(count):
        kind = rng.random()
        if kind < 0.35:
            off, size = rng.choice(HEADER_FIELDS)
            value = rng.choice(INTERESTING) if rng.random() < 0.7 else rng.getrandbits(size * 8)
            b[off:off + size] = (value & ((1 << (size * 8)) - 1)).to_bytes(size, "big")
        elif kind < 0.85:
            what, off, length = rng.choice(spots)
            pos = off + rng.randrange(max(length, 1)) // 8 * 8
            if pos + 8 <= len(b):
                word = struct.unpack_from(">Q", b, pos)[0]
                choice = rng.random()
                word = (word ^ (1 << rng.randrange(64)) if choice < 0.5 else
                        rng.choice(INTERESTING) if choice < 0.8 else rng.getrandbits(64))
                struct.pack_into(">Q", b, pos, word & ((1 << 64) - 1))
        elif kind < 0.95 and len(b) > 512:
            del b[rng.randrange(512, len(b)):]  # truncation
        else:
            pos = rng.randrange(len(b))
            b[pos] = rng.randrange(256)
    return bytes(b)


def exercise(path: Path) -> None:
    """Everything a user can ask of an image; raises only for a bug (ImageOpenError is a clean refusal)."""
    try:
        img = open_image(path)
    except ImageOpenError:
        return
    with img:
        build_info(img, str(path))
        check_image(img)
        summarize(build_graph(img)[0])
    build_report(path, ["fuzz"])
