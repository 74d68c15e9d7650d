# This is a generated file! Please edit source .ksy file and use kaitai-struct-compiler to rebuild
# type: ignore

import kaitaistruct
from kaitaistruct import KaitaiStruct, KaitaiStream, BytesIO


if getattr(kaitaistruct, 'API_VERSION', (0, 9)) < (0, 11):
    raise Exception("Incompatible Kaitai Struct Python API: 0.11 or later is required, but you have %s" % (kaitaistruct.__version__))

class Refcount(KaitaiStruct):
    """Host cluster reference counts, in two levels: a contiguous refcount table of
    u64 entries pointing to refcount blocks of one cluster each. A block holds
    cluster_size * 8 / refcount_bits entries, refcount_bits = 1 << refcount_order
    (0..6). Entries narrower than a byte are packed least significant bits first.
    
      refcount_block_entries = cluster_size * 8 / refcount_bits
      refcount_block_index = (offset / cluster_size) % refcount_block_entries
      refcount_table_index = (offset / cluster_size) / refcount_block_entries
    
    .. seealso::
       "Host cluster management" - https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt
    
    
    .. seealso::
       get_refcount_ro0..ro6 - https://gitlab.com/qemu-project/qemu/-/blob/master/block/qcow2-refcount.c
    """
    def __init__(self, _io, _parent=None, _root=None):
        super(Refcount, self).__init__(_io)
        self._parent = _parent
        self._root = _root or self
        self._read()

    def _read(self):
        self.refcount_table_entry = Refcount.RefcountTableEntry(self._io, self, self._root)


    def _fetch_instances(self):
        pass
        self.refcount_table_entry._fetch_instances()

    class RefcountBlock(KaitaiStruct):
        def __init__(self, refcount_order, cluster_size, _io, _parent=None, _root=None):
            super(Refcount.RefcountBlock, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self.refcount_order = refcount_order
            self.cluster_size = cluster_size
            self._read()

        def _read(self):
            self.entries = []
            for i in range((self.cluster_size if self.refcount_order < 3 else (self.cluster_size * 8) // (1 << self.refcount_order))):
                _on = self.refcount_order
                if _on == 0:
                    pass
                    self.entries.append(Refcount.RefcountPacked1(self._io, self, self._root))
                elif _on == 1:
                    pass
                    self.entries.append(Refcount.RefcountPacked2(self._io, self, self._root))
                elif _on == 2:
                    pass
                    self.entries.append(Refcount.RefcountPacked4(self._io, self, self._root))
                elif _on == 3:
                    pass
                    self.entries.append(self._io.read_u1())
                elif _on == 4:
                    pass
                    self.entries.append(self._io.read_u2be())
                elif _on == 5:
                    pass
                    self.entries.append(self._io.read_u4be())
                elif _on == 6:
                    pass
                    self.entries.append(self._io.read_u8be())



        def _fetch_instances(self):
            pass
            for i in range(len(self.entries)):
                pass
                _on = self.refcount_order
                if _on == 0:
                    pass
                    self.entries[i]._fetch_instances()
                elif _on == 1:
                    pass
                    self.entries[i]._fetch_instances()
                elif _on == 2:
                    pass
                    self.entries[i]._fetch_instances()
                elif _on == 3:
                    pass
                elif _on == 4:
                    pass
                elif _on == 5:
                    pass
                elif _on == 6:
                    pass



    class RefcountPacked1(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(Refcount.RefcountPacked1, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.refcounts = []
            for i in range(8):
                self.refcounts.append(self._io.read_bits_int_le(1) != 0)



        def _fetch_instances(self):
            pass
            for i in range(len(self.refcounts)):
                pass



    class RefcountPacked2(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(Refcount.RefcountPacked2, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.refcounts = []
            for i in range(4):
                self.refcounts.append(self._io.read_bits_int_le(2))



        def _fetch_instances(self):
            pass
            for i in range(len(self.refcounts)):
                pass



    class RefcountPacked4(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(Refcount.RefcountPacked4, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.refcounts = []
            for i in range(2):
                self.refcounts.append(self._io.read_bits_int_le(4))



        def _fetch_instances(self):
            pass
            for i in range(len(self.refcounts)):
                pass



    class RefcountTable(KaitaiStruct):
        def __init__(self, num_entries, _io, _parent=None, _root=None):
            super(Refcount.RefcountTable, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self.num_entries = num_entries
            self._read()

        def _read(self):
            self.entries = []
            for i in range(self.num_entries):
                self.entries.append(Refcount.RefcountTableEntry(self._io, self, self._root))



        def _fetch_instances(self):
            pass
            for i in range(len(self.entries)):
                pass
                self.entries[i]._fetch_instances()



    class RefcountTableEntry(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(Refcount.RefcountTableEntry, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.refcount_block_field = self._io.read_bits_int_be(55)
            self.reserved = self._io.read_bits_int_be(9)


        def _fetch_instances(self):
            pass

        @property
        def ofs_refcount_block(self):
            if hasattr(self, '_m_ofs_refcount_block'):
                return self._m_ofs_refcount_block

            self._m_ofs_refcount_block = self.refcount_block_field << 9
            return getattr(self, '_m_ofs_refcount_block', None)



