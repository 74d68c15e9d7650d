"""Every finding code the checks and the model can emit is tripped by at least one test image."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import CASES, ROOT, image_path
from corruptions import KINDS, make
from qforensics import open_image
from qforensics.checks import check_image
from qforensics.errors import ImageOpenError
from test_header_refusals import POKES, poked_copy
from test_luks_refusals import LUKS_POKES, POINTER_LENGTHS, TRUNCATED, luks_copy

SOURCES = [*(ROOT / "qforensics" / "checks").glob("*.py"), *(ROOT / "qforensics" / "model").glob("*.py"),
           ROOT / "qforensics" / "layout.py"]
CODE = re.compile(r'"((?:bitmap|check|compressed|datafile|dedup|draft|draft_bitmaps|extension|header|journal|l1|l2|'
                  r'layout|luks|overlap|refcount|snapshot)\.[a-z_0-9]+)"')
# codes no image of ours can trip yet, each with the reason
NOT_YET = {
    "snapshot.table_too_big": "needs a snapshot table over 64 MiB (a 70 MB test file); left for the fuzz corpus",
    "check.not_walked": "needs over 8M snapshot L1 entries or unaligned L2 tables over the file's size: "
                        "tests/test_resource_bounds.py's snapshots_4096 and unaligned_l2s trip it",
    "compressed.not_inflated": "needs over 256 MiB of inflated streams: tests/test_resource_bounds.py's "
                               "compressed_streams image (100 MB) trips it",
}


def emitted_codes() -> set[str]:
    codes = {m for p in SOURCES for m in CODE.findall(p.read_text())}
    return {c for c in codes if not any(o != c and o.startswith(c) for o in codes)}  # drop prefixes


def codes_of(path: Path) -> set[str]:
    with open_image(path) as img:
        return {f.code for f in check_image(img).findings}


def test_every_code_is_tripped(corpus, tmp_path):
    seen: set[str] = set()
    for case in CASES:
        seen |= codes_of(image_path(corpus, case))
    for n, kind in enumerate(KINDS):
        folder = tmp_path / f"k{n}"
        folder.mkdir()
        seen |= codes_of(make(kind, image_path(corpus, kind.base).parent, CASES[kind.base]["main"], folder))
    for n, poke in enumerate(POKES):
        folder = tmp_path / f"p{n}"
        folder.mkdir()
        try:
            seen |= codes_of(poked_copy(corpus, folder, poke))
        except ImageOpenError as exc:  # a header the parser refuses: its code rides on the error
            assert poke.code is None and exc.code, poke.id
            seen.add(exc.code)
    for name in [*LUKS_POKES, *TRUNCATED, *POINTER_LENGTHS]:  # each rule qemu applies to the LUKS header
        folder = tmp_path / f"luks_{name}"
        folder.mkdir()
        seen |= codes_of(luks_copy(corpus, folder, name))
    missing = emitted_codes() - seen - set(NOT_YET)
    assert not missing, " ".join(sorted(missing))
