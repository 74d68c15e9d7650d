"""Rules on the header and its extensions that qemu-img check does not apply (beyond qemu): the end of the
extension area, what lies after it in cluster 0, data_file_raw with a backing file.

References: docs/interop/qcow2.txt "Header", "Header extensions".
"""

from __future__ import annotations


import numpy as np

from ..findings import Finding, Severity
from ..model import Image
from ..model.qcow2_header import FIELDS


def check_header_rules(img: Image) -> list[Finding]:
    h = img.header
    out: list[Finding] = []
    if h.incompatible_features & 1 and not h.compatible_features & 1:
        out.append(Finding("header.dirty_without_lazy_refcounts", Severity.WARNING,
                           "incompatible bit 0 (dirty) is set but compatible bit 0 (lazy refcounts) is not; only "
                           "lazy refcounts leave an image dirty", "qcow2 header", FIELDS["incompatible_features"][0]))
    if h.incompatible_features & 2:
        dedup = img.dedup_extension is not None
        out.append(Finding("header.corrupt_bit", Severity.WARNING,
                           "incompatible bit 1 is set: corrupt (upstream), QEMU opens the image read-only"
                           + ("; with the dedup extension present it is the 2012 draft's deduplication bit"
                              if dedup else ""), "qcow2 header", FIELDS["incompatible_features"][0]))
    out += _end_marker(img)
    if h.autoclear_features & 2 and h.backing_file_offset:
        out.append(Finding("header.data_file_raw_with_backing", Severity.WARNING,
                           "autoclear bit 1 (data-file-raw) is set and the image has a backing file "
                           f"(backing_file_offset 0x{h.backing_file_offset:x}); the spec says backing files are "
                           "incompatible with raw external data files (QEMU 7.2 opens it; qemu-img create refuses the "
                           "combination)",
                           "qcow2 header", FIELDS["autoclear_features"][0]))
    out += _cluster0_tail(img)
    if h.autoclear_features & 1 and img.extensions.first(0x23852875) is None:
        out.append(Finding("header.bitmaps_bit_without_extension", Severity.WARNING,
                           "autoclear bit 0 (bitmaps) is set but there is no bitmaps extension; the spec calls this "
                           "an error", "qcow2 header", FIELDS["autoclear_features"][0]))
    return out


def _walk_stopped(img: Image) -> bool:
    """The extension walk stopped on a fault (an extension too large, the file's end): where the area ends is
    unknown, and that fault is already reported."""
    return any(f.code in ("extension.too_large", "extension.truncated") for f in img.extensions.findings)


def _end_marker(img: Image) -> list[Finding]:
    """The walk reached the end of the extension area (the backing file name, or the end of cluster 0) without
    the end-of-extensions entry (type 0). QEMU accepts it (qcow2_read_extensions stops at the bound); it always
    writes the marker itself, but its early qcow_create2 put the backing file name straight after the backing
    format extension, so with a backing file this is how such images look."""
    h = img.header
    ext = img.extensions
    if ext.end_marker or _walk_stopped(img) or h.header_length >= h.ext_end:
        return []  # an empty area (the backing file name right after the header) has nothing to end
    if h.backing_file_offset:
        return [Finding("header.extensions_overlap_backing_name", Severity.INFO,
                        f"the header extension area runs to the backing file name at 0x{h.backing_file_offset:x} "
                        f"without an end marker (last extension ends at 0x{ext.end_offset:x}), as QEMU's early "
                        "qcow_create2 wrote it", "header extensions", h.header_length)]
    last = ext.items[-1]
    return [Finding("extension.end_marker_missing", Severity.WARNING,
                    f"the header extensions run to the end of cluster 0 (0x{h.ext_end:x}) without the "
                    f"end-of-extensions entry (type 0x00000000): the last, {last.name} at 0x{last.offset:x}, "
                    "ends there",
                    "header extensions", last.offset)]


def _cluster0_tail(img: Image) -> list[Finding]:
    """Spec "Header extensions": the space between the end of the extension area and the end of cluster 0 holds
    the backing file name and nothing else ("It is not allowed to store other data here")."""
    h = img.header
    if not img.geometry_ok or _walk_stopped(img):
        return []
    cs = h.cluster_size
    start = img.extensions.end_offset
    bo = h.backing_file_offset
    if bo and bo <= cs:
        if bo < start:
            return []  # a name inside the header or the extensions: not this rule's
        name_end = min(bo + h.backing_file_size, cs)
        regions = [(start, bo, "the backing file name"), (name_end, cs, "the end of cluster 0")]
        after = ["the end of the header extensions", "the backing file name"]
    else:
        regions = [(start, cs, "the end of cluster 0")]
        after = ["the end of the header extensions"]
    out = []
    for (lo, hi, until), since in zip(regions, after, strict=True):
        if lo >= hi:
            continue
        data = np.frombuffer(img.cluster0, dtype=np.uint8)[lo:hi]
        nonzero = np.flatnonzero(data)
        if len(nonzero):
            out.append(Finding("header.cluster0_extra_data", Severity.WARNING,
                               f"{len(nonzero)} non-zero bytes in 0x{lo:x}-0x{hi - 1:x}, between {since} and {until}; "
                               "the spec allows only the backing file name there", "qcow2 header",
                               lo + int(nonzero[0])))
    return out
