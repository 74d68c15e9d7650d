"""XFS allocation group headers: superblock copies, AGF and AGI.

Follows the XFS Algorithms & Data Structures document (kernel Documentation/filesystems/xfs, "Allocation
Groups": "Superblocks", "AG Free Space Management" (AGF), "AG Inode Management" (AGI)) and the kernel's
xfs_validate_sb_common. Each AG starts with a superblock copy ("XFSB"), the AGF ("XAGF") in its second
sector and the AGI ("XAGI") in its third, the sector being sb_sectsize. Big-endian fields; v5 (CRC) file
systems store a crc32c of each sector (sb_crc at 224, agf_crc at 216, agi_crc at 312, little-endian, the
field counted as zero), and the AGF and AGI carry the file system's UUID (agf_uuid at 64, agi_uuid at 296).

The superblock does not say which AG it belongs to; agf_seqno / agi_seqno do. So a superblock is claimed
only with its AGF or AGI in the same granule (seqno equal when both are there): the AG's byte position is
agno * sb_agblocks * sb_blocksize, the AGF's and AGI's one and two sectors more. Superblock checks:
sb_blocksize a power of two 512..65536 equal to 1 << sb_blocklog, sb_sectsize 512..32768 equal to
1 << sb_sectlog, sb_inodesize 256..2048 equal to 1 << sb_inodelog, sb_inopblock = blocksize / inodesize,
sb_agblocks >= 64 with sb_agblklog its rounded-up log, sb_agcount >= 1, sb_dblocks within the last AG,
version 4 or 5, and the CRC for version 5. AGF/AGI: version 1, seqno < sb_agcount, length <= sb_agblocks,
and for v5 the UUID and CRC. Frame ``xfs:<sb_uuid>`` (8-4-4-4-12); size = sb_dblocks * sb_blocksize.
"""

from __future__ import annotations

import struct

from .claim import Claim, crc32c, piece, power_of_two, uuid_text, where_bytes


def _crc_ok(s: bytes, at: int) -> bool:
    return crc32c(s[:at] + b"\0\0\0\0" + s[at + 4:]) == struct.unpack_from("<I", s, at)[0]


def parse_sb(s: bytes) -> dict | None:
    """The fields of an XFS superblock sector, or None when the checks fail."""
    if s[:4] != b"XFSB":
        return None
    bsize, dblocks = struct.unpack_from(">IQ", s, 4)
    agblocks, agcount = struct.unpack_from(">II", s, 84)
    version, sectsize, isize, inopb = struct.unpack_from(">HHHH", s, 100)
    blocklog, sectlog, inodelog, _, agblklog = s[120:125]
    if not power_of_two(bsize, 512, 65536) or 1 << blocklog != bsize:
        return None
    if not power_of_two(sectsize, 512, 32768) or 1 << sectlog != sectsize or len(s) < sectsize:
        return None
    if not power_of_two(isize, 256, 2048) or 1 << inodelog != isize or inopb * isize != bsize:
        return None
    if agblocks < 64 or agblklog != (agblocks - 1).bit_length() or agcount < 1:
        return None
    if not (agcount - 1) * agblocks < dblocks <= agcount * agblocks:
        return None
    v5 = version & 0xF == 5
    if version & 0xF not in (4, 5) or (v5 and not _crc_ok(s[:sectsize], 224)):
        return None
    return {"bsize": bsize, "dblocks": dblocks, "agblocks": agblocks, "agcount": agcount,
            "sectsize": sectsize, "v5": v5, "uuid": s[32:48], "meta_uuid": s[248:264]}


def _seqno(h: bytes | None, magic: bytes, uuid_at: int, crc_at: int, sb: dict) -> int | None:
    if h is None or h[:4] != magic:
        return None
    version, seqno, length = struct.unpack_from(">III", h, 4)
    if version != 1 or seqno >= sb["agcount"] or length > sb["agblocks"]:
        return None
    if sb["v5"] and (h[uuid_at:uuid_at + 16] not in (sb["uuid"], sb["meta_uuid"]) or not _crc_ok(h, crc_at)):
        return None
    return seqno


def detect_xfs(buf: bytes | memoryview, granule: int) -> list[Claim]:
    """XFS AG headers (superblock copy, AGF, AGI) whose AG number the AGF or AGI gives."""
    claims = []
    for at in where_bytes(buf, 0, b"XFSB").tolist():
        head = piece(buf, at, 512, granule)
        if head is None:
            continue
        sect = struct.unpack_from(">H", head, 102)[0]
        s = piece(buf, at, sect, granule) if power_of_two(sect, 512, 32768) else None
        sb = parse_sb(s) if s is not None else None
        if sb is None:
            continue
        agf = _seqno(piece(buf, at + sect, sect, granule, at), b"XAGF", 64, 216, sb)
        agi = _seqno(piece(buf, at + 2 * sect, sect, granule, at), b"XAGI", 296, 312, sb)
        found = {n for n in (agf, agi) if n is not None}
        if len(found) != 1:
            continue
        agno = found.pop()
        base = agno * sb["agblocks"] * sb["bsize"]
        frame, size = f"xfs:{uuid_text(sb['uuid'])}", sb["dblocks"] * sb["bsize"]
        claims.append(Claim(at, frame, base, f"XFS superblock (AG {agno})" if agno == 0
                            else f"XFS superblock copy (AG {agno})", size))
        if agf is not None:
            claims.append(Claim(at + sect, frame, base + sect, f"XFS AGF (AG {agno})", size))
        if agi is not None:
            claims.append(Claim(at + 2 * sect, frame, base + 2 * sect, f"XFS AGI (AG {agno})", size))
    return claims
