"""map and recover on intact images: the same text as `qemu-img map --output=json`, the same bytes as
`qemu-img convert -O raw` (live qemu, every valid corpus image, every snapshot), and the guards:
consent for backing files, loops, wrong passphrases, outputs that would overwrite evidence."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import CASES, VALID_CASES, image_path, qemu_img, run_qforensics
from qforensics.layers.chain import Consent, open_chain
from qforensics.model import Image
from qforensics.recovery.evidence import recover_image
from qforensics.render.map_output import render_json
from qforensics.evidence.digest import sha256_file as sha256

QEMU_CAN_OPEN = [c for c in VALID_CASES if c != "draft_early_bitmaps"]  # qemu refuses the 2015 bitmaps body


def qemu_source(case: str, path: Path) -> list[str]:
    """qemu-img arguments naming the image (with its secret when it is encrypted)."""
    pw = CASES[case].get("passphrase")
    if not pw:
        return [path.name]
    return ["--object", f"secret,id=sec0,data={pw}", "--image-opts",
            f"driver=qcow2,file.filename={path.name},encrypt.key-secret=sec0"]


def snapshot_names(path: Path) -> list[str]:
    with Image(path) as img:
        return [s.name for s in img.snapshots]


@pytest.mark.parametrize("case", QEMU_CAN_OPEN)
def test_map_json_is_qemus_text(corpus, case):
    path = image_path(corpus, case)
    args = qemu_source(case, path)
    res = qemu_img("map", "--output=json", *args, cwd=path.parent)
    assert res.returncode == 0, res.stderr
    with Image(path) as img:
        opened: list = []
        try:
            ours = render_json(open_chain(img, Consent(image_dir=True), opened=opened))
        finally:
            for f in opened:
                f.close()
    assert ours == res.stdout


def test_map_cli_matches_qemu_on_a_backing_chain(corpus):
    path = image_path(corpus, "backing_chain")
    ours = run_qforensics("map", path.name, "--output", "json", "--allow-image-dir", cwd=path.parent)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == qemu_img("map", "--output=json", path.name, cwd=path.parent).stdout
    human = run_qforensics("map", path.name, "--allow-image-dir", cwd=path.parent)
    assert human.returncode == 0 and "base.qcow2" in human.stdout and "mid.qcow2" in human.stdout


def test_map_reports_holes_of_a_preallocated_file_as_qemu_does(tmp_path):
    """Metadata preallocation makes QEMU ask the file which data clusters are holes (BDRV_BLOCK_RECURSE)."""
    img = tmp_path / "p.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", str(img), "8M").returncode == 0
    subprocess.run(["qemu-io", "-c", "write -P 7 64k 4k", "-c", "write -P 8 3M 64k", str(img)], check=True,
                   capture_output=True)
    qemu = qemu_img("map", "--output=json", str(img)).stdout
    entries = json.loads(qemu)
    assert any(e["zero"] and e["data"] for e in entries)  # the file really has holes here
    with Image(img) as i:
        assert render_json(open_chain(i, Consent())) == qemu


@pytest.fixture(scope="module")
def qemu_raw(corpus, tmp_path_factory):
    """qemu-img convert -O raw of a case (and snapshot), made once."""
    folder = tmp_path_factory.mktemp("qemu_raw")
    made: dict[tuple[str, str | None], Path] = {}

    def get(case: str, snapshot: str | None) -> Path:
        if (case, snapshot) not in made:
            path = image_path(corpus, case)
            out = folder / f"{case}-{snapshot or 'active'}.raw"
            snap = ["-l", f"snapshot.name={snapshot}"] if snapshot else []
            res = qemu_img("convert", *snap, "-O", "raw", *qemu_source(case, path), str(out), cwd=path.parent)
            assert res.returncode == 0, res.stderr
            made[(case, snapshot)] = out
        return made[(case, snapshot)]

    return get


@pytest.mark.parametrize("case", QEMU_CAN_OPEN)
def test_recover_is_byte_identical_to_qemu_convert(corpus, tmp_path, qemu_raw, case):
    path = image_path(corpus, case)
    pw = CASES[case].get("passphrase")
    for snapshot in [None, *snapshot_names(path)]:
        out = tmp_path / "out.raw"
        result = recover_image(str(path), out, passphrase=pw.encode() if pw else None, allow_image_dir=True,
                               snapshot=snapshot, log_path=tmp_path / "log.json")
        assert result.recovery.complete, result.recovery.missing[:3]
        assert sha256(out) == sha256(qemu_raw(case, snapshot)), snapshot
        log = json.loads((tmp_path / "log.json").read_text())
        assert log["complete"] is True
        assert sum(r["length"] for r in log["ranges"]) == os.path.getsize(out)


def test_recover_output_is_sparse(corpus, tmp_path, qemu_raw):
    """Only the 4 KiB blocks that hold non-zero bytes cost space in the output (64 MiB preallocated image)."""
    out = tmp_path / "out.raw"
    res = run_qforensics("recover", str(image_path(corpus, "prealloc_metadata")), "-o", str(out), "--quiet",
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert os.path.getsize(out) == 64 << 20
    raw = qemu_raw("prealloc_metadata", None).read_bytes()
    nonzero = sum(1 for i in range(0, len(raw), 4096) if raw[i:i + 4096].strip(b"\0"))
    assert 0 < nonzero < 1024
    assert os.stat(out).st_blocks * 512 <= nonzero * 4096 + (64 << 10)


def test_recover_zero_blocks_inside_data_clusters(tmp_path):
    """Blocks whose first bytes are zero but not the rest are data; whole zero blocks stay holes (as qemu's -S 4k)."""
    img = tmp_path / "z.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(img), "8M").returncode == 0
    script = ["write -P 0 0 1M",  # one allocated run of zeros ...
              "write -P 0x11 4104 8",  # ... with data deep inside block 1 (its first word stays zero)
              "write -P 0x22 266240 1",  # the last byte before a 4 KiB boundary (block 65)
              "write -P 0x33 1M 512K",  # a long run of data
              "write -P 0 1280K 4K"]  # a zero block inside it
    subprocess.run(["qemu-io", "-f", "qcow2", *sum((["-c", c] for c in script), []), str(img)], check=True,
                   stdout=subprocess.DEVNULL)
    ref = tmp_path / "qemu.raw"
    assert qemu_img("convert", "-O", "raw", str(img), str(ref)).returncode == 0
    out = tmp_path / "out.raw"
    res = run_qforensics("recover", str(img), "-o", str(out), "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert sha256(out) == sha256(ref)
    raw = ref.read_bytes()
    nonzero = sum(1 for i in range(0, len(raw), 4096) if raw[i:i + 4096].strip(b"\0"))
    assert nonzero == 2 + 128 - 1
    assert os.stat(out).st_blocks * 512 <= nonzero * 4096 + (64 << 10)


def test_recover_cli_encrypted_and_wrong_passphrases(corpus, tmp_path, qemu_raw):
    for case in ("encrypted_luks", "encrypted_aes"):
        path = image_path(corpus, case)
        good, bad = tmp_path / "good", tmp_path / "bad"
        good.write_text(CASES[case]["passphrase"] + "\n")
        bad.write_text("not-the-passphrase\n")
        out = tmp_path / f"{case}.raw"
        res = run_qforensics("recover", str(path), "-o", str(out), "--passphrase-file", str(good), cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert sha256(out) == sha256(qemu_raw(case, None))
        res = run_qforensics("recover", str(path), "-o", str(out), "--passphrase-file", str(bad), cwd=tmp_path)
        assert res.returncode == 1
        assert "passphrase" in res.stderr and "Traceback" not in res.stderr and len(res.stderr.splitlines()) == 1
        res = run_qforensics("recover", str(path), "-o", str(out), cwd=tmp_path)
        assert res.returncode == 1 and "--passphrase-file" in res.stderr


def test_backing_files_need_consent_and_stay_inside_the_folder(corpus, tmp_path):
    path = image_path(corpus, "backing_chain")
    out = tmp_path / "out.raw"
    res = run_qforensics("recover", str(path), "-o", str(out), cwd=tmp_path)
    assert res.returncode == 1 and "--backing-dir" in res.stderr and not out.exists()
    res = run_qforensics("recover", str(path), "-o", str(out), "--backing-dir", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 1 and "not in" in res.stderr
    res = run_qforensics("recover", str(path), "-o", str(out), "--backing-dir", str(path.parent), cwd=tmp_path)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "a/../../outside.qcow2"])
def test_hostile_backing_names_are_not_followed(corpus, tmp_path, name):
    work = tmp_path / "evidence"
    work.mkdir()
    img = work / "top.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", name, "-F", "raw", str(img), "1M").returncode == 0
    (tmp_path / "outside.qcow2").write_bytes(b"secret")
    for command in (["map", str(img), "--allow-image-dir"],
                    ["recover", str(img), "-o", str(tmp_path / "o.raw"), "--allow-image-dir"]):
        res = run_qforensics(*command, cwd=tmp_path)
        assert res.returncode == 1, res.stdout
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.raw").exists()


def test_backing_chain_that_loops_is_refused(tmp_path):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(a), "1M").returncode == 0
    assert qemu_img("create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", str(b), "1M",
                    cwd=tmp_path).returncode == 0
    assert qemu_img("rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", str(a), cwd=tmp_path).returncode == 0
    res = run_qforensics("recover", str(b), "-o", str(tmp_path / "o.raw"), "--allow-image-dir", cwd=tmp_path)
    assert res.returncode == 1 and "loops" in res.stderr


def test_recover_refuses_to_overwrite_evidence(corpus, tmp_path):
    path = image_path(corpus, "backing_chain")
    before = {p.name: sha256(p) for p in path.parent.iterdir()}
    for target in (path, path.parent / "base.qcow2"):
        res = run_qforensics("recover", str(path), "-o", str(target), "--allow-image-dir", cwd=tmp_path)
        assert res.returncode == 1 and "refusing" in res.stderr
    link = tmp_path / "link.raw"
    os.link(path.parent / "mid.qcow2", link)
    res = run_qforensics("recover", str(path), "-o", str(link), "--allow-image-dir", cwd=tmp_path)
    assert res.returncode == 1
    assert before == {p.name: sha256(p) for p in path.parent.iterdir()}


def test_unknown_snapshot_is_a_clear_error(corpus, tmp_path):
    res = run_qforensics("recover", str(image_path(corpus, "snapshots")), "-o", str(tmp_path / "o.raw"),
                         "--snapshot", "nope", cwd=tmp_path)
    assert res.returncode == 1 and "snapA" in res.stderr


def test_data_file_image_maps_offsets_into_the_data_file(corpus):
    """A check of the mechanism qemu does not show: NORMAL runs read from the data file, host == guest."""
    path = image_path(corpus, "data_file")
    with Image(path) as img:
        opened: list = []
        layer = open_chain(img, Consent(image_dir=True), opened=opened)
        runs = [e for e in layer.extents(0, layer.size) if e.host >= 0]
        assert runs and all(e.host == e.start for e in runs)
        assert layer.data is not img.file
        for f in opened:
            f.close()


def test_l2_entry_pointing_past_eof_reads_as_qemu_reads_it(corpus, tmp_path, qemu_raw):
    """QEMU reads a data cluster past the end of the file as zeros; we do the same and log it missing."""
    src = image_path(corpus, "v3_default")
    img = tmp_path / "past.qcow2"
    img.write_bytes(src.read_bytes())
    with Image(img) as i:
        l2 = int(i.l1_table()[0]) & 0x00FFFFFFFFFFFE00
        desc, _ = i.l2_table(l2)
        k = int(next(n for n, d in enumerate(desc.tolist()) if d & 0x00FFFFFFFFFFFE00))
    with open(img, "r+b") as f:
        f.seek(l2 + 8 * k)
        f.write(struct.pack(">Q", (1 << 63) | (1 << 40)))
    out = tmp_path / "o.raw"
    q = tmp_path / "q.raw"
    assert qemu_img("convert", "-O", "raw", str(img), str(q)).returncode == 0
    result = recover_image(str(img), out, log_path=tmp_path / "log.json")
    assert sha256(out) == sha256(q)
    assert not result.recovery.complete
    assert any("past the end of the file" in r for _, _, r in result.recovery.missing)
