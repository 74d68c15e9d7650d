"""qforensics: forensic analysis and validation of qcow2 disk images.

    >>> import qforensics
    >>> img = qforensics.open_image("disk.qcow2")          # doctest: +SKIP
    >>> img.header.cluster_size, [s.name for s in img.snapshots]
    >>> l1 = img.l1_table()                                 # numpy uint64 array
    >>> img.findings                                        # list of Finding
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import ImageOpenError, QforensicsError
from .findings import Finding, Severity

if TYPE_CHECKING:
    from .model import Image, Unreadable


def __getattr__(name: str):
    """Image and Unreadable load on first use, and numpy with them: the command line sets numpy's
    environment first (cli.py)."""
    if name in ("Image", "Unreadable"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = ["Finding", "Image", "ImageOpenError", "QforensicsError", "Severity", "Unreadable", "open_image",
           "__version__"]


def open_image(path: str | os.PathLike[str]) -> Image:
    """Open a qcow2 image read-only; raises ImageOpenError if it is not qcow2 at all."""
    from .model import Image

    return Image(path)
