#!/usr/bin/env python3
"""Write the never-merged qcow2 draft structures into a copy of a qemu-made image.

No tool writes these structures (they were RFCs on qemu-devel and never merged), so the
test corpus needs its own writer. Three drafts are supported:

* ``add_dedup``: Benoit Canet's deduplication table (RFC V3, Nov 2012, seed 000):
  header extension 0xCD8E819B (u64 table offset, u32 size = number of L1 entries),
  a two-level table indexed by *physical* cluster index whose level-2 entries are
  (32-byte SHA-256, u64 guest offset of the first block with that hash); duplicate
  guest clusters are made to share one host cluster (refcount = number of L2
  references, COPIED cleared on every sharing L2 entry).
* ``add_journal``: the metadata journal of RFC V8 (Jun 2013, seed 004): an area of
  4096-byte journal clusters reset to 0xFF holding TYPE_HASH (2) entries, each journal
  cluster closed by a TYPE_END (1) entry that reaches the next journal cluster, the last
  one left open. Nothing in the header points to it (see docs/drafts.md).
* ``add_early_bitmaps``: Vladimir Sementsov-Ogievskiy's 2015 dirty-bitmaps layout
  (seed 003): extension 0x23852875 with a 12-byte body (u32 nb_dirty_bitmaps,
  u64 dirty_bitmaps_offset), a bitmap table (directory), one-level L1 tables and
  bitmap data clusters.

Every new cluster is allocated at the end of the file and gets refcount 1 (a new refcount
block is allocated through the refcount table when needed; growing the refcount table
itself is refused). Corruptions for tests are keyword arguments. Each function returns a
JSON-able report of what it wrote (offsets of every structure, and ``expected`` for each
injected defect).

Only the standard library is used. The input must be qcow2 v3 with cluster size >= 4096,
standard (not extended) L2 entries, no external data file, no encryption, a clean
(not dirty) refcount state; dedup also needs an image without internal snapshots.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from pathlib import Path

QCOW_MAGIC = b"QFI\xfb"

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_DEDUP = 0xCD8E819B
EXT_BITMAPS = 0x23852875  # upstream (24-byte body) and 2015 draft (12-byte body) share it

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_BIT1 = 1 << 1  # "Deduplication" in RFC V3-V8; "corrupt" in QEMU since 1.7
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_EXTL2 = 1 << 4

OFFSET_MASK = 0x00FFFFFFFFFFFE00
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1

DEDUP_ENTRY_SIZE = 40  # 32-byte SHA-256 + u64 logical offset

JOURNAL_CLUSTER_SIZE = 4096
JOURNAL_TYPE_END = 1
JOURNAL_TYPE_HASH = 2
JOURNAL_TYPE_NONE = 0xFF
JOURNAL_MAX_ENTRY = 254

# TYPE_HASH payload layouts (see docs/drafts.md, "TYPE_HASH payload")
JOURNAL_PAYLOADS = {
    # 32-byte SHA-256, u64 host (physical) offset, u64 guest offset of the first block
    "hash_phys_logical": 48,
    # 32-byte SHA-256, u64 guest offset of the first block (the dedup-table entry)
    "hash_logical": 40,
}

EARLY_BITMAP_EXT_LEN = 12
EARLY_BITMAP_ENTRY_FIXED = 26  # u64 l1 offset, u32 l1 entries, u32 granularity, u64 size, u16 name size


class DraftWriterError(Exception):
    """The input cannot be handled (or the request would need unsupported work)."""


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


class Qcow2Image:
    """A qcow2 image held in memory, with just enough parsing to add structures safely."""

    def __init__(self, data: bytes):
        self.buf = bytearray(data)
        if len(self.buf) < 104 or self.buf[:4] != QCOW_MAGIC:
            raise DraftWriterError("not a qcow2 image")
        (
            _magic,
            self.version,
            self.backing_file_offset,
            self.backing_file_size,
            self.cluster_bits,
            self.size,
            self.crypt_method,
            self.l1_size,
            self.l1_table_offset,
            self.refcount_table_offset,
            self.refcount_table_clusters,
            self.nb_snapshots,
            self.snapshots_offset,
        ) = struct.unpack_from(">4sIQIIQIIQQIIQ", self.buf, 0)
        if self.version != 3:
            raise DraftWriterError(f"only qcow2 v3 is supported (version {self.version})")
        (
            self.incompatible_features,
            self.compatible_features,
            self.autoclear_features,
            self.refcount_order,
            self.header_length,
        ) = struct.unpack_from(">QQQII", self.buf, 72)
        self.cluster_size = 1 << self.cluster_bits
        if self.cluster_size < 4096:
            raise DraftWriterError(f"cluster size {self.cluster_size} < 4096 is not supported")
        if self.refcount_order > 6:
            raise DraftWriterError(f"refcount_order {self.refcount_order} > 6")
        if self.header_length < 104 or self.header_length % 8 or self.header_length > self.cluster_size:
            raise DraftWriterError(f"bad header_length {self.header_length}")
        if self.incompatible_features & INCOMPAT_DIRTY:
            raise DraftWriterError("image is dirty (lazy refcounts); run qemu-img check -r all first")
        if self.incompatible_features & INCOMPAT_DATA_FILE:
            raise DraftWriterError("external data files are not supported")
        if self.incompatible_features & INCOMPAT_EXTL2:
            raise DraftWriterError("extended L2 entries are not supported")
        if self.crypt_method:
            raise DraftWriterError("encrypted images are not supported")
        self.refcount_bits = 1 << self.refcount_order
        self.rb_entries = self.cluster_size * 8 // self.refcount_bits
        self.l2_entries = self.cluster_size // 8
        self.backing_name = b""
        if self.backing_file_offset:
            end = self.backing_file_offset + self.backing_file_size
            if end > self.cluster_size:
                raise DraftWriterError("backing file name does not fit in cluster 0")
            self.backing_name = bytes(self.buf[self.backing_file_offset:end])
        self.extensions = self._read_extensions()
        self._load_reftable()
        self.allocated: list[dict] = []

    # ----------------------------------------------------------------- header extensions
    def _ext_limit(self) -> int:
        return self.backing_file_offset if self.backing_file_offset else self.cluster_size

    def _read_extensions(self) -> list[tuple[int, bytes]]:
        exts = []
        pos = self.header_length
        limit = self._ext_limit()
        while pos + 8 <= limit:
            magic, length = struct.unpack_from(">II", self.buf, pos)
            if magic == EXT_END:
                break
            if pos + 8 + length > limit:
                raise DraftWriterError(f"header extension 0x{magic:08x} at {pos} runs past the extension area")
            exts.append((magic, bytes(self.buf[pos + 8:pos + 8 + length])))
            pos += 8 + _round_up(length, 8)
        return exts

    def find_extension(self, magic: int) -> bytes | None:
        for m, body in self.extensions:
            if m == magic:
                return body
        return None

    def set_extension(self, magic: int, body: bytes) -> int:
        """Add (or replace) one extension and rewrite the extension area of cluster 0.

        Extensions are written in order, each padded with zeros to 8 bytes, followed by the
        end marker (8 zero bytes). The backing file name, if any, is moved to sit right after
        the end marker (as QEMU lays it out) when the new area would overlap it. Returns the
        file offset of the new extension's header.
        """
        exts = [(m, b) for m, b in self.extensions if m != magic]
        exts.append((magic, body))
        area = bytearray()
        new_pos = None
        for m, b in exts:
            if m == magic:
                new_pos = self.header_length + len(area)
            area += struct.pack(">II", m, len(b)) + b + b"\0" * (_round_up(len(b), 8) - len(b))
        area += struct.pack(">II", EXT_END, 0)
        end = self.header_length + len(area)
        backing_off = self.backing_file_offset
        if self.backing_name:
            if end > backing_off:
                backing_off = end
            if backing_off + len(self.backing_name) > self.cluster_size:
                raise DraftWriterError("header extensions and backing file name do not fit in cluster 0")
        elif end > self.cluster_size:
            raise DraftWriterError("header extensions do not fit in cluster 0")
        # cluster 0 holds nothing but the header, the extensions and the backing name
        self._grow_to(self.cluster_size)
        self.buf[self.header_length:self.cluster_size] = b"\0" * (self.cluster_size - self.header_length)
        self.buf[self.header_length:end] = area
        if self.backing_name:
            self.buf[backing_off:backing_off + len(self.backing_name)] = self.backing_name
            self.backing_file_offset = backing_off
            struct.pack_into(">Q", self.buf, 8, backing_off)
        self.extensions = exts
        return new_pos

    def set_incompatible_bits(self, bits: int) -> None:
        self.incompatible_features |= bits
        struct.pack_into(">Q", self.buf, 72, self.incompatible_features)

    # ----------------------------------------------------------------------- refcounts
    def _load_reftable(self) -> None:
        n = self.refcount_table_clusters * self.cluster_size // 8
        off = self.refcount_table_offset
        if off % self.cluster_size or off + n * 8 > len(self.buf):
            raise DraftWriterError("refcount table outside the file")
        self.reftable_entries = n

    def _reftable_get(self, i: int) -> int:
        return struct.unpack_from(">Q", self.buf, self.refcount_table_offset + 8 * i)[0] & REFT_OFFSET_MASK

    def _reftable_set(self, i: int, value: int) -> None:
        struct.pack_into(">Q", self.buf, self.refcount_table_offset + 8 * i, value)

    def _rc_rw(self, block: int, index: int, value: int | None) -> int:
        bits = self.refcount_bits
        if bits >= 8:
            nbytes = bits // 8
            pos = block + index * nbytes
            if value is None:
                return int.from_bytes(self.buf[pos:pos + nbytes], "big")
            self.buf[pos:pos + nbytes] = value.to_bytes(nbytes, "big")
            return value
        per_byte = 8 // bits
        pos = block + index // per_byte
        shift = (index % per_byte) * bits
        mask = (1 << bits) - 1
        if value is None:
            return (self.buf[pos] >> shift) & mask
        self.buf[pos] = (self.buf[pos] & ~(mask << shift) & 0xFF) | (value << shift)
        return value

    def get_refcount(self, cluster_index: int) -> int:
        rt = cluster_index // self.rb_entries
        if rt >= self.reftable_entries:
            return 0
        block = self._reftable_get(rt)
        if block == 0 or block + self.cluster_size > len(self.buf):
            return 0
        return self._rc_rw(block, cluster_index % self.rb_entries, None)

    def set_refcount(self, cluster_index: int, value: int) -> None:
        if value < 0 or value >= (1 << self.refcount_bits):
            raise DraftWriterError(f"refcount {value} does not fit in {self.refcount_bits} bits")
        block = self._ensure_refblock(cluster_index // self.rb_entries)
        self._rc_rw(block, cluster_index % self.rb_entries, value)

    def _ensure_refblock(self, rt: int) -> int:
        if rt >= self.reftable_entries:
            raise DraftWriterError(
                "the refcount table is full; growing it is not supported (use a larger refcount table "
                "or a smaller input)")
        block = self._reftable_get(rt)
        if block:
            return block
        # allocate a new refcount block at the end of the file
        new_index = self.end_cluster()
        block = new_index * self.cluster_size
        self._grow_to(block + self.cluster_size)
        self._reftable_set(rt, block)
        self.allocated.append({"what": "refcount_block", "offset": block, "clusters": 1})
        self.set_refcount(new_index, 1)  # may recurse once if the block does not cover itself
        return block

    def end_cluster(self) -> int:
        """First cluster index after both the file data and every refcounted cluster."""
        n = _round_up(len(self.buf), self.cluster_size) // self.cluster_size
        last = n
        # refcounted clusters beyond the file end (unusual; keep them intact)
        for rt in range(self.reftable_entries):
            block = self._reftable_get(rt)
            if not block:
                continue
            base = rt * self.rb_entries
            if base + self.rb_entries <= last:
                continue
            for i in range(max(0, last - base), self.rb_entries):
                if self._rc_rw(block, i, None):
                    last = base + i + 1
        return last

    def _grow_to(self, length: int) -> None:
        if len(self.buf) < length:
            self.buf += b"\0" * (length - len(self.buf))

    def alloc(self, nclusters: int, what: str, fill: int = 0) -> int:
        """Allocate nclusters contiguous clusters at the end of the file, refcount 1 each."""
        start = self.end_cluster()
        # pad the file to a cluster boundary, then add the clusters
        self._grow_to(start * self.cluster_size)
        self.buf += bytes([fill]) * (nclusters * self.cluster_size)
        for i in range(nclusters):
            self.set_refcount(start + i, 1)
        # a refcount block allocated by set_refcount lands after our clusters: fine
        self.allocated.append({"what": what, "offset": start * self.cluster_size, "clusters": nclusters})
        return start * self.cluster_size

    # ------------------------------------------------------------------------ mapping
    def l2_data_entries(self) -> list[dict]:
        """Every allocated standard data cluster of the active L1/L2 tables."""
        out = []
        cs = self.cluster_size
        for i in range(self.l1_size):
            l1e = struct.unpack_from(">Q", self.buf, self.l1_table_offset + 8 * i)[0]
            l2 = l1e & OFFSET_MASK
            if not l2:
                continue
            if l2 + cs > len(self.buf):
                raise DraftWriterError(f"L2 table at {l2:#x} is past the end of the file")
            for j in range(self.l2_entries):
                pos = l2 + 8 * j
                e = struct.unpack_from(">Q", self.buf, pos)[0]
                if e & OFLAG_COMPRESSED:
                    continue
                host = e & OFFSET_MASK
                if not host or e & OFLAG_ZERO:
                    continue
                out.append({
                    "guest": (i * self.l2_entries + j) * cs,
                    "host": host,
                    "entry_pos": pos,
                    "entry": e,
                })
        return out

    def guest_to_host(self, guest: int) -> int:
        cs = self.cluster_size
        idx = guest // cs
        i, j = divmod(idx, self.l2_entries)
        if i >= self.l1_size:
            return 0
        l2 = struct.unpack_from(">Q", self.buf, self.l1_table_offset + 8 * i)[0] & OFFSET_MASK
        if not l2:
            return 0
        e = struct.unpack_from(">Q", self.buf, l2 + 8 * j)[0]
        if e & OFLAG_COMPRESSED or e & OFLAG_ZERO:
            return 0
        return e & OFFSET_MASK

    def cluster_hash(self, host: int) -> bytes:
        return hashlib.sha256(bytes(self.buf[host:host + self.cluster_size])).digest()

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(bytes(self.buf))


def _open(src: str | Path) -> Qcow2Image:
    return Qcow2Image(Path(src).read_bytes())


def _unique_data(img: Qcow2Image) -> list[dict]:
    """One record per distinct data content: the lowest host cluster holding it and the
    lowest guest offset mapped to that host cluster. Sorted by host offset."""
    by_hash: dict[bytes, dict] = {}
    for d in img.l2_data_entries():
        h = img.cluster_hash(d["host"])
        rec = by_hash.get(h)
        if rec is None or d["host"] < rec["host"] or (d["host"] == rec["host"] and d["guest"] < rec["logical"]):
            by_hash[h] = {"hash": h, "host": d["host"], "logical": d["guest"]}
    return sorted(by_hash.values(), key=lambda r: r["host"])


# ============================================================================ dedup
def read_dedup_table(img: Qcow2Image) -> list[dict]:
    """Non-zero entries of an existing dedup table (used by add_journal on dedup images)."""
    body = img.find_extension(EXT_DEDUP)
    if body is None or len(body) < 12:
        return []
    offset, size = struct.unpack_from(">QI", body, 0)
    per = img.cluster_size // DEDUP_ENTRY_SIZE
    out = []
    for i in range(size):
        l2 = struct.unpack_from(">Q", img.buf, offset + 8 * i)[0]
        if not l2:
            continue
        for j in range(per):
            pos = l2 + j * DEDUP_ENTRY_SIZE
            h = bytes(img.buf[pos:pos + 32])
            logical = struct.unpack_from(">Q", img.buf, pos + 32)[0]
            if h == b"\0" * 32 and logical == 0:
                continue
            out.append({"hash": h, "host": (i * per + j) * img.cluster_size, "logical": logical})
    return out


def add_dedup(src, dst, *, set_incompat_bit1: bool = True, duplicates: str = "release",
              corrupt_hash_mismatch: bool = False, corrupt_entry_past_eof: bool = False,
              corrupt_logical_elsewhere: bool = False, corrupt_out_of_order: bool = False) -> dict:
    """Deduplicate identical guest clusters and add the RFC V3 dedup table.

    duplicates: what happens to the host cluster a duplicate guest cluster used before it
    was pointed at the shared copy: "release" (refcount set to 0; its bytes stay in the file
    as unallocated residue, which is what a dedup-enabled writer would never have written)
    or "leak" (it keeps refcount 1 with no reference).
    """
    if duplicates not in ("release", "leak"):
        raise ValueError("duplicates must be 'release' or 'leak'")
    img = _open(src)
    if img.nb_snapshots:
        raise DraftWriterError("dedup on images with internal snapshots is not supported")
    if img.find_extension(EXT_DEDUP) is not None:
        raise DraftWriterError("image already has a dedup extension")
    cs = img.cluster_size
    report: dict = {"draft": "dedup", "cluster_size": cs, "duplicates": duplicates, "expected": []}

    # --- 1. share duplicate clusters
    data = img.l2_data_entries()
    groups: dict[bytes, list[dict]] = {}
    for d in data:
        d["hash"] = img.cluster_hash(d["host"])
        groups.setdefault(d["hash"], []).append(d)
    refs_before: dict[int, int] = {}
    for d in data:
        refs_before[d["host"]] = refs_before.get(d["host"], 0) + 1
    for host, n in refs_before.items():
        if img.get_refcount(host // cs) != n:
            raise DraftWriterError(f"refcount of host cluster {host:#x} is not {n}; input is not clean")
    table: dict[int, dict] = {}  # physical cluster index -> {hash, logical}
    shared = []
    freed = []
    for h, members in groups.items():
        keeper = min(m["host"] for m in members)
        first_logical = min(m["guest"] for m in members if m["host"] == keeper)
        table[keeper // cs] = {"hash": h, "logical": first_logical}
        for m in members:
            if m["host"] != keeper:
                old = m["host"]
                m["entry"] = (m["entry"] & ~OFFSET_MASK) | keeper
                m["host"] = keeper
                if old not in freed:
                    freed.append(old)
        n = len(members)
        if n >= (1 << img.refcount_bits):
            raise DraftWriterError(f"{n} references do not fit in {img.refcount_bits}-bit refcounts")
        for m in members:
            e = m["entry"] & ~OFLAG_COPIED
            if n == 1:
                e |= OFLAG_COPIED
            struct.pack_into(">Q", img.buf, m["entry_pos"], e)
        img.set_refcount(keeper // cs, n)
        if n > 1:
            shared.append({"host": keeper, "refcount": n, "first_logical": first_logical,
                           "guests": sorted(m["guest"] for m in members)})
    for old in freed:
        img.set_refcount(old // cs, 0 if duplicates == "release" else 1)
    report["shared_clusters"] = sorted(shared, key=lambda s: s["host"])
    report["duplicate_clusters_" + ("released" if duplicates == "release" else "leaked")] = sorted(freed)

    # --- 2. the two-level dedup table, covering every cluster of the final file
    per = cs // DEDUP_ENTRY_SIZE
    start = img.end_cluster()
    past_eof_index = None
    l2_count = 1
    while True:
        l1_clusters = _round_up(l2_count * 8, cs) // cs
        total = start + l1_clusters + l2_count
        need = total
        if corrupt_entry_past_eof:
            past_eof_index = total + 3
            need = past_eof_index + 1
        if l2_count * per >= need:
            break
        l2_count += 1
    l1_off = img.alloc(l1_clusters, "dedup_l1")
    l2_offs = [img.alloc(1, "dedup_l2") for _ in range(l2_count)]
    for i, off in enumerate(l2_offs):
        struct.pack_into(">Q", img.buf, l1_off + 8 * i, off)
    if img.end_cluster() > l2_count * per:  # a refcount block was added past the coverage
        raise DraftWriterError("dedup table coverage computation failed (refcount block allocation)")

    def entry_pos(phys_index: int) -> int:
        return l2_offs[phys_index // per] + (phys_index % per) * DEDUP_ENTRY_SIZE

    for phys, ent in table.items():
        pos = entry_pos(phys)
        img.buf[pos:pos + 32] = ent["hash"]
        struct.pack_into(">Q", img.buf, pos + 32, ent["logical"])

    data_phys = sorted(table)
    # --- 3. injected defects
    if corrupt_hash_mismatch:
        target = shared[0]["host"] // cs if shared else data_phys[len(data_phys) // 2]
        pos = entry_pos(target)
        img.buf[pos] ^= 0xFF
        report["expected"].append({
            "defect": "dedup_hash_mismatch", "host_offset": target * cs, "entry_offset": pos,
            "detail": "byte 0 of the stored SHA-256 inverted"})
    if corrupt_logical_elsewhere:
        target = data_phys[len(data_phys) // 3]
        other = data_phys[len(data_phys) // 3 + 1]
        pos = entry_pos(target)
        bad_logical = table[other]["logical"]
        struct.pack_into(">Q", img.buf, pos + 32, bad_logical)
        report["expected"].append({
            "defect": "dedup_logical_maps_elsewhere", "host_offset": target * cs, "entry_offset": pos,
            "logical": bad_logical, "logical_maps_to": img.guest_to_host(bad_logical)})
    if corrupt_out_of_order:
        a = data_phys[len(data_phys) // 4]
        b = data_phys[len(data_phys) // 4 + 1]
        pa, pb = entry_pos(a), entry_pos(b)
        ea = bytes(img.buf[pa:pa + DEDUP_ENTRY_SIZE])
        img.buf[pa:pa + DEDUP_ENTRY_SIZE] = img.buf[pb:pb + DEDUP_ENTRY_SIZE]
        img.buf[pb:pb + DEDUP_ENTRY_SIZE] = ea
        report["expected"].append({
            "defect": "dedup_entries_out_of_order", "host_offset": a * cs, "entry_offset": pa,
            "swapped_with_host_offset": b * cs, "swapped_with_entry_offset": pb})
    if corrupt_entry_past_eof:
        pos = entry_pos(past_eof_index)
        src_ent = table[data_phys[0]]
        img.buf[pos:pos + 32] = src_ent["hash"]
        struct.pack_into(">Q", img.buf, pos + 32, src_ent["logical"])
        report["expected"].append({
            "defect": "dedup_entry_past_eof", "host_offset": past_eof_index * cs, "entry_offset": pos,
            "file_size": len(img.buf)})

    # --- 4. header
    ext_pos = img.set_extension(EXT_DEDUP, struct.pack(">QI", l1_off, l2_count))
    if set_incompat_bit1:
        img.set_incompatible_bits(INCOMPAT_BIT1)
    img.save(dst)
    report.update({
        "extension_offset": ext_pos, "table_offset": l1_off, "table_size": l2_count,
        "l2_dedup_offsets": l2_offs, "l2_dedup_cluster_entries": per,
        "data_entries": len(table), "incompat_bit1": set_incompat_bit1,
        "allocated": img.allocated, "file_size": len(img.buf)})
    return report


# ========================================================================== journal
def _hash_payload(rec: dict, payload: str) -> bytes:
    if payload == "hash_phys_logical":
        return rec["hash"] + struct.pack(">QQ", rec["host"], rec["logical"])
    if payload == "hash_logical":
        return rec["hash"] + struct.pack(">Q", rec["logical"])
    raise ValueError(f"unknown payload layout {payload!r}")


def add_journal(src, dst, *, payload: str = "hash_phys_logical", entries: list[dict] | None = None,
                repeat: int = 1, min_journal_clusters: int = 0,
                corrupt_span: bool = False, corrupt_no_end: bool = False) -> dict:
    """Add one RFC V8 journal holding one TYPE_HASH entry per distinct data cluster.

    entries: records {hash, host, logical}; default: the dedup table if the image has one,
    otherwise one record per distinct content (lowest host cluster, lowest guest offset).
    repeat: write the record list this many times (a log that saw repeated insertions).
    The journal area is whole qcow2 clusters, reset to 0xFF, allocated at the end of the file.
    Nothing in the header points to it.
    corrupt_span: journal cluster 0 gets no END; the entry that does not fit spills into
    journal cluster 1. corrupt_no_end: journal cluster 0 gets no END; its tail stays 0xFF
    and the log continues at the start of journal cluster 1.
    """
    if corrupt_span and corrupt_no_end:
        raise ValueError("choose one journal corruption per image")
    img = _open(src)
    cs = img.cluster_size
    if entries is None:
        entries = read_dedup_table(img) or _unique_data(img)
    raw = [_hash_payload(r, payload) for r in entries] * repeat
    size = 2 + JOURNAL_PAYLOADS[payload]
    if size > JOURNAL_MAX_ENTRY:
        raise DraftWriterError("journal entry too large")
    J = JOURNAL_CLUSTER_SIZE

    # lay out in a scratch buffer first
    layout = bytearray(b"\xff" * J)
    pos = 0
    placed = []  # (offset in area, type, size)
    expected = []
    for body in raw:
        jc = pos // J
        inpos = pos % J
        if inpos + size + 2 > J:  # no room for this entry and a closing END
            if jc == 0 and corrupt_span:
                if inpos + size <= J:
                    pass  # it still fits; the next one will spill
                else:
                    expected.append({"defect": "journal_entry_spans_clusters", "area_offset": pos,
                                     "journal_cluster": jc, "entry_size": size})
                    corrupt_span = False  # only once
                    # fall through: write it across the boundary
            elif jc == 0 and corrupt_no_end:
                expected.append({"defect": "journal_cluster_without_end", "area_offset": pos,
                                 "journal_cluster": jc, "journal_cluster_area_offset": jc * J})
                corrupt_no_end = False
                pos = (jc + 1) * J
            else:
                end_size = J - inpos
                layout[pos:pos + 2] = bytes([end_size, JOURNAL_TYPE_END])
                placed.append((pos, JOURNAL_TYPE_END, end_size))
                pos = (jc + 1) * J
        need = pos + size + J  # keep at least one more journal cluster of room
        if len(layout) < need:
            layout += b"\xff" * (_round_up(need, J) - len(layout))
        layout[pos:pos + 2] = bytes([size, JOURNAL_TYPE_HASH])
        layout[pos + 2:pos + size] = body
        placed.append((pos, JOURNAL_TYPE_HASH, size))
        pos += size
    # the last journal cluster stays open: everything after `pos` is TYPE_NONE fill
    n_journal = max(len(layout) // J, min_journal_clusters, pos // J + 1)
    area_bytes = _round_up(n_journal * J, cs)
    nclusters = area_bytes // cs
    off = img.alloc(nclusters, "journal", fill=0xFF)
    img.buf[off:off + len(layout)] = layout
    for e in expected:
        e["host_offset"] = off + e["area_offset"]
    img.save(dst)
    n_end = sum(1 for p in placed if p[1] == JOURNAL_TYPE_END)
    return {
        "draft": "journal", "journal_offset": off, "journal_bytes": area_bytes,
        "journal_cluster_size": J, "journal_clusters": area_bytes // J,
        "payload": payload, "entry_size": size,
        "hash_entries": sum(1 for p in placed if p[1] == JOURNAL_TYPE_HASH),
        "end_entries": n_end, "open_journal_cluster": pos // J, "open_at": off + pos,
        "pointer": None, "expected": expected, "allocated": img.allocated, "file_size": len(img.buf)}


# ==================================================================== early bitmaps
def _bitmap_bytes(virtual_size: int, granularity: int, dirty: list[tuple[int, int]]) -> bytearray:
    nbits = -(-virtual_size // granularity)
    bm = bytearray(-(-nbits // 8))
    for start, length in dirty:
        first = start // granularity
        last = min((start + length - 1) // granularity, nbits - 1)
        for bit in range(first, last + 1):
            bm[bit // 8] |= 1 << (bit % 8)  # LSB-first within a byte
    return bm


def add_early_bitmaps(src, dst, *, bitmaps: list[dict] | None = None,
                      corrupt_l1_past_eof: bool = False) -> dict:
    """Add the 2015 draft dirty bitmaps (12-byte extension body).

    bitmaps: list of {name, granularity (bytes, power of two >= 512), dirty: [(guest_off, len)]}.
    Default: "early-dirty-cluster" (granularity = cluster size, every allocated guest cluster)
    and "early-dirty-4k" (granularity 4096, the first 16 KiB and 16 KiB at 1 MiB + 8 KiB).
    All-zero bitmap data clusters are not allocated (L1 entry 0).
    corrupt_l1_past_eof: the first bitmap's first L1 entry points 16 clusters past the end of
    the file (its data cluster is never allocated).
    """
    img = _open(src)
    cs = img.cluster_size
    if img.find_extension(EXT_BITMAPS) is not None:
        raise DraftWriterError("image already has a bitmaps extension (0x23852875)")
    if bitmaps is None:
        allocated = sorted({d["guest"] for d in img.l2_data_entries()})
        bitmaps = [
            {"name": "early-dirty-cluster", "granularity": cs, "dirty": [(g, cs) for g in allocated]},
            {"name": "early-dirty-4k", "granularity": 4096,
             "dirty": [(0, 16384), (1048576 + 8192, 16384)]},
        ]
    sectors = -(-img.size // 512)
    report: dict = {"draft": "early_bitmaps", "bitmaps": [], "expected": []}
    entries = bytearray()
    dir_entry_pos = []
    planned = []
    for bm in bitmaps:
        g = bm["granularity"]
        if g < 512 or g & (g - 1):
            raise DraftWriterError(f"granularity {g} is not a power of two >= 512")
        name = bm["name"].encode()
        data = _bitmap_bytes(img.size, g, bm["dirty"])
        n_l1 = -(-len(data) // cs)
        planned.append((bm, name, data, n_l1))
    # allocate in a readable order: directory, then per bitmap its L1 table then its data
    dir_size = sum(_round_up(EARLY_BITMAP_ENTRY_FIXED + len(p[1]), 8) for p in planned)
    dir_off = img.alloc(_round_up(dir_size, cs) // cs, "early_bitmap_directory")
    for bm, name, data, n_l1 in planned:
        l1_off = img.alloc(_round_up(n_l1 * 8, cs) // cs, "early_bitmap_l1")
        l1_vals = []
        for k in range(n_l1):
            chunk = data[k * cs:(k + 1) * cs]
            if not any(chunk):
                l1_vals.append(0)
                continue
            doff = img.alloc(1, "early_bitmap_data")
            img.buf[doff:doff + len(chunk)] = chunk
            l1_vals.append(doff)
        for k, v in enumerate(l1_vals):
            struct.pack_into(">Q", img.buf, l1_off + 8 * k, v)
        dir_entry_pos.append(dir_off + len(entries))
        ent = struct.pack(">QIIQH", l1_off, n_l1, bm["granularity"], sectors, len(name)) + name
        entries += ent + b"\0" * (_round_up(len(ent), 8) - len(ent))
        report["bitmaps"].append({"name": bm["name"], "granularity": bm["granularity"],
                                  "size_sectors": sectors, "l1_offset": l1_off, "l1_entries": n_l1,
                                  "l1": l1_vals, "bits_set": sum(bin(b).count("1") for b in data),
                                  "dirty": [list(r) for r in bm["dirty"]]})
    img.buf[dir_off:dir_off + len(entries)] = entries
    if corrupt_l1_past_eof:
        first = report["bitmaps"][0]
        bad = _round_up(len(img.buf), cs) + 16 * cs
        struct.pack_into(">Q", img.buf, first["l1_offset"], bad)
        # the data cluster that entry pointed at stays allocated but unreferenced: release it
        if first["l1"][0]:
            img.set_refcount(first["l1"][0] // cs, 0)
            img.buf[first["l1"][0]:first["l1"][0] + cs] = b"\0" * cs
        report["expected"].append({"defect": "early_bitmap_l1_entry_past_eof",
                                   "host_offset": bad, "entry_offset": first["l1_offset"],
                                   "bitmap": first["name"], "file_size": len(img.buf)})
        first["l1"][0] = bad
    ext_pos = img.set_extension(EXT_BITMAPS, struct.pack(">IQ", len(planned), dir_off))
    img.save(dst)
    report.update({"extension_offset": ext_pos, "extension_length": EARLY_BITMAP_EXT_LEN,
                   "directory_offset": dir_off, "directory_size": dir_size,
                   "directory_entry_offsets": dir_entry_pos, "autoclear_bit0": False,
                   "allocated": img.allocated, "file_size": len(img.buf)})
    return report


# ============================================================================== CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("dedup", help="share duplicate clusters and add the RFC V3 dedup table")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--no-incompat-bit1", action="store_true")
    p.add_argument("--duplicates", choices=["release", "leak"], default="release")
    for c in ("hash-mismatch", "entry-past-eof", "logical-elsewhere", "out-of-order"):
        p.add_argument(f"--corrupt-{c}", action="store_true")
    p = sub.add_parser("journal", help="add an RFC V8 journal of TYPE_HASH entries")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--payload", choices=sorted(JOURNAL_PAYLOADS), default="hash_phys_logical")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--corrupt-span", action="store_true")
    p.add_argument("--corrupt-no-end", action="store_true")
    p = sub.add_parser("early-bitmaps", help="add 2015-draft dirty bitmaps")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--corrupt-l1-past-eof", action="store_true")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "dedup":
            rep = add_dedup(a.src, a.dst, set_incompat_bit1=not a.no_incompat_bit1, duplicates=a.duplicates,
                            corrupt_hash_mismatch=a.corrupt_hash_mismatch,
                            corrupt_entry_past_eof=a.corrupt_entry_past_eof,
                            corrupt_logical_elsewhere=a.corrupt_logical_elsewhere,
                            corrupt_out_of_order=a.corrupt_out_of_order)
        elif a.cmd == "journal":
            rep = add_journal(a.src, a.dst, payload=a.payload, repeat=a.repeat,
                              corrupt_span=a.corrupt_span, corrupt_no_end=a.corrupt_no_end)
        else:
            rep = add_early_bitmaps(a.src, a.dst, corrupt_l1_past_eof=a.corrupt_l1_past_eof)
    except DraftWriterError as e:
        print(f"draft_writer: {e}", file=sys.stderr)
        return 2

    def enc(o):
        if isinstance(o, bytes):
            return o.hex()
        raise TypeError(type(o))
    json.dump(rep, sys.stdout, indent=1, default=enc)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
