"""A small progress bar on stderr, drawn only for a person watching a terminal.

The bar is drawn only when stderr is a terminal, ``--quiet`` was not given and
the output is not JSON (`wanted`); otherwise every call is a no-op and nothing
is written. No third-party dependency.

In a command (cli.py)::

    from . import progress

    with progress.Progress("recover", total=n_clusters, enabled=progress.wanted(args.quiet)) as bar:
        for batch in batches:
            ...
            bar.advance(len(batch))          # or bar.update(done); bar.describe("L2 tables") names the stage

Deep in the code, without passing the bar down: `progress.current()` is the
innermost active bar (a no-op one when there is none), and `progress.task`
opens a child with its own number of steps::

    with progress.task(total=3) as p:       # moves the caller's bar across the share it reserved
        p.describe("refcounts"); ...; p.advance()
        p.describe("overlaps"); ...; p.advance()

A caller that runs several such pieces gives each a share of its own bar::

    with progress.Progress("report", total=100, enabled=...) as bar:
        with bar.share(20):                  # the next 20 units of the bar
            digest = hash_file(path)         # calls progress.task(total=size) and advances by bytes
        with bar.share(60):
            check_image(img)

Without a share, a task spans what is left of its parent. The current bar is
a context variable, so threads and nested commands do not see each other's.
The bar redraws at most every 0.1 s, fits the terminal's width, and is
erased when its block ends, leaving stderr as it was.
"""

from __future__ import annotations

import contextvars
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

REDRAW_SECONDS = 0.1
_current: contextvars.ContextVar[_Node | None] = contextvars.ContextVar("qforensics_progress", default=None)


def wanted(quiet: bool = False, json_output: bool = False, stream: IO[str] | None = None) -> bool:
    """True when a bar should be drawn: stderr (or stream) is a terminal, not --quiet, not JSON output."""
    stream = sys.stderr if stream is None else stream
    if quiet or json_output:
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False


class _Node:
    """Common to the bar and its children: steps done out of a total, and a text naming the stage."""

    def __init__(self, total: float):
        self.total = max(float(total), 0.0)
        self.done = 0.0
        self._reserved: float | None = None

    # the calls a caller makes
    def advance(self, n: float = 1) -> None:
        self.update(self.done + n)

    def update(self, done: float) -> None:
        self.done = min(max(float(done), 0.0), self.total) if self.total else 0.0
        self._moved()

    def describe(self, text: str) -> None:
        """Name the stage under way (shown after the bar)."""

    @contextmanager
    def share(self, units: float) -> Iterator[None]:
        """The next `units` of this bar go to whatever runs in the block (a `task` inside it spans them)."""
        start = self.done
        self._reserved = units
        token = _current.set(self)
        try:
            yield
        finally:
            _current.reset(token)
            self._reserved = None
            self.update(start + units)

    # internals
    def _fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def _moved(self) -> None:
        pass

    def _root(self) -> Progress | None:
        return None


class Progress(_Node):
    """A bar on stderr: ``Progress(label, total, enabled)``; a context manager that makes it current.

    `enabled` defaults to `wanted()` (stderr is a terminal); pass ``progress.wanted(args.quiet, json)``.
    """

    def __init__(self, label: str, total: float, enabled: bool | None = None, stream: IO[str] | None = None):
        super().__init__(total)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.enabled = wanted(stream=self.stream) if enabled is None else enabled
        self.text = ""
        self._last_draw = 0.0
        self._drawn = False
        self._token: contextvars.Token | None = None

    def __enter__(self) -> Progress:
        self._token = _current.set(self)
        self._draw(force=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.done = self.total
            self._draw(force=True)
        self.close()
        if self._token is not None:
            _current.reset(self._token)
            self._token = None

    def close(self) -> None:
        """Erase the bar (the line is left empty, the cursor at its start)."""
        if self.enabled and self._drawn:
            self._write("\r\x1b[K")
            self._drawn = False

    def describe(self, text: str) -> None:
        if text != self.text:
            self.text = text
            self._draw()

    def _moved(self) -> None:
        self._draw()

    def _root(self) -> Progress:
        return self

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < REDRAW_SECONDS:
            return
        self._last_draw = now
        width = _columns(self.stream)
        pct = f"{100 * self._fraction():3.0f}%"
        bar_width = max(10, min(40, width // 3))
        filled = int(bar_width * self._fraction())
        line = f"{self.label} [{'#' * filled}{'.' * (bar_width - filled)}] {pct}"
        if self.text:
            line += f"  {self.text}"
        self._write("\r" + line[: max(width - 1, 1)] + "\x1b[K")
        self._drawn = True

    def _write(self, s: str) -> None:
        try:
            self.stream.write(s)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: stop drawing, never fail the analysis
            self.enabled = False


class _Task(_Node):
    """A child: its own steps, mapped onto [start, start + units) of its parent."""

    def __init__(self, parent: _Node, total: float):
        super().__init__(total)
        self.parent = parent
        self.start = parent.done
        self.units = parent._reserved if parent._reserved is not None else parent.total - parent.done
        parent._reserved = None

    def describe(self, text: str) -> None:
        self.parent.describe(text)

    def _moved(self) -> None:
        self.parent.update(self.start + self.units * self._fraction())

    def _root(self) -> Progress | None:
        return self.parent._root()


class _Null(_Node):
    """What `current()` gives when no bar is active: every call does nothing."""

    def __init__(self):
        super().__init__(0)

    def update(self, done: float) -> None:
        pass

    @contextmanager
    def share(self, units: float) -> Iterator[None]:
        yield


NULL = _Null()


def current() -> _Node:
    """The innermost active bar or task; a no-op one when none is active."""
    node = _current.get()
    return NULL if node is None else node


@contextmanager
def task(total: float) -> Iterator[_Node]:
    """A child of the current bar with `total` steps, spanning the share its parent reserved (or the rest)."""
    parent = _current.get()
    if parent is None or not _enabled(parent):
        yield NULL
        return
    child = _Task(parent, total)
    token = _current.set(child)
    try:
        yield child
    finally:
        _current.reset(token)
        if child.units:
            parent.update(child.start + child.units)


def _enabled(node: _Node) -> bool:
    root = node._root()
    return root is not None and root.enabled


def _columns(stream: IO[str]) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return shutil.get_terminal_size().columns


__all__ = ["NULL", "Progress", "current", "task", "wanted"]
