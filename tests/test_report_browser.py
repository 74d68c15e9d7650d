"""The HTML report in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

Each report is made with the CLI and opened from a file:// URL. From the DOM:
the sections and their headings, the verdict against live `qemu-img check`'s
exit code, the number of finding rows against `qforensics check --output
json`, that no script from the image ran (no window.__pwned, no alert, no
Content-Security-Policy violation, one script element) and that nothing was
fetched. Each page is saved as a full-page screenshot in tmp_path, and copied
(with its HTML) to $QF_SCREENSHOTS when that is set (e.g. QF_SCREENSHOTS=/tmp/qf-screenshots).

scripts/test.sh installs chromium, chromium-driver and selenium; without them
these tests are skipped, saying which is missing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import CASES, image_path, qemu_img, run_qforensics
from corruptions import KINDS, make
from test_report import HOSTILE_BACKING, HOSTILE_BITMAP, HOSTILE_FEATURE, HOSTILE_SNAPSHOTS, make_hostile

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.chrome.service import Service
    MISSING = None
except ImportError:
    MISSING = "selenium is not installed (pip install selenium; scripts/test.sh does it)"
if MISSING is None and not (CHROMIUM and CHROMEDRIVER):
    MISSING = ("Debian's chromium and chromium-driver are not installed "
               "(apt-get install chromium chromium-driver; scripts/test.sh does it)")
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

HEADINGS = {"evidence": "Evidence", "verdict": "Verdict", "image": "The image", "findings": "Findings",
            "cluster-map": "Cluster map", "graph": "Structure graph"}
QEMU_VERDICT = {0: "clean", 2: "corrupt", 3: "leaks"}  # qemu-img check's exit codes
# Runs before any of the page's own code: records alerts and policy violations instead of letting them block.
WATCH = """
window.__alerts = []; window.__violations = [];
for (const f of ['alert', 'confirm', 'prompt']) window[f] = (m) => { window.__alerts.push(f + ':' + m); };
document.addEventListener('securitypolicyviolation', e => window.__violations.push(e.violatedDirective));
"""
LUKS = CASES["encrypted_luks"]["passphrase"]


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(arg)  # --no-sandbox: the tests run as root
    opts.set_capability("unhandledPromptBehavior", "ignore")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH})
    try:
        yield driver
    finally:
        driver.quit()


def qemu_check_exit(folder: Path, name: str, encrypted: bool = False) -> int:
    if encrypted:
        args = ["check", "--object", f"secret,id=sec0,data={LUKS}", "--image-opts",
                f"driver=qcow2,file.filename={name},encrypt.key-secret=sec0"]
    else:
        args = ["check", name]
    return qemu_img(*args, cwd=folder).returncode


def open_report(browser, folder: Path, name: str, out: Path):
    """Write the report with the CLI and load it; returns the checked JSON."""
    res = run_qforensics("report", name, "-o", str(out), cwd=folder)
    assert res.returncode == 0, res.stderr
    checked = json.loads(run_qforensics("check", "--output", "json", name, cwd=folder).stdout)
    browser.get(out.resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    return checked


def screenshot(browser, path: Path) -> None:
    """The whole page, not just the window; copied to $QF_SCREENSHOTS when set."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(height + 20, 12000))
    browser.save_screenshot(str(path))
    browser.set_window_size(1280, 1000)
    if os.environ.get("QF_SCREENSHOTS"):
        dest = Path(os.environ["QF_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / path.name)
        html = path.with_suffix(".html")
        if html.exists():
            shutil.copyfile(html, dest / html.name)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def assert_page(browser, checked: dict, qemu_exit: int) -> None:
    js = browser.execute_script
    for section, heading in HEADINGS.items():
        assert js(f"return document.querySelector('section#{section} > h2').textContent").startswith(heading)
    assert js("return document.querySelector('#findings h2').textContent") == f"Findings ({len(checked['findings'])})"
    assert js("return document.getElementById('verdict-text').textContent") == QEMU_VERDICT[qemu_exit]
    assert js("return document.querySelectorAll('#findings-table tbody tr.finding').length") == len(checked["findings"])
    numbers = dict(js("return Array.from(document.querySelectorAll('#verdict tr')).map("
                      "r => [r.cells[0].textContent, r.cells[1].textContent])"))
    for key in ("corruptions", "leaks", "check-errors", "image-end-offset", "allocated-clusters"):
        assert numbers[key] == str(checked[key])
    assert_no_foreign_script(browser)
    assert js("return performance.getEntriesByType('resource').length") == 0  # nothing fetched
    assert js("return document.querySelectorAll('svg rect').length") > 0  # the cluster map was drawn


def assert_no_foreign_script(browser) -> None:
    js = browser.execute_script
    assert js("return typeof window.__pwned") == "undefined"
    assert js("return window.__alerts") == []
    assert js("return window.__violations") == []
    assert js("return document.scripts.length") == 1
    assert not js("return Array.from(document.querySelectorAll('*')).some("
                  "e => Array.from(e.attributes).some(a => a.name.startsWith('on')))")
    with pytest.raises(NoAlertPresentException):
        _ = browser.switch_to.alert.text


def corrupt_image(corpus: Path, folder: Path) -> str:
    kind = next(k for k in KINDS if k.id == "l2_entry_into_l1")
    return make(kind, image_path(corpus, kind.base).parent, CASES[kind.base]["main"], folder).name


@pytest.mark.parametrize(("label", "case"), [("clean", "v3_default"), ("leaking", "draft_dedup_journal"),
                                              ("corrupt", None), ("encrypted", "encrypted_luks")])
def test_report_in_chromium(browser, corpus, tmp_path, label, case):
    if case is None:
        folder, name = tmp_path, corrupt_image(corpus, tmp_path)
    else:
        path = image_path(corpus, case)
        folder, name = path.parent, path.name
    qemu_exit = qemu_check_exit(folder, name, encrypted=label == "encrypted")
    assert qemu_exit == {"clean": 0, "leaking": 3, "corrupt": 2, "encrypted": 0}[label]
    checked = open_report(browser, folder, name, tmp_path / f"report-{label}.html")
    assert_page(browser, checked, qemu_exit)
    js = browser.execute_script
    if label == "corrupt":
        assert js("return document.querySelectorAll('#findings pre[id^=x]').length") > 0  # hex excerpts
        assert js("return document.querySelector('#findings-table a[href^=\"#x\"]') !== null")
    if label == "encrypted":
        assert "luks" in js("return document.querySelector('#image').textContent").lower()
    if checked["findings"]:  # the report's own script runs (its hash is in the policy): sort by offset
        browser.find_element("id", "sort-offset").click()
        offsets = js("return Array.from(document.querySelectorAll('tr.finding')).map(r => Number(r.dataset.offset))")
        assert offsets == sorted(offsets)
    screenshot(browser, tmp_path / f"report-{label}.png")


def test_hostile_names_are_text_not_script(browser, tmp_path):
    name = make_hostile(tmp_path)
    checked = open_report(browser, tmp_path, name, tmp_path / "report-hostile.html")
    assert_page(browser, checked, qemu_check_exit(tmp_path, name))
    js = browser.execute_script
    cells = js("return Array.from(document.querySelectorAll('#snapshots td')).map(td => td.textContent)")
    assert HOSTILE_SNAPSHOTS[0] in cells and HOSTILE_SNAPSHOTS[1] in cells
    assert "\\xff" + HOSTILE_SNAPSHOTS[2][1:] in cells  # the byte that is not UTF-8, shown as \xff
    assert HOSTILE_BITMAP in js("return Array.from(document.querySelectorAll('#bitmaps td')).map(td => td.textContent)")
    assert HOSTILE_FEATURE in js("return document.querySelector('#image').textContent")
    assert js("return document.getElementById('backing').textContent") == HOSTILE_BACKING
    assert js("return document.title") == f"qforensics report: {name}"
    screenshot(browser, tmp_path / "report-hostile.png")


def test_policy_blocks_injected_script(browser, corpus, tmp_path):
    """Defence in depth: were a string ever left unescaped, the page's policy still stops it running."""
    path = image_path(corpus, "v3_default")
    out = tmp_path / "report.html"
    assert run_qforensics("report", path.name, "-o", str(out), cwd=path.parent).returncode == 0
    html = out.read_text()
    out.write_text(html.replace("<h1>", '<script>window.__pwned=7</script><img src="x" onerror="window.__pwned=8">'
                                '<h1>', 1))
    browser.get(out.resolve().as_uri())
    js = browser.execute_script
    assert js("return typeof window.__pwned") == "undefined"
    assert "script-src-elem" in js("return window.__violations")
    assert js("return document.querySelectorAll('tr.finding').length") == 0  # and the page still renders
