"""The bottom layer: the image file, opened read-only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ImageOpenError


class FileLayer:
    """A file opened with O_RDONLY; reads never go past the end of the file.

    The evidence is never written: the descriptor is read-only and nothing
    here seeks or truncates. ``read`` returns fewer bytes than asked at the
    end of the file, so callers see truncation instead of invented zeros.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(self.path, flags)
        except OSError as exc:
            raise ImageOpenError(exc.strerror or str(exc), structure=str(self.path)) from None
        try:
            st = os.fstat(self._fd)
        except OSError as exc:
            os.close(self._fd)
            raise ImageOpenError(exc.strerror or str(exc), structure=str(self.path)) from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            os.close(self._fd)
            raise ImageOpenError("not a regular file or block device", structure=str(self.path))
        self.size = st.st_size if stat.S_ISREG(st.st_mode) else os.lseek(self._fd, 0, os.SEEK_END)
        self.allocated_bytes = st.st_blocks * 512 if stat.S_ISREG(st.st_mode) else self.size

    def read(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) clipped to the end of the file."""
        if offset < 0 or length <= 0 or offset >= self.size:
            return b""
        length = min(length, self.size - offset)
        chunks = []
        while length > 0:
            chunk = os.pread(self._fd, min(length, 1 << 30), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
