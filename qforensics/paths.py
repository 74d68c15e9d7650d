"""File names that come from an image: consent for opening them, sanitising for writing them.

The rule: strings in an image are data, written by whoever made the image.
Nothing an image names (backing file, external data file) is opened unless
the user gave a folder for it (--backing-dir, or explicit consent), and then
only inside that folder: `resolve_inside` refuses '..', absolute names
elsewhere, and symlinks that lead out, without ever looking at anything
outside the folder. A file name built from image data (a snapshot name, a
carved cluster's name) goes through `safe_component` first, so it is one
plain component that cannot climb, hide, or pass for an option. And no
output ever replaces the evidence: `refuse_overwrite` recognises an input
under any name (symlink, other relative path, hard link).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .errors import UsageError

MAX_LINKS = 40  # as the kernel's ELOOP limit
MAX_NAME = 4096  # PATH_MAX
SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
HASH_CHARS = 12  # hex digits of SHA-256 in the suffix: 48 bits
SUFFIX = re.compile(rf"-[0-9a-f]{{{HASH_CHARS}}}\Z")


def _show(name: str, limit: int = 120) -> str:
    """A name as one printable line (control and non-ASCII characters escaped), shortened."""
    text = name.encode("unicode_escape", "backslashreplace").decode("ascii")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _refuse(name: str, folder: Path, why: str) -> UsageError:
    return UsageError(f"refusing to open {_show(name)} named by the image: {why} (allowed folder: "
                      f"{_show(str(folder))})")


def resolve_inside(folder: Path, name: str) -> Path:
    """The file ``name`` (as written in an image) within ``folder``, the folder the user consented to.

    Relative names are taken from the folder; an absolute name is accepted only if it lies in the folder.
    '..' and symlinks are followed one component at a time and only while they stay inside: nothing
    outside the folder is ever looked at. Raises UsageError (one line) for an empty name, a NUL byte,
    a name too long, or a result outside the folder (or the folder itself). The file need not exist.
    """
    folder = Path(folder)
    if not isinstance(name, str) or name == "":
        raise _refuse(str(name), folder, "the name is empty")
    if "\0" in name:
        raise _refuse(name, folder, "the name contains a NUL byte")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME:
        raise _refuse(name, folder, f"the name is longer than {MAX_NAME} bytes")
    try:
        root = folder.resolve(strict=True)
    except OSError as exc:
        raise UsageError(f"folder {_show(str(folder))}: {exc.strerror or exc}") from None
    if not root.is_dir():
        raise UsageError(f"folder {_show(str(folder))} is not a directory")
    if os.path.isabs(name):
        pending = _under(name, (root, Path(os.path.abspath(folder))))
        if pending is None:
            raise _refuse(name, folder, "an absolute name outside the folder")
    else:
        pending = name.split("/")
    current: list[str] = []  # real components below root, every one inside it
    links = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                raise _refuse(name, folder, "it leads out of the folder")
            current.pop()
            continue
        here = root.joinpath(*current, part)
        try:
            st = os.lstat(here)
        except OSError:
            current.append(part)  # absent (or unreadable): nothing to follow, the rest stays lexical
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise _refuse(name, folder, f"more than {MAX_LINKS} symbolic links")
            target = os.readlink(here)
            if os.path.isabs(target):
                inside = _under(target, (root,))
                if inside is None:
                    raise _refuse(name, folder, f"a symbolic link leads out of the folder (to {_show(target)})")
                current, pending = [], inside + pending
            else:
                pending = target.split("/") + pending
            continue
        current.append(part)
    if not current:
        raise _refuse(name, folder, "it names the folder itself")
    return root.joinpath(*current)


def _under(path: str, roots: tuple[Path, ...]) -> list[str] | None:
    """The components of absolute ``path`` below one of ``roots`` (compared component by component), or None."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for root in roots:
        prefix = [p for p in str(root).split("/") if p]
        if parts[:len(prefix)] == prefix:
            return parts[len(prefix):]
    return None


def refuse_overwrite(output: str | os.PathLike[str], inputs: list[str | os.PathLike[str]]) -> Path:
    """``output`` as a Path, unless writing it would overwrite one of ``inputs`` (the evidence).

    The same file is recognised whatever the path: the same name, another relative path, a symlink,
    or a hard link (same device and inode). Raises UsageError (one line).
    """
    out = Path(output)
    try:
        st = os.stat(out)
    except OSError:
        return out  # nothing there yet (a dangling symlink is created in its folder, not over an input)
    for item in inputs:
        try:
            same = os.path.samestat(st, os.stat(item))
        except OSError:
            continue
        if same:
            raise UsageError(f"refusing to write {_show(str(output))}: it is the input {_show(str(item))}")
    return out


def safe_component(text: str, max_len: int = 80) -> str:
    """One file-name component from image data: [A-Za-z0-9._-] only, at most ``max_len`` characters.

    Other characters become '_'; a leading '-' or '.' becomes '_' (no option look-alikes, no hidden
    files, never '.' or '..'); the empty name becomes '_'. Whenever anything was changed (or the text
    already ends like a suffix), '-' and 12 hex digits of the SHA-256 of the original text are appended
    (within ``max_len``), so two different texts never give the same component.
    """
    if max_len < HASH_CHARS + 4:
        raise ValueError(f"max_len must be at least {HASH_CHARS + 4}")
    clean = SAFE_CHARS.sub("_", text)
    if clean[:1] in ("-", "."):
        clean = "_" + clean[1:]
    clean = clean or "_"
    if clean == text and len(clean) <= max_len and not SUFFIX.search(clean):
        return clean
    import hashlib  # only for names that had to change (OpenSSL's load is most of a plain recover's imports)

    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    return f"{clean[:max_len - HASH_CHARS - 1]}-{digest}"
