"""Encryption metadata: the LUKS1 header inside the image (spec "Full disk encryption header pointer").

The one reader of the header's 592 bytes: info and check describe what it returns, and crypto/luks.py
opens key slots with it (salts and digest included). It reads as qemu's open reads, so the findings that
say qemu would refuse carry qemu's message.

Reference (QEMU 7.2): block/qcow2.c qcow2_crypto_hdr_read_func; crypto/block-luks.c
qcrypto_block_luks_load_header, qcrypto_block_luks_check_header, qcrypto_block_luks_parse_header,
qcrypto_block_luks_get_info.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..findings import Finding, Severity
from ..formats.luks1_header import Luks1Header
from .kaitai import StructureError, decode_name, parse

LUKS1_HEADER_SIZE = 592
SECTOR = 512
KEY_SLOT_OFFSET = 4096  # QCRYPTO_BLOCK_LUKS_KEY_SLOT_OFFSET: where the first key material may start
HEADER_SECTORS = KEY_SLOT_OFFSET // SECTOR
STRIPES = 4000  # QCRYPTO_BLOCK_LUKS_STRIPES: the only count qemu accepts
SLOT_DISABLED = 0x0000DEAD
SLOT_ENABLED = 0x00AC71F3
SLOTS_AT = 208  # byte offset of key slot 0 in the header; each slot is 48 bytes
SLOT_SIZE = 48
STRUCTURE = "LUKS header"
_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class LuksKeySlot:
    index: int
    state: int  # the raw "active" word: SLOT_ENABLED, SLOT_DISABLED, anything else is corrupt
    iterations: int
    salt: bytes
    key_offset_sector: int  # 512-byte sectors from the start of the LUKS area
    stripes: int

    @property
    def active(self) -> bool:
        return self.state == SLOT_ENABLED

    @property
    def key_offset(self) -> int:
        """Bytes from the start of the LUKS area (qemu-img info's key-offset)."""
        return self.key_offset_sector * SECTOR


@dataclass(frozen=True)
class LuksHeader:
    """The LUKS1 header found through the encryption header pointer (LUKS1 spec section 2.4, "phdr")."""

    offset: int  # host offset of the LUKS area
    length: int  # as the encryption header pointer claims it
    cipher_name: str
    cipher_mode: str
    hash_spec: str
    payload_offset: int  # sectors
    key_bytes: int
    mk_digest: bytes
    mk_digest_salt: bytes
    mk_digest_iterations: int
    uuid: str
    slots: tuple[LuksKeySlot, ...]

    @property
    def where(self) -> str:
        return f"{STRUCTURE} at 0x{self.offset:x}"

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


def _text(raw: bytes) -> str:
    return decode_name(raw.split(b"\0", 1)[0])


def _parse(raw: bytes, offset: int, length: int) -> tuple[LuksHeader, Luks1Header]:
    h = parse(Luks1Header, raw, structure=STRUCTURE, offset=offset)
    slots = tuple(LuksKeySlot(i, int(s.active), s.iterations, s.salt, s.key_material_offset, s.stripes)
                  for i, s in enumerate(h.key_slots))
    return LuksHeader(offset, length, _text(h.cipher_name), _text(h.cipher_mode), _text(h.hash_spec),
                      h.payload_offset, h.len_master_key, h.master_key_digest, h.master_key_digest_salt,
                      h.master_key_digest_iterations, _text(h.uuid), slots), h


def parse_luks_header(raw: bytes, offset: int, length: int = LUKS1_HEADER_SIZE) -> LuksHeader:
    """The header in ``raw`` (found at host ``offset``); raises StructureError (bad magic or version, short)."""
    return _parse(raw, offset, length)[0]


def split_key_sectors(key_bytes: int, stripes: int) -> int:
    """qcrypto_block_luks_splitkeylen_sectors as qemu computes it: key_bytes * stripes in 32 bits, rounded
    up to sectors and to the 8 sectors of the header, returned through an int into an unsigned int."""
    sectors = -(-((key_bytes * stripes) & _U32) // SECTOR)
    return -(-sectors // HEADER_SECTORS) * HEADER_SECTORS & _U32


def _int32(v: int) -> int:
    return v - (1 << 32) if v >> 31 else v


def check_luks_header(h: LuksHeader, k: Luks1Header) -> list[tuple[str, int, str, str]]:
    """Every rule of qcrypto_block_luks_check_header the header breaks, in qemu's order, as (finding code,
    host offset, our words, qemu's message); qemu stops at the first. Sums are 32-bit as in qemu."""
    out: list[tuple[str, int, str, str]] = []

    def broken(code: str, host: int, qemu: str, ours: str) -> None:
        out.append((code, host, ours, qemu))

    at = h.offset
    for field, pos, what in (("cipher_name", 8, "cipher name"), ("cipher_mode", 40, "cipher mode"),
                             ("hash_spec", 72, "hash spec")):
        if b"\0" not in getattr(k, field):
            broken("luks.name_unterminated", at + pos, f"LUKS header {what} is not NUL terminated",
                   f"{field} fills its 32 bytes with no NUL terminator")
    if h.payload_offset < HEADER_SECTORS:
        broken("luks.payload_in_header", at + 104, "LUKS payload is overlapping with the header",
               f"payload_offset is {h.payload_offset} sectors, inside the {HEADER_SECTORS}-sector header")
    if h.mk_digest_iterations == 0:
        broken("luks.digest_iterations_zero", at + 164, "LUKS key iteration count is zero",
               "mk_digest_iterations is 0")
    spans = [(s.key_offset_sector, split_key_sectors(h.key_bytes, s.stripes)) for s in h.slots]
    for s, (start, n) in zip(h.slots, spans, strict=True):
        i, slot_at = s.index, at + SLOTS_AT + SLOT_SIZE * s.index
        if s.stripes != STRIPES:
            broken("luks.keyslot_stripes", slot_at + 44, f"Keyslot {i} is corrupted (stripes {_int32(s.stripes)} != {STRIPES})",
                   f"key slot {i} stripes is {s.stripes}, not {STRIPES}")
        if s.state not in (SLOT_DISABLED, SLOT_ENABLED):
            broken("luks.keyslot_state", slot_at, f"Keyslot {i} state (active/disable) is corrupted",
                   f"key slot {i} state is 0x{s.state:x}, neither enabled (0x{SLOT_ENABLED:x}) nor disabled "
                   f"(0x{SLOT_DISABLED:x})")
        if s.active and s.iterations == 0:
            broken("luks.keyslot_iterations_zero", slot_at + 4, f"Keyslot {i} iteration count is zero",
                   f"key slot {i} is enabled with 0 iterations")
        if start < HEADER_SECTORS:
            broken("luks.keyslot_in_header", slot_at + 40, f"Keyslot {i} is overlapping with the LUKS header",
                   f"key slot {i} key material starts at sector {start}, inside the {HEADER_SECTORS}-sector header")
        end = (start + n) & _U32
        if end > h.payload_offset:
            broken("luks.keyslot_in_payload", slot_at + 40, f"Keyslot {i} is overlapping with the encrypted payload",
                   f"key slot {i} key material, sector {start} + {n} sectors (key_bytes {h.key_bytes} x stripes "
                   f"{s.stripes}, in qemu's 32-bit sums), ends past payload_offset {h.payload_offset}")
        # one finding per slot for all the later slots it overlaps; qemu names the first pair
        later = [j for j in range(i + 1, len(spans)) if end > spans[j][0] and (spans[j][0] + spans[j][1]) & _U32 > start]
        if later:
            others = ", ".join(f"{j} (sector {spans[j][0]} + {spans[j][1]})" for j in later)
            broken("luks.keyslots_overlap", slot_at + 40, f"Keyslots {i} and {later[0]} are overlapping in the header",
                   f"key slot {i} key material (sector {start} + {n}, in qemu's 32-bit sums) overlaps that of "
                   f"key slot{'s' if len(later) > 1 else ''} {others}")
    return out


# what qcrypto_block_luks_parse_header looks names up in (QEMU 7.2 qapi/crypto.json, crypto/block-luks.c)
QEMU_CIPHER_KEY_BYTES = {"aes": (16, 24, 32), "cast5": (16,), "serpent": (16, 24, 32), "twofish": (16, 24, 32)}
QEMU_CIPHER_MODES = ("ecb", "cbc", "xts", "ctr")
QEMU_HASH_SIZES = {"md5": 16, "sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64, "ripemd160": 20}
QEMU_IVGENS = ("plain", "plain64", "essiv")
_ESSIV_NAMES = {"aes": "AES", "serpent": "Serpent", "twofish": "Twofish"}


def qemu_parse_problem(h: LuksHeader) -> tuple[str, int, str, str] | None:
    """The first name qcrypto_block_luks_parse_header cannot look up (it runs at every open, `qemu-img info`
    too), as (finding code, host offset, our words, qemu's message), or None."""
    def bad(pos: int, qemu: str, ours: str, code: str = "luks.cipher_mode_unknown") -> tuple[str, int, str, str]:
        return code, h.offset + pos, ours, qemu

    mode, dash, ivgen = h.cipher_mode.partition("-")
    if not dash:
        return bad(40, f"Unexpected cipher mode string format '{h.cipher_mode}'",
                   f"cipher_mode {h.cipher_mode!r} has no '-' between chaining mode and IV generator")
    ivgen, colon, ivhash = ivgen.partition(":")
    if colon and ivhash not in QEMU_HASH_SIZES:
        return bad(40, f"Hash algorithm '{ivhash}' not supported",
                   f"cipher_mode {h.cipher_mode!r}: qemu knows no hash {ivhash!r}", "luks.hash_unknown")
    if mode not in QEMU_CIPHER_MODES:
        return bad(40, f"Cipher mode '{mode}' not supported",
                   f"cipher_mode {h.cipher_mode!r}: qemu knows no chaining mode {mode!r} "
                   f"({', '.join(QEMU_CIPHER_MODES)})")
    key_bytes = h.key_bytes // 2 if mode == "xts" else h.key_bytes  # per cipher of the xts pair
    if key_bytes not in QEMU_CIPHER_KEY_BYTES.get(h.cipher_name, ()):
        return bad(8, f"Algorithm '{h.cipher_name}' with key size {_int32(key_bytes)} bytes not supported",
                   f"cipher {h.cipher_name!r} with {key_bytes}-byte keys (key_bytes {h.key_bytes}) is not one "
                   "qemu has", "luks.cipher_unknown")
    if h.hash_spec not in QEMU_HASH_SIZES:
        return bad(72, f"Hash algorithm '{h.hash_spec}' not supported",
                   f"hash_spec {h.hash_spec!r} is not a hash qemu has", "luks.hash_unknown")
    if ivgen not in QEMU_IVGENS:
        return bad(40, f"IV generator '{ivgen}' not supported",
                   f"cipher_mode {h.cipher_mode!r}: qemu knows no IV generator {ivgen!r}")
    if ivgen == "essiv":
        if not colon:
            return bad(40, "Missing IV generator hash specification",
                       f"cipher_mode {h.cipher_mode!r}: essiv names no hash")
        digest = QEMU_HASH_SIZES[ivhash]
        if digest != key_bytes and h.cipher_name == "cast5":
            return bad(40, "Cipher cast5-128 not supported with essiv",
                       f"cipher_mode {h.cipher_mode!r}: ESSIV with cast5 needs a 16-byte hash")
        if digest != key_bytes and digest not in QEMU_CIPHER_KEY_BYTES[h.cipher_name]:
            return bad(40, f"No {_ESSIV_NAMES[h.cipher_name]} cipher with key size {digest} available",
                       f"cipher_mode {h.cipher_mode!r}: the {digest}-byte {ivhash} digest keys no "
                       f"{h.cipher_name} for ESSIV")
    return None


def read_luks_header(read, offset: int, length: int) -> tuple[LuksHeader | None, list[Finding]]:
    """The header through the encryption header pointer (``offset``, ``length``), read as qemu reads it:
    bytes past the end of the file are zeros. Findings for every rule broken; the first that qemu meets
    carries its message."""
    findings: list[Finding] = []

    def finding(message: str, host: int, qemu: str | None, code: str) -> None:
        findings.append(Finding(code, Severity.CORRUPTION, message, STRUCTURE, host, qemu_message=qemu))

    if length < LUKS1_HEADER_SIZE:
        finding(f"the encryption header pointer's length {length} is below the {LUKS1_HEADER_SIZE} bytes of the "
                "LUKS1 header", offset, "Request for data outside of extension header", "luks.pointer_too_short")
    raw = read(offset, LUKS1_HEADER_SIZE)
    if len(raw) < LUKS1_HEADER_SIZE:
        # bdrv_pread fills what lies past the end of the file with zeros, and qemu goes on with those
        finding("the header lies past the end of the file; qemu reads it as zeros" if not raw else
                f"only {len(raw)} of the header's {LUKS1_HEADER_SIZE} bytes lie in the file (it ends at "
                f"0x{offset + len(raw):x}); qemu reads zeros for the rest", offset, None, "luks.header_past_eof")
        raw = raw.ljust(LUKS1_HEADER_SIZE, b"\0")
    header = None
    try:
        header, k = _parse(raw, offset, length)
    except StructureError as exc:
        qemu = {"magic": "Volume is not in LUKS format",
                "version": f"LUKS version {exc.value} is not supported"}.get(exc.field or "")
        # the spec validates the magic and the version only (ksy/luks1_header.ksy)
        code = "luks.version_unsupported" if exc.field == "version" else "luks.magic_invalid"
        finding(exc.message, offset, qemu, code)
    else:
        problems = check_luks_header(header, k)
        parse_problem = qemu_parse_problem(header)
        for code, host, message, qemu in problems + ([parse_problem] if parse_problem else []):
            finding(message, host, qemu, code)
    first = next((i for i, f in enumerate(findings) if f.qemu_message), None)
    return header, [f if i == first or not f.qemu_message else replace(f, qemu_message=None)
                    for i, f in enumerate(findings)]
