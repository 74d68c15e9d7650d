"""`qforensics info`'s human output: the info document (info.build_info) on one screen, offsets in hex."""

from __future__ import annotations

from ..findings import Severity


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return str(n)


def render_human(info: dict) -> str:
    """One screen of text for an analyst; offsets in hex."""
    h = info["header"]
    d = info["format-specific"]["data"]
    lines = [
        f"image:            {info['filename']}",
        f"format:           qcow2 version {h['version']} (compat {d['compat']})",
        f"virtual size:     {_size(info['virtual-size'])} ({info['virtual-size']} bytes)",
        f"file size:        {_size(info['file-size'])} ({info['file-size']} bytes), "
        f"{_size(info['actual-size'])} allocated on disk",
        f"cluster size:     {info['cluster-size']} (cluster_bits {h['cluster-bits']})",
        f"refcount bits:    {d['refcount-bits']}",
        f"compression:      {d['compression-type']}",
        f"encryption:       {h['crypt-method']}",
        "",
        "header:",
        f"  L1 table        0x{h['l1-table-offset']:x}, {h['l1-size']} entries",
        f"  refcount table  0x{h['refcount-table-offset']:x}, {h['refcount-table-clusters']} clusters",
        f"  snapshot table  0x{h['snapshots-offset']:x}, {h['nb-snapshots']} entries",
        f"  header length   {h['header-length']}",
        f"  backing file    0x{h['backing-file-offset']:x}, {h['backing-file-size']} bytes",
        "",
        "features:",
    ]
    for group, bits in info["features"].items():
        raw = h[f"{group}-features"]
        shown = ", ".join(
            f"bit {b['bit']} {b.get('interpretation') or b['name'] or '(unnamed)'}" + ("" if b["known"] else " [UNKNOWN]")
            for b in bits) or "none"
        lines.append(f"  {group + ':':14s} 0x{raw:x}: {shown}")
    lines += ["", "header extensions:"]
    for e in info["extensions"] or []:
        detail = e.get("value") or ", ".join(
            f"{k} {v:#x}" if isinstance(v, int) and ("offset" in k or "size" in k) else f"{k} {v}"
            for k, v in e.items() if k not in ("offset", "magic", "name", "length", "entries"))
        lines.append(f"  0x{e['offset']:05x}  {e['magic']}  {e['name']} ({e['length']} bytes)"
                     + (f": {detail}" if detail else ""))
    if not info["extensions"]:
        lines.append("  none")
    if "backing-filename" in info:
        lines += ["", f"backing file:     {info['backing-filename']!r}"
                  + (f" (format {info['backing-filename-format']!r})" if "backing-filename-format" in info else "")
                  + "  [not opened]"]
    if "data-file" in d:
        lines += ["", f"data file:        {d['data-file']!r} (raw: {d.get('data-file-raw')})  [not opened]"]
    if "luks" in info:
        lk = info["luks"]
        lines += ["", f"LUKS header:      0x{lk['header-offset']:x}, {lk['header-length']} bytes; cipher {lk['cipher']}, "
                  f"hash {lk['hash']}, {lk['key-bytes'] * 8}-bit key, active slots {lk['active-slots']}"]
    if "snapshot-table" in info:
        lines += ["", "snapshots:", f"  {'ID':8s} {'NAME':20s} {'DATE':27s} {'VM CLOCK':>18s} {'VM STATE':>10s} "
                  f"{'DISK SIZE':>12s}  L1"]
        for s in info["snapshot-table"]:
            clock = s["vm-clock-nsec"]
            clock_s = f"{clock // 3_600_000_000_000:02d}:{clock // 60_000_000_000 % 60:02d}:" \
                      f"{clock // 1_000_000_000 % 60:02d}.{clock // 1_000_000 % 1000:03d}"
            disk = "-" if s["disk-size"] is None else str(s["disk-size"])
            lines.append(f"  {s['id']!s:8.8s} {s['name']!s:20.20s} {s['date']:27s} {clock_s:>18s} "
                         f"{s['vm-state-size']:>10d} {disk:>12s}  0x{s['l1-table-offset']:x}")
    if "bitmap-directory" in info:
        lines += ["", "bitmaps:"]
        for b in info["bitmap-directory"]:
            lines.append(f"  {b['name']!s:20.20s} granularity {b['granularity']}, flags "
                         f"{','.join(b['flag-names']) or '-'}, type {b['type']}, table 0x{b['bitmap-table-offset']:x}")
    if "deduplication" in info:
        dd = info["deduplication"]
        lines += ["", f"deduplication:    {dd['draft']}: level-1 table at 0x{dd['table-offset']:x}, "
                  f"{dd['table-size']} {dd['table-size-unit']}, {dd['hash-algorithm']}, "
                  f"{len(dd['l2-cluster-offsets'])} level-2 clusters of {dd['l2-entries-per-cluster']} entries"]
    if "journals" in info:
        lines += ["", "journals (2013 draft, found by scanning unreferenced clusters):"]
        for a in info["journals"]:
            ends = ", ".join(f"0x{j['offset']:x} {j['hash-entries']} hash entries, {j['ending']}"
                             + (f" (damaged entry at 0x{j['damaged-entry']:x})" if "damaged-entry" in j else "")
                             for j in a["journal-clusters"])
            lines.append(f"  0x{a['offset']:x}: {ends}")
    if "early-dirty-bitmaps" in info:
        lines += ["", "dirty bitmaps (2015 draft layout):"]
        for b in info["early-dirty-bitmaps"]:
            lines.append(f"  {b['name']!s:20.20s} granularity {b['granularity']}, {b['size-sectors']} sectors, "
                         f"L1 0x{b['l1-table-offset']:x} ({b['l1-size']} entries)")
    if info["findings"]:
        lines += ["", "findings:"]
        order = [str(s) for s in Severity]
        for f in sorted(info["findings"], key=lambda f: order.index(f["severity"])):
            at = "" if f["host_offset"] is None else f" at 0x{f['host_offset']:x}"
            lines.append(f"  {f['severity'].upper():10s} {f['code']}: {f['structure']}{at}: {f['message']}")
    return "\n".join(lines) + "\n"
