#!/usr/bin/env python3
"""Build the draft-structure cases of the test corpus (tests/corpus/images/draft_*).

Each case starts from a fresh qcow2 v3 image made here with qemu-img / qemu-io 7.2
(64 KiB clusters, 8 MiB virtual, one recognisable `write -P` pattern per guest cluster,
some clusters written twice so dedup has work), then draft_writer.py adds the structures of
a never-merged draft (dedup table, journal, 2015 dirty bitmaps), valid or with one defect.

After building, every image is
- re-read by an independent reader in this file (own struct parsing, not draft_writer's):
  refcounts must equal the references of the known structures *plus* the draft structures,
  COPIED must be set exactly on refcount-1 clusters, the draft structures must be valid for
  valid cases and show exactly the injected defect for the others, and the guest view must
  equal the base image's;
- given to `qemu-img check` (human and --output=json) and `qemu-img info --output=json`;
  what qemu says is recorded in provenance.json (`qemu_img_check`, `qemu_img_info`, `notes`).

Usage: python3 tests/corpus/build_drafts.py [--only CASE ...] [--list] [--keep-tmp]
Only folders named draft_* under tests/corpus/images are written. Stdlib only.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"
sys.dont_write_bytecode = True  # keep tests/corpus free of __pycache__
sys.path.insert(0, str(HERE))
import draft_writer  # noqa: E402  (the writer under test; the reader below is independent)

GZ_THRESHOLD = 256 * 1024
CS = 65536
VIRTUAL_SIZE = 8 * 1024 * 1024

# ------------------------------------------------------------------ the base image recipe
# 100 unique guest clusters: unique i goes to guest cluster i + i // 10 (a hole every 11
# clusters) with pattern 0x01 + i. Then duplicates, written later (so qemu gives them
# higher host offsets than the originals):
DUPLICATES = [  # (guest cluster, pattern of unique i, clusters)
    (112, 3, 1), (113, 3, 1),   # unique 3 three times -> shared refcount 3
    (114, 7, 1),                # unique 7 twice
    (116, 0, 2),                # one 128 KiB write: two more copies of unique 0 -> refcount 3
    (118, 99, 1),               # the last unique cluster twice
    (10, 50, 1),                # a hole at a LOWER guest offset than the original (guest 55)
]


def unique_writes() -> list[tuple[int, int, int]]:
    return [(i + i // 10, 0x01 + i, 1) for i in range(100)]


def base_commands(name: str) -> list[str]:
    cmds = [f"qemu-img create -q -f qcow2 -o cluster_size=64k,refcount_bits=16,compat=1.1 {name} 8M"]
    parts = []
    for g, pat, n in unique_writes():
        parts.append(f"-c 'write -P {pat:#04x} {g * 64}k {n * 64}k'")
    for g, i, n in DUPLICATES:
        parts.append(f"-c 'write -P {0x01 + i:#04x} {g * 64}k {n * 64}k'")
    cmds.append("qemu-io -f qcow2 " + " ".join(parts) + f" {name}")
    return cmds


def expected_guest_data() -> dict[int, int]:
    """guest cluster -> pattern byte (what the base image holds)."""
    m = {g: pat for g, pat, _ in unique_writes()}
    for g, i, n in DUPLICATES:
        for k in range(n):
            m[g + k] = 0x01 + i
    return m


EARLY_BITMAPS = [
    # the guest clusters written first (every cluster of the base), and a 4 KiB-granularity one
    {"name": "early-dirty-64k", "granularity": 65536, "dirty": "allocated"},
    {"name": "early-dirty-4k", "granularity": 4096, "dirty": [(0, 16384), (1048576 + 8192, 16384)]},
]


def early_bitmap_spec() -> list[dict]:
    out = []
    alloc = sorted(expected_guest_data())
    for bm in EARLY_BITMAPS:
        dirty = bm["dirty"]
        if dirty == "allocated":
            dirty = [(g * CS, CS) for g in alloc]
        out.append({"name": bm["name"], "granularity": bm["granularity"], "dirty": list(dirty)})
    return out


# -------------------------------------------------------------------------- the cases
CASES = [
    # name, steps [(function, kwargs)], valid, features, notes
    ("draft_dedup", [("add_dedup", {})], True, ["draft_dedup", "draft_incompat_bit1", "shared_clusters"],
     "RFC V3 dedup table (ext 0xCD8E819B) on a qemu image whose duplicate clusters now share one host "
     "cluster (refcounts 2 and 3, COPIED cleared); incompat bit 1 set as the draft says (QEMU reads it as "
     "'corrupt'); duplicate host clusters released (refcount 0, bytes left as residue)"),
    ("draft_dedup_bit1_clear", [("add_dedup", {"set_incompat_bit1": False})], True,
     ["draft_dedup", "shared_clusters"],
     "same as draft_dedup but incompat bit 1 left clear, so QEMU sees an ordinary image with an unknown "
     "extension and leaked clusters"),
    ("draft_journal", [("add_journal", {})], True, ["draft_journal"],
     "RFC V8 journal: one 64 KiB area of 4096-byte journal clusters (0xFF reset), TYPE_HASH entries "
     "(50 bytes: SHA-256, host offset, first guest offset), journal cluster 0 closed by a TYPE_END, "
     "journal cluster 1 left open; no header pointer (find it by scanning unreferenced clusters)"),
    ("draft_dedup_journal", [("add_dedup", {}), ("add_journal", {})], True,
     ["draft_dedup", "draft_journal", "draft_incompat_bit1", "shared_clusters"],
     "dedup table and a journal whose TYPE_HASH entries repeat the dedup table's entries"),
    ("draft_early_bitmaps", [("add_early_bitmaps", {"bitmaps": "spec"})], True, ["draft_early_bitmaps"],
     "2015 draft dirty bitmaps: ext 0x23852875 with a 12-byte body, a bitmap table of 2 entries, "
     "one-level L1 tables and bitmap data clusters (LSB-first bits)"),
    ("draft_dedup_hash_mismatch", [("add_dedup", {"corrupt_hash_mismatch": True})], False,
     ["draft_dedup", "draft_incompat_bit1", "shared_clusters", "corrupt"],
     "dedup entry of a shared cluster whose stored SHA-256 does not match the cluster's content"),
    ("draft_dedup_entry_past_eof", [("add_dedup", {"corrupt_entry_past_eof": True})], False,
     ["draft_dedup", "draft_incompat_bit1", "shared_clusters", "corrupt"],
     "non-zero dedup entry at a physical cluster index beyond the end of the file"),
    ("draft_dedup_logical_elsewhere", [("add_dedup", {"corrupt_logical_elsewhere": True})], False,
     ["draft_dedup", "draft_incompat_bit1", "shared_clusters", "corrupt"],
     "dedup entry whose hash is right but whose logical (guest) offset maps to another host cluster"),
    ("draft_dedup_out_of_order", [("add_dedup", {"corrupt_out_of_order": True})], False,
     ["draft_dedup", "draft_incompat_bit1", "shared_clusters", "corrupt"],
     "two dedup entries swapped: the table is no longer in physical cluster order"),
    ("draft_journal_entry_spans_clusters", [("add_journal", {"corrupt_span": True})], False,
     ["draft_journal", "corrupt"],
     "journal cluster 0 has no TYPE_END; its last TYPE_HASH entry spills over into journal cluster 1"),
    ("draft_journal_cluster_without_end", [("add_journal", {"corrupt_no_end": True})], False,
     ["draft_journal", "corrupt"],
     "journal cluster 0 has no TYPE_END: its tail is 0xFF fill although the log continues in journal "
     "cluster 1 (a replay that stops at the first TYPE_NONE misses the rest)"),
    ("draft_early_bitmaps_l1_past_eof", [("add_early_bitmaps", {"bitmaps": "spec", "corrupt_l1_past_eof": True})],
     False, ["draft_early_bitmaps", "corrupt"],
     "the first bitmap's L1 entry points 16 clusters past the end of the file"),
]


# ============================================================ independent reader
class Reader:
    """Minimal qcow2 reader written separately from draft_writer (different code paths)."""

    def __init__(self, data: bytes):
        self.d = data
        f = struct.unpack(">IIQIIQIIQQIIQ", data[:72])
        (self.magic, self.version, self.bfo, self.bfs, self.cbits, self.vsize, self.crypt,
         self.l1n, self.l1o, self.rto, self.rtc, self.nsnap, self.snapo) = f
        assert self.magic == 0x514649FB and self.version == 3
        self.incompat, self.compat, self.autoclear, self.rorder, self.hlen = struct.unpack(">QQQII", data[72:104])
        self.cs = 1 << self.cbits
        self.nclusters_file = -(-len(data) // self.cs)
        self.exts = []
        p = self.hlen
        end = self.bfo or self.cs
        while p + 8 <= end:
            t, n = struct.unpack(">II", data[p:p + 8])
            if t == 0:
                break
            self.exts.append((t, data[p + 8:p + 8 + n], p))
            p += 8 + (n + 7) // 8 * 8
        self.ext_end = p + 8

    def u64(self, off: int) -> int:
        return struct.unpack(">Q", self.d[off:off + 8])[0]

    def ext(self, magic: int):
        for t, body, p in self.exts:
            if t == magic:
                return body, p
        return None, None

    def refcount(self, idx: int) -> int:
        bits = 1 << self.rorder
        per = self.cs * 8 // bits
        rti, rbi = divmod(idx, per)
        if rti >= self.rtc * self.cs // 8:
            return 0
        rb = self.u64(self.rto + 8 * rti) & ~0x1FF
        if not rb:
            return 0
        bitpos = rbi * bits
        if bits >= 8:
            b = rb + bitpos // 8
            return int.from_bytes(self.d[b:b + bits // 8], "big")
        return (self.d[rb + bitpos // 8] >> (bitpos % 8)) & ((1 << bits) - 1)

    def walk(self):
        """Yield (kind, cluster_index) for every reference held by standard structures, and
        build self.gmap: guest cluster -> (host offset, l2 entry)."""
        cs = self.cs
        refs = [("header", 0)]
        for k in range(self.rtc):
            refs.append(("reftable", self.rto // cs + k))
        for k in range(self.rtc * cs // 8):
            rb = self.u64(self.rto + 8 * k) & ~0x1FF
            if rb:
                refs.append(("refblock", rb // cs))
        for k in range(-(-self.l1n * 8 // cs)):
            refs.append(("l1", self.l1o // cs + k))
        self.gmap = {}
        for i in range(self.l1n):
            l2 = self.u64(self.l1o + 8 * i) & 0x00FFFFFFFFFFFE00
            if not l2:
                continue
            refs.append(("l2", l2 // cs))
            for j in range(cs // 8):
                e = self.u64(l2 + 8 * j)
                host = e & 0x00FFFFFFFFFFFE00
                assert not e & (1 << 62), "compressed clusters are not expected here"
                if host:
                    refs.append(("data", host // cs))
                    self.gmap[i * cs // 8 + j] = (host, e)
        return refs

    def host_of(self, guest: int) -> int:
        t = self.gmap.get(guest // self.cs)
        if not t or t[1] & 1:
            return 0
        return t[0]

    def guest_sha256(self) -> str:
        h = hashlib.sha256()
        zero = b"\0" * self.cs
        for g in range(-(-self.vsize // self.cs)):
            host = self.host_of(g * self.cs)
            h.update(self.d[host:host + self.cs] if host else zero)
        return h.hexdigest()

    def sha(self, off: int) -> bytes:
        return hashlib.sha256(self.d[off:off + self.cs]).digest()


def read_dedup(r: Reader, findings: list, draft: list) -> dict:
    body, _ = r.ext(0xCD8E819B)
    if body is None:
        return {}
    off, size = struct.unpack(">QI", body[:12])
    cs = r.cs
    per = cs // 40
    for k in range(-(-size * 8 // cs)):
        draft.append(("dedup_l1", off // cs + k))
    entries = {}
    for i in range(size):
        l2 = r.u64(off + 8 * i)
        if not l2:
            continue
        draft.append(("dedup_l2", l2 // cs))
        for j in range(per):
            p = l2 + 40 * j
            e = r.d[p:p + 40]
            if e != b"\0" * 40:
                entries[i * per + j] = (e[:32], struct.unpack(">Q", e[32:])[0], p)
    data_idx = {h // cs for h, _ in r.gmap.values()}

    def correct(idx: int, h: bytes, logical: int) -> bool:
        return idx < r.nclusters_file and r.sha(idx * cs) == h and r.host_of(logical) == idx * cs

    paired = set()
    for idx, (h, logical, p) in sorted(entries.items()):
        if idx >= r.nclusters_file:
            findings.append({"defect": "dedup_entry_past_eof", "host_offset": idx * cs, "entry_offset": p})
            continue
        if correct(idx, h, logical):
            continue
        if idx in paired:
            continue
        other = [k for k, (h2, l2, _) in entries.items() if k != idx and correct(k, h, logical)]
        hash_ok = r.sha(idx * cs) == h
        if not hash_ok and not other:
            # the entry belongs to another data cluster whose own slot holds this one's entry
            mine_elsewhere = [k for k in data_idx if k != idx and r.sha(k * cs) == h
                              and r.host_of(logical) == k * cs]
            other = mine_elsewhere
        if other:
            b = other[0]
            paired.update({idx, b})
            findings.append({"defect": "dedup_entries_out_of_order", "host_offset": idx * cs,
                             "entry_offset": p, "swapped_with_host_offset": b * cs})
        elif not hash_ok:
            findings.append({"defect": "dedup_hash_mismatch", "host_offset": idx * cs, "entry_offset": p})
        else:
            findings.append({"defect": "dedup_logical_maps_elsewhere", "host_offset": idx * cs,
                             "entry_offset": p})
    for idx in data_idx:
        if idx not in entries:
            findings.append({"defect": "dedup_entry_missing", "host_offset": idx * cs})
    for idx in entries:
        if idx < r.nclusters_file and idx not in data_idx:
            findings.append({"defect": "dedup_entry_for_non_data_cluster", "host_offset": idx * cs})
    return {"table_offset": off, "table_size": size, "entries": len(entries),
            "incompat_bit1": bool(r.incompat & 2)}


def read_journal(r: Reader, candidates: list[int], findings: list, draft: list) -> dict:
    """Find the journal by scanning refcounted-but-unreferenced clusters, then replay it."""
    J = 4096
    cs = r.cs

    def looks_like_journal(off: int) -> bool:
        size, typ = r.d[off], r.d[off + 1]
        return typ in (1, 2) and 2 <= size <= 254

    start = next((c for c in candidates if looks_like_journal(c * cs)), None)
    if start is None:
        return {}
    run = [start]
    while run[-1] + 1 in candidates:
        run.append(run[-1] + 1)
    for c in run:
        draft.append(("journal", c))
    base = start * cs
    area = r.d[base:base + len(run) * cs]
    pos = 0
    n_hash = n_end = 0
    stopped_at = None
    while pos + 2 <= len(area):
        size, typ = area[pos], area[pos + 1]
        if size == 0xFF and typ == 0xFF:
            stopped_at = pos
            break
        if size < 2 or typ not in (1, 2):
            findings.append({"defect": "journal_bad_entry", "host_offset": base + pos})
            break
        if pos % J + size > J:
            findings.append({"defect": "journal_entry_spans_clusters", "host_offset": base + pos})
        if typ == 1:
            n_end += 1
            if pos % J + size != J:
                findings.append({"defect": "journal_end_does_not_reach_next_cluster", "host_offset": base + pos})
        else:
            n_hash += 1
            body = area[pos + 2:pos + size]
            h = body[:32]
            phys, logical = struct.unpack(">QQ", body[32:48])
            if phys + cs > len(r.d) or r.sha(phys) != h or r.host_of(logical) != phys:
                findings.append({"defect": "journal_hash_entry_wrong", "host_offset": base + pos})
        pos += size
    # anything after the stop point that is not 0xFF is a log the replay did not reach
    if stopped_at is not None:
        jc = stopped_at // J
        rest = area[(jc + 1) * J:]
        if rest.strip(b"\xff"):
            findings.append({"defect": "journal_cluster_without_end", "host_offset": base + stopped_at})
    return {"journal_offset": base, "journal_bytes": len(area), "hash_entries": n_hash,
            "end_entries": n_end, "open_at": None if stopped_at is None else base + stopped_at}


def read_early_bitmaps(r: Reader, spec: list[dict] | None, findings: list, draft: list) -> dict:
    body, _ = r.ext(0x23852875)
    if body is None or len(body) != 12:
        return {}
    nb, doff = struct.unpack(">IQ", body)
    cs = r.cs
    p = doff
    out = []
    for k in range(nb):
        l1o, l1n, gran, sectors, nlen = struct.unpack(">QIIQH", r.d[p:p + 26])
        name = r.d[p + 26:p + 26 + nlen].decode()
        p += (26 + nlen + 7) // 8 * 8
        for c in range(-(-l1n * 8 // cs)):
            draft.append(("early_bitmap_l1", l1o // cs + c))
        data = bytearray()
        for e in range(l1n):
            ent = r.u64(l1o + 8 * e)
            off = ent & 0x00FFFFFFFFFFFE00
            if ent >> 62:
                findings.append({"defect": "early_bitmap_l1_reserved_bits", "host_offset": l1o + 8 * e})
            if off and off + cs > len(r.d):
                findings.append({"defect": "early_bitmap_l1_entry_past_eof", "host_offset": off,
                                 "entry_offset": l1o + 8 * e})
                data += b"\0" * cs
                continue
            if off:
                draft.append(("early_bitmap_data", off // cs))
                data += r.d[off:off + cs]
            else:
                data += b"\0" * cs
        nbits = -(-sectors * 512 // gran)
        bits = {b for b in range(nbits) if data[b // 8] >> (b % 8) & 1}
        out.append({"name": name, "granularity": gran, "sectors": sectors, "bits": len(bits)})
        if spec is not None and not any(f["defect"].startswith("early_bitmap_l1_entry_past") for f in findings):
            want = next(s for s in spec if s["name"] == name)
            exp = set()
            for start, length in want["dirty"]:
                exp.update(range(start // gran, (start + length - 1) // gran + 1))
            if bits != exp:
                findings.append({"defect": "early_bitmap_bits_differ", "bitmap": name})
    for c in range(-(-(p - doff) // cs)):
        draft.append(("early_bitmap_directory", doff // cs + c))
    return {"directory_offset": doff, "nb_dirty_bitmaps": nb, "bitmaps": out}


def verify(path: Path, spec: list[dict] | None) -> dict:
    """Independent re-read of a draft image. Returns findings and accounting results."""
    r = Reader(path.read_bytes())
    refs = r.walk()
    findings: list[dict] = []
    draft: list = []
    result = {}
    result["dedup"] = read_dedup(r, findings, draft)
    result["early_bitmaps"] = read_early_bitmaps(r, spec, findings, draft)
    known = {}
    for _, c in refs + draft:
        known[c] = known.get(c, 0) + 1
    last = max([r.nclusters_file] + [c + 1 for c in known])
    leaked = [c for c in range(last) if r.refcount(c) and c not in known]
    result["journal"] = read_journal(r, leaked, findings, draft)
    known = {}
    for _, c in refs + draft:
        known[c] = known.get(c, 0) + 1
    mismatches = [{"cluster": c, "refcount": r.refcount(c), "references": known.get(c, 0)}
                  for c in range(last) if r.refcount(c) != known.get(c, 0)]
    copied_bad = [g for g, (h, e) in r.gmap.items() if bool(e >> 63) != (r.refcount(h // r.cs) == 1)]
    shared = sorted({h for h, e in r.gmap.values() if r.refcount(h // r.cs) > 1})
    result.update({"findings": findings, "refcount_mismatches": mismatches, "copied_mismatches": copied_bad,
                   "shared_host_clusters": {hex(h): r.refcount(h // r.cs) for h in shared},
                   "guest_sha256": r.guest_sha256(), "draft_clusters": sorted({c for _, c in draft})})
    return result


# ======================================================================== running
def run(cmd: list[str] | str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, shell=isinstance(cmd, str), capture_output=True, text=True)
    if check and p.returncode:
        raise RuntimeError(f"{cmd}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def qemu_view(img: Path) -> dict:
    human = run(["qemu-img", "check", img.name], img.parent, check=False)
    js = run(["qemu-img", "check", "--output=json", img.name], img.parent, check=False)
    info = run(["qemu-img", "info", "--output=json", img.name], img.parent, check=False)
    out = {"qemu_img_check": {"exit": human.returncode,
                              "output": [ln for ln in (human.stdout + human.stderr).splitlines() if ln.strip()],
                              "json": json.loads(js.stdout) if js.stdout.strip() else None,
                              "json_stderr": js.stderr.strip() or None}}
    if info.returncode == 0:
        d = json.loads(info.stdout)
        out["qemu_img_info"] = {"exit": 0, "json": d}
    else:
        out["qemu_img_info"] = {"exit": info.returncode, "error": info.stderr.strip()}
    # a read-write open (qemu-io's default) on a scratch copy, so the stored image is never touched
    scratch = img.parent / "rw-scratch"
    scratch.mkdir()
    shutil.copy(img, scratch / img.name)
    rw = run(["qemu-io", "-f", "qcow2", "-c", "read 0 512", img.name], scratch, check=False)
    err = (rw.stderr + rw.stdout).strip().splitlines()
    out["qemu_io_rw_open"] = {"command": f"qemu-io -f qcow2 -c 'read 0 512' {img.name}", "exit": rw.returncode,
                              "error": next((ln for ln in err if "can't open" in ln), None)}
    shutil.rmtree(scratch)
    conv = run(["qemu-img", "convert", "-O", "raw", img.name, img.name + ".raw"], img.parent, check=False)
    raw = img.parent / (img.name + ".raw")
    if conv.returncode == 0:
        out["qemu_guest_sha256"] = hashlib.sha256(raw.read_bytes()).hexdigest()
        raw.unlink()
    else:
        out["qemu_guest_sha256"] = None
        out["qemu_convert_error"] = conv.stderr.strip()
    return out


def qemu_notes(q: dict) -> list[str]:
    notes = []
    c = q["qemu_img_check"]
    j = c["json"] or {}
    if c["json"] is None:
        notes.append(f"qemu-img check refuses the image (exit {c['exit']}): {c['json_stderr']}")
    else:
        leaks = j.get("leaks", 0)
        corr = j.get("corruptions", 0)
        notes.append(f"qemu-img check exit {c['exit']}: {leaks} leaked clusters, {corr} corruptions"
                     + ("; the draft clusters are leaks to qemu, which does not know the structures"
                        if leaks else ""))
        leaked = [ln for ln in c["output"] if ln.startswith("Leaked cluster")]
        if leaked:
            notes.append("qemu lists: " + "; ".join(leaked))
    i = q["qemu_img_info"]
    if i["exit"]:
        notes.append(f"qemu-img info refuses the image: {i['error']}")
    else:
        fs = i["json"].get("format-specific", {}).get("data", {})
        notes.append(f"qemu-img info opens it: corrupt={fs.get('corrupt')}")
    if q["qemu_io_rw_open"]["error"]:
        notes.append(f"a read-write open fails: {q['qemu_io_rw_open']['error']}")
    else:
        notes.append("a read-write open (qemu-io read) works")
    if q.get("qemu_convert_error"):
        notes.append(f"qemu-img convert -O raw fails: {q['qemu_convert_error']}")
    return notes


def write_gz(src: Path, dst: Path) -> None:
    with open(dst, "wb") as raw, gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as gz:
        gz.write(src.read_bytes())


def header_fields(data: bytes) -> dict:
    r = Reader(data)
    return {"version": r.version, "cluster_bits": r.cbits, "crypt_method": r.crypt, "nb_snapshots": r.nsnap,
            "incompat": r.incompat, "compat": r.compat, "autoclear": r.autoclear, "refcount_order": r.rorder,
            "header_length": r.hlen, "compression_type": data[104] if r.hlen > 104 else 0,
            "extensions": [{"magic": f"{t:#010x}", "length": len(b), "offset": p} for t, b, p in r.exts]}


def call_text(fn: str, src: str, dst: str, kw: dict) -> str:
    """The writer call as text, with the defaults that shape the output spelled out."""
    import inspect
    shown = {k: p.default for k, p in inspect.signature(getattr(draft_writer, fn)).parameters.items()
             if p.kind is p.KEYWORD_ONLY and isinstance(p.default, str | bool) and p.default is not False}
    shown.update(kw)
    args = [repr(src), repr(dst)] + [f"{k}={v!r}" for k, v in shown.items()]
    return f"# python3: draft_writer.{fn}({', '.join(args)})  (tests/corpus/draft_writer.py)"


def check_case(name: str, valid: bool, res: dict, expected: list[dict], base_guest: str, q: dict) -> list[str]:
    errors = []
    if res["refcount_mismatches"]:
        errors.append(f"refcount mismatches: {res['refcount_mismatches'][:5]}")
    if res["copied_mismatches"]:
        errors.append(f"COPIED mismatches at guest clusters {res['copied_mismatches'][:5]}")
    if res["guest_sha256"] != base_guest:
        errors.append("guest view differs from the base image (reader)")
    if q["qemu_guest_sha256"] is not None and q["qemu_guest_sha256"] != base_guest:
        errors.append("guest view differs from the base image (qemu-img convert)")
    got = {(f["defect"], f["host_offset"]) for f in res["findings"]}
    want = {(e["defect"], e["host_offset"]) for e in expected}
    if valid and got:
        errors.append(f"valid case has findings: {res['findings']}")
    if not valid and got != want:
        errors.append(f"findings {sorted(got)} != expected {sorted(want)}")
    return errors


def build_case(case, base: Path, base_cmds: list[str], base_guest: str, tmp: Path) -> dict:
    name, steps, valid, features, notes = case
    work = tmp / name
    work.mkdir()
    shutil.copy(base, work / "base.qcow2")
    commands = list(base_cmds)
    reports = []
    src = "base.qcow2"
    spec = early_bitmap_spec()
    used_spec = None
    for k, (fn, kw) in enumerate(steps):
        dst = f"{name}.qcow2" if k == len(steps) - 1 else f"step{k + 1}.qcow2"
        kw = dict(kw)
        shown = dict(kw)
        if kw.get("bitmaps") == "spec":
            kw["bitmaps"] = spec
            used_spec = spec
            shown["bitmaps"] = "EARLY_BITMAPS (see build_drafts.py)"
        rep = getattr(draft_writer, fn)(work / src, work / dst, **kw)
        reports.append(rep)
        commands.append(call_text(fn, src, dst, shown))
        src = dst
    commands.append("# rm base.qcow2" + "".join(f" step{k + 1}.qcow2" for k in range(len(steps) - 1)))
    img = work / f"{name}.qcow2"
    data = img.read_bytes()
    expected = [e for rep in reports for e in rep.get("expected", [])]
    res = verify(img, used_spec)
    q = qemu_view(img)
    errors = check_case(name, valid, res, expected, base_guest, q)
    # the journal must be found where the writer put it
    for rep in reports:
        if rep["draft"] == "journal" and res["journal"].get("journal_offset") != rep["journal_offset"]:
            errors.append("reader did not find the journal where the writer put it")
        if rep["draft"] == "journal" and valid and res["journal"].get("hash_entries") != rep["hash_entries"]:
            errors.append("journal entry count differs")
    if errors:
        raise RuntimeError(f"{name}: " + "; ".join(errors))
    # store
    out = IMAGES / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    size = len(data)
    stored = f"{name}.qcow2"
    if size > GZ_THRESHOLD:
        stored += ".gz"
        write_gz(img, out / stored)
    else:
        shutil.copy(img, out / stored)
    feats = ["v3"] + features + [f"cluster_size:{CS}", "refcount_bits:16"]
    prov = {
        "case": name,
        "main": f"{name}.qcow2",
        "files": [{"name": f"{name}.qcow2", "sha256": hashlib.sha256(data).hexdigest(), "size": size,
                   "stored_as": stored, "stored_size": (out / stored).stat().st_size}],
        "made_by": "qforensics draft_writer on top of qemu-img 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)",
        "commands": commands,
        "features": feats,
        "valid": valid,
        "expected": expected if not valid else [],
        "notes": [notes] + qemu_notes(q),
        "virtual_size": VIRTUAL_SIZE,
        "header": header_fields(data),
        "qemu_img_check": q["qemu_img_check"],
        "qemu_img_info": q["qemu_img_info"],
        "qemu_io_rw_open": q["qemu_io_rw_open"],
        "guest_sha256": base_guest,
        "byte_stable": True,
        "draft_layout": reports,
        "reader": {k: res[k] for k in ("dedup", "journal", "early_bitmaps", "shared_host_clusters",
                                       "draft_clusters", "findings")},
    }

    def enc(o):
        if isinstance(o, bytes):
            return o.hex()
        raise TypeError(type(o))
    (out / "provenance.json").write_text(json.dumps(prov, indent=2, default=enc) + "\n")
    return prov


def main() -> int:
    ap = argparse.ArgumentParser(description="build tests/corpus/images/draft_* cases")
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--keep-tmp", action="store_true")
    a = ap.parse_args()
    if a.list:
        for c in CASES:
            print(c[0])
        return 0
    cases = [c for c in CASES if not a.only or c[0] in a.only]
    tmp = Path(tempfile.mkdtemp(prefix="qf-drafts-"))
    try:
        base_dir = tmp / "_base"
        base_dir.mkdir()
        cmds = base_commands("base.qcow2")
        for c in cmds:
            run(c, base_dir)
        base = base_dir / "base.qcow2"
        # the base must hold exactly the recipe's data and be clean for qemu
        chk = run(["qemu-img", "check", "base.qcow2"], base_dir, check=False)
        if chk.returncode:
            raise RuntimeError(f"base image not clean: {chk.stdout}{chk.stderr}")
        rb = Reader(base.read_bytes())
        rb.walk()
        for g, pat in expected_guest_data().items():
            h = rb.host_of(g * CS)
            if not h or rb.d[h:h + CS] != bytes([pat]) * CS:
                raise RuntimeError(f"base guest cluster {g} does not hold pattern {pat:#x}")
        conv = run(["qemu-img", "convert", "-O", "raw", "base.qcow2", "base.raw"], base_dir)
        base_guest = hashlib.sha256((base_dir / "base.raw").read_bytes()).hexdigest()
        if base_guest != rb.guest_sha256():
            raise RuntimeError("reader guest view of the base differs from qemu's")
        del conv
        for c in cases:
            prov = build_case(c, base, cmds, base_guest, tmp)
            f = prov["files"][0]
            print(f"{c[0]:40s} {f['size']:>9d} -> {f['stored_size']:>7d} {f['stored_as']}  "
                  f"check exit {prov['qemu_img_check']['exit']}, info exit {prov['qemu_img_info']['exit']}")
    finally:
        if a.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
