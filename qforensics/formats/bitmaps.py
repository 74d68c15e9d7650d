# This is a generated file! Please edit source .ksy file and use kaitai-struct-compiler to rebuild
# type: ignore

import kaitaistruct
from kaitaistruct import KaitaiStruct, KaitaiStream, BytesIO
from enum import IntEnum


if getattr(kaitaistruct, 'API_VERSION', (0, 9)) < (0, 11):
    raise Exception("Incompatible Kaitai Struct Python API: 0.11 or later is required, but you have %s" % (kaitaistruct.__version__))

class Bitmaps(KaitaiStruct):
    """Persistent dirty bitmaps as merged in QEMU 2.10: the 24-byte bitmaps header
    extension (magic 0x23852875), the bitmap directory it points to, and the
    one-level bitmap tables of u64 entries, one per bitmap.
    
    .. seealso::
       "Bitmaps extension", "Bitmap directory", "Bitmap table" - https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt
    
    
    .. seealso::
       check_dir_entry, check_table_entry - https://gitlab.com/qemu-project/qemu/-/blob/master/block/qcow2-bitmap.c
    """

    class BitmapType(IntEnum):
        dirty_tracking = 1
    def __init__(self, _io, _parent=None, _root=None):
        super(Bitmaps, self).__init__(_io)
        self._parent = _parent
        self._root = _root or self
        self._read()

    def _read(self):
        self._raw_directory = self._io.read_bytes_full()
        _io__raw_directory = KaitaiStream(BytesIO(self._raw_directory))
        self.directory = Bitmaps.BitmapDirectory(_io__raw_directory, self, self._root)


    def _fetch_instances(self):
        pass
        self.directory._fetch_instances()

    class BitmapDirectory(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(Bitmaps.BitmapDirectory, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.entries = []
            i = 0
            while not self._io.is_eof():
                self.entries.append(Bitmaps.BitmapDirectoryEntry(self._io, self, self._root))
                i += 1



        def _fetch_instances(self):
            pass
            for i in range(len(self.entries)):
                pass
                self.entries[i]._fetch_instances()



    class BitmapDirectoryEntry(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(Bitmaps.BitmapDirectoryEntry, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.ofs_bitmap_table = self._io.read_u8be()
            self.num_bitmap_table_entries = self._io.read_u4be()
            self._raw_flags = self._io.read_bytes(4)
            _io__raw_flags = KaitaiStream(BytesIO(self._raw_flags))
            self.flags = Bitmaps.BitmapFlags(_io__raw_flags, self, self._root)
            self.bitmap_type = KaitaiStream.resolve_enum(Bitmaps.BitmapType, self._io.read_u1())
            if not  ((self.bitmap_type == Bitmaps.BitmapType.dirty_tracking)) :
                raise kaitaistruct.ValidationNotAnyOfError(self.bitmap_type, self._io, u"/types/bitmap_directory_entry/seq/3")
            self.granularity_bits = self._io.read_u1()
            if not self.granularity_bits <= 63:
                raise kaitaistruct.ValidationGreaterThanError(63, self.granularity_bits, self._io, u"/types/bitmap_directory_entry/seq/4")
            self.len_name = self._io.read_u2be()
            if not self.len_name >= 1:
                raise kaitaistruct.ValidationLessThanError(1, self.len_name, self._io, u"/types/bitmap_directory_entry/seq/5")
            self.len_extra_data = self._io.read_u4be()
            self.extra_data = self._io.read_bytes(self.len_extra_data)
            self.name = self._io.read_bytes(self.len_name)
            self.padding = self._io.read_bytes((8 - ((24 + self.len_extra_data) + self.len_name) % 8) % 8)


        def _fetch_instances(self):
            pass
            self.flags._fetch_instances()


    class BitmapFlags(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(Bitmaps.BitmapFlags, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.reserved = self._io.read_bits_int_be(29)
            self.extra_data_compatible = self._io.read_bits_int_be(1) != 0
            self.auto = self._io.read_bits_int_be(1) != 0
            self.in_use = self._io.read_bits_int_be(1) != 0


        def _fetch_instances(self):
            pass
            _ = self.value
            if hasattr(self, '_m_value'):
                pass


        @property
        def value(self):
            if hasattr(self, '_m_value'):
                return self._m_value

            _pos = self._io.pos()
            self._io.seek(0)
            self._m_value = self._io.read_u4be()
            self._io.seek(_pos)
            return getattr(self, '_m_value', None)


    class BitmapTable(KaitaiStruct):
        def __init__(self, num_entries, _io, _parent=None, _root=None):
            super(Bitmaps.BitmapTable, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self.num_entries = num_entries
            self._read()

        def _read(self):
            self.entries = []
            for i in range(self.num_entries):
                self.entries.append(Bitmaps.BitmapTableEntry(self._io, self, self._root))



        def _fetch_instances(self):
            pass
            for i in range(len(self.entries)):
                pass
                self.entries[i]._fetch_instances()



    class BitmapTableEntry(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(Bitmaps.BitmapTableEntry, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.reserved_high = self._io.read_bits_int_be(8)
            self.data_cluster_field = self._io.read_bits_int_be(47)
            self.reserved_low = self._io.read_bits_int_be(8)
            self.all_ones = self._io.read_bits_int_be(1) != 0


        def _fetch_instances(self):
            pass

        @property
        def ofs_data_cluster(self):
            if hasattr(self, '_m_ofs_data_cluster'):
                return self._m_ofs_data_cluster

            self._m_ofs_data_cluster = self.data_cluster_field << 9
            return getattr(self, '_m_ofs_data_cluster', None)


    class BitmapsExtension(KaitaiStruct):
        """Body of header extension 0x23852875 (24 bytes)."""
        def __init__(self, _io, _parent=None, _root=None):
            super(Bitmaps.BitmapsExtension, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.num_bitmaps = self._io.read_u4be()
            if not self.num_bitmaps >= 1:
                raise kaitaistruct.ValidationLessThanError(1, self.num_bitmaps, self._io, u"/types/bitmaps_extension/seq/0")
            self.reserved = self._io.read_u4be()
            if not self.reserved == 0:
                raise kaitaistruct.ValidationNotEqualError(0, self.reserved, self._io, u"/types/bitmaps_extension/seq/1")
            self.len_bitmap_directory = self._io.read_u8be()
            self.ofs_bitmap_directory = self._io.read_u8be()


        def _fetch_instances(self):
            pass



