"""The guest view of one qcow2 image (or of one of its snapshots): extents from L1/L2, and reads.

Spec "Cluster mapping", "Extended L2 Entries", "Compressed Clusters
Descriptor"; QEMU 7.2 block/qcow2-cluster.c qcow2_get_host_offset and
block/qcow2.h qcow2_get_subcluster_type give the rules followed here,
including where QEMU refuses to read (Kind.INVALID, with QEMU's reason).

L2 tables are decoded in batches with numpy and turned into runs of units
(clusters, or subclusters with extended L2) of one kind and contiguous host
offsets; Python only touches run boundaries.
"""

from __future__ import annotations

import bisect

from collections.abc import Iterator
from functools import cached_property

import numpy as np

from ..errors import ImageOpenError
from ..evidence.file import FileLayer
from ..model import Image, Unreadable
from ..model import tables as T
from ..model.compressed import inflate
from .extent import Extent, Kind, Runs
from .stack import read_guest

BATCH_UNITS = 1 << 18  # units classified at a time
MAX_GUEST = 1 << 62  # guest bytes looked at: a hostile size beyond this fits no file system anyway
MAX_EACH = 16  # bad L1 entries in a row reported one by one; a longer stretch is one run


def classify(desc: np.ndarray, bitmap: np.ndarray | None, *, cluster_bits: int, v3: bool,
             has_data_file: bool, guest_cluster: np.ndarray, file_size: int | None = None,
             ) -> tuple[np.ndarray, np.ndarray]:
    """Kind and host offset of every unit (QEMU's qcow2_get_subcluster_type: `tables.Descriptors.types` and
    `tables.subcluster_types`, and its read-time checks here).

    ``desc`` holds L2 descriptors, ``bitmap`` the extended-L2 bitmaps (None for standard entries) and
    ``guest_cluster`` the guest cluster number of each entry. A compressed cluster starting past
    ``file_size`` is refused (QEMU's read of it fails). Returns arrays of len(desc) * units: the kind
    (uint8, Kind values) and the host offset of each unit (-1 where it has none).
    """
    cs = 1 << cluster_bits
    d = T.Descriptors(desc, has_data_file)
    compressed, off, normal = d.compressed, d.offset, d.allocated
    bad = normal & ((off & np.uint64(cs - 1)) != 0)
    if has_data_file:
        bad |= compressed | (normal & (off != guest_cluster.astype(np.uint64) << np.uint64(cluster_bits)))
    if file_size is not None:
        bad |= compressed & (T.compressed_fields(desc, cluster_bits)[0] >= np.uint64(file_size))
    host = off.astype(np.int64)
    types = d.types(extended=bitmap is not None)
    if bitmap is None:
        kind = types
        if not v3:
            bad |= d.zero
        kind[bad] = Kind.INVALID
        host = np.where((kind == Kind.NORMAL) | (kind == Kind.ZERO_ALLOC), host, -1)
        return kind, host
    units = 32
    kind = T.subcluster_types(types, bitmap)
    kind[bad] = Kind.INVALID
    sc = cs // units
    uhost = host[:, None] + (np.arange(units, dtype=np.int64) * sc)[None, :]
    with_host = (kind == Kind.NORMAL) | (kind == Kind.ZERO_ALLOC) | (kind == Kind.UNALLOCATED_ALLOC)
    return kind.reshape(-1), np.where(with_host, uhost, -1).reshape(-1)


def run_starts(kind: np.ndarray, host: np.ndarray, unit: int, units_per_cluster: int,
               units_per_table: int = 0) -> np.ndarray:
    """Indices where a new run begins: the kind changes, host offsets stop being contiguous, a
    compressed cluster begins (each is inflated on its own), or (when ``units_per_table``) a new L2 table
    begins. Refused entries in a row make one run, named by the first."""
    n = len(kind)
    brk = np.ones(n, dtype=bool)
    if n > 1:
        brk[1:] = (kind[1:] != kind[:-1]) | ((host[1:] >= 0) & (host[1:] != host[:-1] + unit))
        cluster_start = (np.arange(n) % units_per_cluster) == 0
        brk |= (kind == Kind.COMPRESSED) & cluster_start
        if units_per_table:
            brk[::units_per_table] = True
    return np.flatnonzero(brk)


def inflate_cluster(raw: bytes, cluster_size: int, algorithm: int) -> tuple[bytes | None, str, bytes]:
    """One compressed cluster, as QEMU requires it: the stream must fill exactly one cluster
    (block/qcow2-threads.c qcow2_zlib_decompress / qcow2_zstd_decompress). Returns (cluster or None,
    why not, what did inflate: the salvage of a damaged or cut stream)."""
    data, _, error = inflate(raw, cluster_size, algorithm)
    if error is not None:
        return None, f"does not decompress ({error})", b""
    if len(data) != cluster_size:
        return None, f"decompresses to {len(data)} bytes, not one cluster ({cluster_size})", data
    return data, "", b""


class Qcow2Layer:
    """Guest view of a qcow2 image: ``extents(start, end)`` of this layer alone, ``read`` through the chain.

    ``snapshot`` selects a snapshot's L1 table and disk size (as `qemu-img convert -l` loads it);
    ``backing`` is the layer below (or None), ``data_file`` the file holding data clusters when the image
    has an external data file, ``cipher`` a qforensics.crypto SectorCipher for encrypted images.
    """

    def __init__(self, img: Image, *, snapshot=None, backing=None, data_file: FileLayer | None = None,
                 cipher=None, name: str | None = None, l1: np.ndarray | None = None,
                 labels: dict[int, str] | None = None, lost: dict[int, str] | None = None,
                 unknown: str | None = None, size: int | None = None,
                 alone: dict[int, tuple[int, str]] | None = None):
        h = img.header
        if not img.geometry_ok:
            raise ImageOpenError(f"cluster_bits {h.cluster_bits} is unusable (QEMU takes 9 to 21): no table can be "
                                 "located", structure="qcow2 header", offset=20)
        self.img = img
        self.name = name or str(img.path)
        self.cb, self.cs = h.cluster_bits, h.cluster_size
        self.units = 32 if h.extended_l2 else 1
        self.unit = self.cs // self.units
        self.l2_entries = h.l2_entries
        self.span = self.l2_entries << self.cb  # guest bytes one L1 entry maps
        if snapshot is None:
            l1_offset, l1_size, self.size = h.l1_table_offset, h.l1_size, h.size
        else:
            l1_offset, l1_size = snapshot.l1_table_offset, snapshot.l1_size
            self.size = snapshot.disk_size if snapshot.disk_size is not None else h.size
        if size is not None:  # a recovered view that grew past an estimated size (recovery/scan.py)
            self.size = size
        self.size = min(self.size, MAX_GUEST)
        self.l1_offset = l1_offset
        if l1 is not None:  # an L1 rebuilt from other evidence (recovery/scan.py)
            self.l1 = l1
        else:
            self.l1 = img.l1_table(l1_offset, l1_size)
        self.first_user = self._first_users()
        self.labels = labels or {}  # L1 index -> where its L2 table came from, when not the image's own L1
        self.lost = lost or {}  # L1 index -> why its range is known to be damaged though its entry reads 0
        self.unknown = unknown  # why every other unallocated L1 entry's range may hold data (an UnknownReason)
        # guest cluster offset -> (host offset, where it came from): clusters placed alone in unallocated ranges
        self.alone = alone or {}
        self._alone_at = sorted(self.alone)
        self.backing = backing
        self.data = data_file if data_file is not None else img.file
        self.cipher = cipher
        self.encrypted = h.crypt_method != 0
        self.has_data_file = h.has_data_file
        self.v3 = h.version >= 3
        self.compression = h.compression_type

    # -- metadata -----------------------------------------------------------------------------------------

    @cached_property
    def metadata_preallocation(self) -> bool:
        """QEMU's qcow2_detect_metadata_preallocation: more clusters have a refcount than the file has
        allocated blocks for (then block status asks the file which data clusters are holes)."""
        from ..model.refcount import stored_refcounts

        f = self.img.file
        real = f.allocated_bytes // self.cs
        in_use = stored_refcounts(self.img, dtype=bool)
        return not isinstance(in_use, Unreadable) and np.count_nonzero(in_use) >= max(real * 10 // 9, real + 2)

    def _first_users(self) -> np.ndarray:
        """For each L1 entry, the first L1 index pointing at the same L2 table (itself when it is the first).

        One table cannot map two guest ranges: a repeat is corruption (or a trap that would make a
        reader decode one table millions of times), and is refused as such."""
        if isinstance(self.l1, Unreadable) or not len(self.l1):
            return np.zeros(0, dtype=np.int64)
        offsets = self.l1 & T.L1E_OFFSET_MASK
        _, first, inverse = np.unique(offsets, return_index=True, return_inverse=True)
        return first[inverse].astype(np.int64)

    def _l1_window(self, first: int, last: int) -> tuple[np.ndarray, str]:
        """L2 offsets of L1 entries first..last (0 past the table's end), and why they may be missing."""
        n = last - first + 1
        out = np.zeros(n, dtype=np.uint64)
        if isinstance(self.l1, Unreadable):
            return out, f"L1 table at 0x{self.l1_offset:x} is unreadable: {self.l1.reason}"
        avail = self.l1[first:last + 1]
        out[:len(avail)] = avail & T.L1E_OFFSET_MASK
        return out, ""

    def extents(self, start: int, end: int) -> Iterator[Extent]:
        """Runs of this layer's own kinds over guest [start, end), in order, covering it."""
        for batch in self.runs(start, end):
            yield from batch.rows()

    def runs(self, start: int, end: int) -> Iterator[Runs]:
        """The same runs in numpy batches (the form map and recover use)."""
        end = min(end, self.size)
        if start >= end:
            return
        if isinstance(self.l1, Unreadable):
            yield Runs.of(Extent(start, end - start, Kind.INVALID,
                                 reason=f"L1 table at 0x{self.l1_offset:x} is unreadable: {self.l1.reason}"))
            return
        covered = len(self.l1) * self.span  # past the L1's last entry everything is unallocated (as QEMU reads)
        if end > covered:
            if start < covered:
                yield from self.runs(start, covered)
            yield Runs.of(Extent(max(start, covered), end - max(start, covered), Kind.UNALLOCATED))
            return
        first, last = start // self.span, (end - 1) // self.span
        l2_offsets, l1_reason = self._l1_window(first, last)
        if l1_reason:
            yield Runs.of(Extent(start, end - start, Kind.INVALID, reason=l1_reason))
            return
        size = self.img.file.size
        per_batch = max(1, BATCH_UNITS // (self.l2_entries * self.units))
        cs = np.uint64(self.cs)
        # each L1 entry: 0 unallocated, 1 a readable table, 2 unaligned, 3 past the end of the file,
        # 4 a table an earlier entry already uses
        users = np.arange(first, last + 1)
        known = self.first_user[first:last + 1]
        users[:len(known)] = known
        repeat = users != np.arange(first, last + 1)
        state = np.where(l2_offsets == 0, 0, np.where(l2_offsets % cs != 0, 2, np.where(
            l2_offsets >= np.uint64(size), 3, np.where(repeat, 4, 1))))
        cuts = np.flatnonzero(np.diff(state)) + 1
        bounds = [0, *cuts.tolist(), len(state)]
        for i, j in zip(bounds[:-1], bounds[1:], strict=True):
            st = int(state[i])
            if st == 1:
                for k in range(i, j, per_batch):
                    kk = min(j, k + per_batch)
                    yield self._table_runs(first + k, l2_offsets[k:kk].tolist()).clip(start, end)
                continue
            if st == 0:
                lost = [k for k in range(i, j) if first + k in self.lost] if self.lost else []
                pos = i
                for k in [*lost, j]:
                    if k > pos:
                        yield from self._unallocated((first + pos) * self.span, (first + k) * self.span,
                                                     self.unknown or "", start, end)
                    if k < j:
                        yield from self._unallocated((first + k) * self.span, (first + k + 1) * self.span,
                                                     self.lost[first + k], start, end)
                    pos = k + 1
                continue
            if j - i > MAX_EACH:  # a long stretch of bad entries (a hostile L1): one run, one reason
                what = {2: "unaligned", 3: "past the end of the file", 4: "already used by an earlier entry"}[st]
                yield Runs.of(Extent((first + i) * self.span, (j - i) * self.span, Kind.INVALID,
                                     reason=f"L1 entries 0x{first + i:x}-0x{first + j - 1:x} point at L2 tables "
                                            f"{what}")).clip(start, end)
                continue
            for k in range(i, j):
                off, base = int(l2_offsets[k]), (first + k) * self.span
                if st == 2:
                    ext = Extent(base, self.span, Kind.INVALID,
                                 reason=f"L2 table offset 0x{off:x} unaligned (L1 index: 0x{first + k:x})")
                elif st == 4:
                    ext = Extent(base, self.span, Kind.INVALID,
                                 reason=f"L2 table at 0x{off:x} (L1 index 0x{first + k:x}) is already L1 index "
                                        f"0x{int(users[k]):x}'s: one table cannot map two guest ranges")
                else:  # QEMU reads zeros there: unallocated, but a recovery should know why
                    ext = Extent(base, self.span, Kind.UNALLOCATED,
                                 reason=f"L2 table at 0x{off:x} (L1 index 0x{first + k:x}) is past the end of "
                                        f"the file (0x{size:x})")
                yield Runs.of(ext).clip(start, end)

    def unknown_at(self, guest: np.ndarray) -> np.ndarray:
        """Whether each guest offset lies in an L1 slot the view reads as unallocated under ``unknown``: a
        table the scan could not place may map it (a backing file's bytes there are not the view's own)."""
        out = np.zeros(len(guest), dtype=bool)
        if not self.unknown or isinstance(self.l1, Unreadable):
            return out
        slot = guest // self.span
        inside = slot < len(self.l1)  # past the L1's end no table can be (l1_size bounds the slots)
        out[inside] = (self.l1[slot[inside]] & T.L1E_OFFSET_MASK) == 0
        if self.labels:
            out &= ~np.isin(slot, list(self.labels))
        return out

    def _unallocated(self, lo: int, hi: int, reason: str, start: int, end: int) -> Iterator[Runs]:
        """[lo, hi) unallocated (with ``reason``), but for the clusters placed alone there (``alone``)."""
        pos = lo
        for g in self._alone_at[bisect.bisect_left(self._alone_at, lo):bisect.bisect_left(self._alone_at, hi)]:
            if g > pos:
                yield Runs.of(Extent(pos, g - pos, Kind.UNALLOCATED, reason=reason)).clip(start, end)
            yield Runs.of(Extent(g, self.cs, Kind.NORMAL, host=self.alone[g][0])).clip(start, end)
            pos = g + self.cs
        if pos < hi:
            yield Runs.of(Extent(pos, hi - pos, Kind.UNALLOCATED, reason=reason)).clip(start, end)

    def _table_runs(self, l1_index: int, offsets: list[int]) -> Runs:
        """Runs of the L2 tables of consecutive allocated L1 entries starting at ``l1_index``."""
        ((_, desc, bitmap),) = self.img.l2_batches(offsets, max_entries=len(offsets) * self.l2_entries)
        desc = desc.reshape(-1)
        bitmap = bitmap.reshape(-1) if bitmap is not None else None
        guest_cluster = np.arange(len(desc), dtype=np.int64) + l1_index * self.l2_entries
        kind, host = classify(desc, bitmap, cluster_bits=self.cb, v3=self.v3, has_data_file=self.has_data_file,
                              guest_cluster=guest_cluster, file_size=self.img.file.size)
        base = l1_index * self.span
        starts = run_starts(kind, host, self.unit, self.units, self.l2_entries * self.units if self.labels else 0)
        lengths = np.diff(np.append(starts, len(kind))) * self.unit
        rk = kind[starts]
        entries = desc[starts // self.units]
        reasons = {}
        for row in np.flatnonzero(rk == Kind.INVALID).tolist():
            c = int(starts[row]) // self.units
            reasons[row] = self._invalid_reason(offsets[c // self.l2_entries], c % self.l2_entries, int(desc[c]),
                                                base + c * self.cs)
            more = int(lengths[row]) // self.cs - 1
            if more > 0:
                reasons[row] += f", and the {more} entries after it"
        return Runs(base + starts * self.unit, lengths, rk, host[starts], entries, reasons)

    def _invalid_reason(self, table: int, index: int, entry: int, guest: int) -> str:
        """QEMU's words for why it refuses the entry (qcow2_get_host_offset's corruption messages)."""
        where = f"(L2 offset: 0x{table:x}, L2 index: 0x{index:x})"
        off = entry & int(T.L2E_OFFSET_MASK)
        if entry & int(T.OFLAG_COMPRESSED):
            if not self.has_data_file:
                coff = int(T.compressed_fields(np.array([entry], dtype=np.uint64), self.cb)[0][0])
                return f"compressed cluster at 0x{coff:x} lies past the end of the file {where}"
            return f"Compressed cluster entry found in image with external data file {where}"
        if self.units == 1 and not self.v3 and entry & 1:
            return f"Zero cluster entry found in pre-v3 image {where}"
        if off % self.cs:
            return f"Cluster allocation offset 0x{off:x} unaligned {where}"
        if self.has_data_file and off != guest:
            return (f"External data file host cluster offset 0x{off:x} does not match guest cluster offset: "
                    f"0x{guest:x} {where}")
        return f"Invalid cluster entry found {where}"

    # -- data ---------------------------------------------------------------------------------------------

    def compressed_cluster(self, entry: int) -> tuple[bytes | None, str, bytes]:
        """The inflated cluster of a compressed descriptor, or None, why not, and what could be inflated
        (a stream cut by the end of the file still gives its first bytes)."""
        coff, sectors = T.compressed_fields(np.array([entry], dtype=np.uint64), self.cb)
        coff, nbytes = int(coff[0]), int(sectors[0]) * 512 - int(coff[0]) % 512
        raw = self.img.file.read(coff, nbytes)
        if not raw:
            return None, f"compressed cluster at 0x{coff:x} lies past the end of the file", b""
        data, why, salvage = inflate_cluster(raw, self.cs, self.compression)
        if data is None and len(raw) < nbytes:
            why = f"the end of the file (0x{self.img.file.size:x}) cuts it ({why})"
        return data, (f"compressed cluster at 0x{coff:x}: {why}" if why else ""), salvage

    def decrypt(self, guest: int, host: int, data) -> bytes:
        """Plaintext of ``data`` read at ``host`` for guest offset ``guest`` (both sector aligned)."""
        return self.cipher.decrypt(bytes(data), (host if self.cipher.physical else guest) // 512)

    def read_normal(self, guest: int, host: int, length: int) -> bytes:
        """Bytes of a NORMAL run: from the data-holding file, decrypted when the image is encrypted."""
        if self.cipher is None:
            raw = self.data.read(host, length)
            return raw + bytes(length - len(raw)) if len(raw) < length else raw
        lo = host - host % 512
        hi = -(-(host + length) // 512) * 512
        raw = self.data.read(lo, hi - lo)
        raw += bytes(hi - lo - len(raw))
        first = lo // 512 if self.cipher.physical else (guest - (host - lo)) // 512
        plain = self.cipher.decrypt(raw, first)
        return plain[host - lo:host - lo + length]

    def read(self, offset: int, length: int) -> bytes:
        """Guest bytes [offset, offset+length), through the backing chain; reads past the size are empty."""
        return read_guest(self, offset, length)
