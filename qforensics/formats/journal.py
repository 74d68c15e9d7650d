# This is a generated file! Please edit source .ksy file and use kaitai-struct-compiler to rebuild
# type: ignore

import kaitaistruct
from kaitaistruct import KaitaiStruct, KaitaiStream, BytesIO
from enum import IntEnum


if getattr(kaitaistruct, 'API_VERSION', (0, 9)) < (0, 11):
    raise Exception("Incompatible Kaitai Struct Python API: 0.11 or later is required, but you have %s" % (kaitaistruct.__version__))

class Journal(KaitaiStruct):
    """A journal is a sequential log of entries appended to a previously
    allocated area reset to 0xFF. It is divided into 4096-byte journal
    clusters; no entry spans two clusters. An entry is a size byte
    (size = 2 + n, at most 254), a type byte and n payload bytes. A TYPE_END
    entry closes a journal cluster and points to the next one; the size of a
    TYPE_NONE entry is 255 (the 0xFF fill). Replay stops at the first
    TYPE_NONE entry.
    
    .. seealso::
       ../shared/seeds 004: [RFC V8 01/24] qcow2: Add journal specification
    """

    class EntryType(IntEnum):
        end = 1
        hash = 2
        none = 255
    def __init__(self, _io, _parent=None, _root=None):
        super(Journal, self).__init__(_io)
        self._parent = _parent
        self._root = _root or self
        self._read()

    def _read(self):
        self._raw_clusters = []
        self.clusters = []
        i = 0
        while not self._io.is_eof():
            self._raw_clusters.append(self._io.read_bytes(4096))
            _io__raw_clusters = KaitaiStream(BytesIO(self._raw_clusters[-1]))
            self.clusters.append(Journal.JournalCluster(_io__raw_clusters, self, self._root))
            i += 1



    def _fetch_instances(self):
        pass
        for i in range(len(self.clusters)):
            pass
            self.clusters[i]._fetch_instances()


    class JournalCluster(KaitaiStruct):
        """One 4096-byte journal cluster."""
        def __init__(self, _io, _parent=None, _root=None):
            super(Journal.JournalCluster, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.entries = []
            i = 0
            while True:
                _ = Journal.JournalEntry(self._io, self, self._root)
                self.entries.append(_)
                if  ((_.entry_type != Journal.EntryType.hash) or (self._io.is_eof())) :
                    break
                i += 1
            self.rest = self._io.read_bytes_full()


        def _fetch_instances(self):
            pass
            for i in range(len(self.entries)):
                pass
                self.entries[i]._fetch_instances()



    class JournalEntry(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(Journal.JournalEntry, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.len_entry = self._io.read_u1()
            self.entry_type = KaitaiStream.resolve_enum(Journal.EntryType, self._io.read_u1())
            if self.entry_type != Journal.EntryType.none:
                pass
                self.payload = self._io.read_bytes(((self.len_entry - 2 if self.len_entry - 2 <= self._io.size() - self._io.pos() else self._io.size() - self._io.pos()) if self.len_entry >= 2 else 0))



        def _fetch_instances(self):
            pass
            if self.entry_type != Journal.EntryType.none:
                pass




