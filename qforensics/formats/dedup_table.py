# This is a generated file! Please edit source .ksy file and use kaitai-struct-compiler to rebuild
# type: ignore

import kaitaistruct
from kaitaistruct import KaitaiStruct, KaitaiStream, BytesIO
from enum import IntEnum


if getattr(kaitaistruct, 'API_VERSION', (0, 9)) < (0, 11):
    raise Exception("Incompatible Kaitai Struct Python API: 0.11 or later is required, but you have %s" % (kaitaistruct.__version__))

class DedupTable(KaitaiStruct):
    """The deduplication draft (Benoit Canet, "[RFC V3] qcow2: Add deduplication",
    November 2012) adds header extension 0xCD8E819B that points to a two-level
    table indexed by physical cluster index. Level 1 holds 64-bit offsets of
    level-2 clusters; each level-2 cluster holds cluster_size / 40 entries of a
    SHA-256 hash and the logical (guest) offset of the first block having it.
    
      l2_dedup_cluster_entries = cluster_size / (32 + 8)
      l1_dedup_index = physical_cluster_index / l2_dedup_cluster_entries
      l2_dedup_index = physical_cluster_index % l2_dedup_cluster_entries
    
    The V5/V6 series grew the extension body with a hash algorithm and a
    strategy byte; both bodies are accepted here.
    
    .. seealso::
       ../shared/seeds 000 "Deduplication", "Deduplication table"
    
    
    .. seealso::
       Source - http://lists.endsoftwarepatents.org/archive/html/qemu-devel/2012-11/msg02813.html
    """

    class HashAlgorithm(IntEnum):
        sha256 = 0
        sha3 = 1
        skein256 = 2
    def __init__(self, _io, _parent=None, _root=None):
        super(DedupTable, self).__init__(_io)
        self._parent = _parent
        self._root = _root or self
        self._read()

    def _read(self):
        self._raw_l2_cluster = self._io.read_bytes_full()
        _io__raw_l2_cluster = KaitaiStream(BytesIO(self._raw_l2_cluster))
        self.l2_cluster = DedupTable.DedupL2Cluster(_io__raw_l2_cluster, self, self._root)


    def _fetch_instances(self):
        pass
        self.l2_cluster._fetch_instances()

    class DedupEntry(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(DedupTable.DedupEntry, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.hash = self._io.read_bytes(32)
            self.ofs_logical = self._io.read_u8be()


        def _fetch_instances(self):
            pass


    class DedupExtension(KaitaiStruct):
        """Body of header extension 0xCD8E819B."""
        def __init__(self, _io, _parent=None, _root=None):
            super(DedupTable.DedupExtension, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.ofs_dedup_table = self._io.read_u8be()
            self.len_dedup_table = self._io.read_u4be()
            if (not (self._io.is_eof())):
                pass
                self.hash_algorithm = KaitaiStream.resolve_enum(DedupTable.HashAlgorithm, self._io.read_u1())

            if (not (self._io.is_eof())):
                pass
                self.strategy = self._io.read_u1()

            self.reserved = self._io.read_bytes_full()


        def _fetch_instances(self):
            pass
            if (not (self._io.is_eof())):
                pass

            if (not (self._io.is_eof())):
                pass



    class DedupL1Table(KaitaiStruct):
        def __init__(self, num_entries, _io, _parent=None, _root=None):
            super(DedupTable.DedupL1Table, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self.num_entries = num_entries
            self._read()

        def _read(self):
            self.entries = []
            for i in range(self.num_entries):
                self.entries.append(self._io.read_u8be())



        def _fetch_instances(self):
            pass
            for i in range(len(self.entries)):
                pass



    class DedupL2Cluster(KaitaiStruct):
        """One cluster of level-2 entries; a tail shorter than an entry is padding."""
        def __init__(self, _io, _parent=None, _root=None):
            super(DedupTable.DedupL2Cluster, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.entries = []
            for i in range(self._io.size() // 40):
                self.entries.append(DedupTable.DedupEntry(self._io, self, self._root))



        def _fetch_instances(self):
            pass
            for i in range(len(self.entries)):
                pass
                self.entries[i]._fetch_instances()




