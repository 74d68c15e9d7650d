"""NTFS boot sector and its backup.

Follows the NTFS on-disk format as documented by the Linux-NTFS project ("NTFS Documentation", Richard
Russon and Yuval Fledel, section "$Boot") and the kernel's fs/ntfs3 and ntfs-3g ``ntfs_boot_sector_is_ntfs``
checks: OEM id "NTFS    " at 3, bytes per sector a power of two 256..4096, sectors per cluster a power of
two up to 128 (or 0xF4-0xFF meaning 2^(256-n) sectors), the FAT fields (reserved sectors, FAT count, root
entries, 16-bit sector count, FAT size, 32-bit sector count) all zero, total sectors at 0x28, $MFT and
$MFTMirr LCNs inside the volume, clusters per MFT record at 0x40 (negative n: 2^-n bytes), the volume
serial at 0x48, and 0x55 0xAA at 510. The backup boot sector is the last sector of the partition: the BPB
counts one sector fewer than the partition holds, so the backup sits at sector ``total_sectors`` of the
volume (position total_sectors * bytes_per_sector).

The two copies are byte-identical, so which one a sector is must come from around it:
- the primary when the $MFT's first record ("FILE", record number 0 at 0x2C) is found mft_lcn clusters
  after it in the same granule (decisive), or when it starts a granule (partitions start aligned);
- the backup when it ends a granule of at least 64 KiB (partitions end aligned; the legacy 63-sector start
  puts a primary mid-granule there) and the primary test fails;
- otherwise nothing is claimed. MFT records alone are not claimed (their position needs the boot sector's
  frame and the $MFT's run list).
"""

from __future__ import annotations

import struct

from .claim import Claim, piece, power_of_two, u16le, u32le, u64le, where_bytes


def parse_boot(s: bytes) -> dict | None:
    """The fields of an NTFS boot sector, or None when the checks fail."""
    if len(s) < 512 or s[3:11] != b"NTFS    " or s[510:512] != b"\x55\xaa":
        return None
    bps, spc_raw = u16le(s, 0x0B), s[0x0D]
    if not power_of_two(bps, 256, 4096):
        return None
    if spc_raw <= 0x80:
        if not power_of_two(spc_raw, 1, 128):
            return None
        spc = spc_raw
    elif spc_raw >= 0xF4:
        spc = 1 << (256 - spc_raw)
    else:
        return None
    if u16le(s, 0x0E) or s[0x10] or u16le(s, 0x11) or u16le(s, 0x13) or u16le(s, 0x16) or u32le(s, 0x20):
        return None
    total, mft, mirr = u64le(s, 0x28), u64le(s, 0x30), u64le(s, 0x38)
    cluster = bps * spc
    clusters = total // spc
    if not total or total >= 1 << 48 or mft >= clusters or mirr >= clusters:
        return None
    per_rec = struct.unpack_from("<b", s, 0x40)[0]
    record = per_rec * cluster if per_rec > 0 else (1 << -per_rec if -31 <= per_rec < 0 else 0)
    if not power_of_two(record, 256, 1 << 20):
        return None
    return {"bps": bps, "cluster": cluster, "total": total, "mft": mft, "record": record,
            "serial": u64le(s, 0x48)}


def _mft_follows(buf, at: int, granule: int, boot: dict) -> bool:
    rec = piece(buf, at + boot["mft"] * boot["cluster"], 0x30, granule, at)
    return rec is not None and rec[:4] == b"FILE" and u32le(rec, 0x2C) == 0


def detect_ntfs(buf: bytes | memoryview, granule: int) -> list[Claim]:
    """NTFS boot sectors (primary at 0, backup at total_sectors*bps); frame ``ntfs:<serial hex>``."""
    claims = []
    for at in where_bytes(buf, 3, b"NTFS    ").tolist():
        s = piece(buf, at, 512, granule)
        boot = parse_boot(s) if s is not None else None
        if boot is None:
            continue
        frame, size = f"ntfs:{boot['serial']:016x}", (boot["total"] + 1) * boot["bps"]
        offset = at % granule
        if _mft_follows(buf, at, granule, boot) or offset == 0:
            claims.append(Claim(at, frame, 0, "NTFS boot sector", size))
        elif granule >= 65536 and offset == granule - boot["bps"]:
            pos = boot["total"] * boot["bps"]
            claims.append(Claim(at, frame, pos, f"NTFS backup boot sector (sector {boot['total']:#x})", size))
    return claims
