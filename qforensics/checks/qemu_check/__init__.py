"""`qemu-img check` without repair: its refcount consistency check, OFLAG_COPIED and L1/L2 entry rules.

Reference: block/qcow2.c (QEMU 7.2) qcow2_co_check_locked and block/qcow2-refcount.c
qcow2_check_refcounts / calculate_refcounts, whose phases ``RefcountCheck`` runs in qemu's order,
one module a phase: ``snapshot_table`` (block/qcow2-snapshot.c qcow2_check_read_snapshot_table, and
calculate_refcounts' checks of the snapshot entries), ``l1_l2`` (check_refcounts_l1/l2,
check_oflag_copied), ``bitmaps`` (block/qcow2-bitmap.c qcow2_check_bitmaps_refcounts), ``refblocks``
(check_refblocks, compare_refcounts, and beyond qemu the refcounts past the end of the file); ``imrt``
holds the in-memory refcount table they share. Spec (docs/interop/qcow2.txt) "Host cluster
management". Each finding carries the line qemu prints (`qemu_check`) and the counter it adds to
(`qemu_counts`).

References are counted in a numpy array (the in-memory refcount table).
QEMU walks an L2 table once for every L1 entry that names it, and a snapshot's
L1 once for every snapshot entry; here each distinct L2 table is read once,
across the active walk and across all snapshot walks, and its references and
findings are multiplied (the counters stay qemu's to the unit).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ...findings import Finding
from ...model import Image
from ...model.image import L1Group, L1References
from .bitmaps import check_bitmaps
from .imrt import CheckRun, Stats
from .l1_l2 import L2Batch, walk
from .refblocks import check_refblocks, compare_refcounts, refcounts_past_eof
from .snapshot_table import check_snapshot_entries, check_snapshot_table

__all__ = ["L2Batch", "RefcountCheck", "Stats"]


@dataclass
class RefcountCheck:
    """qcow2_co_check_locked without repair, in three phases the caller drives: ``start`` (the snapshot
    table and the header), ``l2_batches`` (the L1 and L2 walks, active then snapshots, yielding each batch
    of L2 tables once checked, for the caller to hand to its other consumers), ``finish`` (the rest).

    ``groups`` are ``Image.l1_groups()``, ``active_l1`` the active L1's ``Image.l1_references`` (or None),
    both worked out once by the caller for every consumer.
    """

    run: CheckRun
    groups: list[L1Group]
    active_l1: L1References | None
    snapshots_ok: bool

    @classmethod
    def start(cls, img: Image, groups: list[L1Group], active_l1: L1References | None = None) -> RefcountCheck:
        run = CheckRun(img)
        h = img.header
        run.stats.total_clusters = -(-(-(-h.size // 512) * 512) // run.cs)
        # qcow2_check_read_snapshot_table: a bad table ends qemu's check; ours goes on without the snapshots
        snapshots_ok = check_snapshot_table(run)
        run.qemu_stopped = not snapshots_ok
        # calculate_refcounts: the header, the active L1 (with check_oflag_copied), the snapshots, ...
        run.inc_range(0, run.cs, "header")
        return cls(run, groups, active_l1, snapshots_ok)

    def l2_batches(self) -> Iterator[L2Batch]:
        run, img = self.run, self.run.img
        yield from walk(run, self.groups[:1], active=True, active_l1=self.active_l1)
        if self.snapshots_ok:
            check_snapshot_entries(run)
            yield from walk(run, self.groups[1:], active=False)
            if img.snapshots:
                last = img.snapshots[-1]
                run.inc_range(img.header.snapshots_offset,
                              last.entry_offset + last.entry_size - img.header.snapshots_offset, "snapshot table")

    def finish(self) -> tuple[list[Finding], Stats]:
        """Every qemu check finding, and qemu's statistics."""
        run, img = self.run, self.run.img
        h = img.header
        run.inc_range(h.refcount_table_offset, h.refcount_table_clusters * run.cs, "refcount table")
        if img.luks is not None:
            run.inc_range(img.luks.offset, img.luks.length, "LUKS header")
        check_bitmaps(run)
        check_refblocks(run)
        # qcow2_check_refcounts, after calculate_refcounts
        compare_refcounts(run)
        run.qemu_stopped = True
        refcounts_past_eof(run)
        run.findings += run.listing.summaries()
        return run.findings, run.stats

