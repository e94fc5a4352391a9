"""mobilevos: real-time semi-supervised video object segmentation (MobileVOS) for phones."""

__version__ = "0.1.0"
