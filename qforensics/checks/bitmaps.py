"""Rules on the bitmap directory and tables that qemu-img check does not apply (beyond qemu).

References: docs/interop/qcow2.txt "Bitmaps"; block/qcow2-bitmap.c check_dir_entry (qemu applies it only at
load).
"""

from __future__ import annotations


import numpy as np

from ..findings import Finding, Severity
from ..model import Image, Unreadable
from ..model import tables as T
from ..model.bitmaps import FLAG_IN_USE, bits_needed, entries_needed
from ..text import clip


def check_bitmap_rules(img: Image) -> list[Finding]:
    h = img.header
    out: list[Finding] = []
    for b in img.bitmaps:
        if b.flags & FLAG_IN_USE:
            out.append(Finding("bitmap.in_use", Severity.WARNING, f"bitmap '{clip(b.name)}' has the in_use flag: it was "
                               "not saved cleanly and is inconsistent", "bitmap directory", b.entry_offset))
        if not 0 <= b.granularity_bits < 64:
            continue
        needed = entries_needed(h.size, b.granularity, h.cluster_size)
        if b.table_size != needed:
            out.append(Finding("bitmap.table_size", Severity.WARNING,
                               f"bitmap '{clip(b.name)}' table has {b.table_size} entries; the virtual size {h.size} at "
                               f"granularity {b.granularity} needs {needed}", "bitmap directory", b.entry_offset))
            continue
        out += _tail_bits(img, b, bits_needed(h.size, b.granularity))
    return out


def _tail_bits(img: Image, b, bits: int) -> list[Finding]:
    """Bits past the end of the disk in the last bitmap cluster must be zero (spec "Bitmap table")."""
    cs = img.header.cluster_size
    tail_start = bits - (b.table_size - 1) * cs * 8  # bits used in the last cluster
    if b.table_size == 0 or tail_start >= cs * 8:
        return []
    table = img.bitmap_table(b)
    if isinstance(table, Unreadable) or len(table) < b.table_size:
        return []
    last = int(table[b.table_size - 1])
    offset = last & int(T.BME_OFFSET_MASK)
    if offset == 0:
        bad = bool(last & 1)  # an all-ones cluster sets the tail bits too
    else:
        data = np.frombuffer(img.file.read(offset, cs).ljust(cs, b"\0"), dtype=np.uint8)
        used_bytes, used_bits = divmod(tail_start, 8)
        bad = bool(data[used_bytes + (1 if used_bits else 0):].any()) or (
            used_bits and bool(data[used_bytes] >> used_bits))
    if not bad:
        return []
    return [Finding("bitmap.tail_bits", Severity.WARNING, f"bitmap '{clip(b.name)}' sets bits past the end of the disk in "
                    "its last cluster; they must be zero", "bitmap table", b.table_offset + (b.table_size - 1) * 8)]
