"""Header extensions (spec "Header extensions") and QEMU's checks on them.

Reference: block/qcow2.c qcow2_read_extensions (QEMU 7.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..findings import Finding, Severity
from ..formats.qcow2_header import Qcow2Header
from .qcow2_header import QCOW_CRYPT_LUKS, Header
from .kaitai import StructureError, decode_name, opt, parse

END = 0x00000000
BACKING_FORMAT = 0xE2792ACA
FEATURE_NAME_TABLE = 0x6803F857
BITMAPS = 0x23852875
FULL_DISK_ENCRYPTION = 0x0537BE77
EXTERNAL_DATA_FILE = 0x44415441
DEDUPLICATION = 0xCD8E819B

NAMES = {
    END: "end of header extensions",
    BACKING_FORMAT: "backing file format name",
    FEATURE_NAME_TABLE: "feature name table",
    BITMAPS: "bitmaps",
    FULL_DISK_ENCRYPTION: "full disk encryption header pointer",
    EXTERNAL_DATA_FILE: "external data file name",
    DEDUPLICATION: "deduplication (2012 draft)",
}
FEATURE_GROUP = {0: "incompatible", 1: "compatible", 2: "autoclear"}
QCOW2_MAX_BITMAPS = 65535
QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 1024 * QCOW2_MAX_BITMAPS
FEATURE_ENTRY_SIZE = 48
MAX_LISTED = 64  # feature name table entries listed per rule; the rest are counted in one ".more" finding


@dataclass(frozen=True)
class FeatureName:
    """A feature name table entry (spec "Feature name table"): from the generated parser, or read from its
    bytes when the parser refuses the table as a whole (an entry's bit number above 63)."""

    feature_type: int
    bit: int
    name: bytes


@dataclass(frozen=True)
class FeatureNameTable:
    entries: list[FeatureName]


# The bodies the model hands out (spec names), in place of the generated parsers' objects
@dataclass(frozen=True)
class NameBody:
    """Backing file format name, external data file name: the bytes as stored."""

    name: bytes


@dataclass(frozen=True)
class BitmapsBody:
    """Spec "Bitmaps extension"."""

    nb_bitmaps: int
    bitmap_directory_size: int
    bitmap_directory_offset: int


@dataclass(frozen=True)
class CryptoBody:
    """Spec "Full disk encryption header pointer"."""

    offset: int
    length: int


@dataclass(frozen=True)
class DraftBitmapsBody:
    """The 12-byte bitmaps extension of the 2015 draft (seed 003)."""

    nb_dirty_bitmaps: int
    dirty_bitmaps_offset: int


@dataclass(frozen=True)
class DedupBody:
    """The deduplication extension of the 2012-2013 draft (seed 000); hash_algorithm None when absent."""

    dedup_table_offset: int
    dedup_table_size: int
    hash_algorithm: int | None


@dataclass
class Extension:
    """One header extension: where it is, what it is, its raw and parsed body."""

    offset: int
    magic: int
    length: int
    data: bytes
    body: Any = None  # the body when it parsed: one of the dataclasses above (the model's, with spec names)

    @property
    def name(self) -> str:
        if self.magic == BITMAPS and self.length == 12:
            return "dirty bitmaps (2015 draft layout)"
        return NAMES.get(self.magic, f"unknown extension 0x{self.magic:08x}")

    @property
    def data_offset(self) -> int:
        return self.offset + 8


@dataclass
class Extensions:
    """The extension area of cluster 0, as walked by QEMU, with what it found."""

    items: list[Extension] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    end_offset: int = 0  # first byte after the last extension read
    end_marker: bool = False  # the walk ended on a type-0 extension, not at the end of the area

    def first(self, magic: int) -> Extension | None:
        return next((e for e in self.items if e.magic == magic), None)

    def qemu_feature_entries(self) -> list[tuple[int, int, bytes]]:
        """The feature name table as QEMU walks it for its refusal message (report_unsupported_feature):
        (type, bit, name) of the last table extension's entries, in order, up to the first with an empty
        name; a partial last entry reads on into zeros (qcow2_read_extensions allocates zeroed room)."""
        tables = [e for e in self.items if e.magic == FEATURE_NAME_TABLE]
        if not tables:
            return []
        data, out = tables[-1].data, []
        for i in range(0, len(data), FEATURE_ENTRY_SIZE):
            row = data[i:i + FEATURE_ENTRY_SIZE].ljust(FEATURE_ENTRY_SIZE, b"\0")
            if not row[2]:
                break
            out.append((row[0], row[1], row[2:].split(b"\0", 1)[0]))
        return out

    def feature_table(self) -> dict[tuple[str, int], str]:
        ext = self.first(FEATURE_NAME_TABLE)
        if ext is None or ext.body is None:
            return {}
        table = {}
        for entry in ext.body.entries:
            group = FEATURE_GROUP.get(entry.feature_type)
            if group is not None and entry.bit < 64:
                table[(group, entry.bit)] = decode_name(entry.name.rstrip(b"\0"))
        return table


def read_extensions(h: Header, cluster0: bytes) -> Extensions:
    """Walk the extensions from header_length to QEMU's ext_end, never past the bytes given."""
    out = Extensions(end_offset=h.header_length)
    end = h.ext_end
    offset = h.header_length
    seen: set[int] = set()
    while offset < end:
        raw = cluster0[offset : offset + 8]
        if len(raw) < 8:
            out.findings.append(Finding("extension.truncated", Severity.CORRUPTION,
                                        f"header extension at 0x{offset:x} is cut off by the end of the file",
                                        "header extensions", offset))
            break
        magic = int.from_bytes(raw[:4], "big")
        length = int.from_bytes(raw[4:], "big")
        if offset + 8 > end - length:
            out.findings.append(Finding("extension.too_large", Severity.CORRUPTION,
                                        f"header extension 0x{magic:08x} at 0x{offset:x} has length {length}, "
                                        f"running past the end of the extension area (0x{end:x})",
                                        "header extensions", offset, qemu_message="Header extension too large"))
            break
        if magic == END:
            out.end_offset = offset + 8
            out.end_marker = True
            break
        data = cluster0[offset + 8 : offset + 8 + length]
        ext = Extension(offset, magic, length, data)
        out.items.append(ext)
        if magic in seen and magic in NAMES:
            out.findings.append(Finding("extension.duplicate", Severity.WARNING,
                                        f"{ext.name} extension appears more than once (again at 0x{offset:x}); "
                                        "QEMU uses the last one", "header extensions", offset))
        seen.add(magic)
        if len(data) < length:
            out.findings.append(Finding("extension.truncated", Severity.CORRUPTION,
                                        f"{ext.name} extension at 0x{offset:x} is cut off by the end of the file",
                                        "header extensions", offset))
            break
        _parse_body(ext, h, out.findings)
        _padding(ext, cluster0, end, out.findings)
        offset += 8 + ((length + 7) & ~7)
        out.end_offset = offset
    return out


def _padding(ext: Extension, cluster0: bytes, end: int, findings: list[Finding]) -> None:
    """The bytes after an extension's data up to the next multiple of 8 (and at most to ``end``: the backing
    file name may follow unpadded data). The spec does not require them to be zero ("String header
    extensions": "nor is there a guarantee that zero bytes are used for padding"), and QEMU writes zeros there
    (qcow2_update_header), so other bytes are only worth knowing: information."""
    start = ext.data_offset + ext.length
    pad = cluster0[start:min(ext.data_offset + ((ext.length + 7) & ~7), end)]
    if not pad.strip(b"\0"):
        return
    first = next(i for i, b in enumerate(pad) if b)
    findings.append(Finding("extension.padding_nonzero", Severity.INFO,
                            f"{ext.name} extension: padding bytes 0x{start:x}-0x{start + len(pad) - 1:x} after its "
                            f"{ext.length} bytes of data are not zero ({pad.hex()}); QEMU writes zeros there, the "
                            "spec does not require them", f"{ext.name} extension", start + first))


def _parse_body(ext: Extension, h: Header, findings: list[Finding]) -> None:
    """Parse the body with the generated type and apply QEMU's checks for it."""
    structure = f"{ext.name} extension"

    def refuse(code: str, message: str, qemu: str) -> None:
        findings.append(Finding(code, Severity.CORRUPTION, message, structure, ext.offset, qemu_message=qemu))

    def note(code: str, severity: Severity, message: str, at: int | None = None) -> None:
        findings.append(Finding(code, severity, message, structure, ext.offset if at is None else at))

    try:
        if ext.magic == BACKING_FORMAT:
            ext.body = NameBody(parse(Qcow2Header.BackingFileFormat, ext.data, structure=structure,
                                      offset=ext.data_offset).name)
            if ext.length >= 16:
                refuse("extension.backing_format_too_long",
                       f"backing file format name is {ext.length} bytes; QEMU accepts at most 15",
                       f"ERROR: ext_backing_format: len={ext.length} too large (>=16)")
        elif ext.magic == FEATURE_NAME_TABLE:
            usable = ext.length - ext.length % FEATURE_ENTRY_SIZE
            if usable != ext.length:
                note("extension.feature_table_partial_entry", Severity.WARNING,
                     f"feature name table length {ext.length} is not a multiple of 48; "
                     f"the last {ext.length - usable} bytes are ignored")
            _feature_name_rules(ext, usable, findings)
            try:
                table = parse(Qcow2Header.FeatureNameTable, ext.data[:usable], structure=structure,
                              offset=ext.data_offset)
                ext.body = FeatureNameTable([FeatureName(int(e.feature_type), e.bit, e.name) for e in table.entries])
            except StructureError:  # a bit number above 63 (reported above): keep the other entries
                rows = [ext.data[i:i + FEATURE_ENTRY_SIZE] for i in range(0, usable, FEATURE_ENTRY_SIZE)]
                ext.body = FeatureNameTable([FeatureName(r[0], r[1], r[2:]) for r in rows])
        elif ext.magic == FULL_DISK_ENCRYPTION:
            if h.crypt_method != QCOW_CRYPT_LUKS:
                refuse("extension.crypto_without_luks",
                       f"full disk encryption header pointer present but crypt_method is {h.crypt_method}, not 2 (LUKS)",
                       "CRYPTO header extension only expected with LUKS encryption method")
            elif ext.length != 16:
                refuse("extension.crypto_length", f"full disk encryption header pointer is {ext.length} bytes, not 16",
                       f"CRYPTO header extension size {ext.length}, but expected size 16")
            if ext.length >= 16:
                pointer = parse(Qcow2Header.FullDiskEncryptionHeaderPointer, ext.data[:16], structure=structure,
                                offset=ext.data_offset)
                ext.body = CryptoBody(pointer.ofs_encryption_header, pointer.len_encryption_header)
                ofs = ext.body.offset
                if h.crypt_method == QCOW_CRYPT_LUKS and ext.length == 16 and ofs % h.cluster_size:
                    refuse("extension.crypto_offset_unaligned",
                           f"encryption header offset 0x{ofs:x} is not aligned to the cluster size 0x{h.cluster_size:x}",
                           f"Encryption header offset '{ofs}' is not a multiple of cluster size '{h.cluster_size}'")
        elif ext.magic == BITMAPS:
            _bitmaps_extension(ext, h, refuse, note)
        elif ext.magic == EXTERNAL_DATA_FILE:
            ext.body = NameBody(parse(Qcow2Header.ExternalDataFileName, ext.data, structure=structure,
                                      offset=ext.data_offset).name)
        elif ext.magic == DEDUPLICATION:
            from ..formats.dedup_table import DedupTable

            d = parse(DedupTable.DedupExtension, ext.data, structure=structure, offset=ext.data_offset)
            algorithm = opt(d, "hash_algorithm")
            ext.body = DedupBody(d.ofs_dedup_table, d.len_dedup_table, None if algorithm is None else int(algorithm))
            note("extension.deduplication_draft", Severity.INFO,
                 "deduplication extension 0xCD8E819B from the 2012-2013 dedup draft; QEMU ignores it")
        else:
            note("extension.unknown", Severity.INFO,
                 f"unknown header extension 0x{ext.magic:08x} ({ext.length} bytes); QEMU ignores and preserves it")
    except StructureError as exc:
        note("extension.unparsable", Severity.CORRUPTION, exc.message)


def _feature_name_rules(ext: Extension, usable: int, findings: list[Finding]) -> None:
    """Each entry's type (0, 1, 2), bit number (0-63) and zero padding after the name (spec "Feature name
    table": "padded with zeros"), all entries at once. QEMU uses the table only to name unknown incompatible
    bits in its refusal message and checks none of this."""
    if usable == 0:
        return
    rows = np.frombuffer(ext.data[:usable], dtype=np.uint8).reshape(-1, FEATURE_ENTRY_SIZE)
    structure = f"{ext.name} extension"
    base = ext.data_offset

    def report(code: str, bad: np.ndarray, where, text) -> None:
        idx = np.flatnonzero(bad)
        for i in idx[:MAX_LISTED].tolist():
            at = base + i * FEATURE_ENTRY_SIZE + where(i)
            findings.append(Finding(code, Severity.WARNING, text(i), structure, at))
        if len(idx) > MAX_LISTED:
            n = len(idx) - MAX_LISTED
            findings.append(Finding(code + ".more", Severity.INFO, f"{n} more feature name table entries like this "
                                    f"({code}), not listed", structure,
                                    base + int(idx[MAX_LISTED]) * FEATURE_ENTRY_SIZE, repeat=n))

    def name(i: int) -> str:
        return repr(decode_name(rows[i, 2:].tobytes().split(b"\0", 1)[0]))

    report("extension.feature_name_type_invalid", rows[:, 0] > 2, lambda i: 0,
           lambda i: f"feature name table entry {i} ({name(i)}): type {rows[i, 0]} is not 0 (incompatible), "
                     "1 (compatible) or 2 (autoclear)")
    report("extension.feature_name_bit_invalid", rows[:, 1] > 63, lambda i: 1,
           lambda i: f"feature name table entry {i} ({name(i)}): bit number {rows[i, 1]} is outside 0-63 (a "
                     "feature bitmap has 64 bits)")
    names = rows[:, 2:]
    zero = names == 0
    after_nul = np.cumsum(zero, axis=1) > 0  # from the first NUL on: padding, which must be zero
    stray = after_nul & ~zero
    report("extension.feature_name_padding_nonzero", stray.any(axis=1), lambda i: 2 + int(np.argmax(stray[i])),
           lambda i: f"feature name table entry {i} ({name(i)}): the name's padding holds non-zero bytes after its "
                     f"NUL (from byte {2 + int(np.argmax(stray[i]))} of the entry); the spec pads names with zeros")


def _bitmaps_extension(ext: Extension, h: Header, refuse, note) -> None:
    """QEMU's checks of the bitmaps extension, in its order; the 12-byte body is the 2015 draft."""
    if ext.length == 12:
        from ..formats.draft_dirty_bitmaps import DraftDirtyBitmaps

        draft = parse(DraftDirtyBitmaps.DirtyBitmapsExtension, ext.data, structure="dirty bitmaps extension",
                      offset=ext.data_offset)
        ext.body = DraftBitmapsBody(draft.num_dirty_bitmaps, draft.ofs_dirty_bitmaps)
        note("extension.early_dirty_bitmaps", Severity.INFO,
             "12-byte bitmaps extension: the 2015 draft dirty bitmaps layout, which QEMU never released")
    if ext.length != 24:
        refuse("extension.bitmaps_length", f"bitmaps extension is {ext.length} bytes, not 24",
               "bitmaps_ext: Invalid extension length")
        return
    nb = int.from_bytes(ext.data[0:4], "big")
    reserved = int.from_bytes(ext.data[4:8], "big")
    dir_size = int.from_bytes(ext.data[8:16], "big")
    dir_offset = int.from_bytes(ext.data[16:24], "big")
    if not h.autoclear_features & 1:
        note("extension.bitmaps_autoclear_clear", Severity.WARNING,
             "bitmaps extension present but autoclear bit 0 is clear: a program without bitmap support "
             "modified the image, so every bitmap is inconsistent")
        if reserved:  # QEMU ignores the extension here and never looks at the field; the spec rule still holds
            note("extension.bitmaps_reserved", Severity.WARNING,
                 f"bitmaps extension reserved field (bytes 4-7 of its data) is 0x{reserved:x}; the spec says it "
                 "must be zero (QEMU checks it only when autoclear bit 0 is set)", at=ext.data_offset + 4)
        ext.body = _try_bitmaps_body(ext)
        return
    if reserved:
        refuse("extension.bitmaps_reserved", f"bitmaps extension reserved field is 0x{reserved:x}, not 0",
               "bitmaps_ext: Reserved field is not zero")
    elif nb > QCOW2_MAX_BITMAPS:
        refuse("extension.bitmaps_too_many", f"nb_bitmaps is {nb}; QEMU supports at most {QCOW2_MAX_BITMAPS}",
               f"bitmaps_ext: Image has {nb} bitmaps, exceeding the QEMU supported maximum of {QCOW2_MAX_BITMAPS}")
    elif nb == 0:
        refuse("extension.bitmaps_zero", "nb_bitmaps is 0", "found bitmaps extension with zero bitmaps")
    elif dir_offset % h.cluster_size:
        refuse("extension.bitmaps_directory_unaligned",
               f"bitmap_directory_offset 0x{dir_offset:x} is not aligned to the cluster size 0x{h.cluster_size:x}",
               "bitmaps_ext: invalid bitmap directory offset")
    elif dir_size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE:
        refuse("extension.bitmaps_directory_too_large",
               f"bitmap_directory_size is {dir_size}; QEMU supports at most {QCOW2_MAX_BITMAP_DIRECTORY_SIZE}",
               f"bitmaps_ext: bitmap directory size ({dir_size}) exceeds the maximum supported size "
               f"({QCOW2_MAX_BITMAP_DIRECTORY_SIZE})")
    ext.body = _try_bitmaps_body(ext)


def _try_bitmaps_body(ext: Extension):
    from ..formats.bitmaps import Bitmaps

    try:
        b = parse(Bitmaps.BitmapsExtension, ext.data, structure="bitmaps extension", offset=ext.data_offset)
        return BitmapsBody(b.num_bitmaps, b.len_bitmap_directory, b.ofs_bitmap_directory)
    except StructureError:
        return None  # reserved != 0 or nb == 0: already reported above
