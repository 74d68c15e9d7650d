"""The deduplication table of the 2012-2013 draft (seed 000), which QEMU never merged: each entry's
SHA-256 and logical offset checked against the cluster it describes. Interpretations: docs/drafts.md.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..findings import Finding, Listing, Severity
from ..model import Image, Unreadable
from ..model import tables as T
from ..model.dedup_table import ENTRY_SIZE, dedup_entries

MAX_PER_CODE = 1000


def guest_to_host(img: Image, guest: np.ndarray) -> np.ndarray:
    """Host cluster offset of each guest offset through the active L1/L2 (0 when unmapped or compressed)."""
    h = img.header
    out = np.zeros(guest.shape, dtype=np.uint64)
    l1 = img.l1_table()
    if isinstance(l1, Unreadable) or guest.size == 0:
        return out
    cluster = guest // np.uint64(h.cluster_size)
    l1_index = (cluster // np.uint64(h.l2_entries)).astype(np.int64)
    l2_index = (cluster % np.uint64(h.l2_entries)).astype(np.int64)
    for i in np.unique(l1_index).tolist():
        if i >= len(l1):
            continue
        l2_offset = int(l1[i] & T.L1E_OFFSET_MASK)
        table = img.l2_table(l2_offset) if l2_offset else Unreadable("unallocated")
        if isinstance(table, Unreadable):
            continue
        sel = l1_index == i
        desc = table[0][l2_index[sel]]
        out[sel] = T.Descriptors(desc, False).host()
    return out


def check_dedup(img: Image) -> list[Finding]:
    """Every dedup entry: hash = SHA-256 of its physical cluster, logical offset maps back to it."""
    d = img.dedup_table
    if d is None:
        return []
    h = img.header
    cs, per = h.cluster_size, d.entries_per_cluster
    nclusters = -(-img.file.size // cs)
    out: list[Finding] = []
    where = "deduplication table"
    digests: dict[int, bytes] = {}

    def digest(host: int) -> bytes:
        """SHA-256 of one host cluster, each read once."""
        if host not in digests:
            digests[host] = hashlib.sha256(img.file.read(host, cs).ljust(cs, b"\0")).digest()
        return digests[host]

    if len(d.l1) * per < nclusters:
        out.append(Finding("dedup.table_too_small", Severity.WARNING,
                           f"the dedup table covers {len(d.l1) * per} physical clusters; the file has {nclusters}",
                           where, d.l1_offset))
    for i, l2 in enumerate(d.l1.tolist()):
        if not l2:
            continue
        if l2 % cs or l2 + cs > img.file.size:
            out.append(Finding("dedup.l2_invalid", Severity.WARNING, f"dedup level-1 entry {i} points to 0x{l2:x}, "
                               "unaligned or past the end of the file", where, d.l1_offset + i * 8))
            continue
        entries = dedup_entries(img.file.read(l2, cs))
        used = np.nonzero(entries["hash"] != b"")[0]  # all-zero entries are not data clusters
        physical = (i * per + used).astype(np.uint64) * np.uint64(cs)
        maps_to = guest_to_host(img, entries["logical"][used].astype(np.uint64))
        for j, p, m in zip(used.tolist(), physical.tolist(), maps_to.tolist(), strict=True):
            at = l2 + j * ENTRY_SIZE
            logical = int(entries["logical"][j])
            stored = bytes(entries["hash"][j]).ljust(32, b"\0")
            if p >= img.file.size:
                out.append(Finding("dedup.entry_past_eof", Severity.WARNING, f"dedup entry for physical cluster "
                                   f"0x{p:x} lies past the end of the file (0x{img.file.size:x})", where, at, logical))
                continue
            if stored == digest(p):
                if m != p:
                    out.append(Finding("dedup.logical_elsewhere", Severity.WARNING,
                                       f"dedup entry for physical cluster 0x{p:x}: logical offset 0x{logical:x} maps "
                                       + (f"to host 0x{m:x}" if m else "to nothing") + ", not back to it", where, at,
                                       logical))
            elif m and m != p and m < img.file.size and stored == digest(m):
                out.append(Finding("dedup.out_of_order", Severity.WARNING,
                                   f"dedup entry stored for physical cluster 0x{p:x} describes cluster 0x{m:x}: the "
                                   "table is not ordered by physical cluster index", where, at, logical))
            else:
                out.append(Finding("dedup.hash_mismatch", Severity.WARNING,
                                   f"dedup entry for physical cluster 0x{p:x}: stored SHA-256 {stored.hex()[:16]}... "
                                   f"is not the cluster's ({digest(p).hex()[:16]}...)", where, at, logical))
    listing = Listing(MAX_PER_CODE)  # a table of garbage could give a finding per entry of the file
    return listing.keep(out) + listing.summaries()
