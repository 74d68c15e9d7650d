"""The qcow2 header (spec "Header") and QEMU's checks on it at open.

References: docs/interop/qcow2.txt "Header"; block/qcow2.c qcow2_do_open,
validate_compression_type, qcow2_validate_table, report_unsupported_feature.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..findings import Finding, Severity
from ..formats.qcow2_header import Qcow2Header
from .kaitai import parse

MAGIC = b"QFI\xfb"
V2_HEADER_LENGTH = 72
# QEMU limits (block/qcow2.h)
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
QCOW_MAX_L1_SIZE = 0x2000000
QCOW_MAX_REFTABLE_SIZE = 0x800000
QCOW_MAX_SNAPSHOTS = 65536
QCOW_SNAPSHOT_HEADER_SIZE = 40
MAX_BACKING_FILE_NAME = 1023
INT64_MAX = (1 << 63) - 1
INT_MAX = (1 << 31) - 1
QCOW_CRYPT_LUKS = 2

# Offset and size of every fixed header field, for findings and hex excerpts.
FIELDS: dict[str, tuple[int, int]] = {
    "magic": (0, 4),
    "version": (4, 4),
    "backing_file_offset": (8, 8),
    "backing_file_size": (16, 4),
    "cluster_bits": (20, 4),
    "size": (24, 8),
    "crypt_method": (32, 4),
    "l1_size": (36, 4),
    "l1_table_offset": (40, 8),
    "refcount_table_offset": (48, 8),
    "refcount_table_clusters": (56, 4),
    "nb_snapshots": (60, 4),
    "snapshots_offset": (64, 8),
    "incompatible_features": (72, 8),
    "compatible_features": (80, 8),
    "autoclear_features": (88, 8),
    "refcount_order": (96, 4),
    "header_length": (100, 4),
    "compression_type": (104, 1),
    "padding": (105, 7),
}
# Kaitai field ids (ofs_/len_/num_ names) back to the spec's names.
KAITAI_TO_SPEC = {
    "version": "version",
    "cluster_bits": "cluster_bits",
    "refcount_order": "refcount_order",
    "len_header": "header_length",
    "magic": "magic",
}

FEATURE_GROUPS = ("incompatible", "compatible", "autoclear")
# Names QEMU 7.2 writes into the feature name table (qcow2_update_header).
KNOWN_FEATURES: dict[tuple[str, int], str] = {
    ("incompatible", 0): "dirty bit",
    ("incompatible", 1): "corrupt bit",
    ("incompatible", 2): "external data file",
    ("incompatible", 3): "compression type",
    ("incompatible", 4): "extended L2 entries",
    ("compatible", 0): "lazy refcounts",
    ("autoclear", 0): "bitmaps",
    ("autoclear", 1): "raw external data",
}
KNOWN_MASKS = {"incompatible": 0x1F, "compatible": 0x1, "autoclear": 0x3}
COMPRESSION_TYPES = {0: "zlib", 1: "zstd"}
CRYPT_METHODS = {0: "none", 1: "aes", 2: "luks"}


@dataclass(frozen=True)
class Header:
    """The fixed header fields with the spec's names; version 2 defaults filled in."""

    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int
    compatible_features: int
    autoclear_features: int
    refcount_order: int
    header_length: int
    compression_type: int
    padding: bytes

    @property
    def cluster_size(self) -> int:
        """1 << cluster_bits, the shift capped at 63 so a hostile value cannot build a huge integer
        (anything above 21 is refused: header.cluster_bits_unsupported)."""
        return 1 << min(self.cluster_bits, 63)

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible_features & (1 << 4))

    @property
    def has_data_file(self) -> bool:
        return bool(self.incompatible_features & (1 << 2))

    @property
    def l2_entry_size(self) -> int:
        return 16 if self.extended_l2 else 8

    @property
    def l2_entries(self) -> int:
        return self.cluster_size // self.l2_entry_size

    @property
    def ext_end(self) -> int:
        """End of the extension area as QEMU bounds it (qcow2_do_open)."""
        return self.backing_file_offset if self.backing_file_offset else self.cluster_size

    def feature_bits(self, group: str) -> int:
        return getattr(self, f"{group}_features")


def stored_cluster_bits(data: bytes) -> int | None:
    """The header's cluster_bits field as stored, or None when ``data`` is too short to hold it."""
    at, size = FIELDS["cluster_bits"]
    return int.from_bytes(data[at:at + size], "big") if len(data) >= at + size else None


def with_cluster_bits(data: bytes, cluster_bits: int) -> bytes:
    """The header's bytes with cluster_bits replaced (recover's repair view when the field is destroyed)."""
    at, size = FIELDS["cluster_bits"]
    return data[:at] + cluster_bits.to_bytes(size, "big") + data[at + size:] if len(data) >= at + size else data


def parse_header(data: bytes) -> Header:
    """Parse the fixed header from the first bytes of the file (spec "Header").

    Raises ``StructureError`` when a spec constraint that makes the rest
    meaningless fails (magic, version, cluster_bits < 9, refcount_order > 6,
    header_length < 104).
    """
    h = parse(Qcow2Header, data, structure="qcow2 header", offset=0)
    v3 = h.version >= 3
    return Header(
        version=h.version,
        backing_file_offset=h.ofs_backing_file_name,
        backing_file_size=h.len_backing_file_name,
        cluster_bits=h.cluster_bits,
        size=h.len_virtual_disk,
        crypt_method=int(h.crypt_method),
        l1_size=h.num_l1_entries,
        l1_table_offset=h.ofs_l1_table,
        refcount_table_offset=h.ofs_refcount_table,
        refcount_table_clusters=h.num_refcount_table_clusters,
        nb_snapshots=h.num_snapshots,
        snapshots_offset=h.ofs_snapshot_table,
        incompatible_features=h.incompatible_features.value if v3 else 0,
        compatible_features=h.compatible_features.value if v3 else 0,
        autoclear_features=h.autoclear_features.value if v3 else 0,
        refcount_order=h.refcount_order if v3 else 4,
        header_length=h.len_header if v3 else V2_HEADER_LENGTH,
        compression_type=int(h.compression_type) if v3 and h.len_header > 104 else 0,
        # the padding runs to header_length, not always to 112: past it the first extension begins
        padding=h.reserved_compression_padding[:min(h.len_header, 112) - 105] if v3 and h.len_header > 105 else b"",
    )


def _refusal(code: str, field: str, message: str, qemu: str) -> Finding:
    return Finding(code, Severity.CORRUPTION, message, "qcow2 header", FIELDS[field][0], qemu_message=qemu)


def _warning(code: str, field: str, message: str) -> Finding:
    return Finding(code, Severity.WARNING, message, "qcow2 header", FIELDS[field][0])


def feature_names(table: dict[tuple[str, int], str]) -> dict[tuple[str, int], str]:
    """Names of feature bits: the image's own feature name table over QEMU's."""
    return {**KNOWN_FEATURES, **table}


def unsupported_features_message(h: Header, entries: list[tuple[int, int, bytes]]) -> str | None:
    """QEMU's text for unknown incompatible bits (report_unsupported_feature), or None. ``entries`` are the
    feature name table's (type, bit, name) as QEMU walks them (Extensions.qemu_feature_entries): the first
    entry naming a bit wins, and QEMU shifts 1 by the bit number as the processor does, modulo 64."""
    unknown = h.incompatible_features & ~KNOWN_MASKS["incompatible"]
    if not unknown:
        return None
    parts = []
    for kind, bit, name in entries:
        if kind == 0 and unknown & (1 << (bit % 64)):
            parts.append(name[:46].decode("utf-8", errors="backslashreplace"))
            unknown &= ~(1 << (bit % 64))
    if unknown:
        parts.append(f"Unknown incompatible feature: {unknown:x}")
    return "Unsupported qcow2 feature(s): " + ", ".join(parts)


def check_header(h: Header, file_size: int, feature_entries: list[tuple[int, int, bytes]]) -> list[Finding]:
    """Every condition of the fixed header that makes QEMU refuse to open, plus spec violations it lets pass.

    Reference: block/qcow2.c qcow2_do_open (QEMU 7.2), in its order: the fixed fields, the feature bits, the
    tables the header points to, then the backing file name and what lies past the end of the file.
    """
    cs = h.cluster_size
    return (_fixed_fields(h, cs) + _feature_bits(h, cs, feature_entries) + _table_pointers(h, cs)
            + _backing_and_eof(h, cs, file_size))


def _fixed_fields(h: Header, cs: int) -> list[Finding]:
    """Cluster size, header length, backing file offset, compression type (qcow2_do_open's first checks)."""
    out: list[Finding] = []
    if not MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS:
        out.append(_refusal("header.cluster_bits_unsupported", "cluster_bits",
                            f"cluster_bits is {h.cluster_bits}; QEMU supports {MIN_CLUSTER_BITS} to "
                            f"{MAX_CLUSTER_BITS} (512 B to 2 MiB clusters)",
                            f"Unsupported cluster size: 2^{h.cluster_bits}"))
    if h.version >= 3:
        if h.header_length > cs:
            out.append(_refusal("header.header_length_exceeds_cluster", "header_length",
                                f"header_length is {h.header_length}, larger than the cluster size {cs}",
                                "qcow2 header exceeds cluster size"))
        if h.header_length % 8:
            out.append(_warning("header.header_length_unaligned", "header_length",
                                f"header_length is {h.header_length}, not a multiple of 8 as the spec requires"))
    if h.backing_file_offset > cs:
        out.append(_refusal("header.backing_file_offset_invalid", "backing_file_offset",
                            f"backing_file_offset is 0x{h.backing_file_offset:x}, beyond cluster 0 "
                            f"(cluster size 0x{cs:x})",
                            "Invalid backing file offset"))
    if h.version >= 3 and h.header_length > 104:
        ct = h.compression_type
        bit = bool(h.incompatible_features & (1 << 3))
        if ct not in COMPRESSION_TYPES:
            out.append(_refusal("header.compression_type_unknown", "compression_type",
                                f"compression_type is {ct}; known values are 0 (zlib) and 1 (zstd)",
                                f"qcow2: unknown compression type: {ct}"))
        elif ct == 0 and bit:
            out.append(_refusal("header.compression_type_bit_set", "incompatible_features",
                                "incompatible_features bit 3 (compression type) is set but compression_type is 0 (zlib)",
                                "qcow2: Compression type incompatible feature bit must not be set"))
        elif ct != 0 and not bit:
            out.append(_refusal("header.compression_type_bit_clear", "incompatible_features",
                                f"compression_type is {ct} ({COMPRESSION_TYPES[ct]}) but incompatible_features bit 3 is clear",
                                "qcow2: Compression type incompatible feature bit must be set"))
        if h.padding.strip(b"\0"):
            out.append(_warning("header.padding_nonzero", "padding",
                                f"header padding bytes 105-{104 + len(h.padding)} are not zero: {h.padding.hex()}"))
    elif h.version >= 3 and h.incompatible_features & (1 << 3):
        out.append(_refusal("header.compression_type_bit_set", "incompatible_features",
                            "incompatible_features bit 3 (compression type) is set but the header has no compression_type",
                            "qcow2: Compression type incompatible feature bit must not be set"))
    return out


def _feature_bits(h: Header, cs: int, feature_entries: list[tuple[int, int, bytes]]) -> list[Finding]:
    """Unknown feature bits (report_unsupported_feature), the subcluster size, the encryption method."""
    out: list[Finding] = []
    unsupported = unsupported_features_message(h, feature_entries)
    if unsupported:
        bits = h.incompatible_features & ~KNOWN_MASKS["incompatible"]
        out.append(_refusal("header.incompatible_feature_unknown", "incompatible_features",
                            f"incompatible_features has unknown bits 0x{bits:x}", unsupported))
    for group in ("compatible", "autoclear"):
        bits = h.feature_bits(group) & ~KNOWN_MASKS[group]
        if bits:
            out.append(_warning(f"header.{group}_feature_unknown", f"{group}_features",
                                f"{group}_features has unknown bits 0x{bits:x}"))
    if h.extended_l2 and (cs // 32) < 512:
        out.append(_refusal("header.subcluster_size_unsupported", "incompatible_features",
                            f"incompatible_features bit 4 (extended L2) with {cs}-byte clusters gives {cs // 32}-byte subclusters; "
                            "the minimum is 512 (cluster_bits >= 14)",
                            f"Unsupported subcluster size: {cs // 32}"))
    if h.crypt_method > QCOW_CRYPT_LUKS:
        out.append(_refusal("header.crypt_method_unknown", "crypt_method",
                            f"crypt_method is {h.crypt_method}; known values are 0, 1 (AES) and 2 (LUKS)",
                            f"Unsupported encryption method {h.crypt_method}"))
    return out


def _table_pointers(h: Header, cs: int) -> list[Finding]:
    """The refcount table, snapshot table and L1 table as qcow2_validate_table judges them, and the L1 size."""
    out: list[Finding] = []
    if h.refcount_table_clusters == 0:
        out.append(_refusal("header.refcount_table_missing", "refcount_table_clusters",
                            "refcount_table_clusters is 0: the image has no refcount table",
                            "Image does not contain a reference count table"))
    elif h.refcount_table_clusters > QCOW_MAX_REFTABLE_SIZE // cs:
        out.append(_refusal("header.refcount_table_too_large", "refcount_table_clusters",
                            f"refcount_table_clusters is {h.refcount_table_clusters}; QEMU allows at most "
                            f"{QCOW_MAX_REFTABLE_SIZE // cs} ({QCOW_MAX_REFTABLE_SIZE >> 20} MiB)",
                            "Reference count table too large"))
    if _table_offset_invalid(h.refcount_table_offset, h.refcount_table_clusters * cs, cs):
        out.append(_refusal("header.refcount_table_offset_invalid", "refcount_table_offset",
                            f"refcount_table_offset 0x{h.refcount_table_offset:x} is "
                            + _offset_problem(h.refcount_table_offset, cs),
                            "Reference count table offset invalid"))
    if h.nb_snapshots > QCOW_MAX_SNAPSHOTS:
        out.append(_refusal("header.snapshot_table_too_large", "nb_snapshots",
                            f"nb_snapshots is {h.nb_snapshots}; QEMU allows at most {QCOW_MAX_SNAPSHOTS}",
                            "Snapshot table too large"))
    elif _table_offset_invalid(h.snapshots_offset, h.nb_snapshots * QCOW_SNAPSHOT_HEADER_SIZE, cs):
        out.append(_refusal("header.snapshot_table_offset_invalid", "snapshots_offset",
                            f"snapshots_offset 0x{h.snapshots_offset:x} is " + _offset_problem(h.snapshots_offset, cs),
                            "Snapshot table offset invalid"))
    if h.l1_size > QCOW_MAX_L1_SIZE // 8:
        out.append(_refusal("header.l1_table_too_large", "l1_size",
                            f"l1_size is {h.l1_size}; QEMU allows at most {QCOW_MAX_L1_SIZE // 8} entries (32 MiB)",
                            "Active L1 table too large"))
    elif _table_offset_invalid(h.l1_table_offset, h.l1_size * 8, cs):
        out.append(_refusal("header.l1_table_offset_invalid", "l1_table_offset",
                            f"l1_table_offset 0x{h.l1_table_offset:x} is " + _offset_problem(h.l1_table_offset, cs),
                            "Active L1 table offset invalid"))
    if MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS:
        span = cs * h.l2_entries
        needed = -(-h.size // span)
        if needed > INT_MAX:
            out.append(_refusal("header.image_too_big", "size",
                                f"size {h.size} needs {needed} L1 entries, more than QEMU's limit {INT_MAX}",
                                "Image is too big"))
        elif h.l1_size < needed:
            out.append(_refusal("header.l1_table_too_small", "l1_size",
                                f"l1_size is {h.l1_size} but size {h.size} needs {needed} L1 entries",
                                "L1 table is too small"))
    return out


def _backing_and_eof(h: Header, cs: int, file_size: int) -> list[Finding]:
    """The backing file name's length, and tables pointed to at or past the end of the file (beyond qemu)."""
    out: list[Finding] = []
    if h.backing_file_offset:
        limit = min(MAX_BACKING_FILE_NAME, max(cs - h.backing_file_offset, 0))
        if h.backing_file_size > limit:
            out.append(_refusal("header.backing_file_name_too_long", "backing_file_size",
                                f"backing_file_size is {h.backing_file_size}; at most {limit} bytes fit "
                                f"(1023, and the name must end within cluster 0)",
                                "Backing file name too long"))
    for name, value in (("l1_table_offset", h.l1_table_offset), ("refcount_table_offset", h.refcount_table_offset)):
        if value and value >= file_size and not _table_offset_invalid(value, 0, cs):
            out.append(Finding(f"header.{name}_past_eof", Severity.CORRUPTION,
                               f"{name} 0x{value:x} is at or past the end of the file (0x{file_size:x})",
                               "qcow2 header", FIELDS[name][0]))
    return out


def _table_offset_invalid(offset: int, size: int, cs: int) -> bool:
    """qcow2_validate_table's offset test: unaligned, or offset + size beyond INT64_MAX."""
    return offset % cs != 0 or INT64_MAX - size < offset


def _offset_problem(offset: int, cs: int) -> str:
    return f"not aligned to the cluster size 0x{cs:x}" if offset % cs else "beyond the largest file offset (2^63)"
