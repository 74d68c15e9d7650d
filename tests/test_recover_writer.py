"""The sparse writer's zero test (recovery/output.py Writer.nonzero_spans) against a plain reading of
qemu-img convert's -S 4k rule: a 4 KiB block is written when any of its bytes is not zero."""

from __future__ import annotations

import random

from qforensics.recovery.output import ZERO_BLOCK, Writer


def plain_spans(data: bytes) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo in range(0, len(data), ZERO_BLOCK):
        hi = min(len(data), lo + ZERO_BLOCK)
        if data[lo:hi].strip(b"\0"):
            if out and out[-1][1] == lo:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
    return out


def test_nonzero_spans_follow_the_4k_rule():
    writer = Writer.__new__(Writer)  # the zero test needs no output file
    rng = random.Random(5)
    for _ in range(2000):
        n = rng.choice([0, 1, 100, 4096, 4097, 8192, 12295, 65536, 1 << 20])
        b = bytearray(n)
        for _ in range(rng.randint(0, 6)):  # a few bytes anywhere, often not in a block's first word
            if n:
                b[rng.randrange(n)] = rng.randrange(1, 256)
        if n and rng.random() < 0.3:  # data with whole zero blocks punched in
            b = bytearray(rng.randbytes(n))
            for _ in range(rng.randint(0, 3)):
                at = rng.randrange(0, n, ZERO_BLOCK)
                b[at:at + ZERO_BLOCK] = bytes(len(b[at:at + ZERO_BLOCK]))
        assert writer.nonzero_spans(bytes(b)) == plain_spans(bytes(b)), n
