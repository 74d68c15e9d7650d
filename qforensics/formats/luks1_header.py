# This is a generated file! Please edit source .ksy file and use kaitai-struct-compiler to rebuild
# type: ignore

import kaitaistruct
from kaitaistruct import KaitaiStruct, KaitaiStream, BytesIO
from enum import IntEnum


if getattr(kaitaistruct, 'API_VERSION', (0, 9)) < (0, 11):
    raise Exception("Incompatible Kaitai Struct Python API: 0.11 or later is required, but you have %s" % (kaitaistruct.__version__))

class Luks1Header(KaitaiStruct):
    """The LUKS1 partition header found at the offset named by the qcow2 full
    disk encryption header pointer (extension 0x0537BE77): 592 bytes of header
    and 8 key slots, followed by the anti-forensic key material areas. In qcow2
    the key material offsets are relative to the start of the LUKS area, not
    the file, and payload_offset is unused (guest data stays in qcow2 clusters).
    
    .. seealso::
       "LUKS partition header" - https://gitlab.com/cryptsetup/cryptsetup/-/wikis/LUKS-standard/on-disk-format.pdf
    
    
    .. seealso::
       Source - https://gitlab.com/qemu-project/qemu/-/blob/master/crypto/block-luks.c
    
    
    .. seealso::
       "Full disk encryption header pointer" - https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt
    """

    class KeySlotState(IntEnum):
        disabled = 57005
        enabled = 11301363
    def __init__(self, _io, _parent=None, _root=None):
        super(Luks1Header, self).__init__(_io)
        self._parent = _parent
        self._root = _root or self
        self._read()

    def _read(self):
        self.magic = self._io.read_bytes(6)
        if not self.magic == b"\x4C\x55\x4B\x53\xBA\xBE":
            raise kaitaistruct.ValidationNotEqualError(b"\x4C\x55\x4B\x53\xBA\xBE", self.magic, self._io, u"/seq/0")
        self.version = self._io.read_u2be()
        if not self.version == 1:
            raise kaitaistruct.ValidationNotEqualError(1, self.version, self._io, u"/seq/1")
        self.cipher_name = self._io.read_bytes(32)
        self.cipher_mode = self._io.read_bytes(32)
        self.hash_spec = self._io.read_bytes(32)
        self.payload_offset = self._io.read_u4be()
        self.len_master_key = self._io.read_u4be()
        self.master_key_digest = self._io.read_bytes(20)
        self.master_key_digest_salt = self._io.read_bytes(32)
        self.master_key_digest_iterations = self._io.read_u4be()
        self.uuid = self._io.read_bytes(40)
        self.key_slots = []
        for i in range(8):
            self.key_slots.append(Luks1Header.KeySlot(self._io, self, self._root))



    def _fetch_instances(self):
        pass
        for i in range(len(self.key_slots)):
            pass
            self.key_slots[i]._fetch_instances()


    class KeySlot(KaitaiStruct):
        def __init__(self, _io, _parent=None, _root=None):
            super(Luks1Header.KeySlot, self).__init__(_io)
            self._parent = _parent
            self._root = _root
            self._read()

        def _read(self):
            self.active = KaitaiStream.resolve_enum(Luks1Header.KeySlotState, self._io.read_u4be())
            self.iterations = self._io.read_u4be()
            self.salt = self._io.read_bytes(32)
            self.key_material_offset = self._io.read_u4be()
            self.stripes = self._io.read_u4be()


        def _fetch_instances(self):
            pass
            _ = self.key_material
            if hasattr(self, '_m_key_material'):
                pass


        @property
        def key_material(self):
            """The AF-split, encrypted master key of this slot."""
            if hasattr(self, '_m_key_material'):
                return self._m_key_material

            if self.active == Luks1Header.KeySlotState.enabled:
                pass
                io = self._root._io
                _pos = io.pos()
                io.seek(self.key_material_offset * 512)
                self._m_key_material = io.read_bytes(self._root.len_master_key * self.stripes)
                io.seek(_pos)

            return getattr(self, '_m_key_material', None)



