# This is a generated file! Please edit source .ksy file and use kaitai-struct-compiler to rebuild
# type: ignore

import kaitaistruct
from kaitaistruct import KaitaiStruct, KaitaiStream, BytesIO


if getattr(kaitaistruct, 'API_VERSION', (0, 9)) < (0, 11):
    raise Exception("Incompatible Kaitai Struct Python API: 0.11 or later is required, but you have %s" % (kaitaistruct.__version__))

class DraftDirtyBitmaps(KaitaiStruct):
    """The first persistent dirty bitmaps proposal (Vladimir Sementsov-Ogievskiy,
    "[PATCH 1/8] spec: add qcow2-dirty-bitmaps specification", June 2015). It
    uses the same extension magic as the merged bitmaps extension (0x23852875)
    but a 12-byte body, a bitmap table of variable-length entries and a
    one-level L1 table per bitmap whose entries are standard cluster
    descriptors. No released QEMU wrote it.
    
    .. seealso::
       ../shared/seeds 003 "Dirty bitmaps"
    """
    def __init__(self, _io, _parent=None, _root=None):
        super(DraftDirtyBitmaps, self).__init__(_io)
        self._parent = _parent
        self._root = _root or self
        self._read()

    def _read(self):
        self.bitmap_table = []
        i = 0
        while not self._io.is_eof():
            self.bitmap_table.append(DraftDirtyBitmaps.DirtyBitmapTableEntry(self._io, self, self._root))
            i += 1



    def _fetch_instances(self):
        pass
        for i in range(len(self.bitmap_table)):
            pass
            self.bitmap_table[i]._fetch_instances()


    class DirtyBitmapL1Entry(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(DraftDirtyBitmaps.DirtyBitmapL1Entry, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.reserved = self._io.read_bits_int_be(2)
            self.reserved_descriptor_high = self._io.read_bits_int_be(6)
            self.cluster_field = self._io.read_bits_int_be(47)
            self.reserved_descriptor_low = self._io.read_bits_int_be(8)
            self.all_zero = self._io.read_bits_int_be(1) != 0


        def _fetch_instances(self):
            pass

        @property
        def ofs_cluster(self):
            if hasattr(self, '_m_ofs_cluster'):
                return self._m_ofs_cluster

            self._m_ofs_cluster = self.cluster_field << 9
            return getattr(self, '_m_ofs_cluster', None)


    class DirtyBitmapL1Table(KaitaiStruct):
        def __init__(self, num_entries, _io, _parent=None, _root=None):
            super(DraftDirtyBitmaps.DirtyBitmapL1Table, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self.num_entries = num_entries
            self._read()

        def _read(self):
            self.entries = []
            for i in range(self.num_entries):
                self.entries.append(DraftDirtyBitmaps.DirtyBitmapL1Entry(self._io, self, self._root))



        def _fetch_instances(self):
            pass
            for i in range(len(self.entries)):
                pass
                self.entries[i]._fetch_instances()



    class DirtyBitmapTable(KaitaiStruct):
        def __init__(self, num_bitmaps, _io, _parent=None, _root=None):
            super(DraftDirtyBitmaps.DirtyBitmapTable, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self.num_bitmaps = num_bitmaps
            self._read()

        def _read(self):
            self.entries = []
            for i in range(self.num_bitmaps):
                self.entries.append(DraftDirtyBitmaps.DirtyBitmapTableEntry(self._io, self, self._root))



        def _fetch_instances(self):
            pass
            for i in range(len(self.entries)):
                pass
                self.entries[i]._fetch_instances()



    class DirtyBitmapTableEntry(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(DraftDirtyBitmaps.DirtyBitmapTableEntry, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.ofs_l1_table = self._io.read_u8be()
            self.num_l1_entries = self._io.read_u4be()
            self.granularity = self._io.read_u4be()
            self.num_sectors = self._io.read_u8be()
            self.len_name = self._io.read_u2be()
            self.name = self._io.read_bytes(self.len_name)
            self.padding = self._io.read_bytes((8 - (26 + self.len_name) % 8) % 8)


        def _fetch_instances(self):
            pass


    class DirtyBitmapsExtension(KaitaiStruct):
        """Body of header extension 0x23852875 in the draft (12 bytes)."""
        def __init__(self, _io, _parent=None, _root=None):
            super(DraftDirtyBitmaps.DirtyBitmapsExtension, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.num_dirty_bitmaps = self._io.read_u4be()
            self.ofs_dirty_bitmaps = self._io.read_u8be()


        def _fetch_instances(self):
            pass



