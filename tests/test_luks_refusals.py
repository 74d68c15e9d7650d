"""The LUKS1 header as qemu's open reads and judges it (block/qcow2.c qcow2_crypto_hdr_read_func,
crypto/block-luks.c qcrypto_block_luks_check_header and _parse_header): each case pokes the corpus LUKS image, asks live
`qemu-img info` for its verdict, and `info` must refuse exactly when qemu does, with qemu's message first.
"""

from __future__ import annotations

import shutil
import struct

import pytest
from conftest import CASES, image_path, qemu_img, run_qforensics
from test_header_refusals import find_extension

from qforensics import open_image
from qforensics.crypto import open_cipher
from qforensics.model.luks1_header import split_key_sectors

SLOT0 = 208  # key slot i at SLOT0 + 48 * i: active, iterations, salt[32], key material offset, stripes


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def text(name: str) -> bytes:
    return name.encode().ljust(32, b"\0")


def slot(i: int, field: int) -> int:
    return SLOT0 + 48 * i + field


# name -> pokes relative to the LUKS header (offset, bytes); qemu's verdict comes from qemu-img itself
LUKS_POKES = {
    "version_2": [(6, struct.pack(">H", 2))],
    "cipher_name_unterminated": [(8, b"a" * 32)],
    "cipher_mode_unterminated": [(40, b"b" * 32)],
    "hash_spec_unterminated": [(72, b"c" * 32)],
    "payload_offset_7": [(104, u32(7))],
    "mk_iterations_0": [(164, u32(0))],
    "stripes_0": [(slot(0, 44), u32(0))],
    "stripes_3999": [(slot(0, 44), u32(3999))],
    "stripes_2e31": [(slot(2, 44), u32(0x80000000))],  # qemu prints it with %d
    "inactive_slot_stripes_1": [(slot(1, 44), u32(1))],  # qemu checks disabled slots too
    "slot_state_corrupt": [(slot(0, 0), u32(0x1234))],
    "slot_5_state_zero": [(slot(5, 0), u32(0))],
    "active_slot_iterations_0": [(slot(0, 4), u32(0))],
    "inactive_slot_iterations_0": [(slot(1, 4), u32(0))],  # accepted
    "key_material_in_header": [(slot(0, 40), u32(7))],
    "key_material_on_slot_1": [(slot(0, 40), u32(512))],
    "key_material_past_payload": [(slot(7, 40), u32(4000))],
    "key_material_sum_wraps": [(slot(0, 40), u32(0xFFFFFFFF))],  # 32-bit start + length wraps: accepted
    "key_bytes_2e32": [(108, u32(0xFFFFFFFF))],  # key_bytes x stripes wraps in 32 bits, still too long
    "key_bytes_65": [(108, u32(65))],  # 504 sectors become 512: slot 0 runs into slot 1
    "key_bytes_32": [(108, u32(32))],  # shorter key material: accepted
    "first_of_two_faults": [(slot(3, 44), u32(1)), (164, u32(0))],
    # names qcrypto_block_luks_parse_header looks up (qemu's own tables, not what this tool can decrypt)
    "cipher_twofish": [(8, text("twofish"))],
    "cipher_serpent": [(8, text("serpent"))],
    "cipher_upper_case": [(8, text("AES"))],
    "cipher_cast5_key_32": [(8, text("cast5"))],
    "cipher_cast5_essiv": [(8, text("cast5")), (40, text("cbc-essiv:sha256")), (108, u32(16))],
    "cipher_cast5_essiv_md5": [(8, text("cast5")), (40, text("cbc-essiv:md5")), (108, u32(16))],
    "mode_without_ivgen": [(40, text("xts"))],
    "mode_ofb": [(40, text("ofb-plain64"))],
    "mode_ctr_key_64": [(40, text("ctr-plain64"))],  # only xts halves key_bytes: no 64-byte aes
    "mode_ctr": [(40, text("ctr-plain64")), (108, u32(32))],
    "ivgen_lmk": [(40, text("cbc-lmk")), (108, u32(32))],
    "ivhash_whirlpool": [(40, text("xts-plain64:whirlpool"))],
    "ivhash_with_plain64": [(40, text("xts-plain64:sha256"))],  # qemu ignores it
    "essiv_without_hash": [(40, text("xts-essiv"))],
    "essiv_sha1_aes_256": [(40, text("xts-essiv:sha1"))],
    "essiv_sha512_aes_256": [(40, text("xts-essiv:sha512"))],
    "hash_whirlpool": [(72, text("whirlpool"))],
    "hash_sha3": [(72, text("sha3-256"))],
    "key_bytes_0": [(108, u32(0))],
    "key_bytes_20": [(108, u32(20))],
    "key_bytes_48": [(108, u32(48))],
}
# name -> bytes of the LUKS header left in the file (qemu reads zeros past its end)
TRUNCATED = {"truncated_after_slot_0": 300, "truncated_after_magic": 6, "truncated_before_header": 0,
             "truncated_after_header": 592}
POINTER_LENGTHS = {"pointer_length_591": 591, "pointer_length_0": 0}


def luks_copy(corpus, tmp_path, name: str):
    src = image_path(corpus, "encrypted_luks")
    path = tmp_path / f"{name}.qcow2"
    shutil.copyfile(src, path)
    with open_image(src) as img:
        at = img.luks.offset
    with open(path, "r+b") as f:
        data = f.read(1 << 16)
        for offset, value in LUKS_POKES.get(name, []):
            f.seek(at + offset)
            f.write(value)
        if name in POINTER_LENGTHS:
            f.seek(find_extension(data, 0x0537BE77) + 16)
            f.write(struct.pack(">Q", POINTER_LENGTHS[name]))
        if name in TRUNCATED:
            f.truncate(at + TRUNCATED[name])
    return path


def qemu_verdict(path) -> str | None:
    res = qemu_img("info", "--output=json", path.name, cwd=path.parent)
    if res.returncode == 0:
        return None
    opening = next(line for line in res.stderr.splitlines() if "Could not open" in line)
    return opening.split(f"Could not open '{path.name}': ", 1)[-1]


@pytest.mark.parametrize("name", [*LUKS_POKES, *TRUNCATED, *POINTER_LENGTHS])
def test_luks_header_verdict_matches_qemu(corpus, tmp_path, name):
    path = luks_copy(corpus, tmp_path, name)
    qemu = qemu_verdict(path)
    with open_image(path) as img:
        refusals = [f.qemu_message for f in img.refusals]
        luks_findings = [f for f in img.findings if f.code.startswith("luks.")]
    ours = run_qforensics("info", path.name, cwd=tmp_path)
    assert "Traceback" not in ours.stderr
    if qemu is None:
        assert refusals == [] and ours.returncode == 0, (refusals, ours.stderr)
        return
    assert refusals == [qemu], refusals  # qemu stops at its first reason: one line carries its message
    assert ours.returncode == 1 and ours.stdout == ""
    lines = ours.stderr.strip().splitlines()
    assert any(line.startswith(f"qforensics: {path.name}: {qemu} [") and "LUKS header at 0x" in line
               for line in lines), lines
    assert all(len(f.message) < 400 for f in luks_findings)
    forced = run_qforensics("info", "--force", path.name, cwd=tmp_path)
    assert forced.returncode == 0 and "Traceback" not in forced.stderr


def test_split_key_sectors_follow_qemu_arithmetic():
    """qcrypto_block_luks_splitkeylen_sectors: 64 x 4000 bytes are 500 sectors, 504 in units of the header's 8;
    0xFFFFFFFF x 4000 is -4000 in 32 bits."""
    assert split_key_sectors(64, 4000) == 504
    assert split_key_sectors(32, 4000) == 256
    assert split_key_sectors(0xFFFFFFFF, 4000) == -(-((1 << 32) - 4000) // 512 // 8) * 8


@pytest.mark.parametrize("name", ["inactive_slot_stripes_1", "slot_5_state_zero", "key_material_past_payload"])
def test_refused_header_still_opens(corpus, tmp_path, name):
    """qemu refuses these for a damaged slot qemu never uses; slot 0 is intact and opens with the passphrase,
    through the model's header (the crypto layer does not read the header again)."""
    path = luks_copy(corpus, tmp_path, name)
    with open_image(path) as img:
        assert img.refusals
        cipher = open_cipher(img, CASES["encrypted_luks"]["passphrase"])
    assert cipher.key_slot == 0 and cipher.name == "aes-256-xts-plain64"


def test_a_refused_pointer_is_qemus_only_reason(corpus, tmp_path):
    """An unaligned header offset: qemu stops at the pointer and never reads what lies there."""
    path = luks_copy(corpus, tmp_path, "pointer_unaligned")
    with open(path, "r+b") as f:
        data = f.read(1 << 16)
        at = find_extension(data, 0x0537BE77) + 8
        f.seek(at)
        f.write(struct.pack(">Q", struct.unpack_from(">Q", data, at)[0] + 512))
    qemu = qemu_verdict(path)
    assert qemu is not None and "not a multiple of cluster size" in qemu
    with open_image(path) as img:
        assert [f.qemu_message for f in img.refusals] == [qemu]
        assert any(f.code.startswith("luks.") for f in img.findings)  # what lies there is still judged
    ours = run_qforensics("info", path.name, cwd=tmp_path)
    assert ours.returncode == 1 and len(ours.stderr.strip().splitlines()) == 1 and qemu in ours.stderr
