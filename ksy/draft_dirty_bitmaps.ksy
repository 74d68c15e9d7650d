meta:
  id: draft_dirty_bitmaps
  title: qcow2 dirty bitmaps, 2015 draft layout (never merged)
  application: QEMU (RFC patches, June 2015)
  license: CC0-1.0
  endian: be
  bit-endian: be
doc: |
  The first persistent dirty bitmaps proposal (Vladimir Sementsov-Ogievskiy,
  "[PATCH 1/8] spec: add qcow2-dirty-bitmaps specification", June 2015). It
  uses the same extension magic as the merged bitmaps extension (0x23852875)
  but a 12-byte body, a bitmap table of variable-length entries and a
  one-level L1 table per bitmap whose entries are standard cluster
  descriptors. No released QEMU wrote it.
doc-ref:
  - ../shared/seeds 003 "Dirty bitmaps"
seq:
  - id: bitmap_table
    type: dirty_bitmap_table_entry
    repeat: eos
types:
  dirty_bitmaps_extension:
    doc: Body of header extension 0x23852875 in the draft (12 bytes).
    seq:
      - id: num_dirty_bitmaps
        -orig-id: nb_dirty_bitmaps
        type: u4
      - id: ofs_dirty_bitmaps
        -orig-id: dirty_bitmaps_offset
        type: u8
        doc: Offset of the bitmap table; must be aligned to a cluster boundary.
  dirty_bitmap_table:
    params:
      - id: num_bitmaps
        type: u4
    seq:
      - id: entries
        type: dirty_bitmap_table_entry
        repeat: expr
        repeat-expr: num_bitmaps
  dirty_bitmap_table_entry:
    -webide-representation: '{name} l1={ofs_l1_table:hex}'
    seq:
      - id: ofs_l1_table
        -orig-id: l1 table offset
        type: u8
        doc: Must be aligned to a cluster boundary.
      - id: num_l1_entries
        -orig-id: l1 size
        type: u4
      - id: granularity
        type: u4
        doc: Bitmap granularity in bytes.
      - id: num_sectors
        -orig-id: size
        type: u8
        doc: Size of the tracked disk in 512-byte sectors.
      - id: len_name
        -orig-id: name size
        type: u2
      - id: name
        size: len_name
      - id: padding
        size: (8 - (26 + len_name) % 8) % 8
  dirty_bitmap_l1_table:
    params:
      - id: num_entries
        type: u4
    seq:
      - id: entries
        type: dirty_bitmap_l1_entry
        repeat: expr
        repeat-expr: num_entries
  dirty_bitmap_l1_entry:
    -webide-representation: '{ofs_cluster:hex}'
    seq:
      - id: reserved
        type: b2
        doc: Bits 62..63, reserved.
      - id: reserved_descriptor_high
        type: b6
        doc: Bits 56..61 of the standard cluster descriptor, reserved.
      - id: cluster_field
        type: b47
        doc: Bits 9..55 of the host cluster offset.
      - id: reserved_descriptor_low
        type: b8
        doc: Bits 1..8 of the standard cluster descriptor, reserved.
      - id: all_zero
        type: b1
        doc: Bit 0 of the standard cluster descriptor, the cluster reads as zeros.
    instances:
      ofs_cluster:
        value: cluster_field << 9
