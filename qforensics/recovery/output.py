"""The raw output of `qforensics recover`: a sparse file written only where the guest's bytes are not zero.

Zero 4 KiB blocks are skipped (as qemu-img convert -S 4k), so the output's holes
are the guest's zeros. Long runs of plain data are copied by the kernel
(copy_file_range) while a forked process finds their zero blocks; where the
kernel refuses, by threads (preadv, the zero test, pwrite). CPU-bound work that
holds the GIL (sector ciphers, inflation) is shared with a forked process
(Writer.share).
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UsageError

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

COPY_THREADS = max(1, min(2, os.cpu_count() or 1))  # the threaded copy's threads (qemu-img keeps two cores busy)
COPY_PIECE = 1 << 20  # bytes a long run is cut into (qemu-img convert's request size)
# the kernel copy with a forked zero tester (Writer.copy_runs) and the work shared with a forked process
# (Writer.share); the tests turn it off to run the threaded and serial ways on their own
KERNEL_COPY = sys.platform.startswith("linux") and hasattr(os, "copy_file_range") and hasattr(os, "fork")
KERNEL_GROUP = 1 << 15  # pieces per tester (32 GiB): the list of pieces stays a few MB
_SPAN = struct.Struct("<qqq")  # from the tester: piece, start, end of a non-zero span of it; end 0: piece done
_DONE = struct.Struct("<qq")  # from the sharing child: index done, or -1 and an errno
# copy_file_range errors that mean "not here" (the threaded copy takes over), not a failing output
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM,
                             errno.ETXTBSY, errno.EOVERFLOW})
ZERO_BLOCK = 4096  # granularity of the sparse output (qemu-img convert's default -S 4k)
_ZEROS = memoryview(bytes(4 << 20))  # sliced without copying (longer data is tested block by block)


class Writer:
    """The sparse raw output: only non-zero blocks are written; its size is set once at the start."""

    def __init__(self, path: Path, size: int):
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise UsageError(f"-o {path}: {exc.strerror}") from None
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            os.close(self.fd)
            raise UsageError(f"-o {path}: cannot make a {size}-byte file (the virtual size): {exc.strerror}") from None
        self._copies: deque = deque()  # pieces in flight, oldest first
        self._pool: ThreadPoolExecutor | None = None
        self._buffers = threading.local()  # one COPY_PIECE buffer per copying thread
        self._kernel = KERNEL_COPY

    def write(self, offset: int, data: bytes | memoryview) -> None:
        n = len(data)
        if n == 0 or data == _ZEROS[:n]:
            return
        view = memoryview(data)
        if n <= ZERO_BLOCK:
            self._pwrite_all(offset, view)
            return
        for lo, hi in self.nonzero_spans(data):  # only the non-zero 4 KiB blocks
            self._pwrite_all(offset + lo, view[lo:hi])

    def nonzero_spans(self, data) -> list[tuple[int, int]]:
        """(start, end) of the runs of non-zero 4 KiB blocks of ``data`` (the last block may be short)."""
        n = len(data)
        full = n // ZERO_BLOCK * ZERO_BLOCK
        blocks = np.frombuffer(data, dtype=np.uint64, count=full // 8).reshape(-1, ZERO_BLOCK // 8)
        # a block whose first word is not zero is data: only the others are read whole, so guest data
        # costs one cache line per block
        keep = blocks[:, 0] != 0
        doubt = np.flatnonzero(~keep)
        if len(doubt):
            keep[doubt] = (blocks[doubt] != 0).any(axis=1)
        tail = full < n and data[full:n] != _ZEROS[:n - full]
        if n and not len(doubt) and (tail or full == n):
            return [(0, n)]  # all data: the common case, without the run search
        nz = np.flatnonzero(keep)
        if tail:
            nz = np.append(nz, full // ZERO_BLOCK)
        if not len(nz):
            return []
        brk = np.flatnonzero(np.diff(nz) != 1)
        starts = np.concatenate(([nz[0]], nz[brk + 1])) * ZERO_BLOCK
        ends = np.minimum(np.concatenate((nz[brk], [nz[-1]])) * ZERO_BLOCK + ZERO_BLOCK, n)
        return list(zip(starts.tolist(), ends.tolist(), strict=True))

    def copy_runs(self, file, runs: list[tuple[int, int, int]], decrypt: Callable | None = None) -> None:
        """Copy long data runs (host offset, length, guest offset) of ``file``, skipping their zero blocks;
        ``decrypt(guest, host, data)`` gives the plaintext of an encrypted image's (Writer.shared_copy).

        On Linux the kernel copies the non-zero spans (copy_file_range: the bytes are copied once, where
        read and write copy them twice) while a forked process finds the spans through a read-only mapping
        of the file, a piece ahead. The tester is a process, not a thread: unmapping in this process
        interrupts the core the kernel copies on (TLB shootdowns), which made a thread slower than
        reading. What the kernel path does not finish (a file system that refuses, a tester that died)
        is copied the threaded way."""
        pieces: list[tuple[int, int, int]] = []
        for host, n, guest in runs:
            for at in range(0, n, COPY_PIECE):
                pieces.append((host + at, min(COPY_PIECE, n - at), guest + at))
                if len(pieces) >= KERNEL_GROUP:
                    self._copy_pieces(file, pieces, decrypt)
                    pieces = []
        self._copy_pieces(file, pieces, decrypt)

    def _copy_pieces(self, file, pieces: list[tuple[int, int, int]], decrypt: Callable | None) -> None:
        if decrypt is not None:
            self.shared_copy(file, pieces, decrypt)
            return
        done = self._kernel_copy(file, pieces) if self._kernel and pieces else 0
        for host, n, guest in pieces[done:]:
            self.copy_from(file, host, n, guest)

    def _fork(self, job: Callable[[int], None]) -> tuple[int, int] | None:
        """A forked process running ``job(write_fd)``, and the read end of its pipe; None where fork fails."""
        self.drain()  # no copying thread is in the middle of a piece when this process forks
        r, w = os.pipe()
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns on fork in a process with threads (numpy's BLAS pool, the copying
                # threads): the child takes no lock another thread could hold (numpy, mmap, os.read/write,
                # the sector ciphers)
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            return None
        if pid == 0:  # the child never returns, and leaves this process's buffers and files alone
            status = 1
            try:
                os.close(r)
                job(w)
                status = 0
            finally:
                os._exit(status)
        os.close(w)
        return pid, r

    def _kernel_copy(self, file, pieces: list[tuple[int, int, int]]) -> int:
        """How many of ``pieces``, in order, the kernel path copied whole."""
        child = self._fork(lambda w: _zero_test(file, pieces, w, self.nonzero_spans))
        if child is None:
            self._kernel = False
            return 0
        pid, r = child
        done = 0
        try:
            with open(r, "rb") as spans:
                while done < len(pieces):
                    rec = spans.read(_SPAN.size)
                    if len(rec) < _SPAN.size:
                        break  # the tester died (a signal; SIGBUS if the file was cut under its mapping)
                    i, lo, hi = _SPAN.unpack(rec)
                    if not hi:
                        done = i + 1
                        continue
                    host, _, guest = pieces[i]
                    if not self._copy_range(file, host + lo, hi - lo, guest + lo):
                        break
        finally:
            if done < len(pieces):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        return done

    def share(self, count: int, work: Callable[[int], bool]) -> set[int]:
        """The indices i < count whose ``work(i)`` returned True: this process does the even ones, a forked
        one the odd ones, in parallel (for CPU-bound work that holds the GIL: sector ciphers, inflation).
        What the other process did not report (it died, or its work returned False) is missing from the
        set; an output error there (ENOSPC, EIO) is raised here."""
        child = self._fork(lambda w: _share_odd(count, work, w)) if count > 1 and KERNEL_COPY else None
        if child is None:
            return {i for i in range(count) if work(i)}
        pid, r = child
        done: set[int] = set()
        error = 0
        finished = False
        try:
            done.update(i for i in range(0, count, 2) if work(i))
            with open(r, "rb") as news:
                r = -1
                while len(rec := news.read(_DONE.size)) == _DONE.size:
                    index, code = _DONE.unpack(rec)
                    if index < 0:
                        error = code
                    elif index % 2 and index < count:
                        done.add(index)
            finished = True
        finally:
            if r >= 0:
                os.close(r)
            if not finished:  # an error or an interrupt here: the other half is not wanted any more
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if error:
            raise OSError(error, os.strerror(error))
        return done

    def shared_copy(self, file, pieces: list[tuple[int, int, int]], decrypt: Callable) -> None:
        """Encrypted pieces, read, decrypted, tested and written by two processes (Writer.share: the sector
        ciphers hold the GIL, and two threads decrypted slower than one); what the other did not report is
        done here."""
        buf = memoryview(bytearray(COPY_PIECE))

        def work(i: int) -> bool:
            self._decrypt_piece(file, pieces[i], decrypt, buf)
            return True

        done = self.share(len(pieces), work)
        for i in range(len(pieces)):
            if i not in done:
                work(i)

    def _decrypt_piece(self, file, piece: tuple[int, int, int], decrypt: Callable, buf: memoryview) -> None:
        host, n, guest = piece
        got = file.read_into(host, buf[:n])
        got -= got % 512  # whole sectors only (a file cut under us)
        if got:
            self.write(guest, decrypt(guest, host, buf[:got]))

    def _copy_range(self, file, host: int, length: int, offset: int) -> bool:
        try:
            got = file.copy_range(host, length, self.fd, offset)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise  # ENOSPC, EIO: the output fails, as a pwrite would
            self._kernel = False
            return False
        return got == length  # short: the file ended early; the threaded way writes what there is

    def copy_from(self, file, host: int, length: int, offset: int) -> None:
        """Copy a long data run of ``file``, skipping its zero blocks. Pieces are read, tested and written
        on up to COPY_THREADS threads, as qemu-img convert keeps several requests in flight (preadv,
        the zero test and pwrite release the GIL); the output ranges never overlap, so their order does
        not matter."""
        if self._pool is None:
            # imported here: it brings logging and queue, 12 ms of start-up that the kernel copy never needs
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="qf-copy")
        for at in range(0, length, COPY_PIECE):
            while len(self._copies) >= 2 * COPY_THREADS:
                self._copies.popleft().result()  # raises what the copy met
            self._copies.append(self._pool.submit(self._copy_piece, file, host + at, min(COPY_PIECE, length - at),
                                                  offset + at))

    def _copy_piece(self, file, host: int, length: int, offset: int) -> None:
        buf = getattr(self._buffers, "view", None)
        if buf is None:
            buf = self._buffers.view = memoryview(bytearray(COPY_PIECE))
        got = file.read_into(host, buf[:length])
        self.write(offset, buf[:got])

    def _pwrite_all(self, offset: int, view: memoryview) -> None:
        while len(view):
            k = os.pwrite(self.fd, view, offset)
            offset += k
            view = view[k:]

    def drain(self) -> None:
        """Wait for the threaded copies in flight; the first that failed raises here."""
        while self._copies:
            self._copies.popleft().result()

    def close(self) -> None:
        """Finish the copies and close the file (again: nothing)."""
        if self.fd < 0:
            return
        try:
            if self._pool is not None:
                for future in self._copies:  # after an error elsewhere: let what runs finish, drop the rest
                    future.cancel()
                self._pool.shutdown(wait=True)
        finally:
            os.close(self.fd)
            self.fd = -1


def _zero_test(file, pieces: list[tuple[int, int, int]], fd: int, spans_of) -> None:
    """The forked tester of Writer.copy_runs: each piece's non-zero spans, then its end, written to ``fd``."""
    for i, (host, n, _) in enumerate(pieces):
        with file.mapped(host, n) as view:
            spans = spans_of(view)
        out = b"".join(_SPAN.pack(i, lo, hi) for lo, hi in spans) + _SPAN.pack(i, 0, 0)
        while out:
            out = out[os.write(fd, out):]


def _share_odd(count: int, work: Callable[[int], bool], fd: int) -> None:
    """The forked half of Writer.share: the odd indices, each reported when its work succeeded; an output
    error is reported as (-1, errno) and ends it."""
    for i in range(1, count, 2):
        try:
            ok = work(i)
        except OSError as exc:
            os.write(fd, _DONE.pack(-1, exc.errno or errno.EIO))
            return
        if ok:
            os.write(fd, _DONE.pack(i, 0))
