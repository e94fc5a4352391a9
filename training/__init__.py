"""Losses, data, teacher, trainer, model soups and evaluation (depends on mvos.runtime)."""
