"""`qforensics recover`: the guest disk as a raw file, sparse wherever the guest reads zeros, with a log
of where every guest range came from or why it is missing.

On an intact image the output is byte for byte what `qemu-img convert -O raw`
writes (tests/test_recover_vs_qemu.py). On a damaged one it never stops at
the first error: every range a structure proves is written, the rest is
filled from other evidence (recovery/evidence.py) or logged as missing.

Reads are large (up to CHUNK bytes), the output is written only where the
data is not zero (recovery/output.py), and the host file's holes (SEEK_DATA)
are never read, so a 1 TiB preallocated image costs what its allocated bytes
cost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import progress
from ..layers.raw import RawLayer
from ..layers.stack import ZERO_KINDS, resolve
from ..layers.extent import Extent, Kind, Runs, UnknownReason
from ..evidence.file import FileLayer
from .output import Writer
from .trust import Faults

CHUNK = 4 << 20  # bytes read at a time
WINDOW_GAP = 256 << 10  # host bytes between two runs still worth reading through in one window
THREADED_COPY = 256 << 10  # runs at least this long are copied together (Writer.copy_runs)
MAX_PENDING = 1 << 18  # data runs gathered before they are copied (24 bytes each, copied twice to sort)
SHARED_INFLATE = 256  # compressed clusters in one batch worth a forked process


@dataclass
class Recovery:
    """What a recovery did: bytes per source, missing ranges with reasons (also streamed to the log)."""

    size: int
    sources: dict[str, int] = field(default_factory=dict)
    missing: list[tuple[int, int, str]] = field(default_factory=list)  # (guest start, length, reason)
    missing_bytes: int = 0
    missing_count: int = 0  # ranges missing; ``missing`` keeps the first MAX_MISSING_KEPT
    # written as read, but through a structure the checks fault (recovery/trust.py): code -> bytes
    uncertain: dict[str, int] = field(default_factory=dict)
    uncertain_count: int = 0
    # read as unallocated where a table the scan could not place may have mapped data (missing, counted apart)
    unknown_bytes: int = 0
    unplaced: dict = field(default_factory=lambda: {"tables": 0, "clusters": 0, "bytes": 0})
    zeroed: list[tuple[int, int]] = field(default_factory=list)  # ZEROED (guest start, length), the first ones
    zero_clusters: int = 0  # allocated clusters of the top image that hold only zeros

    @property
    def uncertain_bytes(self) -> int:
        return sum(self.uncertain.values())

    @property
    def complete(self) -> bool:
        """Every guest range came from a structure no check faults, and the scan left nothing unplaced."""
        return not (self.missing_bytes or self.uncertain_count or self.unplaced["clusters"]
                    or self.unplaced["tables"])

    def summary(self) -> dict:
        return {"virtual-size": self.size, "complete": self.complete,
                "recovered-bytes": self.size - self.missing_bytes - self.uncertain_bytes,
                "missing-bytes": self.missing_bytes, "unknown-bytes": self.unknown_bytes,
                "uncertain-bytes": self.uncertain_bytes, "uncertain-ranges": self.uncertain_count,
                "uncertain-by-code": dict(sorted(self.uncertain.items())),
                "unplaced": dict(self.unplaced),
                "zero-clusters": self.zero_clusters,
                "zero-cluster-ranges": [{"start": g, "length": n} for g, n in self.zeroed],
                "bytes-by-source": dict(sorted(self.sources.items())),
                "missing-ranges": self.missing_count}


class Log:
    """LOG.json, streamed: one range per line, merged with its neighbour when the source is the same."""

    def __init__(self, path: Path | None, header: dict):
        self._f = open(path, "w", encoding="utf-8") if path is not None else None  # noqa: SIM115
        self._cur: list | None = None  # [start, length, key, value]
        self._first = True
        if self._f:
            self._f.write("{\n" + "".join(f"  {json.dumps(k)}: {json.dumps(v)},\n" for k, v in header.items())
                          + '  "ranges": [\n')

    def add(self, start: int, length: int, source: str | None = None, missing: str | None = None,
            uncertain: str | None = None) -> None:
        """One range: its ``source``, or why it is ``missing`` (``unknown`` when it is an UnknownReason), and
        the code of the fault it was read through when it is ``uncertain``."""
        if self._f is None or length <= 0:
            return
        if missing is None:
            key, value = "source", source
        else:
            key, value = ("unknown" if isinstance(missing, UnknownReason) else "missing"), str(missing)
        c = self._cur
        if c is not None and c[2] == key and c[3] == value and c[4] == uncertain and c[0] + c[1] == start:
            c[1] += length
            return
        self._flush()
        self._cur = [start, length, key, value, uncertain]

    def _flush(self) -> None:
        if self._cur is None:
            return
        s, n, k, v, u = self._cur
        row = {"start": s, "length": n, k: v, **({"uncertain": u} if u else {})}
        self._f.write(("" if self._first else ",\n") + "    " + json.dumps(row))
        self._first = False
        self._cur = None

    def close(self, summary: dict) -> None:
        if self._f is None:
            return
        self._flush()
        self._f.write("\n  ],\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in summary.items())
                      + "\n}\n")
        self._f.close()


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
    alone = getattr(layer, "alone", None)
    if alone:
        placed = alone.get(guest - guest % layer.cs)
        if placed:
            return placed[1]
    labels = getattr(layer, "labels", None)
    if labels:
        label = labels.get(guest // layer.span)
        if label:
            return label
    if depth == 0:
        return top_label
    kind = "raw" if isinstance(layer, RawLayer) else "qcow2"
    return f"backing {depth} ({kind}): {Path(layer.name).name}"


def copy_normal(owner, ext: Extent, writer: Writer, rec: Recovery, log: Log, label: str,
                uncertain: str | None = None) -> None:
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
                _found(guest, hi - lo, label, rec, log, uncertain)
            continue
        for at in range(lo, hi, CHUNK):
            n = min(CHUNK, hi - at)
            g = guest + (at - lo)
            if isinstance(owner, RawLayer):
                data = owner.read_raw(at, n)
            else:
                data = owner.read_normal(g, at, n)
            writer.write(g, data)
        _found(guest, hi - lo, label, rec, log, uncertain)


def copy_compressed(owner, ext: Extent, writer: Writer, rec: Recovery, log: Log, label: str, fallback,
                    uncertain: str | None = None) -> None:
    """A compressed run: its cluster inflated; of a damaged or cut stream, what does inflate is kept."""
    data, why, salvage = owner.compressed_cluster(ext.entry)
    at = ext.start % owner.cs
    if data is not None:
        writer.write(ext.start, data[at:at + ext.length])
        _found(ext.start, ext.length, label, rec, log, uncertain)
        return
    good = max(0, min(len(salvage) - at, ext.length))
    if good:
        writer.write(ext.start, salvage[at:at + good])
        _found(ext.start, good, f"{label} (partial compressed cluster)", rec, log, uncertain)
    _missing(Extent(ext.start + good, ext.length - good, Kind.INVALID, reason=why), writer, rec, log, fallback)


ZEROED = "recover.zeroed_cluster"  # an allocated cluster of written zeros in an image the checks find damaged
MAX_ALLOCATED_RUNS = 1 << 22  # data runs remembered for the zero test (16 bytes each); past it, not all tested


class Allocated:
    """The top image's data runs that lie in the host file's data (not its holes), in guest order, merged
    where they touch: after the copy, the output's holes inside them are allocated clusters whose host bytes
    are written zeros (the Writer writes no zero block)."""

    def __init__(self, cluster_size: int):
        self.cs = cluster_size
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.n = 0

    def add(self, batch: Runs, rows: np.ndarray) -> None:
        if len(rows) and self.n < MAX_ALLOCATED_RUNS:
            start, end = batch.start[rows], batch.start[rows] + batch.length[rows]
            keep = np.concatenate(([True], start[1:] != end[:-1]))
            last = np.concatenate((keep[1:], [True]))
            self.parts.append((start[keep], end[last]))
            self.n += int(keep.sum())

    def zero_clusters(self, out: Path) -> tuple[int, list[tuple[int, int]]]:
        """How many whole clusters of these runs the output holds as holes, and those ranges (the first
        MAX_ZEROED_SHOWN) as (guest start, length)."""
        if not self.parts:
            return 0, []
        start = np.concatenate([p[0] for p in self.parts])
        end = np.concatenate([p[1] for p in self.parts])
        with FileLayer(out) as f:
            ds, de = f.data_extents
        # the output's holes: between its data extents
        hs = np.concatenate(([0], de)).astype(np.int64)
        he = np.concatenate((ds, [np.iinfo(np.int64).max])).astype(np.int64)
        cs, count, shown = self.cs, 0, []
        first = np.searchsorted(he, start, side="right")  # the holes each run meets: [first, last)
        last = np.searchsorted(hs, end, side="left")
        meets = np.flatnonzero(last > first)  # a run inside the output's data meets none (the usual case)
        for s, e, a, b in zip(start[meets].tolist(), end[meets].tolist(), first[meets].tolist(), last[meets].tolist(),
                              strict=True):
            for lo, hi in zip(np.maximum(hs[a:b], s).tolist(), np.minimum(he[a:b], e).tolist(), strict=True):
                lo, hi = -(-lo // cs) * cs, hi // cs * cs  # whole clusters only
                if hi > lo:
                    count += (hi - lo) // cs
                    if len(shown) < MAX_ZEROED_SHOWN:
                        shown.append((lo, hi - lo))
        return count, shown


def _found(start: int, length: int, source: str, rec: Recovery, log: Log, uncertain: str | None = None) -> None:
    log.add(start, length, source=source, uncertain=uncertain)
    rec.sources[source] = rec.sources.get(source, 0) + length
    if uncertain:
        rec.uncertain[uncertain] = rec.uncertain.get(uncertain, 0) + length
        rec.uncertain_count += 1


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
            header: dict | None = None, fallback: Callable | None = None, faults: Faults | None = None,
            view_fault: str | None = None, unplaced: dict | None = None, watch_zeros: bool = False) -> Recovery:
    """Write the guest view of ``layer`` to ``out`` as raw; ``fallback(start, end)`` may supply runs
    the layer cannot read (damaged metadata): an iterator of (start, length, bytes-or-None, source).
    ``faults``: what the checks fault in the top image (recovery/trust.py), whose ranges are uncertain;
    ``view_fault``: the code of a fault that makes every range of the top view uncertain; ``unplaced``: what
    the scan found and could not place (tables, clusters, bytes). The top image's allocated clusters whose
    host bytes are written zeros are counted (``zero-clusters``); with ``watch_zeros`` (an image the checks
    find damaged) they are uncertain (ZEROED), since damage that wipes clusters leaves exactly that."""
    _keep_freed_memory()
    rec = Recovery(layer.size)
    if unplaced:
        rec.unplaced.update(unplaced)
    log = Log(log_path, header or {})
    writer = Writer(out, layer.size)
    pending = PendingCopies(writer)
    allocated = Allocated(getattr(layer, "cs", 512))
    try:
        with progress.task(total=max(1, layer.size)) as bar:
            bar.describe("guest data")
            for depth, owner, batch in resolve(layer, 0, layer.size):
                if depth == 0:
                    doubt = _doubtful_rows(owner, batch, faults, view_fault)
                else:  # a backing file's bytes where tables the scan could not place may map the top
                    doubt = _unknown_below(layer, batch)
                fast = _fast_rows(owner, batch)
                if depth == 0:
                    allocated.add(batch, fast)
                if doubt:
                    fast = fast[~np.isin(fast, list(doubt))]
                if len(fast):
                    pending.add(owner, batch, fast)
                is_fast = np.zeros(len(batch), dtype=bool)
                is_fast[fast] = True
                inflated = shared_inflate(owner, batch, writer) if not doubt else set()
                for i, ext in enumerate(batch.rows()):
                    label = source_label(depth, owner, top_label, ext.start)
                    if is_fast[i]:
                        _found(ext.start, ext.length, label, rec, log)
                    elif i in doubt:
                        _doubtful(owner, ext, writer, rec, log, label, fallback, doubt[i])
                    else:
                        _copy(owner, ext, writer, rec, log, label, fallback, i in inflated)
                if len(batch):
                    bar.update(int(batch.start[-1] + batch.length[-1]))
            pending.flush()
            writer.drain()
        writer.close()
        _zero_clusters(rec, *allocated.zero_clusters(out), allocated.cs, watch_zeros)
    finally:
        writer.close()
        log.close(rec.summary())
    return rec


def _zero_clusters(rec: Recovery, count: int, ranges: list[tuple[int, int]], cs: int, uncertain: bool) -> None:
    """Allocated clusters of written zeros: reported always (a guest may write zeros; so does damage that
    wipes clusters), and uncertain when the checks find the image damaged."""
    rec.zero_clusters = count
    rec.zeroed = ranges
    if count and uncertain:
        rec.uncertain[ZEROED] = count * cs
        rec.uncertain_count += len(ranges)


def _copy(owner, ext: Extent, writer: Writer, rec: Recovery, log: Log, label: str, fallback, inflated: bool,
          uncertain: str | None = None) -> None:
    """One run the careful way, by its kind."""
    if ext.kind == Kind.INVALID or (ext.reason and ext.kind in ZERO_KINDS):
        _missing(ext, writer, rec, log, fallback)
    elif ext.kind in ZERO_KINDS:
        zero = ext.kind in (Kind.ZERO_PLAIN, Kind.ZERO_ALLOC, Kind.RAW_HOLE)
        _found(ext.start, ext.length, f"{label}: zero" if zero else "unallocated", rec, log, uncertain)
    elif ext.kind in (Kind.NORMAL, Kind.RAW_DATA):
        copy_normal(owner, ext, writer, rec, log, label, uncertain)
    elif ext.kind == Kind.COMPRESSED:
        if inflated:
            _found(ext.start, ext.length, label, rec, log, uncertain)
        else:
            copy_compressed(owner, ext, writer, rec, log, label, fallback, uncertain)


UNKNOWN_BELOW = "recover.unplaced_tables"  # a backing file's bytes where an unplaced table of the top may map


def _unknown_below(top, batch: Runs) -> dict[int, str]:
    """Rows a backing file gives where the top reads unallocated while tables the scan could not place may
    map them (Qcow2Layer.unknown_at): QEMU reads the backing file there, but the top's data may cover it."""
    if not getattr(top, "unknown", None):
        return {}
    return dict.fromkeys(np.flatnonzero(top.unknown_at(batch.start)).tolist(), UNKNOWN_BELOW)


def _doubtful_rows(owner, batch: Runs, faults: Faults | None, view_fault: str | None) -> dict[int, str]:
    """Rows of the top layer read through a structure the checks fault: row -> the finding's code."""
    if view_fault:
        return dict.fromkeys(range(len(batch)), view_fault)
    if faults is None:
        return {}
    img = getattr(owner, "img", None)
    return faults.rows(owner, batch, data=img is not None and owner.data is img.file)


def _doubtful(owner, ext: Extent, writer: Writer, rec: Recovery, log: Log, label: str, fallback, code: str) -> None:
    """A run read through a faulted structure: other evidence first (a snapshot that maps it elsewhere), and
    what none gives is written as read but logged as uncertain with the fault's code."""
    pos = ext.start
    if fallback is not None and ext.kind in (Kind.NORMAL, Kind.RAW_DATA):
        for start, length, data, source in fallback(ext.start, ext.end):
            if start > pos:
                _copy(owner, _part(ext, pos, start), writer, rec, log, label, None, False, code)
            if data is not None:
                writer.write(start, data)
            _found(start, length, source, rec, log)
            pos = start + length
    if pos < ext.end:
        _copy(owner, _part(ext, pos, ext.end), writer, rec, log, label, None, False, code)


def _part(ext: Extent, lo: int, hi: int) -> Extent:
    """The piece [lo, hi) of a run (its host offset moved along for data runs)."""
    if lo == ext.start and hi == ext.end:
        return ext
    host = ext.host + (lo - ext.start) if ext.host >= 0 else ext.host
    return ext._replace(start=lo, length=hi - lo, host=host)


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
MAX_ZEROED_SHOWN = 1000  # zeroed clusters named in the summary (uncertain-by-code counts them all)


def _lost(start: int, length: int, reason: str, rec: Recovery, log: Log) -> None:
    log.add(start, length, missing=reason)
    if isinstance(reason, UnknownReason):
        rec.unknown_bytes += length
    if len(rec.missing) < MAX_MISSING_KEPT:
        rec.missing.append((start, length, reason))
    rec.missing_count += 1
    rec.missing_bytes += length
