"""Bulk tables decoded with numpy: L1, L2, refcount table and blocks, bitmap tables.

Each function is pure: big-endian bytes in, native arrays out, no per-entry
Python loop. tests/test_tables.py cross-checks them against the Kaitai
parsers generated from ksy/l1_l2_entries.ksy, refcount.ksy and bitmaps.ksy.

References: docs/interop/qcow2.txt "Cluster mapping", "Host cluster
management", "Bitmap table"; block/qcow2.h masks.
"""

from __future__ import annotations

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
