"""The HTML audit report: sections, verdict and findings from the parsed HTML; every image string escaped;
the evidence digest (--hash full, sparse, auto).

The same reports in a real headless Chromium: test_report_browser.py.
"""

from __future__ import annotations

import hashlib
import html as html_module
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from conftest import CASES, image_path, qemu_img, run_qforensics
from corruptions import KINDS, make
from qforensics import report as report_module
from qforensics.evidence.digest import choose_hash, data_extents

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


def report(folder, name, tmp_path, *options: str) -> tuple[Page, str, dict]:
    out = tmp_path / "report.html"
    res = run_qforensics("report", name, "-o", str(out), *options, cwd=folder)
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


# Names that would run script if any reached the page unescaped; each one sets window.__pwned or alerts.
HOSTILE_SNAPSHOTS = ["<script>window.__pwned=1;alert(1)</script>", '" onmouseover="window.__pwned=2" x="',
                     "X<script>window.__pwned=5</script>"]  # X becomes the byte 0xFF (not UTF-8)
HOSTILE_BITMAP = "<img src=x onerror=window.__pwned=3;alert(3)>"
HOSTILE_FEATURE = "<script>window.__pwned=4</script>"
HOSTILE_BACKING = 'base"<svg onload=window.__pwned=6>.qcow2'


def make_hostile(folder) -> str:
    """An image whose snapshot, bitmap, feature and backing file names are markup; returns its file name."""
    for args in (["create", "-q", "-f", "qcow2", HOSTILE_BACKING, "1M"],
                 ["create", "-q", "-f", "qcow2", "-b", HOSTILE_BACKING, "-F", "qcow2", "top.qcow2", "1M"],
                 *(["snapshot", "-c", name, "top.qcow2"] for name in HOSTILE_SNAPSHOTS),
                 ["bitmap", "--add", "top.qcow2", HOSTILE_BITMAP]):
        subprocess.run(["qemu-img", *args], check=True, cwd=folder)
    data = bytearray((folder / "top.qcow2").read_bytes())
    # a feature name with markup, and a snapshot name that is not UTF-8
    pos = data.index(b"dirty bit")
    data[pos:pos + 46] = HOSTILE_FEATURE.encode().ljust(46, b"\0")
    pos = data.index(HOSTILE_SNAPSHOTS[2].encode())
    data[pos] = 0xFF
    (folder / "top.qcow2").write_bytes(bytes(data))
    return "top.qcow2"


def test_image_strings_are_escaped(tmp_path):
    page, html, _ = report(tmp_path, make_hostile(tmp_path), tmp_path)
    assert page.scripts == 1
    assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)]
    tags = [t for t, _ in page.tags]
    assert "img" not in tags and "<img" not in html
    assert tags.count("svg") == 1  # the cluster map's, not the backing file's
    assert "__pwned=4</script>" not in html and "&lt;script&gt;window.__pwned=4&lt;/script&gt;" in html
    assert "&#34; onmouseover=&#34;window.__pwned=2&#34; x=&#34;" in html
    assert "&lt;svg onload=window.__pwned=6&gt;" in html
    assert "\\xff&lt;script&gt;window.__pwned=5" in html  # the byte that is not UTF-8 is shown, not dropped


def test_control_and_bidi_characters_are_shown_as_escapes(tmp_path):
    """A snapshot name with a right-to-left override would reverse the text after it on the page, and
    terminal escapes are invisible: both are written as visible escapes."""
    name = "evil\x1b[2J\u202eRED\x85"
    for args in (["create", "-q", "-f", "qcow2", "bidi.qcow2", "1M"], ["snapshot", "-c", name, "bidi.qcow2"]):
        subprocess.run(["qemu-img", *args], check=True, cwd=tmp_path)
    page, html, _ = report(tmp_path, "bidi.qcow2", tmp_path)
    assert page.scripts == 1
    assert not any(c in html for c in "\x1b\u202e\x85")
    assert "evil\\x1b[2J\\u202eRED\\x85" in html


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


def qemu_check_exit(folder, name) -> int:
    return qemu_img("check", name, cwd=folder).returncode


def sparse_digest(size: int, extents: list[tuple[int, int]], path) -> str:
    """The documented sparse digest, computed from a known extent list (not from lseek)."""
    h = hashlib.sha256(b"qforensics-sparse-sha256-v1\n%d\n" % size)
    with open(path, "rb") as f:
        for start, length in extents:
            h.update(b"%d %d\n" % (start, length))
            f.seek(start)
            h.update(f.read(length))
    return h.hexdigest()


def recipe(html: str) -> str:
    return html_module.unescape(re.search(r'<pre id="sparse-recipe">(.*?)</pre>', html, re.S).group(1))


def lseek_extents(path) -> list[tuple[int, int]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return data_extents(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def test_sparse_digest_of_a_known_layout(corpus, tmp_path):
    """--hash sparse: the documented digest, reproduced from the layout written and by the report's own recipe."""
    path = tmp_path / "holes.qcow2"
    shutil.copyfile(image_path(corpus, "v3_default"), path)
    head = path.stat().st_size  # 768 KiB, all written
    with open(path, "r+b") as f:  # a hole, 4 KiB of data at 32 MiB, a hole to 64 MiB
        f.seek(32 << 20)
        f.write(b"\xab" * 4096)
        f.truncate(64 << 20)
    layout = [(0, head), (32 << 20, 4096)]
    if lseek_extents(path) != layout:
        pytest.skip(f"this file system does not keep the holes written: {lseek_extents(path)}")
    _, html, _ = report(tmp_path, path.name, tmp_path, "--hash", "sparse")
    expected = sparse_digest(64 << 20, layout, path=path)
    assert html.count(expected) == 2 and "(unchanged)" in html
    assert hashlib.sha256(path.read_bytes()).hexdigest() not in html
    assert "Sparse digest before analysis" in html and "Sparse digest after analysis" in html
    assert "NOT a SHA-256 of the file" in html and "--hash sparse was given" in html
    assert "It covered 2 data extents, 790528 bytes of data and 66318336 bytes of holes" in " ".join(html.split())
    (tmp_path / "sparse_digest.py").write_text(recipe(html))
    res = subprocess.run([sys.executable, "sparse_digest.py", path.name], cwd=tmp_path, capture_output=True, text=True,
                         check=False)
    assert res.stdout.strip() == expected, res.stderr


def test_auto_hash_of_a_big_sparse_image(tmp_path):
    """5 GiB, preallocation=metadata: over 4 GiB and nearly all holes, so auto takes the sparse digest."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", "big.qcow2", "5G"],
                   check=True, cwd=tmp_path)
    path = tmp_path / "big.qcow2"
    extents = lseek_extents(path)
    holes = path.stat().st_size - sum(n for _, n in extents)
    if holes <= path.stat().st_size / 2:
        pytest.skip("this file system keeps no holes in a preallocated qcow2")
    page, html, _ = report(tmp_path, path.name, tmp_path)
    expected = sparse_digest(path.stat().st_size, extents, path=path)
    assert html.count(expected) == 2
    assert "--hash auto chose the sparse digest: the file&#39;s apparent size is 5.0 GiB (over 4 GiB)" in html
    assert page.verdict == "clean" and qemu_check_exit(tmp_path, path.name) == 0
    (tmp_path / "sparse_digest.py").write_text(recipe(html))
    res = subprocess.run([sys.executable, "sparse_digest.py", path.name], cwd=tmp_path, capture_output=True, text=True,
                         check=False)
    assert res.stdout.strip() == expected, res.stderr


def test_hash_full_and_auto_choice(corpus, tmp_path):
    path = image_path(corpus, "v3_default")
    _, html, _ = report(path.parent, path.name, tmp_path, "--hash", "full")
    assert html.count(hashlib.sha256(path.read_bytes()).hexdigest()) == 2 and "--hash full was given" in html
    gib = 1 << 30
    assert choose_hash(4 * gib, 4 * gib)[0] == "full"  # not over 4 GiB
    assert choose_hash(4 * gib + 1, 2 * gib)[0] == "full"  # holes not over half
    assert choose_hash(4 * gib + 2, 2 * gib + 2)[0] == "sparse"
    assert choose_hash(1 << 40, (1 << 40) - 160 * (1 << 20))[0] == "sparse"
    assert choose_hash(64 * gib, 0)[0] == "full"


def test_evidence_changed_during_the_analysis(corpus, tmp_path, monkeypatch):
    """The after-hash is really taken after: a byte written during the analysis shows."""
    path = tmp_path / "img.qcow2"
    shutil.copyfile(image_path(corpus, "v3_default"), path)
    real = report_module.check_image

    def check_and_touch(img, **kwargs):
        with open(path, "r+b") as f:
            f.seek(0, 2)
            f.write(b"\0" * 512)
        return real(img, **kwargs)

    monkeypatch.setattr(report_module, "check_image", check_and_touch)
    html = report_module.build_report(path, ["qforensics", "report", "img.qcow2"])
    assert "CHANGED DURING THE ANALYSIS" in html
    assert hashlib.sha256(path.read_bytes()).hexdigest() in html


def test_finding_rows_are_capped_counts_are_not(corpus, tmp_path, monkeypatch):
    """Millions of findings would make a report nobody can open: the table is capped, the counts stay whole."""
    monkeypatch.setattr(report_module, "MAX_FINDING_ROWS", 3)
    path = image_path(corpus, "draft_dedup_journal")
    html = report_module.build_report(path, ["qforensics", "report", path.name])
    page = Page()
    page.feed(html)
    checked = json.loads(run_qforensics("check", "--output", "json", path.name, cwd=path.parent).stdout)
    assert page.rows == 3 and len(checked["findings"]) == 8
    assert f"<h2>Findings ({len(checked['findings'])})</h2>" in html
    assert 'id="findings-truncated"' in html and "the first 3 of\n8 findings" in html
    counts = re.findall(r'<td class="mono">([a-z_.0-9]+)</td><td>(\d+)</td>', html)
    assert sum(int(n) for _, n in counts) == 8
    assert dict(counts)["refcount.leak"] == str(checked["leaks"])
