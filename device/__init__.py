"""On-device benchmarking over adb (depends on mvos.export and mvos.runtime)."""
