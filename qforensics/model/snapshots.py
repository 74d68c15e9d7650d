"""The internal snapshot table (spec "Snapshots").

Reference: block/qcow2-snapshot.c qcow2_do_read_snapshots (QEMU 7.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from kaitaistruct import KaitaiStream
from io import BytesIO

import kaitaistruct

from ..findings import Finding, Severity
from ..formats.snapshot_table import SnapshotTable
from .header import QCOW_MAX_SNAPSHOTS, QCOW_SNAPSHOT_HEADER_SIZE, Header
from .kaitai import decode_name, opt

QCOW_MAX_SNAPSHOT_EXTRA_DATA = 1024
QCOW_MAX_SNAPSHOTS_SIZE = 1024 * QCOW_MAX_SNAPSHOTS
MAX_ENTRY_SIZE = QCOW_SNAPSHOT_HEADER_SIZE + QCOW_MAX_SNAPSHOT_EXTRA_DATA + 2 * 0xFFFF + 7
STRUCTURE = "snapshot table"


@dataclass(frozen=True)
class Snapshot:
    """One snapshot table entry, with where it was found."""

    index: int
    entry_offset: int
    id: str
    name: str
    l1_table_offset: int
    l1_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    extra_data_size: int
    entry_size: int
    disk_size: int | None
    icount: int | None

    def to_qemu_json(self) -> dict:
        """The entry as `qemu-img info --output=json` lists it (SnapshotInfo)."""
        out = {
            "id": self.id,
            "name": self.name,
            "vm-state-size": self.vm_state_size,
            "date-sec": self.date_sec,
            "date-nsec": self.date_nsec,
            "vm-clock-sec": self.vm_clock_nsec // 1_000_000_000,
            "vm-clock-nsec": self.vm_clock_nsec % 1_000_000_000,
        }
        if self.icount is not None and self.icount != -1:
            out["icount"] = self.icount
        return out


def read_snapshots(h: Header, read, file_size: int) -> tuple[list[Snapshot], list[Finding]]:
    """Parse nb_snapshots entries at snapshots_offset, bounded by QEMU's limits and the file."""
    findings: list[Finding] = []
    if h.nb_snapshots == 0:
        return [], findings
    count = min(h.nb_snapshots, QCOW_MAX_SNAPSHOTS)
    start = h.snapshots_offset
    # at most what the announced entries can occupy, and never past QEMU's table size limit
    bound = min(QCOW_MAX_SNAPSHOTS_SIZE + 1, count * MAX_ENTRY_SIZE)
    data = read(start, min(bound, max(file_size - start, 0)))
    if len(data) < count * QCOW_SNAPSHOT_HEADER_SIZE:
        findings.append(Finding("snapshot.table_past_eof", Severity.WARNING,
                                f"snapshot table at 0x{start:x} ({h.nb_snapshots} entries) runs past the end of the "
                                f"file (0x{file_size:x}); read as zeros, as QEMU reads it", STRUCTURE, start))
    # QEMU reads zeros past the end of the file; so do we, within its table size limit
    data = data.ljust(bound, b"\0")
    io = KaitaiStream(BytesIO(data))
    out: list[Snapshot] = []
    for i in range(count):
        pos = io.pos()
        if pos > QCOW_MAX_SNAPSHOTS_SIZE:
            findings.append(Finding("snapshot.table_too_big", Severity.CORRUPTION,
                                    f"snapshot table is larger than QEMU's limit of {QCOW_MAX_SNAPSHOTS_SIZE} bytes "
                                    f"at entry {i}", STRUCTURE, start, qemu_message="Snapshot table is too big"))
            break
        extra_size = int.from_bytes(data[pos + 36:pos + 40], "big") if pos + 40 <= len(data) else 0
        if extra_size > QCOW_MAX_SNAPSHOT_EXTRA_DATA:  # checked before the entry is read, as qemu does
            findings.append(Finding("snapshot.extra_data_too_large", Severity.CORRUPTION,
                                    f"snapshot entry {i} has {extra_size} bytes of extra data; QEMU allows "
                                    f"at most {QCOW_MAX_SNAPSHOT_EXTRA_DATA}", STRUCTURE, start + pos,
                                    qemu_message=f"Too much extra metadata in snapshot table entry {i}"))
            break
        try:
            e = SnapshotTable.SnapshotEntry(io)
        except (EOFError, kaitaistruct.KaitaiStructError, ValueError):
            # the buffer holds everything up to QEMU's limit (zeros past EOF): an entry that does not fit
            # crosses the limit
            findings.append(Finding("snapshot.table_too_big", Severity.CORRUPTION,
                                    f"snapshot entry {i} at 0x{start + pos:x} runs past QEMU's snapshot table limit of "
                                    f"{QCOW_MAX_SNAPSHOTS_SIZE} bytes", STRUCTURE, start + pos,
                                    qemu_message="Snapshot table is too big"))
            break
        extra = e.extra_data
        large = opt(extra, "len_vm_state")
        vm_state = large if large is not None else e.len_vm_state_small
        snap = Snapshot(
            index=i, entry_offset=start + pos, id=decode_name(e.id), name=decode_name(e.name),
            l1_table_offset=e.ofs_l1_table, l1_size=e.num_l1_entries, date_sec=e.date_sec, date_nsec=e.date_nsec,
            vm_clock_nsec=e.vm_clock_nsec, vm_state_size=vm_state, extra_data_size=e.len_extra_data,
            entry_size=io.pos() - pos,
            disk_size=opt(extra, "len_virtual_disk"), icount=opt(extra, "icount"),
        )
        out.append(snap)
        if h.version >= 3 and e.len_extra_data < 16:
            findings.append(Finding("snapshot.extra_data_incomplete", Severity.CORRUPTION,
                                    f"snapshot entry {i} has {e.len_extra_data} bytes of extra data; version 3 "
                                    "requires at least 16 (vm_state_size_large and disk_size)",
                                    STRUCTURE, snap.entry_offset))
    return out, findings
