meta:
  id: journal
  title: qcow2 metadata journal, 2013 draft (never merged)
  application: QEMU (RFC V8 patches by Benoit Canet)
  license: CC0-1.0
  endian: be
doc: |
  A journal is a sequential log of entries appended to a previously
  allocated area reset to 0xFF. It is divided into 4096-byte journal
  clusters; no entry spans two clusters. An entry is a size byte
  (size = 2 + n, at most 254), a type byte and n payload bytes. A TYPE_END
  entry closes a journal cluster and points to the next one; the size of a
  TYPE_NONE entry is 255 (the 0xFF fill). Replay stops at the first
  TYPE_NONE entry.
doc-ref:
  - '../shared/seeds 004: [RFC V8 01/24] qcow2: Add journal specification'
seq:
  - id: clusters
    type: journal_cluster
    size: 4096
    repeat: eos
types:
  journal_cluster:
    doc: One 4096-byte journal cluster.
    seq:
      - id: entries
        type: journal_entry
        repeat: until
        repeat-until: '_.entry_type != entry_type::hash or _io.eof'
      - id: rest
        size-eos: true
        doc: Bytes after the closing END or NONE entry.
  journal_entry:
    -webide-representation: '{entry_type} size={len_entry:dec}'
    seq:
      - id: len_entry
        -orig-id: size
        type: u1
        doc: 2 + n; at most 254 except for NONE entries (255).
      - id: entry_type
        -orig-id: type
        type: u1
        enum: entry_type
      - id: payload
        size: 'len_entry >= 2 ? (len_entry - 2 <= _io.size - _io.pos ? len_entry - 2 : _io.size - _io.pos) : 0'
        if: entry_type != entry_type::none
        doc: Clipped to the cluster when the size overruns it (a defect to report).
enums:
  entry_type:
    0xff: none
    1: end
    2: hash
