"""The bottom floor: the evidence file itself, opened read-only (``file.FileLayer``: reads, holes, extents,
the kernel copy), below the model and everything else."""
