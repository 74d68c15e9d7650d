"""Partition tables: the MBR and the GPT headers.

MBR: the classic layout (UEFI specification 2.10, section 5.2.1 "Legacy Master Boot Record"): four
16-byte partition records at 446 (BootIndicator 0x00 or 0x80, OSType, StartingLBA and SizeInLBA as
little-endian 32-bit), signature 0x55 0xAA at 510. A sector is an MBR when every record is either all
zero or a partition with StartingLBA >= 1 and SizeInLBA >= 1, at least one is used, used records do not
overlap, and the sector is not an NTFS or FAT boot sector (those end in 0x55 0xAA too; their BPB checks
pass where an MBR's fail). A protective MBR (OSType 0xEE, section 5.2.3) gives no partition but gives
the disk's size when SizeInLBA is not 0xFFFFFFFF. An extended boot record (EBR) of a logical partition
looks like an MBR with relative addresses: a sector with no boot code, no disk signature (440..443), and
only a partition record followed by an optional extended link (0x05, 0x0F, 0x85) is ambiguous and is not
claimed. Extended container records are not listed as partitions.

GPT: the header (UEFI 2.10 section 5.3.2, table 5.5): Signature "EFI PART", Revision 0x00010000,
HeaderSize 92..512, HeaderCRC32 (CRC-32 of HeaderSize bytes with the field zeroed), Reserved 0, MyLBA,
AlternateLBA, FirstUsableLBA, LastUsableLBA, DiskGUID, PartitionEntryLBA, NumberOfPartitionEntries,
SizeOfPartitionEntry (128 * 2^n), PartitionEntryArrayCRC32. The primary has MyLBA 1 and AlternateLBA the
last LBA; the backup has MyLBA the last LBA and AlternateLBA 1: either gives the disk's size,
(last LBA + 1) * 512. The entry array (section 5.3.3) is read when it lies whole in the header's granule
and its CRC matches; then each used entry (PartitionTypeGUID not zero) gives (StartingLBA * 512,
(EndingLBA - StartingLBA + 1) * 512). Only 512-byte logical blocks are handled.
"""

from __future__ import annotations

import struct
import zlib

from .claim import Claim, SECTOR, piece, u32le, u64le, where_bytes
from .fat import parse_bpb
from .ntfs import parse_boot

EXTENDED = {0x05, 0x0F, 0x85}


def _records(s: bytes) -> list[tuple[int, int, int, int]] | None:
    """The used MBR records as (status, type, start LBA, sectors), or None when one is invalid."""
    used = []
    for i in range(4):
        rec = s[446 + 16 * i:462 + 16 * i]
        status, ptype = rec[0], rec[4]
        start, count = struct.unpack_from("<II", rec, 8)
        if ptype == 0:
            if any(rec):
                return None
            continue
        if status not in (0, 0x80) or start < 1 or count < 1:
            return None
        used.append((i, ptype, start, count))
    spans = sorted((start, start + count) for _, _, start, count in used)
    if not used or any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        return None
    return used


def _maybe_ebr(s: bytes, used) -> bool:
    if any(s[:444]):
        return False
    slots = {i: t for i, t, _, _ in used}
    return set(slots) <= {0, 1} and slots.get(0) not in (None, 0xEE) and slots.get(1, 0x05) in EXTENDED


def detect_mbr(buf: bytes | memoryview, granule: int) -> list[Claim]:
    """MBRs (position 0 of the disk), with their primary partitions."""
    claims = []
    for at in where_bytes(buf, 510, b"\x55\xaa").tolist():
        s = piece(buf, at, SECTOR, granule)
        if s is None or parse_bpb(s) is not None or parse_boot(s) is not None:
            continue
        used = _records(s)
        if used is None or _maybe_ebr(s, used):
            continue
        if any(t == 0xEE for _, t, _, _ in used):
            start, count = next((st, c) for _, t, st, c in used if t == 0xEE)
            size = (start + count) * SECTOR if count != 0xFFFFFFFF else 0
            claims.append(Claim(at, "disk", 0, "protective MBR", size))
            continue
        parts = tuple((st * SECTOR, c * SECTOR) for _, t, st, c in used if t not in EXTENDED)
        claims.append(Claim(at, "disk", 0, f"MBR ({len(used)} partition records)", 0, parts))
    return claims


def _header(h: bytes) -> dict | None:
    if h[:8] != b"EFI PART" or u32le(h, 8) != 0x00010000:
        return None
    hsize, crc = u32le(h, 12), u32le(h, 16)
    if not 92 <= hsize <= SECTOR or u32le(h, 20) != 0:
        return None
    if zlib.crc32(h[:16] + b"\0\0\0\0" + h[20:hsize]) != crc:
        return None
    my, alt, first, last = struct.unpack_from("<QQQQ", h, 24)
    elba, count, esize, ecrc = struct.unpack_from("<QIII", h, 72)
    if esize < 128 or esize & (esize - 1) or my < 1 or first > last + 1 or max(my, alt) >= 1 << 48:
        return None
    if not ((my == 1 and alt > 1) or (alt == 1 and my > 1)):
        return None
    return {"my": my, "alt": alt, "first": first, "last": last, "elba": elba, "count": count,
            "esize": esize, "ecrc": ecrc}


def _entries(buf, at: int, granule: int, hd: dict) -> tuple[tuple[int, int], ...]:
    start = at + (hd["elba"] - hd["my"]) * SECTOR
    length = hd["count"] * hd["esize"]
    arr = piece(buf, start, length, granule, at)
    if arr is None or zlib.crc32(arr) != hd["ecrc"]:
        return ()
    parts = []
    for o in range(0, length, hd["esize"]):
        if any(arr[o:o + 16]):
            lo, hi = u64le(arr, o + 32), u64le(arr, o + 40)
            if lo <= hi:
                parts.append((lo * SECTOR, (hi - lo + 1) * SECTOR))
    return tuple(parts)


def detect_gpt(buf: bytes | memoryview, granule: int) -> list[Claim]:
    """GPT primary (MyLBA 1) and backup (MyLBA = last LBA) headers, disk frame, with the disk's size."""
    claims = []
    for at in where_bytes(buf, 0, b"EFI PART").tolist():
        h = piece(buf, at, SECTOR, granule)
        hd = _header(h) if h is not None else None
        if hd is None:
            continue
        size = (max(hd["my"], hd["alt"]) + 1) * SECTOR
        kind = "GPT primary header" if hd["my"] == 1 else "GPT backup header"
        claims.append(Claim(at, "disk", hd["my"] * SECTOR, f"{kind} (MyLBA {hd['my']:#x})", size,
                            _entries(buf, at, granule, hd)))
    return claims
