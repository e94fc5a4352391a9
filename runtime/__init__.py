"""Model, memory, per-frame inference and video/mask I/O. Imports no other mvos layer."""
