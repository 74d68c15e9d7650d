"""Header fields QEMU refuses, read as the structures show them: the cluster size of an image whose header
lost its ``cluster_bits`` (``infer_cluster_bits``), and every field ``infer_header`` weighs.

Every offset in a qcow2 file is a cluster offset, and the refcounts say how many
clusters are in use (spec "Header", "Host cluster management"). For each
cluster size QEMU supports (2^9 to 2^21) the header's L1, refcount table and
snapshot table offsets must be multiples of it, the refcount table's blocks too,
and the clusters with a refcount, times the cluster size, must account for the
file's allocated bytes. Only a size that passes all of it, and alone comes
closest, is used.

``infer_header`` weighs the readings a refused field allows (a cluster size outside 9..21, extended L2
entries with clusters under 16 KiB, unknown incompatible bits) by the tables the L1 names: under the right
reading every entry is an L1 entry, every table it names is L2-shaped (spec "Standard Cluster Descriptor",
"Extended L2 Entries"), and the L1 is large enough for the size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..evidence.file import FileLayer
from ..model import tables as T
from ..model.kaitai import StructureError
from ..model.qcow2_header import (
    KNOWN_MASKS,
    MAGIC,
    MAX_CLUSTER_BITS,
    MIN_CLUSTER_BITS,
    V2_HEADER_LENGTH,
    parse_header,
    stored_cluster_bits,
    with_cluster_bits,
)

MAX_READ = 64 << 20  # bytes of refcount blocks read per candidate size, at most (a hostile table is skipped)
TOLERANCE = 0.10  # the in-use clusters must account for the file's allocated bytes within this share


def infer_cluster_bits(file: FileLayer, probe: bytes) -> tuple[int, str] | None:
    """(cluster_bits, how it was found) for the header bytes ``probe`` of ``file``, or None when no size, or
    more than one, fits the structures."""
    try:  # every other field read as the header parser reads it, with any usable size in place
        h = parse_header(with_cluster_bits(probe, MIN_CLUSTER_BITS))
    except StructureError:
        return None
    if not h.refcount_table_offset or not h.refcount_table_clusters:
        return None
    offsets = [o for o in (h.refcount_table_offset, h.l1_table_offset,
                           h.snapshots_offset if h.nb_snapshots else 0) if o]
    starts, ends = file.data_extents
    allocated = int((ends - starts).sum()) if len(starts) else file.size
    fits: list[tuple[float, int, int]] = []
    for cb in range(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS + 1):
        cs = 1 << cb
        if any(o % cs or o >= file.size for o in offsets) or h.refcount_table_clusters * cs > file.size:
            continue
        table = T.refcount_table(file.read(h.refcount_table_offset, h.refcount_table_clusters * cs))
        blocks = table[table != 0] & T.REFT_OFFSET_MASK
        if not len(blocks) or len(blocks) * cs > MAX_READ or (blocks % np.uint64(cs)).any() \
                or (blocks >= np.uint64(file.size)).any():
            continue
        in_use = 0
        for block in blocks.tolist():
            raw = file.read(block, cs)
            in_use += int(np.count_nonzero(T.refcount_block(raw, h.refcount_order)))
        score = abs(in_use * cs - allocated) / max(allocated, 1)
        if score <= TOLERANCE:
            fits.append((score, cb, in_use))
    if not fits:
        return None
    fits.sort()
    if len(fits) > 1 and fits[1][0] <= 2 * fits[0][0] + 0.01:
        return None  # two sizes fit about as well: guessing would give wrong data
    _, cb, in_use = fits[0]
    return cb, (f"{in_use} clusters have a refcount; at {1 << cb} bytes each they account for the file's "
                f"{allocated} allocated bytes, and every table offset is aligned to it")


# -- header fields QEMU refuses (issue 16, point 4) -------------------------------------------------------

MIN_EXTENDED_BITS = 14  # extended L2 entries need 512-byte subclusters: clusters of 16 KiB at least
MAX_L1_ENTRIES = 1 << 20  # L1 entries read per reading weighed (8 MiB)
CONSISTENT = 0.9  # share of the L1's non-empty tables that must be L2-shaped under a reading


@dataclass(frozen=True)
class Reading:
    """The header read with one cluster size and one L2 entry width, judged by the L1's tables."""

    cluster_bits: int
    extended: bool
    why: str = ""  # why the reading cannot be the image's (a header rule it breaks); "" when it can
    tables: int = 0  # distinct L2 tables the L1 names, as far as they were read
    shaped: int = 0  # of them, shaped like L2 tables under this reading
    empty: int = 0  # of them, all zeros (evidence neither way)
    refs: int = 0  # data clusters their entries name

    @property
    def consistent(self) -> bool:
        return not self.why and self.shaped >= CONSISTENT * (self.tables - self.empty)

    @property
    def label(self) -> str:
        return f"{1 << self.cluster_bits}-byte clusters, {'extended' if self.extended else 'standard'} L2 entries"

    def evidence(self) -> str:
        if self.why:
            return f"{self.label}: {self.why}"
        if not self.tables:
            return f"{self.label}: the L1 names no L2 table"
        return (f"{self.label}: {self.shaped} of the {self.tables - self.empty} non-empty L2 tables the L1 names are "
                f"L2-shaped, naming {self.refs} data clusters")


def weigh(file: FileLayer, h, cluster_bits: int, extended: bool) -> Reading:
    """The reading of header ``h`` (a qcow2_header.Header, other fields as stored) with ``cluster_bits``
    and ``extended`` L2 entries: the header rules it must meet (aligned table offsets, an L1 large enough
    for the size), then the shape of the tables its L1 names (at most MAX_READ bytes of them)."""
    cs = 1 << cluster_bits
    span = (cs // (16 if extended else 8)) * cs
    r = Reading(cluster_bits, extended)
    if h.l1_size and (h.l1_table_offset % cs or h.l1_table_offset >= file.size):
        return replace(r, why=f"l1_table_offset 0x{h.l1_table_offset:x} is not a cluster inside the file")
    if h.refcount_table_offset % cs:
        return replace(r, why=f"refcount_table_offset 0x{h.refcount_table_offset:x} is not aligned")
    needed = -(-h.size // span)
    if h.l1_size < needed:
        return replace(r, why=f"l1_size {h.l1_size} is below the {needed} entries the size {h.size} needs")
    n = max(0, min(h.l1_size, MAX_L1_ENTRIES, (file.size - h.l1_table_offset) // 8))
    l1 = T.l1_entries(file.read(h.l1_table_offset, n * 8)) if n else np.zeros(0, dtype=np.uint64)
    l1 = l1[l1 != 0]
    off = l1 & T.L1E_OFFSET_MASK
    bad = ((l1 & T.L1E_RESERVED_MASK) != 0) | (off % np.uint64(cs) != 0) | (off >= np.uint64(file.size))
    if bad.any():
        return replace(r, why=f"{int(np.count_nonzero(bad))} L1 entries are not valid L1 entries at this size")
    distinct = list(dict.fromkeys(off.tolist()))[:max(1, MAX_READ // cs)]
    shaped = empty = refs = 0
    for table in distinct:
        words = np.frombuffer(file.read(table, cs).ljust(cs, b"\0"), dtype=">u8").astype(np.uint64)[None, :]
        if not words.any():
            empty += 1
            continue
        if extended:
            ok = T.extended_l2_shaped(words, cluster_bits=cluster_bits, file_size=file.size)
            desc = words[:, 0::2]
        else:
            ok = T.l2_shaped(words, cluster_bits=cluster_bits, file_size=file.size, v3=h.version >= 3)
            desc = words
        if ok[0]:
            shaped += 1
            refs += int(np.count_nonzero(T.Descriptors(desc, False).allocated))
    return replace(r, tables=len(distinct), shaped=shaped, empty=empty, refs=refs)


def _choose(readings: list[Reading]) -> Reading | None:
    """The consistent reading that maps the most data; on a tie, the one QEMU would accept (standard L2
    entries below 16 KiB clusters); None when that leaves two."""
    fits = [r for r in readings if r.consistent]
    if not fits:
        return None
    best = max(r.refs << r.cluster_bits for r in fits)
    top = [r for r in fits if r.refs << r.cluster_bits == best]
    if len(top) > 1:
        top = [r for r in top if not (r.extended and r.cluster_bits < MIN_EXTENDED_BITS)]
    return top[0] if len(top) == 1 else None


def infer_header(file: FileLayer, probe: bytes) -> tuple[dict, list[str]] | None:
    """The header fields to read ``file`` with when its header bytes ``probe`` hold a value QEMU refuses
    (a cluster size outside 9..21, extended L2 entries with clusters under 16 KiB, unknown incompatible
    bits), as overrides for model.image.Image (``cluster_bits``, ``extended_l2``, ``incompatible_features``)
    and one note each saying what was inferred from what; None when nothing needs repair, or no reading,
    or more than one, agrees with the tables."""
    if len(probe) < V2_HEADER_LENGTH or probe[:4] != MAGIC:
        return None
    stored = stored_cluster_bits(probe)
    try:
        h = parse_header(with_cluster_bits(probe, MIN_CLUSTER_BITS))
    except StructureError:
        return None
    unknown = h.incompatible_features & ~KNOWN_MASKS["incompatible"]
    cb_ok = stored is not None and MIN_CLUSTER_BITS <= stored <= MAX_CLUSTER_BITS
    ext_bad = h.extended_l2 and cb_ok and stored < MIN_EXTENDED_BITS
    if cb_ok and not ext_bad and not unknown:
        return None
    by_refcounts = None if cb_ok else infer_cluster_bits(file, probe)
    cbs = [stored] if cb_ok else [by_refcounts[0]] if by_refcounts else list(range(MIN_CLUSTER_BITS,
                                                                                   MAX_CLUSTER_BITS + 1))
    readings = [weigh(file, h, cb, ext) for cb in cbs
                for ext in ((False, True) if h.extended_l2 and cb < MIN_EXTENDED_BITS else (h.extended_l2,))]
    best = _choose(readings)
    if best is None:
        return None
    rivals = [r for r in readings if r is not best]
    broken = [r for r in rivals if r.why]
    others = "; ".join([r.evidence() for r in rivals if not r.why]
                       + [r.evidence() for r in broken[:1]]
                       + ([f"{len(broken) - 1} more readings break a header rule"] if len(broken) > 1 else []))
    notes, overrides = [], {}
    if not cb_ok:
        why = by_refcounts[1] if by_refcounts else best.evidence() + (f" (against {others})" if others else "")
        notes.append(f"qcow2 header: cluster_bits is {stored}, which no qcow2 image can have; "
                     f"{best.cluster_bits} inferred: {why}")
        overrides["cluster_bits"] = best.cluster_bits
    if ext_bad:
        notes.append(f"qcow2 header: incompatible bit 4 (extended L2 entries) is set with {1 << stored}-byte "
                     f"clusters, which QEMU refuses (subclusters under 512 bytes); read with "
                     f"{'extended' if best.extended else 'standard'} L2 entries: {best.evidence()}"
                     + (f"; against {others}" if others else ""))
    if unknown:
        notes.append(f"qcow2 header: unknown incompatible feature bits 0x{unknown:x}, for which QEMU refuses the "
                     f"image; read as if they were clear, the tables being consistent ({best.evidence()})")
    incompatible = (h.incompatible_features & ~unknown & ~(1 << 4)) | (1 << 4 if best.extended else 0)
    if best.extended != h.extended_l2:
        overrides["extended_l2"] = best.extended
    if incompatible != h.incompatible_features:
        overrides["incompatible_features"] = incompatible
    return overrides, notes
