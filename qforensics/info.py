"""`qforensics info`'s document: everything about an image (render.info_text puts it on one screen).

The JSON uses `qemu-img info --output=json` keys and values (qapi ImageInfo,
ImageInfoSpecificQCow2) wherever qemu states the same fact, and adds ours
under keys qemu does not use.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from .layout import Layout, build_layout
from .model import Image
from .model.qcow2_header_extensions import (FEATURE_NAME_TABLE, BitmapsBody, CryptoBody, DedupBody,
                                            DraftBitmapsBody, NameBody)
from .model.qcow2_header import COMPRESSION_TYPES, CRYPT_METHODS, FEATURE_GROUPS, KNOWN_MASKS

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
            "table-offset": d.dedup_table_offset, "table-size": d.dedup_table_size,
            "table-size-unit": "level-1 entries",
            "hash-algorithm": "sha256" if d.hash_algorithm in (None, 0) else d.hash_algorithm,
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
    elif isinstance(body, BitmapsBody):
        out.update({"nb-bitmaps": body.nb_bitmaps, "bitmap-directory-size": body.bitmap_directory_size,
                    "bitmap-directory-offset": body.bitmap_directory_offset})
    elif isinstance(body, CryptoBody):
        out.update({"encryption-header-offset": body.offset, "encryption-header-length": body.length})
    elif isinstance(body, DraftBitmapsBody):
        out.update({"nb-dirty-bitmaps": body.nb_dirty_bitmaps, "dirty-bitmaps-offset": body.dirty_bitmaps_offset})
    elif isinstance(body, DedupBody):
        out.update({"dedup-table-offset": body.dedup_table_offset, "dedup-table-size": body.dedup_table_size})
    elif isinstance(body, NameBody):
        out["value"] = body.name.decode("utf-8", "backslashreplace")
    return out


def _iso(sec: int, nsec: int) -> str:
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%d %H:%M:%S") + f".{nsec // 1000:06d} UTC"
