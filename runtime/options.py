"""The click options of the commands that segment (`segment`, `eval`): generated from `InferenceSettings`, whose
fields hold the defaults, and turned back into settings and an engine by `segmenter_from_options`."""

from __future__ import annotations

from pathlib import Path

import click

from mvos.runtime.memory import MAX_QUEUE_LEN, MEMORY_MODES, MIN_QUEUE_LEN
from mvos.runtime.model import DEFAULT_VARIANT, VARIANTS
from mvos.runtime.settings import BACKENDS, DEFAULT, MIN_SIZE, PRECISIONS, InferenceSettings


def overwrite_option(function):
    return click.option("--overwrite", is_flag=True,
                        help="Replace an existing output; the old one goes only once the new one is complete.")(function)


def model_options(function):
    """Adds the options that pick a model and configure the engine."""
    options = [
        click.option("--variant", type=click.Choice(list(VARIANTS)), default=None,
                     help=f"Architecture (default {DEFAULT_VARIANT}, or the one stored in --weights)."),
        click.option("--weights", default=None,
                     help="A mobilevos checkpoint (from `mvos train` or `mvos soup`), or `random` (timing only); "
                          "default: the variant's shipped weights."),
        click.option("--backbone-weights", type=click.Path(path_type=Path), default=None,
                     help="With --weights random: ImageNet weights for the key encoder."),
        click.option("--queue-len", type=click.IntRange(MIN_QUEUE_LEN, MAX_QUEUE_LEN), default=DEFAULT.queue_len,
                     show_default=True, help="Memory frames: the first frame plus the T-1 most recent."),
        click.option("--memory", type=click.Choice(MEMORY_MODES), default=DEFAULT.memory, show_default=True,
                     help="fixed queue (constant cost) or STCN's growing memory."),
        click.option("--mem-every", type=click.IntRange(min=1), default=DEFAULT.mem_every, show_default=True,
                     help="Memorise every k-th frame after the first (the others only read the memory)."),
        click.option("--size", type=click.IntRange(min=MIN_SIZE), default=DEFAULT.size, show_default=True,
                     help="Short side frames are resized to (PyTorch backend)."),
        click.option("--top-k", type=click.IntRange(min=1), default=DEFAULT.top_k,
                     help="Top-k memory read (off by default)."),
        click.option("--backend", type=click.Choice(BACKENDS), default=DEFAULT.backend, show_default=True),
        click.option("--model-dir", type=click.Path(path_type=Path), default=None,
                     help="Exported TFLite folder (with manifest.json) for --backend tflite."),
        click.option("--precision", type=click.Choice(PRECISIONS), default=DEFAULT.precision, show_default=True,
                     help="Which exported files --backend tflite runs."),
        click.option("--memory-precision", type=click.Choice(PRECISIONS), default=DEFAULT.memory_precision,
                     help="Which exported encoders make the memory (the frames it keeps; default: --precision). "
                          "`--precision int8 --memory-precision fp32` follows fp32 far more closely, for the fp32 "
                          "encoders' time on every memorised frame."),
        click.option("--threads", type=click.IntRange(min=1), default=DEFAULT.threads, help="CPU threads."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def segmenter_from_options(options: dict):
    """The engine `model_options` describe; says a loading warning (random weights) on stderr."""
    from mvos.runtime.loading import build_segmenter

    segmenter, warning = build_segmenter(InferenceSettings.from_options(options), variant=options.get("variant"),
                                         weights=options.get("weights"),
                                         backbone_weights=options.get("backbone_weights"),
                                         model_dir=options.get("model_dir"))
    if warning:
        click.echo(warning, err=True)
    return segmenter
