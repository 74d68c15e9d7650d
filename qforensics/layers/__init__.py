"""The read path: a stack of layers, each with ``read(offset, length)`` and ``extents(start, end)``.

- ``extent``: the runs a layer gives (``Extent``, ``Runs``, ``Kind``: QEMU's subcluster types and the raw kinds);
- ``qcow2.Qcow2Layer``: the guest view of one qcow2 image or snapshot, from its L1/L2 tables,
  decrypting through a qforensics.crypto cipher when the image is encrypted;
- ``raw.RawLayer``: a raw backing file;
- ``stack``: ``resolve`` walks a stack as QEMU's block status does; ``read_guest`` reads through it;
- ``chain.open_chain``: the whole stack, backing and data files opened only with the user's consent.
map and recover build on it; the file below every layer is qforensics.evidence.file.
"""
