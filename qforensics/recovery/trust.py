"""What the checks find fault with, in the form recover needs: a guest range read through a faulted
structure is *uncertain* (issue 16), never reported as recovered.

The checks' findings are the source, so each rule stays where its spec section
lives (checks/, checks/qemu_check/); this module only maps their codes to host
clusters, L1 slots and snapshots:

- a host cluster referenced more than once while its refcount is lower
  (qemu's ``refcount.too_low``: two guest ranges or two tables share what the
  refcount gives one; the check lists them in ``Stats.shared``), or claimed
  by two structures in different roles (``overlap.structures``), or a
  compressed stream that runs into another stream or into metadata: every guest
  range whose data lies there, and every L1 slot whose L2 table lies there;
- a snapshot whose L1 table the checks fault (unaligned, past the end of the
  file, too large or too small for its disk): every range read through it.

The findings of a code are listed up to a cap (the rest are counted in a
``.more`` summary). When a fault code was capped, the faults are not all
known, and ``capped`` says so: recover then cannot call any range certain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..findings import Finding
from ..layers.extent import Kind, Runs
from ..model import Unreadable
from ..model import tables as T

CLUSTER_CODES = ("overlap.structures", "overlap.compressed", "overlap.compressed_metadata")
SLOT_PIECE = 1 << 18  # L1 entries looked at a time
SHARED = "refcount.too_low"  # the code of qemu's finding on a cluster the check's Stats.shared lists
SNAPSHOT_CODES = ("snapshot.l1_unaligned", "snapshot.l1_past_eof", "snapshot.l1_too_large", "snapshot.l1_too_small")


@dataclass
class Faults:
    """Faulted host clusters of the top image (sorted, with the code of the first finding on each), and the
    snapshots whose tables are faulted (id -> code)."""

    cluster_bits: int
    clusters: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    codes: list[str] = field(default_factory=list)
    snapshots: dict[str, str] = field(default_factory=dict)
    capped: str | None = None  # a fault code whose findings were not all listed
    # clusters referenced more often than their refcount allows, until confirm_shared judges them
    shared: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @classmethod
    def of(cls, img, report) -> Faults:
        """The faults of a CheckReport (its findings, and its Stats.shared clusters)."""
        findings: list[Finding] = report.findings
        cb = img.header.cluster_bits if img.geometry_ok else 9
        first: dict[int, str] = {}
        capped = SHARED if report.stats.shared_capped else None
        by_entry = {s.entry_offset: s.id for s in img.snapshots}
        snapshots: dict[str, str] = {}
        for f in findings:
            base = f.code.removesuffix(".more")
            if f.code.endswith(".more") and base in CLUSTER_CODES:
                capped = capped or base
            elif f.code in CLUSTER_CODES and f.host_offset is not None:
                first.setdefault(f.host_offset >> cb, f.code)
            elif f.code in SNAPSHOT_CODES and f.host_offset in by_entry:
                snapshots.setdefault(by_entry[f.host_offset], f.code)
        order = sorted(first)
        return cls(cb, np.array(order, dtype=np.int64), [first[c] for c in order], snapshots, capped,
                   np.array(sorted(report.stats.shared), dtype=np.int64))

    def confirm_shared(self, layer) -> None:
        """Of the clusters referenced more often than their refcount allows, fault those that ``layer`` itself
        maps at two guest positions, or whose L2 table two of its L1 entries name. Snapshots that share a
        cluster at the same guest position are copy-on-write as the format means it, with a refcount too low:
        that makes the refcount wrong, not the data."""
        shared, self.shared = self.shared, np.zeros(0, dtype=np.int64)
        if not len(shared):
            return
        found: dict[int, str] = {}
        l1 = getattr(layer, "l1", None)
        if l1 is not None and not isinstance(l1, Unreadable):
            tables = (l1 & T.L1E_OFFSET_MASK).astype(np.int64) >> self.cluster_bits
            named, times = np.unique(tables[np.isin(tables, shared)], return_counts=True)
            found.update(dict.fromkeys(named[(times > 1) & (named != 0)].tolist(), SHARED))
        guests: dict[int, int] = {}  # shared cluster -> the first guest cluster seen mapping it
        for batch in layer.runs(0, layer.size):
            rows = np.flatnonzero(batch.kind == Kind.NORMAL)
            if not len(rows):
                continue
            n = (batch.length[rows] + (batch.host[rows] & ((1 << self.cluster_bits) - 1)) - 1) >> self.cluster_bits
            first = batch.host[rows] >> self.cluster_bits
            k = np.repeat(np.arange(len(rows)), n + 1)
            host = first[k] + (np.arange(len(k)) - np.repeat(np.cumsum(n + 1) - (n + 1), n + 1))
            guest = (batch.start[rows] >> self.cluster_bits)[k] + (host - first[k])
            hit = np.isin(host, shared)
            for h, g in zip(host[hit].tolist(), guest[hit].tolist(), strict=True):
                if guests.setdefault(h, g) != g:
                    found[h] = SHARED
        if found:
            merged = dict(zip(self.clusters.tolist(), self.codes, strict=True))
            for c, code in found.items():
                merged.setdefault(c, code)
            order = sorted(merged)
            self.clusters = np.array(order, dtype=np.int64)
            self.codes = [merged[c] for c in order]

    def in_range(self, host: np.ndarray, length: np.ndarray) -> np.ndarray:
        """For each host byte range, the index in ``clusters`` of the first faulted cluster it touches, or -1."""
        out = np.full(len(host), -1, dtype=np.int64)
        if not len(self.clusters) or not len(host):
            return out
        lo = host >> self.cluster_bits
        hi = (host + np.maximum(length, 1) - 1) >> self.cluster_bits
        i = np.searchsorted(self.clusters, lo)
        inside = (i < len(self.clusters)) & (self.clusters[np.minimum(i, len(self.clusters) - 1)] <= hi)
        out[inside] = i[inside]
        return out

    def slots(self, layer, which: np.ndarray | None = None) -> dict[int, str]:
        """L1 slots of ``layer`` (all, or ``which``) whose L2 table lies in a faulted cluster: all they map is
        uncertain. Worked out a piece of the L1 at a time (a hostile L1 has millions of entries)."""
        l1 = getattr(layer, "l1", None)
        if l1 is None or isinstance(l1, Unreadable) or not len(self.clusters):
            return {}
        if which is None:
            which = np.arange(len(l1), dtype=np.int64)
        which = which[(which >= 0) & (which < len(l1))]
        out: dict[int, str] = {}
        for k in range(0, len(which), SLOT_PIECE):
            part = which[k:k + SLOT_PIECE]
            l2 = (l1[part] & T.L1E_OFFSET_MASK).astype(np.int64)
            part, l2 = part[l2 != 0], l2[l2 != 0]
            hit = self.in_range(l2, np.ones(len(l2), dtype=np.int64))
            out.update((int(r), self.codes[int(c)]) for r, c in zip(part[hit >= 0].tolist(), hit[hit >= 0].tolist(),
                                                                    strict=True))
        return out

    def rows(self, layer, batch: Runs, *, data: bool = True) -> dict[int, str]:
        """Rows of ``batch`` (runs of the top ``layer``) that read through a faulted structure: row -> code.
        ``data``: whether the data lies in the image file itself (not in an external data file, whose clusters
        the image's refcounts and layout do not cover)."""
        out: dict[int, str] = {}
        if not len(self.clusters) or not len(batch):
            return out
        span = getattr(layer, "span", 0)
        if span:
            slot = batch.start // span
            faulted = self.slots(layer, np.unique(slot))
            if faulted:
                for r in np.flatnonzero(np.isin(slot, list(faulted))).tolist():
                    out[r] = faulted[int(slot[r])]
        if not data:
            return out
        data_rows = np.flatnonzero((batch.kind == Kind.NORMAL) | (batch.kind == Kind.RAW_DATA))
        hit = self.in_range(batch.host[data_rows], batch.length[data_rows])
        for r, k in zip(data_rows[hit >= 0].tolist(), hit[hit >= 0].tolist(), strict=True):
            out.setdefault(r, self.codes[k])
        comp = np.flatnonzero(batch.kind == Kind.COMPRESSED)
        if len(comp):
            start, sectors = T.compressed_fields(batch.entry[comp], self.cluster_bits)
            hit = self.in_range(start.astype(np.int64), (sectors * np.uint64(512)).astype(np.int64))
            for r, k in zip(comp[hit >= 0].tolist(), hit[hit >= 0].tolist(), strict=True):
                out.setdefault(r, self.codes[k])
        return out
