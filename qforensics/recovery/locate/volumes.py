"""Volume headers: LVM2 physical volume labels and LUKS headers.

LVM2: the label (lib/label/label.h, lib/format_text/layout.h; lvm2's "LVM2 on-disk format" notes) lies in
one of the first four sectors of a PV: id "LABELONE", sector_xl (the label's own sector) at 8, crc_xl at
16 (lvm's CRC-32: initial 0xf597a6cf, no final inversion, over bytes 20..512), offset_xl (the pv_header,
from the label's start) at 20, type "LVM2 001" at 24. The pv_header starts with the PV UUID (32 chars)
and device_size_xl. Position = sector_xl * 512 in frame ``lvm:<pv uuid>``, size = device_size_xl.

LUKS: the LUKS1 header (LUKS On-Disk Format Specification 1.2.3: magic "LUKS\\xba\\xbe", version 1,
key-bytes 16/32/64, uuid at 168, eight key slots at 208, each 0x00AC71F3 active or 0x0000DEAD inactive) is
at position 0. LUKS2 (LUKS2 On-Disk Format Specification: binary header, hdr_size at 8, uuid at 168,
hdr_offset at 256, csum at 448): the primary ("LUKS\\xba\\xbe", hdr_offset 0) and the secondary
("SKUL\\xba\\xbe", hdr_offset = its position) say where they are; hdr_size a power of two 16 KiB..4 MiB;
the sha256 checksum (csum_alg "sha256") is verified when the whole header area lies in the granule.
Frame ``luks:<uuid>``.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

from .claim import Claim, piece, power_of_two, where_bytes

LVM_INITIAL_CRC = 0xF597A6CF


def lvm_crc(data: bytes) -> int:
    """lvm2's calc_crc(INITIAL_CRC, data): CRC-32 register from 0xf597a6cf, without the final inversion."""
    return zlib.crc32(data, LVM_INITIAL_CRC ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def detect_lvm(buf: bytes | memoryview, granule: int) -> list[Claim]:
    """LVM2 PV labels; frame ``lvm:<pv uuid>``, position = the label's sector * 512."""
    claims = []
    for at in where_bytes(buf, 0, b"LABELONE").tolist():
        s = piece(buf, at, 512, granule)
        if s is None or s[24:32] != b"LVM2 001":
            continue
        sector, crc, offset = struct.unpack_from("<QII", s, 8)
        if sector > 3 or lvm_crc(s[20:512]) != crc or not 32 <= offset <= 512 - 40:
            continue
        uuid = s[offset:offset + 32]
        if not uuid.isascii() or not uuid.isalnum():
            continue
        size = struct.unpack_from("<Q", s, offset + 32)[0]
        claims.append(Claim(at, f"lvm:{uuid.decode()}", sector * 512, f"LVM2 PV label (sector {sector})", size))
    return claims


def _text(b: bytes) -> str | None:
    t = b.split(b"\0", 1)[0]
    return t.decode() if t and t.isascii() and t.decode().isprintable() else None


def _luks1(s: bytes) -> bool:
    key_bytes = struct.unpack_from(">I", s, 108)[0]
    states = [struct.unpack_from(">I", s, 208 + 48 * i)[0] for i in range(8)]
    return key_bytes in (16, 32, 64) and all(st in (0x00AC71F3, 0x0000DEAD) for st in states) \
        and _text(s[8:40]) is not None and _text(s[72:104]) is not None


def _luks2(buf, at: int, granule: int, s: bytes, hdr_offset: int, hdr_size: int) -> bool:
    if not power_of_two(hdr_size, 16384, 4 << 20) or (hdr_offset and not power_of_two(hdr_offset, 16384, 4 << 20)):
        return False
    area = piece(buf, at, hdr_size, granule)
    if area is None or _text(s[72:104]) != "sha256":
        return True
    digest = hashlib.sha256(area[:448] + b"\0" * 64 + area[512:]).digest()
    return area[448:480] == digest


def detect_luks(buf: bytes | memoryview, granule: int) -> list[Claim]:
    """LUKS1 headers (position 0) and LUKS2 primary/secondary headers (position hdr_offset)."""
    claims = []
    hits = [(at, True) for at in where_bytes(buf, 0, b"LUKS\xba\xbe").tolist()]
    hits += [(at, False) for at in where_bytes(buf, 0, b"SKUL\xba\xbe").tolist()]
    for at, primary in sorted(hits):
        s = piece(buf, at, 592, granule)
        if s is None:
            continue
        version = struct.unpack_from(">H", s, 6)[0]
        uuid = _text(s[168:208])
        if uuid is None:
            continue
        if version == 1 and primary and _luks1(s):
            claims.append(Claim(at, f"luks:{uuid}", 0, "LUKS1 header"))
        elif version == 2:
            hdr_size, hdr_offset = struct.unpack_from(">Q", s, 8)[0], struct.unpack_from(">Q", s, 256)[0]
            if (hdr_offset == 0) != primary or not _luks2(buf, at, granule, s, hdr_offset, hdr_size):
                continue
            what = "LUKS2 primary header" if primary else "LUKS2 secondary header"
            claims.append(Claim(at, f"luks:{uuid}", hdr_offset, what))
    return claims
