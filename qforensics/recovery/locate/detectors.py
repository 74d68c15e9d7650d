"""All the detectors at once: ``detect(buf, granule)``."""

from __future__ import annotations

from collections.abc import Callable

from .btrfs import detect_btrfs
from .claim import SECTOR, Claim
from .ext import detect_ext
from .fat import detect_fat
from .ntfs import detect_ntfs
from .partitions import detect_gpt, detect_mbr
from .volumes import detect_luks, detect_lvm
from .xfs import detect_xfs

DETECTORS: tuple[Callable[[bytes | memoryview, int], list[Claim]], ...] = (
    detect_mbr, detect_gpt, detect_ext, detect_xfs, detect_btrfs, detect_ntfs, detect_fat, detect_lvm,
    detect_luks)


def detect(buf: bytes | memoryview, granule: int) -> list[Claim]:
    """Every claim every detector finds in ``buf`` (clusters of ``granule`` bytes, a multiple of 512),
    sorted by ``at``."""
    if granule <= 0 or granule % SECTOR:
        raise ValueError(f"granule {granule} is not a positive multiple of {SECTOR}")
    claims = [c for d in DETECTORS for c in d(buf, granule)]
    return sorted(claims, key=lambda c: (c.at, c.frame, c.position))
