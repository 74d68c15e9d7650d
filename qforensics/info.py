"""`qforensics info`: everything about an image on one screen.

The JSON uses `qemu-img info --output=json` keys and values (qapi ImageInfo,
ImageInfoSpecificQCow2) wherever qemu states the same fact, and adds ours
under keys qemu does not use.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from .findings import Severity
from .layout import Layout, build_layout
from .model import Image
from .model.extensions import FEATURE_NAME_TABLE
from .model.kaitai import opt
from .model.header import COMPRESSION_TYPES, CRYPT_METHODS, FEATURE_GROUPS, KNOWN_MASKS

QEMU_DRAFT_BIT1 = "deduplication (2012 draft, dedup extension present)"


def _full_backing_filename(image_path: str, backing: str) -> str:
    """QEMU's path_combine(): a relative backing name is relative to the image's folder (no file access)."""
    if backing.startswith("/") or ":" in backing.split("/", 1)[0]:
        return backing
    folder = os.path.dirname(image_path)
    return os.path.join(folder, backing) if folder else backing


def feature_bits(img: Image) -> dict[str, list[dict]]:
    """Every set feature bit by name, known or not, with the name's source."""
    h = img.header
    names = img.feature_names
    dedup = img.dedup_extension is not None
    out: dict[str, list[dict]] = {}
    for group in FEATURE_GROUPS:
        value = h.feature_bits(group)
        bits = []
        for bit in range(64):
            if not value & (1 << bit):
                continue
            name = names.get((group, bit))
            entry = {"bit": bit, "name": name, "known": bool(KNOWN_MASKS[group] & (1 << bit))}
            if (group, bit) in img.feature_table:
                entry["named-by"] = "image feature name table"
            elif name:
                entry["named-by"] = "qcow2 specification"
            if group == "incompatible" and bit == 1:
                entry["interpretation"] = "corrupt (upstream)" + (f"; {QEMU_DRAFT_BIT1}" if dedup else "")
            bits.append(entry)
        out[group] = bits
    return out


def build_info(img: Image, filename: str, layout: Layout | None = None) -> dict:
    """The info document: qemu-img's keys first, then ours (the structures, then the drafts); ``layout``, the
    command's host layout when it has one (its journals), else one is built."""
    info = _qemu_info(img, filename)
    _add_structures(img, info)
    _add_drafts(img, info, layout)
    info["qemu-would-refuse"] = [f.qemu_message for f in img.refusals]
    info["findings"] = [f.to_json() for f in img.findings]
    return info


def _qemu_info(img: Image, filename: str) -> dict:
    """The keys and values of `qemu-img info --output=json` (tests compare them live)."""
    h = img.header
    data: dict = {"compat": "1.1" if h.version >= 3 else "0.10"}
    data["compression-type"] = COMPRESSION_TYPES.get(h.compression_type, f"unknown({h.compression_type})")
    if h.version >= 3:
        data["lazy-refcounts"] = bool(h.compatible_features & 1)
        data["corrupt"] = bool(h.incompatible_features & 2)
        data["extended-l2"] = h.extended_l2
    data["refcount-bits"] = h.refcount_bits
    if img.data_file is not None:
        data["data-file"] = img.data_file
    if h.has_data_file:
        data["data-file-raw"] = bool(h.autoclear_features & 2)
    if img.bitmaps_extension is not None and h.autoclear_features & 1:
        data["bitmaps"] = [{"name": b.name, "granularity": b.granularity, "flags": b.flag_names}
                           for b in img.bitmaps]
    if h.crypt_method == 1:
        data["encrypt"] = {"format": "aes"}
    elif img.luks is not None:
        data["encrypt"] = img.luks.to_qemu_json()

    info: dict = {
        "filename": filename,
        "format": "qcow2",
        "virtual-size": h.size,
        "cluster-size": h.cluster_size,
        "actual-size": img.file.allocated_bytes,
        "dirty-flag": bool(h.incompatible_features & 1),
        "format-specific": {"type": "qcow2", "data": data},
    }
    if h.crypt_method:
        info["encrypted"] = True
    if img.backing_file is not None:
        info["backing-filename"] = img.backing_file
        info["full-backing-filename"] = _full_backing_filename(filename, img.backing_file)
        if img.backing_format is not None:
            info["backing-filename-format"] = img.backing_format
    if img.snapshots:
        info["snapshots"] = [s.to_qemu_json() for s in img.snapshots]

    return info


def _add_structures(img: Image, info: dict) -> None:
    """Ours: the header's fields, features, extensions, snapshot table, bitmap directory, LUKS header."""
    h = img.header
    info["file-size"] = img.file.size
    info["header"] = {
        "version": h.version, "backing-file-offset": h.backing_file_offset,
        "backing-file-size": h.backing_file_size, "cluster-bits": h.cluster_bits, "size": h.size,
        "crypt-method": CRYPT_METHODS.get(h.crypt_method, f"unknown({h.crypt_method})"),
        "l1-size": h.l1_size, "l1-table-offset": h.l1_table_offset,
        "refcount-table-offset": h.refcount_table_offset, "refcount-table-clusters": h.refcount_table_clusters,
        "nb-snapshots": h.nb_snapshots, "snapshots-offset": h.snapshots_offset,
        "incompatible-features": h.incompatible_features, "compatible-features": h.compatible_features,
        "autoclear-features": h.autoclear_features, "refcount-order": h.refcount_order,
        "header-length": h.header_length, "compression-type": h.compression_type,
    }
    info["features"] = feature_bits(img)
    info["extensions"] = [_extension_json(e) for e in img.extensions.items]
    if img.snapshots:
        info["snapshot-table"] = [
            {"index": s.index, "entry-offset": s.entry_offset, "id": s.id, "name": s.name,
             "date": _iso(s.date_sec, s.date_nsec), "vm-clock-nsec": s.vm_clock_nsec,
             "vm-state-size": s.vm_state_size, "disk-size": s.disk_size, "l1-table-offset": s.l1_table_offset,
             "l1-size": s.l1_size, "extra-data-size": s.extra_data_size, "icount": s.icount}
            for s in img.snapshots
        ]
    if img.bitmaps:
        info["bitmap-directory"] = [
            {"index": b.index, "entry-offset": b.entry_offset, "name": b.name, "granularity": b.granularity,
             "flags": b.flags, "flag-names": b.flag_names, "type": b.type, "bitmap-table-offset": b.table_offset,
             "bitmap-table-size": b.table_size}
            for b in img.bitmaps
        ]
    if img.luks is not None:
        info["luks"] = {"header-offset": img.luks.offset, "header-length": img.luks.length,
                        "cipher": f"{img.luks.cipher_name}-{img.luks.cipher_mode}", "hash": img.luks.hash_spec,
                        "key-bytes": img.luks.key_bytes,
                        "active-slots": [s.index for s in img.luks.slots if s.active]}


def _add_drafts(img: Image, info: dict, layout: Layout | None) -> None:
    """Ours: the draft structures (deduplication table, early dirty bitmaps, journals found by scanning)."""
    if img.dedup_extension is not None:
        d = img.dedup_extension
        table = img.dedup_table
        info["deduplication"] = {
            "draft": "2012-2013 deduplication RFC (seed 000)",
            "table-offset": d.ofs_dedup_table, "table-size": d.len_dedup_table,
            "table-size-unit": "level-1 entries",
            "hash-algorithm": "sha256" if opt(d, "hash_algorithm") in (None, 0) else int(d.hash_algorithm),
            "l2-entries-per-cluster": table.entries_per_cluster if table else None,
            "l2-cluster-offsets": table.l2_offsets if table else [],
        }
    if img.draft_bitmaps:
        info["early-dirty-bitmaps"] = [
            {"index": b.index, "entry-offset": b.entry_offset, "name": b.name, "granularity": b.granularity,
             "size-sectors": b.size_sectors, "l1-table-offset": b.l1_table_offset, "l1-size": b.l1_size}
            for b in img.draft_bitmaps
        ]
    if img.geometry_ok:
        journals = (layout or build_layout(img)).journals  # found by the layout's scan of the free clusters
        if journals:
            info["journals"] = [
                {"offset": a.offset, "found-by": "scan of unreferenced clusters (no pointer exists)",
                 "journal-clusters": [{"offset": j.offset, "entries": len(j.entries), "hash-entries": j.hash_entries,
                                       "ending": j.ending,
                                       **({"damaged-entry": j.damaged} if j.damaged is not None else {})}
                                      for j in a.clusters]}
                for a in journals
            ]


def _extension_json(e) -> dict:
    out = {"offset": e.offset, "magic": f"0x{e.magic:08x}", "name": e.name, "length": e.length}
    body = e.body
    if e.magic == FEATURE_NAME_TABLE and body is not None:
        out["entries"] = [{"type": int(x.feature_type), "bit": x.bit,
                           "name": x.name.rstrip(b"\0").decode("utf-8", "backslashreplace")} for x in body.entries]
    elif hasattr(body, "ofs_bitmap_directory"):
        out.update({"nb-bitmaps": body.num_bitmaps, "bitmap-directory-size": body.len_bitmap_directory,
                    "bitmap-directory-offset": body.ofs_bitmap_directory})
    elif hasattr(body, "ofs_encryption_header"):
        out.update({"encryption-header-offset": body.ofs_encryption_header,
                    "encryption-header-length": body.len_encryption_header})
    elif hasattr(body, "ofs_dirty_bitmaps"):
        out.update({"nb-dirty-bitmaps": body.num_dirty_bitmaps, "dirty-bitmaps-offset": body.ofs_dirty_bitmaps})
    elif hasattr(body, "ofs_dedup_table"):
        out.update({"dedup-table-offset": body.ofs_dedup_table, "dedup-table-size": body.len_dedup_table})
    elif hasattr(body, "name"):
        out["value"] = body.name.decode("utf-8", "backslashreplace")
    return out


def _iso(sec: int, nsec: int) -> str:
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%d %H:%M:%S") + f".{nsec // 1000:06d} UTC"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return str(n)


def render_human(info: dict) -> str:
    """One screen of text for an analyst; offsets in hex."""
    h = info["header"]
    d = info["format-specific"]["data"]
    lines = [
        f"image:            {info['filename']}",
        f"format:           qcow2 version {h['version']} (compat {d['compat']})",
        f"virtual size:     {_size(info['virtual-size'])} ({info['virtual-size']} bytes)",
        f"file size:        {_size(info['file-size'])} ({info['file-size']} bytes), "
        f"{_size(info['actual-size'])} allocated on disk",
        f"cluster size:     {info['cluster-size']} (cluster_bits {h['cluster-bits']})",
        f"refcount bits:    {d['refcount-bits']}",
        f"compression:      {d['compression-type']}",
        f"encryption:       {h['crypt-method']}",
        "",
        "header:",
        f"  L1 table        0x{h['l1-table-offset']:x}, {h['l1-size']} entries",
        f"  refcount table  0x{h['refcount-table-offset']:x}, {h['refcount-table-clusters']} clusters",
        f"  snapshot table  0x{h['snapshots-offset']:x}, {h['nb-snapshots']} entries",
        f"  header length   {h['header-length']}",
        f"  backing file    0x{h['backing-file-offset']:x}, {h['backing-file-size']} bytes",
        "",
        "features:",
    ]
    for group, bits in info["features"].items():
        raw = h[f"{group}-features"]
        shown = ", ".join(
            f"bit {b['bit']} {b.get('interpretation') or b['name'] or '(unnamed)'}" + ("" if b["known"] else " [UNKNOWN]")
            for b in bits) or "none"
        lines.append(f"  {group + ':':14s} 0x{raw:x}: {shown}")
    lines += ["", "header extensions:"]
    for e in info["extensions"] or []:
        detail = e.get("value") or ", ".join(
            f"{k} {v:#x}" if isinstance(v, int) and ("offset" in k or "size" in k) else f"{k} {v}"
            for k, v in e.items() if k not in ("offset", "magic", "name", "length", "entries"))
        lines.append(f"  0x{e['offset']:05x}  {e['magic']}  {e['name']} ({e['length']} bytes)"
                     + (f": {detail}" if detail else ""))
    if not info["extensions"]:
        lines.append("  none")
    if "backing-filename" in info:
        lines += ["", f"backing file:     {info['backing-filename']!r}"
                  + (f" (format {info['backing-filename-format']!r})" if "backing-filename-format" in info else "")
                  + "  [not opened]"]
    if "data-file" in d:
        lines += ["", f"data file:        {d['data-file']!r} (raw: {d.get('data-file-raw')})  [not opened]"]
    if "luks" in info:
        lk = info["luks"]
        lines += ["", f"LUKS header:      0x{lk['header-offset']:x}, {lk['header-length']} bytes; cipher {lk['cipher']}, "
                  f"hash {lk['hash']}, {lk['key-bytes'] * 8}-bit key, active slots {lk['active-slots']}"]
    if "snapshot-table" in info:
        lines += ["", "snapshots:", f"  {'ID':8s} {'NAME':20s} {'DATE':27s} {'VM CLOCK':>18s} {'VM STATE':>10s} "
                  f"{'DISK SIZE':>12s}  L1"]
        for s in info["snapshot-table"]:
            clock = s["vm-clock-nsec"]
            clock_s = f"{clock // 3_600_000_000_000:02d}:{clock // 60_000_000_000 % 60:02d}:" \
                      f"{clock // 1_000_000_000 % 60:02d}.{clock // 1_000_000 % 1000:03d}"
            disk = "-" if s["disk-size"] is None else str(s["disk-size"])
            lines.append(f"  {s['id']!s:8.8s} {s['name']!s:20.20s} {s['date']:27s} {clock_s:>18s} "
                         f"{s['vm-state-size']:>10d} {disk:>12s}  0x{s['l1-table-offset']:x}")
    if "bitmap-directory" in info:
        lines += ["", "bitmaps:"]
        for b in info["bitmap-directory"]:
            lines.append(f"  {b['name']!s:20.20s} granularity {b['granularity']}, flags "
                         f"{','.join(b['flag-names']) or '-'}, type {b['type']}, table 0x{b['bitmap-table-offset']:x}")
    if "deduplication" in info:
        dd = info["deduplication"]
        lines += ["", f"deduplication:    {dd['draft']}: level-1 table at 0x{dd['table-offset']:x}, "
                  f"{dd['table-size']} {dd['table-size-unit']}, {dd['hash-algorithm']}, "
                  f"{len(dd['l2-cluster-offsets'])} level-2 clusters of {dd['l2-entries-per-cluster']} entries"]
    if "journals" in info:
        lines += ["", "journals (2013 draft, found by scanning unreferenced clusters):"]
        for a in info["journals"]:
            ends = ", ".join(f"0x{j['offset']:x} {j['hash-entries']} hash entries, {j['ending']}"
                             + (f" (damaged entry at 0x{j['damaged-entry']:x})" if "damaged-entry" in j else "")
                             for j in a["journal-clusters"])
            lines.append(f"  0x{a['offset']:x}: {ends}")
    if "early-dirty-bitmaps" in info:
        lines += ["", "dirty bitmaps (2015 draft layout):"]
        for b in info["early-dirty-bitmaps"]:
            lines.append(f"  {b['name']!s:20.20s} granularity {b['granularity']}, {b['size-sectors']} sectors, "
                         f"L1 0x{b['l1-table-offset']:x} ({b['l1-size']} entries)")
    if info["findings"]:
        lines += ["", "findings:"]
        order = [str(s) for s in Severity]
        for f in sorted(info["findings"], key=lambda f: order.index(f["severity"])):
            at = "" if f["host_offset"] is None else f" at 0x{f['host_offset']:x}"
            lines.append(f"  {f['severity'].upper():10s} {f['code']}: {f['structure']}{at}: {f['message']}")
    return "\n".join(lines) + "\n"
