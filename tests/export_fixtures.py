"""Helpers for tests of the export and the TFLite runtime: a tiny, well-conditioned model and one shared
export of it per test session (conversion is the slow part, so every test module reuses the same files)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from torch import nn

from mvos.runtime.model import MobileVOS, build_model

TINY_VARIANT = "mobilenetv2"  # has ASPP, so its conversion is exercised too
TINY_SIZE = (64, 64)
TINY_QUEUE_LENS = (1, 2)
TINY_PRECISIONS = ("fp32", "int8")
TINY_MAX_OBJECTS = 2  # groups of 1 are padded, groups of 3 chunked: both runtime paths run

_exports: dict[tuple, Path] = {}


def calibrated_model(variant: str = TINY_VARIANT, size: tuple[int, int] = TINY_SIZE, seed: int = 0) -> MobileVOS:
    """A random model whose BatchNorm statistics are set from random data. A fresh init's running stats
    (mean 0, var 1) shrink activations to ~1e-5, which makes the memory read uniform and almost every pixel
    a tie, so parity tests could not see e.g. a wrong memory slot. Deterministic in `seed`.
    Each call returns its own copy: a test that edits its model (e.g. turns on top-k) must not change the
    PyTorch reference of the shared export's parity tests."""
    return copy.deepcopy(_calibrated_model(variant, size, seed))


@functools.lru_cache(maxsize=4)
@torch.no_grad()
def _calibrated_model(variant: str, size: tuple[int, int], seed: int) -> MobileVOS:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(variant)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration batches
        model.train()
        frames = torch.randn(4, 3, *size)
        masks = (torch.rand(4, 1, size[0] // 8, size[1] // 8) > 0.5).float()
        masks = nn.functional.interpolate(masks, size=size, mode="nearest")
        for _ in range(2):
            features = model.encode_key(frames)
            values = model.encode_value(frames, features, masks, 1 - masks)  # 4,Cv,h,w
            keys = features.key.flatten(2)  # 4,Ck,h*w: each frame reads its own memory
            model.segment(features.query, keys, values.flatten(2).transpose(1, 2), 1)
    return model.eval()


def tiny_clip():
    """A short generated video with its first-frame objects: what the tiny export calibrates int8 on."""
    from mvos.export.calibrate import Clip
    from mvos.export.verify import synthetic_video

    frames, masks = synthetic_video(TINY_SIZE, num_frames=8, seed=7)
    return Clip("tiny-clip", frames, masks[0])


def tiny_export(root: Path) -> Path:
    """The shared tiny export (calibrated model, 64x64, T=1,2, fp32+int8, 2 objects), made once per process
    under `root` (pass a session-wide temporary folder)."""
    from mvos.export.exporter import ensure_exported

    key = (TINY_VARIANT, TINY_SIZE, TINY_QUEUE_LENS, TINY_PRECISIONS, TINY_MAX_OBJECTS)
    if key not in _exports or not (_exports[key] / "manifest.json").is_file():
        folder = Path(root) / "tiny_export"
        ensure_exported(folder, calibrated_model(), "calibrated test model", TINY_SIZE, TINY_QUEUE_LENS,
                        TINY_PRECISIONS, TINY_MAX_OBJECTS, progress=False, clips=[tiny_clip()])
        _exports[key] = folder
    return _exports[key]
