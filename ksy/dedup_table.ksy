meta:
  id: dedup_table
  title: qcow2 deduplication table, 2012-2013 draft (never merged)
  application: QEMU (RFC patches by Benoit Canet)
  license: CC0-1.0
  endian: be
doc: |
  The deduplication draft (Benoit Canet, "[RFC V3] qcow2: Add deduplication",
  November 2012) adds header extension 0xCD8E819B that points to a two-level
  table indexed by physical cluster index. Level 1 holds 64-bit offsets of
  level-2 clusters; each level-2 cluster holds cluster_size / 40 entries of a
  SHA-256 hash and the logical (guest) offset of the first block having it.

    l2_dedup_cluster_entries = cluster_size / (32 + 8)
    l1_dedup_index = physical_cluster_index / l2_dedup_cluster_entries
    l2_dedup_index = physical_cluster_index % l2_dedup_cluster_entries

  The V5/V6 series grew the extension body with a hash algorithm and a
  strategy byte; both bodies are accepted here.
doc-ref:
  - ../shared/seeds 000 "Deduplication", "Deduplication table"
  - http://lists.endsoftwarepatents.org/archive/html/qemu-devel/2012-11/msg02813.html
seq:
  - id: l2_cluster
    type: dedup_l2_cluster
    size-eos: true
types:
  dedup_extension:
    doc: Body of header extension 0xCD8E819B.
    seq:
      - id: ofs_dedup_table
        -orig-id: offset
        type: u8
        doc: Offset of the level-1 deduplication table.
      - id: len_dedup_table
        -orig-id: size
        type: u4
        doc: Size of the level-1 table (unit left open by the draft; see docs/drafts.md).
      - id: hash_algorithm
        type: u1
        enum: hash_algorithm
        if: not _io.eof
        doc: V5/V6 only.
      - id: strategy
        type: u1
        if: not _io.eof
        doc: V5/V6 only. Bit 0 RAM lookup, bit 1 disk lookup, bit 2 dedup running.
      - id: reserved
        size-eos: true
  dedup_l1_table:
    params:
      - id: num_entries
        type: u4
    seq:
      - id: entries
        type: u8
        repeat: expr
        repeat-expr: num_entries
        doc: Offsets of level-2 deduplication clusters; 0 when not allocated.
  dedup_l2_cluster:
    doc: One cluster of level-2 entries; a tail shorter than an entry is padding.
    seq:
      - id: entries
        type: dedup_entry
        repeat: expr
        repeat-expr: _io.size / 40
  dedup_entry:
    -webide-representation: 'ofs={ofs_logical:hex}'
    seq:
      - id: hash
        size: 32
        doc: SHA-256 of the cluster's content.
      - id: ofs_logical
        -orig-id: logical offset
        type: u8
        doc: Guest offset of the first block that had this hash.
enums:
  hash_algorithm:
    0: sha256
    1: sha3
    2: skein256
