"""`mvos synth`: synthetic DAVIS-2017-layout videos for tests and smoke runs.

Each sequence shows 1-3 textured shapes (ellipses, polygons, stars) that move smoothly, change scale, rotate
and occlude each other (fixed z-order) over a textured background (noise, gradient or stripes) seen by a
slowly drifting camera. Layout written:
    OUT/JPEGImages/480p/<seq>/00000.jpg
    OUT/Annotations/480p/<seq>/00000.png      palette PNG (DAVIS palette), object ids 1..K, 0 = background
    OUT/ImageSets/2017/train.txt, val.txt     sequence names, one a line
Every sequence is drawn from its own generator seeded by (seed, index), so the first n sequences do not
depend on how many are generated, and the whole dataset is reproducible from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mvos.runtime.errors import MvosError
from mvos.runtime.io import check_output, palette_image, staged_directory

SHAPES = ("ellipse", "polygon", "star")
TEXTURES = ("noise", "gradient", "stripes")
MAX_OBJECTS = 10
# An object must show this fraction of the frame in frame 0, or semi-supervised VOS has nothing to start from.
MIN_FIRST_FRAME_AREA = 0.002


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random texture (h, w, 3) uint8: smooth colour noise, a two-colour gradient or stripes, plus grain."""
    kind = TEXTURES[rng.integers(len(TEXTURES))]
    if kind == "noise":
        cells = rng.uniform(0, 255, (max(2, h // 24), max(2, w // 24), 3)).astype(np.float32)
        img = cv2.resize(cells, (w, h), interpolation=cv2.INTER_CUBIC)
    else:
        c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        proj = xx * np.cos(angle) + yy * np.sin(angle)
        if kind == "gradient":
            t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
        else:
            period = rng.uniform(8, 40)
            t = 0.5 + 0.5 * np.sin(2 * np.pi * proj / period)
        img = c0 + t[..., None] * (c1 - c0)
    img = img + rng.normal(0, 8, (h, w, 3)).astype(np.float32)  # grain so every surface has texture
    return np.clip(img, 0, 255).astype(np.uint8)


def shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random shape centred in a (size, size) uint8 {0, 1} sprite mask."""
    kind = SHAPES[rng.integers(len(SHAPES))]
    c, r = size / 2, size * 0.45
    if kind == "ellipse":
        axes = (int(r), int(r * rng.uniform(0.45, 1.0)))
        pts = cv2.ellipse2Poly((int(c), int(c)), axes, int(rng.uniform(0, 180)), 0, 360, 5)
    else:
        if kind == "polygon":
            n = int(rng.integers(3, 8))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = r * rng.uniform(0.6, 1.0, n)
        else:
            n = int(rng.integers(5, 8))
            angles = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False) + rng.uniform(0, np.pi)
            radii = np.where(np.arange(2 * n) % 2 == 0, r, r * rng.uniform(0.35, 0.6))
        pts = np.stack([c + radii * np.cos(angles), c + radii * np.sin(angles)], 1).round().astype(np.int32)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [pts], 1)
    return mask


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold positions into [lo, hi] so objects bounce off the borders instead of leaving for good."""
    span = hi - lo
    t = np.mod(x - lo, 2 * span)
    return lo + np.where(t > span, 2 * span - t, t)


@dataclass
class _Sprite:
    """One object: its texture and mask in its own frame, and its pose in every video frame."""
    image: np.ndarray  # (S,S,3) uint8
    mask: np.ndarray  # (S,S) uint8
    centre: np.ndarray  # (T,2) x, y in frame pixels
    scale: np.ndarray  # (T,)
    angle: np.ndarray  # (T,) degrees

    def pose(self, t: int) -> np.ndarray:
        """2x3 affine from sprite to frame coordinates at frame t."""
        s = self.mask.shape[0]
        m = cv2.getRotationMatrix2D((s / 2, s / 2), float(self.angle[t]), float(self.scale[t]))
        m[:, 2] += self.centre[t] - s / 2
        return m


def _make_sprite(rng: np.random.Generator, frames: int, h: int, w: int) -> _Sprite:
    base = min(h, w)
    size = int(base * rng.uniform(0.25, 0.5))
    t = np.arange(frames, dtype=np.float64)
    speed = rng.uniform(1.0, 4.0) * base / 240  # pixels per frame at 240p
    heading = rng.uniform(0, 2 * np.pi)
    wobble = rng.uniform(0, 0.03 * base, 2)
    phase = rng.uniform(0, 2 * np.pi, 2)
    start = rng.uniform([0.2 * w, 0.2 * h], [0.8 * w, 0.8 * h])
    x = start[0] + speed * np.cos(heading) * t + wobble[0] * np.sin(0.3 * t + phase[0])
    y = start[1] + speed * np.sin(heading) * t + wobble[1] * np.sin(0.3 * t + phase[1])
    centre = np.stack([_reflect(x, 0.1 * w, 0.9 * w), _reflect(y, 0.1 * h, 0.9 * h)], 1)
    scale = rng.uniform(0.8, 1.2) * (1 + 0.2 * np.sin(rng.uniform(0.05, 0.25) * t + rng.uniform(0, 2 * np.pi)))
    angle = rng.uniform(0, 360) + rng.uniform(-3, 3) * t
    return _Sprite(texture(rng, size, size), shape_mask(rng, size), centre, scale, angle)


def render_sequence(rng: np.random.Generator, frames: int, h: int, w: int,
                    num_objects: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Render one video: `frames` RGB images (h,w,3) uint8 and id maps (h,w) uint8 with ids 1..num_objects."""
    margin = max(4, int(0.1 * min(h, w)))
    background = texture(rng, h + 2 * margin, w + 2 * margin)
    drift = rng.uniform(-0.6, 0.6, 2)  # camera drift in pixels per frame
    sprites = [_make_sprite(rng, frames, h, w) for _ in range(num_objects)]  # list order = z-order, last on top
    images, labels = [], []
    for t in range(frames):
        ox, oy = np.clip(np.round(margin + drift * t), 0, 2 * margin).astype(int)
        image = background[oy:oy + h, ox:ox + w].copy()
        label = np.zeros((h, w), np.uint8)
        for obj_id, sprite in enumerate(sprites, start=1):
            m = sprite.pose(t)
            mask = cv2.warpAffine(sprite.mask, m, (w, h), flags=cv2.INTER_NEAREST).astype(bool)
            pixels = cv2.warpAffine(sprite.image, m, (w, h), flags=cv2.INTER_LINEAR)
            image[mask] = pixels[mask]
            label[mask] = obj_id
        images.append(image)
        labels.append(label)
    return images, labels


def _first_frame_ok(label: np.ndarray, num_objects: int) -> bool:
    counts = np.bincount(label.ravel(), minlength=num_objects + 1)[1:]
    return bool((counts >= MIN_FIRST_FRAME_AREA * label.size).all())


def _write_sequence(root: Path, name: str, images: list[np.ndarray], labels: list[np.ndarray]) -> None:
    img_dir = root / "JPEGImages" / "480p" / name
    ann_dir = root / "Annotations" / "480p" / name
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for t, (image, label) in enumerate(zip(images, labels)):
        cv2.imwrite(str(img_dir / f"{t:05d}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        palette_image(label).save(ann_dir / f"{t:05d}.png")


def split_names(names: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Last round(n * val_fraction) names go to val, at least one when there are two or more sequences."""
    n_val = round(len(names) * val_fraction)
    if val_fraction > 0 and len(names) >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, len(names) - 1) if names else 0
    return names[:len(names) - n_val], names[len(names) - n_val:]


def generate(out: Path, sequences: int, frames: int, size: tuple[int, int] = (240, 432),
             objects: tuple[int, int] = (1, 3), seed: int = 0, val_fraction: float = 0.2,
             overwrite: bool = False, progress: bool = True) -> dict[str, list[str]]:
    """Write a synthetic DAVIS-2017-layout dataset to `out`; returns {"train": names, "val": names}.

    The dataset is built in a temporary folder next to `out` and renamed into place, so `out` is either
    absent, the previous dataset, or complete.
    """
    h, w = size
    lo, hi = objects
    if sequences < 1 or frames < 1:
        raise MvosError(f"need at least one sequence and one frame (got {sequences} sequences, {frames} frames)")
    if h < 32 or w < 32:
        raise MvosError(f"frame size {h}x{w} is too small; use at least 32x32")
    if not 1 <= lo <= hi <= MAX_OBJECTS:
        raise MvosError(f"objects must be a range within 1..{MAX_OBJECTS}, got {lo}..{hi}")
    if not 0.0 <= val_fraction < 1.0:
        raise MvosError(f"val fraction must be in [0, 1), got {val_fraction}")
    out = check_output(out, overwrite=overwrite)

    names = [f"synth{i:04d}" for i in range(sequences)]
    train, val = split_names(names, val_fraction)
    with staged_directory(out) as tmp:
        for i, name in enumerate(tqdm(names, desc="synth", unit="seq", disable=not progress)):
            rng = np.random.default_rng([seed, i])
            num_objects = int(rng.integers(lo, hi + 1))
            while True:  # redraw until every object is visible in frame 0 (rarely needs a second draw)
                images, labels = render_sequence(rng, frames, h, w, num_objects)
                if _first_frame_ok(labels[0], num_objects):
                    break
            _write_sequence(tmp, name, images, labels)
        sets = tmp / "ImageSets" / "2017"
        sets.mkdir(parents=True)
        for split, split_list in (("train", train), ("val", val)):
            (sets / f"{split}.txt").write_text("".join(f"{n}\n" for n in split_list))
    return {"train": train, "val": val}


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise MvosError(f"--size must look like 240x432 (height x width), got {text!r}") from None
    return h, w


def parse_range(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.split("..")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise MvosError(f"--objects must be a count or a range like 1..3, got {text!r}")
