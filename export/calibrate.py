"""Real inputs for full-integer int8: what each exported graph receives while the PyTorch model segments real
clips at the export size, recorded exactly as the TFLite runtime would feed it (the same frame fitting and
padding, one value-encoder call per object, the decoder's object padding and chunking)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvos.runtime.errors import MvosError
from mvos.runtime.inference import Segmenter, TorchBackend, track
from mvos.runtime.manifest import graph_key
from mvos.runtime.model import MobileVOS, QueryFeatures
from mvos.runtime.settings import DEFAULT
from mvos.runtime.tflite import decoder_feeds, nhwc_numpy

CALIBRATION_FRAMES = 24  # per clip: enough to cover the activation ranges, quick to record
REPO_EXAMPLES = Path(__file__).resolve().parents[1] / "examples"  # present in a source checkout


@dataclass
class Clip:
    """A real video with the objects of its first frame: what calibration and the int8 check segment."""

    name: str
    frames: list[np.ndarray]
    mask: np.ndarray


def read_clip(video: str | Path, mask: str | Path, frames: int | None = None) -> Clip:
    from mvos.runtime.io import open_frames, read_mask, resize_mask

    source = open_frames(video)
    first = read_mask(mask)
    if first.shape != tuple(source.size):
        first = resize_mask(first, source.size)
    if not first.any():
        raise MvosError(f"calibration mask {mask} marks no object")
    taken = [frame for _, frame in zip(range(frames or len(source)), source)]
    return Clip(Path(video).name, taken, first)


def video_and_mask(text: str, option: str = "--calibration") -> tuple[Path, Path]:
    """'VIDEO:MASK' (the last colon splits, so a video path may hold colons) -> (video, mask)."""
    video, sep, mask = text.rpartition(":")
    if not sep or not video or not mask:
        raise MvosError(f"{option} {text!r} must be VIDEO:MASK (a clip and its first-frame mask)")
    return Path(video), Path(mask)


def example_clips(frames: int | None = None) -> list[Clip]:
    """The repository's example clips with their first-frame masks (examples/<name>.mp4 + <name>_00000.png)."""
    clips = [read_clip(video, video.with_name(f"{video.stem}_00000.png"), frames)
             for video in sorted(REPO_EXAMPLES.glob("*.mp4")) if video.with_name(f"{video.stem}_00000.png").is_file()]
    if not clips:
        raise MvosError("int8 needs real frames to calibrate on: pass --calibration VIDEO:MASK (the examples/ "
                        "clips are only in a source checkout)")
    return clips


class RecordingBackend(TorchBackend):
    """PyTorch at a fixed export size that keeps every graph input it computes."""

    def __init__(self, model: MobileVOS, size: tuple[int, int], max_objects: int, top_k: int | None):
        super().__init__(model, top_k)
        self.fixed_size = tuple(size)
        self.max_objects = max_objects
        self.records: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)

    def encode_key(self, frame: torch.Tensor, memorise: bool = False):
        self.records["key_encoder"].append({"frame": nhwc_numpy(frame).copy()})
        return super().encode_key(frame)

    def encode_value(self, frame, features, masks, others):
        f16 = nhwc_numpy(features.f16).copy()
        for i in range(masks.shape[0]):  # the exported value encoder takes one object a call
            mask, other = nhwc_numpy(masks[i:i + 1]).copy(), nhwc_numpy(others[i:i + 1]).copy()
            self.records["value_encoder"].append({"f16": f16, "mask": mask, "others": other})
            # And with the roles swapped, as when another object is tracked: a one-object clip never fills
            # "others", whose int8 range would collapse to zero (scales XNNPACK refuses to load).
            self.records["value_encoder"].append({"f16": f16, "mask": other, "others": mask})
        return super().encode_value(frame, features, masks, others)

    def decode(self, query: QueryFeatures, memory_keys, memory_values, num_objects: int):
        key = graph_key("decoder", memory_keys.shape[0])
        for feed, _ in decoder_feeds(query, memory_keys, memory_values, num_objects, self.max_objects,
                                     self.model.config.value_dim):
            self.records[key].append({name: array.copy() for name, array in feed.items()})
        return super().decode(query, memory_keys, memory_values, num_objects)


def calibration_inputs(model: MobileVOS, size: tuple[int, int], queue_lens: list[int], max_objects: int,
                       clips: list[Clip], top_k: int | None = None) -> dict[str, list[dict[str, np.ndarray]]]:
    """graph key -> the inputs it received (one dict per call) while segmenting the clips, for every queue
    length (the encoders' inputs do not depend on it)."""
    records: dict[str, list] = defaultdict(list)
    with torch.inference_mode():
        for queue_len in queue_lens:
            for clip in clips:
                backend = RecordingBackend(model, size, max_objects, top_k)
                for _ in track(Segmenter(backend, DEFAULT.replace(queue_len=queue_len, top_k=top_k)),
                               clip.frames[:CALIBRATION_FRAMES], {0: (clip.mask, None)}):
                    pass
                for key, items in backend.records.items():
                    if key.startswith("decoder") or queue_len == queue_lens[0]:
                        records[key] += items
    return dict(records)
