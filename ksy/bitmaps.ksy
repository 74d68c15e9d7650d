meta:
  id: bitmaps
  title: qcow2 persistent dirty bitmaps (extension, directory, bitmap table)
  application: QEMU
  license: CC0-1.0
  endian: be
  bit-endian: be
doc: |
  Persistent dirty bitmaps as merged in QEMU 2.10: the 24-byte bitmaps header
  extension (magic 0x23852875), the bitmap directory it points to, and the
  one-level bitmap tables of u64 entries, one per bitmap.
doc-ref:
  - https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt "Bitmaps extension", "Bitmap directory", "Bitmap table"
  - https://gitlab.com/qemu-project/qemu/-/blob/master/block/qcow2-bitmap.c check_dir_entry, check_table_entry
seq:
  - id: directory
    type: bitmap_directory
    size-eos: true
types:
  bitmaps_extension:
    doc: Body of header extension 0x23852875 (24 bytes).
    seq:
      - id: num_bitmaps
        -orig-id: nb_bitmaps
        type: u4
        valid:
          min: 1
        doc: At least 1; QEMU supports at most 65535.
      - id: reserved
        -orig-id: reserved32
        type: u4
        valid: 0
      - id: len_bitmap_directory
        -orig-id: bitmap_directory_size
        type: u8
      - id: ofs_bitmap_directory
        -orig-id: bitmap_directory_offset
        type: u8
        doc: Must be aligned to a cluster boundary.
  bitmap_directory:
    seq:
      - id: entries
        type: bitmap_directory_entry
        repeat: eos
  bitmap_directory_entry:
    -webide-representation: '{name} gran={granularity_bits:dec}'
    seq:
      - id: ofs_bitmap_table
        -orig-id: bitmap_table_offset
        type: u8
        doc: Must be aligned to a cluster boundary.
      - id: num_bitmap_table_entries
        -orig-id: bitmap_table_size
        type: u4
      - id: flags
        type: bitmap_flags
        size: 4
      - id: bitmap_type
        -orig-id: type
        type: u1
        enum: bitmap_type
        valid:
          any-of: ['bitmap_type::dirty_tracking']
      - id: granularity_bits
        type: u1
        valid:
          max: 63
        doc: Granularity is 1 << granularity_bits bytes; QEMU accepts 9..31.
      - id: len_name
        -orig-id: name_size
        type: u2
        valid:
          min: 1
        doc: QEMU accepts at most 1023.
      - id: len_extra_data
        -orig-id: extra_data_size
        type: u4
      - id: extra_data
        size: len_extra_data
      - id: name
        size: len_name
        doc: Unique among the image's bitmaps; not NUL-terminated.
      - id: padding
        size: (8 - (24 + len_extra_data + len_name) % 8) % 8
        doc: Pads the entry to a multiple of 8 bytes; must be zero.
  bitmap_flags:
    seq:
      - id: reserved
        type: b29
        doc: Bits 3..31, must be zero.
      - id: extra_data_compatible
        type: b1
        doc: Bit 2. Extra data may be ignored by readers that do not know it.
      - id: auto
        type: b1
        doc: Bit 1. The bitmap is enabled (tracks writes).
      - id: in_use
        type: b1
        doc: Bit 0. The bitmap was not saved correctly and may be inconsistent.
    instances:
      value:
        pos: 0
        type: u4
  bitmap_table:
    params:
      - id: num_entries
        type: u4
    seq:
      - id: entries
        type: bitmap_table_entry
        repeat: expr
        repeat-expr: num_entries
  bitmap_table_entry:
    -webide-representation: '{ofs_data_cluster:hex} ones={all_ones}'
    seq:
      - id: reserved_high
        type: b8
        doc: Bits 56..63, must be zero.
      - id: data_cluster_field
        type: b47
        doc: Bits 9..55 of the data cluster offset.
      - id: reserved_low
        type: b8
        doc: Bits 1..8, must be zero.
      - id: all_ones
        type: b1
        doc: |
          Bit 0. With offset 0: 1 means the cluster's bits are all ones, 0 all
          zeros. Reserved (must be zero) when the offset is not 0.
    instances:
      ofs_data_cluster:
        value: data_cluster_field << 9
enums:
  bitmap_type:
    1: dirty_tracking
