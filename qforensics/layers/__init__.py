"""The read path: a stack of layers, each with ``read(offset, length)`` and ``extents(start, end)``.

- ``file.FileLayer``: the image file (or a backing or data file), read-only, with its holes;
- ``qcow2.Qcow2Layer``: the guest view of one qcow2 image or snapshot, from its L1/L2 tables,
  decrypting through a qforensics.crypto cipher when the image is encrypted;
- ``chain.RawLayer``: a raw backing file;
- ``chain.open_chain``: the whole stack, backing and data files opened only with the user's consent;
  ``chain.resolve`` walks it as QEMU's block status does. map and recover build on it.
"""

from .extent import Extent, Kind, Runs
from .file import FileLayer

__all__ = ["Consent", "Extent", "FileLayer", "Kind", "Qcow2Layer", "RawLayer", "Runs", "open_chain", "resolve"]
_LATE = {"Consent": "chain", "RawLayer": "chain", "open_chain": "chain", "resolve": "chain", "Qcow2Layer": "qcow2"}


def __getattr__(name: str):
    # the model imports the file layer, and the guest layers import the model: bind them on first use
    if name in _LATE:
        from importlib import import_module

        return getattr(import_module(f".{_LATE[name]}", __name__), name)
    raise AttributeError(name)
