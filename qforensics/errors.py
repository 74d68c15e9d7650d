"""Exceptions that reach the command line as one-line errors.

Checks never raise on damaged metadata (they record findings); these are for
the few cases where there is nothing to analyse or the user asked for
something impossible.
"""

from __future__ import annotations


class QforensicsError(Exception):
    """Base of every error the CLI turns into a one-line message and exit code 1."""


class ImageOpenError(QforensicsError):
    """The file cannot be modelled as qcow2 at all (not found, not qcow2, header unreadable)."""

    def __init__(self, message: str, *, structure: str = "file", offset: int | None = None, code: str | None = None,
                 qemu_message: str | None = None):
        """``code`` and ``qemu_message`` (what qemu-img says after "Could not open 'X': ") when QEMU refuses the
        file as a qcow2 image for the same reason; None for a file qemu would not take for qcow2 at all."""
        where = structure if offset is None else f"{structure} at 0x{offset:x}"
        super().__init__(f"{where}: {message}")
        self.message = message
        self.structure = structure
        self.offset = offset
        self.code = code
        self.qemu_message = qemu_message


class UsageError(QforensicsError):
    """The command line asked for something that cannot be done."""
