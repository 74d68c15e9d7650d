"""Evidence: no command changes any input file, outputs never replace the input, image-made names stay caged.

Every command of COMMANDS runs on every qcow2 file of every corpus case; the
SHA-256, size, mode, mtime and ctime of every file of the case (backing
layers, data files) must be the same afterwards, and nothing may appear in
the case's folder. Commands that write a file are listed in WRITERS and must
refuse an output that is the input under any name. map and recover are in
both lists (recover opens backing files only with --allow-image-dir, inside the case's folder).

The helpers of qforensics/paths.py (what backing/data-file opening and
carving call) are tested against hostile names.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import struct
import sys
from pathlib import Path

import pytest
from conftest import CASES, image_path, run_qforensics
from fuzz.mutate import cached_survey

from qforensics import cli
from qforensics.errors import UsageError
from qforensics.paths import refuse_overwrite, resolve_inside, safe_component

# name -> argv for one image, writing any output under ``out`` (a folder outside the case)
COMMANDS = {
    "info": lambda image, out: ["info", "--force", image],
    "check": lambda image, out: ["check", image],
    "graph": lambda image, out: ["graph", image, "-o", str(out / "graph.graphml")],
    "report": lambda image, out: ["report", image, "-o", str(out / "report.html")],
    "map": lambda image, out: ["map", "--force", "--allow-image-dir", image],
    "recover": lambda image, out: ["recover", image, "-o", str(out / "out.raw"), "--allow-image-dir", "--quiet",
                                   "--log", str(out / "log.json"), "--carve-dir", str(out / "carved"),
                                   "--passphrase-file", str(PASSPHRASE)],
}
# name -> argv writing to ``target`` (which must never replace the image); the suffix the command wants
WRITERS = {
    "graph": (lambda image, target: ["graph", image, "-o", target], ".graphml"),
    "report": (lambda image, target: ["report", image, "-o", target], ".html"),
    "check-html": (lambda image, target: ["check", image, "--html", target], ".html"),
    "recover": (lambda image, target: ["recover", image, "-o", target, "--quiet"], ".raw"),
    "recover-log": (lambda image, target: ["recover", image, "-o", target + ".raw", "--log", target, "--quiet"],
                    ".json"),
}
PASSPHRASE = Path(__file__).parent / "corpus" / "passphrase.txt"  # the corpus images' (qforensics-test-pass)


def fingerprint(folder: Path) -> dict[str, tuple]:
    """Every file of a folder: SHA-256, size, mode, mtime and ctime (ns)."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            continue
        st = p.lstat()
        out[p.name] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mode, st.st_mtime_ns,
                       st.st_ctime_ns)
    return out


def run_cli(*argv: str) -> tuple[int, str, str]:
    """The command line's entry point in-process (its last-resort handler included), output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def qcow2_files(case: str) -> list[str]:
    return [f["name"] for f in CASES[case]["files"] if f["name"].endswith(".qcow2")]


@pytest.mark.parametrize("case", sorted(CASES))
def test_commands_leave_every_input_untouched(corpus, tmp_path, case):
    folder = image_path(corpus, case).parent
    before = fingerprint(folder)
    for name in qcow2_files(case):
        for command, argv in COMMANDS.items():
            out = tmp_path / f"{name}-{command}"
            out.mkdir()
            code, _, err = run_cli(*argv(str(folder / name), out))
            assert "internal error" not in err, (command, name, err)
            assert code in (0, 1, 2, 3), (command, name, code)
    assert fingerprint(folder) == before


def test_inputs_are_opened_read_only(corpus, tmp_path):
    """The file stays read-only for everyone: a command on an image with mode 0444 works (no write open)."""
    src = image_path(corpus, "sample")
    path = tmp_path / "ro.qcow2"
    path.write_bytes(src.read_bytes())
    path.chmod(0o444)
    (tmp_path / "out").mkdir()
    before = fingerprint(tmp_path)
    for command in ("info", "check", "graph", "report"):
        code, _, err = run_cli(*COMMANDS[command](str(path), tmp_path / "out"))
        assert code == 0, err
    assert fingerprint(tmp_path) == before


def _targets(folder: Path, image: Path, suffix: str) -> dict[str, str]:
    """Names of the image itself, as the command line would be given them (cwd = folder)."""
    (folder / "sub").mkdir(exist_ok=True)
    links = {}
    link = folder / f"link{suffix}"
    if not link.exists():
        link.symlink_to(image.name)
    links["same path"] = image.name
    links["absolute path"] = str(image)
    links["other relative path"] = f"sub/../{image.name}"
    links["dot path"] = f"./{image.name}"
    links["symlink"] = link.name
    return links


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("how", ["same path", "absolute path", "other relative path", "dot path", "symlink"])
def test_outputs_refuse_to_overwrite_the_input(corpus, tmp_path, writer, how):
    image = tmp_path / "evidence.qcow2"
    image.write_bytes(image_path(corpus, "sample").read_bytes())
    argv, suffix = WRITERS[writer]
    target = _targets(tmp_path, image, suffix)[how]
    before = fingerprint(tmp_path)
    with contextlib.chdir(tmp_path):
        code, _, err = run_cli(*argv(image.name, target))
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "refusing to write" in lines[0] and "input" in lines[0], lines
    assert fingerprint(tmp_path) == before


def test_refusal_is_one_line_from_the_real_process(corpus, tmp_path):
    image = tmp_path / "evidence.qcow2"
    image.write_bytes(image_path(corpus, "sample").read_bytes())
    (tmp_path / "link.html").symlink_to(image.name)
    before = fingerprint(tmp_path)
    res = run_qforensics("report", image.name, "-o", "link.html", cwd=tmp_path)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "refusing to write" in res.stderr and "link.html" in res.stderr, \
        res.stderr
    assert fingerprint(tmp_path) == before


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_outputs_refuse_a_hard_link_to_the_input(corpus, tmp_path, writer):
    """A hard link is the same file by another name: writing it would replace the evidence."""
    image = tmp_path / "evidence.qcow2"
    image.write_bytes(image_path(corpus, "sample").read_bytes())
    argv, suffix = WRITERS[writer]
    os.link(image, tmp_path / f"hard{suffix}")
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    code, _, err = run_cli(*argv(str(image), str(tmp_path / f"hard{suffix}")))
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before, "the evidence was overwritten"
    assert code == 1 and len(err.strip().splitlines()) == 1, err


# -- qforensics.paths.refuse_overwrite ----------------------------------------------------------------------


def test_refuse_overwrite_knows_the_input_under_any_name(tmp_path, monkeypatch):
    image = tmp_path / "evidence.qcow2"
    image.write_bytes(b"QFI\xfb")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sym.html").symlink_to(image)
    os.link(image, tmp_path / "hard.html")
    monkeypatch.chdir(tmp_path)
    for name in ("evidence.qcow2", str(image), "sub/../evidence.qcow2", "./evidence.qcow2", "sym.html",
                 "hard.html"):
        with pytest.raises(UsageError) as err:
            refuse_overwrite(name, [image])
        assert "\n" not in str(err.value) and "refusing to write" in str(err.value)
    assert refuse_overwrite("report.html", [image]) == Path("report.html")
    (tmp_path / "other.html").write_text("x")
    assert refuse_overwrite("other.html", [image, tmp_path / "missing"]) == Path("other.html")
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"QFI\xfb")
    with pytest.raises(UsageError):  # every input counts: backing layers and data files too
        refuse_overwrite(str(base), [image, base])


# -- qforensics.paths.resolve_inside --------------------------------------------------------------------------


@pytest.fixture
def cage(tmp_path):
    """A consented folder with a file, a subfolder, and symlinks in and out; a secret beside it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not yours")
    folder = tmp_path / "cases" / "evidence"
    (folder / "layers").mkdir(parents=True)
    (folder / "base.qcow2").write_bytes(b"QFI\xfb")
    (folder / "layers" / "mid.qcow2").write_bytes(b"QFI\xfb")
    (folder / "to-base").symlink_to("base.qcow2")
    (folder / "layers" / "up").symlink_to("../base.qcow2")
    (folder / "absolute-in").symlink_to(folder / "layers" / "mid.qcow2")
    (folder / "out-relative").symlink_to("../../outside/secret")
    (folder / "out-absolute").symlink_to(outside / "secret")
    (folder / "out-dir").symlink_to(outside)
    (folder / "loop-a").symlink_to("loop-b")
    (folder / "loop-b").symlink_to("loop-a")
    (folder / "etc").symlink_to("/etc")
    return folder


@pytest.mark.parametrize("name, expected", [
    ("base.qcow2", "base.qcow2"),
    ("./base.qcow2", "base.qcow2"),
    ("layers/mid.qcow2", "layers/mid.qcow2"),
    ("layers/../base.qcow2", "base.qcow2"),
    ("layers//mid.qcow2", "layers/mid.qcow2"),
    ("to-base", "base.qcow2"),
    ("layers/up", "base.qcow2"),
    ("absolute-in", "layers/mid.qcow2"),
    ("missing.qcow2", "missing.qcow2"),  # need not exist: the opener reports that
    ("caf\u00e9 \u4e2d.qcow2", "caf\u00e9 \u4e2d.qcow2"),
])
def test_resolve_inside_accepts_names_inside(cage, name, expected):
    assert resolve_inside(cage, name) == cage.resolve() / expected


def test_resolve_inside_accepts_absolute_names_inside(cage):
    assert resolve_inside(cage, str(cage / "base.qcow2")) == cage.resolve() / "base.qcow2"
    assert resolve_inside(cage, str(cage.resolve() / "layers" / "mid.qcow2")) == cage.resolve() / "layers/mid.qcow2"


@pytest.mark.parametrize("name", [
    "../../etc/passwd", "/etc/passwd", "a/../../b", "..", ".", "", "./", "layers/../..", "../evidence/../../x",
    "base.qcow2\0.txt", "\0", "out-relative", "out-absolute", "out-dir/secret", "etc/passwd", "loop-a",
    "layers/../../evidence/../outside/secret", "/", "//etc/passwd", "x" * 5000,
])
def test_resolve_inside_refuses_names_outside(cage, name):
    with pytest.raises(UsageError) as err:
        resolve_inside(cage, name)
    message = str(err.value)
    assert "\n" not in message and "\0" not in message and len(message) < 400, message


def test_resolve_inside_never_looks_outside(cage, monkeypatch):
    """The walk lstat()s only paths inside the folder, whatever the name or its symlinks say."""
    seen = []
    real_lstat = os.lstat
    monkeypatch.setattr(os, "lstat", lambda p, *a, **k: seen.append(str(p)) or real_lstat(p, *a, **k))
    for name in ("../../outside/secret", "out-relative", "out-absolute", "out-dir/secret", "etc/passwd",
                 "layers/up", "/etc/passwd"):
        with contextlib.suppress(UsageError):
            resolve_inside(cage, name)
    root = str(cage.resolve())
    given = {str(p) for p in (cage, *cage.parents)}  # resolving the user's own folder looks at its ancestors
    assert seen and all(p == root or p.startswith(root + "/") or p in given for p in seen), seen


def test_resolve_inside_needs_an_existing_folder(tmp_path):
    with pytest.raises(UsageError):
        resolve_inside(tmp_path / "missing", "base.qcow2")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError):
        resolve_inside(tmp_path / "file", "base.qcow2")


# -- qforensics.paths.safe_component ---------------------------------------------------------------------------

HOSTILE_NAMES = ["../../etc/passwd", "/etc/passwd", "a/../../b", "..", ".", "", "-rf", "--help", ".hidden",
                 "name\0nul", "caf\u00e9", "\u202etxt.exe", "\u4e2d\u6587", "con:", "a b", "tab\there", "x" * 500,
                 "\x1b[2J", "snap-1", "snap_1", "snap 1", "snap/1", "a" * 79, "a" * 80, "a" * 81, "\udcff",
                 "ok-0123456789ab", "ok-0123456789ab-"]


@pytest.mark.parametrize("text", HOSTILE_NAMES)
def test_safe_component_is_one_plain_component(text):
    out = safe_component(text)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,80}", out), out
    assert out not in (".", "..") and not out.startswith(("-", ".")), out


def test_safe_component_keeps_clean_names_and_marks_changed_ones():
    for clean in ("snap-1", "snap_1", "disk.0", "A" * 80, "0123"):
        assert safe_component(clean) == clean
    changed = safe_component("snap 1")
    assert changed.startswith("snap_1-") and re.fullmatch(r"snap_1-[0-9a-f]{12}", changed)
    assert len(safe_component("x" * 500)) == 80
    assert len(safe_component("x" * 500, max_len=32)) == 32
    with pytest.raises(ValueError):
        safe_component("x", max_len=8)


def test_safe_component_never_collides():
    names = HOSTILE_NAMES + [safe_component(n) for n in HOSTILE_NAMES] + ["snap?1", "snap*1", "snap\u00e91",
                                                                          "x" * 501, "x" * 499]
    names = list(dict.fromkeys(names))
    outs = [safe_component(n) for n in names]
    assert len(set(outs)) == len(outs), [(n, o) for n, o in zip(names, outs) if outs.count(o) > 1]


# -- names written in the image are never opened without consent ------------------------------------------

OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)

HOSTILE_TARGETS = ["../../etc/passwd", "/etc/passwd", "../outside/secret.qcow2", "{outside}/secret.qcow2",
                   "mid.qcow2", "{folder}/mid.qcow2"]


def _with_backing_name(data: bytes, name: bytes) -> bytes:
    b = bytearray(data)
    offset = struct.unpack_from(">Q", b, 8)[0]
    b[offset:offset + 1024] = name.ljust(1024, b"\0")
    struct.pack_into(">I", b, 16, len(name))
    return bytes(b)


def _with_data_file_name(data: bytes, name: bytes) -> bytes:
    """The external data file name extension rewritten in place (the name fits its 8-byte-padded room)."""
    b = bytearray(data)
    field = next(f for f in cached_survey(data).fields if f.what == "extension magic" and
                 struct.unpack_from(">I", data, f.pos)[0] == 0x44415441)
    room = (struct.unpack_from(">I", data, field.pos + 4)[0] + 7) & ~7
    assert len(name) <= room, (name, room)
    struct.pack_into(">I", b, field.pos + 4, len(name))
    b[field.pos + 8:field.pos + 8 + room] = name.ljust(room, b"\0")
    return bytes(b)


# the commands with no consent given: map and recover must then open nothing the image names either
WITHOUT_CONSENT = {**COMMANDS, "map": lambda image, out: ["map", "--force", image],
                   "recover": lambda image, out: ["recover", image, "-o", str(out / "out.raw"), "--quiet"]}


def _hostile_case(corpus, tmp_path, kind, target):
    """A top image naming ``target`` as its backing or data file, the legitimate layers beside it, and a
    secret outside its folder; returns (image, folder, name, out)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.qcow2").write_bytes(image_path(corpus, "v3_default").read_bytes())
    folder = tmp_path / "case"
    folder.mkdir()
    for f in ("mid.qcow2", "base.qcow2"):
        (folder / f).write_bytes((image_path(corpus, "backing_chain").parent / f).read_bytes())
    name = target.format(outside=outside, folder=folder)
    if kind == "backing":
        data = _with_backing_name(image_path(corpus, "backing_chain").read_bytes(), name.encode())
    else:
        if len(name) > 16:
            pytest.skip("the data file name extension of the corpus image has room for 16 bytes")
        data = _with_data_file_name(image_path(corpus, "data_file").read_bytes(), name.encode())
    image = folder / "top.qcow2"
    image.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    return image, folder, name, out, outside


@pytest.mark.parametrize("kind", ["backing", "data file"])
@pytest.mark.parametrize("target", HOSTILE_TARGETS)
def test_names_in_the_image_are_never_opened(corpus, tmp_path, kind, target):
    """Without --backing-dir or --allow-image-dir, no file the image names is opened: not /etc/passwd, not
    a file beside the case, not even the legitimate layer next to the image."""
    global OPENED
    image, folder, name, out, outside = _hostile_case(corpus, tmp_path, kind, target)
    forbidden = {str(Path(p).resolve()) for p in ("/etc/passwd", outside / "secret.qcow2", folder / "mid.qcow2",
                                                  folder / "base.qcow2")}
    before = fingerprint(folder)
    OPENED = []
    try:
        for command, argv in WITHOUT_CONSENT.items():
            _, stdout, err = run_cli(*argv(str(image), out))
            assert "internal error" not in err, (command, err)
            if command == "info":
                assert name in stdout.encode("unicode_escape").decode() or name in stdout, stdout[:2000]
        opened = {str(Path(p).resolve()) for p in OPENED}
    finally:
        OPENED = None
    assert str(image.resolve()) in opened  # the audit hook sees the opens
    assert not opened & forbidden, opened & forbidden
    assert fingerprint(folder) == before


@pytest.mark.parametrize("kind", ["backing", "data file"])
@pytest.mark.parametrize("target", HOSTILE_TARGETS)
def test_consent_opens_only_inside_the_folder(corpus, tmp_path, kind, target):
    """With --backing-dir, map and recover open the layer the image names inside that folder and nothing
    outside it, whatever the name says; a name leading out is a one-line error."""
    global OPENED
    image, folder, name, out, outside = _hostile_case(corpus, tmp_path, kind, target)
    if kind == "data file" and len(name) > 16:
        pytest.skip("the data file name extension of the corpus image has room for 16 bytes")
    forbidden = {str(Path(p).resolve()) for p in ("/etc/passwd", outside / "secret.qcow2")}
    before = fingerprint(folder)
    OPENED = []
    try:
        for argv in (["map", "--force", "--backing-dir", str(folder), str(image)],
                     ["recover", str(image), "-o", str(out / "o.raw"), "--quiet", "--backing-dir", str(folder)]):
            code, _, err = run_cli(*argv)
            assert "internal error" not in err and "Traceback" not in err, err
            inside = not target.startswith(("../", "/etc")) and "outside" not in target
            assert (code in (0, 2)) if inside and kind == "backing" else code in (0, 1, 2), (argv, code, err)
            if not inside:
                assert code == 1 and len(err.strip().splitlines()) == 1, err
        opened = {str(Path(p).resolve()) for p in OPENED}
    finally:
        OPENED = None
    assert not opened & forbidden, opened & forbidden
    assert fingerprint(folder) == before
