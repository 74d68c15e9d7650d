meta:
  id: luks1_header
  title: LUKS1 header as embedded in a qcow2 image (crypt_method 2)
  application: QEMU, cryptsetup
  license: CC0-1.0
  endian: be
doc: |
  The LUKS1 partition header found at the offset named by the qcow2 full
  disk encryption header pointer (extension 0x0537BE77): 592 bytes of header
  and 8 key slots, followed by the anti-forensic key material areas. In qcow2
  the key material offsets are relative to the start of the LUKS area, not
  the file, and payload_offset is unused (guest data stays in qcow2 clusters).
doc-ref:
  - https://gitlab.com/cryptsetup/cryptsetup/-/wikis/LUKS-standard/on-disk-format.pdf "LUKS partition header"
  - https://gitlab.com/qemu-project/qemu/-/blob/master/crypto/block-luks.c
  - https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt "Full disk encryption header pointer"
seq:
  - id: magic
    contents: ["LUKS", 0xba, 0xbe]
  - id: version
    type: u2
    valid: 1
  - id: cipher_name
    size: 32
    doc: e.g. "aes", NUL-padded.
  - id: cipher_mode
    size: 32
    doc: e.g. "xts-plain64", NUL-padded.
  - id: hash_spec
    size: 32
    doc: PBKDF2 hash, e.g. "sha256", NUL-padded.
  - id: payload_offset
    type: u4
    doc: In 512-byte sectors; unused inside qcow2.
  - id: len_master_key
    -orig-id: key-bytes
    type: u4
  - id: master_key_digest
    -orig-id: mk-digest
    size: 20
  - id: master_key_digest_salt
    -orig-id: mk-digest-salt
    size: 32
  - id: master_key_digest_iterations
    -orig-id: mk-digest-iter
    type: u4
  - id: uuid
    size: 40
  - id: key_slots
    type: key_slot
    repeat: expr
    repeat-expr: 8
types:
  key_slot:
    -webide-representation: '{active} iter={iterations:dec} km={key_material_offset:dec}'
    seq:
      - id: active
        type: u4
        enum: key_slot_state
      - id: iterations
        type: u4
      - id: salt
        size: 32
      - id: key_material_offset
        type: u4
        doc: In 512-byte sectors from the start of the LUKS area.
      - id: stripes
        type: u4
        doc: Anti-forensic splitter stripes, normally 4000.
    instances:
      key_material:
        io: _root._io
        pos: key_material_offset * 512
        size: _root.len_master_key * stripes
        if: active == key_slot_state::enabled
        doc: The AF-split, encrypted master key of this slot.
enums:
  key_slot_state:
    0x0000dead: disabled
    0x00ac71f3: enabled
