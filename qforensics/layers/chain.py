"""The backing chain: opening backing and data files with the user's consent (the stack they form is
walked by ``stack.resolve``; a raw backing file is a ``raw.RawLayer``).

A file name written in an image is data. It is opened only inside a folder
the user named (``--backing-dir``), or the image's own folder when the user
allowed it, and never outside it (qforensics.paths.resolve_inside). Chains
that loop, or go deeper than MAX_CHAIN, end with an error naming the image.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import QforensicsError
from ..evidence.file import FileLayer
from ..model import Image
from ..model.qcow2_header import MAGIC
from ..paths import resolve_inside
from ..text import clip
from .qcow2 import Qcow2Layer
from .raw import RawLayer

MAX_CHAIN = 64  # layers; QEMU has no fixed limit, a deeper chain is taken as hostile


class ChainError(QforensicsError):
    """A backing or data file cannot be opened as the image asks (not allowed, missing, looping).

    ``qemu_message`` is what qemu-img 7.2 prints after "Could not open 'IMAGE': " for the same failure
    (``Could not open backing file: Could not open 'base.qcow2': No such file or directory``), or None where
    qemu would not fail this way or qforensics cannot tell what it would do (a folder the user did not
    allow, a format qforensics does not read, a loop: qemu 7.2 recurses on a looping chain without end).
    """

    def __init__(self, message: str, *, code: str = "chain.unopened", qemu_message: str | None = None):
        super().__init__(message)
        self.code = code
        self.qemu_message = qemu_message

    def below(self, name: str | None = None) -> ChainError:
        """The same failure seen from the image whose backing file failed, as qemu words it; ``name``, the
        backing file's, when the failure is inside it (its own backing file or data file)."""
        return ChainError(str(self) if name is None else f"backing file {clip(name)!r}: {self}", code=self.code,
                          qemu_message=None if self.qemu_message is None
                          else f"Could not open backing file: {self.qemu_message}")


# qemu-img 7.2's block drivers (`qemu-img --help`, "Supported formats"): a backing format not among them is
# qemu's "Unknown driver"; one among them but not qcow2 or raw is a format qforensics does not read
QEMU_FORMATS = frozenset("blkdebug blklogwrites blkverify bochs cloop compress copy-before-write copy-on-read dmg "
                         "file ftp ftps gluster host_cdrom host_device http https iscsi iser luks nbd nfs null-aio "
                         "null-co nvme parallels preallocate qcow qcow2 qed quorum raw rbd replication "
                         "snapshot-access ssh throttle vdi vhdx vmdk vpc vvfat".split())


@dataclass
class Consent:
    """Where the user allows backing and data files to be opened from."""

    backing_dir: Path | None = None  # --backing-dir: names are resolved inside it
    image_dir: bool = False  # the image's own folder, when the user allowed it

    def folder_for(self, image: Path) -> Path | None:
        if self.backing_dir is not None:
            return self.backing_dir
        return image.parent if self.image_dir else None


def _resolve_name(consent: Consent, image: Path, name: str, what: str, named: str) -> tuple[Path, str]:
    """The file ``name`` inside the folder the user allowed; ChainError with qemu's words when it is not there.

    qemu opens the name relative to the image's folder as the image was named (path_combine) and says
    which file it could not open in those terms, so its message is rebuilt the same way: ``named`` is the
    image as qemu names it, and the name qemu gives the file is returned with its path.
    """
    folder = consent.folder_for(image)
    if folder is None:
        raise ChainError(f"the {what} {clip(name)!r} is not opened without --backing-dir (or --allow-image-dir "
                         "for the image's own folder)", code="chain.not_allowed")
    try:
        path = resolve_inside(folder, name)
    except QforensicsError as exc:
        raise ChainError(f"the {what} is not opened: {exc}", code="chain.not_allowed") from None
    # qemu looks beside the image; with --backing-dir the file is looked for there instead, and named so
    base = os.path.dirname(named) if consent.backing_dir is None else str(consent.backing_dir)
    as_qemu = name if os.path.isabs(name) else os.path.join(base, name)
    try:
        st = path.stat()
    except OSError as exc:
        where = "is not in" if exc.errno == errno.ENOENT else "cannot be opened in"
        raise ChainError(f"the {what} {clip(name)!r} {where} {folder}: {exc.strerror}",
                         code="chain.missing", qemu_message=f"Could not open '{as_qemu}': {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ChainError(f"the {what} {clip(name)!r} in {folder} is not a regular file", code="chain.not_a_file",
                         qemu_message=f"'file' driver requires '{as_qemu}' to be a regular file")
    if not os.access(path, os.R_OK):
        strerror = os.strerror(errno.EACCES)
        raise ChainError(f"the {what} {clip(name)!r} in {folder} cannot be read: {strerror}",
                         code="chain.unreadable", qemu_message=f"Could not open '{as_qemu}': {strerror}")
    return path, as_qemu


def open_chain(img: Image, consent: Consent, *, snapshot=None, cipher=None, opened: list | None = None,
               seen: set | None = None, depth: int = 0, named: str | None = None):
    """The guest view of ``img`` with its backing chain and data file, opened as ``consent`` allows.

    Every file opened is appended to ``opened`` (the caller closes them); ``seen`` holds the resolved
    paths already in the chain, so a chain that loops is refused instead of followed. Failures raise
    ChainError, with qemu's message where qemu-img would fail the same way; ``named`` is the image's name as
    the user gave it (qemu's messages name the files below it relative to that).
    """
    opened = [] if opened is None else opened
    seen = set() if seen is None else seen
    seen.add(img.path.resolve())
    named = str(img.path) if named is None else named
    if depth >= MAX_CHAIN:
        raise ChainError(f"the backing chain is deeper than {MAX_CHAIN} layers", code="chain.too_deep")
    data_file = None
    if img.header.has_data_file:
        if img.data_file is None:
            raise ChainError("the image keeps its data in an external data file but does not name it",
                             code="chain.data_file_unnamed", qemu_message="'data-file' is required for this image")
        path, _ = _resolve_name(consent, img.path, img.data_file, "external data file", named)
        data_file = FileLayer(path)
        opened.append(data_file)
    backing = None
    if img.backing_file:
        name = img.backing_file
        try:  # every failure to open the backing file is this image's, as qemu words it
            path, as_qemu = _resolve_name(consent, img.path, name, "backing file", named)
            if path.resolve() in seen:
                raise ChainError(f"the backing chain loops back to {path}", code="chain.loop")
        except ChainError as exc:
            raise exc.below() from None
        try:
            backing = _open_backing(path, img.backing_format, consent, opened, seen, depth + 1, as_qemu)
        except ChainError as exc:
            raise exc.below(name) from None
    return Qcow2Layer(img, snapshot=snapshot, backing=backing, data_file=data_file, cipher=cipher)


def _open_backing(path: Path, fmt: str | None, consent: Consent, opened: list, seen: set, depth: int, named: str):
    """A backing layer: qcow2 when the format says so or the file is qcow2 (probed), else raw. Errors are
    the backing file's own (``open_chain`` words them as the image above sees them)."""
    if fmt is not None and fmt not in QEMU_FORMATS:
        raise ChainError(f"backing format {clip(fmt)!r} is not a format qemu knows", code="chain.format_unknown",
                         qemu_message=f"Unknown driver '{fmt}'")
    f = FileLayer(path)
    magic = f.read(0, 4)
    if fmt == "raw" or (fmt is None and magic != MAGIC):
        opened.append(f)
        return RawLayer(f, str(path))
    f.close()
    if fmt not in (None, "qcow2"):
        raise ChainError(f"backing format {fmt!r} is not read by qforensics (qcow2 and raw are)",
                         code="chain.format_unsupported")
    if magic != MAGIC:
        raise ChainError(f"{path} is not a qcow2 image (its backing format says qcow2)", code="chain.format_wrong",
                         qemu_message="Image is not in qcow2 format")
    try:
        img = Image(path)
    except QforensicsError as exc:  # a header the parser refuses carries qemu's refusal, when qemu has one
        raise ChainError(f"{path}: {exc}", code="chain.backing_refused",
                         qemu_message=getattr(exc, "qemu_message", None)) from None
    opened.append(img)
    if img.open_refusals:
        first = img.open_refusals[0]
        raise ChainError(f"{path}: QEMU would refuse it: {first.one_line()}", code="chain.backing_refused",
                         qemu_message=first.qemu_message)
    if img.header.crypt_method:
        raise ChainError(f"{path}: encrypted backing files are not supported", code="chain.backing_encrypted")
    return open_chain(img, consent, opened=opened, seen=seen, depth=depth, named=named)
