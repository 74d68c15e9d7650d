"""Every finding code the checks and the model can emit is tripped by at least one test image."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import CASES, ROOT, image_path
from corruptions import KINDS, make
from qforensics import open_image
from qforensics.checks import check_image
from qforensics.errors import ImageOpenError
from test_header_refusals import POKES, poked_copy
from test_luks_refusals import LUKS_POKES, POINTER_LENGTHS, TRUNCATED, luks_copy

SOURCES = [*(ROOT / "qforensics" / "checks").rglob("*.py"), *(ROOT / "qforensics" / "model").rglob("*.py"),
           ROOT / "qforensics" / "layout.py"]  # rglob: the packages inside (checks/qemu_check/) too
FAMILIES = ("bitmap|check|compressed|datafile|dedup|draft|draft_bitmaps|extension|header|journal|l1|l2|layout|luks|"
            "overlap|refcount|snapshot")
CODE = re.compile(rf"(?:{FAMILIES})\.[a-z_0-9]+(?:\.[a-z_0-9]+)*")  # a whole string: family.name[.more]
FSTRING_START = re.compile(rf"(?:{FAMILIES})\.")  # an f-string whose text starts like this builds a code
# codes no image of ours can trip yet, each with the reason
NOT_YET = {
    "snapshot.table_too_big": "needs a snapshot table over 64 MiB (a 70 MB test file); left for the fuzz corpus",
    "check.not_walked": "needs over 8M snapshot L1 entries or unaligned L2 tables over the file's size: "
                        "tests/test_resource_bounds.py's snapshots_4096 and unaligned_l2s trip it",
    "compressed.not_inflated": "needs over 256 MiB of inflated streams: tests/test_resource_bounds.py's "
                               "compressed_streams image (100 MB) trips it",
    "snapshot.extra_data_incomplete.more": "needs over 64 version-3 snapshot entries with under 16 bytes of extra "
                                           "data (the summary past the listed ones); snapshot.extra_data_incomplete "
                                           "itself is tripped",
}
# f-string codes the scan must find (a guard: if the expansion below stopped seeing them, this test would pass on
# fewer codes than the package emits)
FSTRING_CODES = {"header.compatible_feature_unknown", "header.autoclear_feature_unknown",
                 "header.l1_table_offset_past_eof", "header.refcount_table_offset_past_eof",
                 "snapshot.duplicate_id", "snapshot.duplicate_name"}


def _loop_values(node: ast.AST, parents: dict, name: str) -> list[str]:
    """The values the enclosing ``for`` loop gives ``name``: the loop must run over a literal tuple or list, of
    strings (``for name in ("a", "b")``) or of tuples whose element at the name's position is a string
    (``for name, value in (("a", x), ("b", y))``)."""
    while node in parents:
        node = parents[node]
        if not isinstance(node, ast.For):
            continue
        targets = [node.target] if isinstance(node.target, ast.Name) else list(getattr(node.target, "elts", []))
        at = next((k for k, t in enumerate(targets) if isinstance(t, ast.Name) and t.id == name), None)
        if at is None:
            continue
        assert isinstance(node.iter, ast.Tuple | ast.List), f"line {node.lineno}: loop over {ast.unparse(node.iter)}"
        items = [e if isinstance(node.target, ast.Name) else e.elts[at] for e in node.iter.elts]
        assert all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in items), ast.unparse(node.iter)
        return [e.value for e in items]
    raise AssertionError(f"no loop gives {name!r} its values")


def _fstring_codes(node: ast.JoinedStr, parents: dict) -> set[str]:
    """An f-string code expanded over its placeholders' values, taken from the source: each placeholder is a
    plain name bound by an enclosing ``for`` over literal values (what the package does today: qcow2_header.py's
    ``for group in ("compatible", "autoclear")``, structures.py's ``for what, values in (("id", ...), ...)``).
    Anything else fails here, so that a new kind of f-string code is expanded by hand, not silently missed."""
    out = [""]
    for part in node.values:
        if isinstance(part, ast.Constant):
            out = [o + part.value for o in out]
            continue
        assert isinstance(part.value, ast.Name) and part.format_spec is None and part.conversion == -1, \
            f"line {node.lineno}: cannot expand {ast.unparse(node)}"
        out = [o + v for o in out for v in _loop_values(node, parents, part.value.id)]
    assert all(CODE.fullmatch(o) for o in out), (ast.unparse(node), out)
    return set(out)


def emitted_codes() -> set[str]:
    """Every code string in the sources: literals, and f-strings expanded. A string given to ``startswith`` (in
    the call, or through a module-level name such as image.py's CHECK_MODE_ACCEPTS) selects codes by prefix; it
    is a code only where it also occurs elsewhere."""
    codes: set[str] = set()
    for p in SOURCES:
        tree = ast.parse(p.read_text())
        parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        consts = {a.targets[0].id: a.value for a in tree.body
                  if isinstance(a, ast.Assign) and len(a.targets) == 1 and isinstance(a.targets[0], ast.Name)}
        prefixes: set[int] = set()  # ids of the nodes given to startswith
        for n in ast.walk(tree):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "startswith":
                for a in n.args:
                    a = consts.get(a.id, a) if isinstance(a, ast.Name) else a
                    prefixes |= {id(e) for e in ast.walk(a)}
        for n in ast.walk(tree):
            if isinstance(n, ast.JoinedStr):
                if n.values and isinstance(n.values[0], ast.Constant) and FSTRING_START.match(n.values[0].value):
                    codes |= _fstring_codes(n, parents)
            elif (isinstance(n, ast.Constant) and isinstance(n.value, str) and CODE.fullmatch(n.value)
                  and id(n) not in prefixes and not isinstance(parents.get(n), ast.JoinedStr)):
                codes.add(n.value)
    # a code that another starts with on a "." boundary ("x" of "x.more") is implied by it; other shared
    # beginnings ("overlap.compressed", "overlap.compressed_metadata") are two codes
    required = codes - set(NOT_YET)
    return {c for c in codes if not any(o.startswith(c + ".") for o in required)}


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
    codes = emitted_codes()
    assert FSTRING_CODES <= codes and "overlap.compressed" in codes, sorted(FSTRING_CODES - codes)
    assert set(NOT_YET) <= codes, sorted(set(NOT_YET) - codes)  # a reason for a code that no longer exists
    missing = codes - seen - set(NOT_YET)
    assert not missing, " ".join(sorted(missing))
