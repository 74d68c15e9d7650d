"""qforensics.crypto against live qemu: legacy AES and LUKS1 images, decrypted cluster by cluster.

Every comparison takes the plaintext from `qemu-img convert -O raw` of the same image (qemu 7.2).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from qforensics.crypto import (EncryptionHeaderError, SectorCipher, UnsupportedEncryption, WrongPassphrase,
                               open_cipher, read_luks_params, verify_aes_key)
from qforensics.crypto.sector import ALGORITHMS, CHUNK, CipherSpec, ModeCipher
from qforensics.errors import QforensicsError, UsageError
from qforensics.model.image import Image

from conftest import CASES, image_path

PASS = "qforensics-test-pass"
L2_OFFSET = 0x00FFFFFFFFFFFE00


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)


def secret(pw: str, ident: str = "sec0") -> str:
    return f"secret,id={ident},data={pw}"


def image_opts(path: Path, ident: str = "sec0") -> str:
    return f"driver=qcow2,file.filename={path},encrypt.key-secret={ident}"


def qemu_plaintext(path: Path, pw: str) -> bytes:
    """The guest disk as qemu decrypts it (converted in a private folder, never next to the corpus)."""
    with tempfile.TemporaryDirectory(prefix="qf-crypto-") as d:
        out = Path(d) / "guest.raw"
        res = run("qemu-img", "convert", "--object", secret(pw), "--image-opts", image_opts(path), "-O", "raw",
                  str(out))
        assert res.returncode == 0, res.stderr
        return out.read_bytes()


def data_clusters(img: Image) -> list[tuple[int, int]]:
    """(guest, host) of every standard allocated cluster of the active L1 (a plain walk, independent of crypto)."""
    h = img.header
    out = []
    for i, l1e in enumerate(img.l1_table().tolist()):
        l2 = l1e & L2_OFFSET
        if not l2:
            continue
        entries, _ = img.l2_table(l2)
        for j, e in enumerate(entries.tolist()):
            if e & (1 << 62) or e & 1 or not e & L2_OFFSET:
                continue
            out.append(((i * len(entries) + j) * h.cluster_size, e & L2_OFFSET))
    return out


def assert_matches_qemu(path: Path, pw: str) -> SectorCipher:
    """Decrypt every allocated cluster with our cipher and compare it with qemu's plaintext at its guest offset."""
    plain = qemu_plaintext(path, pw)
    with Image(path) as img:
        cipher = open_cipher(img, pw.encode())
        cs = img.header.cluster_size
        clusters = data_clusters(img)
        assert clusters
        for guest, host in clusters:
            sector = (host if cipher.physical else guest) // 512
            got = cipher.decrypt(img.file.read(host, cs), sector)
            assert got == plain[guest:guest + cs], f"{cipher.name}: cluster at guest 0x{guest:x} host 0x{host:x}"
    return cipher


CREATE_RETRIES = 12  # qemu-img create (LUKS): "Unable to get accurate CPU usage" under load, now and then


def run_parallel(jobs: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Run independent commands at once (qemu's PBKDF2 benchmark costs ~1.2 s of CPU per LUKS key)."""
    procs = {k: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, cmd in jobs.items()}
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        out[k] = subprocess.CompletedProcess(jobs[k], p.returncode, stdout, stderr)
    return out


def create_luks_cmd(path: Path, opts: str, pw: str = "pw", size: str = "1M") -> list[str]:
    return ["qemu-img", "create", "-q", "-f", "qcow2", "--object", secret(pw), "-o",
            f"encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10{opts}", str(path), size]


def run_with_retries(jobs: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Parallel qemu-img create/amend, each retried while qemu says "Unable to get accurate CPU usage"."""
    done: dict[str, subprocess.CompletedProcess] = {}
    pending = dict(jobs)
    for _ in range(CREATE_RETRIES):
        for k, res in run_parallel(pending).items():
            if res.returncode == 0 or "Unable to get accurate CPU usage" not in res.stderr:
                done[k] = res
                del pending[k]
        if not pending:
            break
    return {**done, **{k: run(*cmd) for k, cmd in pending.items()}}


def qemu_write(path: Path, pw: str, *commands: str) -> None:
    args = ["qemu-io", "--object", secret(pw), "--image-opts"]
    for c in commands:
        args += ["-c", c]
    res = run(*args, image_opts(path))
    assert res.returncode == 0 and "error" not in res.stdout.lower(), res.stdout + res.stderr


# One image per cipher mode, made by qemu; the corpus image covers aes-256-xts-plain64 with sha256. Each
# `qemu-img create` of a LUKS image spends ~2.5 s of CPU in qemu's PBKDF2 benchmark (crypto/pbkdf.c loops
# until 500 ms have passed, for the master key digest and again for the key slot), so only MODES run by
# default; QFORENSICS_TEST_ALL_MODES=1 adds EXTRA_MODES (about 8 s of CPU more).
MODES = {
    "aes-128-cbc-essiv:sha256": ",encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,"
                                "encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha1",
    "aes-256-cbc-plain64": ",encrypt.cipher-alg=aes-256,encrypt.cipher-mode=cbc,encrypt.hash-alg=sha512",
}
EXTRA_MODES = {
    "aes-128-xts-plain": ",encrypt.cipher-alg=aes-128,encrypt.cipher-mode=xts,encrypt.ivgen-alg=plain,"
                         "encrypt.hash-alg=sha224",
    "aes-256-ctr-essiv:sha256": ",encrypt.cipher-alg=aes-256,encrypt.cipher-mode=ctr,encrypt.ivgen-alg=essiv,"
                                "encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha384",
    "cast5-128-cbc-plain64": ",encrypt.cipher-alg=cast5-128,encrypt.cipher-mode=cbc,encrypt.hash-alg=ripemd160",
}
ALL_MODES = bool(os.environ.get("QFORENSICS_TEST_ALL_MODES"))
if ALL_MODES:
    MODES.update(EXTRA_MODES)
SECOND_SLOT = "second key slot"


@pytest.fixture(scope="module")
def made(corpus, tmp_path_factory) -> dict[str, subprocess.CompletedProcess | Path]:
    """The MODES images and a copy of the corpus LUKS image with key slot 3 added, written with qemu-io."""
    root = tmp_path_factory.mktemp("crypto")
    rnd = root / "random.bin"
    rnd.write_bytes(np.random.default_rng(7).integers(0, 256, 200 * 1024, dtype=np.uint8).tobytes())
    jobs = {name: create_luks_cmd(root / f"{i}.qcow2", opts) for i, (name, opts) in enumerate(MODES.items())}
    two = root / "two-slots.qcow2"
    shutil.copyfile(image_path(corpus, "encrypted_luks"), two)
    jobs[SECOND_SLOT] = ["qemu-img", "amend", "--object", secret(PASS), "--object", secret("pw2", "sec1"),
                         "--image-opts", image_opts(two), "-o",
                         "encrypt.state=active,encrypt.new-secret=sec1,encrypt.keyslot=3,encrypt.iter-time=10"]
    results = run_with_retries(jobs)
    out: dict[str, subprocess.CompletedProcess | Path] = {}
    for name, res in results.items():
        path = Path(jobs[name][-2] if name in MODES else two)
        if res.returncode != 0:
            out[name] = res
            continue
        # random data over three clusters, a pattern inside a cluster, a single sector near the end (the
        # two-slot copy of the corpus image is aes-256-xts-plain64: random data there covers the default mode)
        qemu_write(path, "pw" if name in MODES else "pw2", f"write -s {rnd} 0 192k", "write -P 0x5c 333k 5k",
                   "write -P 0xa7 1023k 512")
        out[name] = path
    return out


def made_image(made, name: str) -> Path:
    got = made[name]
    if isinstance(got, subprocess.CompletedProcess):
        if name == SECOND_SLOT:
            pytest.skip(f"qemu-img amend cannot add a key slot here: {got.stderr.strip()}")
        pytest.fail(f"{' '.join(got.args)}: {got.stderr.strip()}")
    return got


# -- the corpus ---------------------------------------------------------------------------------------------

def test_corpus_aes_matches_qemu(corpus):
    cipher = assert_matches_qemu(image_path(corpus, "encrypted_aes"), PASS)
    assert not cipher.physical and cipher.sector_size == 512


def test_corpus_luks_matches_qemu(corpus):
    cipher = assert_matches_qemu(image_path(corpus, "encrypted_luks"), PASS)
    assert cipher.physical and cipher.name == "aes-256-xts-plain64" and cipher.key_slot == 0


def test_corpus_images_left_untouched(corpus):
    for case in ("encrypted_aes", "encrypted_luks"):
        path = image_path(corpus, case)
        with Image(path) as img:
            cipher = open_cipher(img, PASS)
            verify_aes_key(img, cipher)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == CASES[case]["files"][0]["sha256"]


def test_aes_key_is_the_first_16_bytes_as_in_qemu(corpus):
    """qemu's AES key is 128-bit, from the first 16 passphrase bytes ("qforensics-test-" here)."""
    path = image_path(corpus, "encrypted_aes")
    other = "qforensics-test-something-else"
    assert qemu_plaintext(path, other) == qemu_plaintext(path, PASS)
    assert_matches_qemu(path, other)


def test_aes_verify_key(corpus):
    with Image(image_path(corpus, "encrypted_aes")) as img:
        verdict, why = verify_aes_key(img, open_cipher(img, PASS))
        assert verdict == "confirmed" and why == "3 of 3 sampled sectors holding ciphertext decrypt to structured data"
        verdict, why = verify_aes_key(img, open_cipher(img, b"not-the-passphrase"))
        assert verdict == "wrong" and why == "none of 3 sampled sectors holding ciphertext decrypts to structured data"
        verdict, _ = verify_aes_key(img, open_cipher(img, PASS), img.file.read)
        assert verdict == "confirmed"


def test_aes_verify_key_without_data(tmp_path):
    path = tmp_path / "empty.qcow2"
    res = run("qemu-img", "create", "-q", "-f", "qcow2", "--object", secret("pw"), "-o",
              "encrypt.format=aes,encrypt.key-secret=sec0", str(path), "1M")
    assert res.returncode == 0, res.stderr
    with Image(path) as img:
        verdict, why = verify_aes_key(img, open_cipher(img, "pw"))
    assert verdict == "unverifiable" and "no allocated data cluster" in why


def test_aes_verify_key_zeros_on_disk(corpus, tmp_path):
    """Clusters whose host bytes are zeros prove nothing: any key turns them into noise."""
    path = tmp_path / "zeroed.qcow2"
    shutil.copyfile(image_path(corpus, "encrypted_aes"), path)
    with Image(path) as img:
        hosts = [host for _, host in data_clusters(img)]
        cs = img.header.cluster_size
    with open(path, "r+b") as f:
        for host in hosts:
            f.seek(host)
            f.write(bytes(cs))
    with Image(path) as img:
        verdict, why = verify_aes_key(img, open_cipher(img, PASS))
    assert verdict == "unverifiable" and why.startswith("none of 3 sampled sectors holds random-looking ciphertext")


def test_luks_wrong_passphrase(corpus):
    with Image(image_path(corpus, "encrypted_luks")) as img:
        with pytest.raises(WrongPassphrase) as exc:
            open_cipher(img, b"qforensics-test-wrong")
    assert str(exc.value).startswith(f"LUKS header at 0x{img.luks.offset:x}: no key slot opens with this passphrase")
    assert "\n" not in str(exc.value) and isinstance(exc.value, QforensicsError)


def test_luks_header_agrees_with_qemu_info(corpus, made):
    paths = [image_path(corpus, "encrypted_luks"), made_image(made, "aes-128-cbc-essiv:sha256"),
             made_image(made, "aes-256-cbc-plain64")]
    for path in paths:
        info = json.loads(run("qemu-img", "info", "--output=json", str(path)).stdout)
        enc = info["format-specific"]["data"]["encrypt"]
        with Image(path) as img:
            p = read_luks_params(img)
        assert p.cipher_alg == enc["cipher-alg"]
        assert p.cipher.mode == enc["cipher-mode"]
        assert p.cipher.ivgen == enc["ivgen-alg"]
        assert (p.cipher.ivhash or None) == enc.get("ivgen-hash-alg")
        assert p.hash == enc["hash-alg"]
        assert p.mk_digest_iterations == enc["master-key-iters"]
        assert p.uuid == enc["uuid"]
        assert len(p.slots) == len(enc["slots"])
        for mine, theirs in zip(p.slots, enc["slots"], strict=True):
            assert mine.active == theirs["active"] and mine.key_offset == theirs["key-offset"]
            if mine.active:
                assert mine.iterations == theirs["iters"] and mine.stripes == theirs["stripes"]


# -- LUKS images made here, one per cipher mode ---------------------------------------------------------------

@pytest.mark.parametrize("name", list({**MODES, **EXTRA_MODES}))
def test_luks_mode_matches_qemu(made, name):
    if name not in made:
        pytest.skip("set QFORENSICS_TEST_ALL_MODES=1 to make this image too (~2.5 s of CPU in qemu-img create)")
    if name.startswith("cast5") and ("cast5" not in ALGORITHMS or "ripemd160" not in hashlib.algorithms_available):
        pytest.skip("CAST5 or RIPEMD-160 not available here")
    assert assert_matches_qemu(made_image(made, name), "pw").name == name


def test_luks_second_key_slot(made):
    path = made_image(made, SECOND_SLOT)
    cipher = assert_matches_qemu(path, "pw2")
    assert cipher.key_slot == 3 and cipher.name == "aes-256-xts-plain64"
    with Image(path) as img:
        assert open_cipher(img, PASS).key_slot == 0
        with pytest.raises(WrongPassphrase, match=r"\(2 active slots tried\)"):
            open_cipher(img, "pw3")


def test_damaged_slot_does_not_hide_the_others(made, tmp_path):
    """Slot 0's key material pointed past the end of the file: slot 3 still opens, and a wrong passphrase says so."""
    path = tmp_path / "slot0-damaged.qcow2"
    shutil.copyfile(made_image(made, SECOND_SLOT), path)
    with Image(path) as img:
        luks_offset = img.luks.offset
    with open(path, "r+b") as f:
        f.seek(luks_offset + SLOT0 + 40)
        f.write(struct.pack(">I", 0xFFFFFF))
    with Image(path) as img:
        assert open_cipher(img, "pw2").key_slot == 3
        with pytest.raises(WrongPassphrase, match=r"\(1 active slot tried\) \(key slot 0: key material at 0x"):
            open_cipher(img, PASS)


@pytest.mark.parametrize("method,error,message", [
    (2, EncryptionHeaderError, r"^qcow2 header at 0x20: crypt_method is 2 \(LUKS\) but there is no full disk "
                               r"encryption header pointer extension$"),
    (7, UnsupportedEncryption, r"^qcow2 header: unknown crypt_method 7"),
])
def test_bad_crypt_method(corpus, tmp_path, method, error, message):
    path = tmp_path / "method.qcow2"
    shutil.copyfile(image_path(corpus, "encrypted_aes"), path)
    with open(path, "r+b") as f:
        f.seek(32)  # crypt_method
        f.write(struct.pack(">I", method))
    with Image(path) as img, pytest.raises(error, match=message):
        open_cipher(img, PASS)


def test_unencrypted_image(corpus):
    with Image(image_path(corpus, "sample")) as img, pytest.raises(UnsupportedEncryption, match="not encrypted"):
        open_cipher(img, "pw")


# -- damaged and hostile LUKS headers (patched copies of the corpus image) -----------------------------------

SLOT0 = 208  # key slots start at byte 208 of the LUKS header, 48 bytes each


DAMAGE = [
    ("key material offset", SLOT0 + 40, struct.pack(">I", 0xFFFFFF), EncryptionHeaderError,
     r"key slot 0: key material at 0x[0-9a-f]+ \(256000 bytes\) lies past the end of the file"),
    ("stripes 0", SLOT0 + 44, struct.pack(">I", 0), EncryptionHeaderError, r"key slot 0: stripes is 0"),
    ("stripes huge", SLOT0 + 44, struct.pack(">I", 0x10000000), EncryptionHeaderError,
     r"key slot 0: stripes 268435456 x key_bytes 64 = .* above the 4194304-byte limit"),
    ("slot iterations", SLOT0 + 4, struct.pack(">I", 0xFFFFFFFF), EncryptionHeaderError,
     r"slot iterations is 4294967295, above the 10000000"),
    ("slot iterations 0", SLOT0 + 4, struct.pack(">I", 0), EncryptionHeaderError, r"slot iterations is 0"),
    ("digest iterations", 164, struct.pack(">I", 0xFFFFFFFF), EncryptionHeaderError,
     r"master key digest iterations is 4294967295"),
    ("no active slot", SLOT0, struct.pack(">I", 0xDEAD), EncryptionHeaderError, r"no active key slot"),
    ("key bytes 0", 108, struct.pack(">I", 0), EncryptionHeaderError, r"key_bytes is 0"),
    ("key bytes 20", 108, struct.pack(">I", 20), UnsupportedEncryption, r"xts-plain64 with key_bytes 20"),
    ("cipher serpent", 8, b"serpent".ljust(32, b"\0"), UnsupportedEncryption,
     r"^LUKS header at 0x40000: unsupported cipher 'serpent' \(not available in the cryptography package; "
     r"supported: aes, "),
    ("cipher", 8, b"twofish".ljust(32, b"\0"), UnsupportedEncryption, r"unsupported cipher 'twofish'"),
    ("chaining", 40, b"ofb-plain64".ljust(32, b"\0"), UnsupportedEncryption, r"unsupported cipher mode 'ofb"),
    ("ivgen", 40, b"cbc-lmk".ljust(32, b"\0"), UnsupportedEncryption, r"unsupported IV generator 'lmk'"),
    ("essiv hash", 40, b"xts-essiv:sha1".ljust(32, b"\0"), UnsupportedEncryption,
     r"essiv:sha1 gives a 160-bit key, which aes does not take"),
    ("hash", 72, b"whirlpool".ljust(32, b"\0"), UnsupportedEncryption, r"unsupported hash 'whirlpool'"),
    ("magic", 0, b"LUKX", EncryptionHeaderError, r"^LUKS header at 0x40000: magic is "),
]


@pytest.mark.parametrize("field,offset,value,error,message", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_luks_header(corpus, tmp_path, field, offset, value, error, message):
    src = image_path(corpus, "encrypted_luks")
    with Image(src) as img:
        luks_offset = img.luks.offset
    path = tmp_path / "damaged.qcow2"
    shutil.copyfile(src, path)
    with open(path, "r+b") as f:
        f.seek(luks_offset + offset)
        f.write(value)
    with Image(path) as img, pytest.raises(error, match=message) as exc:
        open_cipher(img, PASS)
    assert "\n" not in str(exc.value) and isinstance(exc.value, QforensicsError)
    if error is UnsupportedEncryption:
        assert isinstance(exc.value, UsageError)


# -- the batched modes against cryptography's own, sector by sector ---------------------------------------------

def reference(spec: CipherSpec, key: bytes, data: bytes, first: int) -> bytes:
    out = []
    for k in range(len(data) // 512):
        sector = first + k
        iv = struct.pack("<Q", sector) if spec.ivgen == "plain64" else struct.pack("<I", sector & 0xFFFFFFFF)
        iv = iv.ljust(16, b"\0")
        mode = modes.XTS(iv) if spec.mode == "xts" else modes.CBC(iv)
        d = Cipher(algorithms.AES(key), mode).decryptor()
        out.append(d.update(data[k * 512:(k + 1) * 512]) + d.finalize())
    return b"".join(out)


@pytest.mark.parametrize("mode,ivgen,key_len", [("xts", "plain64", 64), ("xts", "plain", 32), ("cbc", "plain64", 16),
                                                ("cbc", "plain", 32)])
@pytest.mark.parametrize("size", [3 * 512, CHUNK + 3 * 512], ids=["3-sectors", "past-a-chunk"])
def test_batched_modes_match_cryptography(mode, ivgen, key_len, size):
    rng = np.random.default_rng(1)
    key = rng.integers(0, 256, key_len, dtype=np.uint8).tobytes()
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    first = (1 << 32) - 5  # plain wraps at 2^32, plain64 does not
    spec = CipherSpec("aes", mode, ivgen)
    assert ModeCipher(spec, key, physical=True).decrypt(data, first) == reference(spec, key, data, first)


def test_decrypt_needs_whole_sectors():
    cipher = ModeCipher(CipherSpec("aes", "cbc", "plain64"), bytes(16), physical=False)
    with pytest.raises(ValueError, match="whole 512-byte sectors"):
        cipher.decrypt(b"\0" * 100, 0)
    assert cipher.decrypt(b"", 0) == b""

