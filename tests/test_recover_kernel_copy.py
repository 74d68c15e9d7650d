"""The two ways recover copies long data runs (recovery/output.py Writer.copy_runs): the kernel path
(copy_file_range, zero blocks found by a forked tester) and the threaded path (preadv, test, pwrite).
Each, and every way the kernel path hands over to the threaded one midway, must give qemu-img
convert's bytes and be as sparse as qemu's output."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import qemu_img

import qforensics.recovery.output as rec
import qforensics.recovery.recover as recover
from qforensics.evidence.file import FileLayer
from qforensics.recovery.evidence import recover_image
from qforensics.evidence.digest import sha256_file as sha256

MiB = 1 << 20


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> tuple[Path, Path]:
    """A 16 MiB image whose long runs hold zero blocks (first, last, in the middle, a whole zero MiB) and
    data whose first word is zero; and qemu-img convert's raw output of it."""
    d = tmp_path_factory.mktemp("kcopy")
    img = d / "k.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(img), "16M").returncode == 0
    script = ["write -P 0x5a 0 3M",  # three pieces of data ...
              "write -P 0 0 4K",  # ... whose first block is zero
              "write -P 0 1028K 8K",  # two zero blocks in the second piece
              "write -P 0 3068K 4K",  # and the last block of the run
              "write -P 0 4M 1M",  # a whole zero piece of data clusters
              "write -P 0x11 5M 1M",
              "write -P 0 5M 8",  # a block whose first word is zero, the rest data
              "write -P 0x22 8M 2M",
              "write -P 0x33 12M 320K"]  # a run just over the threaded-copy threshold
    subprocess.run(["qemu-io", "-f", "qcow2", *[x for c in script for x in ("-c", c)], str(img)], check=True,
                   stdout=subprocess.DEVNULL)
    ref = d / "qemu.raw"
    assert qemu_img("convert", "-O", "raw", str(img), str(ref)).returncode == 0
    return img, ref


def recover_and_compare(image, tmp_path: Path) -> None:
    img, ref = image
    out = tmp_path / "out.raw"
    result = recover_image(str(img), out, allow_image_dir=True)
    assert result.recovery.complete
    assert sha256(out) == sha256(ref)
    assert os.stat(out).st_blocks <= os.stat(ref).st_blocks  # holes wherever qemu left them


@pytest.mark.parametrize("group", [rec.KERNEL_GROUP, 2])
def test_kernel_path_matches_qemu(image, tmp_path, monkeypatch, group):
    """With the usual tester per 32 GiB, and with a tester per two pieces."""
    monkeypatch.setattr(rec, "KERNEL_GROUP", group)
    calls = []
    real = FileLayer.copy_range

    def counted(self, *args):
        calls.append(args)
        return real(self, *args)

    monkeypatch.setattr(FileLayer, "copy_range", counted)
    recover_and_compare(image, tmp_path)
    if rec.KERNEL_COPY:
        assert calls, "the long runs did not go through copy_file_range"
        assert all(n % 4096 == 0 or n == 320 << 10 for _, n, _, _ in calls)


def test_threaded_path_matches_qemu(image, tmp_path, monkeypatch):
    monkeypatch.setattr(rec, "KERNEL_COPY", False)
    monkeypatch.setattr(FileLayer, "copy_range", lambda *a: pytest.fail("copy_file_range used"))
    recover_and_compare(image, tmp_path)


@pytest.mark.skipif(not rec.KERNEL_COPY, reason="no copy_file_range and fork here")
@pytest.mark.parametrize("err", [errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL])
def test_refused_kernel_copy_falls_back(image, tmp_path, monkeypatch, err):
    """A file system that refuses copy_file_range (EXDEV across file systems on older kernels) after some
    pieces were copied: the rest goes the threaded way, and later runs too."""
    real = FileLayer.copy_range
    calls = []

    def refusing(self, *args):
        calls.append(args)
        if len(calls) > 2:
            raise OSError(err, os.strerror(err))
        return real(self, *args)

    monkeypatch.setattr(FileLayer, "copy_range", refusing)
    recover_and_compare(image, tmp_path)
    assert len(calls) == 3  # refused once, never asked again


@pytest.mark.skipif(not rec.KERNEL_COPY, reason="no copy_file_range and fork here")
def test_output_errors_of_the_kernel_copy_are_errors(image, tmp_path, monkeypatch):
    def full(self, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(FileLayer, "copy_range", full)
    with pytest.raises(OSError) as exc:
        recover_and_compare(image, tmp_path)
    assert exc.value.errno == errno.ENOSPC


@pytest.mark.skipif(not rec.KERNEL_COPY, reason="no copy_file_range and fork here")
@pytest.mark.parametrize("after", [0, 1, 3])
def test_tester_that_dies_hands_over(image, tmp_path, monkeypatch, after):
    """The forked tester killed after ``after`` pieces (as SIGBUS would kill it on a file cut under its
    mapping): the pieces it did not finish are copied the threaded way, and the bytes are still qemu's."""
    real = rec._zero_test

    def dying(file, pieces, fd, spans_of):
        real(file, pieces[:after], fd, spans_of)
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(rec, "_zero_test", dying)
    recover_and_compare(image, tmp_path)


def test_mapped_view_is_clipped_and_read_only(image):
    img, _ = image
    f = FileLayer(img)
    try:
        with f.mapped(f.size - 100, 4096) as view:
            assert len(view) == 100
            assert view.readonly
            assert bytes(view) == f.read(f.size - 100, 100)
        with f.mapped(f.size, 10) as view:
            assert len(view) == 0
        with f.mapped(12345, 7) as view:  # an offset inside a page
            assert bytes(view) == f.read(12345, 7)
    finally:
        f.close()


SECRET = "secret,id=sec0,data=pw"


@pytest.fixture(scope="module", params=["aes", "luks"])
def encrypted(request, tmp_path_factory) -> tuple[Path, Path]:
    """An encrypted 8 MiB image (legacy AES or LUKS, passphrase "pw") with long runs holding zero blocks,
    and qemu-img convert's raw output of it."""
    fmt = request.param
    d = tmp_path_factory.mktemp(f"enc_{fmt}")
    img = d / "e.qcow2"
    opts = f"encrypt.format={fmt},encrypt.key-secret=sec0" + (",encrypt.iter-time=10" if fmt == "luks" else "")
    for _ in range(12):  # LUKS: "Unable to get accurate CPU usage" now and then (more often under load)
        res = qemu_img("create", "-q", "-f", "qcow2", "--object", SECRET, "-o", opts, str(img), "8M")
        if res.returncode == 0:
            break
    assert res.returncode == 0, res.stderr
    script = ["write -P 0x5a 0 3M", "write -P 0 1M 8K", "write -P 0 2044K 4K", "write -P 0x11 5M 512K",
              "write -P 0 7M 1M"]
    image_opts = f"driver=qcow2,file.filename={img},encrypt.key-secret=sec0"
    subprocess.run(["qemu-io", "--object", SECRET, "--image-opts", image_opts,
                    *[x for c in script for x in ("-c", c)]], check=True, stdout=subprocess.DEVNULL)
    ref = d / "qemu.raw"
    res = qemu_img("convert", "--object", SECRET, "--image-opts", image_opts, "-O", "raw", str(ref))
    assert res.returncode == 0, res.stderr
    return img, ref


def recover_encrypted(encrypted, tmp_path: Path) -> None:
    img, ref = encrypted
    out = tmp_path / "out.raw"
    result = recover_image(str(img), out, passphrase=b"pw")
    assert result.recovery.complete
    assert sha256(out) == sha256(ref)
    assert os.stat(out).st_blocks <= os.stat(ref).st_blocks


def test_encrypted_long_runs_are_shared_with_a_forked_process(encrypted, tmp_path, monkeypatch):
    forks = []
    real = rec.Writer._fork

    def counted(self, job):
        forks.append(job)
        return real(self, job)

    monkeypatch.setattr(rec.Writer, "_fork", counted)
    recover_encrypted(encrypted, tmp_path)
    if rec.KERNEL_COPY:
        assert forks, "no process shared the decryption"


def test_encrypted_long_runs_without_fork(encrypted, tmp_path, monkeypatch):
    monkeypatch.setattr(rec, "KERNEL_COPY", False)
    monkeypatch.setattr(rec.Writer, "_fork", lambda *a: pytest.fail("forked"))
    recover_encrypted(encrypted, tmp_path)


def dying_share(after: int):
    """Writer.share's forked half, killed after ``after`` of its indices."""
    real = rec._share_odd

    def dying(count, work, fd):
        real(min(count, 2 * after), work, fd)
        os.kill(os.getpid(), signal.SIGKILL)

    return dying


@pytest.mark.skipif(not rec.KERNEL_COPY, reason="no fork here")
@pytest.mark.parametrize("after", [0, 1])
def test_decrypting_process_that_dies_hands_over(encrypted, tmp_path, monkeypatch, after):
    """The other process killed after ``after`` of its pieces: this one does the rest."""
    monkeypatch.setattr(rec, "_share_odd", dying_share(after))
    recover_encrypted(encrypted, tmp_path)


@pytest.mark.skipif(not rec.KERNEL_COPY, reason="no fork here")
def test_output_error_in_the_decrypting_process_is_an_error(encrypted, tmp_path, monkeypatch):
    real = rec.Writer._pwrite_all
    parent = os.getpid()

    def full_in_child(self, offset, view):
        if os.getpid() != parent:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, offset, view)

    monkeypatch.setattr(rec.Writer, "_pwrite_all", full_in_child)
    with pytest.raises(OSError) as exc:
        recover_encrypted(encrypted, tmp_path)
    assert exc.value.errno == errno.ENOSPC


@pytest.fixture(scope="module", params=["zlib", "zstd"])
def compressed(request, tmp_path_factory) -> tuple[Path, Path]:
    """A compressed image with over SHARED_INFLATE clusters (qemu-img convert -c of a raw file holding
    text-like data, a zero MiB and random clusters that stay uncompressed), and qemu's raw output of it."""
    import random

    d = tmp_path_factory.mktemp(f"comp_{request.param}")
    raw = d / "src.raw"
    rnd = random.Random(7)
    with open(raw, "wb") as f:
        f.truncate(32 * MiB)
        for mib in range(24):
            f.seek(mib * MiB)
            if mib == 5:
                f.write(bytes(MiB))
            elif mib % 7 == 3:
                f.write(rnd.randbytes(MiB))
            else:
                f.write(bytes(rnd.choice(b"etaoin shrdlu\n") for _ in range(4096)) * 256)
    img = d / "c.qcow2"
    res = qemu_img("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o",
                   f"cluster_size=65536,compression_type={request.param}", str(raw), str(img))
    assert res.returncode == 0, res.stderr
    ref = d / "qemu.raw"
    assert qemu_img("convert", "-O", "raw", str(img), str(ref)).returncode == 0
    return img, ref


@pytest.mark.parametrize("how", ["shared", "alone", "dies"])
def test_compressed_clusters_shared_with_a_forked_process(compressed, tmp_path, monkeypatch, how):
    shares = []
    real = rec.Writer.share

    def counted(self, count, work):
        shares.append(count)
        return real(self, count, work)

    monkeypatch.setattr(rec.Writer, "share", counted)
    if how == "alone":
        monkeypatch.setattr(rec, "KERNEL_COPY", False)
        monkeypatch.setattr(rec.Writer, "_fork", lambda *a: pytest.fail("forked"))
    elif how == "dies":
        if not rec.KERNEL_COPY:
            pytest.skip("no fork here")
        monkeypatch.setattr(rec, "_share_odd", dying_share(3))
    recover_and_compare(compressed, tmp_path)
    assert shares and max(shares) >= recover.SHARED_INFLATE
