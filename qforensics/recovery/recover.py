"""`qforensics recover`: the guest disk as a raw file, sparse wherever the guest reads zeros, with a log
of where every guest range came from or why it is missing.

On an intact image the output is byte for byte what `qemu-img convert -O raw`
writes (tests/test_recover_vs_qemu.py). On a damaged one it never stops at
the first error: every range a structure proves is written, the rest is
filled from other evidence (recovery/evidence.py) or logged as missing.

Reads are large (up to CHUNK bytes), the output is written only where the
data is not zero (4 KiB blocks, as qemu-img convert -S 4k), and the host
file's holes (SEEK_DATA) are never read, so a 1 TiB preallocated image costs
what its allocated bytes cost. Long runs of plain data are copied by the
kernel (copy_file_range) where it can, the threaded preadv/pwrite way where
it cannot (Writer.copy_runs).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import progress
from ..errors import UsageError
from ..layers.chain import ZERO_KINDS, RawLayer, resolve
from ..layers.extent import Extent, Kind, Runs

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

CHUNK = 4 << 20  # bytes read at a time
WINDOW_GAP = 256 << 10  # host bytes between two runs still worth reading through in one window
THREADED_COPY = 256 << 10  # runs at least this long are copied together (Writer.copy_runs)
MAX_PENDING = 1 << 18  # data runs gathered before they are copied (24 bytes each, copied twice to sort)
COPY_THREADS = max(1, min(2, os.cpu_count() or 1))  # the threaded copy's threads (qemu-img keeps two cores busy)
COPY_PIECE = 1 << 20  # bytes a long run is cut into (qemu-img convert's request size)
# the kernel copy with a forked zero tester (Writer.copy_runs) and the work shared with a forked process
# (Writer.share); the tests turn it off to run the threaded and serial ways on their own
KERNEL_COPY = sys.platform.startswith("linux") and hasattr(os, "copy_file_range") and hasattr(os, "fork")
KERNEL_GROUP = 1 << 15  # pieces per tester (32 GiB): the list of pieces stays a few MB
_SPAN = struct.Struct("<qqq")  # from the tester: piece, start, end of a non-zero span of it; end 0: piece done
_DONE = struct.Struct("<qq")  # from the sharing child: index done, or -1 and an errno
SHARED_INFLATE = 256  # compressed clusters in one batch worth a forked process
# copy_file_range errors that mean "not here" (the threaded copy takes over), not a failing output
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM,
                             errno.ETXTBSY, errno.EOVERFLOW})
ZERO_BLOCK = 4096  # granularity of the sparse output (qemu-img convert's default -S 4k)
_ZEROS = memoryview(bytes(CHUNK))  # sliced without copying


@dataclass
class Recovery:
    """What a recovery did: bytes per source, missing ranges with reasons (also streamed to the log)."""

    size: int
    sources: dict[str, int] = field(default_factory=dict)
    missing: list[tuple[int, int, str]] = field(default_factory=list)  # (guest start, length, reason)
    missing_bytes: int = 0

    @property
    def complete(self) -> bool:
        return not self.missing_bytes

    def summary(self) -> dict:
        return {"virtual-size": self.size, "complete": self.complete,
                "recovered-bytes": self.size - self.missing_bytes, "missing-bytes": self.missing_bytes,
                "bytes-by-source": dict(sorted(self.sources.items())),
                "missing-ranges": len(self.missing)}


class Log:
    """LOG.json, streamed: one range per line, merged with its neighbour when the source is the same."""

    def __init__(self, path: Path | None, header: dict):
        self._f = open(path, "w", encoding="utf-8") if path is not None else None  # noqa: SIM115
        self._cur: list | None = None  # [start, length, key, value]
        self._first = True
        if self._f:
            self._f.write("{\n" + "".join(f"  {json.dumps(k)}: {json.dumps(v)},\n" for k, v in header.items())
                          + '  "ranges": [\n')

    def add(self, start: int, length: int, source: str | None = None, missing: str | None = None) -> None:
        if self._f is None or length <= 0:
            return
        key, value = ("source", source) if missing is None else ("missing", missing)
        c = self._cur
        if c is not None and c[2] == key and c[3] == value and c[0] + c[1] == start:
            c[1] += length
            return
        self._flush()
        self._cur = [start, length, key, value]

    def _flush(self) -> None:
        if self._cur is None:
            return
        s, n, k, v = self._cur
        self._f.write(("" if self._first else ",\n") + "    " + json.dumps({"start": s, "length": n, k: v}))
        self._first = False
        self._cur = None

    def close(self, summary: dict) -> None:
        if self._f is None:
            return
        self._flush()
        self._f.write("\n  ],\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in summary.items())
                      + "\n}\n")
        self._f.close()


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
        try:
            if self._pool is not None:
                for future in self._copies:  # after an error elsewhere: let what runs finish, drop the rest
                    future.cancel()
                self._pool.shutdown(wait=True)
        finally:
            os.close(self.fd)


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


def shared_inflate(owner, batch: Runs, writer: Writer) -> set[int]:
    """Rows of ``batch``'s compressed clusters inflated and written by two processes (Writer.share), when
    there are enough to be worth a fork; the others (a stream that does not inflate, a process that died)
    are left to copy_compressed."""
    rows = np.flatnonzero(batch.kind == Kind.COMPRESSED)
    if len(rows) < SHARED_INFLATE:
        return set()
    starts, lengths, entries = batch.start[rows].tolist(), batch.length[rows].tolist(), batch.entry[rows].tolist()

    def work(k: int) -> bool:
        data, _, _ = owner.compressed_cluster(entries[k])
        if data is None:
            return False
        at = starts[k] % owner.cs
        writer.write(starts[k], data[at:at + lengths[k]])
        return True

    return {int(rows[k]) for k in writer.share(len(rows), work)}


def source_label(depth: int, layer, top_label: str, guest: int = 0) -> str:
    """Where a run's bytes come from, as the log names it."""
    labels = getattr(layer, "labels", None)
    if labels:
        label = labels.get(guest // layer.span)
        if label:
            return label
    if depth == 0:
        return top_label
    kind = "raw" if isinstance(layer, RawLayer) else "qcow2"
    return f"backing {depth} ({kind}): {Path(layer.name).name}"


def copy_normal(owner, ext: Extent, writer: Writer, rec: Recovery, log: Log, label: str) -> None:
    """A NORMAL (or raw data) run: large reads of the parts that hold data in the host file."""
    file = _host_file(owner)
    size = file.size
    for lo, hi, hole in file.pieces(ext.host, ext.length):
        guest = ext.start + (lo - ext.host)
        if hole:
            if lo >= size:  # past the end of the file: QEMU reads zeros; the bytes are lost
                _lost(guest, hi - lo, f"host range 0x{lo:x}-0x{hi:x} of {Path(file.path).name} lies past the "
                                      f"end of the file (0x{size:x})", rec, log)
            else:
                _found(guest, hi - lo, label, rec, log)
            continue
        for at in range(lo, hi, CHUNK):
            n = min(CHUNK, hi - at)
            g = guest + (at - lo)
            if isinstance(owner, RawLayer):
                data = owner.read_raw(at, n)
            else:
                data = owner.read_normal(g, at, n)
            writer.write(g, data)
        _found(guest, hi - lo, label, rec, log)


def copy_compressed(owner, ext: Extent, writer: Writer, rec: Recovery, log: Log, label: str, fallback) -> None:
    """A compressed run: its cluster inflated; of a damaged or cut stream, what does inflate is kept."""
    data, why, salvage = owner.compressed_cluster(ext.entry)
    at = ext.start % owner.cs
    if data is not None:
        writer.write(ext.start, data[at:at + ext.length])
        _found(ext.start, ext.length, label, rec, log)
        return
    good = max(0, min(len(salvage) - at, ext.length))
    if good:
        writer.write(ext.start, salvage[at:at + good])
        _found(ext.start, good, f"{label} (partial compressed cluster)", rec, log)
    _missing(Extent(ext.start + good, ext.length - good, Kind.INVALID, reason=why), writer, rec, log, fallback)


def _found(start: int, length: int, source: str, rec: Recovery, log: Log) -> None:
    log.add(start, length, source=source)
    rec.sources[source] = rec.sources.get(source, 0) + length


def _host_file(owner):
    return owner.file if isinstance(owner, RawLayer) else owner.data


class PendingCopies:
    """Data runs gathered across batches and copied in host order: a fragmented image's small runs,
    scattered over the host file in guest order, are then read in a few sequential windows."""

    def __init__(self, writer: Writer):
        self.writer = writer
        self.parts: dict[int, tuple[object, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]] = {}
        self.rows = 0

    def add(self, owner, batch: Runs, rows: np.ndarray) -> None:
        entry = self.parts.setdefault(id(owner), (owner, []))
        entry[1].append((batch.host[rows], batch.length[rows], batch.start[rows]))
        self.rows += len(rows)
        if self.rows >= MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        for owner, parts in self.parts.values():
            host, length, guest = (np.concatenate([p[i] for p in parts]) for i in range(3))
            copy_rows(owner, host, length, guest, self.writer)
        self.parts.clear()
        self.rows = 0


def copy_rows(owner, host: np.ndarray, length: np.ndarray, guest: np.ndarray, writer: Writer) -> None:
    """Data runs whose host bytes all lie in the file (no holes, not past its end), read in windows of
    nearby host offsets (at most CHUNK bytes, into one reused buffer) and written where they belong."""
    order = np.argsort(host, kind="stable")
    host, length, guest = host[order], length[order], guest[order]
    end = np.maximum.accumulate(host + length)
    file = _host_file(owner)
    view = memoryview(bytearray(CHUNK))

    def put(g: int, h: int, piece) -> None:
        writer.write(g, owner.decrypt(g, h, piece) if owner.cipher is not None else piece)

    n = len(host)
    i = 0
    plain = owner.cipher is None
    long_runs: list[tuple[int, int, int]] = []  # copied last, together (Writer.copy_runs)
    while i < n:
        lo = int(host[i])
        if int(length[i]) >= THREADED_COPY:
            long_runs.append((lo, int(length[i]), int(guest[i])))
            i += 1
            continue
        # a shorter run (below THREADED_COPY, so within CHUNK): extend the window while the next run starts
        # near what it covers and it stays within CHUNK
        j = i + 1 + int(np.searchsorted(end[i + 1:], lo + CHUNK, side="right"))
        gaps = np.flatnonzero(host[i + 1:j] - end[i:j - 1] > WINDOW_GAP)
        if len(gaps):
            j = i + 1 + int(gaps[0])
        hi = int(end[j - 1])
        file.read_into(lo, view[:hi - lo])
        for h, m, g in zip(host[i:j].tolist(), length[i:j].tolist(), guest[i:j].tolist(), strict=True):
            put(g, h, view[h - lo:h - lo + m])
        i = j
    writer.copy_runs(file, long_runs, None if plain else owner.decrypt)


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed buffers instead of returning them to the kernel after each chunk: the
    decryption and inflation of MiB-sized buffers otherwise costs a page fault per page, every chunk
    (M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3 in malloc.h). A no-op elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-1, 64 << 20)
        libc.mallopt(-3, 32 << 20)
    except (OSError, AttributeError):
        pass


def recover(layer, out: Path, *, log_path: Path | None = None, top_label: str = "active",
            header: dict | None = None, fallback: Callable | None = None) -> Recovery:
    """Write the guest view of ``layer`` to ``out`` as raw; ``fallback(start, end)`` may supply runs
    the layer cannot read (damaged metadata): an iterator of (start, length, bytes-or-None, source)."""
    _keep_freed_memory()
    rec = Recovery(layer.size)
    log = Log(log_path, header or {})
    writer = Writer(out, layer.size)
    pending = PendingCopies(writer)
    try:
        with progress.task(total=max(1, layer.size)) as bar:
            bar.describe("guest data")
            for depth, owner, batch in resolve(layer, 0, layer.size):
                fast = _fast_rows(owner, batch)
                if len(fast):
                    pending.add(owner, batch, fast)
                is_fast = np.zeros(len(batch), dtype=bool)
                is_fast[fast] = True
                inflated = shared_inflate(owner, batch, writer)
                for i, ext in enumerate(batch.rows()):
                    label = source_label(depth, owner, top_label, ext.start)
                    if is_fast[i]:
                        _found(ext.start, ext.length, label, rec, log)
                    elif ext.kind == Kind.INVALID or (ext.reason and ext.kind in ZERO_KINDS):
                        _missing(ext, writer, rec, log, fallback)
                    elif ext.kind in ZERO_KINDS:
                        zero = ext.kind in (Kind.ZERO_PLAIN, Kind.ZERO_ALLOC, Kind.RAW_HOLE)
                        _found(ext.start, ext.length, f"{label}: zero" if zero else "unallocated", rec, log)
                    elif ext.kind in (Kind.NORMAL, Kind.RAW_DATA):
                        copy_normal(owner, ext, writer, rec, log, label)
                    elif ext.kind == Kind.COMPRESSED:
                        if i in inflated:
                            _found(ext.start, ext.length, label, rec, log)
                        else:
                            copy_compressed(owner, ext, writer, rec, log, label, fallback)
                if len(batch):
                    bar.update(int(batch.start[-1] + batch.length[-1]))
            pending.flush()
            writer.drain()
    finally:
        writer.close()
        log.close(rec.summary())
    return rec


def _fast_rows(owner, batch: Runs) -> np.ndarray:
    """Rows of data runs whose host range lies in one data extent of the file (no hole, not past EOF)."""
    k = batch.kind
    rows = np.flatnonzero((k == Kind.NORMAL) | (k == Kind.RAW_DATA))
    if batch.reasons:
        rows = rows[~np.isin(rows, list(batch.reasons))]
    if getattr(owner, "cipher", None) is not None:
        rows = rows[batch.length[rows] % 512 == 0]  # whole sectors only; the rest goes the careful way
    if not len(rows):
        return rows
    starts, ends = _host_file(owner).data_extents
    host, end = batch.host[rows], batch.host[rows] + batch.length[rows]
    i = np.searchsorted(ends, host, side="right")
    ok = i < len(starts)
    i = np.minimum(i, len(starts) - 1) if len(starts) else i
    if len(starts):
        ok &= (starts[i] <= host) & (end <= ends[i])
    else:
        ok &= False
    return rows[ok]


def _missing(ext: Extent, writer: Writer, rec: Recovery, log: Log, fallback) -> None:
    """A run the layer cannot read: other evidence first, else logged as missing (it stays zeros)."""
    pos = ext.start
    if fallback is not None:
        for start, length, data, source in fallback(ext.start, ext.end):
            if start > pos:
                _lost(pos, start - pos, ext.reason, rec, log)
            if data is not None:
                writer.write(start, data)
            _found(start, length, source, rec, log)
            pos = start + length
    if pos < ext.end:
        _lost(pos, ext.end - pos, ext.reason, rec, log)


MAX_MISSING_KEPT = 10_000  # ranges kept in memory; the log has them all


def _lost(start: int, length: int, reason: str, rec: Recovery, log: Log) -> None:
    log.add(start, length, missing=reason)
    if len(rec.missing) < MAX_MISSING_KEPT:
        rec.missing.append((start, length, reason))
    rec.missing_bytes += length
