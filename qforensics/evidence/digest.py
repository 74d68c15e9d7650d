"""Digests of the evidence file, taken before and after an analysis with the same method:

- ``full``: SHA-256 of every byte of the file, what ``sha256sum`` prints;
- ``sparse``: the qforensics sparse digest (`SPARSE_RECIPE`): SHA-256 over the
  file's data extents, as SEEK_DATA/SEEK_HOLE list them, and their bytes. Not
  comparable with sha256sum, and it depends on where the file system keeps
  holes, so it proves the file unchanged in place, not equal to a copy;
- ``auto`` (default): full, unless the file's apparent size exceeds 4 GiB and
  its holes exceed half of it (a 1 TiB sparse image would take minutes per
  pass); the report then says why it chose sparse.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .. import progress
from .file import seek_extents


HASH_METHODS = ("auto", "full", "sparse")
SPARSE_MIN_SIZE = 4 << 30  # auto: sparse only above 4 GiB apparent size ...
SPARSE_MIN_HOLES = 0.5  # ... and with more than half of it in holes
CHUNK = 1 << 20
SPARSE_TAG = b"qforensics-sparse-sha256-v1"

# The sparse digest, as a standalone program (shown in the report; tests run it and compare).
SPARSE_RECIPE = """\
import errno, hashlib, os, sys

fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
h = hashlib.sha256(b"qforensics-sparse-sha256-v1\\n%d\\n" % size)
pos = 0
while pos < size:
    try:
        start = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: nothing but a hole past pos
            raise
        break
    end = os.lseek(fd, start, os.SEEK_HOLE)
    h.update(b"%d %d\\n" % (start, end - start))
    done = start
    while done < end:
        chunk = os.pread(fd, min(end - done, 1 << 20), done)
        if not chunk:
            sys.exit("the file shrank while being read")
        h.update(chunk)
        done += len(chunk)
    pos = end
print(h.hexdigest())
"""


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of each data extent, as SEEK_DATA/SEEK_HOLE list them (raises where they do not exist:
    a sparse digest must not quietly become a digest of other extents)."""
    return [(start, end - start) for start, end in seek_extents(fd, size, strict=True)]


def human_size(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def choose_hash(size: int, hole_bytes: int) -> tuple[str, str]:
    """auto: (method, reason). Sparse only when the file is over 4 GiB and more than half of it is holes."""
    apparent = f"the file's apparent size is {human_size(size)}"
    if size > SPARSE_MIN_SIZE and hole_bytes > SPARSE_MIN_HOLES * size:
        return "sparse", (f"--hash auto chose the sparse digest: {apparent} (over 4 GiB) and "
                          f"{100 * hole_bytes / size:.2f}% of it is holes (over half), so a full SHA-256 would "
                          "read every byte of the holes, twice")
    why = "4 GiB or less" if size <= SPARSE_MIN_SIZE else f"its holes are {100 * hole_bytes / size:.2f}%, half or less"
    return "full", f"--hash auto chose the full SHA-256: {apparent} ({why})"


def hash_evidence(path: Path, method: str) -> dict:
    """The evidence digest by one method ('full' or 'sparse'), with what it covered."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if method == "full":
            extents, h = [(0, size)] if size else [], hashlib.sha256()
        elif method == "sparse":
            extents, h = data_extents(fd, size), hashlib.sha256(SPARSE_TAG + b"\n%d\n" % size)
        else:
            raise ValueError(f"unknown hash method {method!r}")
        data = sum(n for _, n in extents)
        with progress.task(total=max(data, 1)) as p:
            for start, length in extents:
                if method == "sparse":
                    h.update(b"%d %d\n" % (start, length))
                done, end = start, start + length
                while done < end:
                    chunk = os.pread(fd, min(end - done, CHUNK), done)
                    if not chunk:
                        raise OSError(f"{path}: the file shrank while being hashed")
                    h.update(chunk)
                    done += len(chunk)
                    p.advance(len(chunk))
    finally:
        os.close(fd)
    return {"method": method, "digest": h.hexdigest(), "size": size, "extents": len(extents),
            "data_bytes": data, "hole_bytes": size - data if method == "sparse" else None}


def sha256_file(path: Path) -> str:
    """SHA-256 of every byte (sha256sum's)."""
    return hash_evidence(path, "full")["digest"]


def resolve_hash_method(path: Path, method: str) -> tuple[str, str]:
    """(full|sparse, reason) for a --hash value."""
    if method not in HASH_METHODS:
        raise ValueError(f"--hash {method}: use one of {', '.join(HASH_METHODS)}")
    if method != "auto":
        return method, f"--hash {method} was given"
    size = path.stat().st_size
    if size <= SPARSE_MIN_SIZE:
        return choose_hash(size, 0)
    fd = os.open(path, os.O_RDONLY)
    try:
        data = sum(n for _, n in data_extents(fd, size))
    except (OSError, AttributeError):  # no SEEK_DATA here: no sparse digest either
        return "full", "--hash auto chose the full SHA-256: this system cannot list the file's holes"
    finally:
        os.close(fd)
    return choose_hash(size, size - data)
