"""Training clips: short videos from DAVIS / YouTube-VOS sequences and pseudo-clips from static images.

Both datasets return the same dict (T frames, crop HxW, O = max_objects):
    frames       float (T,3,H,W), ImageNet-normalised RGB
    masks        float (T,O,H,W), 1 where object k is; all zero for padded objects k >= num_objects
    labels       long  (T,H,W), 0 background, 1..num_objects (the chosen objects, relabelled)
    num_objects  int, 1..O; the first frame always shows every chosen object
    info         {"name": str, "frames": list[int] source frame indices}
Augmentation follows STCN: a random resized crop, flip, affine and colour jitter drawn once per clip, plus an
optional small per-frame jitter. Every geometric step is folded into one matrix per frame, so each frame is
interpolated once.

Randomness comes from torch's generator (one draw per item), so a DataLoader seeds workers differently and
`torch.manual_seed` makes runs repeatable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence as SequenceOf
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from mvos.runtime.errors import MvosError
from mvos.runtime.io import IMAGE_SUFFIXES, read_image, read_mask
from mvos.runtime.model import IMAGENET_MEAN, IMAGENET_STD
from mvos.runtime.settings import DEFAULT

_MEAN = np.array(IMAGENET_MEAN, np.float32)
_STD = np.array(IMAGENET_STD, np.float32)
_FILL = tuple(float(v) for v in _MEAN * 255)  # out-of-image pixels become 0 after normalisation


@dataclass(frozen=True)
class Augment:
    """Augmentation ranges. Angles in degrees, colour amounts as +- fractions (torchvision ColorJitter style)."""

    crop: tuple[int, int] = (384, 384)
    scale: tuple[float, float] = (0.36, 1.0)  # crop area as a fraction of the source (RandomResizedCrop)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio w/h
    degrees: float = 15.0
    shear: float = 10.0
    flip_p: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.03
    saturation: float = 0.03
    grayscale_p: float = 0.05
    # Per-frame jitter on top of the clip's parameters; zeros make every frame share one transform.
    frame_degrees: float = 2.0
    frame_translate: float = 0.01  # fraction of the crop size
    frame_colour: float = 0.01


# Static stage: every pseudo-frame gets its own view of the image (STCN: affine 20 deg, shear 10, scale 0.9-1.1).
STATIC_AUGMENT = Augment(scale=(0.5, 1.0), degrees=20.0, brightness=0.1, contrast=0.05, saturation=0.05,
                         frame_degrees=0.0, frame_translate=0.0, frame_colour=0.0)
NO_AUGMENT = Augment(scale=(1.0, 1.0), degrees=0.0, shear=0.0, flip_p=0.0, brightness=0.0, contrast=0.0,
                     saturation=0.0, grayscale_p=0.0, frame_degrees=0.0, frame_translate=0.0, frame_colour=0.0)


# ------------------------------------------------------------------------------------------------ geometry


def _translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], np.float64)


def _rotation_shear(degrees: float, shear_degrees: float, scale_x: float = 1.0, scale_y: float = 1.0) -> np.ndarray:
    a, s = math.radians(degrees), math.tan(math.radians(shear_degrees))
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    return rot @ np.array([[1, s, 0], [0, 1, 0], [0, 0, 1]]) @ np.diag([scale_x, scale_y, 1.0])


def _sample_crop(rng: np.random.Generator, src_hw: tuple[int, int], aug: Augment) -> tuple[float, float, float, float]:
    """(x0, y0, w, h) of a RandomResizedCrop box inside the source; the whole image if nothing fits in 10 tries."""
    h, w = src_hw
    for _ in range(10):
        area = h * w * rng.uniform(*aug.scale)
        aspect = math.exp(rng.uniform(math.log(aug.ratio[0]), math.log(aug.ratio[1])))
        cw, ch = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if cw <= w and ch <= h:
            return rng.uniform(0, w - cw), rng.uniform(0, h - ch), cw, ch
    return 0.0, 0.0, float(w), float(h)


def sample_view(rng: np.random.Generator, src_hw: tuple[int, int], aug: Augment) -> np.ndarray:
    """3x3 matrix mapping source pixel coordinates to crop coordinates: flip, crop box, rotation + shear."""
    out_h, out_w = aug.crop
    x0, y0, cw, ch = _sample_crop(rng, src_hw, aug)
    flip = np.eye(3)
    if rng.random() < aug.flip_p:
        flip = np.array([[-1.0, 0, src_hw[1] - 1], [0, 1, 0], [0, 0, 1]])
    affine = _rotation_shear(rng.uniform(-aug.degrees, aug.degrees), rng.uniform(-aug.shear, aug.shear),
                             out_w / cw, out_h / ch)
    to_centre = _translation(-(x0 + (cw - 1) / 2), -(y0 + (ch - 1) / 2))
    return _translation((out_w - 1) / 2, (out_h - 1) / 2) @ affine @ to_centre @ flip


def frame_jitter(rng: np.random.Generator, aug: Augment) -> np.ndarray:
    """Small per-frame rotation + translation about the crop centre (3x3, crop -> crop coordinates)."""
    out_h, out_w = aug.crop
    if aug.frame_degrees == 0 and aug.frame_translate == 0:
        return np.eye(3)
    centre = _translation((out_w - 1) / 2, (out_h - 1) / 2)
    shift = _translation(*(rng.uniform(-aug.frame_translate, aug.frame_translate, 2) * (out_w, out_h)))
    rot = _rotation_shear(rng.uniform(-aug.frame_degrees, aug.frame_degrees), 0.0)
    return shift @ centre @ rot @ np.linalg.inv(centre)


def elastic_field(rng: np.random.Generator, out_hw: tuple[int, int], alpha: float, grid: int = 6) -> np.ndarray:
    """Smooth random displacement (2,H,W) float32 in pixels: a coarse grid of offsets in [-alpha, alpha],
    upsampled bicubically, so neighbouring pixels move together."""
    h, w = out_hw
    coarse = rng.uniform(-alpha, alpha, (grid, grid, 2)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).transpose(2, 0, 1)


def warp(image: np.ndarray, label: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int],
         displacement: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resample an RGB image (bilinear) and its id map (nearest) into the crop.

    matrix: 3x3 source -> crop; displacement (2,H,W): crop pixel (u, v) samples the point that
    (u + dx, v + dy) maps back to. Outside the source the image is the ImageNet mean and the label 0.
    """
    h, w = out_hw
    if displacement is None:
        m = matrix[:2].astype(np.float64)
        return (cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=_FILL),
                cv2.warpAffine(label, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0))
    inv = np.linalg.inv(matrix)
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = u + displacement[0], v + displacement[1]
    map_x = (inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]).astype(np.float32)
    map_y = (inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]).astype(np.float32)
    return (cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderValue=_FILL),
            cv2.remap(label, map_x, map_y, cv2.INTER_NEAREST, borderValue=0))


# -------------------------------------------------------------------------------------------------- colour


@dataclass(frozen=True)
class Colour:
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    grayscale: bool = False

    @staticmethod
    def sample(rng: np.random.Generator, brightness: float, contrast: float, saturation: float,
               grayscale_p: float = 0.0) -> Colour:
        b, c, s = (1 + rng.uniform(-a, a) for a in (brightness, contrast, saturation))
        return Colour(b, c, s, bool(rng.random() < grayscale_p))

    def compose(self, other: Colour) -> Colour:
        return Colour(self.brightness * other.brightness, self.contrast * other.contrast,
                      self.saturation * other.saturation, self.grayscale or other.grayscale)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB (H,W,3) -> float32 RGB in [0, 1]."""
        x = image.astype(np.float32) / 255 * self.brightness
        gray = x @ np.array([0.299, 0.587, 0.114], np.float32)  # (H,W)
        x = (x - gray.mean()) * self.contrast + gray.mean()
        gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = gray[..., None] + (x - gray[..., None]) * (0.0 if self.grayscale else self.saturation)
        return np.clip(x, 0.0, 1.0)


# ------------------------------------------------------------------------------------------ copy-paste


@dataclass(frozen=True)
class Paste:
    """One extra object pasted over a clip (multi-object clips from single-object data, with occlusions)."""

    p: float = 0.0  # probability that a clip gets an extra object
    size: tuple[float, float] = (0.2, 0.6)  # the object's longer side as a fraction of the crop's
    drift: float = 0.05  # largest per-frame shift, as a fraction of the crop side
    feather: float = 1.0  # edge blur (pixels) so the paste boundary is no give-away


class DonorBank:
    """Objects to paste: image/mask pairs (each one still) and video sequences (whose objects move on their
    own through consecutive frames). A donor is a list of (RGB uint8, bool mask) frames."""

    def __init__(self, pairs: SequenceOf[tuple[Path, Path]] = (), sequences: SequenceOf = (),
                 dataset: str = "davis2016", mask_reader: Callable[[Path], np.ndarray] = read_mask):
        self.pairs = [(Path(i), Path(m)) for i, m in pairs]
        self.sequences = list(sequences)
        self.read_mask = mask_reader
        self.read_annotation = _dataset_reader(dataset) if self.sequences else None
        if not self.pairs and not self.sequences:
            raise MvosError("copy-paste needs donors: image/mask pairs or video sequences")

    def draw(self, rng: np.random.Generator, num_frames: int, exclude: str | None = None) -> list | None:
        total = len(self.pairs) + len(self.sequences)
        pick = int(rng.integers(total))
        if pick < len(self.pairs):
            image_path, mask_path = self.pairs[pick]
            mask = self.read_mask(mask_path) > 0
            return [(read_image(image_path), mask)] * num_frames
        seq = self.sequences[pick - len(self.pairs)]
        if seq.name == exclude or len(seq.mask_paths) < num_frames:
            return None
        annotated = sorted(seq.mask_paths)
        start = int(rng.integers(len(annotated) - num_frames + 1))
        frames = annotated[start:start + num_frames]
        object_id = int(rng.choice(seq.object_ids)) if seq.object_ids else 1
        return [(read_image(seq.frame_paths[t]), self.read_annotation(seq.mask_paths[t]) == object_id) for t in frames]


def paste_object(images: list[np.ndarray], labels: list[np.ndarray], donor: list, new_id: int,
                 rng: np.random.Generator, paste: Paste, min_pixels: int) -> bool:
    """Pastes the donor's object over every frame (in place) as object `new_id`, moving along a random
    straight path. images: uint8 RGB crops; labels: uint8 id maps. False (nothing changed) when the object
    would be too small in the first frame."""
    out_h, out_w = labels[0].shape
    ys, xs = np.nonzero(donor[0][1])
    if len(ys) < min_pixels:
        return False
    box_h, box_w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    scale = rng.uniform(*paste.size) * min(out_h, out_w) / max(box_h, box_w)
    centre = np.array([(xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2])
    start = rng.uniform(0.15, 0.85, 2) * (out_w, out_h)
    velocity = rng.uniform(-paste.drift, paste.drift, 2) * min(out_h, out_w)
    flip = rng.random() < 0.5
    warped = []
    for t, (image, mask) in enumerate(donor):
        to_origin = _translation(-centre[0], -centre[1])
        mirror = np.diag([-1.0, 1.0, 1.0]) if flip else np.eye(3)
        grow = 1.0 + 0.02 * t * (1 if velocity[0] > 0 else -1)  # a little approach or retreat
        place = _translation(*(start + velocity * t)) @ np.diag([scale * grow, scale * grow, 1.0]) @ mirror
        m = (place @ to_origin)[:2]
        alpha = cv2.warpAffine(mask.astype(np.float32), m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderValue=0)
        if paste.feather > 0:
            alpha = cv2.GaussianBlur(alpha, (0, 0), paste.feather)
        rgb = cv2.warpAffine(image, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderValue=_FILL)
        warped.append((rgb, alpha))
    if int((warped[0][1] > 0.5).sum()) < min_pixels:
        return False
    for t, (rgb, alpha) in enumerate(warped):
        a = alpha[..., None]
        images[t] = (rgb.astype(np.float32) * a + images[t].astype(np.float32) * (1 - a)).round().astype(np.uint8)
        labels[t] = np.where(alpha > 0.5, np.uint8(new_id), labels[t])
    return True


def _visible(label: np.ndarray, chosen: list[int], min_pixels: int) -> bool:
    counts = np.bincount(label.ravel(), minlength=256)
    return all(counts[i] >= min_pixels for i in chosen)


def maybe_paste(images: list[np.ndarray], labels: list[np.ndarray], chosen: list[int], max_objects: int,
                bank: DonorBank | None, paste: Paste, rng: np.random.Generator, min_pixels: int,
                source: str | None = None) -> list[int]:
    """With probability paste.p (and room for another object), pastes one and returns the new chosen ids;
    keeps the clip as it was if a pasted object would hide a chosen one in the first frame."""
    if bank is None or len(chosen) >= max_objects or rng.random() >= paste.p:
        return chosen
    donor = bank.draw(rng, len(images), exclude=source)
    if donor is None:
        return chosen
    new_id = max(int(label.max()) for label in labels) + 1
    if new_id > 254:
        return chosen
    kept_images, kept_labels = list(images), list(labels)
    if not paste_object(images, labels, donor, new_id, rng, paste, min_pixels) \
            or not _visible(labels[0], chosen, min_pixels):
        images[:], labels[:] = kept_images, kept_labels
        return chosen
    return chosen + [new_id]


# ------------------------------------------------------------------------------------------ clip assembly


def choose_objects(rng: np.random.Generator, first_label: np.ndarray, candidates: SequenceOf[int],
                   max_objects: int, min_pixels: int) -> list[int]:
    """Up to `max_objects` candidate ids that cover at least `min_pixels` of the first frame, in random order."""
    counts = np.bincount(first_label.ravel(), minlength=256)
    present = [i for i in candidates if 0 < i < 256 and counts[i] >= min_pixels]
    return [present[i] for i in rng.permutation(len(present))[:max_objects]]


def assemble(images: list[np.ndarray], labels: list[np.ndarray], chosen: list[int], max_objects: int,
             info: dict) -> dict:
    """float32 [0,1] RGB frames + uint8 id maps -> the training sample dict (see the module docstring)."""
    lut = np.zeros(256, np.int64)
    lut[chosen] = np.arange(1, len(chosen) + 1)
    ids = torch.from_numpy(np.stack([lut[label] for label in labels]))  # (T,H,W)
    frames = torch.from_numpy(np.stack([(im - _MEAN) / _STD for im in images])).permute(0, 3, 1, 2)
    objects = torch.arange(1, max_objects + 1).view(1, -1, 1, 1)
    return {"frames": frames.float().contiguous(), "masks": (ids.unsqueeze(1) == objects).float(),
            "labels": ids, "num_objects": len(chosen), "info": info}


def _draw_rng() -> np.random.Generator:
    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))


def sample_frame_positions(rng: np.random.Generator, available: int, num_frames: int, max_gap: int,
                           reverse_p: float = 0.5) -> list[int]:
    """`num_frames` distinct positions in range(available), consecutive ones 1..max_gap apart (the gap shrinks
    so the clip fits), in time order or, with probability `reverse_p`, reversed."""
    if available < num_frames:
        raise ValueError(f"{available} frames cannot make a clip of {num_frames}")
    if num_frames == 1:
        return [int(rng.integers(available))]
    gap = max(1, min(max_gap, (available - 1) // (num_frames - 1)))
    steps = rng.integers(1, gap + 1, num_frames - 1)
    start = int(rng.integers(0, available - int(steps.sum())))
    positions = [start, *(start + np.cumsum(steps)).tolist()]
    return positions[::-1] if rng.random() < reverse_p else positions


class _RetryingClips(Dataset):
    """A dataset whose `_try_clip(index, rng)` may find no usable object in a clip's first frame: `sample`
    retries the same item, then random others, before giving up in one line."""

    max_tries: int
    min_object_pixels: int
    what = "clip"

    def __getitem__(self, index: int) -> dict:
        return self.sample(index, _draw_rng())

    def sample(self, index: int, rng: np.random.Generator) -> dict:
        for attempt in range(self.max_tries * 10):
            clip = self._try_clip(index if attempt < self.max_tries else int(rng.integers(len(self))), rng)
            if clip is not None:
                return clip
        raise MvosError(f"no {self.what} with an object of >= {self.min_object_pixels} pixels in its first frame "
                        f"after {self.max_tries * 10} tries; {self.hint}")


class VideoClipDataset(_RetryingClips):
    """Clips of `num_frames` annotated frames from DAVIS-2017 / YouTube-VOS sequences (training.datasets).

    Frames are taken only from annotated frames (YouTube-VOS train annotates every 5th), and `max_gap` counts
    annotated frames. `set_max_gap` drives the curriculum; DataLoader workers copy the dataset when an
    iterator starts, so change it between epochs (or without persistent workers).
    """

    def __init__(self, sequences: SequenceOf, *, num_frames: int = 5, max_gap: int = 5,
                 crop: int | tuple[int, int] = 384, max_objects: int = 3, dataset: str = "davis2017",
                 augment: Augment = Augment(), min_object_pixels: int = 100, max_tries: int = 10,
                 reverse_p: float = 0.5, max_short_side: int | None = DEFAULT.size,
                 annotation_reader: Callable[[Path], np.ndarray] | None = None,
                 paste: Paste = Paste(), donors: DonorBank | None = None):
        if num_frames < 1 or max_objects < 1:
            raise MvosError("a clip needs at least one frame and one object")
        self.sequences = [s for s in sequences if len(s.mask_paths) >= num_frames]
        if not self.sequences:
            raise MvosError(f"no sequence has {num_frames} annotated frames; lower num_frames or add data")
        self.num_frames, self.max_objects = num_frames, max_objects
        self.augment = replace(augment, crop=(crop, crop) if isinstance(crop, int) else tuple(crop))
        self.min_object_pixels, self.max_tries, self.reverse_p = min_object_pixels, max_tries, reverse_p
        self.max_short_side = max_short_side
        self.read_annotation = annotation_reader or _dataset_reader(dataset)
        self.paste, self.donors = paste, donors
        self.set_max_gap(max_gap)

    def set_max_gap(self, max_gap: int) -> None:
        if max_gap < 1:
            raise MvosError(f"max_gap must be at least 1, got {max_gap}")
        self.max_gap = max_gap

    hint = "check the annotations or lower min_object_pixels"

    def __len__(self) -> int:
        return len(self.sequences)

    def _load(self, seq, frame: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = read_image(seq.frame_paths[frame]), self.read_annotation(seq.mask_paths[frame])
        short = min(image.shape[:2])
        if self.max_short_side and short > self.max_short_side:  # e.g. 720p YouTube-VOS, as STCN's 480p copies
            size = tuple(round(s * self.max_short_side / short) for s in image.shape[1::-1])
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        return image, label

    def _try_clip(self, index: int, rng: np.random.Generator) -> dict | None:
        seq = self.sequences[index]
        annotated = sorted(seq.mask_paths)
        frames = [annotated[p] for p in sample_frame_positions(rng, len(annotated), self.num_frames,
                                                               self.max_gap, self.reverse_p)]
        aug = self.augment
        image, label = self._load(seq, frames[0])
        view = sample_view(rng, label.shape, aug)
        jitters = [frame_jitter(rng, aug) for _ in frames]
        first_image, first_label = warp(image, label, jitters[0] @ view, aug.crop)
        chosen = choose_objects(rng, first_label, seq.object_ids, self.max_objects, self.min_object_pixels)
        if not chosen:
            return None
        warped = [(first_image, first_label)] + [warp(*self._load(seq, frame), jitters[t] @ view, aug.crop)
                                                 for t, frame in enumerate(frames) if t > 0]
        images, labels = [w[0] for w in warped], [w[1] for w in warped]
        chosen = maybe_paste(images, labels, chosen, self.max_objects, self.donors, self.paste, rng,
                             self.min_object_pixels, source=seq.name)
        colour = Colour.sample(rng, aug.brightness, aug.contrast, aug.saturation, aug.grayscale_p)
        c = aug.frame_colour
        images = [colour.compose(Colour.sample(rng, c, c, c)).apply(image) for image in images]
        return assemble(images, labels, chosen, self.max_objects, {"name": seq.name, "frames": frames})


def _dataset_reader(dataset: str) -> Callable[[Path], np.ndarray]:
    from mvos.training.datasets import read_annotation

    return lambda path: read_annotation(path, dataset)


class StaticImageDataset(_RetryingClips):
    """Pseudo-clips from single images: each frame is its own random view (crop, flip, affine) of the image
    and mask, elastically deformed with probability `elastic_p` (STCN's static-image pre-training stage)."""

    def __init__(self, pairs: SequenceOf[tuple[Path, Path]], *, num_frames: int = 3,
                 crop: int | tuple[int, int] = 384, max_objects: int = 3, augment: Augment = STATIC_AUGMENT,
                 elastic_p: float = 0.5, elastic_alpha: float = 8.0, elastic_grid: int = 6,
                 min_object_pixels: int = 100, max_tries: int = 10,
                 mask_reader: Callable[[Path], np.ndarray] = read_mask,
                 paste: Paste = Paste(), donors: DonorBank | None = None):
        if not pairs:
            raise MvosError("no image/mask pairs for the static-image dataset")
        self.pairs = [(Path(i), Path(m)) for i, m in pairs]
        self.num_frames, self.max_objects = num_frames, max_objects
        self.augment = replace(augment, crop=(crop, crop) if isinstance(crop, int) else tuple(crop))
        self.elastic_p, self.elastic_alpha, self.elastic_grid = elastic_p, elastic_alpha, elastic_grid
        self.min_object_pixels, self.max_tries = min_object_pixels, max_tries
        self.read_mask = mask_reader
        self.paste, self.donors = paste, donors

    what, hint = "pseudo-clip", "check the masks"

    def __len__(self) -> int:
        return len(self.pairs)

    def _try_clip(self, index: int, rng: np.random.Generator) -> dict | None:
        image_path, mask_path = self.pairs[index]
        image, mask = read_image(image_path), self.read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise MvosError(f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but {image_path} is "
                            f"{image.shape[1]}x{image.shape[0]}")
        aug = self.augment
        images, labels, chosen = [], [], []
        for t in range(self.num_frames):
            field = None
            if rng.random() < self.elastic_p:
                field = elastic_field(rng, aug.crop, self.elastic_alpha, self.elastic_grid)
            frame, label = warp(image, mask, sample_view(rng, mask.shape, aug), aug.crop, field)
            if t == 0:
                chosen = choose_objects(rng, label, range(1, 255), self.max_objects, self.min_object_pixels)  # 255: void
                if not chosen:
                    return None
            images.append(frame)
            labels.append(label)
        chosen = maybe_paste(images, labels, chosen, self.max_objects, self.donors, self.paste, rng,
                             self.min_object_pixels)
        images = [Colour.sample(rng, aug.brightness, aug.contrast, aug.saturation, aug.grayscale_p).apply(frame)
                  for frame in images]
        return assemble(images, labels, chosen, self.max_objects,
                        {"name": image_path.stem, "frames": [0] * self.num_frames})


def find_image_mask_pairs(image_root: Path, mask_root: Path | None = None) -> list[tuple[Path, Path]]:
    """Images under `image_root` (recursively) with a PNG mask of the same relative path under `mask_root`
    (DAVIS: JPEGImages/480p + Annotations/480p). Without `mask_root`, masks sit beside their images as
    <stem>.png, so PNGs there are masks, not images."""
    image_root = Path(image_root)
    beside = mask_root is None
    mask_root = image_root if beside else Path(mask_root)
    suffixes = IMAGE_SUFFIXES - {".png"} if beside else IMAGE_SUFFIXES
    pairs = []
    for image in sorted(p for p in image_root.rglob("*") if p.suffix.lower() in suffixes):
        mask = (mask_root / image.relative_to(image_root)).with_suffix(".png")
        if mask.is_file() and mask != image:
            pairs.append((image, mask))
    if not pairs:
        raise MvosError(f"no image with a matching PNG mask under {image_root}"
                        + ("" if beside else f" and {mask_root}"))
    return pairs
