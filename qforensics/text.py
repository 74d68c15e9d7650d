"""Strings from the image, clipped for the places where they are repeated.

A snapshot id or name, or a bitmap name, may be 64 KiB long (spec "Snapshot table
entry": 16-bit lengths) and is repeated in the owner name and message of every
structure that snapshot or bitmap owns; thousands of findings would make
gigabytes of output from one entry. Owner names and labels use ``clip``; the full
string is shown once, where the entry itself is described (``info``).
"""

from __future__ import annotations

MAX_SHOWN = 64  # characters of an image string kept in owner names and labels


def clip(value: str, limit: int = MAX_SHOWN) -> str:
    """``value`` itself when it has at most ``limit`` characters, else its first ``limit`` characters, an
    ellipsis and its total length in UTF-8 bytes (the length the image stores, for a valid UTF-8 name):
    ``'abc…' (65535 bytes)``.

    >>> clip("snap 1")
    'snap 1'
    >>> clip("x" * 70, 4)
    "'xxxx…' (70 bytes)"
    """
    if len(value) <= limit:
        return value
    size = len(value.encode("utf-8", "surrogatepass"))
    return f"'{value[:limit]}…' ({size} bytes)"


__all__ = ["MAX_SHOWN", "clip"]
