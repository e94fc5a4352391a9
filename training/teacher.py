"""The distillation teacher: the official STCN (`stcn` + its published weights) or any mobilevos checkpoint.

Training runs it frozen, under no_grad, on the student's augmented clips with unbounded memory (every
previous frame of the clip). `build_teacher_segmenter` runs it in the inference engine as STCN runs at test
time (`STCN_SETTINGS`: a growing memory, a frame every 5, top-k 20), for benchmarks and evaluation. Both
networks implement the same stage interface, so the engine needs no teacher-specific code.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mvos.runtime.checkpoint import load_checkpoint
from mvos.runtime.errors import MvosError
from mvos.runtime.inference import Segmenter, TorchBackend
from mvos.runtime.model import MobileVOS
from mvos.runtime.settings import InferenceSettings
from mvos.training.stcn import STCN, STCN_SETTINGS, build_stcn

RANDOM_STCN_WARNING = "warning: STCN without --teacher-weights: random weights, good for timing only"


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (BatchNorm running statistics, no dropout) and no gradients, for good."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_teacher(spec: str, weights: str | Path | None = None, allow_random: bool = False) -> STCN | MobileVOS:
    """`spec` "stcn" (weights: the published stcn.pth) or a path to a mobilevos checkpoint; frozen.

    `allow_random` permits STCN without weights, for speed measurements only: a random teacher would
    teach nothing.
    """
    if spec == "stcn":
        if weights is None and not allow_random:
            raise MvosError("--teacher stcn needs --teacher-weights (the published STCN checkpoint, stcn.pth)")
        return freeze(build_stcn(weights))
    if weights is not None:
        raise MvosError(f"--teacher-weights is only for --teacher stcn; {spec} is a checkpoint with its own weights")
    path = Path(spec)
    if not path.is_file():
        raise MvosError(f"teacher must be 'stcn' or a mobilevos checkpoint; {spec} is neither")
    return freeze(load_checkpoint(path))


def build_teacher_segmenter(spec: str = "stcn", weights: str | Path | None = None,
                            settings: InferenceSettings = STCN_SETTINGS,
                            allow_random: bool = True) -> tuple[Segmenter, str | None]:
    """The teacher in the engine with STCN's test-time settings, and a warning for the user (or None). STCN
    without weights is allowed here because its speed does not depend on them."""
    warning = RANDOM_STCN_WARNING if spec == "stcn" and weights is None and allow_random else None
    model = build_teacher(spec, weights, allow_random=allow_random)
    return Segmenter(TorchBackend(model, settings.top_k), settings), warning
