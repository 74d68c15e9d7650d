"""The internal snapshot table (spec "Snapshots").

Reference: block/qcow2-snapshot.c qcow2_do_read_snapshots (QEMU 7.2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import UsageError
from ..findings import Finding, Severity
from .qcow2_header import QCOW_MAX_SNAPSHOTS, QCOW_SNAPSHOT_HEADER_SIZE, Header
from .kaitai import decode_name

QCOW_MAX_SNAPSHOT_EXTRA_DATA = 1024
QCOW_MAX_SNAPSHOTS_SIZE = 1024 * QCOW_MAX_SNAPSHOTS
MAX_ENTRY_SIZE = QCOW_SNAPSHOT_HEADER_SIZE + QCOW_MAX_SNAPSHOT_EXTRA_DATA + 2 * 0xFFFF + 7
STRUCTURE = "snapshot table"
MAX_LISTED = 100  # entries of one kind of fault listed one by one; the rest are one finding (its repeat)
# the fixed part of an entry (ksy/snapshot_table.ksy snapshot_entry, up to extra_data); read with struct
# rather than the generated parser because a table may hold 65536 entries (tests/test_snapshot_parse.py
# compares the two on every corpus image with snapshots)
_FIXED = struct.Struct(">QIHHIIQII")
_U64 = struct.Struct(">Q")
_S64 = struct.Struct(">q")


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
    out: list[Snapshot] = []
    pos = 0
    incomplete = 0
    for i in range(count):
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
        e = _entry(data, pos)
        if e is None:
            # the buffer holds everything up to QEMU's limit (zeros past EOF): an entry that does not fit
            # crosses the limit
            findings.append(Finding("snapshot.table_too_big", Severity.CORRUPTION,
                                    f"snapshot entry {i} at 0x{start + pos:x} runs past QEMU's snapshot table limit of "
                                    f"{QCOW_MAX_SNAPSHOTS_SIZE} bytes", STRUCTURE, start + pos,
                                    qemu_message="Snapshot table is too big"))
            break
        l1_offset, l1_size, id_size, name_size, date_sec, date_nsec, vm_clock, vm_state, extra_size, end = e
        at = pos + QCOW_SNAPSHOT_HEADER_SIZE
        large = _U64.unpack_from(data, at)[0] if extra_size >= 8 else None
        at_id = at + extra_size
        snap = Snapshot(
            index=i, entry_offset=start + pos, id=decode_name(data[at_id:at_id + id_size]),
            name=decode_name(data[at_id + id_size:at_id + id_size + name_size]),
            l1_table_offset=l1_offset, l1_size=l1_size, date_sec=date_sec, date_nsec=date_nsec,
            vm_clock_nsec=vm_clock, vm_state_size=large if large is not None else vm_state,
            extra_data_size=extra_size, entry_size=end - pos,
            disk_size=_U64.unpack_from(data, at + 8)[0] if extra_size >= 16 else None,
            icount=_S64.unpack_from(data, at + 16)[0] if extra_size >= 24 else None,
        )
        out.append(snap)
        pos = end
        if h.version >= 3 and extra_size < 16 and (incomplete := incomplete + 1) <= MAX_LISTED:
            findings.append(Finding("snapshot.extra_data_incomplete", Severity.CORRUPTION,
                                    f"snapshot entry {i} has {extra_size} bytes of extra data; version 3 "
                                    "requires at least 16 (vm_state_size_large and disk_size)",
                                    STRUCTURE, snap.entry_offset))
    if incomplete > MAX_LISTED:
        more = incomplete - MAX_LISTED
        findings.append(Finding("snapshot.extra_data_incomplete.more", Severity.CORRUPTION,
                                f"{more} more snapshot entries have under 16 bytes of extra data (not listed)",
                                STRUCTURE, start, repeat=more))
    return out, findings


def _entry(data: bytes, pos: int) -> tuple | None:
    """The fixed fields of the entry at ``pos`` and where it ends (padded to 8 bytes), or None when the
    entry does not fit in ``data`` (spec "Snapshots": header, extra data, id, name, padding)."""
    if pos + QCOW_SNAPSHOT_HEADER_SIZE > len(data):
        return None
    fields = _FIXED.unpack_from(data, pos)
    size = QCOW_SNAPSHOT_HEADER_SIZE + fields[8] + fields[2] + fields[3]
    end = pos + size + (8 - size % 8) % 8
    return None if end > len(data) else (*fields, end)


MAX_FALLBACK_SNAPSHOTS = 64  # the newest distinct snapshot L1 tables recover consults for a damaged range


def find_snapshot(snapshots: list[Snapshot], wanted: str) -> Snapshot:
    """The snapshot named by ``wanted``: its id first, then its name (as qemu-img's -l does)."""
    for key in ("id", "name"):
        hits = [s for s in snapshots if getattr(s, key) == wanted]
        if hits:
            return hits[0]
    names = ", ".join(f"{s.id} ({s.name})" for s in snapshots) or "none"
    raise UsageError(f"snapshot table: no snapshot with id or name {wanted!r} (snapshots: {names})")


def distinct_snapshots(snapshots: list[Snapshot], skip_id: str | None = None,
                       limit: int = MAX_FALLBACK_SNAPSHOTS) -> list[Snapshot]:
    """The newest snapshots with distinct L1 tables (same offset and size: one view), at most ``limit``."""
    out, seen = [], set()
    for snap in reversed(snapshots):
        key = (snap.l1_table_offset, snap.l1_size)
        if snap.id == skip_id or key in seen:
            continue
        seen.add(key)
        out.append(snap)
        if len(out) >= limit:
            break
    return out
