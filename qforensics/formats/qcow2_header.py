# This is a generated file! Please edit source .ksy file and use kaitai-struct-compiler to rebuild
# type: ignore

import kaitaistruct
from kaitaistruct import KaitaiStruct, KaitaiStream, BytesIO
from . import dedup_table
from . import draft_dirty_bitmaps
from . import bitmaps
from enum import IntEnum


if getattr(kaitaistruct, 'API_VERSION', (0, 9)) < (0, 11):
    raise Exception("Incompatible Kaitai Struct Python API: 0.11 or later is required, but you have %s" % (kaitaistruct.__version__))

class Qcow2Header(KaitaiStruct):
    """The first cluster of a qcow2 image: the fixed header (72 bytes in version 2,
    header_length bytes in version 3), the header extensions that follow it and
    the backing file name that may follow the extensions.
    
    Only structures that live in cluster 0 are described here; tables located
    elsewhere in the file have their own specs (l1_l2_entries, refcount,
    snapshot_table, bitmaps, luks1_header, dedup_table, journal,
    draft_dirty_bitmaps).
    
    .. seealso::
       "Header", "Header extensions" - https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt
    
    
    .. seealso::
       qcow2_do_open, qcow2_read_extensions - https://gitlab.com/qemu-project/qemu/-/blob/master/block/qcow2.c
    """

    class CompressionType(IntEnum):
        deflate = 0
        zstd = 1

    class CryptMethod(IntEnum):
        none = 0
        aes = 1
        luks = 2

    class ExtensionType(IntEnum):
        end = 0
        full_disk_encryption = 87539319
        bitmaps = 595929205
        external_data_file = 1145132097
        feature_name_table = 1745090647
        deduplication = 3448668571
        backing_file_format = 3799591626

    class FeatureType(IntEnum):
        incompatible = 0
        compatible = 1
        autoclear = 2
    def __init__(self, _io, _parent=None, _root=None):
        super(Qcow2Header, self).__init__(_io)
        self._parent = _parent
        self._root = _root or self
        self._read()

    def _read(self):
        self.magic = self._io.read_bytes(4)
        if not self.magic == b"\x51\x46\x49\xFB":
            raise kaitaistruct.ValidationNotEqualError(b"\x51\x46\x49\xFB", self.magic, self._io, u"/seq/0")
        self.version = self._io.read_u4be()
        if not  ((self.version == 2) or (self.version == 3)) :
            raise kaitaistruct.ValidationNotAnyOfError(self.version, self._io, u"/seq/1")
        self.ofs_backing_file_name = self._io.read_u8be()
        self.len_backing_file_name = self._io.read_u4be()
        self.cluster_bits = self._io.read_u4be()
        if not self.cluster_bits >= 9:
            raise kaitaistruct.ValidationLessThanError(9, self.cluster_bits, self._io, u"/seq/4")
        self.len_virtual_disk = self._io.read_u8be()
        self.crypt_method = KaitaiStream.resolve_enum(Qcow2Header.CryptMethod, self._io.read_u4be())
        self.num_l1_entries = self._io.read_u4be()
        self.ofs_l1_table = self._io.read_u8be()
        self.ofs_refcount_table = self._io.read_u8be()
        self.num_refcount_table_clusters = self._io.read_u4be()
        self.num_snapshots = self._io.read_u4be()
        self.ofs_snapshot_table = self._io.read_u8be()
        if self.version >= 3:
            pass
            self._raw_incompatible_features = self._io.read_bytes(8)
            _io__raw_incompatible_features = KaitaiStream(BytesIO(self._raw_incompatible_features))
            self.incompatible_features = Qcow2Header.IncompatibleFeatures(_io__raw_incompatible_features, self, self._root)

        if self.version >= 3:
            pass
            self._raw_compatible_features = self._io.read_bytes(8)
            _io__raw_compatible_features = KaitaiStream(BytesIO(self._raw_compatible_features))
            self.compatible_features = Qcow2Header.CompatibleFeatures(_io__raw_compatible_features, self, self._root)

        if self.version >= 3:
            pass
            self._raw_autoclear_features = self._io.read_bytes(8)
            _io__raw_autoclear_features = KaitaiStream(BytesIO(self._raw_autoclear_features))
            self.autoclear_features = Qcow2Header.AutoclearFeatures(_io__raw_autoclear_features, self, self._root)

        if self.version >= 3:
            pass
            self.refcount_order = self._io.read_u4be()
            if not self.refcount_order <= 6:
                raise kaitaistruct.ValidationGreaterThanError(6, self.refcount_order, self._io, u"/seq/16")

        if self.version >= 3:
            pass
            self.len_header = self._io.read_u4be()
            if not self.len_header >= 104:
                raise kaitaistruct.ValidationLessThanError(104, self.len_header, self._io, u"/seq/17")

        if  ((self.version >= 3) and (self.len_header > 104)) :
            pass
            self.compression_type = KaitaiStream.resolve_enum(Qcow2Header.CompressionType, self._io.read_u1())

        if  ((self.version >= 3) and (self.len_header > 105)) :
            pass
            self.reserved_compression_padding = self._io.read_bytes(7)



    def _fetch_instances(self):
        pass
        if self.version >= 3:
            pass
            self.incompatible_features._fetch_instances()

        if self.version >= 3:
            pass
            self.compatible_features._fetch_instances()

        if self.version >= 3:
            pass
            self.autoclear_features._fetch_instances()

        if self.version >= 3:
            pass

        if self.version >= 3:
            pass

        if  ((self.version >= 3) and (self.len_header > 104)) :
            pass

        if  ((self.version >= 3) and (self.len_header > 105)) :
            pass

        _ = self.backing_file_name
        if hasattr(self, '_m_backing_file_name'):
            pass

        _ = self.extensions
        if hasattr(self, '_m_extensions'):
            pass
            self._m_extensions._fetch_instances()


    class AutoclearFeatures(KaitaiStruct):
        """Bitmask of auto-clear features; a writer clears unknown bits."""
        def __init__(self, _io, _parent=None, _root=None):
            super(Qcow2Header.AutoclearFeatures, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.reserved = self._io.read_bits_int_be(62)
            self.data_file_raw = self._io.read_bits_int_be(1) != 0
            self.bitmaps = self._io.read_bits_int_be(1) != 0


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
            self._m_value = self._io.read_u8be()
            self._io.seek(_pos)
            return getattr(self, '_m_value', None)


    class BackingFileFormat(KaitaiStruct):
        """Name of the backing file format, e.g. "qcow2" or "raw"; not NUL-terminated."""
        def __init__(self, _io, _parent=None, _root=None):
            super(Qcow2Header.BackingFileFormat, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.name = self._io.read_bytes_full()


        def _fetch_instances(self):
            pass


    class BitmapsExtensionAny(KaitaiStruct):
        """The bitmaps magic 0x23852875 is shared by the merged bitmaps extension
        (24-byte body) and the 2015 draft "dirty bitmaps" extension (12-byte
        body, seed 003). The body length tells them apart.
        """
        def __init__(self, _io, _parent=None, _root=None):
            super(Qcow2Header.BitmapsExtensionAny, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            if self._io.size() == 24:
                pass
                self.upstream = bitmaps.Bitmaps.BitmapsExtension(self._io)

            if self._io.size() == 12:
                pass
                self.draft = draft_dirty_bitmaps.DraftDirtyBitmaps.DirtyBitmapsExtension(self._io)

            if  ((self._io.size() != 24) and (self._io.size() != 12)) :
                pass
                self.unrecognised = self._io.read_bytes_full()



        def _fetch_instances(self):
            pass
            if self._io.size() == 24:
                pass
                self.upstream._fetch_instances()

            if self._io.size() == 12:
                pass
                self.draft._fetch_instances()

            if  ((self._io.size() != 24) and (self._io.size() != 12)) :
                pass



    class CompatibleFeatures(KaitaiStruct):
        """Bitmask of compatible features; unknown bits may be ignored."""
        def __init__(self, _io, _parent=None, _root=None):
            super(Qcow2Header.CompatibleFeatures, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.reserved = self._io.read_bits_int_be(63)
            self.lazy_refcounts = self._io.read_bits_int_be(1) != 0


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
            self._m_value = self._io.read_u8be()
            self._io.seek(_pos)
            return getattr(self, '_m_value', None)


    class ExternalDataFileName(KaitaiStruct):
        """Name of the external data file (incompatible bit 2); not NUL-terminated.
        Taken by QEMU as a path relative to the image.
        """
        def __init__(self, _io, _parent=None, _root=None):
            super(Qcow2Header.ExternalDataFileName, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.name = self._io.read_bytes_full()


        def _fetch_instances(self):
            pass


    class FeatureName(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(Qcow2Header.FeatureName, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.feature_type = KaitaiStream.resolve_enum(Qcow2Header.FeatureType, self._io.read_u1())
            self.bit = self._io.read_u1()
            if not self.bit <= 63:
                raise kaitaistruct.ValidationGreaterThanError(63, self.bit, self._io, u"/types/feature_name/seq/1")
            self.name = self._io.read_bytes(46)


        def _fetch_instances(self):
            pass


    class FeatureNameTable(KaitaiStruct):
        """Names of feature bits, used to report unknown features by name."""
        def __init__(self, _io, _parent=None, _root=None):
            super(Qcow2Header.FeatureNameTable, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.entries = []
            i = 0
            while not self._io.is_eof():
                self.entries.append(Qcow2Header.FeatureName(self._io, self, self._root))
                i += 1



        def _fetch_instances(self):
            pass
            for i in range(len(self.entries)):
                pass
                self.entries[i]._fetch_instances()



    class FullDiskEncryptionHeaderPointer(KaitaiStruct):
        """Where the LUKS header lives; present if and only if crypt_method is LUKS."""
        def __init__(self, _io, _parent=None, _root=None):
            super(Qcow2Header.FullDiskEncryptionHeaderPointer, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.ofs_encryption_header = self._io.read_u8be()
            self.len_encryption_header = self._io.read_u8be()


        def _fetch_instances(self):
            pass


    class HeaderExtension(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(Qcow2Header.HeaderExtension, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.ext_type = KaitaiStream.resolve_enum(Qcow2Header.ExtensionType, self._io.read_u4be())
            self.len_data = self._io.read_u4be()
            _on = self.ext_type
            if _on == Qcow2Header.ExtensionType.backing_file_format:
                pass
                self._raw_data = self._io.read_bytes(self.len_data)
                _io__raw_data = KaitaiStream(BytesIO(self._raw_data))
                self.data = Qcow2Header.BackingFileFormat(_io__raw_data, self, self._root)
            elif _on == Qcow2Header.ExtensionType.bitmaps:
                pass
                self._raw_data = self._io.read_bytes(self.len_data)
                _io__raw_data = KaitaiStream(BytesIO(self._raw_data))
                self.data = Qcow2Header.BitmapsExtensionAny(_io__raw_data, self, self._root)
            elif _on == Qcow2Header.ExtensionType.deduplication:
                pass
                self._raw_data = self._io.read_bytes(self.len_data)
                _io__raw_data = KaitaiStream(BytesIO(self._raw_data))
                self.data = dedup_table.DedupTable.DedupExtension(_io__raw_data)
            elif _on == Qcow2Header.ExtensionType.external_data_file:
                pass
                self._raw_data = self._io.read_bytes(self.len_data)
                _io__raw_data = KaitaiStream(BytesIO(self._raw_data))
                self.data = Qcow2Header.ExternalDataFileName(_io__raw_data, self, self._root)
            elif _on == Qcow2Header.ExtensionType.feature_name_table:
                pass
                self._raw_data = self._io.read_bytes(self.len_data)
                _io__raw_data = KaitaiStream(BytesIO(self._raw_data))
                self.data = Qcow2Header.FeatureNameTable(_io__raw_data, self, self._root)
            elif _on == Qcow2Header.ExtensionType.full_disk_encryption:
                pass
                self._raw_data = self._io.read_bytes(self.len_data)
                _io__raw_data = KaitaiStream(BytesIO(self._raw_data))
                self.data = Qcow2Header.FullDiskEncryptionHeaderPointer(_io__raw_data, self, self._root)
            else:
                pass
                self.data = self._io.read_bytes(self.len_data)
            self.padding = self._io.read_bytes((8 - self.len_data % 8) % 8)


        def _fetch_instances(self):
            pass
            _on = self.ext_type
            if _on == Qcow2Header.ExtensionType.backing_file_format:
                pass
                self.data._fetch_instances()
            elif _on == Qcow2Header.ExtensionType.bitmaps:
                pass
                self.data._fetch_instances()
            elif _on == Qcow2Header.ExtensionType.deduplication:
                pass
                self.data._fetch_instances()
            elif _on == Qcow2Header.ExtensionType.external_data_file:
                pass
                self.data._fetch_instances()
            elif _on == Qcow2Header.ExtensionType.feature_name_table:
                pass
                self.data._fetch_instances()
            elif _on == Qcow2Header.ExtensionType.full_disk_encryption:
                pass
                self.data._fetch_instances()
            else:
                pass


    class HeaderExtensionArea(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(Qcow2Header.HeaderExtensionArea, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.extensions = []
            i = 0
            while True:
                _ = Qcow2Header.HeaderExtension(self._io, self, self._root)
                self.extensions.append(_)
                if  ((_.ext_type == Qcow2Header.ExtensionType.end) or (self._io.is_eof())) :
                    break
                i += 1


        def _fetch_instances(self):
            pass
            for i in range(len(self.extensions)):
                pass
                self.extensions[i]._fetch_instances()



    class IncompatibleFeatures(KaitaiStruct):
        """Bitmask of incompatible features; an unknown set bit must make the open fail."""
        def __init__(self, _io, _parent=None, _root=None):
            super(Qcow2Header.IncompatibleFeatures, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.reserved = self._io.read_bits_int_be(59)
            self.extended_l2 = self._io.read_bits_int_be(1) != 0
            self.compression_type = self._io.read_bits_int_be(1) != 0
            self.external_data_file = self._io.read_bits_int_be(1) != 0
            self.corrupt = self._io.read_bits_int_be(1) != 0
            self.dirty = self._io.read_bits_int_be(1) != 0


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
            self._m_value = self._io.read_u8be()
            self._io.seek(_pos)
            return getattr(self, '_m_value', None)


    @property
    def backing_file_name(self):
        """Raw bytes; QEMU treats them as a path. Never NUL-terminated."""
        if hasattr(self, '_m_backing_file_name'):
            return self._m_backing_file_name

        if self.ofs_backing_file_name != 0:
            pass
            _pos = self._io.pos()
            self._io.seek(self.ofs_backing_file_name)
            self._m_backing_file_name = self._io.read_bytes(self.len_backing_file_name)
            self._io.seek(_pos)

        return getattr(self, '_m_backing_file_name', None)

    @property
    def cluster_size(self):
        if hasattr(self, '_m_cluster_size'):
            return self._m_cluster_size

        self._m_cluster_size = 1 << self.cluster_bits
        return getattr(self, '_m_cluster_size', None)

    @property
    def ext_end(self):
        """QEMU's bound of the extension area (qcow2_read_extensions)."""
        if hasattr(self, '_m_ext_end'):
            return self._m_ext_end

        self._m_ext_end = (self.ofs_backing_file_name if self.ofs_backing_file_name != 0 else self.cluster_size)
        return getattr(self, '_m_ext_end', None)

    @property
    def extensions(self):
        """The header extensions, from the end of the header to the backing file name or the end of cluster 0."""
        if hasattr(self, '_m_extensions'):
            return self._m_extensions

        _pos = self._io.pos()
        self._io.seek(self.header_length)
        self._raw__m_extensions = self._io.read_bytes(self.ext_end - self.header_length)
        _io__raw__m_extensions = KaitaiStream(BytesIO(self._raw__m_extensions))
        self._m_extensions = Qcow2Header.HeaderExtensionArea(_io__raw__m_extensions, self, self._root)
        self._io.seek(_pos)
        return getattr(self, '_m_extensions', None)

    @property
    def header_length(self):
        """Where the header extensions start."""
        if hasattr(self, '_m_header_length'):
            return self._m_header_length

        self._m_header_length = (self.len_header if self.version >= 3 else 72)
        return getattr(self, '_m_header_length', None)

    @property
    def refcount_bits(self):
        if hasattr(self, '_m_refcount_bits'):
            return self._m_refcount_bits

        self._m_refcount_bits = 1 << (self.refcount_order if self.version >= 3 else 4)
        return getattr(self, '_m_refcount_bits', None)


