"""Bulk tables decoded with numpy: L1, L2, refcount table and blocks, bitmap tables.

Each function is pure: big-endian bytes in, native arrays out, no per-entry
Python loop. tests/test_tables.py cross-checks them against the Kaitai
parsers generated from ksy/l1_l2_entries.ksy, refcount.ksy and bitmaps.ksy.

References: docs/interop/qcow2.txt "Cluster mapping", "Host cluster
management", "Bitmap table"; block/qcow2.h masks.
"""

from __future__ import annotations

import functools

import numpy as np

L1E_OFFSET_MASK = np.uint64(0x00FFFFFFFFFFFE00)
L1E_RESERVED_MASK = np.uint64(0x7F000000000001FF)
L2E_OFFSET_MASK = np.uint64(0x00FFFFFFFFFFFE00)
L2E_STD_RESERVED_MASK = np.uint64(0x3F000000000001FE)
OFLAG_COPIED = np.uint64(1 << 63)
OFLAG_COMPRESSED = np.uint64(1 << 62)
OFLAG_ZERO = np.uint64(1)
REFT_OFFSET_MASK = np.uint64(0xFFFFFFFFFFFFFE00)
REFT_RESERVED_MASK = np.uint64(0x1FF)
BME_OFFSET_MASK = np.uint64(0x00FFFFFFFFFFFE00)
BME_RESERVED_MASK = np.uint64(0xFF000000000001FE)
BME_ALL_ONES = np.uint64(1)


def be_u64(raw: bytes) -> np.ndarray:
    """u64 big-endian entries as native uint64 (a trailing partial entry is dropped)."""
    n = len(raw) // 8
    return np.frombuffer(raw, dtype=">u8", count=n).astype(np.uint64)


def l1_entries(raw: bytes) -> np.ndarray:
    """L1 table entries (spec "L1 table entry")."""
    return be_u64(raw)


def l2_entries(raw: bytes, extended: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """L2 descriptors and, with extended L2, the subcluster bitmaps (spec "Extended L2 Entries")."""
    words = be_u64(raw)
    if not extended:
        return words, None
    words = words[: len(words) // 2 * 2].reshape(-1, 2)
    return words[:, 0].copy(), words[:, 1].copy()


def compressed_fields(entries: np.ndarray, cluster_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Host byte offset and sector count of compressed descriptors (qcow2_parse_compressed_l2_entry)."""
    shift = 62 - (cluster_bits - 8)
    offset = entries & np.uint64((1 << shift) - 1)
    sectors = ((entries >> np.uint64(shift)) & np.uint64((1 << (cluster_bits - 8)) - 1)) + np.uint64(1)
    return offset, sectors


def refcount_table(raw: bytes) -> np.ndarray:
    """Refcount table entries (spec "Refcount table entry")."""
    return be_u64(raw)


def refcount_block(raw: bytes, refcount_order: int) -> np.ndarray:
    """Refcounts of one block, for refcount_order 0..6 (sub-byte widths LSB first), as native unsigned
    integers of the entries' own width (uint8 up to 8 bits)."""
    if refcount_order < 3:
        bits = 1 << refcount_order
        per_byte = 8 // bits
        b = np.frombuffer(raw, dtype=np.uint8)
        shifts = np.arange(per_byte, dtype=np.uint8) * bits
        values = (b[:, None] >> shifts[None, :]) & np.uint8((1 << bits) - 1)
        return values.reshape(-1)
    width = 1 << (refcount_order - 3)
    native = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[width]
    return np.frombuffer(raw, dtype=np.dtype(native).newbyteorder(">"), count=len(raw) // width).astype(native)


def bitmap_table(raw: bytes) -> np.ndarray:
    """Bitmap table entries (spec "Bitmap table")."""
    return be_u64(raw)


def repeats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct values in the order they first occur, the position of that first occurrence, how many
    times each occurs, and for each value the position of its distinct value: an L1 table may name the same
    L2 table millions of times, and the table is then read once and its references multiplied (qemu-img
    check counts each reference)."""
    if values.size < 2 or (values[1:] > values[:-1]).all():  # sorted and distinct: the usual L1
        index = np.arange(values.size)
        return values, index, np.ones(values.size, dtype=np.int64), index
    distinct, first, inverse, counts = np.unique(values, return_index=True, return_inverse=True,
                                                 return_counts=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return distinct[order], first[order], counts[order].astype(np.int64), rank[inverse]


def _memo_last_batch(fn):
    """Remember the answer for the last batch array (by identity, a reference kept so the identity
    stays valid): the refcount walk and the host layout both ask about each batch, one after the other."""
    last: list = [None, None, None]

    @functools.wraps(fn)
    def wrapper(desc: np.ndarray, cluster_size: int):
        if last[0] is not desc or last[1] != cluster_size:
            last[:] = desc, cluster_size, fn(desc, cluster_size)
        return last[2]

    return wrapper


@_memo_last_batch
def contiguous_rows(desc: np.ndarray, cluster_size: int) -> np.ndarray | None:
    """For a batch of standard L2 tables (rows), the first descriptor of each row when every row is one
    run of contiguous host clusters with the same flags and nothing unusual (compressed, zero flag,
    reserved bits, unaligned or zero offset): entry k of a row is then ``first + k * cluster_size``.
    None otherwise. Preallocated and sequentially written images are made of such rows.
    """
    if desc.ndim != 2 or desc.shape[1] == 0:
        return None
    first, last = desc[:, 0], desc[:, -1]
    unusual = OFLAG_COMPRESSED | OFLAG_ZERO | L2E_STD_RESERVED_MASK | np.uint64((cluster_size - 1) & ~0x1FF)
    # both ends checked: a carry out of the offset would set a reserved bit of the last entry
    if ((first | last) & unusual).any() or not (first & L2E_OFFSET_MASK).all():
        return None
    step = np.uint64(cluster_size)
    if not (last - first == step * np.uint64(desc.shape[1] - 1)).all():
        return None  # cheap rejection of fragmented rows before the full comparison
    if not all((np.diff(piece, axis=1) == step).all() for piece in _pieces(desc)):
        return None
    return first


def _pieces(desc: np.ndarray, limit: int = 8192):
    """Views of a batch of at most about ``limit`` entries, whole rows or parts of a row (overlapping
    by one entry, for differences). Their temporaries stay small enough for malloc to reuse, where
    batch-sized ones would be fresh pages (page faults) every time."""
    rows, n = desc.shape
    if n > limit:
        for r in range(rows):
            for c in range(0, n - 1, limit):
                yield desc[r:r + 1, c:c + limit + 1]
    else:
        per = limit // n
        for r in range(0, rows, per):
            yield desc[r:r + per]
