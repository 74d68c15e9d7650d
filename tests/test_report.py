"""The HTML audit report: sections, verdict and findings from the DOM; every image string escaped.

Browser tests (headless Chromium) come with the next step of the report; these parse the HTML.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from html.parser import HTMLParser

import pytest

from conftest import CASES, image_path, run_qforensics
from corruptions import KINDS, make

SECTIONS = {"evidence", "verdict", "image", "findings", "cluster-map", "graph"}


class Page(HTMLParser):
    """What a reader's browser would build: element ids, script elements, finding rows, verdict text."""

    def __init__(self):
        super().__init__()
        self.ids, self.scripts, self.rows, self.tags = set(), 0, 0, []
        self.verdict, self._in_verdict = "", False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "script":
            self.scripts += 1
        if tag == "tr" and a.get("class") == "finding":
            self.rows += 1
        self._in_verdict = a.get("id") == "verdict-text"

    def handle_data(self, data):
        if self._in_verdict:
            self.verdict += data.strip()
            self._in_verdict = False


def report(folder, name, tmp_path) -> tuple[Page, str, dict]:
    out = tmp_path / "report.html"
    res = run_qforensics("report", name, "-o", str(out), cwd=folder)
    assert res.returncode == 0, res.stderr
    html = out.read_text()
    page = Page()
    page.feed(html)
    checked = json.loads(run_qforensics("check", "--output", "json", name, cwd=folder).stdout)
    return page, html, checked


@pytest.mark.parametrize(("case", "verdict"), [("v3_default", "clean"), ("draft_dedup", "leaks"),
                                               ("encrypted_luks", "clean"), ("combo_snapshots_bitmaps", "clean")])
def test_report_of_corpus_images(corpus, tmp_path, case, verdict):
    path = image_path(corpus, case)
    page, html, checked = report(path.parent, path.name, tmp_path)
    assert SECTIONS <= page.ids
    assert page.verdict == verdict
    assert page.rows == len(checked["findings"])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert html.count(digest) == 2  # before and after the analysis, equal
    assert page.scripts == 1  # the report's own sorting code
    assert not any(tag in ("link", "img", "iframe") or "src" in a or ("href" in a and not a["href"].startswith("#"))
                   for tag, a in page.tags)  # nothing fetched: the file opens offline


def test_report_of_a_corrupt_image(corpus, tmp_path):
    kind = next(k for k in KINDS if k.id == "l2_entry_into_l1")
    path = make(kind, image_path(corpus, kind.base).parent, CASES[kind.base]["main"], tmp_path)
    page, html, checked = report(tmp_path, path.name, tmp_path)
    assert page.verdict == "corrupt" and page.rows == len(checked["findings"])
    assert "overlap" in html and 'id="x' in html  # hex excerpt of a corrupted structure


def test_image_strings_are_escaped(tmp_path):
    hostile = ['<script>alert(1)</script>', '" onload="alert(2)', "<img src=x onerror=alert(3)>"]
    base = 'base"<b>.qcow2'
    for args in (["create", "-q", "-f", "qcow2", base, "1M"],
                 ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", "top.qcow2", "1M"],
                 ["snapshot", "-c", hostile[0], "top.qcow2"], ["snapshot", "-c", hostile[1], "top.qcow2"],
                 ["bitmap", "--add", "top.qcow2", hostile[2]]):
        subprocess.run(["qemu-img", *args], check=True, cwd=tmp_path)
    data = bytearray((tmp_path / "top.qcow2").read_bytes())
    # a feature name with markup, and a snapshot name that is not UTF-8
    pos = data.index(b"dirty bit")
    data[pos:pos + 46] = b"<script>alert(4)</script>".ljust(46, b"\0")
    pos = data.index(b"<script>alert(1)")
    data[pos + 1] = 0xFF
    (tmp_path / "top.qcow2").write_bytes(bytes(data))
    page, html, _ = report(tmp_path, "top.qcow2", tmp_path)
    assert page.scripts == 1
    assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)]
    assert "<img" not in html and "alert(4)</script>" not in html
    assert "&lt;script&gt;alert(4)&lt;/script&gt;" in html and "&#34; onload=&#34;alert(2)" in html
    assert "\\xff" in html  # the byte that is not UTF-8 is shown, not dropped


def test_check_html_and_evidence_guard(corpus, tmp_path):
    path = image_path(corpus, "v3_default")
    out = tmp_path / "r.html"
    res = run_qforensics("check", path.name, "--html", str(out), cwd=path.parent)
    assert res.returncode == 0 and out.exists()
    res = run_qforensics("report", path.name, "-o", path.name, cwd=path.parent)
    assert res.returncode == 1 and "refusing to write" in res.stderr


def test_report_of_an_unreadable_image(corpus, tmp_path):
    """cluster_bits 22: qemu refuses it and no table can be located; the report still describes the header."""
    src = image_path(corpus, "v3_default")
    data = bytearray(src.read_bytes())
    data[20:24] = (22).to_bytes(4, "big")
    (tmp_path / "bad.qcow2").write_bytes(bytes(data))
    page, html, checked = report(tmp_path, "bad.qcow2", tmp_path)
    assert page.verdict == "unreadable"
    assert "Unsupported cluster size: 2^22" in html and page.rows == len(checked["findings"])
