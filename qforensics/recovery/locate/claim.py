"""The claim a detector makes, and the helpers every detector shares.

A detector scans a buffer made of clusters of ``granule`` bytes each. The clusters are not contiguous on
disk, so a structure is only read when it lies whole inside one granule. Structures start at 512-byte
sector positions: the candidates are found with numpy (one comparison per sector for the whole buffer),
and only those are parsed with ``struct``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

SECTOR = 512


@dataclass(frozen=True)
class Claim:
    """A structure that records its own position.

    ``at``: byte offset in the scanned buffer where the structure starts (the solver's callers convert it
    to an offset in the window, or to a guest offset for known claims). ``frame``: ``"disk"`` (absolute
    guest byte offset) or a file system's or volume's own frame (``"ext4:<uuid hex>"``, ``"xfs:<uuid>"``,
    ``"btrfs:<fsid hex>"``, ``"ntfs:<serial hex>"``, ``"fat:<volume id hex>"``, ``"lvm:<pv uuid>"``,
    ``"luks:<uuid>"``). ``position``: the structure's byte offset in that frame. ``size``: the file
    system's (or for the disk frame, the disk's) size in bytes when the structure states it, else 0.
    ``partitions``: (start, length) in bytes, disk frame, for partition tables.
    """

    at: int
    frame: str
    position: int
    what: str
    size: int = 0
    partitions: tuple[tuple[int, int], ...] = ()


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC-32C (Castagnoli, reflected, polynomial 0x1EDC6F41), as ``zlib.crc32`` is for CRC-32: the
    standard value (initial ~0, final inversion); ``crc`` continues a previous value."""
    c = crc ^ 0xFFFFFFFF
    table = _CRC32C
    for b in bytes(data):
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def sectors(buf: bytes | memoryview) -> np.ndarray:
    """The buffer as an (n, 512) uint8 array (a view; a tail shorter than a sector is left out)."""
    n = len(buf) // SECTOR
    return np.frombuffer(buf, dtype=np.uint8, count=n * SECTOR).reshape(n, SECTOR)


def where_bytes(buf: bytes | memoryview, offset: int, magic: bytes) -> np.ndarray:
    """Byte offsets of the sectors whose bytes at ``offset`` equal ``magic`` (numpy, every sector at once)."""
    arr = sectors(buf)
    if not len(arr):
        return np.zeros(0, dtype=np.int64)
    mask = arr[:, offset] == magic[0]
    for i in range(1, len(magic)):
        idx = np.flatnonzero(mask)
        if not len(idx):
            break
        keep = arr[idx, offset + i] == magic[i]
        mask = np.zeros(len(arr), dtype=bool)
        mask[idx[keep]] = True
    return np.flatnonzero(mask).astype(np.int64) * SECTOR


def room(at: int, granule: int, buflen: int) -> int:
    """Bytes from ``at`` to the end of its granule (or of the buffer)."""
    return min(at - at % granule + granule, buflen) - at


def piece(buf: bytes | memoryview, at: int, n: int, granule: int, anchor: int | None = None) -> bytes | None:
    """``n`` bytes at ``at`` when they lie whole in one granule (the granule of ``anchor`` when given: a
    structure's neighbour must be in the structure's own granule), else None."""
    if at < 0 or n > room(at, granule, len(buf)):
        return None
    if anchor is not None and at // granule != anchor // granule:
        return None
    return bytes(buf[at:at + n])


def u16le(b: bytes, o: int) -> int:
    return struct.unpack_from("<H", b, o)[0]


def u32le(b: bytes, o: int) -> int:
    return struct.unpack_from("<I", b, o)[0]


def u64le(b: bytes, o: int) -> int:
    return struct.unpack_from("<Q", b, o)[0]


def power_of_two(v: int, low: int = 1, high: int = 1 << 62) -> bool:
    return low <= v <= high and v & (v - 1) == 0


def uuid_text(b: bytes) -> str:
    """A 16-byte UUID as 8-4-4-4-12 hex (byte order as stored)."""
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
