"""TFLite subgraphs, conversion and parity verification (depends on mvos.runtime)."""
