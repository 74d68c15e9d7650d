"""Sector ciphers: block cipher + chaining mode + IV generator over 512-byte sectors, batched with numpy.

Every mode is computed CHUNK (1 MiB, 2048 sectors) at a time: one ECB pass of the block
cipher over the chunk (OpenSSL, through ``cryptography``) and numpy XORs for the
chaining, so there is no Python work per sector or per byte.

- CBC: P[i] = D(C[i]) xor C[i-1], with C[-1] = the sector's IV.
- XTS (IEEE 1619): T0 = E_K2(IV), T[j] = T0 * alpha^j in GF(2^128); P[j] = D_K1(C[j] xor T[j]) xor T[j].
  Sectors are whole numbers of blocks, so there is never ciphertext stealing.
- CTR: keystream block j of a sector = E(IV + j), the IV read as one big-endian counter (nettle's ctr_crypt).
- ECB: no IV.

IV generators are QEMU's (crypto/ivgen-plain.c, ivgen-plain64.c, ivgen-essiv.c) and dm-crypt's:
plain = le32 of the sector number, plain64 = le64, essiv = E_{hash(key)}(plain64), each zero-padded
to the cipher's block size.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import QforensicsError, UsageError

SECTOR_SIZE = 512
CHUNK = 1 << 20  # bytes per numpy pass: fewer, larger passes (64 KiB ones cost 1.5 ms/MiB of aes-cbc, 1 MiB 0.44)


class WrongPassphrase(QforensicsError):
    """No key slot opens with the passphrase (the message names the structure and its offset)."""


class UnsupportedEncryption(UsageError):
    """The image uses a cipher, mode, IV generator or hash this tool cannot compute."""


class EncryptionHeaderError(QforensicsError):
    """The encryption metadata is damaged or hostile (past the end of the file, absurd counts)."""


# -- block ciphers ------------------------------------------------------------------------------------------

def _decrepit(name: str):
    try:
        from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit
    except ImportError:  # cryptography < 43
        return getattr(algorithms, name, None)
    return getattr(decrepit, name, None)


def _algorithm_factories() -> dict[str, Callable[[bytes], object]]:
    out: dict[str, Callable[[bytes], object]] = {"aes": algorithms.AES}
    camellia = _decrepit("Camellia")
    if camellia is not None:
        out["camellia"] = camellia
    if hasattr(algorithms, "SM4"):
        out["sm4"] = algorithms.SM4
    cast5 = _decrepit("CAST5")
    if cast5 is not None:
        out["cast5"] = cast5
    return out


ALGORITHMS = _algorithm_factories()
# named by QEMU or cryptsetup, but not computable with the cryptography package
KNOWN_UNSUPPORTED = ("serpent", "twofish", "des", "des3_ede", "3des", "blowfish")
MODES = ("ecb", "cbc", "xts", "ctr")
IVGENS = ("plain", "plain64", "essiv")


def check_cipher(name: str, where: str = "") -> None:
    """Raise UnsupportedEncryption unless ``name`` is a cipher of ALGORITHMS."""
    if name not in ALGORITHMS:
        why = "not available in the cryptography package" if name in KNOWN_UNSUPPORTED else "unknown cipher"
        raise UnsupportedEncryption(f"{where}: " * bool(where) + f"unsupported cipher {name!r} "
                                    f"({why}; supported: {', '.join(ALGORITHMS)})")


def block_algorithm(name: str, key: bytes):
    """The ``cryptography`` algorithm object for a LUKS cipher name ("aes", "camellia", ...) and key.

    Raises UnsupportedEncryption for names outside ALGORITHMS or a key size the cipher does not take.
    """
    check_cipher(name)
    factory = ALGORITHMS[name]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CryptographyDeprecationWarning for the decrepit ciphers
            return factory(key)
    except ValueError:
        raise UnsupportedEncryption(f"cipher {name} does not take a {len(key) * 8}-bit key") from None


def _bytes_view(data) -> memoryview:
    """A flat byte view of bytes, a memoryview or a C-contiguous numpy array (cryptography takes no arrays)."""
    return memoryview(data).cast("B") if isinstance(data, np.ndarray) else memoryview(data)


def _ecb(alg, data, encrypt: bool) -> bytes:
    ctx = Cipher(alg, modes.ECB()).encryptor() if encrypt else Cipher(alg, modes.ECB()).decryptor()
    return ctx.update(_bytes_view(data)) + ctx.finalize()


# -- IV generators ------------------------------------------------------------------------------------------

def sector_ivs(ivgen: str, sectors: np.ndarray, block: int, essiv_alg=None) -> np.ndarray:
    """IVs of the given sector numbers as a (n, block) uint8 array."""
    n = len(sectors)
    ivs = np.zeros((n, block), dtype=np.uint8)
    if ivgen == "plain":
        ivs[:, :4] = (sectors & np.uint64(0xFFFFFFFF)).astype("<u4").view(np.uint8).reshape(n, 4)
    else:  # plain64, and the input of essiv
        width = min(8, block)
        ivs[:, :width] = sectors.astype("<u8").view(np.uint8).reshape(n, 8)[:, :width]
    if ivgen == "essiv":
        ivs = np.frombuffer(_ecb(essiv_alg, ivs, True), dtype=np.uint8).reshape(n, block)
    return ivs


# -- the sector cipher --------------------------------------------------------------------------------------

class SectorCipher:
    """Decrypts whole 512-byte sectors; ``first_sector`` is the IV sector number of the first one.

    ``physical`` says which sector number the IVs use: True, the host offset // 512 (LUKS in qcow2,
    ``crypt_physical_offset`` in block/qcow2.c); False, the guest offset // 512 (legacy AES).
    """

    sector_size: int = SECTOR_SIZE
    physical: bool = False
    name: str = ""

    def decrypt(self, data: bytes, first_sector: int) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class CipherSpec:
    """A LUKS-style cipher description: cipher name, key size, chaining mode, IV generator, ESSIV hash."""

    cipher: str
    mode: str
    ivgen: str
    ivhash: str = ""

    @property
    def mode_string(self) -> str:
        """The LUKS1 cipher-mode string, e.g. "xts-plain64", "cbc-essiv:sha256"."""
        if not self.ivgen:
            return self.mode
        return f"{self.mode}-{self.ivgen}" + (f":{self.ivhash}" if self.ivhash else "")


def parse_cipher_mode(cipher: str, cipher_mode: str, where: str) -> CipherSpec:
    """Split a LUKS1 cipher-mode string ("cbc-essiv:sha256") and check it is computable."""
    mode, _, ivspec = cipher_mode.partition("-")
    ivgen, _, ivhash = ivspec.partition(":")
    if mode not in MODES:
        raise UnsupportedEncryption(f"{where}: unsupported cipher mode {cipher_mode!r} "
                                    f"(chaining {mode!r}; supported: {', '.join(MODES)})")
    if ivgen not in IVGENS and not (mode == "ecb" and ivgen == ""):
        raise UnsupportedEncryption(f"{where}: unsupported IV generator {ivgen!r} in cipher mode {cipher_mode!r} "
                                    f"(supported: {', '.join(IVGENS)})")
    if ivgen == "essiv":
        if not ivhash:
            raise UnsupportedEncryption(f"{where}: cipher mode {cipher_mode!r} names no ESSIV hash")
        check_hash(ivhash, where)
    elif ivhash:
        raise UnsupportedEncryption(f"{where}: cipher mode {cipher_mode!r}: only essiv takes a hash")
    check_cipher(cipher, where)
    return CipherSpec(cipher, mode, ivgen, ivhash)


HASHES = ("sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160", "md5", "sm3")


def check_hash(name: str, where: str) -> str:
    """A LUKS hash name that hashlib computes here (OpenSSL may lack ripemd160 or sm3)."""
    if name in HASHES:
        try:
            hashlib.new(name)
            return name
        except ValueError:
            pass
    have = [h for h in HASHES if h in hashlib.algorithms_available]
    raise UnsupportedEncryption(f"{where}: unsupported hash {name!r} (supported here: {', '.join(have)})")


class ModeCipher(SectorCipher):
    """A block cipher in ECB, CBC, XTS or CTR mode with a plain, plain64 or ESSIV IV per 512-byte sector."""

    def __init__(self, spec: CipherSpec, key: bytes, *, physical: bool):
        self.spec = spec
        self.physical = physical
        self.mode = spec.mode
        self.ivgen = spec.ivgen
        if spec.mode == "xts":
            if len(key) % 2:
                raise UnsupportedEncryption(f"{spec.cipher}-xts needs an even key length, not {len(key)} bytes")
            half = len(key) // 2
            self._alg = block_algorithm(spec.cipher, key[:half])
            self._tweak_alg = block_algorithm(spec.cipher, key[half:])
            bits = half * 8
        else:
            self._alg = block_algorithm(spec.cipher, key)
            bits = len(key) * 8
        self.block = self._alg.block_size // 8
        if spec.mode == "xts" and self.block != 16:
            raise UnsupportedEncryption(f"XTS needs a 128-bit block cipher; {spec.cipher} has {self.block * 8}-bit "
                                        "blocks")
        self._essiv_alg = None
        if spec.ivgen == "essiv":
            salt = hashlib.new(spec.ivhash, key).digest()
            try:
                self._essiv_alg = block_algorithm(spec.cipher, salt)
            except UnsupportedEncryption:
                raise UnsupportedEncryption(f"essiv:{spec.ivhash} gives a {len(salt) * 8}-bit key, which "
                                            f"{spec.cipher} does not take") from None
        self.name = f"{spec.cipher}-{bits}-{spec.mode_string}"

    def __repr__(self) -> str:
        return f"<ModeCipher {self.name} physical={self.physical}>"

    def decrypt(self, data: bytes, first_sector: int) -> bytes:
        """Plaintext of ``data`` (whole 512-byte sectors numbered first_sector, first_sector + 1, ...)."""
        if len(data) % SECTOR_SIZE:
            raise ValueError(f"decrypt needs whole {SECTOR_SIZE}-byte sectors, got {len(data)} bytes")
        if first_sector < 0:
            raise ValueError(f"sector number {first_sector} is negative")
        view = memoryview(data).cast("B")
        # ECB output goes straight into one reused chunk buffer (update_into wants block_size - 1 bytes of
        # slack); each chunk is then copied out once: big fresh buffers cost page faults, small ones do not
        buf = bytearray(min(len(data), CHUNK) + self.block)
        parts = []
        for start in range(0, len(data), CHUNK):
            chunk = view[start:start + CHUNK]
            self._decrypt_into(chunk, first_sector + start // SECTOR_SIZE, buf)
            parts.append(bytes(memoryview(buf)[:len(chunk)]))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _decrypt_into(self, data: memoryview, first_sector: int, out: bytearray) -> None:
        """Decrypt whole sectors into the start of ``out`` (at least len(data) + block bytes)."""
        n = len(data) // SECTOR_SIZE
        size = len(data)
        slot = memoryview(out)[:size + self.block]
        if self.mode == "ecb":
            self._ecb_into(self._alg, data, slot, False)
            return
        block = self.block
        per_sector = SECTOR_SIZE // block
        sectors = np.arange(first_sector, first_sector + n, dtype=np.uint64)
        ivs = sector_ivs(self.ivgen, sectors, block, self._essiv_alg)
        words = block // 8
        result = np.frombuffer(out, dtype=np.uint64, count=size // 8)
        if self.mode == "cbc":
            self._ecb_into(self._alg, data, slot, False)
            p = result.reshape(n, per_sector, words)
            c = np.frombuffer(data, dtype=np.uint64).reshape(n, per_sector, words)
            p[:, 1:] ^= c[:, :-1]
            p[:, 0] ^= ivs.view(np.uint64).reshape(n, words)
        elif self.mode == "ctr":
            self._ecb_into(self._alg, _ctr_blocks(ivs, per_sector, block), slot, True)
            result ^= np.frombuffer(data, dtype=np.uint64)
        else:  # xts
            t0 = np.frombuffer(_ecb(self._tweak_alg, ivs, True), dtype="<u8").reshape(n, 2)
            tweaks = _xts_tweaks(t0, per_sector).reshape(-1)
            x = np.frombuffer(data, dtype="<u8") ^ tweaks
            self._ecb_into(self._alg, x, slot, False)
            np.frombuffer(out, dtype="<u8", count=size // 8).__ixor__(tweaks)  # the tweak words are little-endian

    @staticmethod
    def _ecb_into(alg, data, out: memoryview, encrypt: bool) -> None:
        c = Cipher(alg, modes.ECB())
        ctx = c.encryptor() if encrypt else c.decryptor()
        ctx.update_into(_bytes_view(data), out)
        ctx.finalize()


XTS_CLOSED_FORM_BELOW = 192  # sectors; measured crossover of the two ways to compute the tweaks


def _xts_tweaks(t0: np.ndarray, count: int) -> np.ndarray:
    """T0 * alpha^j for j < count: (n, count, 2) little-endian (lo, hi) words of GF(2^128) elements.

    Few sectors: closed form, T0 shifted left by j bits with the j bits that fall off reduced by
    x^128 = x^7 + x^2 + x + 1 (0x87); a fixed dozen numpy calls. Many: step j -> j + 1 (one doubling)
    over all sectors at once, which touches less memory.
    """
    n = t0.shape[0]
    out = np.empty((n, count, 2), dtype=np.uint64)
    lo = t0[:, 0].astype(np.uint64)
    hi = t0[:, 1].astype(np.uint64)
    if n < XTS_CLOSED_FORM_BELOW:
        out[:, 0, 0], out[:, 0, 1] = lo, hi
        shift = np.arange(1, count, dtype=np.uint64)[None, :]
        back = np.uint64(64) - shift
        lo, hi = lo[:, None], hi[:, None]
        fallen = hi >> back  # at most 31 bits, so the reduction stays within the low word
        reduced = fallen ^ (fallen << np.uint64(1)) ^ (fallen << np.uint64(2)) ^ (fallen << np.uint64(7))
        out[:, 1:, 0] = (lo << shift) ^ reduced
        out[:, 1:, 1] = (hi << shift) | (lo >> back)
        return out
    one, top, poly = np.uint64(1), np.uint64(63), np.uint64(0x87)
    for j in range(count):  # count is 32 for AES: whole-array steps, not a loop per sector
        out[:, j, 0] = lo
        out[:, j, 1] = hi
        carry = hi >> top
        hi = (hi << one) | (lo >> top)
        lo = (lo << one) ^ (carry * poly)
    return out


def _ctr_blocks(ivs: np.ndarray, count: int, block: int) -> np.ndarray:
    """Counter blocks IV + j (big-endian over the whole block) for j < count, for every sector."""
    n = ivs.shape[0]
    j = np.arange(count, dtype=np.uint64)[None, :]
    if block == 8:
        base = ivs.view(">u8").reshape(n, 1).astype(np.uint64)
        return (base + j).astype(">u8")
    words = ivs.view(">u8").reshape(n, 2).astype(np.uint64)
    hi, lo = words[:, :1], words[:, 1:]
    new_lo = lo + j
    new_hi = hi + (new_lo < lo).astype(np.uint64)
    return np.stack([new_hi, new_lo], axis=-1).astype(">u8")
