"""Dirty bitmaps in the June 2015 draft layout (seed 003), never released by QEMU.

A 12-byte extension 0x23852875 (nb_dirty_bitmaps, offset) points to a
bitmap table of variable-length entries, each with a one-level L1 table whose
entries are standard cluster descriptors.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import kaitaistruct
from kaitaistruct import KaitaiStream

from ..findings import Finding, Severity
from ..formats.draft_dirty_bitmaps import DraftDirtyBitmaps
from .kaitai import decode_name

MAX_BITMAPS = 65535
MAX_ENTRY = 26 + 0xFFFF + 6
STRUCTURE = "dirty bitmap table (2015 draft)"


@dataclass(frozen=True)
class DraftBitmap:
    index: int
    entry_offset: int
    name: str
    l1_table_offset: int
    l1_size: int
    granularity: int
    size_sectors: int


def read_draft_bitmaps(read, file_size: int, count: int, offset: int) -> tuple[list[DraftBitmap], list[Finding]]:
    findings: list[Finding] = []
    if offset >= file_size:
        return [], [Finding("draft_bitmaps.table_past_eof", Severity.CORRUPTION,
                            f"bitmap table at 0x{offset:x} is past the end of the file", STRUCTURE, offset)]
    n = min(count, MAX_BITMAPS)
    io = KaitaiStream(BytesIO(read(offset, min(n * MAX_ENTRY, file_size - offset))))
    out = []
    for i in range(n):
        pos = io.pos()
        try:
            e = DraftDirtyBitmaps.DirtyBitmapTableEntry(io)
        except (EOFError, kaitaistruct.KaitaiStructError):
            findings.append(Finding("draft_bitmaps.table_truncated", Severity.CORRUPTION,
                                    f"bitmap table entry {i} at 0x{offset + pos:x} runs past the end of the file",
                                    STRUCTURE, offset + pos))
            break
        out.append(DraftBitmap(i, offset + pos, decode_name(e.name), e.ofs_l1_table, e.num_l1_entries,
                               e.granularity, e.num_sectors))
    return out, findings
