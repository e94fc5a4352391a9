"""The distillation teacher: the official STCN (`stcn` + its published weights) or any mobilevos checkpoint.

Training runs it frozen, under no_grad, on the student's augmented clips with unbounded memory (every
previous frame of the clip). `build_teacher_segmenter` wraps it in the inference `Segmenter` with STCN's
growing memory (a frame every 5, top-k 20), for benchmarks and evaluation.
"""

from __future__ import annotations

from pathlib import Path

import click
import torch
from torch import nn

from mvos.runtime.checkpoint import load_checkpoint
from mvos.runtime.errors import MvosError
from mvos.runtime.inference import Segmenter, TorchBackend
from mvos.runtime.model import KeyFeatures, MobileVOS, MobileVOSConfig
from mvos.training.stcn import STCN, STCN_MEM_EVERY, STCN_TOP_K, build_stcn


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (BatchNorm running statistics, no dropout) and no gradients, for good."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_teacher(spec: str, weights: str | Path | None = None, top_k: int | None = STCN_TOP_K,
                  allow_random: bool = False) -> STCN | MobileVOS:
    """`spec` "stcn" (weights: the published stcn.pth) or a path to a mobilevos checkpoint; frozen.

    `allow_random` permits STCN without weights, for speed measurements only: a random teacher would
    teach nothing.
    """
    if spec == "stcn":
        if weights is None and not allow_random:
            raise MvosError("--teacher stcn needs --teacher-weights (the published STCN checkpoint, stcn.pth)")
        return freeze(build_stcn(weights, top_k=top_k))
    if weights is not None:
        raise MvosError(f"--teacher-weights is only for --teacher stcn; {spec} is a checkpoint with its own weights")
    path = Path(spec)
    if not path.is_file():
        raise MvosError(f"teacher must be 'stcn' or a mobilevos checkpoint; {spec} is neither")
    return freeze(load_checkpoint(path))


class STCNBackend(TorchBackend):
    """Runs STCN in the `Segmenter`. The engine hands encode_value the frame's key features only, while
    STCN's value encoder also reads the frame, so the frame of the last encode_key call is kept (the
    engine always encodes a frame's value right after its key)."""

    name = "torch-stcn"

    def __init__(self, model: STCN):
        super().__init__(model)
        self._frame: torch.Tensor | None = None

    def encode_key(self, frame: torch.Tensor) -> KeyFeatures:
        self._frame = frame  # 1,3,H,W
        return self.model.encode_key(frame)

    def encode_value(self, features: KeyFeatures, masks: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        return self.model.encode_value(features.f16, masks, others, frame=self._frame)


def teacher_backend(model: STCN | MobileVOS) -> TorchBackend:
    return STCNBackend(model) if isinstance(model, STCN) else TorchBackend(model)


def build_teacher_segmenter(spec: str = "stcn", weights: str | Path | None = None, *, size: int | None = 480,
                            mem_every: int = STCN_MEM_EVERY, top_k: int | None = STCN_TOP_K,
                            allow_random: bool = True) -> Segmenter:
    """The teacher as STCN runs it at test time: unbounded memory (reference + every `mem_every`-th frame +
    the last frame), top-k read; for a mobilevos checkpoint `top_k` replaces its own setting. STCN without
    weights is allowed here (with a warning) because its speed does not depend on them."""
    if spec == "stcn" and weights is None and allow_random:
        click.echo("warning: STCN without --teacher-weights: random weights, good for timing only", err=True)
    model = build_teacher(spec, weights, top_k=top_k, allow_random=allow_random)
    if isinstance(model, MobileVOS):
        model.config = MobileVOSConfig.from_dict({**model.config.to_dict(), "top_k": top_k})
    return Segmenter(teacher_backend(model), memory="unbounded", mem_every=mem_every, size=size)
