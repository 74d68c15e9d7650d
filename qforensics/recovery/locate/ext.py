"""ext2/ext3/ext4 superblocks (the primary and its backup copies).

Follows the Linux kernel's Documentation/filesystems/ext4 (super.rst "Super Block", overview.rst "Blocks"
and "Block Groups"). The superblock is 1024 bytes, s_magic 0xEF53 at 0x38. Group 0's superblock lies
1024 bytes into the file system; a backup lies at the start of the first block of its group, which is
block s_first_data_block + g * s_blocks_per_group (s_first_data_block is 1 for 1 KiB blocks, so the copy
is in block 1 of the group, and 0 otherwise). s_block_group_nr (0x5A, 16 bits) names the group, so the
position in the file system is 1024 for group 0 and (s_first_data_block + g * s_blocks_per_group) *
block_size for group g. With sparse_super (RO_COMPAT 0x1) copies lie only in groups 0, 1 and powers of 3,
5 and 7; with sparse_super2 (COMPAT 0x200) in the groups of s_backup_bgs (0x24C). Past 65535 groups the
16-bit number wraps; it is then resolved only when a single sparse_super group matches.

Checks (the kernel's ext4_fill_super ones that a lone superblock allows): s_log_block_size <= 6,
s_first_data_block 1 for 1 KiB blocks and 0 for larger ones (bigalloc 1 KiB may have 0), blocks and
inodes per group in 1..8*block_size, s_rev_level <= 1, s_inode_size a power of two 128..block_size,
s_inodes_count = s_inodes_per_group * groups, the group inside the file system, and with metadata_csum
(RO_COMPAT 0x400, s_checksum_type 1) the superblock's crc32c (seed ~0, no final inversion) in s_checksum.
Frame ``ext4:<s_uuid hex>`` for every ext2/3/4; size = s_blocks_count (hi half with INCOMPAT_64BIT) *
block size. Group descriptor tables are not claimed.
"""

from __future__ import annotations

import struct

from .claim import Claim, crc32c, piece, power_of_two, u16le, u32le, where_bytes


def _sparse(g: int) -> bool:
    if g <= 1:
        return True
    for p in (3, 5, 7):
        n = p
        while n < g:
            n *= p
        if n == g:
            return True
    return False


def parse_super(s: bytes) -> dict | None:
    """The fields of an ext2/3/4 superblock (1024 bytes), or None when the checks fail."""
    (inodes, blocks_lo, _, _, _, fdb, log_bs, _, bpg, _, ipg) = struct.unpack_from("<11I", s, 0)
    if u16le(s, 0x38) != 0xEF53 or log_bs > 6:
        return None
    bs = 1024 << log_bs
    rev, isize, compat, incompat, ro = u32le(s, 0x4C), u16le(s, 0x58), *struct.unpack_from("<3I", s, 0x5C)
    if fdb not in (0, 1) or (fdb and bs != 1024) or rev > 1:
        return None
    if not 8 <= bpg <= 8 * bs or not 1 <= ipg <= 8 * bs:
        return None
    if rev == 1 and not power_of_two(isize, 128, bs):
        return None
    blocks = blocks_lo | (u32le(s, 0x150) << 32 if incompat & 0x80 else 0)
    if blocks <= fdb:
        return None
    groups = (blocks - fdb + bpg - 1) // bpg
    if inodes != ipg * groups:
        return None
    if ro & 0x400 and (s[0x175] != 1 or crc32c(s[:0x3FC]) ^ 0xFFFFFFFF != u32le(s, 0x3FC)):
        return None
    return {"bs": bs, "fdb": fdb, "bpg": bpg, "blocks": blocks, "groups": groups,
            "sparse": bool(ro & 1), "sparse2": bool(compat & 0x200), "backup_bgs": struct.unpack_from("<2I", s, 0x24C),
            "stored_group": u16le(s, 0x5A), "uuid": s[0x68:0x78].hex()}


def _group(sb: dict) -> int | None:
    """The superblock's group, or None when it is not a group that holds a copy."""
    def holds(g: int) -> bool:
        if g == 0:
            return True
        if sb["sparse2"]:
            return g in sb["backup_bgs"]
        return _sparse(g) if sb["sparse"] else True
    stored, groups = sb["stored_group"], sb["groups"]
    if groups <= 0x10000:
        return stored if stored < groups and holds(stored) else None
    if not sb["sparse"] or sb["sparse2"]:
        return None
    found = [g for g in range(stored, min(groups, 1 << 32), 0x10000) if holds(g)]
    return found[0] if len(found) == 1 else None


def detect_ext(buf: bytes | memoryview, granule: int) -> list[Claim]:
    """ext2/3/4 superblocks; frame ``ext4:<uuid hex>``, position 1024 or the backup group's first block."""
    claims = []
    for at in where_bytes(buf, 0x38, b"\x53\xef").tolist():
        s = piece(buf, at, 1024, granule)
        sb = parse_super(s) if s is not None else None
        g = _group(sb) if sb is not None else None
        if g is None:
            continue
        size = sb["blocks"] * sb["bs"]
        pos = 1024 if g == 0 else (sb["fdb"] + g * sb["bpg"]) * sb["bs"]
        if pos >= size:
            continue
        what = "ext4 superblock (group 0)" if g == 0 else f"ext4 superblock copy (group {g})"
        claims.append(Claim(at, f"ext4:{sb['uuid']}", pos, what, size))
    return claims
