"""`mvos train`: STCN-style clip training of a MobileVOS student, distilled from a frozen teacher.

One iteration: a batch of T-frame clips. Frame 0 and its ground-truth masks go into memory; each later frame
is segmented from memory and its soft-aggregated probabilities are encoded as the next memory entry. The
student reads a fixed queue (frame 0 + the last queue_len-1 frames, exactly as the inference engine), the
teacher every previous frame. Losses (training.losses.DistillationLoss) on frames 1..T-1.

A run folder holds latest.pth (model, optimiser, scheduler, RNG, iteration: written atomically every
`checkpoint_every` iterations, what --resume restarts from), final.pth, log.csv and loss.png.
"""

from __future__ import annotations

import csv
import random
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mvos.runtime.checkpoint import read_checkpoint, save_checkpoint
from mvos.runtime.errors import MvosError
from mvos.runtime.inference import Segmenter, Timing, TorchBackend
from mvos.runtime.io import atomic_path
from mvos.runtime.memory import others_mask, slot_frames
from mvos.runtime.settings import DEFAULT, InferenceSettings
from mvos.runtime.model import KeyFeatures, MobileVOS, aggregated_logits, build_model, load_pretrained_effnet_lite0
from mvos.training.config import TrainConfig
from mvos.training.distributed import Runtime, resolve_device, resolve_precision
from mvos.training.losses import DistillationLoss
from mvos.training.qat import prepare_quantisation_aware
from mvos.training.stcn import decoder_channels
from mvos.training.teacher import build_teacher

LOG_COLUMNS = ["iteration", "loss", "xe", "logit", "repr", "top_p", "lr", "it_per_s", "global_batch", "val_J", "val_F",
               "val_JF"]
LATEST = "latest.pth"
FINAL = "final.pth"


# --------------------------------------------------------------------------------------------- the step


def memory_frames(frame: int, queue_len: int | None) -> list[int]:
    """Clip frames the memory holds, slot by slot, when segmenting clip frame `frame` (frame 0 is the
    reference; each frame is memorised after it is segmented). None: every previous frame (the teacher)."""
    if queue_len is None:
        return list(range(frame))
    return slot_frames(frame - 1, queue_len)  # the reference, then clip frame k is the k-th write


@dataclass
class Rollout:
    logits: torch.Tensor  # (T-1)*B,1+N,H,W aggregated logits of frames 1..T-1, frame-major
    z: torch.Tensor  # (T-1)*B*N,C,H/4,W/4 decoder features, same order, objects consecutive


def rollout(model: nn.Module, frames: torch.Tensor, first_masks: torch.Tensor, num_objects: torch.Tensor,
            queue_len: int | None, top_k: int | None = None) -> Rollout:
    """Propagates the first-frame masks through a clip. frames B,T,3,H,W ; first_masks B,N,H,W ;
    num_objects B (objects past it are padding: their probabilities are zeroed, as STCN's selector).
    `model` is any network with the stage interface (the MobileVOS student, the STCN teacher)."""
    b, t, _, height, width = frames.shape
    n = first_masks.shape[1]
    features = model.encode_key(frames.flatten(0, 1))  # every frame at once: (B*T),...
    features = KeyFeatures(*(f.unflatten(0, (b, t)) for f in features))  # B,T,...
    selector = (torch.arange(n, device=num_objects.device) < num_objects[:, None]).float()[:, :, None, None]  # B,N,1,1
    keys, values, logits, zs = [], [], [], []
    probs = first_masks
    for i in range(t):
        at = KeyFeatures(*(f[:, i] for f in features))
        if i > 0:
            slots = memory_frames(i, queue_len)
            memory_keys = torch.stack([keys[s] for s in slots], dim=2).flatten(2)  # B,Ck,M
            memory_values = torch.stack([values[s] for s in slots], dim=1)  # B,T,N*Cv,h,w
            memory_values = memory_values.permute(0, 1, 3, 4, 2).reshape(b, -1, memory_values.shape[2])  # B,M,N*Cv
            frame_logits, z = model.segment(at.query, memory_keys, memory_values, n, top_k)  # B*N,1,H,W ; B*N,C,h4,w4
            # float32: under bf16 autocast 1 - 1e-7 rounds to 1 and the aggregated logit becomes infinite.
            object_probs = torch.sigmoid(frame_logits.float()).view(b, n, height, width) * selector
            aggregated = aggregated_logits(object_probs, dim=1)  # B,1+N,H,W
            probs = F.softmax(aggregated, dim=1)[:, 1:]
            logits.append(aggregated)
            zs.append(z)
        if i < t - 1:  # the last frame is never read back
            masks = probs.reshape(b * n, 1, height, width)
            others = others_mask(probs, dim=1).reshape(b * n, 1, height, width)
            value = model.encode_value(frames[:, i], at, masks, others)  # B*N,Cv,h,w
            keys.append(at.key)
            values.append(value.reshape(b, -1, *value.shape[2:]))  # B,N*Cv,h,w
    return Rollout(torch.cat(logits), torch.cat(zs))


def set_train_mode(model: nn.Module, freeze_bn: str) -> None:
    """Train mode, with BatchNorm layers kept in eval mode (running statistics frozen) where asked."""
    model.train()
    scope = {"all": model, "key_encoder": getattr(model, "key_encoder", model), "none": None}[freeze_bn]
    if scope is not None:
        for module in scope.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def training_step(student: MobileVOS, teacher: nn.Module | None, criterion: DistillationLoss, batch: dict,
                  iteration: int, queue_len: int, precision: str = "fp32",
                  teacher_top_k: int | None = None) -> dict[str, torch.Tensor]:
    """Forward both networks on one batch and return the loss dict (loss has the graph). `precision` bf16 or
    fp16 runs the networks under autocast; the losses are computed in float32."""
    frames, masks, labels = batch["frames"], batch["masks"], batch["labels"]  # B,T,3,H,W ; B,T,N,H,W ; B,T,H,W
    num_objects = batch["num_objects"]  # B
    t = frames.shape[1]
    with autocast(frames.device, precision):
        out = rollout(student, frames, masks[:, 0], num_objects, queue_len)
        reference = None
        if teacher is not None:
            with torch.no_grad():
                reference = rollout(teacher, frames, masks[:, 0], num_objects, None, teacher_top_k)
    target = labels[:, 1:].transpose(0, 1).flatten(0, 1)  # (T-1)*B,H,W frame-major like the rollout
    objects = num_objects.repeat(t - 1)
    kwargs = {}
    if reference is not None:
        if criterion.logit_weight > 0:
            kwargs["teacher_logits"] = reference.logits.float()
        if criterion.repr_weight > 0:
            kwargs.update(z_student=out.z.float(), z_teacher=reference.z.float())
    return criterion(out.logits.float(), target, iteration, num_objects=objects, frames=t - 1, **kwargs)


class TrainingStep(nn.Module):
    """The student's rollout and the losses as one module whose forward is a training step, so that
    DistributedDataParallel, which synchronises the gradients of what its forward ran, wraps everything that
    trains (the student and the criterion's embedding). The frozen teacher is kept out of the module tree."""

    def __init__(self, student: MobileVOS, criterion: DistillationLoss, teacher: nn.Module | None, queue_len: int,
                 precision: str, teacher_top_k: int | None):
        super().__init__()
        self.student, self.criterion = student, criterion
        self.__dict__["teacher"] = teacher  # not a submodule: DDP neither synchronises nor broadcasts it
        self.queue_len, self.precision, self.teacher_top_k = queue_len, precision, teacher_top_k

    def forward(self, batch: dict, iteration: int) -> dict[str, torch.Tensor]:
        return training_step(self.student, self.teacher, self.criterion, batch, iteration, self.queue_len,
                             self.precision, self.teacher_top_k)


def autocast(device: torch.device, precision: str):
    """Mixed precision for the networks: bf16 (CPUs with AVX512-BF16, recent GPUs) or fp16 (GPUs)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype is not None)


# -------------------------------------------------------------------------------------------- data


def _image_pairs(sources, what: str) -> list[tuple[Path, Path]]:
    from mvos.training.clips import find_image_mask_pairs

    pairs = []
    for source in sources:
        pairs += find_image_mask_pairs(Path(source.images), Path(source.masks) if source.masks else None)
    return pairs


def _replace_fields(base, changes: dict, what: str):
    from dataclasses import replace

    try:
        return replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})
    except TypeError as exc:
        raise MvosError(f"config: data.{what}: {exc}") from None


class ClipMixture:
    """Clip datasets sampled in proportion to their weights (`len(dataset) * repeat`, as repeating a dataset in
    a ConcatDataset), through `sample(rng)` so a batch is a function of its seed alone."""

    def __init__(self, parts: list[tuple[object, float]]):
        self.parts = parts
        self.sizes = np.array([weight for _, weight in parts], np.float64)

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def sample(self, rng: np.random.Generator) -> dict:
        part = int(rng.choice(len(self.parts), p=self.sizes / self.sizes.sum())) if len(self.parts) > 1 else 0
        dataset = self.parts[part][0]
        return dataset.sample(int(rng.integers(len(dataset))), rng)


def build_dataset(config: TrainConfig) -> ClipMixture:
    from mvos.training.clips import STATIC_AUGMENT, Augment, DonorBank, Paste, StaticImageDataset, VideoClipDataset

    data = config.data
    augment = _replace_fields(STATIC_AUGMENT if config.stage == "static" else Augment(), data.augment, "augment")
    paste = _replace_fields(Paste(), data.paste, "paste")
    common = dict(num_frames=data.clip_frames, crop=data.crop, max_objects=data.max_objects, augment=augment,
                  paste=paste)
    donor_pairs = _image_pairs(data.paste_images, "paste_images")
    if config.stage == "static":
        donors = DonorBank(donor_pairs) if paste.p > 0 and donor_pairs else None
        images = StaticImageDataset(_image_pairs(data.images, "images"), donors=donors, **common)
        return ClipMixture([(images, float(len(images)))])
    from mvos.training.datasets import load_dataset

    chosen = []
    for i, source in enumerate(data.sources):
        sequences = load_dataset(source.dataset, Path(source.root), source.split, source.sequences)
        unknown = sorted(set(source.exclude) - {s.name for s in sequences})
        if unknown:
            raise MvosError(f"config: data.sources[{i}].exclude names {unknown[0]}, which is not in split "
                            f"{source.split!r} of {source.root}")
        sequences = [s for s in sequences if s.name not in set(source.exclude)]
        if not sequences:
            raise MvosError(f"config: data.sources[{i}] has no sequences left after its exclude list")
        chosen.append((source, sequences))
    donors = None
    if paste.p > 0:
        donor_videos = [s for _, seqs in chosen for s in seqs] if data.paste_videos else []
        if donor_pairs or donor_videos:
            # DonorBank reads each video's masks as its own dataset does; sources here share one format.
            donors = DonorBank(donor_pairs, donor_videos, dataset=chosen[0][0].dataset)
    parts = [(VideoClipDataset(seqs, dataset=source.dataset, max_gap=data.max_gap, donors=donors, **common),
              float(len(seqs) * source.repeat)) for source, seqs in chosen]
    if data.images_share > 0:
        # Static pseudo-clips next to the videos: thousands of objects where the videos have a few dozen.
        video_weight = sum(weight for _, weight in parts)
        images = StaticImageDataset(_image_pairs(data.images, "images"), donors=donors,
                                    **dict(common, augment=STATIC_AUGMENT))
        parts.append((images, video_weight * data.images_share / (1 - data.images_share)))
    return ClipMixture(parts)


def batch_seed(seed: int, iteration: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, iteration])


def make_batch(dataset: ClipMixture, seed: int, iteration: int, start: int, count: int) -> dict:
    """Clips start..start+count-1 of iteration `iteration`'s global batch. Each clip's randomness comes from
    (seed, iteration, its position) alone, so resuming, prefetching and splitting a batch over processes all
    see exactly the clips one uninterrupted process would."""
    children = batch_seed(seed, iteration).spawn(start + count)[start:]
    items = [dataset.sample(np.random.default_rng(child)) for child in children]
    return {"frames": torch.stack([x["frames"] for x in items]), "masks": torch.stack([x["masks"] for x in items]),
            "labels": torch.stack([x["labels"] for x in items]),
            "num_objects": torch.tensor([x["num_objects"] for x in items])}


def pinned_batch(dataset: ClipMixture, seed: int, iteration: int, start: int, count: int, pin: bool) -> dict:
    batch = make_batch(dataset, seed, iteration, start, count)
    return {k: v.pin_memory() for k, v in batch.items()} if pin else batch


class BatchPrefetcher:
    """Builds iteration i+1's batch in a background thread while iteration i trains (OpenCV and JPEG
    decoding release the GIL). `start`, `count`: this process's clips of the global batch. `pin`: page-locked
    memory, so copies to a GPU overlap with compute."""

    def __init__(self, dataset: ClipMixture, seed: int, start: int, count: int, enabled: bool = True,
                 pin: bool = False):
        from concurrent.futures import ThreadPoolExecutor

        self.args = (dataset, seed)
        self.start, self.count, self.pin = start, count, pin
        self.pool = ThreadPoolExecutor(max_workers=1) if enabled else None
        self.pending: dict[int, object] = {}

    def _build(self, iteration: int) -> dict:
        return pinned_batch(*self.args, iteration, self.start, self.count, self.pin)

    def get(self, iteration: int) -> dict:
        if self.pool is None:
            return self._build(iteration)
        future = self.pending.pop(iteration, None) or self.pool.submit(self._build, iteration)
        self.pending[iteration + 1] = self.pool.submit(self._build, iteration + 1)
        return future.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------- models


def build_student(config: TrainConfig) -> MobileVOS:
    spec = config.student
    if spec.init:
        from mvos.runtime.checkpoint import load_checkpoint

        if spec.overrides:
            raise MvosError("config: student.overrides cannot change a model loaded from student.init")
        return load_checkpoint(spec.init, expect_variant=spec.variant)
    model = build_model(spec.variant, backbone_weights=spec.backbone_weights, **spec.overrides)
    if spec.backbone_weights is None and spec.pretrained_effnet and model.config.key_encoder == "efficientnet-lite0":
        load_pretrained_effnet_lite0(model)
    return model


def build_criterion(config: TrainConfig, student: nn.Module, teacher: nn.Module | None) -> DistillationLoss:
    loss = config.loss
    return DistillationLoss(
        decoder_channels(student), decoder_channels(teacher if teacher is not None else student),
        w=loss.w, tau=loss.tau, xe_weight=loss.xe_weight, logit_weight=loss.logit_weight,
        repr_weight=loss.repr_weight, poly_epsilon=loss.poly_epsilon, top_p_start=loss.top_p_start,
        top_p_end=loss.top_p_end, top_p_hold_iters=loss.top_p_hold_iters,
        top_p_warmup_iters=loss.top_p_warmup_iters, band=loss.band, max_pixels=loss.max_pixels)


# ----------------------------------------------------------------------------------------- validation


def score_model(model: MobileVOS, dataset: str, root: str | Path, split: str, sequences: list[str] | None,
                settings: InferenceSettings = DEFAULT, channels_last: bool = False) -> dict[str, float]:
    """J, F and J&F means of `model` segmenting whole sequences with the engine users run (`channels_last`:
    TorchBackend's; a model in training keeps its own layout)."""
    from mvos.training.datasets import load_dataset
    from mvos.training.evaluate import score_results, segment_sequence

    seqs = load_dataset(dataset, Path(root), split, sequences)
    segmenter = Segmenter(TorchBackend(model, settings.top_k, channels_last), settings)
    with tempfile.TemporaryDirectory(prefix="mvos-val-") as tmp:
        for seq in seqs:
            segment_sequence(segmenter, dataset, seq, Path(tmp) / seq.name, Timing())
        scores = score_results(dataset, seqs, Path(tmp)).global_results()
    return {"val_J": scores["J-Mean"], "val_F": scores["F-Mean"], "val_JF": scores["J&F-Mean"]}


# -------------------------------------------------------------------------------------------- logging


class RunLog:
    """log.csv (one row per logged or validated iteration) and loss.png, both rewritten atomically."""

    def __init__(self, run_dir: Path):
        self.csv_path, self.png_path = run_dir / "log.csv", run_dir / "loss.png"
        self.rows: dict[int, dict] = {}

    def load(self, upto: int) -> None:
        """Rows of a resumed run up to its checkpoint; later ones are redone."""
        if not self.csv_path.is_file():
            return
        with open(self.csv_path, newline="") as f:
            for row in csv.DictReader(f):
                if int(row["iteration"]) <= upto:
                    self.rows[int(row["iteration"])] = {k: v for k, v in row.items() if v not in ("", None)}

    def update(self, iteration: int, **values) -> None:
        self.rows.setdefault(iteration, {"iteration": iteration}).update(values)

    def write(self) -> None:
        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, LOG_COLUMNS)
            writer.writeheader()
            for iteration in sorted(self.rows):
                writer.writerow({k: _fmt(v) for k, v in self.rows[iteration].items()})

    def column(self, name: str) -> tuple[list[int], list[float]]:
        points = [(i, float(r[name])) for i, r in sorted(self.rows.items()) if r.get(name) not in (None, "")]
        return [p[0] for p in points], [p[1] for p in points]

    def plot(self, title: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name in ("loss", "xe", "logit", "repr"):
            x, y = self.column(name)
            if x and any(v != 0 for v in y):
                ax.plot(x, y, label=name, linewidth=1.2 if name == "loss" else 0.8)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.set_title(title, fontsize=9)
        x, y = self.column("val_JF")
        if x:
            val_ax = ax.twinx()
            val_ax.plot(x, y, "k--o", markersize=3, label="val J&F")
            val_ax.set_ylabel("validation J&F")
            val_ax.legend(loc="upper right", fontsize=8)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        with atomic_path(self.png_path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Trainer:
    """One process of a run: rank 0 alone writes the run folder (logs, validation, checkpoints); every rank
    trains on its slice of the global batch (batch_size per process)."""

    config: TrainConfig
    progress: bool = True
    run_dir: Path | None = None  # where files go; default config.run_dir (--overwrite stages a new one)
    say: Callable[[str], None] = lambda message: None
    runtime: Runtime | None = None  # device, precision and process group; default: from the config, one process

    def __post_init__(self):
        config = self.config
        self.run_dir = Path(self.run_dir or config.run_dir)
        if self.runtime is None:  # one process
            device = resolve_device(config.device)
            self.runtime = Runtime(device, resolve_precision(config.precision, device))
        device = self.runtime.device
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        random.seed(config.seed)
        self.dataset = build_dataset(config)
        self.student = build_student(config).to(device)
        if config.channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
        if config.student.quantisation_aware:  # after the layout change: it replaces the layers' forwards only
            rounded = prepare_quantisation_aware(self.student)
            self.say(f"quantisation-aware: int8 weights per output channel, {rounded} int8 activations")
        self.teacher = None
        if config.distills:
            self.teacher = build_teacher(config.teacher.model, config.teacher.weights).to(device)
            if config.channels_last:
                self.teacher = self.teacher.to(memory_format=torch.channels_last)
        elif config.teacher.model:
            self.say("note: the teacher is not run: loss.logit_weight and loss.repr_weight are 0")
        self.criterion = build_criterion(config, self.student, self.teacher).to(device)
        # The representation embedding trains only with its loss (DDP also requires every trained weight used).
        self.criterion.embed.requires_grad_(config.loss.repr_weight > 0)
        self.step_module = TrainingStep(self.student, self.criterion, self.teacher, config.student.queue_len,
                                        self.runtime.precision, config.teacher.top_k)
        self.model = self.step_module
        if self.runtime.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.step_module,
                                                 device_ids=[device.index] if device.type == "cuda" else None)
        # The same list whether or not the embedding trains, so checkpoints keep one optimiser layout.
        params = [p for p in self.student.parameters() if p.requires_grad] + list(self.criterion.parameters())
        self.optimizer = torch.optim.Adam(params, lr=config.optim.lr, weight_decay=config.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, config.optim.lr_steps,
                                                              config.optim.lr_gamma)
        # fp16 needs its gradients scaled up so small ones do not flush to zero; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.runtime.precision == "fp16")
        self.log = RunLog(self.run_dir)
        self.iteration = 0

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.runtime.world_size

    # ---- state -----------------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Every rank calls this (the random states are gathered); rank 0 writes."""
        states = self.runtime.gather(_rng_state())
        if not self.runtime.is_main:
            return
        save_checkpoint(path, self.student, iteration=self.iteration, stage=self.config.stage,
                        train_config=self.config.to_dict(), optimizer=self.optimizer.state_dict(),
                        scheduler=self.scheduler.state_dict(), criterion=self.criterion.state_dict(),
                        scaler=self.scaler.state_dict(), rng=states[0], rng_ranks=states)

    def resume(self, path: Path) -> None:
        from mvos.runtime.backbones import check_state_dict

        state = read_checkpoint(path)
        if "optimizer" not in state:
            raise MvosError(f"{path} holds no training state (optimiser, RNG): it cannot be resumed")
        if state["variant"] != self.student.variant:
            raise MvosError(f"{path} is a {state['variant']} run but the config trains {self.student.variant}")
        check_state_dict(self.student.state_dict(), state["model"], f"the {self.student.variant} model in {path}")
        self.student.load_state_dict(state["model"])
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._follow_config_lr_steps()
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        states = state.get("rng_ranks") or [state["rng"]]
        if len(states) != self.runtime.world_size:
            self.say(f"note: {path} was saved by {len(states)} process(es), this run has {self.runtime.world_size}: "
                     f"the batches continue exactly, the per-process random states start from rank 0's")
        _set_rng_state(states[self.runtime.rank] if len(states) == self.runtime.world_size else states[0])
        self.iteration = int(state["iteration"])
        self.log.load(self.iteration)

    # ---- the loop --------------------------------------------------------------------------------------

    def run(self) -> Path:
        config, runtime = self.config, self.runtime
        if runtime.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _write_config(self.run_dir / "config.yaml", config)
            self.say(f"training on {runtime.device} in {runtime.precision}, {runtime.world_size} process(es) x batch "
                     f"{config.batch_size} = global batch {self.global_batch}")
        set_train_mode(self.student, config.optim.freeze_bn)
        bar = tqdm(total=config.iterations, initial=self.iteration, desc=f"train {config.stage}", unit="it",
                   dynamic_ncols=True, disable=not (self.progress and runtime.is_main))
        self.batches = BatchPrefetcher(self.dataset, config.seed, runtime.rank * config.batch_size, config.batch_size,
                                       enabled=config.prefetch, pin=runtime.device.type == "cuda")
        try:
            self._loop(bar)
        finally:
            self.batches.close()
        bar.close()
        final = self.run_dir / FINAL
        if runtime.is_main:
            save_checkpoint(final, self.student, iteration=self.iteration, stage=config.stage,
                            train_config=config.to_dict())
        runtime.barrier()
        return final

    def _loop(self, bar: tqdm) -> None:
        config, runtime = self.config, self.runtime
        window: dict[str, float] = {}
        window_steps, window_time = 0, 0.0
        while self.iteration < config.iterations:
            start = time.perf_counter()
            losses = self._step()
            values = runtime.mean({name: float(losses[name].detach()) for name in ("loss", "xe", "logit", "repr")})
            window_time += time.perf_counter() - start
            window_steps += 1
            self.iteration += 1
            for name, value in values.items():
                window[name] = window.get(name, 0.0) + value
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{self._lr():.2g}", refresh=False)
            last = self.iteration == config.iterations
            if runtime.is_main and (self.iteration % config.log_every == 0 or last):
                self.log.update(self.iteration, **{k: v / window_steps for k, v in window.items()},
                                top_p=float(losses["top_p"]), lr=self._lr(), it_per_s=window_steps / window_time,
                                global_batch=self.global_batch)
                self.log.write()
            if self.iteration % config.log_every == 0 or last:
                window, window_steps, window_time = {}, 0, 0.0
            if config.val.sequences and (self.iteration % config.val.every == 0 or last):
                if runtime.is_main:
                    self._validate(bar)
                runtime.barrier()
            if self.iteration % config.checkpoint_every == 0 or last:
                self._checkpoint()
                runtime.barrier()

    def _step(self) -> dict[str, torch.Tensor]:
        device = self.runtime.device
        batch = {k: v.to(device, non_blocking=True) for k, v in self.batches.get(self.iteration).items()}
        losses = self.model(batch, self.iteration)
        if not torch.isfinite(losses["loss"]):
            raise MvosError(f"the loss is {float(losses['loss'])} at iteration {self.iteration + 1}; "
                            f"lower optim.lr or set optim.grad_clip")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        if self.config.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], self.config.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return losses

    def _follow_config_lr_steps(self) -> None:
        """A resumed run takes its lr drops from the config, not the checkpoint's scheduler, so a run can be
        lengthened (more iterations, later or other drops); the lr becomes the config's at this iteration."""
        optim = self.config.optim
        if sorted(self.scheduler.milestones.elements()) == sorted(optim.lr_steps) and \
                self.scheduler.gamma == optim.lr_gamma:
            return  # unchanged: keep the saved lr bit for bit
        self.scheduler.milestones, self.scheduler.gamma = Counter(optim.lr_steps), optim.lr_gamma
        drops = sum(step <= self.scheduler.last_epoch for step in optim.lr_steps)
        self.scheduler.base_lrs = [optim.lr] * len(self.optimizer.param_groups)
        for group in self.optimizer.param_groups:
            group["lr"] = optim.lr * optim.lr_gamma ** drops

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _validate(self, bar: tqdm) -> None:
        val = self.config.val
        # The engine's own RNG use (none today) must not shift the training batches: keep the state.
        rng = _rng_state()
        scores = score_model(self.student, val.dataset, val.root, val.split, val.sequences,
                             DEFAULT.replace(size=val.size, queue_len=self.config.student.queue_len))
        _set_rng_state(rng)
        set_train_mode(self.student, self.config.optim.freeze_bn)
        self.log.update(self.iteration, **scores)
        self.log.write()
        bar.write(f"iteration {self.iteration}: validation J&F {scores['val_JF']:.4f} "
                  f"(J {scores['val_J']:.4f}, F {scores['val_F']:.4f})")

    def _checkpoint(self) -> None:
        self.save(self.run_dir / LATEST)
        if not self.runtime.is_main:
            return
        if self.config.keep_snapshots:
            save_checkpoint(self.run_dir / "snapshots" / f"iter_{self.iteration:07d}.pth", self.student,
                            iteration=self.iteration, stage=self.config.stage, train_config=self.config.to_dict())
        self.log.plot(f"{self.config.stage}: {self.student.variant} ({self.run_dir.name})")


def _write_config(path: Path, config: TrainConfig) -> None:
    import yaml

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def config_inputs(config: TrainConfig) -> list[str]:
    """Every path a run reads: its run_dir may be none of them, nor hold or lie inside one."""
    data = config.data
    paths = [s.root for s in data.sources] + [config.val.root]
    paths += [p for s in data.images + data.paste_images for p in (s.images, s.masks)]
    paths += [config.student.init, config.student.backbone_weights, config.teacher.weights]
    if config.teacher.model not in (None, "stcn"):
        paths.append(config.teacher.model)
    return [p for p in paths if p]


def train(config: TrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False,
          say: Callable[[str], None] = lambda message: None) -> Path:
    """Runs (or resumes) a training run; returns the path of final.pth. A run_dir that already holds files
    needs `resume` (continue it) or `overwrite` (train anew, replacing it when the new run completes).
    `say` receives the notes a user should see (resuming from where, an unused teacher). Under torchrun every
    process calls this; rank 0 alone checks and writes the run folder."""
    from mvos.training import distributed

    if resume and overwrite:
        raise MvosError("--resume continues the run in run_dir and --overwrite replaces it: choose one")
    runtime = distributed.start(config.device, config.precision)
    previous = signal.getsignal(signal.SIGTERM)
    if runtime.distributed:
        signal.signal(signal.SIGTERM, _stopped_by_torchrun)
    progress_of: list[Trainer] = []
    try:
        return _train(config, runtime, resume, progress, overwrite, say if runtime.is_main else _silent, progress_of)
    except RuntimeError as exc:
        if not runtime.distributed:
            raise
        at = progress_of[0].iteration if progress_of else 0
        raise MvosError(f"process {runtime.rank} of {runtime.world_size} lost the others at iteration {at} "
                        f"({str(exc).strip().splitlines()[0][:160]}); resume the run from its last checkpoint "
                        f"with --resume") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        distributed.stop()


def _silent(message: str) -> None:
    pass


def _stopped_by_torchrun(signum, frame) -> None:
    raise MvosError("stopped by SIGTERM: torchrun ends every process of a run when one of them fails; resume the "
                    "run from its last checkpoint with --resume")


def _train(config: TrainConfig, runtime: Runtime, resume: bool, progress: bool, overwrite: bool, say,
           progress_of: list) -> Path:
    from contextlib import nullcontext

    from mvos.runtime.io import check_output, staged_directory

    run_dir = Path(config.run_dir)
    verdict = None
    if runtime.is_main:  # one process decides, so every rank stops with the same one line
        try:
            check_output(run_dir, inputs=tuple(config_inputs(config)), overwrite=True, flag="run_dir")
            occupied = run_dir.is_dir() and any(run_dir.iterdir()) or (run_dir.exists() and not run_dir.is_dir())
            if occupied and not (resume or overwrite):
                raise MvosError(f"run_dir {run_dir} already holds files: pass --resume to continue its run, "
                                f"--overwrite to replace it, or choose another run_dir")
            verdict = ("ok", occupied)
        except MvosError as exc:
            verdict = ("error", str(exc))
    kind, value = runtime.share(verdict)
    if kind == "error":
        raise MvosError(value)
    if overwrite and value:
        # The old run stays until the new one is complete; a killed new run is removed by the next run here.
        with staged_directory(run_dir) if runtime.is_main else nullcontext() as staging:
            trainer = Trainer(config, progress=progress, run_dir=runtime.share(staging), say=say, runtime=runtime)
            progress_of.append(trainer)
            trainer.run()
        return run_dir / FINAL
    latest = run_dir / LATEST
    trainer = Trainer(config, progress=progress, say=say, runtime=runtime)
    progress_of.append(trainer)
    if resume and latest.exists():
        trainer.resume(latest)
        say(f"resuming {config.run_dir} from iteration {trainer.iteration}")
    elif resume:
        say(f"no checkpoint in {config.run_dir} yet: starting from iteration 0")
    return trainer.run()
