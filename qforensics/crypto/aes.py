"""Legacy qcow2 AES encryption (crypt_method 1) and a heuristic check of its key.

qcow2 spec, "Header" (crypt_method = 1): "AES encryption"; the spec says 256-bit keys, but QEMU
(crypto/block-qcow.c qcrypto_block_qcow_init) uses AES-128-CBC with a key made of the first 16
bytes of the password (strlen, so a NUL ends it), zero-padded, with no KDF and no salt. The IV is
plain64 of the *guest* sector number (block/qcow2.c sets crypt_physical_offset only for LUKS), and
every 512-byte sector is encrypted on its own. The format stores no key check.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..model import tables
from ..model.image import Unreadable
from .sector import SECTOR_SIZE, CipherSpec, ModeCipher

AES_KEY_BYTES = 16
MAX_SAMPLES = 64
STRUCTURED_ENTROPY = 6.0  # bits/byte below which 512 bytes are "structured"
RANDOM_ENTROPY = 7.0  # bits/byte from which 512 bytes look like ciphertext (uniform bytes give ~7.6)


def aes_key(passphrase: bytes) -> bytes:
    """QEMU's legacy AES key: the passphrase up to its first NUL, cut or zero-padded to 16 bytes."""
    return passphrase.split(b"\0", 1)[0][:AES_KEY_BYTES].ljust(AES_KEY_BYTES, b"\0")


def legacy_aes_cipher(passphrase: bytes) -> ModeCipher:
    """AES-128-CBC, plain64 IV of the guest sector (crypt_physical_offset = false)."""
    cipher = ModeCipher(CipherSpec("aes", "cbc", "plain64"), aes_key(passphrase), physical=False)
    cipher.name = "aes-128-cbc-plain64 (qcow2 legacy AES)"
    return cipher


def entropy(sectors: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits/byte of each row of a (n, 512) uint8 array."""
    n, width = sectors.shape
    counts = np.bincount((np.arange(n)[:, None] * 256 + sectors).ravel(), minlength=n * 256).reshape(n, 256)
    p = counts / width
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, -p * np.log2(p), 0.0)
    return terms.sum(axis=1)


def looks_structured(sectors: np.ndarray) -> np.ndarray:
    """Rows that are all zeros, low-entropy, an MBR/boot sector (55AA at 510) or a GPT header ("EFI PART")."""
    low = entropy(sectors) < STRUCTURED_ENTROPY
    boot = (sectors[:, 510] == 0x55) & (sectors[:, 511] == 0xAA)
    gpt = np.all(sectors[:, :8] == np.frombuffer(b"EFI PART", dtype=np.uint8), axis=1)
    zeros = ~sectors.any(axis=1)
    return low | boot | gpt | zeros


def sample_clusters(img, limit: int = MAX_SAMPLES) -> list[tuple[int, int]]:
    """(guest offset, host offset) of up to ``limit`` standard allocated data clusters of the active L1.

    Compressed clusters, zero clusters (flag or, with extended L2, subcluster 0 zero or unallocated)
    and unaligned or absent offsets are left out.
    """
    h = img.header
    l1 = img.l1_table()
    if isinstance(l1, Unreadable):
        return []
    out: list[tuple[int, int]] = []
    l2_offsets = l1 & tables.L1E_OFFSET_MASK
    cs = np.uint64(h.cluster_size)
    for index in np.nonzero((l2_offsets != 0) & (l2_offsets % cs == 0))[0].tolist():
        got = img.l2_table(int(l2_offsets[index]))
        if isinstance(got, Unreadable):
            continue
        entries, bitmaps = got
        d = tables.Descriptors(entries, False)
        host, ok = d.offset, d.aligned_data(h.cluster_size)
        if bitmaps is None:
            ok &= ~d.zero
        else:
            ok &= ((bitmaps & np.uint64(1)) != 0) & ((bitmaps & np.uint64(1 << 32)) == 0)
        for j in np.nonzero(ok)[0][:limit - len(out)].tolist():
            out.append(((index * len(entries) + j) * h.cluster_size, int(host[j])))
        if len(out) >= limit:
            break
    return out


def verify_aes_key(img, cipher, read_host: Callable[[int, int], bytes] | None = None) -> tuple[str, str]:
    """Judge whether ``cipher`` holds the right key, since the AES format stores no key check.

    Heuristic: take the first 512-byte sector of up to 64 standard allocated clusters of the active
    L1/L2 (not compressed, not zero), read with ``read_host`` (default: the image file; pass the data
    file's reader for external data files). Only sectors whose raw bytes look like ciphertext count
    (entropy >= 7.0 bits/byte; 512 uniform random bytes give 7.59 +- 0.03): raw zeros or patterns
    decrypt to patterns under any key in CBC (D(C) xor C' repeats when C does). Each is decrypted with
    its own IV sector number (guest, or host for a physical cipher) and called *structured* when the
    plaintext is all zeros, has a Shannon entropy below 6.0 bits/byte, or carries a boot signature
    (55AA at 510) or a GPT header ("EFI PART").

    - "confirmed": at least one such sector decrypts to structured data;
    - "wrong": there are such sectors and none does: a wrong key turns any plaintext into noise;
    - "unverifiable": no allocated cluster to sample, or no sample whose raw bytes look like ciphertext.

    A right key over guest data that is itself random (compressed or encrypted inside the guest) reads
    as "wrong": the verdict is evidence, not proof. Returns (verdict, one-line reason with the counts).
    """
    read = read_host or img.file.read
    samples = sample_clusters(img)
    sectors, raws = [], []
    for guest, host in samples:
        raw = read(host, SECTOR_SIZE)
        if len(raw) == SECTOR_SIZE:
            raws.append(raw)
            sectors.append((host if cipher.physical else guest) // SECTOR_SIZE)
    if not raws:
        why = "no allocated data cluster to sample" if not samples else \
            f"none of the {len(samples)} allocated clusters has a readable first sector"
        return "unverifiable", why
    n = len(raws)
    raw = np.frombuffer(b"".join(raws), dtype=np.uint8).reshape(n, SECTOR_SIZE)
    informative = entropy(raw) >= RANDOM_ENTROPY
    k = int(informative.sum())
    if not k:
        return "unverifiable", (f"none of {n} sampled sectors holds random-looking ciphertext (entropy >= "
                                f"{RANDOM_ENTROPY} bits/byte), so no decryption of them can prove the key")
    plain = np.frombuffer(b"".join(cipher.decrypt(r, s) for r, s, ok in zip(raws, sectors, informative, strict=True)
                                   if ok), dtype=np.uint8).reshape(k, SECTOR_SIZE)
    structured = int(looks_structured(plain).sum())
    of = f"of {k} sampled sectors holding ciphertext" + (f" ({n - k} others skipped)" if k < n else "")
    if structured:
        return "confirmed", f"{structured} {of} decrypt to structured data"
    return "wrong", f"none {of} decrypts to structured data"
