"""Getting the guest data out: the map, the raw recovery with its log, and carving."""
