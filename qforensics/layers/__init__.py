"""The read path: a stack of layers, each with read(offset, length).

Only the file layer exists so far; data file, backing chain, decryption and
guest view layers stack on it.
"""

from .file import FileLayer

__all__ = ["FileLayer"]
