meta:
  id: qcow2_header
  title: QEMU qcow2 image header (version 2 and 3) and header extensions
  application: QEMU
  file-extension:
    - qcow2
    - qcow
  xref:
    justsolve: Qcow
    wikidata: Q1052299
  license: CC0-1.0
  endian: be
  bit-endian: be
  imports:
    - bitmaps
    - dedup_table
    - draft_dirty_bitmaps
doc: |
  The first cluster of a qcow2 image: the fixed header (72 bytes in version 2,
  header_length bytes in version 3), the header extensions that follow it and
  the backing file name that may follow the extensions.

  Only structures that live in cluster 0 are described here; tables located
  elsewhere in the file have their own specs (l1_l2_entries, refcount,
  snapshot_table, bitmaps, luks1_header, dedup_table, journal,
  draft_dirty_bitmaps).
doc-ref:
  - https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt "Header", "Header extensions"
  - https://gitlab.com/qemu-project/qemu/-/blob/master/block/qcow2.c qcow2_do_open, qcow2_read_extensions
seq:
  - id: magic
    contents: ["QFI", 0xfb]
  - id: version
    type: u4
    valid:
      any-of: [2, 3]
  - id: ofs_backing_file_name
    -orig-id: backing_file_offset
    type: u8
    doc: Offset of the backing file name (not NUL-terminated); 0 if no backing file.
  - id: len_backing_file_name
    -orig-id: backing_file_size
    type: u4
    doc: Length of the backing file name; at most 1023. Undefined without a backing file.
  - id: cluster_bits
    type: u4
    valid:
      min: 9
    doc: 1 << cluster_bits is the cluster size. QEMU accepts 9..21.
  - id: len_virtual_disk
    -orig-id: size
    type: u8
    doc: Virtual disk size in bytes.
  - id: crypt_method
    type: u4
    enum: crypt_method
  - id: num_l1_entries
    -orig-id: l1_size
    type: u4
  - id: ofs_l1_table
    -orig-id: l1_table_offset
    type: u8
    doc: Must be aligned to a cluster boundary.
  - id: ofs_refcount_table
    -orig-id: refcount_table_offset
    type: u8
    doc: Must be aligned to a cluster boundary.
  - id: num_refcount_table_clusters
    -orig-id: refcount_table_clusters
    type: u4
  - id: num_snapshots
    -orig-id: nb_snapshots
    type: u4
  - id: ofs_snapshot_table
    -orig-id: snapshots_offset
    type: u8
    doc: Must be aligned to a cluster boundary.
  - id: incompatible_features
    type: incompatible_features
    size: 8
    if: version >= 3
  - id: compatible_features
    type: compatible_features
    size: 8
    if: version >= 3
  - id: autoclear_features
    type: autoclear_features
    size: 8
    if: version >= 3
  - id: refcount_order
    type: u4
    if: version >= 3
    valid:
      max: 6
    doc: refcount_bits = 1 << refcount_order. Version 2 implies 4.
  - id: len_header
    -orig-id: header_length
    type: u4
    if: version >= 3
    valid:
      min: 104
    doc: Length of the header structure in bytes; a multiple of 8. Version 2 implies 72.
  - id: compression_type
    type: u1
    enum: compression_type
    if: version >= 3 and len_header > 104
    doc: Present when header_length > 104; 0 (deflate) when absent.
  - id: reserved_compression_padding
    size: 7
    if: version >= 3 and len_header > 105
    doc: Padding of the additional fields; must be zero.
instances:
  header_length:
    value: 'version >= 3 ? len_header : 72'
    doc: Where the header extensions start.
  cluster_size:
    value: 1 << cluster_bits
  refcount_bits:
    value: '1 << (version >= 3 ? refcount_order : 4)'
  ext_end:
    value: 'ofs_backing_file_name != 0 ? ofs_backing_file_name : cluster_size'
    doc: QEMU's bound of the extension area (qcow2_read_extensions).
  extensions:
    pos: header_length
    size: ext_end - header_length
    type: header_extension_area
    doc: The header extensions, from the end of the header to the backing file name or the end of cluster 0.
  backing_file_name:
    pos: ofs_backing_file_name
    size: len_backing_file_name
    if: ofs_backing_file_name != 0
    doc: Raw bytes; QEMU treats them as a path. Never NUL-terminated.
types:
  incompatible_features:
    doc: Bitmask of incompatible features; an unknown set bit must make the open fail.
    seq:
      - id: reserved
        type: b59
        doc: Bits 5..63, reserved (set to 0).
      - id: extended_l2
        type: b1
        doc: Bit 4. L2 entries are 128 bits wide, with a subcluster bitmap.
      - id: compression_type
        type: b1
        doc: Bit 3. compression_type is present and not 0.
      - id: external_data_file
        type: b1
        doc: Bit 2. Guest data is stored in an external data file.
      - id: corrupt
        type: b1
        doc: |
          Bit 1. Upstream: the image is corrupt. In the 2012 deduplication
          draft (seed 000) this bit meant "deduplication is used".
      - id: dirty
        type: b1
        doc: Bit 0. Refcounts may be inconsistent (lazy refcounts).
    instances:
      value:
        pos: 0
        type: u8
  compatible_features:
    doc: Bitmask of compatible features; unknown bits may be ignored.
    seq:
      - id: reserved
        type: b63
      - id: lazy_refcounts
        type: b1
        doc: Bit 0.
    instances:
      value:
        pos: 0
        type: u8
  autoclear_features:
    doc: Bitmask of auto-clear features; a writer clears unknown bits.
    seq:
      - id: reserved
        type: b62
      - id: data_file_raw
        type: b1
        doc: Bit 1. The external data file is a valid raw image by itself.
      - id: bitmaps
        type: b1
        doc: Bit 0. The bitmaps extension data is consistent.
    instances:
      value:
        pos: 0
        type: u8
  header_extension_area:
    seq:
      - id: extensions
        type: header_extension
        repeat: until
        repeat-until: _.ext_type == extension_type::end or _io.eof
  header_extension:
    -webide-representation: '{ext_type} len={len_data:dec}'
    seq:
      - id: ext_type
        -orig-id: type
        type: u4
        enum: extension_type
      - id: len_data
        -orig-id: length
        type: u4
      - id: data
        size: len_data
        type:
          switch-on: ext_type
          cases:
            'extension_type::backing_file_format': backing_file_format
            'extension_type::feature_name_table': feature_name_table
            'extension_type::bitmaps': bitmaps_extension_any
            'extension_type::full_disk_encryption': full_disk_encryption_header_pointer
            'extension_type::external_data_file': external_data_file_name
            'extension_type::deduplication': dedup_table::dedup_extension
      - id: padding
        size: (8 - len_data % 8) % 8
        doc: Pads the extension to a multiple of 8 bytes; not guaranteed to be zero.
  backing_file_format:
    doc: Name of the backing file format, e.g. "qcow2" or "raw"; not NUL-terminated.
    seq:
      - id: name
        size-eos: true
  external_data_file_name:
    doc: |
      Name of the external data file (incompatible bit 2); not NUL-terminated.
      Taken by QEMU as a path relative to the image.
    seq:
      - id: name
        size-eos: true
  feature_name_table:
    doc: Names of feature bits, used to report unknown features by name.
    seq:
      - id: entries
        type: feature_name
        repeat: eos
  feature_name:
    -webide-representation: '{feature_type} bit {bit:dec}'
    seq:
      - id: feature_type
        -orig-id: type
        type: u1
        enum: feature_type
      - id: bit
        -orig-id: bit number
        type: u1
        valid:
          max: 63
      - id: name
        size: 46
        doc: Zero-padded, not NUL-terminated when all 46 bytes are used.
  full_disk_encryption_header_pointer:
    doc: Where the LUKS header lives; present if and only if crypt_method is LUKS.
    seq:
      - id: ofs_encryption_header
        -orig-id: offset
        type: u8
        doc: Must be aligned to a cluster boundary.
      - id: len_encryption_header
        -orig-id: length
        type: u8
  bitmaps_extension_any:
    doc: |
      The bitmaps magic 0x23852875 is shared by the merged bitmaps extension
      (24-byte body) and the 2015 draft "dirty bitmaps" extension (12-byte
      body, seed 003). The body length tells them apart.
    seq:
      - id: upstream
        type: bitmaps::bitmaps_extension
        if: _io.size == 24
      - id: draft
        type: draft_dirty_bitmaps::dirty_bitmaps_extension
        if: _io.size == 12
      - id: unrecognised
        size-eos: true
        if: _io.size != 24 and _io.size != 12
enums:
  crypt_method:
    0: none
    1: aes
    2: luks
  compression_type:
    0: deflate
    1: zstd
  feature_type:
    0: incompatible
    1: compatible
    2: autoclear
  extension_type:
    0x00000000: end
    0xe2792aca: backing_file_format
    0x6803f857: feature_name_table
    0x23852875: bitmaps
    0x0537be77: full_disk_encryption
    0x44415441: external_data_file
    0xcd8e819b: deduplication
