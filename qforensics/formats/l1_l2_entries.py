# This is a generated file! Please edit source .ksy file and use kaitai-struct-compiler to rebuild
# type: ignore

import kaitaistruct
from kaitaistruct import KaitaiStruct, KaitaiStream, BytesIO


if getattr(kaitaistruct, 'API_VERSION', (0, 9)) < (0, 11):
    raise Exception("Incompatible Kaitai Struct Python API: 0.11 or later is required, but you have %s" % (kaitaistruct.__version__))

class L1L2Entries(KaitaiStruct):
    """The two-level table that maps guest clusters to host clusters. An L1 table
    (l1_size u64 entries, contiguous) points to L2 tables of one cluster each.
    An L2 entry is 64 bits (standard) or 128 bits (extended L2, incompatible
    bit 4: the descriptor is followed by a subcluster bitmap).
    
      l2_entries = cluster_size / (extended ? 16 : 8)
      l2_index = (guest_offset / cluster_size) % l2_entries
      l1_index = (guest_offset / cluster_size) / l2_entries
    
    These types document the layout and serve cross-checks; bulk tables are
    decoded with numpy (qforensics.model.tables).
    
    .. seealso::
       "Cluster mapping", "Extended L2 Entries" - https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt
    
    
    .. seealso::
       qcow2_parse_compressed_l2_entry - https://gitlab.com/qemu-project/qemu/-/blob/master/block/qcow2-cluster.c
    """
    def __init__(self, _io, _parent=None, _root=None):
        super(L1L2Entries, self).__init__(_io)
        self._parent = _parent
        self._root = _root or self
        self._read()

    def _read(self):
        self.l1_entry = L1L2Entries.L1Entry(self._io, self, self._root)


    def _fetch_instances(self):
        pass
        self.l1_entry._fetch_instances()

    class ExtendedL2Entry(KaitaiStruct):
        def __init__(self, cluster_bits, _io, _parent=None, _root=None):
            super(L1L2Entries.ExtendedL2Entry, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self.cluster_bits = cluster_bits
            self._read()

        def _read(self):
            self.entry = L1L2Entries.L2Entry(self.cluster_bits, self._io, self, self._root)
            self.zero_bitmap = self._io.read_bits_int_be(32)
            self.alloc_bitmap = self._io.read_bits_int_be(32)


        def _fetch_instances(self):
            pass
            self.entry._fetch_instances()


    class L1Entry(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(L1L2Entries.L1Entry, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.copied = self._io.read_bits_int_be(1) != 0
            self.reserved_high = self._io.read_bits_int_be(7)
            self.l2_table_field = self._io.read_bits_int_be(47)
            self.reserved_low = self._io.read_bits_int_be(9)


        def _fetch_instances(self):
            pass

        @property
        def ofs_l2_table(self):
            if hasattr(self, '_m_ofs_l2_table'):
                return self._m_ofs_l2_table

            self._m_ofs_l2_table = self.l2_table_field << 9
            return getattr(self, '_m_ofs_l2_table', None)


    class L1Table(KaitaiStruct):
        def __init__(self, num_entries, _io, _parent=None, _root=None):
            super(L1L2Entries.L1Table, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self.num_entries = num_entries
            self._read()

        def _read(self):
            self.entries = []
            for i in range(self.num_entries):
                self.entries.append(L1L2Entries.L1Entry(self._io, self, self._root))



        def _fetch_instances(self):
            pass
            for i in range(len(self.entries)):
                pass
                self.entries[i]._fetch_instances()



    class L2Entry(KaitaiStruct):
        def __init__(self, cluster_bits, _io, _parent=None, _root=None):
            super(L1L2Entries.L2Entry, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self.cluster_bits = cluster_bits
            self._read()

        def _read(self):
            self.copied = self._io.read_bits_int_be(1) != 0
            self.compressed = self._io.read_bits_int_be(1) != 0
            self.descriptor = self._io.read_bits_int_be(62)


        def _fetch_instances(self):
            pass

        @property
        def compressed_offset_bits(self):
            if hasattr(self, '_m_compressed_offset_bits'):
                return self._m_compressed_offset_bits

            self._m_compressed_offset_bits = 62 - (self.cluster_bits - 8)
            return getattr(self, '_m_compressed_offset_bits', None)

        @property
        def len_compressed_max(self):
            """Bytes from ofs_compressed to the end of its last sector (an upper bound)."""
            if hasattr(self, '_m_len_compressed_max'):
                return self._m_len_compressed_max

            self._m_len_compressed_max = (self.num_additional_sectors + 1) * 512 - (self.ofs_compressed & 511)
            return getattr(self, '_m_len_compressed_max', None)

        @property
        def num_additional_sectors(self):
            """Number of additional 512-byte sectors used by the compressed data."""
            if hasattr(self, '_m_num_additional_sectors'):
                return self._m_num_additional_sectors

            self._m_num_additional_sectors = self.descriptor >> self.compressed_offset_bits & (1 << self.cluster_bits - 8) - 1
            return getattr(self, '_m_num_additional_sectors', None)

        @property
        def ofs_compressed(self):
            """Host byte offset of the compressed data (not aligned)."""
            if hasattr(self, '_m_ofs_compressed'):
                return self._m_ofs_compressed

            self._m_ofs_compressed = self.descriptor & (1 << self.compressed_offset_bits) - 1
            return getattr(self, '_m_ofs_compressed', None)

        @property
        def ofs_host_cluster(self):
            """Bits 9..55, host cluster offset (aligned); 0 = unallocated unless COPIED with a data file."""
            if hasattr(self, '_m_ofs_host_cluster'):
                return self._m_ofs_host_cluster

            self._m_ofs_host_cluster = self.descriptor & 72057594037927424
            return getattr(self, '_m_ofs_host_cluster', None)

        @property
        def reads_as_zero(self):
            """Bit 0 (version 3, standard L2 only); ignored with extended L2."""
            if hasattr(self, '_m_reads_as_zero'):
                return self._m_reads_as_zero

            self._m_reads_as_zero = self.descriptor & 1 != 0
            return getattr(self, '_m_reads_as_zero', None)

        @property
        def reserved_standard_high(self):
            """Bits 56..61, must be zero."""
            if hasattr(self, '_m_reserved_standard_high'):
                return self._m_reserved_standard_high

            self._m_reserved_standard_high = self.descriptor >> 56 & 63
            return getattr(self, '_m_reserved_standard_high', None)

        @property
        def reserved_standard_low(self):
            """Bits 1..8, must be zero."""
            if hasattr(self, '_m_reserved_standard_low'):
                return self._m_reserved_standard_low

            self._m_reserved_standard_low = self.descriptor >> 1 & 255
            return getattr(self, '_m_reserved_standard_low', None)


    class L2Table(KaitaiStruct):
        def __init__(self, num_entries, cluster_bits, extended, _io, _parent=None, _root=None):
            super(L1L2Entries.L2Table, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self.num_entries = num_entries
            self.cluster_bits = cluster_bits
            self.extended = extended
            self._read()

        def _read(self):
            self.entries = []
            for i in range(self.num_entries):
                _on = self.extended
                if _on == False:
                    pass
                    self.entries.append(L1L2Entries.L2Entry(self.cluster_bits, self._io, self, self._root))
                elif _on == True:
                    pass
                    self.entries.append(L1L2Entries.ExtendedL2Entry(self.cluster_bits, self._io, self, self._root))



        def _fetch_instances(self):
            pass
            for i in range(len(self.entries)):
                pass
                _on = self.extended
                if _on == False:
                    pass
                    self.entries[i]._fetch_instances()
                elif _on == True:
                    pass
                    self.entries[i]._fetch_instances()




