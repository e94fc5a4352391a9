"""Models and engines from what a user names: a variant (its shipped weights), a checkpoint, or random weights
for timing. No printing here: what a user should hear comes back as `warning` for the command to show."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mvos.runtime.errors import MvosError
from mvos.runtime.inference import Segmenter, TorchBackend
from mvos.runtime.model import DEFAULT_VARIANT, MobileVOS, build_model, load_pretrained_effnet_lite0
from mvos.runtime.pretrained import shipped_checkpoint
from mvos.runtime.settings import DEFAULT, InferenceSettings

RANDOM = "random"  # --weights random: a fresh model, for timing
RANDOM_SEED = 0
# How `LoadedModel.source` names weights that are not the variant's shipped ones (`weights_option` reads it back).
CHECKPOINT_SOURCE = "checkpoint "
RANDOM_SOURCE = "random init"


@dataclass
class LoadedModel:
    model: MobileVOS
    source: str  # where the weights came from, for summaries and manifests
    warning: str | None = None  # what the command should tell the user


def load_model(variant: str | None = None, weights: str | Path | None = None,
               backbone_weights: str | Path | None = None) -> LoadedModel:
    """`weights`: a checkpoint path, RANDOM, or None for the variant's shipped weights."""
    from mvos.runtime.checkpoint import load_checkpoint

    if weights is not None and str(weights) != RANDOM:
        model = load_checkpoint(weights, expect_variant=variant)
        return LoadedModel(model.eval(), f"{CHECKPOINT_SOURCE}{Path(weights).name}")
    variant = variant or DEFAULT_VARIANT
    if weights is None:
        shipped = shipped_checkpoint(variant)
        if shipped is None:
            raise MvosError(f"no trained weights ship for {variant} (see `mvos info`): pass --weights CKPT, "
                            f"or --weights random to time a random model")
        model = load_checkpoint(shipped.path, expect_variant=variant)
        return LoadedModel(model.float().eval(), f"shipped {shipped.file} (test J&F {shipped.test_jf:.3f})")
    with torch.random.fork_rng():  # the same random model every time, so exports of it can be added to
        torch.manual_seed(RANDOM_SEED)
        model = build_model(variant, backbone_weights=str(backbone_weights) if backbone_weights else None)
    encoder = "random"
    if backbone_weights is not None:
        encoder = "ImageNet"
    elif model.config.key_encoder == "efficientnet-lite0":
        load_pretrained_effnet_lite0(model)
        encoder = "ImageNet"
    warning = (f"warning: --weights random: a {variant} with a {encoder} key encoder and an untrained rest; "
               f"its masks are meaningless (good for timing only)")
    return LoadedModel(model.eval(), f"{RANDOM_SOURCE} ({encoder} key encoder)", warning)


def weights_option(source: str) -> str | None:
    """The --weights value that loads again the weights a `LoadedModel.source` names (None: the variant's shipped
    ones). A checkpoint is named by its file name only; a different file is refused by its sha256 on export."""
    if source.startswith(CHECKPOINT_SOURCE):
        return source.removeprefix(CHECKPOINT_SOURCE)
    if source.startswith(RANDOM_SOURCE):
        return RANDOM
    return None


def build_segmenter(settings: InferenceSettings = DEFAULT, *, variant: str | None = None,
                    weights: str | Path | None = None, backbone_weights: str | Path | None = None,
                    model_dir: str | Path | None = None) -> tuple[Segmenter, str | None]:
    """The engine the settings describe, and a warning for the user (or None)."""
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    if settings.backend == "tflite":
        if model_dir is None:
            raise MvosError("--backend tflite needs --model-dir (a folder written by `mvos export`)")
        if weights is not None or variant is not None:
            raise MvosError("--backend tflite runs the model of --model-dir: drop --variant / --weights")
        from mvos.runtime.tflite import TFLiteBackend

        backend = TFLiteBackend(model_dir, queue_len=settings.queue_len, threads=settings.threads,
                                precision=settings.precision, memory_precision=settings.memory_precision)
        if settings.top_k is not None and settings.top_k != backend.top_k:
            raise MvosError(f"--top-k {settings.top_k}: {model_dir} was exported with top-k {backend.top_k} "
                            f"(re-export with `mvos export --top-k`)")
        return Segmenter(backend, settings), None
    if model_dir is not None:
        raise MvosError("--model-dir is for --backend tflite")
    loaded = load_model(variant, weights, backbone_weights)
    return Segmenter(TorchBackend(loaded.model, settings.top_k, channels_last=True), settings), loaded.warning
