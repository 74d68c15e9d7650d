"""The refcount blocks and the comparison of the stored refcounts with the references counted.

Reference: block/qcow2-refcount.c (QEMU 7.2) check_refblocks (without repair) and compare_refcounts,
with the overflow errors of qcow2_inc_refcounts_imrt; beyond qemu, the refcounts set past the end of
the file, where compare_refcounts does not look. Spec (docs/interop/qcow2.txt) "Host cluster
management".
"""

from __future__ import annotations

import numpy as np

from ...findings import Severity
from ...model import tables as T
from .imrt import COMPARE_CHUNK, MAX_SHARED, CheckRun, capped

COMPARE_PIECE = 1 << 15  # within a chunk whose refcounts are all readable, clusters compared at a time


def check_refblocks(run: CheckRun) -> None:
    """check_refblocks (no repair), vectorised: entry by entry as qemu goes, each block's refcount
    judged after the increments of the entries before it."""
    entries = run.reftable[: run.reftable_entries]
    idx = np.flatnonzero(entries)  # a zero entry is no block, and nothing to judge
    if not idx.size:
        return
    e = entries[idx]
    offset = e & T.REFT_OFFSET_MASK
    table = run.img.header.refcount_table_offset
    where = "refcount table"

    reserved = (e & T.REFT_RESERVED_MASK) != 0
    for k in capped(run, "refcount.table_reserved_bits", reserved):
        i, v = int(idx[k]), int(e[k])
        run.add("refcount.table_reserved_bits", Severity.CORRUPTION, f"refcount table entry {i} 0x{v:x} has "
                "reserved bits set", where, table + i * 8, f"ERROR refcount table entry {i} has reserved bits set")
    unaligned = ~reserved & (offset % np.uint64(run.cs) != 0)
    for k in capped(run, "refcount.block_unaligned", unaligned):
        i, o = int(idx[k]), int(offset[k])
        run.add("refcount.block_unaligned", Severity.CORRUPTION, f"refcount block {i} offset 0x{o:x} is "
                "not cluster aligned", where, table + i * 8,
                f"ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted")
    ok = ~reserved & ~unaligned
    cluster = (offset >> np.uint64(run.cb)).astype(np.int64)
    outside = ok & (cluster >= run.extent)
    for k in capped(run, "refcount.block_outside_image", outside):
        i, o = int(idx[k]), int(offset[k])
        run.add("refcount.block_outside_image", Severity.CORRUPTION, f"refcount block {i} at 0x{o:x} is "
                f"past the end of the file (0x{run.file_size:x})", where, table + i * 8,
                f"ERROR refcount block {i} is outside image")
    inside = np.flatnonzero(ok & ~outside & (offset != 0))
    if not inside.size:
        return
    off, cl = offset[inside], cluster[inside]
    past = off >= np.uint64(run.file_size)  # inc_range refuses those (one cluster or more past EOF)
    pk = np.flatnonzero(past)
    room = run.room("refcount.reference_past_eof")
    for o in off[pk[:room]].tolist():
        run.inc_range(o, run.cs, "refcount block")
    run.skip("refcount.reference_past_eof", pk.size - min(room, pk.size))
    # the refcount each entry sees: the table's before, plus the increments of this entry and those before
    order = np.argsort(cl, kind="stable")
    inc = (~past[order]).astype(np.int64)
    cum = np.cumsum(inc)
    group_start = np.concatenate(([True], cl[order][1:] != cl[order][:-1]))
    base = np.maximum.accumulate(np.where(group_start, cum - inc, 0))
    seen = np.empty(cl.size, dtype=np.int64)
    seen[order] = cum - base
    before = run.imrt[cl].astype(np.int64) if run.refcount_max < (1 << 62) else run.imrt[cl].astype(object)
    value = np.minimum(before + seen, run.refcount_max)
    done = cl[~past]
    if done.size:
        u, n = np.unique(done, return_counts=True)
        run.increment(u, n)
    for k in capped(run, "refcount.block_refcount", value != 1):
        i, o, r = int(idx[inside[k]]), int(off[k]), int(value[k])
        run.add("refcount.block_refcount", Severity.CORRUPTION, f"refcount block {i} at 0x{o:x} is "
                f"referenced {r} times; it must be referenced once", "refcount block", o,
                f"ERROR refcount block {i} refcount={r}")


def compare_refcounts(run: CheckRun) -> None:
    """compare_refcounts: on-disk refcount vs references, for every cluster up to the end of the file.

    Done in chunks of whole refcount blocks, so memory stays flat whatever the file size.
    """
    for i, extra in sorted(run.overflows.items()):
        # one error per increment refused: a table named millions of times makes millions of them
        run.add("refcount.overflow", Severity.CORRUPTION, f"cluster {i} has more references than "
                f"{run.img.header.refcount_bits}-bit refcounts can hold", "refcount block", i << run.cb,
                f"ERROR: overflow cluster offset=0x{i << run.cb:x}", refs=[(None, extra)])
    n = run.extent
    chunk = max(run.per_block, COMPARE_CHUNK // run.per_block * run.per_block)
    highest = 0
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        if all(run.block_readable(r) for r in range(lo // run.per_block, -(-hi // run.per_block))):
            highest = _compare_readable(run, lo, hi, highest)
            continue
        stored, bad = run.stored_range(lo, hi)
        refs = run.imrt[lo:hi]
        readable = np.ones(hi - lo, dtype=bool) if bad is None else ~bad
        if bad is not None:
            for i in (np.nonzero(bad)[0] + lo).tolist():
                run.add("refcount.unreadable", Severity.WARNING, f"refcount of cluster {i} cannot be read: its "
                        "refcount block offset is not cluster aligned", "refcount table", i << run.cb,
                        f"Can't get refcount for cluster {i}: Input/output error", counts="check-errors")
        used = np.nonzero(readable & ((stored > 0) | (refs > 0)))[0]
        if used.size:
            highest = lo + int(used[-1])
        for i in (np.nonzero(readable & (stored != refs))[0] + lo).tolist():
            _mismatch(run, i, int(stored[i - lo]), int(refs[i - lo]))
    run.stats.image_end_offset = (highest + 1) * run.cs


def _compare_readable(run: CheckRun, lo: int, hi: int, highest: int) -> int:
    """compare_refcounts for clusters [lo, hi) whose refcounts qemu can all read, in small pieces (temporaries
    malloc can reuse); returns the highest cluster in use so far."""
    piece = max(run.per_block, COMPARE_PIECE // run.per_block * run.per_block)
    last_used = None  # the last piece with a cluster in use: searched once, at the end
    for a in range(lo, hi, piece):
        b = min(hi, a + piece)
        stored, _ = run.stored_range(a, b)
        refs = run.imrt[a:b]
        differ = stored != refs
        if differ.any():
            for k in np.flatnonzero(differ).tolist():
                _mismatch(run, a + k, int(stored[k]), int(refs[k]))
            if (stored | refs).any():
                last_used = a, b
        elif stored.any():
            last_used = a, b
    if last_used is None:
        return highest
    a, b = last_used
    used = (run.stored_range(a, b)[0] | run.imrt[a:b]) != 0
    return b - 1 - int(used[::-1].argmax())


def _mismatch(run: CheckRun, i: int, s: int, r: int) -> None:
    """One compare_refcounts message: refcount below the references is corruption, above is a leak."""
    if s < r:
        if r > 1:
            if len(run.stats.shared) < MAX_SHARED:
                run.stats.shared.append(i)
            else:
                run.stats.shared_capped = True
        run.add("refcount.too_low", Severity.CORRUPTION, f"cluster {i} (0x{i << run.cb:x}) has refcount {s} but "
                f"{r} references", "refcount block", i << run.cb, f"ERROR cluster {i} refcount={s} reference={r}")
    else:
        if r > 0 and len(run.stats.overcounted) < MAX_SHARED:
            run.stats.overcounted.append(i)
        run.add("refcount.leak", Severity.LEAK, f"cluster {i} (0x{i << run.cb:x}) has refcount {s} but {r} "
                "references", "refcount block", i << run.cb, f"Leaked cluster {i} refcount={s} reference={r}",
                counts="leaks")


def refcounts_past_eof(run: CheckRun) -> None:
    """Beyond qemu: refcounts set for clusters past the end of the file (compare_refcounts stops at EOF).

    Listed block by block up to the cap; each distinct block is read once and its nonzero refcounts are
    counted (a hostile table may name the same clusters a million times, with 2 MiB clusters each a block
    of a million refcounts)."""
    first_block = run.extent // run.per_block
    table = run.reftable[first_block:min(run.reftable_entries, len(run.reftable))] & T.REFT_OFFSET_MASK
    rows = np.flatnonzero((table != 0) & (table % np.uint64(run.cs) == 0) & (table < np.uint64(run.file_size)))
    if not rows.size:
        return
    code = "refcount.past_eof"
    order = run.img.header.refcount_order
    distinct, inverse = np.unique(table[rows], return_inverse=True)
    nonzero = np.array([np.count_nonzero(T.refcount_block(_read_block(run, o), order)) for o in distinct.tolist()],
                       dtype=np.int64)
    per_row = nonzero[inverse]
    if rows[0] == 0:  # the block holding the end of the file: only its refcounts past the extent count
        blk = run.block(first_block)
        per_row[0] = np.count_nonzero(blk[run.extent - first_block * run.per_block:])
    listed = 0
    for j in rows[per_row > 0].tolist():
        room = run.room(code)
        if room == 0:
            break
        r = first_block + j
        offset = int(table[j])
        blk = run.block(r)
        start = r * run.per_block
        found = np.flatnonzero(blk)
        found = found[start + found >= run.extent][:room]
        for k in found.tolist():
            cluster = start + k
            run.add(code, Severity.WARNING, f"cluster {cluster} (0x{cluster << run.cb:x}) lies past "
                    f"the end of the file (0x{run.file_size:x}) but has refcount {int(blk[k])}; qemu-img check does "
                    "not look there", "refcount block", offset + k * run.img.header.refcount_bits // 8, None, None)
        listed += found.size
    run.skip(code, int(per_row.sum()) - listed, None)


def _read_block(run: CheckRun, offset: int) -> bytes:
    return run.img.file.read(offset, run.cs).ljust(run.cs, b"\0")
