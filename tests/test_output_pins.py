"""Every command's JSON on every corpus image is what it was when the pins were written (issue 15: the
house is rebuilt with behaviour unchanged; this is the guard, written before anything moved).

The pins are the outputs themselves (normalised: the session folder replaced by ``<dir>``, the file system's
actual-size by ``<fs>``, the log's time and command line dropped), gzipped in tests/pins/outputs.json.gz, so a failure shows what changed. A
change of behaviour that is meant must rewrite them, said in its commit:

    QFORENSICS_WRITE_PINS=1 python3 -m pytest tests/test_output_pins.py
"""

from __future__ import annotations

import contextlib
import difflib
import gzip
import io
import json
import os
import re
from pathlib import Path

import pytest

from conftest import CASES
from corruptions import KINDS, make

from qforensics import cli

PINS = Path(__file__).parent / "pins" / "outputs.json.gz"
WRITE = os.environ.get("QFORENSICS_WRITE_PINS") == "1"


def commands(case: str, folder: Path, secret: list[str]) -> dict[str, list[str]]:
    main = CASES[case]["main"]
    chain = ["--allow-image-dir"]
    return {
        "info": ["info", "--output", "json", "--force", main],
        "check": ["check", "--output", "json", main],
        "check-chain": ["check", "--output", "json", *chain, main],
        "map": ["map", "--output", "json", "--force", *chain, main],
        "graph": ["graph", "--output", "json", main, "-o", str(folder / "pin-graph.json")],
        "recover": ["recover", "--output", "json", "--quiet", *chain, *secret, main, "-o", str(folder / "pin.raw"),
                    "--log", str(folder / "pin-log.json")],
    }


def run(argv: list[str], folder: Path) -> str:
    """One command in this process, as the CLI runs it: its exit code, stdout and stderr, normalised."""
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
    finally:
        os.chdir(here)
    text = f"exit {code}\n--- stdout\n{out.getvalue()}--- stderr\n{err.getvalue()}"
    log = folder / "pin-log.json"
    if argv[0] == "recover" and log.exists():
        doc = json.loads(log.read_text())
        doc.pop("time", None)
        doc.pop("command", None)
        text += "--- log\n" + json.dumps(doc, indent=1, sort_keys=True) + "\n"
        log.unlink()
    for name in ("pin.raw", "pin-graph.json"):
        (folder / name).unlink(missing_ok=True)
    # the bytes the file system allocated are the file system's, not ours
    return re.sub(r'"actual-size": \d+', '"actual-size": <fs>', text.replace(str(folder), "<dir>"))


def outputs(corpus: Path, scratch: Path) -> dict[str, str]:
    found = {}
    for case in sorted(CASES):
        folder = corpus / case
        secret = []
        if CASES[case].get("passphrase"):  # beside the corpus, not in it: other tests list the case's files
            (scratch / f"{case}.pass").write_text(CASES[case]["passphrase"])
            secret = ["--passphrase-file", str(scratch / f"{case}.pass")]
        for name, argv in commands(case, folder, secret).items():
            found[f"{case}/{name}"] = run(argv, folder)
    for kind in KINDS:  # and the damaged images, which walk most of the checks' paths
        folder = scratch / f"kind-{kind.id}"
        folder.mkdir()
        make(kind, corpus / kind.base, CASES[kind.base]["main"], folder)
        for name, argv in commands(kind.base, folder, []).items():
            if name != "graph":
                found[f"kind:{kind.id}/{name}"] = run([*argv, "--scan"] if name == "recover" else argv, folder)
    return found


def test_every_command_output_is_pinned(corpus, tmp_path):
    found = outputs(corpus, tmp_path)
    if WRITE:
        PINS.parent.mkdir(exist_ok=True)
        data = json.dumps(found, indent=0, sort_keys=True).encode()
        PINS.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
        pytest.skip(f"pins written: {len(found)} outputs")
    with gzip.open(PINS, "rt", encoding="utf-8") as f:
        pinned = json.load(f)
    assert sorted(found) == sorted(pinned)
    changed = [key for key in sorted(found) if found[key] != pinned[key]]
    if changed:
        key = changed[0]
        diff = "\n".join(list(difflib.unified_diff(pinned[key].splitlines(), found[key].splitlines(), "pinned",
                                                   "now", lineterm=""))[:60])
        pytest.fail(f"{len(changed)} outputs changed: {changed[:20]}\nfirst, {key}:\n{diff}")
