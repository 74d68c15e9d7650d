"""btrfs superblocks (the primary and its mirrors).

Follows the btrfs documentation (btrfs.readthedocs.io, "On-disk format", section "Superblock") and
fs/btrfs/disk-io.c btrfs_validate_super: the 4096-byte superblock at 64 KiB of the device, mirrors at
64 MiB and 256 GiB (btrfs_sb_offset), magic "_BHRfS_M" at 0x40, csum (32 bytes) at 0 over bytes 0x20..0x1000,
fsid at 0x20, bytenr (its own position on the device) at 0x30, sectorsize at 0x90, nodesize at 0x94,
csum_type at 0xC4, dev_item at 0xC9 (devid, then total_bytes: the device's size). Checks: bytenr one of the
three mirror offsets, sectorsize a power of two 4096..65536, nodesize a power of two sectorsize..65536,
the checksum: crc32c (csum_type 0), sha256 (2) and blake2b-256 (3) are verified; xxhash64 (1) is not (no
standard library implementation) and such a superblock is accepted on the other checks. Frame
``btrfs:<fsid hex>``; position bytenr; size = the device's total_bytes from dev_item.
"""

from __future__ import annotations

import hashlib
import struct

from .claim import Claim, crc32c, piece, power_of_two, where_bytes

MIRRORS = (0x10000, 0x4000000, 0x4000000000)
SUPER_SIZE = 4096


def _csum_ok(s: bytes, kind: int) -> bool:
    body = s[0x20:SUPER_SIZE]
    if kind == 0:
        return struct.unpack_from("<I", s, 0)[0] == crc32c(body)
    if kind == 1:
        return True
    if kind == 2:
        return s[:32] == hashlib.sha256(body).digest()
    if kind == 3:
        return s[:32] == hashlib.blake2b(body, digest_size=32).digest()
    return False


def detect_btrfs(buf: bytes | memoryview, granule: int) -> list[Claim]:
    """btrfs superblocks; frame ``btrfs:<fsid hex>``, position = bytenr (64 KiB, 64 MiB or 256 GiB)."""
    claims = []
    for at in where_bytes(buf, 0x40, b"_BHRfS_M").tolist():
        s = piece(buf, at, SUPER_SIZE, granule)
        if s is None:
            continue
        bytenr = struct.unpack_from("<Q", s, 0x30)[0]
        sectorsize, nodesize = struct.unpack_from("<II", s, 0x90)
        kind = struct.unpack_from("<H", s, 0xC4)[0]
        if bytenr not in MIRRORS or not power_of_two(sectorsize, 4096, 65536):
            continue
        if not power_of_two(nodesize, sectorsize, 65536) or not _csum_ok(s, kind):
            continue
        dev_bytes = struct.unpack_from("<Q", s, 0xC9 + 8)[0]
        n = MIRRORS.index(bytenr)
        what = "btrfs superblock" if n == 0 else f"btrfs superblock mirror {n}"
        claims.append(Claim(at, f"btrfs:{s[0x20:0x30].hex()}", bytenr, what, dev_bytes))
    return claims
