"""The deduplication table of the 2012-2013 draft (seed 000), found through extension 0xCD8E819B.

Two levels indexed by physical cluster index: a level-1 table of u64 offsets
of level-2 clusters, each holding cluster_size // 40 entries of a SHA-256 and
the guest offset of the first block with that hash. The extension's size
field counts level-1 entries (RFC V4/V5 wording; see docs/drafts.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..findings import Finding, Severity
from .qcow2_header import Header
from .tables import be_u64

ENTRY_SIZE = 40
ENTRY_DTYPE = np.dtype([("hash", "S32"), ("logical", ">u8")])
STRUCTURE = "deduplication table"


@dataclass(frozen=True)
class DedupTable:
    l1_offset: int
    l1: np.ndarray  # u64 offsets of level-2 clusters, 0 = none
    entries_per_cluster: int

    @property
    def l2_offsets(self) -> list[int]:
        return [int(x) for x in self.l1 if x]


def read_dedup_table(h: Header, read, file_size: int, offset: int, size: int) -> tuple[DedupTable, list[Finding]]:
    """The level-1 table, bounded by the file: a claimed size past EOF is a finding, not a big read."""
    findings = []
    entries_per_cluster = h.cluster_size // ENTRY_SIZE
    max_entries = -(-file_size // h.cluster_size) // max(entries_per_cluster, 1) + 1
    if size > max_entries:
        findings.append(Finding("dedup.l1_too_large", Severity.CORRUPTION,
                                f"dedup table claims {size} level-1 entries; {max_entries} cover every cluster of "
                                f"this {file_size}-byte file", STRUCTURE, offset))
    if offset % h.cluster_size:
        findings.append(Finding("dedup.l1_unaligned", Severity.CORRUPTION,
                                f"dedup table offset 0x{offset:x} is not cluster aligned", STRUCTURE, offset))
    raw = read(offset, min(size, max_entries) * 8) if offset < file_size else b""
    if len(raw) < min(size, max_entries) * 8:
        findings.append(Finding("dedup.l1_past_eof", Severity.CORRUPTION,
                                f"dedup table 0x{offset:x} ({size} entries) runs past the end of the file",
                                STRUCTURE, offset))
    return DedupTable(offset, be_u64(raw), entries_per_cluster), findings


def dedup_entries(raw_cluster: bytes) -> np.ndarray:
    """Level-2 entries of one cluster as a structured array (hash, logical)."""
    n = len(raw_cluster) // ENTRY_SIZE
    return np.frombuffer(raw_cluster, dtype=ENTRY_DTYPE, count=n)
