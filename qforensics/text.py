"""Strings from the image: clipped for the places where they are repeated, made safe for a terminal.

A snapshot id or name, or a bitmap name, may be 64 KiB long (spec "Snapshot table
entry": 16-bit lengths) and is repeated in the owner name and message of every
structure that snapshot or bitmap owns; thousands of findings would make
gigabytes of output from one entry. Owner names and labels use ``clip``; the full
string is shown once, where the entry itself is described (``info``).

A name may also hold terminal control sequences (ESC [2J clears the screen, OSC
sequences set the window title or write links) or bidirectional overrides that
make a line read differently than it is stored. Human output and messages pass
through ``terminal_safe``, and so does every value the HTML report's template
prints (report.py); JSON escapes them itself.
"""

from __future__ import annotations

import re

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


# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional marks, embeddings, overrides
# and isolates (Unicode TR9), each shown as the escape Python would write for it
_UNSAFE = [*range(0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F,
           *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _UNSAFE}


def terminal_safe(text: str) -> str:
    r"""``text`` with every character that a terminal would act on written as its escape; newlines and
    tabs are kept.

    >>> terminal_safe("snap\x1b[2J\u202eabc\n")
    'snap\\x1b[2J\\u202eabc\n'
    """
    return text.translate(_ESCAPES)


MAX_LINE = 1000  # characters of one printed line (human output and stderr), escapes included


def clip_lines(text: str, limit: int = MAX_LINE) -> str:
    r"""``text`` with every line longer than ``limit`` characters cut to ``limit``, ending with an ellipsis
    and the line's length: the backstop for what clipping the image strings did not bound (qemu's messages,
    kept whole, or a long name shown where its entry is described).

    >>> clip_lines("ab\n" + "x" * 30, 20)
    'ab\nxxx… (30 characters)'
    """
    if len(text) <= limit:
        return text
    return re.sub(r"[^\n]{%d,}" % (limit + 1), lambda m: clip_message(m.group(), limit), text)


def clip_message(message: str, limit: int) -> str:
    """``message`` cut to ``limit`` characters in all, ending with an ellipsis and its original length
    (``"bitmap 'nnnn… (65574 characters)"``); a clipped message is not clipped again."""
    if len(message) <= limit:
        return message
    tail = f"… ({len(message)} characters)"
    return message[:max(limit - len(tail), 0)] + tail


__all__ = ["MAX_LINE", "MAX_SHOWN", "clip", "clip_lines", "clip_message", "terminal_safe"]
