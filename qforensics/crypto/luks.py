"""LUKS1 inside qcow2 (crypt_method 2): open a key slot with a passphrase, get the master key.

qcow2 spec, "Full disk encryption header pointer": the LUKS1 header lives in host clusters named by
extension 0x0537BE77; key material offsets count from the start of that area; payload_offset is
unused (guest data stays in qcow2 clusters) and the data IVs use the host sector number.

LUKS1 on-disk format spec (cryptsetup, "LUKS On-Disk Format Specification" v1.2.3):
- section 4.2 (key verification): PBKDF2(hash, passphrase, slot salt, slot iterations, key_bytes)
  decrypts the slot's key material (stripes * key_bytes bytes, 512-byte sectors numbered from 0, the
  header's cipher and mode); AF-merge gives a candidate master key, right when
  PBKDF2(hash, candidate, mk_digest_salt, mk_digest_iterations, 20) equals mk_digest;
- section 2.4 (AF splitter): merge = xor and diffuse stripe by stripe; diffuse hashes each
  digest-sized block i of the buffer as H(be32(i) || block), the last block cut to its length.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from ..model.luks1_header import LUKS1_HEADER_SIZE, LuksHeader, LuksKeySlot
from .sector import (SECTOR_SIZE, CipherSpec, EncryptionHeaderError, ModeCipher, UnsupportedEncryption,
                     WrongPassphrase, check_hash, parse_cipher_mode)

DIGEST_SIZE = 20  # LUKS_DIGESTSIZE
MAX_ITERATIONS = 10_000_000  # PBKDF2 iterations we agree to run for one slot or the master key digest
MAX_KEY_MATERIAL = 4 << 20  # bytes of AF-split key material we agree to read and merge for one slot
MAX_KEY_BYTES = 128


@dataclass(frozen=True)
class LuksParams:
    """The model's LUKS1 header (model/luks1_header.py, the one reader of its bytes) with what opening adds:
    its cipher, mode and hash checked computable here. Unlike qemu, opening does not insist on 4000 stripes
    or on slots that keep out of each other's way: a damaged header that still decrypts is worth opening."""

    header: LuksHeader
    cipher: CipherSpec
    hash: str

    @property
    def offset(self) -> int:
        """Host offset of the LUKS area."""
        return self.header.offset

    @property
    def key_bytes(self) -> int:
        return self.header.key_bytes

    @property
    def mk_digest(self) -> bytes:
        return self.header.mk_digest

    @property
    def mk_digest_salt(self) -> bytes:
        return self.header.mk_digest_salt

    @property
    def mk_digest_iterations(self) -> int:
        return self.header.mk_digest_iterations

    @property
    def uuid(self) -> str:
        return self.header.uuid

    @property
    def slots(self) -> tuple[LuksKeySlot, ...]:
        return self.header.slots

    @property
    def where(self) -> str:
        return self.header.where

    @property
    def cipher_alg(self) -> str:
        """QEMU's cipher-alg name: "aes-256" for aes-xts with 64 key bytes."""
        bits = self.key_bytes * 8 // (2 if self.cipher.mode == "xts" else 1)
        return f"{self.cipher.cipher}-{bits}"


def luks_params(header: LuksHeader) -> LuksParams:
    """Check what opening depends on in a parsed header.

    Raises EncryptionHeaderError (damaged) or UnsupportedEncryption (a cipher or hash we cannot compute).
    """
    where = header.where
    hash_name = check_hash(header.hash_spec, where)
    spec = parse_cipher_mode(header.cipher_name, header.cipher_mode, where)
    key_bytes = header.key_bytes
    if not 0 < key_bytes <= MAX_KEY_BYTES:
        raise EncryptionHeaderError(f"{where}: key_bytes is {key_bytes}; expected 1..{MAX_KEY_BYTES}")
    try:
        ModeCipher(spec, bytes(key_bytes), physical=True)  # the key size and the ESSIV hash fit the cipher
    except UnsupportedEncryption as exc:
        raise UnsupportedEncryption(f"{where}: {header.cipher_name}-{spec.mode_string} with key_bytes "
                                    f"{key_bytes}: {exc}") from None
    return LuksParams(header, spec, hash_name)


def read_luks_params(img) -> LuksParams:
    """The LUKS1 header of an image with crypt_method 2, as the model read it through its encryption header
    pointer."""
    luks = img.luks
    if luks is None:
        for f in img.findings:
            if f.code.startswith(("luks.", "header.crypto")):
                where = f.structure if f.host_offset is None else f"{f.structure} at 0x{f.host_offset:x}"
                raise EncryptionHeaderError(f"{where}: {f.message}")
        raise EncryptionHeaderError("LUKS header: not found (no usable full disk encryption header pointer)")
    return luks_params(luks)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def diffuse(data: bytes, hash_name: str) -> bytes:
    """LUKS1 spec section 2.4 (AF splitter), diffuse: H(be32(i) || block i) for each digest-sized block."""
    base = hashlib.new(hash_name)
    size = base.digest_size
    out = []
    for i in range(0, len(data), size):
        h = base.copy()
        h.update((i // size).to_bytes(4, "big"))
        block = data[i:i + size]
        h.update(block)
        out.append(h.digest()[:len(block)])
    return b"".join(out)


def af_merge(material: bytes, key_bytes: int, stripes: int, hash_name: str) -> bytes:
    """LUKS1 spec section 2.4, AFmerge: d = diffuse(d xor s_i) over stripes 0..n-2, key = d xor s_(n-1)."""
    d = bytes(key_bytes)
    for i in range(stripes - 1):
        d = diffuse(_xor(d, material[i * key_bytes:(i + 1) * key_bytes]), hash_name)
    return _xor(d, material[(stripes - 1) * key_bytes:stripes * key_bytes])


def _pbkdf2(hash_name: str, secret: bytes, salt: bytes, iterations: int, length: int) -> bytes:
    return hashlib.pbkdf2_hmac(hash_name, secret, salt, iterations, length)


def _iterations_problem(what: str, iterations: int) -> str | None:
    if iterations < 1:
        return f"{what} iterations is {iterations}; PBKDF2 needs at least 1"
    if iterations > MAX_ITERATIONS:
        return f"{what} iterations is {iterations}, above the {MAX_ITERATIONS} this tool agrees to run"
    return None


def slot_problem(params: LuksParams, slot: LuksKeySlot, file_size: int) -> str | None:
    """Why an active slot cannot be tried (damaged or hostile fields), or None."""
    if slot.stripes < 1:
        return f"stripes is {slot.stripes}"
    material = slot.stripes * params.key_bytes
    if material > MAX_KEY_MATERIAL:
        return (f"stripes {slot.stripes} x key_bytes {params.key_bytes} = {material} bytes of key material, "
                f"above the {MAX_KEY_MATERIAL}-byte limit")
    problem = _iterations_problem("slot", slot.iterations)
    if problem:
        return problem
    start = params.offset + slot.key_offset
    end = start + -(-material // SECTOR_SIZE) * SECTOR_SIZE
    if end > file_size:
        return (f"key material at 0x{start:x} ({end - start} bytes) lies past the end of the file "
                f"(size 0x{file_size:x})")
    return None


class LuksCipher(ModeCipher):
    """The data cipher of a LUKS image, keyed with its master key; IVs use host sectors (physical)."""

    def __init__(self, params: LuksParams, master_key: bytes, slot: int):
        super().__init__(params.cipher, master_key, physical=True)
        self.key_slot = slot
        self.luks_offset = params.offset

    def __repr__(self) -> str:
        return f"<LuksCipher {self.name} slot={self.key_slot} header=0x{self.luks_offset:x}>"


def open_luks(img, passphrase: bytes) -> LuksCipher:
    """Try every active key slot of the image's LUKS1 header with ``passphrase``; the first that opens wins.

    Raises WrongPassphrase when no slot opens, EncryptionHeaderError when no slot can even be tried.
    """
    params = read_luks_params(img)
    return open_luks_params(params, img.file.read, img.file.size, passphrase)


def open_luks_params(params: LuksParams, read, file_size: int, passphrase: bytes) -> LuksCipher:
    where = params.where
    problem = _iterations_problem("master key digest", params.mk_digest_iterations)
    if problem:
        raise EncryptionHeaderError(f"{where}: {problem}")
    active = [s for s in params.slots if s.active]
    if not active:
        raise EncryptionHeaderError(f"{where}: no active key slot")
    skipped = []
    tried = 0
    for slot in active:
        problem = slot_problem(params, slot, file_size)
        if problem:
            skipped.append(f"key slot {slot.index}: {problem}")
            continue
        tried += 1
        slot_key = _pbkdf2(params.hash, passphrase, slot.salt, slot.iterations, params.key_bytes)
        material_len = slot.stripes * params.key_bytes
        padded = -(-material_len // SECTOR_SIZE) * SECTOR_SIZE
        encrypted = read(params.offset + slot.key_offset, padded)
        material = ModeCipher(params.cipher, slot_key, physical=False).decrypt(encrypted, 0)[:material_len]
        candidate = af_merge(material, params.key_bytes, slot.stripes, params.hash)
        digest = _pbkdf2(params.hash, candidate, params.mk_digest_salt, params.mk_digest_iterations, DIGEST_SIZE)
        if hmac.compare_digest(digest, params.mk_digest):
            return LuksCipher(params, candidate, slot.index)
    if not tried:
        raise EncryptionHeaderError(f"{where}: no key slot can be tried ({'; '.join(skipped)})")
    note = f" ({'; '.join(skipped)})" if skipped else ""
    raise WrongPassphrase(f"{where}: no key slot opens with this passphrase ({tried} active slot"
                          f"{'s' if tried != 1 else ''} tried){note}")


__all__ = ["LUKS1_HEADER_SIZE", "LuksCipher", "LuksParams", "UnsupportedEncryption", "af_merge", "diffuse",
           "luks_params", "open_luks", "read_luks_params"]
