"""Small generated videos and masks shared by the runtime tests (no downloads, no shared data)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from mvos.runtime.io import palette_image


def moving_scene(num_frames: int = 8, height: int = 48, width: int = 80, objects: int = 2,
                 seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames (RGB uint8) and ground-truth id masks of coloured shapes drifting over a textured background."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
    colours = [(230, 40, 40), (40, 220, 60), (50, 80, 240)]
    frames, masks = [], []
    for t in range(num_frames):
        frame, mask = background.copy(), np.zeros((height, width), np.uint8)
        for k in range(objects):
            cx = int(width * (0.25 + 0.5 * k / max(objects - 1, 1)) + 2 * t * (1 if k % 2 == 0 else -1))
            cy = int(height * 0.5 + (k - objects / 2) * 4)
            radius = max(4, min(height, width) // 6)
            cv2.circle(frame, (cx, cy), radius, colours[k % 3], -1)
            cv2.circle(mask, (cx, cy), radius, k + 1, -1)
        frames.append(frame)
        masks.append(mask)
    return frames, masks


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_frame_folder(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index:05d}.jpg", quality=95)
    return folder


def write_palette_mask(path: Path, mask: np.ndarray) -> Path:
    palette_image(mask).save(path)
    return path
