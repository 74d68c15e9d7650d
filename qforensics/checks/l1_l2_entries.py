"""L2 entry rules qemu-img check does not apply (beyond qemu).

- the zero flag (bit 0) in a version 2 image: qemu only trips over it at run time
  ("Zero cluster entry found in pre-v3 image");
- descriptor bit 0 with extended L2, which the spec leaves unused and qemu ignores
  (iotest 271 leaves it as a TODO);
- zero bits on unallocated extended entries: legal (the subclusters read as zeros
  over any backing file), reported for information;
- with an external data file, a host offset that differs from the guest offset
  (spec "External data file"; qemu only notices at run time);
- OFLAG_COPIED (bit 63) on an entry with host offset 0 that is not compressed: an
  unallocated entry or a zero cluster without allocation. The spec ("Standard Cluster
  Descriptor") allows offset 0 with bit 63 only with an external data file, where it
  means host offset 0; qemu reads the entry as unallocated (or ZERO_PLAIN) and its
  check_oflag_copied looks only at NORMAL and ZERO_ALLOC entries.
"""

from __future__ import annotations

import numpy as np

from ..findings import Finding, Listing, Severity
from ..model import Image
from ..model import tables as T
from ..model.image import L1Group, L1References

MAX_PER_TABLE = 64  # entries listed per L2 table and code; the rest of the table in one ".more" finding
MAX_LISTED = 10_000  # findings listed per code in the whole image; past it the rest are only counted
COPIED_UNALLOCATED = "l2.copied_unallocated"
# bit 63 set, bit 62 (compressed) clear, host offset 0: what the COPIED rule looks for, in one mask and compare
_COPIED_NO_OFFSET_MASK = T.OFLAG_COPIED | T.OFLAG_COMPRESSED | T.L2E_OFFSET_MASK


class EntryRules:
    """The rules, judged on L2 batches another walk reads (``batch``), and ``finish`` for the findings.

    Each table is judged once, under the owner that names it first (the active L1, then the snapshot L1s
    walked, in the order of ``groups``: ``img.l1_groups()``), in that order. Tables past the end of the file
    read as zeros, where no rule applies. The refcount walk hands on most of them: not those past its budget
    of L2 tables, nor the snapshots' when qemu's check stops at the snapshot table; those are read here, in
    their place, so the findings come in the same order either way.
    """

    def __init__(self, img: Image, groups: list[L1Group], active_l1: L1References | None = None) -> None:
        h = img.header
        self.img = img
        # the rules judged table by table; otherwise only the COPIED rule applies (every image without an
        # external data file), and a batch is judged in one pass, its tables singled out only where an entry
        # breaks it
        self.per_table = h.version < 3 or h.extended_l2 or h.has_data_file
        self.out: list[Finding] = []
        self.listing = Listing(MAX_LISTED)
        self.tables: list[tuple[int, str, int]] = []  # (L2 offset, owner, first L1 index), in judging order
        self.position: dict[int, int] = {}
        for k, group in enumerate(groups):
            if not group.walked:
                continue  # past the budget of L1 entries (check says so)
            distinct, first, _ = img.l2_references(group.offset, group.entries, active_l1 if k == 0 else None)
            owner = group.owners[0]
            for o, i in zip(distinct.tolist(), first.tolist(), strict=True):
                if o not in self.position and o < img.file.size:
                    self.position[o] = len(self.tables)
                    self.tables.append((o, owner, i))
        self.next = 0  # the tables before it are judged

    def batch(self, offsets: list[int], desc: np.ndarray, bitmap: np.ndarray | None) -> None:
        """Judge the tables of a batch not judged yet (first those before them that were not handed on)."""
        position, rows = self.position, []
        for r, o in enumerate(offsets):
            p = position.get(o, -1)
            if p < self.next:
                continue  # not one of ours (unaligned, past the file), or judged already
            if p > self.next:
                self._judge(offsets, desc, bitmap, rows)
                rows = []
                self._read(p)
            rows.append(r)
            self.next = p + 1
        self._judge(offsets, desc, bitmap, rows)

    def finish(self) -> list[Finding]:
        self._read(len(self.tables))
        return self.out + self.listing.summaries()

    def _read(self, end: int) -> None:
        """Read and judge the tables from ``next`` to ``end``, which no batch handed on."""
        if end > self.next:
            todo = [t[0] for t in self.tables[self.next:end]]
            self.next = end
            for offsets, desc, bitmap in self.img.l2_batches(todo):
                self._judge(offsets, desc, bitmap, range(len(offsets)))

    def _judge(self, offsets: list[int], desc: np.ndarray, bitmap: np.ndarray | None, rows) -> None:
        if not len(rows):
            return
        listing = self.listing
        hits = None
        if not self.per_table:
            hits = np.count_nonzero((desc & _COPIED_NO_OFFSET_MASK) == T.OFLAG_COPIED, axis=1)
            sel = np.asarray(rows)
            rows = (np.flatnonzero(hits) if sel.size == len(offsets) else sel[hits[sel] != 0]).tolist()
        for k, r in enumerate(rows):
            if hits is not None and not listing.room(COPIED_UNALLOCATED):
                listing.drop(COPIED_UNALLOCATED, int(hits[rows[k:]].sum()))  # counted in bulk, not listed
                break
            l2_offset, owner, l1_index = self.tables[self.position[offsets[r]]]
            self.out += _l2_rules(self.img, owner, l1_index, l2_offset, desc[r],
                                  None if bitmap is None else bitmap[r], listing)


def _l2_rules(img: Image, owner: str, l1_index: int, l2_offset: int, desc: np.ndarray,
              bitmap: np.ndarray | None, listing: Listing) -> list[Finding]:
    h = img.header
    out: list[Finding] = []
    where = f"{owner} L2 table at 0x{l2_offset:x}"
    esize = h.l2_entry_size
    d = T.Descriptors(desc, h.has_data_file)
    compressed, offsets = d.compressed, d.offset

    def report(code: str, severity: Severity, idx: np.ndarray, text) -> None:
        shown = idx[:min(MAX_PER_TABLE, listing.room(code))].tolist()
        for i in shown:
            guest = (l1_index * h.l2_entries + i) * h.cluster_size
            out.append(Finding(code, severity, text(i), where, l2_offset + i * esize, guest))
        listing.add(code, len(shown))
        rest = len(idx) - len(shown)
        if rest and len(shown) == MAX_PER_TABLE and listing.room(code):  # cut by the table's cap: said here
            out.append(Finding(code + ".more", Severity.INFO, f"{rest} more entries of this table like this ({code}), "
                               "not listed", where, l2_offset + int(idx[MAX_PER_TABLE]) * esize, repeat=rest))
            listing.add(code, 1)
        else:  # past the image's cap: counted in the image's ".more"
            listing.drop(code, rest)

    if h.version < 3:
        report("l2.zero_flag_in_v2", Severity.WARNING, np.nonzero(d.zero)[0],
               lambda i: f"L2 entry {i} has the zero flag, which version 2 does not have (QEMU: 'Zero cluster "
                         "entry found in pre-v3 image')")
    if bitmap is not None:
        report("l2.extended_zero_flag", Severity.WARNING, np.nonzero(d.zero)[0],
               lambda i: f"L2 entry {i} has descriptor bit 0 set; with extended L2 it is unused (zero bits are "
                         "in the subcluster bitmap)")
        unallocated = ~compressed & (offsets == 0)
        zero_bits = np.nonzero(unallocated & T.any_zero(bitmap))[0]
        report("l2.unallocated_zero_bits", Severity.INFO, zero_bits,
               lambda i: f"unallocated L2 entry {i} marks subclusters 0x{int(bitmap[i]) >> 32:08x} as reading "
                         "zeros (over any backing file)")
    if not h.has_data_file:
        # with a data file, offset 0 with bit 63 is host offset 0 (qcow2_get_cluster_type: NORMAL, or ZERO_ALLOC
        # in all but name when bit 0 is set too), so the rule applies only without one
        copied = np.nonzero((desc & _COPIED_NO_OFFSET_MASK) == T.OFLAG_COPIED)[0]
        report(COPIED_UNALLOCATED, Severity.WARNING, copied,
               lambda i: f"L2 entry {i} (0x{int(desc[i]):016x}) has OFLAG_COPIED (bit 63) set with host offset 0: "
                         + ("a zero cluster without allocation" if int(desc[i]) & 1 and bitmap is None
                            else "an unallocated cluster")
                         + "; the spec allows offset 0 with bit 63 only with an external data file (bit 63 means "
                           "a refcount of exactly one, which only an allocated cluster has)")
    if h.has_data_file:
        allocated = d.allocated
        guest = (np.arange(len(desc), dtype=np.uint64) + np.uint64(l1_index * h.l2_entries)) * \
            np.uint64(h.cluster_size)
        report("datafile.offset_mismatch", Severity.WARNING, np.nonzero(allocated & (offsets != guest))[0],
               lambda i: f"L2 entry {i} maps guest 0x{int(guest[i]):x} to data file offset 0x{int(offsets[i]):x}; "
                         "with an external data file they must be equal")
    return out
