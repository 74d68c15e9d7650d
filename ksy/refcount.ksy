meta:
  id: refcount
  title: qcow2 reference counts (refcount table and refcount blocks)
  application: QEMU
  license: CC0-1.0
  endian: be
  bit-endian: be
doc: |
  Host cluster reference counts, in two levels: a contiguous refcount table of
  u64 entries pointing to refcount blocks of one cluster each. A block holds
  cluster_size * 8 / refcount_bits entries, refcount_bits = 1 << refcount_order
  (0..6). Entries narrower than a byte are packed least significant bits first.

    refcount_block_entries = cluster_size * 8 / refcount_bits
    refcount_block_index = (offset / cluster_size) % refcount_block_entries
    refcount_table_index = (offset / cluster_size) / refcount_block_entries
doc-ref:
  - https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt "Host cluster management"
  - https://gitlab.com/qemu-project/qemu/-/blob/master/block/qcow2-refcount.c get_refcount_ro0..ro6
seq:
  - id: refcount_table_entry
    type: refcount_table_entry
types:
  refcount_table:
    params:
      - id: num_entries
        type: u4
    seq:
      - id: entries
        type: refcount_table_entry
        repeat: expr
        repeat-expr: num_entries
  refcount_table_entry:
    -webide-representation: '{ofs_refcount_block:hex}'
    seq:
      - id: refcount_block_field
        type: b55
        doc: Bits 9..63 of the refcount block offset; 0 = not allocated (all refcounts 0).
      - id: reserved
        type: b9
        doc: Bits 0..8, must be zero.
    instances:
      ofs_refcount_block:
        value: refcount_block_field << 9
  refcount_block:
    params:
      - id: refcount_order
        type: u4
      - id: cluster_size
        type: u4
    seq:
      - id: entries
        type:
          switch-on: refcount_order
          cases:
            0: refcount_packed_1
            1: refcount_packed_2
            2: refcount_packed_4
            3: u1
            4: u2
            5: u4
            6: u8
        repeat: expr
        repeat-expr: 'refcount_order < 3 ? cluster_size : cluster_size * 8 / (1 << refcount_order)'
        doc: |
          For refcount_order 0..2 each element is one byte holding 8, 4 or 2
          refcounts; for 3..6 each element is one refcount.
  refcount_packed_1:
    meta:
      bit-endian: le
    seq:
      - id: refcounts
        type: b1
        repeat: expr
        repeat-expr: 8
  refcount_packed_2:
    meta:
      bit-endian: le
    seq:
      - id: refcounts
        type: b2
        repeat: expr
        repeat-expr: 4
  refcount_packed_4:
    meta:
      bit-endian: le
    seq:
      - id: refcounts
        type: b4
        repeat: expr
        repeat-expr: 2
