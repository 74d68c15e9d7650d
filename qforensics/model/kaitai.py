"""Glue between the generated Kaitai parsers and the model.

Generated parsers raise on the first violated ``valid:`` constraint or on a
short read; these helpers turn that into a ``StructureError`` that names the
structure, the field and the host offset, so callers can record a finding.
"""

from __future__ import annotations

import functools
import inspect
import re
from io import BytesIO
from typing import Any, TypeVar

import kaitaistruct
from kaitaistruct import KaitaiStream

T = TypeVar("T")

_RAISE = re.compile(r'raise kaitaistruct\.Validation\w+\((?:[^,]+, )?self\.(\w+), self\._io, u"([^"]+)"\)')


class StructureError(Exception):
    """A structure could not be parsed: ``message`` names the field and value."""

    def __init__(self, structure: str, offset: int, message: str, field: str | None = None, value: Any = None):
        super().__init__(f"{structure} at 0x{offset:x}: {message}")
        self.structure = structure
        self.offset = offset
        self.message = message
        self.field = field
        self.value = value


@functools.cache
def _validation_fields(module: Any) -> dict[str, str]:
    """Map a generated module's validation source paths ("/seq/4") to field ids."""
    return {path: field for field, path in _RAISE.findall(inspect.getsource(module))}


def parse(cls: type[T], data: bytes, *params: Any, structure: str, offset: int) -> T:
    """Parse ``data`` (found at host ``offset``) with generated class ``cls``."""
    try:
        return cls(*params, KaitaiStream(BytesIO(data)))
    except kaitaistruct.ValidationFailedError as exc:
        raise _describe(exc, cls, structure, offset) from None
    except (EOFError, kaitaistruct.KaitaiStructError) as exc:
        raise StructureError(structure, offset, f"truncated ({len(data)} bytes available): {exc}") from None


def _describe(exc: kaitaistruct.ValidationFailedError, cls: type, structure: str, offset: int) -> StructureError:
    import sys

    field = _validation_fields(sys.modules[cls.__module__]).get(exc.src_path, exc.src_path)
    actual = getattr(exc, "actual", None)
    shown = f"0x{actual:x}" if isinstance(actual, int) and actual > 255 else repr(actual)
    if isinstance(exc, kaitaistruct.ValidationLessThanError):
        why = f"{field} is {shown}, below the minimum {exc.min}"
    elif isinstance(exc, kaitaistruct.ValidationGreaterThanError):
        why = f"{field} is {shown}, above the maximum {exc.max}"
    elif isinstance(exc, kaitaistruct.ValidationNotEqualError):
        why = f"{field} is {shown}, expected {exc.expected!r}"
    else:
        why = f"{field} is {shown}, not an allowed value"
    return StructureError(structure, offset, why, field=field, value=actual)


def decode_name(raw: bytes) -> str:
    """Text of a name stored in the image; invalid UTF-8 is kept visible as \\xNN."""
    return raw.decode("utf-8", errors="backslashreplace")


def opt(obj: Any, field: str) -> Any:
    """A field declared with ``if:``; generated code leaves it unset when the condition is false."""
    return getattr(obj, field, None)
