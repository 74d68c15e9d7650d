"""Rules on the snapshot table that qemu-img check does not apply (beyond qemu).

References: docs/interop/qcow2.txt "Snapshots".
"""

from __future__ import annotations

from collections import Counter


from ..findings import Finding, Severity
from ..model import Image
from ..text import MAX_SHOWN, clip


def check_snapshot_rules(img: Image) -> list[Finding]:
    h = img.header
    out: list[Finding] = []
    for what, values in (("id", [s.id for s in img.snapshots]), ("name", [s.name for s in img.snapshots])):
        for value, n in Counter(values).items():
            if n > 1:
                first = next(s for s in img.snapshots if getattr(s, what) == value)
                out.append(Finding(f"snapshot.duplicate_{what}", Severity.WARNING,
                                   f"{n} snapshots share the {what} "
                                   f"{repr(value) if len(value) <= MAX_SHOWN else clip(value)}", "snapshot table",
                                   first.entry_offset))
    span = h.cluster_size * h.l2_entries
    for s in img.snapshots:
        if s.disk_size is not None and s.l1_size < -(-s.disk_size // span):
            out.append(Finding("snapshot.l1_too_small", Severity.WARNING,
                               f"snapshot {clip(s.id)} ({clip(s.name)}): l1_size {s.l1_size} cannot map its disk_size "
                               f"{s.disk_size} (needs {-(-s.disk_size // span)} entries)", "snapshot table",
                               s.entry_offset))
        if s.l1_size and s.l1_table_offset + s.l1_size * 8 > img.file.size:
            out.append(Finding("snapshot.l1_past_eof", Severity.WARNING,
                               f"snapshot {clip(s.id)} ({clip(s.name)}): L1 table 0x{s.l1_table_offset:x} "
                               f"({s.l1_size} entries) runs past the end of the file (0x{img.file.size:x})",
                               "snapshot table",
                               s.entry_offset))
    return out
