"""Decryption of qcow2 encrypted images: legacy AES (crypt_method 1) and LUKS1 (crypt_method 2).

    >>> from qforensics.crypto import open_cipher
    >>> cipher = open_cipher(img, b"passphrase")                 # doctest: +SKIP
    >>> plain = cipher.decrypt(host_bytes, (host_offset if cipher.physical else guest_offset) // 512)

qcow2 spec: "Header" (crypt_method), "Full disk encryption header pointer"; LUKS1 on-disk format spec.
Metadata is never encrypted; only guest data clusters are, sector by sector.
"""

from __future__ import annotations

from ..errors import QforensicsError
from .aes import legacy_aes_cipher, verify_aes_key
from .luks import LuksCipher, open_luks, read_luks_params
from .sector import EncryptionHeaderError, ModeCipher, SectorCipher, UnsupportedEncryption, WrongPassphrase

QCOW_CRYPT_NONE, QCOW_CRYPT_AES, QCOW_CRYPT_LUKS = 0, 1, 2


def open_cipher(img, passphrase: bytes | str) -> SectorCipher:
    """The sector cipher of an encrypted image, keyed from ``passphrase`` (str is taken as UTF-8).

    crypt_method 1: legacy AES-128-CBC (no key check: see verify_aes_key); 2: LUKS1, raising
    WrongPassphrase when no key slot opens. Raises UnsupportedEncryption (a UsageError) for an
    unencrypted image or a cipher/mode/hash this tool cannot compute, EncryptionHeaderError for a
    damaged or hostile LUKS header.
    """
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    method = img.header.crypt_method
    if method == QCOW_CRYPT_AES:
        return legacy_aes_cipher(passphrase)
    if method == QCOW_CRYPT_LUKS:
        return open_luks(img, passphrase)
    if method == QCOW_CRYPT_NONE:
        raise UnsupportedEncryption("qcow2 header: crypt_method is 0, the image is not encrypted")
    raise UnsupportedEncryption(f"qcow2 header: unknown crypt_method {method} (1 is AES, 2 is LUKS)")


__all__ = ["EncryptionHeaderError", "LuksCipher", "ModeCipher", "QforensicsError", "SectorCipher",
           "UnsupportedEncryption", "WrongPassphrase", "open_cipher", "read_luks_params", "verify_aes_key"]
