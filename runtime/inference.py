"""The stateful per-frame engine. `Segmenter` owns resizing, the memory of each object group and soft
aggregation; a backend (PyTorch here, TFLite in `mvos.runtime.tflite`) only runs the three networks, so
both backends share every line of the inference logic.

Objects given in the same frame form a group with its own memory (the frame they were given in is that
memory's reference slot), so objects may first appear in a later frame, as in YouTube-VOS.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mvos.runtime.errors import MvosError
from mvos.runtime.manifest import quantise
from mvos.runtime.memory import FixedQueueMemory, UnboundedMemory, make_memory, others_mask
from mvos.runtime.model import IMAGENET_MEAN, IMAGENET_STD, STRIDE, KeyFeatures, QueryFeatures, soft_aggregate
from mvos.runtime.settings import DEFAULT, InferenceSettings

MAX_OBJECTS = 255


class Backend(Protocol):
    """What the engine needs from a network runner. Tensors are torch, batch 1 frame. Features and memory values
    may come in the backend's own storage (int8 steps of a full-integer export): the engine only stores them
    and hands them back to the same backend."""

    name: str
    fixed_size: tuple[int, int] | None  # (H, W) when the networks only take one input size
    channels_last: bool  # frames wanted channels-last (NHWC) in memory
    host_threads: int | None  # torch threads for the engine's own work between network calls (None: as set)
    # (scale, zero point) where encode_key takes the frame as int8, by whether the engine will memorise it (a
    # backend with more exact memory encoders takes those frames as their key encoder does): the engine then
    # quantises the frame as it normalises it
    def frame_quantisation(self, memorise: bool = False) -> tuple[float, int] | None: ...

    # 1,3,H,W. memorise: the engine will memorise this frame (its key and f16 go into the memory), so a backend
    # with more exact memory encoders runs those on it
    def encode_key(self, frame: torch.Tensor, memorise: bool = False) -> KeyFeatures: ...

    def encode_value(self, frame: torch.Tensor, features: KeyFeatures, masks: torch.Tensor,
                     others: torch.Tensor) -> torch.Tensor: ...  # masks, others: N,1,H,W -> N,Cv,h,w

    def decode(self, query: QueryFeatures, memory_keys: torch.Tensor, memory_values: torch.Tensor,
               num_objects: int) -> torch.Tensor: ...  # T,Ck,h,w ; T,N*Cv,h,w -> logits N,1,H,W

    def describe(self) -> dict: ...


class TorchBackend:
    """Any network with the stage interface (MobileVOS, the STCN teacher) run by PyTorch."""

    name = "torch"
    fixed_size = None
    host_threads = None  # the networks are torch too: the caller's thread setting serves both

    def __init__(self, model, top_k: int | None = None, channels_last: bool = False):
        """channels_last: convert the model's weights (in place) and take frames channels-last in memory, the
        layout CPU convolutions run fastest in (1.4-2x here); off where the caller owns the model's layout."""
        self.model = model.eval()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.top_k = top_k
        self.device = next(model.parameters()).device  # frames go where the model is (a GPU during GPU training)

    def frame_quantisation(self, memorise: bool = False) -> None:
        return None  # float frames throughout

    def encode_key(self, frame: torch.Tensor, memorise: bool = False) -> KeyFeatures:
        return self.model.encode_key(frame.to(self.device))

    def encode_value(self, frame: torch.Tensor, features: KeyFeatures, masks: torch.Tensor,
                     others: torch.Tensor) -> torch.Tensor:
        return self.model.encode_value(frame, features, masks, others)

    def decode(self, query: QueryFeatures, memory_keys: torch.Tensor, memory_values: torch.Tensor,
               num_objects: int) -> torch.Tensor:
        keys = memory_keys.transpose(0, 1).reshape(1, memory_keys.shape[1], -1)  # 1,Ck,T*h*w
        values = memory_values.permute(0, 2, 3, 1).reshape(1, -1, memory_values.shape[1])  # 1,T*h*w,N*Cv
        return self.model.segment(query, keys, values, num_objects, self.top_k)[0]

    def describe(self) -> dict:
        return {"backend": self.name, "variant": self.model.variant, "top_k": self.top_k,
                "parameters": self.model.num_parameters(), "config": self.model.config.to_dict()}


@contextmanager
def torch_threads(count: int | None):
    """torch's intra-op threads set to `count` inside the block, restored after (None: unchanged)."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class FrameGeometry:
    """How a frame of `original` size maps to the network input: resize to `resized`, pad to `padded`."""

    original: tuple[int, int]
    resized: tuple[int, int]
    padded: tuple[int, int]

    @classmethod
    def for_frame(cls, height: int, width: int, short_side: int | None,
                  fixed_size: tuple[int, int] | None) -> "FrameGeometry":
        if fixed_size is not None:  # fit inside the exported size, keeping the aspect ratio
            scale = min(fixed_size[0] / height, fixed_size[1] / width)
            resized = (min(fixed_size[0], round(height * scale)), min(fixed_size[1], round(width * scale)))
            return cls((height, width), resized, fixed_size)
        scale = 1.0 if short_side is None else short_side / min(height, width)
        resized = (max(1, round(height * scale)), max(1, round(width * scale)))
        padded = tuple(math.ceil(s / STRIDE) * STRIDE for s in resized)
        return cls((height, width), resized, padded)

    def pad(self, x: torch.Tensor, value: float = 0.0) -> torch.Tensor:
        """x: ...,resized_h,resized_w -> ...,padded_h,padded_w (bottom/right padding)."""
        return F.pad(x, (0, self.padded[1] - self.resized[1], 0, self.padded[0] - self.resized[0]), value=value)

    @property
    def shrinks(self) -> bool:
        """The frame is made smaller to fit (not kept, not enlarged)."""
        return self.resized != self.original and all(r <= o for r, o in zip(self.resized, self.original))

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """x: C,padded_h,padded_w probabilities -> C,original_h,original_w, bilinear (align_corners=False)."""
        x = x[:, : self.resized[0], : self.resized[1]]
        if self.resized == self.original:
            return x
        if x.device.type != "cpu" or x.dtype != torch.float32:
            return F.interpolate(x[None], size=self.original, mode="bilinear", align_corners=False)[0]
        # OpenCV's bilinear, channel by channel: the same sampling as F.interpolate's within 6e-5, and 4-6x
        # faster on one thread (0.3-0.6 against 2.8-4.0 ms for two 480x853 maps to 720x1280 here).
        source = x.numpy()
        restored = np.empty((x.shape[0], *self.original), np.float32)
        for channel in range(len(source)):
            cv2.resize(source[channel], self.original[::-1], dst=restored[channel], interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(restored)


@dataclass
class ObjectGroup:
    object_ids: list[int]
    memory: FixedQueueMemory | UnboundedMemory


@dataclass
class Segmenter:
    """`step(frame, mask)` per frame -> probabilities (1+N, H, W): background then `object_ids` order.
    The memory settings (queue length, mode) and the resize come from `settings`; the backend runs the
    networks (top-k is the backend's, as the exported decoder bakes it in)."""

    backend: Backend
    settings: InferenceSettings = DEFAULT
    object_ids: list[int] = field(default_factory=list)
    groups: list[ObjectGroup] = field(default_factory=list)
    frame_index: int = 0

    def __post_init__(self):
        # (x/255 - mean)/std of every uint8 value per channel: one table lookup per value (4x faster than a
        # multiply-add from uint8 here)
        levels = np.arange(256, dtype=np.float64)[:, None] / 255.0
        self._normalise = ((levels - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32).reshape(256, 1, 3)
        # And straight to int8 for a backend whose key encoder takes int8 frames: the same values its own
        # quantisation of the normalised frame gives, in one lookup instead of a float frame and five passes
        # over it (0.5 against 1.6-2.0 ms per 480x854 frame here). One table per quantisation, made on first use.
        self._quantised: dict[tuple[float, int], tuple[np.ndarray, int]] = {}

    @property
    def size(self) -> int | None:
        """Short side frames are resized to; fixed-size backends fit frames into their own size instead."""
        return None if self.backend.fixed_size is not None else self.settings.size

    def reset(self) -> None:
        self.object_ids, self.groups, self.frame_index = [], [], 0

    def describe(self) -> dict:
        s = self.settings
        return {**self.backend.describe(), "queue_len": s.queue_len, "memory": s.memory, "mem_every": s.mem_every,
                "size": self.size}

    @property
    def num_parameters(self) -> int:
        return int(self.backend.describe().get("parameters", 0))

    def memory_nbytes(self) -> int:
        return sum(group.memory.nbytes() for group in self.groups)

    @torch.inference_mode()
    def step(self, frame: np.ndarray, mask: np.ndarray | None = None, objects: list[int] | None = None) -> np.ndarray:
        """frame: H,W,3 uint8 RGB. mask: H,W object ids given on this frame (new objects, or a correction);
        `objects` limits which ids of the mask are taken (default: every non-zero id in it)."""
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise MvosError(f"frame {self.frame_index}: expected an HxWx3 RGB image, got shape {frame.shape}")
        geometry = FrameGeometry.for_frame(frame.shape[0], frame.shape[1], self.size, self.backend.fixed_size)
        with torch_threads(self.backend.host_threads):
            # Known before the frame is encoded: a given mask starts a memory (a correction of known objects
            # may not be memorised, which costs only time); otherwise each memory's own interval decides.
            memorise = mask is not None or any(group.memory.wants(self.frame_index) for group in self.groups)
            image = self._prepare_frame(frame, geometry, self.backend.frame_quantisation(memorise))
            features = self.backend.encode_key(image, memorise=memorise)

            object_probs = self._predict(features, geometry)  # N,1,H,W
            if mask is not None:
                object_probs = self._apply_mask(object_probs, mask, objects, geometry)
            if not self.object_ids:
                raise MvosError(f"frame {self.frame_index}: no objects to track yet (give a mask with at least one "
                                f"object)")
            probs = soft_aggregate(object_probs, dim=0)  # 1+N,1,H,W
            self._memorise(image, features, probs[1:])
            self.frame_index += 1
            return geometry.restore(probs[:, 0]).cpu().numpy()

    def index_map(self, probs: np.ndarray) -> np.ndarray:
        """1+N,H,W probabilities -> H,W uint8 object ids."""
        return label_map(probs, [0] + self.object_ids)

    # ---- internals ---------------------------------------------------------------------------------------

    def _prepare_frame(self, frame: np.ndarray, geometry: FrameGeometry,
                       quantisation: tuple[float, int] | None = None) -> torch.Tensor:
        """H,W,3 uint8 -> 1,3,H,W: (x/255 - mean)/std, resized (shrunk by area averaging, enlarged bilinearly),
        zero-padded bottom/right; as int8 steps of `quantisation` (the key encoder's frame input), when no
        resize is needed."""
        if frame.dtype != np.uint8:
            raise MvosError(f"frame {self.frame_index}: expected uint8 RGB values, got {frame.dtype}")
        frame = np.ascontiguousarray(frame)
        same_size = geometry.resized == geometry.original
        if quantisation is not None and same_size:  # int8 for the graph (resized frames go through float)
            if quantisation not in self._quantised:  # table, padding's 0.0
                table = quantise(self._normalise, *quantisation).astype(np.int8)
                self._quantised[quantisation] = (table, quantisation[1])
            table, zero_point = self._quantised[quantisation]
            padded = torch.full((1, *geometry.padded, 3), zero_point, dtype=torch.int8)
        else:
            table, padded = self._normalise, torch.zeros(1, *geometry.padded, 3)  # NHWC, the frame's own layout
        inside = padded[0, : geometry.resized[0], : geometry.resized[1]]
        if same_size:
            target = inside.numpy()
            written = cv2.LUT(frame, table, dst=target)  # straight into the padded frame
            assert np.shares_memory(written, target)  # OpenCV allocates anew, silently, for a dst it cannot take
        elif geometry.shrinks:  # normalising and resizing are both linear, so normalising first is exact
            # Area averaging, as training shrinks its frames (OpenCV's INTER_AREA): 3-4 against 12.5 ms for
            # torch's antialiased bilinear of a 1280x720 frame to 853x480 here.
            target = inside.numpy()
            written = cv2.resize(cv2.LUT(frame, self._normalise), geometry.resized[::-1], dst=target,
                                 interpolation=cv2.INTER_AREA)
            assert np.shares_memory(written, target)
        else:  # enlarged: bilinear (antialiasing changes nothing when enlarging)
            source = torch.from_numpy(cv2.LUT(frame, self._normalise)).permute(2, 0, 1)[None]  # channels-last
            resized = F.interpolate(source, size=geometry.resized, mode="bilinear", align_corners=False, antialias=True)
            inside.copy_(resized[0].permute(1, 2, 0))
        image = padded.permute(0, 3, 1, 2)  # 1,3,H,W, channels-last in memory
        return image if self.backend.channels_last else image.contiguous()

    def _predict(self, features: KeyFeatures, geometry: FrameGeometry) -> torch.Tensor:
        per_group = []
        for group in self.groups:
            keys, values = group.memory.read()
            logits = self.backend.decode(features.query, keys, values, len(group.object_ids))  # n,1,H,W
            per_group.append(torch.sigmoid(logits))
        if not per_group:
            return torch.zeros(0, 1, *geometry.padded, device=features.key.device)
        return torch.cat(per_group, dim=0)

    def _apply_mask(self, object_probs: torch.Tensor, mask: np.ndarray, objects: list[int] | None,
                    geometry: FrameGeometry) -> torch.Tensor:
        if mask.shape != geometry.original:
            raise MvosError(f"frame {self.frame_index}: mask is {mask.shape[1]}x{mask.shape[0]} but the frame is "
                            f"{geometry.original[1]}x{geometry.original[0]}")
        present = [int(i) for i in np.unique(mask) if i != 0]
        ids = present if objects is None else [int(i) for i in objects]
        missing = [i for i in ids if i not in present]
        if missing:
            raise MvosError(f"frame {self.frame_index}: object ids {missing} are not in the mask")
        if not ids:
            return object_probs
        new_ids = [i for i in ids if i not in self.object_ids]
        if len(self.object_ids) + len(new_ids) > MAX_OBJECTS:
            raise MvosError(f"at most {MAX_OBJECTS} objects can be tracked, got {len(self.object_ids) + len(new_ids)}")

        given = torch.from_numpy(np.stack([mask == i for i in ids]).astype(np.float32))[:, None]  # k,1,H0,W0
        if geometry.resized != geometry.original:
            given = F.interpolate(given, size=geometry.resized, mode="nearest")
        given = geometry.pad(given).to(object_probs.device)  # k,1,H,W
        covered = given.amax(dim=0, keepdim=True)
        object_probs = object_probs * (1 - covered)  # given objects own their pixels
        for row, object_id in enumerate(ids):
            if object_id in self.object_ids:
                object_probs[self.object_ids.index(object_id)] = given[row]
        if new_ids:
            object_probs = torch.cat([object_probs, given[[ids.index(i) for i in new_ids]]], dim=0)
            self.object_ids.extend(new_ids)
            s = self.settings
            self.groups.append(ObjectGroup(new_ids, make_memory(s.memory, s.queue_len, s.mem_every)))
        return object_probs

    def _memorise(self, image: torch.Tensor, features: KeyFeatures, object_probs: torch.Tensor) -> None:
        """object_probs: N,1,H,W aggregated probabilities of this frame's result."""
        others = None  # every object's "others" counts all groups' objects; only memorised frames need it
        start = 0
        for group in self.groups:
            n = len(group.object_ids)
            if group.memory.wants(self.frame_index):
                if others is None:
                    others = others_mask(object_probs, dim=0)
                masks = object_probs[start:start + n]
                value = self.backend.encode_value(image, features, masks, others[start:start + n])  # n,Cv,h,w
                group.memory.write(features.key[0], value.reshape(-1, *value.shape[2:]), self.frame_index)
            start += n


def label_map(scores: np.ndarray, ids: list[int]) -> np.ndarray:
    """C,H,W scores -> H,W uint8: ids[c] of each pixel's best channel c, the first best winning ties as argmax
    does. Comparisons and uint8 arithmetic only: numpy's first-axis argmax strides across channels, and masked
    writes (putmask, where) are as slow (2.3 ms for 2x480x854 here against 0.13)."""
    labels = np.full(scores.shape[1:], ids[0], np.uint8)
    better, step = np.empty(labels.shape, bool), np.empty_like(labels)
    best = scores[0]
    for channel in range(1, len(scores)):
        np.greater(scores[channel], best, out=better)
        np.subtract(np.uint8(ids[channel]), labels, out=step)  # wraps modulo 256: labels + step == ids[channel]
        np.multiply(step, better.view(np.uint8), out=step)
        labels += step
        if channel + 1 < len(scores):
            best = np.maximum(best, scores[channel])
    return labels


# ------------------------------------------------------------------------------------------- the video loop


@dataclass
class TrackedFrame:
    index: int
    frame: np.ndarray  # the input, H,W,3 uint8 RGB
    labels: np.ndarray  # H,W uint8 object ids at the frame's own size
    probs: np.ndarray | None  # 1+N,H,W (background, then `object_ids` order); None before any object is given
    ms: float | None  # model time (step + label map, no file I/O); None when nothing ran


@dataclass
class Timing:
    """Model time per frame; the steady state leaves out the first timed frame, which pays one-off
    allocation and warm-up."""

    ms: list[float] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)  # the index of each timed frame

    def add(self, frame: TrackedFrame) -> None:
        if frame.ms is not None:
            self.ms.append(frame.ms)
            self.frames.append(frame.index)

    @property
    def steady(self) -> list[float]:
        return self.ms[1:] or self.ms

    @property
    def ms_per_frame(self) -> float:
        return float(np.mean(self.steady)) if self.ms else 0.0

    @property
    def fps(self) -> float:
        return 1000.0 / self.ms_per_frame if self.ms_per_frame else 0.0


def track(segmenter: Segmenter, frames, masks: dict[int, tuple[np.ndarray, list[int] | None]]):
    """The one loop that segments a video: yields a TrackedFrame per input frame. `masks` maps a frame index to
    (mask of object ids, which ids to take or None for all of them) where objects are given; frames before the
    first given object come back empty and untimed, and given objects come back exactly as given on their
    frame."""
    segmenter.reset()
    for index, frame in enumerate(frames):
        mask, objects = masks.get(index, (None, None))
        if not segmenter.object_ids and mask is None:
            yield TrackedFrame(index, frame, np.zeros(frame.shape[:2], np.uint8), None, None)
            continue
        start = time.perf_counter()
        probs = segmenter.step(frame, mask, objects)
        labels = segmenter.index_map(probs)
        if mask is not None:  # the objects given here come back exactly as given, not resized twice
            given = mask if objects is None else np.where(np.isin(mask, objects), mask, 0)
            labels = np.where(given > 0, given, labels).astype(np.uint8)
        yield TrackedFrame(index, frame, labels, probs, (time.perf_counter() - start) * 1000)
