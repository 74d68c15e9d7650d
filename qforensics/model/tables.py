"""Bulk tables decoded with numpy: L1, L2, refcount table and blocks, bitmap tables; and the cluster
mapping's rules over their entries, written once: the cluster and subcluster types of L2 descriptors
(`Kind`, `Descriptors`, `subcluster_types`) and the tests of whether a cluster is shaped like an L1 or
L2 table (`l1_shaped`, `l2_shaped`, `extended_l2_shaped`, `table_shaped`).

Each function is pure: big-endian bytes (or entries) in, native arrays out, no per-entry
Python loop. tests/test_tables.py cross-checks them against the Kaitai
parsers generated from ksy/l1_l2_entries.ksy, refcount.ksy and bitmaps.ksy.

References: docs/interop/qcow2.txt "Cluster mapping", "Extended L2 Entries", "Host cluster
management", "Bitmap table"; block/qcow2.h masks, qcow2_get_cluster_type and qcow2_get_subcluster_type.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

L1E_OFFSET_MASK = np.uint64(0x00FFFFFFFFFFFE00)
L1E_RESERVED_MASK = np.uint64(0x7F000000000001FF)
L2E_OFFSET_MASK = np.uint64(0x00FFFFFFFFFFFE00)
L2E_STD_RESERVED_MASK = np.uint64(0x3F000000000001FE)
OFLAG_COPIED = np.uint64(1 << 63)
OFLAG_COMPRESSED = np.uint64(1 << 62)
OFLAG_ZERO = np.uint64(1)
L2_BITMAP_ALL_ALLOC = np.uint64(0xFFFFFFFF)  # extended L2 bitmap: bits 0-31 allocated, bits 32-63 reads as zero
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


class Kind(IntEnum):
    """QEMU's subcluster types (block/qcow2.h QCow2SubclusterType, whose first five values are also
    QCow2ClusterType's), plus the raw kinds of a raw layer and ``INVALID`` for metadata QEMU would refuse
    to follow (it returns EIO there)."""

    UNALLOCATED = 0  # falls through to the backing file, or reads zeros
    NORMAL = 1  # data at ``host`` in the data-holding file
    COMPRESSED = 2  # one compressed cluster; ``entry`` is its L2 descriptor
    ZERO_PLAIN = 3  # reads zeros, no host cluster
    ZERO_ALLOC = 4  # reads zeros, host cluster preallocated at ``host``
    UNALLOCATED_ALLOC = 5  # extended L2: host cluster exists, subcluster falls through
    INVALID = 6  # QEMU refuses to read it (EIO); ``reason`` says why
    RAW_DATA = 7  # a raw file's data extent
    RAW_HOLE = 8  # a raw file's hole: reads zeros


class Descriptors:
    """The fields of L2 descriptors (any shape), each worked out at most once (spec "Standard Cluster Descriptor",
    "Compressed Clusters Descriptor"): ``compressed`` (bit 62), ``offset`` (the standard host cluster
    offset field), ``allocated`` (a standard descriptor that names a host cluster: a non-zero offset, or,
    with an external data file, offset 0 with bit 63, meaning host offset 0) and ``zero`` (bit 0 of a
    standard descriptor)."""

    __slots__ = ("_allocated", "_zero", "compressed", "desc", "has_data_file", "offset")

    def __init__(self, desc: np.ndarray, has_data_file: bool):
        self.desc, self.has_data_file = desc, has_data_file
        self.compressed = (desc & OFLAG_COMPRESSED) != 0
        self.offset = desc & L2E_OFFSET_MASK
        self._allocated = self._zero = None

    def _named(self) -> np.ndarray:
        named = self.offset != 0
        if self.has_data_file:
            named |= (self.desc & OFLAG_COPIED) != 0
        return ~self.compressed & named

    @property
    def allocated(self) -> np.ndarray:
        if self._allocated is None:
            self._allocated = self._named()
        return self._allocated

    @property
    def zero(self) -> np.ndarray:
        if self._zero is None:
            self._zero = ~self.compressed & ((self.desc & OFLAG_ZERO) != 0)
        return self._zero

    def host(self) -> np.ndarray:
        """The host offset field of standard descriptors, 0 for compressed ones."""
        return np.where(self.compressed, np.uint64(0), self.offset)

    def aligned_data(self, cluster_size: int) -> np.ndarray:
        """Standard descriptors that name a cluster-aligned host cluster (whatever their zero flag)."""
        allocated = self._named() if self._allocated is None else self._allocated  # not kept: one array less
        return allocated & (self.offset % np.uint64(cluster_size) == 0)

    def types(self, extended: bool) -> np.ndarray:
        """qcow2_get_cluster_type of every descriptor, as Kind values (uint8): with extended L2 there are
        no zero clusters (the subcluster bitmap says which subclusters read as zeros)."""
        kind = np.full(self.desc.shape, Kind.UNALLOCATED, dtype=np.uint8)
        kind[self.allocated] = Kind.NORMAL
        if not extended:
            zero, named = self.zero, self.offset != 0
            kind[zero & named] = Kind.ZERO_ALLOC
            kind[zero & ~named] = Kind.ZERO_PLAIN
        kind[self.compressed] = Kind.COMPRESSED
        return kind


def cluster_types(desc: np.ndarray, *, extended: bool, has_data_file: bool) -> np.ndarray:
    """qcow2_get_cluster_type of every L2 descriptor (Kind values, uint8)."""
    return Descriptors(desc, has_data_file).types(extended)


def allocated_and_zero(bitmap: np.ndarray) -> np.ndarray:
    """Extended L2 bitmaps with a subcluster both allocated and reading as zero (invalid for a normal cluster)."""
    return ((bitmap >> np.uint64(32)) & bitmap) != 0


def any_allocated(bitmap: np.ndarray) -> np.ndarray:
    """Extended L2 bitmaps with an allocated subcluster (invalid for an unallocated cluster)."""
    return (bitmap & L2_BITMAP_ALL_ALLOC) != 0


def any_zero(bitmap: np.ndarray) -> np.ndarray:
    """Extended L2 bitmaps with a subcluster reading as zero."""
    return (bitmap >> np.uint64(32)) != 0


def subcluster_types(types: np.ndarray, bitmap: np.ndarray) -> np.ndarray:
    """qcow2_get_subcluster_type of the 32 subclusters of every extended L2 entry (rows), from the entries'
    cluster types (``Descriptors.types(extended=True)``) and subcluster bitmaps; Kind values (uint8),
    INVALID for the whole entry where its bitmap contradicts its type."""
    sub = np.arange(32, dtype=np.uint64)
    alloc = ((bitmap[:, None] >> sub) & np.uint64(1)) != 0
    zbit = ((bitmap[:, None] >> (sub + np.uint64(32))) & np.uint64(1)) != 0
    normal, unallocated = types == Kind.NORMAL, types == Kind.UNALLOCATED
    kind = np.full((len(types), 32), Kind.UNALLOCATED, dtype=np.uint8)
    n2 = normal[:, None]
    kind[n2 & ~alloc & ~zbit] = Kind.UNALLOCATED_ALLOC
    kind[n2 & alloc] = Kind.NORMAL
    kind[n2 & zbit] = Kind.ZERO_ALLOC
    kind[unallocated[:, None] & zbit] = Kind.ZERO_PLAIN
    kind[types == Kind.COMPRESSED] = Kind.COMPRESSED
    kind[(normal & allocated_and_zero(bitmap)) | (unallocated & any_allocated(bitmap))] = Kind.INVALID
    return kind


def l2_shaped(words: np.ndarray, *, cluster_bits: int, file_size: int, v3: bool) -> np.ndarray:
    """Which rows of ``words`` (tables × entries) could be standard L2 tables of an image: every entry zero
    or a valid descriptor (reserved bits clear, offsets aligned and inside the file, a compressed one
    without OFLAG_COPIED), at least one naming data."""
    cs = np.uint64(1 << cluster_bits)
    d = Descriptors(words, False)
    coff, _ = compressed_fields(words, cluster_bits)
    reserved = L2E_STD_RESERVED_MASK | (np.uint64(0) if v3 else OFLAG_ZERO)
    std_ok = ((words & reserved) == 0) & (d.offset % cs == 0) & (d.offset < np.uint64(file_size))
    comp_ok = ((words & OFLAG_COPIED) == 0) & (coff < np.uint64(file_size)) & (coff > 0)
    ok = (words == 0) | np.where(d.compressed, comp_ok, std_ok)
    return ok.all(axis=1) & (d.allocated | d.compressed).any(axis=1)


def extended_l2_shaped(words: np.ndarray, *, cluster_bits: int, file_size: int) -> np.ndarray:
    """Which rows of ``words`` (tables × 2·entries: descriptor, bitmap, ...) could be extended L2 tables."""
    desc, bitmap = words[:, 0::2], words[:, 1::2]
    compressed = (desc & OFLAG_COMPRESSED) != 0
    # bit 0 of a standard descriptor is always 0 with extended L2 entries: v2's reserved mask covers it
    shaped = l2_shaped(desc, cluster_bits=cluster_bits, file_size=file_size, v3=False)
    ok = np.where(compressed, bitmap == 0, ~allocated_and_zero(bitmap))
    return shaped & ok.all(axis=1)


def l1_shaped(words: np.ndarray, *, cluster_bits: int, file_size: int) -> np.ndarray:
    """Which rows of ``words`` could be L1 tables (spec "L1 table entry"): reserved bits clear, offsets
    aligned and inside the file, at least one entry set."""
    off = words & L1E_OFFSET_MASK
    ok = ((words & L1E_RESERVED_MASK) == 0) & (off % np.uint64(1 << cluster_bits) == 0) \
        & (off < np.uint64(file_size))
    return ok.all(axis=1) & (off != 0).any(axis=1)


def table_shaped(words: np.ndarray, header, file_size: int) -> np.ndarray:
    """Which rows of ``words`` (clusters × 8-byte words) could be L2 tables, standard or extended, of an
    image with this ``header`` (a model.qcow2_header.Header) and file size."""
    if header.extended_l2:
        return extended_l2_shaped(words, cluster_bits=header.cluster_bits, file_size=file_size)
    return l2_shaped(words, cluster_bits=header.cluster_bits, file_size=file_size, v3=header.version >= 3)


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


def unusual_bits(cluster_size: int) -> np.uint64:
    """The bits of a standard descriptor that no usual data entry has set: compressed, zero flag, reserved
    bits, and offset bits below the cluster size (unaligned). A batch of L2 tables none of whose entries has
    one set holds only unallocated and normal, aligned entries."""
    return OFLAG_COMPRESSED | OFLAG_ZERO | L2E_STD_RESERVED_MASK | np.uint64((cluster_size - 1) & ~0x1FF)


def contiguous_rows(desc: np.ndarray, cluster_size: int) -> np.ndarray | None:
    """For a batch of standard L2 tables (rows), the first descriptor of each row when every row is one
    run of contiguous host clusters with the same flags and nothing unusual (compressed, zero flag,
    reserved bits, unaligned or zero offset): entry k of a row is then ``first + k * cluster_size``.
    None otherwise. Preallocated and sequentially written images are made of such rows.
    """
    if desc.ndim != 2 or desc.shape[1] == 0:
        return None
    first, last = desc[:, 0], desc[:, -1]
    unusual = unusual_bits(cluster_size)
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
