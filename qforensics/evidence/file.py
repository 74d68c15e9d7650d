"""The bottom layer: the image file, opened read-only."""

from __future__ import annotations

import errno
import mmap
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import ImageOpenError

MAX_EXTENTS = 1 << 22  # a file system gives no more extents than this for any file we analyse


def seek_extents(fd: int, size: int, *, strict: bool = False) -> list[tuple[int, int]]:
    """(start, end) of each data extent of the first ``size`` bytes, as lseek SEEK_DATA / SEEK_HOLE list them.

    Not strict (reading): where SEEK_DATA is unsupported or fails the whole file is one extent, since holes
    are only a shortcut; past MAX_EXTENTS the rest is one extent; ends are clipped to ``size``.
    Strict (the sparse digest, whose definition is this very list): any lseek failure but ENXIO raises,
    nothing is merged or clipped, so a sparse digest never silently becomes another one.
    """
    extents: list[tuple[int, int]] = []
    offset = 0
    try:
        while offset < size:
            if not strict and len(extents) >= MAX_EXTENTS:
                extents.append((offset, size))
                break
            try:
                data = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: nothing but a hole from offset to the end
                    raise
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            if hole <= data:  # no progress: the file changed under us, or the file system lies
                raise OSError(errno.EIO, f"SEEK_HOLE from data at {data} gave {hole}")
            extents.append((data, hole if strict else min(hole, size)))
            offset = hole
    except (OSError, AttributeError):  # AttributeError: no SEEK_DATA on this platform
        if strict:
            raise
        return [(0, size)] if size else []
    return extents


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

    def read_into(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset`` (one preadv); returns the bytes read, fewer at the end of the file."""
        if offset < 0 or offset >= self.size or not len(buf):
            return 0
        n = min(len(buf), self.size - offset)
        done = 0
        while done < n:
            got = os.preadv(self._fd, [buf[done:n]], offset + done)
            if not got:
                break
            done += got
        return done

    def copy_range(self, offset: int, length: int, out_fd: int, out_offset: int) -> int:
        """Have the kernel copy [offset, offset+length) to ``out_fd`` at ``out_offset`` (copy_file_range: no
        copy through user space); returns the bytes copied, fewer when the file ends first. Raises OSError
        where the kernel cannot (EXDEV across file systems on older kernels, ENOSYS, EINVAL, ...)."""
        done = 0
        while done < length:
            got = os.copy_file_range(self._fd, out_fd, length - done, offset + done, out_offset + done)
            if not got:
                break
            done += got
        return done

    @contextmanager
    def mapped(self, offset: int, length: int) -> Iterator[memoryview]:
        """[offset, offset+length), clipped to the end of the file, as a read-only view of a shared mapping
        (PROT_READ of the O_RDONLY descriptor: the evidence cannot be written through it). A file cut
        under the mapping raises SIGBUS on access: map only in a process that may die of it."""
        end = min(offset + length, self.size)
        if offset < 0 or offset >= end:
            yield memoryview(b"")
            return
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        m = mmap.mmap(self._fd, end - base, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=base)
        view = memoryview(m)
        try:
            with view[offset - base:] as window:
                yield window
        finally:
            view.release()
            m.close()

    @cached_property
    def data_extents(self) -> tuple[np.ndarray, np.ndarray]:
        """Starts and ends of the file's data extents (SEEK_DATA/SEEK_HOLE), as QEMU's file-posix sees them.

        Holes read as zeros; a file system without SEEK_DATA gives one extent, the whole file.
        """
        extents = seek_extents(self._fd, self.size)
        return (np.array([s for s, _ in extents], dtype=np.int64), np.array([e for _, e in extents], dtype=np.int64))

    def holds_data(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Which ranges [start, start+length) touch a data extent (not wholly a hole, not past the end)."""
        s, e = self.data_extents
        starts = np.asarray(starts, dtype=np.int64)
        i = np.searchsorted(e, starts, side="right")
        ok = i < len(s)
        return ok & (s[np.minimum(i, max(len(s) - 1, 0))] < starts + length) if len(s) else ok

    def data_runs(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) that hold data in the file (not holes, not past its end)."""
        s, e = self.data_extents
        i = int(np.searchsorted(e, start, side="right"))
        out = []
        while i < len(s) and s[i] < end:
            lo, hi = max(int(s[i]), start), min(int(e[i]), end)
            if lo < hi:
                out.append((lo, hi))
            i += 1
        return out

    def pieces(self, start: int, length: int) -> list[tuple[int, int, bool]]:
        """[start, start+length) cut at the file's extents: (lo, hi, True where a hole or past the end)."""
        out, at, end = [], start, start + length
        for lo, hi in self.data_runs(start, end):
            if lo > at:
                out.append((at, lo, True))
            out.append((lo, hi, False))
            at = hi
        if at < end:
            out.append((at, end, True))
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
