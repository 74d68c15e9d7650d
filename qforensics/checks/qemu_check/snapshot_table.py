"""The snapshot table as `qemu-img check` reads and counts it.

Reference: block/qcow2-snapshot.c (QEMU 7.2) qcow2_check_read_snapshot_table (a table qemu cannot
read ends its check: "Check failed", no numbers), and block/qcow2-refcount.c calculate_refcounts, its
checks of each snapshot entry before the snapshot's L1 table is walked. Spec (docs/interop/qcow2.txt)
"Snapshots".
"""

from __future__ import annotations

from ...findings import Severity
from ...model.qcow2_header import QCOW_MAX_L1_SIZE, QCOW_MAX_SNAPSHOTS, _table_offset_invalid
from ...text import clip
from .imrt import CheckRun


def hash_x(v: int) -> str:
    """C's %#x: 0 prints as 0, others with 0x."""
    return f"{v:#x}" if v else "0"


def check_snapshot_table(run: CheckRun) -> bool:
    """The parts of qcow2_check_read_snapshot_table that add to the counters."""
    img, h = run.img, run.img.header
    if h.nb_snapshots > QCOW_MAX_SNAPSHOTS:
        run.add("snapshot.table_too_large", Severity.CORRUPTION, f"nb_snapshots {h.nb_snapshots} exceeds "
                f"{QCOW_MAX_SNAPSHOTS}", "snapshot table", h.snapshots_offset, "ERROR snapshot table too large",
                counts="check-errors")
        run.stats.check_failed = "Check failed: File too large"  # qcow2_validate_table: -EFBIG
        return False
    if _table_offset_invalid(h.snapshots_offset, h.nb_snapshots * 40, run.cs):
        run.add("snapshot.table_offset_invalid", Severity.CORRUPTION, f"snapshots_offset 0x{h.snapshots_offset:x} "
                "is invalid", "snapshot table", h.snapshots_offset, "ERROR snapshot table offset invalid",
                counts="check-errors")
        run.stats.check_failed = "Check failed: Invalid argument"  # -EINVAL
        return False
    for f in img.findings:
        if f.code in ("snapshot.extra_data_too_large", "snapshot.table_too_big"):
            run.add(f.code, Severity.CORRUPTION, f.message, f.structure, f.host_offset,
                    f"ERROR failed to read the snapshot table: {f.qemu_message}", counts="check-errors")
            run.stats.check_failed = "Check failed: File too large"  # qcow2_do_read_snapshots: -EFBIG
            return False
    for s in img.snapshots:
        if h.version >= 3 and s.extra_data_size < 16:
            run.add("snapshot.extra_data_incomplete", Severity.CORRUPTION, f"snapshot entry {s.index} has "
                    f"{s.extra_data_size} bytes of extra data; version 3 requires 16", "snapshot table",
                    s.entry_offset, f"ERROR snapshot table entry {s.index} is incomplete")
    return True


def check_snapshot_entries(run: CheckRun) -> None:
    """calculate_refcounts on the snapshots, before their L1 tables are walked: none with a data file,
    and each entry's L1 table aligned and not too large."""
    img, h = run.img, run.img.header
    if h.has_data_file and h.nb_snapshots:
        run.add("snapshot.with_data_file", Severity.CORRUPTION, f"{h.nb_snapshots} snapshots in an image with an "
                "external data file", "snapshot table", h.snapshots_offset,
                f"ERROR {h.nb_snapshots} snapshots in image with data file")
    for s in img.snapshots:
        label = f"snapshot {clip(s.id)} ({clip(s.name)})"
        if s.l1_table_offset % run.cs:
            run.add("snapshot.l1_unaligned", Severity.CORRUPTION, f"{label}: L1 table offset "
                    f"0x{s.l1_table_offset:x} is not cluster aligned", "snapshot table", s.entry_offset,
                    f"ERROR snapshot {s.id} ({s.name}) l1_offset={hash_x(s.l1_table_offset)}: L1 table is not "
                    "cluster aligned; snapshot table entry corrupted")
        elif s.l1_size > QCOW_MAX_L1_SIZE // 8:
            run.add("snapshot.l1_too_large", Severity.CORRUPTION, f"{label}: l1_size {s.l1_size} exceeds "
                    f"{QCOW_MAX_L1_SIZE // 8}", "snapshot table", s.entry_offset,
                    f"ERROR snapshot {s.id} ({s.name}) l1_size={hash_x(s.l1_size)}: L1 table is too large; "
                    "snapshot table entry corrupted")
