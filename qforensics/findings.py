"""Findings: what the model and the checks say about an image, as plain data.

A finding never prints and never raises; the CLI, JSON and HTML renderers
only render lists of findings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from .text import clip_message

MAX_MESSAGE = 900  # characters a message may have; longer ones are clipped (see Finding.__post_init__), so that
# a finding's line stays under text.MAX_LINE in human output and JSON


class Severity(StrEnum):
    """How bad a finding is; the order is the order of gravity."""

    CORRUPTION = "corruption"
    LEAK = "leak"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Finding:
    """One fact about the image that an analyst should know.

    ``code`` is stable and machine-readable (``header.cluster_bits_unsupported``);
    ``message`` names the field, its value and the limit. ``qemu_message`` is
    the text QEMU 7.2 prints when it refuses to open the image for this reason
    (None when QEMU accepts it), so a refusal can be compared with qemu's.
    ``qemu_counts`` says which `qemu-img check` counter the finding stands for;
    findings beyond qemu leave it None, so qemu's numbers stay comparable.
    """

    code: str
    severity: Severity
    message: str
    structure: str
    host_offset: int | None = None
    guest_offset: int | None = None
    qemu_message: str | None = None
    qemu_io_only: bool = False  # qemu refuses only a full open (check, convert, qemu-io), not `qemu-img info`
    qemu_check: str | None = None  # the line `qemu-img check` prints for the same fault
    qemu_counts: str | None = None  # the qemu-img check counter it adds to: corruptions, leaks, check-errors
    repeat: int = 1  # faults it stands for: a ".more" summary stands for those past the listing cap

    def __post_init__(self) -> None:
        # A backstop: the model clips image strings where it repeats them, but one message must never grow
        # with the image (a 64 KiB name, a list of offsets). qemu_message stays whole: it must equal qemu's.
        if len(self.message) > MAX_MESSAGE:
            object.__setattr__(self, "message", clip_message(self.message, MAX_MESSAGE))

    @property
    def refused_by_qemu(self) -> bool:
        return self.qemu_message is not None

    def to_json(self) -> dict:
        # dataclasses.asdict deep-copies field by field; for 80K findings that was most of a report's time
        return {"code": self.code, "severity": str(self.severity), "message": self.message,
                "structure": self.structure, "host_offset": self.host_offset, "guest_offset": self.guest_offset,
                "qemu_message": self.qemu_message, "qemu_io_only": self.qemu_io_only, "qemu_check": self.qemu_check,
                "qemu_counts": self.qemu_counts, "repeat": self.repeat}

    def one_line(self) -> str:
        where = self.structure if self.host_offset is None else f"{self.structure} at 0x{self.host_offset:x}"
        return f"{where}: {self.message}"


class Listing:
    """How many findings of each code are listed so far: up to ``limit`` a code, past it the rest are only
    counted (never formatted), and ``summaries`` gives one ".more" finding per code (and qemu-img check
    counter, for the findings that add to one) saying how many were left out, so that no listing is ever
    cut silently."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.listed: dict[str, int] = {}
        self.dropped: dict[tuple[str, str | None], int] = {}  # (code, qemu counter) -> left out

    def room(self, code: str) -> int:
        return max(0, self.limit - self.listed.get(code, 0))

    def add(self, code: str, k: int = 1) -> None:
        self.listed[code] = self.listed.get(code, 0) + k

    def drop(self, code: str, k: int, qemu_counts: str | None = None) -> None:
        """``k`` more findings of ``code`` past the cap: counted, never formatted (and count as listed, so the
        cap stays reached)."""
        if k > 0:
            self.listed[code] = self.listed.get(code, 0) + k
            key = (code, qemu_counts)
            self.dropped[key] = self.dropped.get(key, 0) + k

    def keep(self, findings: list[Finding]) -> list[Finding]:
        """``findings`` with each code's past the limit taken out and counted."""
        kept = []
        for f in findings:
            if self.room(f.code):
                self.add(f.code)
                kept.append(f)
            else:
                self.drop(f.code, f.repeat)
        return kept

    def summaries(self) -> list[Finding]:
        return [more(code, n, counts) for (code, counts), n in self.dropped.items()]


def more(code: str, n: int, qemu_counts: str | None = None) -> Finding:
    """The ".more" finding that stands for ``n`` findings of ``code`` past a listing cap (``qemu_counts``: the
    qemu-img check counter they add to, which stays exact)."""
    return Finding(code + ".more", Severity.INFO, f"{n} more findings of {code} not listed", "report", None,
                   qemu_counts=qemu_counts, repeat=n)


_NUMBER = re.compile(r"0x[0-9a-f]+|\d+")


def _numbers(f: Finding) -> tuple[str, list[str], list[int]]:
    """A finding's ``structure: message``, its numbers as written, and their values (hex or decimal: a
    decimal with leading zeros, a date's "07", is decimal)."""
    text = f"{f.structure}: {f.message}"
    tokens = _NUMBER.findall(text)
    return text, tokens, [int(t, 16) if t.startswith("0x") else int(t) for t in tokens]


@dataclass(frozen=True, slots=True)
class Run:
    """Neighbouring findings of one code that differ only in numbers stepping evenly (consecutive clusters,
    consecutive entries of one table): one line for a terminal user. ``text`` is the first finding's
    ``structure: message`` with each number that varies written as ``first-last``."""

    first: Finding
    count: int  # faults the run stands for (the findings' repeats added up)
    findings: int  # findings in it
    host_end: int | None  # the last finding's host offset
    step: int | None  # host offset step: the cluster size, an entry's size, 0 (one structure), None (no offsets)
    text: str


def runs(findings: list[Finding], cluster_size: int) -> list[Run]:
    """``findings`` in order, each stretch of neighbours folded into one Run: same code and severity, texts
    equal but for their numbers, every number and the host offset stepping by the same amount each time
    (at most a cluster), so that ``first-last`` ranges say exactly what the findings said."""
    out: list[Run] = []
    i, n = 0, len(findings)
    while i < n:
        f = findings[i]
        text, nums, values = _numbers(f)
        skeleton = _NUMBER.sub("#", text)
        j, step, deltas = i + 1, None, None
        prev, last_nums = values, nums
        while j < n:
            g = findings[j]
            if g.code != f.code or g.severity != f.severity or (g.host_offset is None) != (f.host_offset is None):
                break
            gtext, gnums, gvalues = _numbers(g)
            if _NUMBER.sub("#", gtext) != skeleton:
                break
            d = [b - a for a, b in zip(prev, gvalues)]
            s = None if g.host_offset is None else g.host_offset - findings[j - 1].host_offset
            if (s is not None and not 0 <= s <= cluster_size) or (deltas is not None and (d != deltas or s != step)):
                break
            step, deltas, prev, last_nums = s, d, gvalues, gnums
            j += 1
        last = findings[j - 1]
        if j - i == 1:
            out.append(Run(f, f.repeat, 1, f.host_offset, None, text))
        else:
            parts = iter(a if a == b else f"{a}-{b}" for a, b in zip(nums, last_nums))
            out.append(Run(f, sum(x.repeat for x in findings[i:j]), j - i, last.host_offset, step,
                           _NUMBER.sub(lambda _: next(parts), text)))
        i = j
    return out
