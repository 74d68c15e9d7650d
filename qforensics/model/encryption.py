"""Encryption metadata: the LUKS1 header inside the image (spec "Full disk encryption header pointer").

Reference: crypto/block-luks.c qcrypto_block_luks_get_info (QEMU 7.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..findings import Finding, Severity
from ..formats.luks1_header import Luks1Header
from .kaitai import StructureError, decode_name, parse

LUKS1_HEADER_SIZE = 592
SECTOR = 512


@dataclass(frozen=True)
class LuksKeySlot:
    index: int
    active: bool
    iterations: int
    key_offset: int  # bytes from the start of the LUKS area
    stripes: int


@dataclass(frozen=True)
class LuksHeader:
    """The LUKS1 header found through the encryption header pointer."""

    offset: int
    length: int
    cipher_name: str
    cipher_mode: str
    hash_spec: str
    payload_offset: int
    key_bytes: int
    mk_digest_iterations: int
    uuid: str
    slots: tuple[LuksKeySlot, ...]

    @property
    def mode(self) -> str:
        return self.cipher_mode.split("-", 1)[0]

    @property
    def ivgen(self) -> str:
        return self.cipher_mode.split("-", 1)[1].split(":", 1)[0] if "-" in self.cipher_mode else ""

    @property
    def cipher_alg(self) -> str:
        """QEMU's name for the cipher and key size, e.g. "aes-256" for aes-xts with a 64-byte key."""
        bits = self.key_bytes * 8 // (2 if self.mode == "xts" else 1)
        return f"{self.cipher_name}-{bits}"

    def to_qemu_json(self) -> dict:
        out = {
            "format": "luks",
            "cipher-alg": self.cipher_alg,
            "cipher-mode": self.mode,
            "ivgen-alg": self.ivgen,
            "hash-alg": self.hash_spec,
            "payload-offset": self.payload_offset * SECTOR,
            "master-key-iters": self.mk_digest_iterations,
            "uuid": self.uuid,
            "slots": [
                {"active": s.active, "iters": s.iterations, "stripes": s.stripes, "key-offset": s.key_offset}
                if s.active else {"active": False, "key-offset": s.key_offset}
                for s in self.slots
            ],
        }
        if ":" in self.cipher_mode:
            out["ivgen-hash-alg"] = self.cipher_mode.split(":", 1)[1]
        return out


def read_luks_header(read, offset: int, length: int) -> tuple[LuksHeader | None, list[Finding]]:
    raw = read(offset, LUKS1_HEADER_SIZE)
    try:
        h = parse(Luks1Header, raw, structure="LUKS header", offset=offset)
    except StructureError as exc:
        # qemu parses the LUKS header even without I/O (qemu-img info), and refuses a wrong magic
        qemu = "Volume is not in LUKS format" if exc.field == "magic" else None
        return None, [Finding("luks.header_invalid", Severity.CORRUPTION, exc.message, "LUKS header", offset,
                              qemu_message=qemu)]

    def text(b: bytes) -> str:
        return decode_name(b.split(b"\0", 1)[0])

    slots = tuple(
        LuksKeySlot(i, s.active == Luks1Header.KeySlotState.enabled, s.iterations, s.key_material_offset * SECTOR,
                    s.stripes)
        for i, s in enumerate(h.key_slots)
    )
    return LuksHeader(offset, length, text(h.cipher_name), text(h.cipher_mode), text(h.hash_spec), h.payload_offset,
                      h.len_master_key, h.master_key_digest_iterations, text(h.uuid), slots), []
