"""Persistent dirty bitmaps: the bitmap directory (spec "Bitmap directory").

Reference: block/qcow2-bitmap.c bitmap_list_load, check_dir_entry (QEMU 7.2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..findings import Finding, Severity
from ..formats.bitmaps import Bitmaps
from ..text import MAX_SHOWN, clip
from .qcow2_header import Header
from .kaitai import StructureError, decode_name, parse

BME_MAX_TABLE_SIZE = 0x8000000
BME_MAX_PHYS_SIZE = 0x20000000
BME_MAX_GRANULARITY_BITS = 31
BME_MIN_GRANULARITY_BITS = 9
BME_MAX_NAME_SIZE = 1023
BME_RESERVED_FLAGS = 0xFFFFFFFC
FLAG_IN_USE = 1
FLAG_AUTO = 2
FLAG_EXTRA_DATA_COMPATIBLE = 4
STRUCTURE = "bitmap directory"


@dataclass(frozen=True)
class Bitmap:
    """One bitmap directory entry."""

    index: int
    entry_offset: int
    name: str
    table_offset: int
    table_size: int
    flags: int
    type: int
    granularity_bits: int
    extra_data_size: int
    name_size: int = 0  # as stored (the name may hold invalid UTF-8, shown escaped)

    @property
    def granularity(self) -> int:
        return 1 << self.granularity_bits

    @property
    def qemu_name(self) -> str:
        """The name as qemu's messages print it (a C string: up to the first NUL)."""
        return self.name.split("\0", 1)[0]

    @property
    def flag_names(self) -> list[str]:
        """As qemu-img info lists them (Qcow2BitmapInfoFlags)."""
        names = []
        if self.flags & FLAG_IN_USE:
            names.append("in-use")
        if self.flags & FLAG_AUTO:
            names.append("auto")
        return names



def _shown(name: str) -> str:
    """A bitmap name for a message: quoted, or clipped when long (it is repeated once per bitmap)."""
    return f"'{name}'" if len(name) <= MAX_SHOWN else clip(name)

def _entry_length(raw: bytes) -> int:
    extra = int.from_bytes(raw[20:24], "big")
    name = int.from_bytes(raw[18:20], "big")
    return (24 + extra + name + 7) & ~7


def _qemu_entry_length(raw: bytes) -> int:
    """The step qemu's walk takes: calc_dir_entry_size sums into a C int, so a huge extra_data_size wraps
    (0xFFFFFFFF makes the entry 8 bytes shorter than its name needs, 0x80000000 makes it negative)."""
    size = (24 + int.from_bytes(raw[18:20], "big") + int.from_bytes(raw[20:24], "big")) & 0xFFFFFFFF
    size = (size + 7) & ~7 & 0xFFFFFFFF
    return size - (1 << 32) if size >> 31 else size


def read_bitmap_directory(h: Header, read, file_size: int, nb_bitmaps: int, dir_offset: int,
                          dir_size: int) -> tuple[list[Bitmap], list[Finding]]:
    """Walk the directory as bitmap_list_load does; each bad entry is a finding, not an abort.

    QEMU stops at the first problem, so only the first finding carries its message.
    """
    findings: list[Finding] = []
    bitmaps: list[Bitmap] = []

    def corrupt(code: str, message: str, offset: int, qemu: str | None) -> None:
        findings.append(Finding(code, Severity.CORRUPTION, message, STRUCTURE, offset, qemu_message=qemu))

    if dir_offset + dir_size > file_size:
        corrupt("bitmap.directory_past_eof", f"bitmap directory 0x{dir_offset:x}+{dir_size} runs past the end of "
                f"the file (0x{file_size:x})", dir_offset, None)
    data = read(dir_offset, min(dir_size, max(file_size - dir_offset, 0)))
    pos = 0
    while pos < len(data):
        entry_offset = dir_offset + pos
        index = len(bitmaps)
        # bitmap_list_load's order: the fixed part must fit, then the count, then the whole entry
        if pos + 24 > len(data):
            corrupt("bitmap.directory_broken", f"bitmap directory entry at 0x{entry_offset:x} runs past the end of "
                    f"the directory ({dir_size} bytes)", entry_offset, "Broken bitmap directory")
            break
        if index >= nb_bitmaps:
            corrupt("bitmap.directory_too_many", f"bitmap directory holds more entries than nb_bitmaps ({nb_bitmaps})",
                    entry_offset, "More bitmaps found than specified in header extension")
        length, qemu_length = _entry_length(data[pos:pos + 24]), _qemu_entry_length(data[pos:pos + 24])
        if pos + length > len(data):
            extra = int.from_bytes(data[pos + 20:pos + 24], "big")
            if pos + qemu_length <= len(data):  # only a wrapped size fits: qemu then meets the extra data
                corrupt("bitmap.directory_broken", f"bitmap directory entry at 0x{entry_offset:x}: extra_data_size "
                        f"0x{extra:x} runs past the end of the directory ({dir_size} bytes); qemu's int entry size "
                        f"wraps to {qemu_length}", entry_offset, "Bitmap extra data is not supported")
            else:
                corrupt("bitmap.directory_broken", f"bitmap directory entry at 0x{entry_offset:x} runs past the end "
                        f"of the directory ({dir_size} bytes)", entry_offset, "Broken bitmap directory")
            break
        raw = data[pos:pos + length]
        pos += len(raw)
        try:
            e = parse(Bitmaps.BitmapDirectoryEntry, raw, structure=STRUCTURE, offset=entry_offset)
        except StructureError as exc:
            b = _raw_bitmap(index, entry_offset, raw)
            bitmaps.append(b)
            corrupt("bitmap.entry_invalid", f"entry {index} ({_shown(b.name)}): {exc.message}", entry_offset,
                    _qemu_refusal(b))
            continue
        b = Bitmap(index=index, entry_offset=entry_offset, name=decode_name(e.name), table_offset=e.ofs_bitmap_table,
                   table_size=e.num_bitmap_table_entries, flags=e.flags.value, type=int(e.bitmap_type),
                   granularity_bits=e.granularity_bits, extra_data_size=e.len_extra_data,
                   name_size=e.len_name)
        bitmaps.append(b)
        _padding(b, raw, findings)
        why = check_dir_entry(h, b)
        if why:
            corrupt("bitmap.entry_constraints", f"bitmap {_shown(b.name)}: {why}", entry_offset, _qemu_refusal(b))
        elif (twin := next((o for o in bitmaps[:-1] if o.qemu_name == b.qemu_name), None)) is not None:
            # qemu creates the in-memory bitmaps at open and fails on the second one of a name; it reads
            # each name as a C string (g_strndup), so names that differ only after a NUL byte are one
            same = "this name" if twin.name == b.name else (f"the same name up to the first NUL byte "
                                                           f"({_shown(twin.name)}; qemu reads names as C strings)")
            corrupt("bitmap.duplicate_name", f"bitmap {_shown(b.name)} at 0x{entry_offset:x}: another bitmap already has "
                    f"{same}", entry_offset, f"Bitmap already exists: {b.qemu_name}")
    if len(bitmaps) < nb_bitmaps:
        corrupt("bitmap.directory_too_few", f"bitmap directory holds {len(bitmaps)} entries, nb_bitmaps says "
                f"{nb_bitmaps}", dir_offset, "Less bitmaps found than specified in header extension")
    first = next((i for i, f in enumerate(findings) if f.qemu_message), None)
    findings = [f if i == first or not f.qemu_message else replace(f, qemu_message=None)
                for i, f in enumerate(findings)]
    return bitmaps, findings


def _padding(b: Bitmap, raw: bytes, findings: list[Finding]) -> None:
    """Spec "Bitmap directory": the padding to a multiple of 8 after the name: "All bytes of the padding must
    be zero". bitmap_list_load never looks at it."""
    start = 24 + b.extra_data_size + b.name_size
    pad = raw[start:]
    if not pad.strip(b"\0"):
        return
    first = next(i for i, v in enumerate(pad) if v)
    at = b.entry_offset + start
    findings.append(Finding("bitmap.padding_nonzero", Severity.WARNING,
                            f"bitmap {_shown(b.name)}: directory entry padding 0x{at:x}-0x{at + len(pad) - 1:x} after "
                            f"the name is not zero ({pad.hex()}); the spec says all padding bytes must be zero",
                            STRUCTURE, at + first))


def _qemu_refusal(b: Bitmap) -> str:
    if b.extra_data_size:
        return "Bitmap extra data is not supported"
    return f"Bitmap '{b.qemu_name}' doesn't satisfy the constraints"


def _raw_bitmap(index: int, entry_offset: int, raw: bytes) -> Bitmap:
    """An entry the generated parser rejected, with its fields read as the spec lays them out."""
    extra = int.from_bytes(raw[20:24], "big")
    name_size = int.from_bytes(raw[18:20], "big")
    return Bitmap(index=index, entry_offset=entry_offset,
                  name=decode_name(raw[24 + extra:24 + extra + name_size]),
                  table_offset=int.from_bytes(raw[0:8], "big"), table_size=int.from_bytes(raw[8:12], "big"),
                  flags=int.from_bytes(raw[12:16], "big"), type=raw[16], granularity_bits=raw[17],
                  extra_data_size=extra, name_size=name_size)


def bits_needed(disk_size: int, granularity: int) -> int:
    """Bits of a bitmap of ``disk_size`` bytes at ``granularity``: one per granule, the last one partial."""
    return -(-disk_size // granularity)


def entries_needed(disk_size: int, granularity: int, cluster_size: int) -> int:
    """Bitmap table entries (data clusters) a bitmap of ``disk_size`` bytes at ``granularity`` needs: its bits
    rounded up to bytes, then to clusters (spec "Bitmap table"; block/qcow2-bitmap.c
    get_bitmap_bytes_needed). The 2015 draft bitmaps' L1 is sized the same way."""
    return -(-((bits_needed(disk_size, granularity) + 7) // 8) // cluster_size)


def table_entry_invalid(table, cluster_size: int):
    """Which bitmap table entries QEMU refuses (block/qcow2-bitmap.c check_table_entry): reserved bits set,
    or, with a data offset, bit 0 set or the offset not cluster aligned. ``table``: the entries (uint64)."""
    import numpy as np

    from . import tables as T

    offsets = table & T.BME_OFFSET_MASK
    return ((table & T.BME_RESERVED_MASK) != 0) | ((offsets != 0) & (
        ((table & T.BME_ALL_ONES) != 0) | (offsets % np.uint64(cluster_size) != 0)))


def check_dir_entry(h: Header, b: Bitmap) -> str | None:
    """First reason QEMU's check_dir_entry rejects the entry, in words, or None."""
    cs = h.cluster_size
    if b.table_size == 0 or b.table_offset == 0 or b.table_offset % cs:
        return (f"bitmap table offset 0x{b.table_offset:x} / size {b.table_size} invalid "
                "(must be non-zero and cluster aligned)")
    if b.table_size > BME_MAX_TABLE_SIZE:
        return f"bitmap_table_size {b.table_size} exceeds {BME_MAX_TABLE_SIZE}"
    if not BME_MIN_GRANULARITY_BITS <= b.granularity_bits <= BME_MAX_GRANULARITY_BITS:
        return f"granularity_bits {b.granularity_bits} outside 9..31"
    if b.flags & BME_RESERVED_FLAGS:
        return f"reserved flags set: 0x{b.flags & BME_RESERVED_FLAGS:x}"
    if b.name_size > BME_MAX_NAME_SIZE:
        return f"name_size {b.name_size} exceeds {BME_MAX_NAME_SIZE}"
    if b.type != 1:
        return f"type {b.type} is not 1 (dirty tracking)"
    if b.extra_data_size:
        return "extra data present"
    if b.table_size * cs > BME_MAX_PHYS_SIZE:
        return f"bitmap data would take {b.table_size * cs} bytes, over {BME_MAX_PHYS_SIZE}"
    if not b.flags & FLAG_IN_USE:
        needed = entries_needed(h.size, b.granularity, cs)
        if b.table_size < needed:
            return f"bitmap_table_size {b.table_size} is below the {needed} entries the virtual size needs"
    return None


def check_bitmap_tables(h: Header, bitmaps: list[Bitmap], read_table) -> list[Finding]:
    """QEMU loads the table of every bitmap not in use at open and refuses an invalid entry
    (block/qcow2-bitmap.c load_bitmap, bitmap_table_load, check_table_entry)."""
    import numpy as np

    for b in bitmaps:
        if b.flags & FLAG_IN_USE or b.table_size > BME_MAX_TABLE_SIZE:
            continue
        table = read_table(b)
        if not isinstance(table, np.ndarray):
            continue
        bad = table_entry_invalid(table, h.cluster_size)
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            return [Finding("bitmap.table_invalid", Severity.CORRUPTION,
                            f"bitmap {_shown(b.name)} table entry {i} 0x{int(table[i]):016x} is invalid (reserved bits, "
                            f"or bit 0 or misalignment with an offset); {int(bad.sum())} such entries",
                            "bitmap table", b.table_offset + i * 8,
                            qemu_message=f"Could not read bitmap_table table from image for bitmap '{b.qemu_name}': "
                                         "Invalid argument")]
    return []
