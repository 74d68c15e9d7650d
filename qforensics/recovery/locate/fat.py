"""FAT12/16/32 boot sectors and the FAT32 FSInfo sector.

Follows the Microsoft FAT specification ("Microsoft Extensible Firmware Initiative FAT32 File System
Specification", fatgen103, sections 3.1-3.3 and 5): the BPB at the start of sector 0 (BS_jmpBoot,
BPB_BytsPerSec in 512..4096, BPB_SecPerClus a power of two up to 128, BPB_RsvdSecCnt >= 1,
BPB_NumFATs >= 1, BPB_Media 0xF0 or 0xF8-0xFF, the 0x55 0xAA signature at 510), FAT32 when BPB_FATSz16 is
0 (then BPB_RootEntCnt and BPB_TotSec16 are 0, BPB_FSInfo and BPB_BkBootSec are set), BS_BootSig 0x29
before BS_VolID (offset 39 for FAT12/16, 67 for FAT32). The FSInfo sector: FSI_LeadSig 0x41615252 at 0,
FSI_StrucSig 0x61417272 at 484, FSI_TrailSig 0xAA550000 at 508.

A FAT32 volume keeps a copy of sectors 0-2 at BPB_BkBootSec (usually 6), byte for byte. A boot sector is
claimed as the primary (position 0) only when its copy is found BkBootSec sectors after it in the same
granule and none before, as the backup (BkBootSec*BytsPerSec) only the other way round; when neither or
both hold, it is ambiguous and nothing is claimed. A FAT32 BPB with BkBootSec 0 has no backup and is
claimed as the primary. FAT12/16 have no backup boot sector. FSInfo is claimed next to a decided boot
sector (it has no volume id of its own).
"""

from __future__ import annotations

from .claim import Claim, piece, power_of_two, u16le, u32le, where_bytes

FSINFO_LEAD, FSINFO_STRUC, FSINFO_TRAIL = 0x41615252, 0x61417272, 0xAA550000


def parse_bpb(s: bytes) -> dict | None:
    """The BPB fields of a FAT boot sector (512 bytes), or None when the spec's checks fail."""
    if len(s) < 512 or s[510:512] != b"\x55\xaa" or not (s[0] == 0xE9 or (s[0] == 0xEB and s[2] == 0x90)):
        return None
    bps, spc, rsvd, nfats = u16le(s, 11), s[13], u16le(s, 14), s[16]
    root_ent, tot16, media, fatsz16 = u16le(s, 17), u16le(s, 19), s[21], u16le(s, 22)
    tot32, fatsz32 = u32le(s, 32), u32le(s, 36)
    if not power_of_two(bps, 512, 4096) or not power_of_two(spc, 1, 128) or rsvd < 1 or not 1 <= nfats <= 4:
        return None
    if media != 0xF0 and media < 0xF8:
        return None
    fat32 = fatsz16 == 0
    total = tot16 or tot32
    fatsz = fatsz32 if fat32 else fatsz16
    if fat32 and (root_ent or tot16 or u16le(s, 42) != 0 or u32le(s, 44) < 2):
        return None
    if not total or not fatsz or (root_ent * 32) % bps:
        return None
    root_secs = (root_ent * 32 + bps - 1) // bps
    if rsvd + nfats * fatsz + root_secs >= total:
        return None
    sig_at = 66 if fat32 else 38
    if s[sig_at] != 0x29:
        return None
    out = {"bps": bps, "total": total, "fat32": fat32, "volid": u32le(s, sig_at + 1), "fsinfo": 0, "bk": 0}
    if fat32:
        fsinfo, bk = u16le(s, 48), u16le(s, 50)
        out["fsinfo"] = fsinfo if 0 < fsinfo < rsvd else 0
        out["bk"] = bk if 0 < bk < rsvd else 0
    return out


def _is_fsinfo(s: bytes | None) -> bool:
    return s is not None and u32le(s, 0) == FSINFO_LEAD and u32le(s, 484) == FSINFO_STRUC \
        and u32le(s, 508) == FSINFO_TRAIL


def _role(buf, at: int, granule: int, bpb: dict, head: bytes) -> int | None:
    """0 for the primary boot sector, BkBootSec for the backup, None when it cannot be told."""
    if not bpb["fat32"] or not bpb["bk"]:
        return 0
    gap = bpb["bk"] * bpb["bps"]
    after = piece(buf, at + gap, 90, granule, at)
    before = piece(buf, at - gap, 90, granule, at)
    copy_after, copy_before = after == head[:90], before == head[:90]
    if copy_after and not copy_before:
        return 0
    if copy_before and not copy_after:
        return bpb["bk"]
    return None


def detect_fat(buf: bytes | memoryview, granule: int) -> list[Claim]:
    """FAT boot sectors (primary, FAT32 backup) and FSInfo sectors; frame ``fat:<volume id hex>``."""
    claims = []
    for at in where_bytes(buf, 510, b"\x55\xaa").tolist():
        s = piece(buf, at, 512, granule)
        bpb = parse_bpb(s) if s is not None else None
        if bpb is None:
            continue
        role = _role(buf, at, granule, bpb, s)
        if role is None:
            continue
        frame, bps = f"fat:{bpb['volid']:08x}", bpb["bps"]
        kind = "FAT32" if bpb["fat32"] else "FAT12/16"
        what = f"{kind} boot sector" if role == 0 else f"{kind} backup boot sector (sector {role})"
        size = bpb["total"] * bps
        claims.append(Claim(at, frame, role * bps, what, size))
        if bpb["fsinfo"]:
            fs_at = at + bpb["fsinfo"] * bps
            if _is_fsinfo(piece(buf, fs_at, 512, granule, at)):
                sec = role + bpb["fsinfo"]
                claims.append(Claim(fs_at, frame, sec * bps, f"FAT32 FSInfo sector (sector {sec})", size))
    return claims
