"""The progress bar: drawn on a real terminal (a pseudo-terminal), absent with --quiet, JSON or no terminal.

The CLI runs with stderr on the slave side of a pty (stdout on a pipe, so the
two can be told apart), as when a person runs it in a terminal.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import select
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

from conftest import ROOT, image_path, run_qforensics
from qforensics import progress

ERASE = "\r\x1b[K"


def run_on_terminal(*args: str, cwd) -> tuple[int, str, str]:
    """(exit code, stdout, what the terminal showed on stderr) of the CLI with stderr on a pty, 100 columns."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "qforensics", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave, cwd=cwd, env=env)
    os.close(slave)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))
    reader.start()
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every slave descriptor is closed, the CLI has exited
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    rc = proc.wait(timeout=120)
    reader.join(timeout=120)
    return rc, out[0].decode(), seen.decode()


@pytest.fixture
def image(corpus):
    return image_path(corpus, "draft_dedup_journal")  # leaks: exit 3, findings on stdout


def test_check_draws_a_bar_on_a_terminal(image):
    rc, stdout, terminal = run_on_terminal("check", image.name, cwd=image.parent)
    assert rc == 3
    assert terminal.startswith("\rcheck [") and " 0%" in terminal
    assert "check [" + "#" * 33 + "] 100%  header, snapshots, bitmaps, drafts" in terminal  # 100 columns: 33 wide
    assert terminal.endswith(ERASE)  # erased: the terminal is left as it was
    assert all(len(frame) < 100 for frame in terminal.split("\r"))  # fits the terminal
    assert stdout == run_qforensics("check", image.name, cwd=image.parent).stdout  # stdout untouched


def test_report_draws_a_bar_then_its_message(image, tmp_path):
    rc, _, terminal = run_on_terminal("report", image.name, "-o", str(tmp_path / "r.html"), cwd=image.parent)
    assert rc == 0 and (tmp_path / "r.html").exists()
    assert "report [" in terminal and "] 100%" in terminal
    assert terminal.endswith(ERASE + f"report written to {tmp_path / 'r.html'}\r\n")


def test_check_html_one_bar_for_both(image, tmp_path):
    rc, _, terminal = run_on_terminal("check", image.name, "--html", str(tmp_path / "r.html"), cwd=image.parent)
    assert rc == 3 and "check [" in terminal and "] 100%" in terminal and "report [" not in terminal


@pytest.mark.parametrize("args", [["check", "--quiet"], ["check", "--output", "json"],
                                  ["check", "--quiet", "--output", "json"], ["report", "--quiet", "-o", "r.html"]])
def test_no_bar_with_quiet_or_json(image, tmp_path, args):
    if "-o" in args:
        args = [a if a != "r.html" else str(tmp_path / "r.html") for a in args]
    rc, stdout, terminal = run_on_terminal(*args, image.name, cwd=image.parent)
    assert rc in (0, 3)
    assert terminal == ""  # nothing at all on the terminal's stderr
    if "json" in args:
        assert len(json.loads(stdout)["findings"]) == 8


def test_no_bar_when_stderr_is_not_a_terminal(image, tmp_path):
    res = run_qforensics("check", image.name, cwd=image.parent)
    assert res.returncode == 3 and res.stderr == ""
    res = run_qforensics("report", image.name, "-o", str(tmp_path / "r.html"), cwd=image.parent)
    assert res.returncode == 0 and res.stderr == f"report written to {tmp_path / 'r.html'}\n"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_shares_and_tasks_map_onto_the_bar():
    stream = Terminal()
    with progress.Progress("x", total=100, enabled=True, stream=stream) as bar:
        assert progress.current() is bar
        with bar.share(40):
            with progress.task(total=10) as t:
                t.advance(5)
                assert bar.done == 20  # half of the 40 units reserved
                t.describe("stage")
                assert bar.text == "stage"
                with progress.task(total=2) as inner:  # no share: spans what is left of t (half of it)
                    inner.advance(1)
                    assert bar.done == 30
            assert bar.done == 40
        assert bar.done == 40
        with progress.task(total=4) as t:  # no share: the rest of the bar
            t.advance(1)
            assert bar.done == 55
        bar.update(1000)
        assert bar.done == 100  # clipped
    assert progress.current() is progress.NULL
    assert stream.getvalue().startswith("\rx [") and stream.getvalue().endswith(ERASE)


def test_disabled_bar_writes_nothing_and_tasks_are_free():
    stream = Terminal()
    with progress.Progress("x", total=10, enabled=False, stream=stream) as bar:
        with bar.share(5):
            with progress.task(total=3) as t:
                assert t is progress.NULL
                t.advance()
                t.describe("ignored")
    assert stream.getvalue() == ""
    with progress.task(total=3) as t:  # no bar at all: what library callers get
        assert t is progress.NULL
        t.advance(2)


def test_wanted():
    assert progress.wanted(stream=Terminal())
    assert not progress.wanted(quiet=True, stream=Terminal())
    assert not progress.wanted(json_output=True, stream=Terminal())
    assert not progress.wanted(stream=io.StringIO())


def test_a_vanished_terminal_stops_the_bar_not_the_analysis():
    class Gone(Terminal):
        def write(self, s):
            raise OSError(5, "Input/output error")

    with progress.Progress("x", total=2, enabled=True, stream=Gone()) as bar:
        bar.advance(2)
    assert not bar.enabled
