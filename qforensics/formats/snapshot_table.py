# This is a generated file! Please edit source .ksy file and use kaitai-struct-compiler to rebuild
# type: ignore

import kaitaistruct
from kaitaistruct import KaitaiStruct, KaitaiStream, BytesIO


if getattr(kaitaistruct, 'API_VERSION', (0, 9)) < (0, 11):
    raise Exception("Incompatible Kaitai Struct Python API: 0.11 or later is required, but you have %s" % (kaitaistruct.__version__))

class SnapshotTable(KaitaiStruct):
    """A contiguous table of nb_snapshots variable-length entries at
    snapshots_offset, each padded to a multiple of 8 bytes. Version 3 images
    require at least 16 bytes of extra data (vm_state_size_large, disk_size).
    
    .. seealso::
       "Snapshots" - https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt
    
    
    .. seealso::
       qcow2_do_read_snapshots - https://gitlab.com/qemu-project/qemu/-/blob/master/block/qcow2-snapshot.c
    """
    def __init__(self, num_snapshots, _io, _parent=None, _root=None):
        super(SnapshotTable, self).__init__(_io)
        self._parent = _parent
        self._root = _root or self
        self.num_snapshots = num_snapshots
        self._read()

    def _read(self):
        self.entries = []
        for i in range(self.num_snapshots):
            self.entries.append(SnapshotTable.SnapshotEntry(self._io, self, self._root))



    def _fetch_instances(self):
        pass
        for i in range(len(self.entries)):
            pass
            self.entries[i]._fetch_instances()


    class SnapshotEntry(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(SnapshotTable.SnapshotEntry, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.ofs_l1_table = self._io.read_u8be()
            self.num_l1_entries = self._io.read_u4be()
            self.len_id = self._io.read_u2be()
            self.len_name = self._io.read_u2be()
            self.date_sec = self._io.read_u4be()
            self.date_nsec = self._io.read_u4be()
            self.vm_clock_nsec = self._io.read_u8be()
            self.len_vm_state_small = self._io.read_u4be()
            self.len_extra_data = self._io.read_u4be()
            self._raw_extra_data = self._io.read_bytes(self.len_extra_data)
            _io__raw_extra_data = KaitaiStream(BytesIO(self._raw_extra_data))
            self.extra_data = SnapshotTable.SnapshotExtraData(_io__raw_extra_data, self, self._root)
            self.id = self._io.read_bytes(self.len_id)
            self.name = self._io.read_bytes(self.len_name)
            self.padding = self._io.read_bytes((8 - (((40 + self.len_extra_data) + self.len_id) + self.len_name) % 8) % 8)


        def _fetch_instances(self):
            pass
            self.extra_data._fetch_instances()


    class SnapshotExtraData(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(SnapshotTable.SnapshotExtraData, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            if self._io.size() >= 8:
                pass
                self.len_vm_state = self._io.read_u8be()

            if self._io.size() >= 16:
                pass
                self.len_virtual_disk = self._io.read_u8be()

            if self._io.size() >= 24:
                pass
                self.icount = self._io.read_s8be()

            self.unknown = self._io.read_bytes_full()


        def _fetch_instances(self):
            pass
            if self._io.size() >= 8:
                pass

            if self._io.size() >= 16:
                pass

            if self._io.size() >= 24:
                pass




