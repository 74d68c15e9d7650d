"""The bitmaps' share of `qemu-img check`'s references.

Reference: block/qcow2-bitmap.c (QEMU 7.2) qcow2_check_bitmaps_refcounts: the bitmap directory, each
bitmap's table and the data clusters its entries name. Spec (docs/interop/qcow2.txt) "Bitmaps",
"Bitmap directory", "Bitmap table".
"""

from __future__ import annotations

from ...findings import Severity
from ...model import Unreadable
from ...model import tables as T
from ...model.bitmaps import table_entry_invalid
from ...text import clip
from .imrt import CheckRun, capped


def check_bitmaps(run: CheckRun) -> None:
    """qcow2_check_bitmaps_refcounts: only when the extension is valid and autoclear bit 0 is set."""
    img = run.img
    ext = img.bitmaps_extension
    if ext is None or not img.header.autoclear_features & 1 or not ext.nb_bitmaps:
        return
    run.inc_range(ext.bitmap_directory_offset, ext.bitmap_directory_size, "bitmap directory")
    for b in img.bitmaps:
        name = clip(b.name)
        run.inc_range(b.table_offset, b.table_size * 8, f"bitmap {name} table")
        table = img.bitmap_table(b)
        if isinstance(table, Unreadable):
            run.add("bitmap.table_unreadable", Severity.CORRUPTION, f"bitmap '{name}' table: {table.reason}",
                    "bitmap table", b.table_offset, None)
            continue
        offsets = table & T.BME_OFFSET_MASK
        bad = table_entry_invalid(table, run.cs)
        for i in capped(run, "bitmap.table_entry_invalid", bad):
            run.add("bitmap.table_entry_invalid", Severity.CORRUPTION, f"bitmap '{name}' table entry {i} "
                    f"0x{int(table[i]):016x} is invalid (reserved bits, or bit 0 / misalignment with an offset)",
                    "bitmap table", b.table_offset + i * 8, None)
        good = offsets[~bad & (offsets != 0)]
        run.inc_clusters(good, run.cs, f"bitmap {name} data")
