"""Self-locating structures: detectors that find on-disk structures recording their own position, and the
solver that places orphan L2 windows from what they find.

``detect(buf, granule)`` runs every detector; ``place_windows(...)`` places the windows. See
``claim.Claim`` for what a detector returns and ``solver.Solution`` for what the solver does.
"""

from .btrfs import detect_btrfs
from .claim import Claim, crc32c
from .detectors import DETECTORS, detect
from .ext import detect_ext
from .fat import detect_fat
from .ntfs import detect_ntfs
from .partitions import detect_gpt, detect_mbr
from .solver import Placement, Solution, place_windows
from .volumes import detect_luks, detect_lvm
from .xfs import detect_xfs

__all__ = ["Claim", "DETECTORS", "Placement", "Solution", "crc32c", "detect", "detect_btrfs", "detect_ext",
           "detect_fat", "detect_gpt", "detect_lvm", "detect_luks", "detect_mbr", "detect_ntfs", "detect_xfs",
           "place_windows"]
