"""L2 entry rules qemu-img check does not apply (beyond qemu).

- the zero flag (bit 0) in a version 2 image: qemu only trips over it at run time
  ("Zero cluster entry found in pre-v3 image");
- descriptor bit 0 with extended L2, which the spec leaves unused and qemu ignores
  (iotest 271 leaves it as a TODO);
- zero bits on unallocated extended entries: legal (the subclusters read as zeros
  over any backing file), reported for information;
- with an external data file, a host offset that differs from the guest offset
  (spec "External data file"; qemu only notices at run time).
"""

from __future__ import annotations

import numpy as np

from ..findings import Finding, Severity
from ..model import Image
from ..model import tables as T

MAX_PER_TABLE = 64


def check_entries(img: Image) -> list[Finding]:
    h = img.header
    if h.version >= 3 and not h.extended_l2 and not h.has_data_file:
        return []  # none of these rules can apply: no need to read the L2 tables again
    out: list[Finding] = []
    seen: set[int] = set()
    for group in img.l1_groups():
        if not group.walked:
            continue  # past the budget of L1 entries (check says so)
        distinct, first, _ = img.l2_references(group.offset, group.entries)
        # tables another owner named first are judged once, under that owner; past the end of the file
        # a table reads as zeros, where no rule applies
        new = {o: i for o, i in zip(distinct.tolist(), first.tolist(), strict=True)
               if o not in seen and o < img.file.size}
        seen |= new.keys()
        owner = group.owners[0]
        for offsets, desc, bitmap in img.l2_batches(list(new)):
            for r, l2_offset in enumerate(offsets):
                out += _l2_rules(img, owner, new[l2_offset], l2_offset, desc[r], None if bitmap is None else bitmap[r])
    return out


def _l2_rules(img: Image, owner: str, l1_index: int, l2_offset: int, desc: np.ndarray,
              bitmap: np.ndarray | None) -> list[Finding]:
    h = img.header
    out: list[Finding] = []
    where = f"{owner} L2 table at 0x{l2_offset:x}"
    esize = h.l2_entry_size
    compressed = (desc & T.OFLAG_COMPRESSED) != 0
    offsets = desc & T.L2E_OFFSET_MASK
    zero_flag = ~compressed & ((desc & T.OFLAG_ZERO) != 0)

    def report(code: str, severity: Severity, idx: np.ndarray, text) -> None:
        for i in idx[:MAX_PER_TABLE].tolist():
            guest = (l1_index * h.l2_entries + i) * h.cluster_size
            out.append(Finding(code, severity, text(i), where, l2_offset + i * esize, guest))
        if len(idx) > MAX_PER_TABLE:
            out.append(Finding(code + ".more", Severity.INFO, f"{len(idx) - MAX_PER_TABLE} more entries like this",
                               where, l2_offset))

    if h.version < 3:
        report("l2.zero_flag_in_v2", Severity.WARNING, np.nonzero(zero_flag)[0],
               lambda i: f"L2 entry {i} has the zero flag, which version 2 does not have (QEMU: 'Zero cluster "
                         "entry found in pre-v3 image')")
    if bitmap is not None:
        report("l2.extended_zero_flag", Severity.WARNING, np.nonzero(zero_flag)[0],
               lambda i: f"L2 entry {i} has descriptor bit 0 set; with extended L2 it is unused (zero bits are "
                         "in the subcluster bitmap)")
        unallocated = ~compressed & (offsets == 0)
        zero_bits = np.nonzero(unallocated & ((bitmap >> np.uint64(32)) != 0))[0]
        report("l2.unallocated_zero_bits", Severity.INFO, zero_bits,
               lambda i: f"unallocated L2 entry {i} marks subclusters 0x{int(bitmap[i]) >> 32:08x} as reading "
                         "zeros (over any backing file)")
    if h.has_data_file:
        allocated = ~compressed & ((offsets != 0) | ((desc & T.OFLAG_COPIED) != 0))
        guest = (np.arange(len(desc), dtype=np.uint64) + np.uint64(l1_index * h.l2_entries)) * \
            np.uint64(h.cluster_size)
        report("datafile.offset_mismatch", Severity.WARNING, np.nonzero(allocated & (offsets != guest))[0],
               lambda i: f"L2 entry {i} maps guest 0x{int(guest[i]):x} to data file offset 0x{int(offsets[i]):x}; "
                         "with an external data file they must be equal")
    return out
