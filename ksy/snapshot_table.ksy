meta:
  id: snapshot_table
  title: qcow2 internal snapshot table
  application: QEMU
  license: CC0-1.0
  endian: be
doc: |
  A contiguous table of nb_snapshots variable-length entries at
  snapshots_offset, each padded to a multiple of 8 bytes. Version 3 images
  require at least 16 bytes of extra data (vm_state_size_large, disk_size).
doc-ref:
  - https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt "Snapshots"
  - https://gitlab.com/qemu-project/qemu/-/blob/master/block/qcow2-snapshot.c qcow2_do_read_snapshots
params:
  - id: num_snapshots
    type: u4
seq:
  - id: entries
    type: snapshot_entry
    repeat: expr
    repeat-expr: num_snapshots
types:
  snapshot_entry:
    -webide-representation: '#{id} {name} l1={ofs_l1_table:hex}'
    seq:
      - id: ofs_l1_table
        -orig-id: l1_table_offset
        type: u8
        doc: Must be aligned to a cluster boundary.
      - id: num_l1_entries
        -orig-id: l1_size
        type: u4
      - id: len_id
        -orig-id: id_str_size
        type: u2
      - id: len_name
        -orig-id: name_size
        type: u2
      - id: date_sec
        type: u4
        doc: Seconds since the Unix epoch when the snapshot was taken.
      - id: date_nsec
        type: u4
      - id: vm_clock_nsec
        type: u8
        doc: Guest clock when the snapshot was taken, in nanoseconds.
      - id: len_vm_state_small
        -orig-id: vm_state_size
        type: u4
        doc: Size of the saved VM state; overridden by vm_state_size_large.
      - id: len_extra_data
        -orig-id: extra_data_size
        type: u4
        doc: QEMU accepts at most 1024.
      - id: extra_data
        type: snapshot_extra_data
        size: len_extra_data
      - id: id
        -orig-id: unique ID string
        size: len_id
        doc: Not NUL-terminated.
      - id: name
        size: len_name
        doc: Not NUL-terminated.
      - id: padding
        size: (8 - (40 + len_extra_data + len_id + len_name) % 8) % 8
  snapshot_extra_data:
    seq:
      - id: len_vm_state
        -orig-id: vm_state_size_large
        type: u8
        if: _io.size >= 8
      - id: len_virtual_disk
        -orig-id: disk_size
        type: u8
        if: _io.size >= 16
        doc: Virtual disk size of the snapshot.
      - id: icount
        type: s8
        if: _io.size >= 24
        doc: Guest instruction count, or -1 when icount was disabled.
      - id: unknown
        size-eos: true
        doc: Extra data this spec does not know; preserved by QEMU.
