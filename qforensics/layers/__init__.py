"""The read path: a stack of layers, each with ``read(offset, length)`` and ``extents(start, end)``.

- ``file.FileLayer``: the image file (or a backing or data file), read-only, with its holes;
- ``qcow2.Qcow2Layer``: the guest view of one qcow2 image or snapshot, from its L1/L2 tables,
  decrypting through a qforensics.crypto cipher when the image is encrypted;
- ``chain.RawLayer``: a raw backing file;
- ``chain.open_chain``: the whole stack, backing and data files opened only with the user's consent;
  ``chain.resolve`` walks it as QEMU's block status does. map and recover build on it.
"""

from .chain import Consent, RawLayer, open_chain, resolve
from .extent import Extent, Kind, Runs
from .file import FileLayer
from .qcow2 import Qcow2Layer

__all__ = ["Consent", "Extent", "FileLayer", "Kind", "Qcow2Layer", "RawLayer", "Runs", "open_chain", "resolve"]
