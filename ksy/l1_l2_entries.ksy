meta:
  id: l1_l2_entries
  title: qcow2 cluster mapping tables (L1 and L2 entries)
  application: QEMU
  license: CC0-1.0
  endian: be
  bit-endian: be
doc: |
  The two-level table that maps guest clusters to host clusters. An L1 table
  (l1_size u64 entries, contiguous) points to L2 tables of one cluster each.
  An L2 entry is 64 bits (standard) or 128 bits (extended L2, incompatible
  bit 4: the descriptor is followed by a subcluster bitmap).

    l2_entries = cluster_size / (extended ? 16 : 8)
    l2_index = (guest_offset / cluster_size) % l2_entries
    l1_index = (guest_offset / cluster_size) / l2_entries

  These types document the layout and serve cross-checks; bulk tables are
  decoded with numpy (qforensics.model.tables).
doc-ref:
  - https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt "Cluster mapping", "Extended L2 Entries"
  - https://gitlab.com/qemu-project/qemu/-/blob/master/block/qcow2-cluster.c qcow2_parse_compressed_l2_entry
seq:
  - id: l1_entry
    type: l1_entry
types:
  l1_table:
    params:
      - id: num_entries
        type: u4
    seq:
      - id: entries
        type: l1_entry
        repeat: expr
        repeat-expr: num_entries
  l1_entry:
    -webide-representation: 'l2={ofs_l2_table:hex} copied={copied}'
    seq:
      - id: copied
        type: b1
        doc: Bit 63. The L2 table's refcount is exactly 1 (active L1 only).
      - id: reserved_high
        type: b7
        doc: Bits 56..62, must be zero.
      - id: l2_table_field
        type: b47
        doc: Bits 9..55 of the L2 table offset; 0 means unallocated.
      - id: reserved_low
        type: b9
        doc: Bits 0..8, must be zero.
    instances:
      ofs_l2_table:
        value: l2_table_field << 9
  l2_table:
    params:
      - id: num_entries
        type: u4
      - id: cluster_bits
        type: u4
      - id: extended
        type: bool
    seq:
      - id: entries
        type:
          switch-on: extended
          cases:
            true: extended_l2_entry(cluster_bits)
            false: l2_entry(cluster_bits)
        repeat: expr
        repeat-expr: num_entries
  l2_entry:
    -webide-representation: 'copied={copied} compressed={compressed} desc={descriptor:hex}'
    params:
      - id: cluster_bits
        type: u4
        doc: Needed to split a compressed descriptor.
    seq:
      - id: copied
        type: b1
        doc: |
          Bit 63. Refcount is exactly 1 (no COW needed); never set for
          compressed clusters; only accurate in tables reachable from the
          active L1.
      - id: compressed
        type: b1
        doc: Bit 62. The descriptor is a compressed cluster descriptor.
      - id: descriptor
        -orig-id: cluster descriptor
        type: b62
    instances:
      # Standard cluster descriptor
      reads_as_zero:
        value: '(descriptor & 1) != 0'
        doc: Bit 0 (version 3, standard L2 only); ignored with extended L2.
      reserved_standard_low:
        value: '(descriptor >> 1) & 0xff'
        doc: Bits 1..8, must be zero.
      ofs_host_cluster:
        value: 'descriptor & 0x00fffffffffffe00'
        doc: Bits 9..55, host cluster offset (aligned); 0 = unallocated unless COPIED with a data file.
      reserved_standard_high:
        value: '(descriptor >> 56) & 0x3f'
        doc: Bits 56..61, must be zero.
      # Compressed cluster descriptor, x = 62 - (cluster_bits - 8)
      compressed_offset_bits:
        value: 62 - (cluster_bits - 8)
      ofs_compressed:
        value: 'descriptor & ((1 << compressed_offset_bits) - 1)'
        doc: Host byte offset of the compressed data (not aligned).
      num_additional_sectors:
        value: '(descriptor >> compressed_offset_bits) & ((1 << (cluster_bits - 8)) - 1)'
        doc: Number of additional 512-byte sectors used by the compressed data.
      len_compressed_max:
        value: '(num_additional_sectors + 1) * 512 - (ofs_compressed & 511)'
        doc: Bytes from ofs_compressed to the end of its last sector (an upper bound).
  extended_l2_entry:
    -webide-representation: 'desc={entry.descriptor:hex} alloc={alloc_bitmap:hex} zero={zero_bitmap:hex}'
    params:
      - id: cluster_bits
        type: u4
    seq:
      - id: entry
        type: l2_entry(cluster_bits)
      - id: zero_bitmap
        type: b32
        doc: Bits 32..63 of the subcluster bitmap; bit 32+x = subcluster x reads as zero.
      - id: alloc_bitmap
        type: b32
        doc: Bits 0..31; bit x = subcluster x is allocated. Reserved (zero) for compressed clusters.
