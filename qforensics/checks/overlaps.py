"""Overlaps between structures, named on both sides (beyond qemu).

qemu-img check sees an overlap only as a refcount mismatch on an anonymous
cluster ("ERROR cluster 3 refcount=1 reference=2"), and `check -r all` even
hides it by raising the refcount. Here every host cluster claimed in two
roles is reported with both structures, and compressed streams are compared
at byte level, since several may share a host cluster legitimately.
"""

from __future__ import annotations

import numpy as np

from ..findings import Finding, Listing, Severity, more
from ..layout import Layout, Role

MAX_LISTED = 1000  # findings of one code listed; the rest are counted in a ".more" summary


def check_overlaps(layout: Layout, exact_ends: dict[int, int] | None = None) -> list[Finding]:
    """Conflicting claims, compressed overlaps (exact ends when the streams were inflated), ranges past EOF."""
    out: list[Finding] = []
    s = layout.structures
    for c in layout.conflicts:
        a, b = s[c.first], s[c.second]
        out.append(Finding("overlap.structures", Severity.WARNING,
                           f"host cluster {c.cluster} (0x{c.cluster << layout.cluster_bits:x}) is both "
                           f"{a.label} ({a.role.name.lower()}) and {b.label} ({b.role.name.lower()})",
                           b.label, c.cluster << layout.cluster_bits))
    out += _compressed_overlaps(layout, exact_ends or {})
    for sid, offset in layout.past_eof:
        st = s[sid]
        out.append(Finding("layout.past_eof", Severity.WARNING,
                           f"{st.label} reaches 0x{offset:x}, past the end of the file (0x{layout.file_size:x})",
                           st.label, offset))
    # what the layout did not list past its caps, counted (never cut silently)
    out += [more(code, n) for code, n in layout.unlisted.items()]
    return out


def _compressed_overlaps(layout: Layout, exact_ends: dict[int, int]) -> list[Finding]:
    """Compressed byte ranges that overlap another stream or any metadata cluster.

    The stored size runs to the end of the stream's last sector, where the next
    stream may legitimately begin; the inflated length gives the real end.
    """
    if not layout.compressed_ranges:
        return []
    pairs = layout.compressed_streams()  # identical ranges are shared streams
    # the inflated end where known; past the end of the file a stream consumes nothing; else the stored
    # end less the most its last sector can be short of it
    real_end = np.where(pairs[:, 0] >= np.uint64(layout.file_size), pairs[:, 0], pairs[:, 1] - np.uint64(511))
    if exact_ends:
        known = np.fromiter(exact_ends.keys(), dtype=np.uint64, count=len(exact_ends))
        ends = np.fromiter(exact_ends.values(), dtype=np.uint64, count=len(exact_ends))
        order = np.argsort(known)
        known, ends = known[order], ends[order]
        at = np.minimum(np.searchsorted(known, pairs[:, 0]), known.size - 1)
        hit = known[at] == pairs[:, 0]
        real_end[hit] = ends[at[hit]]
    out: list[Finding] = []
    listing = Listing(MAX_LISTED)
    if len(pairs) > 1:
        bad = np.nonzero(pairs[1:, 0] < real_end[:-1])[0]
        listing.drop("overlap.compressed", len(bad) - min(len(bad), MAX_LISTED))
        for k in bad[:MAX_LISTED].tolist():
            a, b = pairs[k], pairs[k + 1]
            out.append(Finding("overlap.compressed", Severity.WARNING,
                               f"compressed stream 0x{int(a[0]):x}..0x{int(a[1]):x} overlaps the stream starting "
                               f"at 0x{int(b[0]):x}", "compressed data", int(b[0])))
    cb = layout.cluster_bits
    role = layout.role  # compared with plain ints: numpy widens an IntEnum operand to int64
    meta = (role != int(Role.FREE)) & (role != int(Role.COMPRESSED)) & (role != int(Role.DATA))
    first = (pairs[:, 0] >> np.uint64(cb)).astype(np.int64)
    last = ((np.maximum(real_end, pairs[:, 0] + np.uint64(1)) - np.uint64(1)) >> np.uint64(cb)).astype(np.int64)
    for k in range(int((last - first).max(initial=0)) + 1):
        idx = first + k
        inside = (idx <= last) & (idx < len(meta))
        hit = np.nonzero(inside)[0][meta[idx[inside]]]
        shown = hit[:listing.room("overlap.compressed_metadata")]
        listing.add("overlap.compressed_metadata", len(shown))
        listing.drop("overlap.compressed_metadata", len(hit) - len(shown))
        for j in shown.tolist():
            c = int(idx[j])
            other = layout.structures[layout.owner[c]]
            out.append(Finding("overlap.compressed_metadata", Severity.WARNING,
                               f"compressed stream at 0x{int(pairs[j, 0]):x} runs into {other.label} "
                               f"(host cluster 0x{c << cb:x})", "compressed data", int(pairs[j, 0])))
    return out + listing.summaries()
