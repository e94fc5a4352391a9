"""First-frame masks from boxes, for users with no mask to hand: OpenCV's GrabCut inside each box (the same
algorithm the Android demo runs on the box a user drags)."""

from __future__ import annotations

import cv2
import numpy as np

from mvos.runtime.errors import MvosError

GRABCUT_ITERATIONS = 5
MAX_SIDE = 960  # GrabCut runs on frames at most this large (its cost grows with the pixels), masks come back full size


def parse_box(text: str) -> tuple[int, int, int, int]:
    """'x0,y0,x1,y1' (pixels, x1/y1 exclusive) -> a tuple; one-line errors for anything else."""
    try:
        values = tuple(int(round(float(v))) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise MvosError(f"--box {text!r} must be x0,y0,x1,y1 (pixels of the first frame)")
    return values


def check_box(box: tuple[int, int, int, int], frame_size: tuple[int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    height, width = frame_size
    label = f"--box {x0},{y0},{x1},{y1}"
    if x1 < x0 or y1 < y0:
        raise MvosError(f"{label} is reversed: x0,y0 is the top-left corner and x1,y1 the bottom-right")
    if x1 == x0 or y1 == y0:
        raise MvosError(f"{label} is empty")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise MvosError(f"{label} is outside the {width}x{height} frame")
    if x1 - x0 < 4 or y1 - y0 < 4:
        raise MvosError(f"{label} is too small to segment (at least 4x4 pixels)")
    return box


def grabcut_geometry(frame_size: tuple[int, int], box: tuple[int, int, int, int]):
    """Where GrabCut runs for `box` on a frame of `frame_size` (H, W): the (H, W) it is shrunk to (at most
    MAX_SIDE on the long side) and the x, y, w, h rectangle there. The Android app follows this (golden test)."""
    height, width = frame_size
    scale = min(1.0, MAX_SIDE / max(height, width))
    size = (height, width) if scale == 1.0 else (round(height * scale), round(width * scale))
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    return size, (x0, y0, max(1, x1 - x0), max(1, y1 - y0))


def grabcut(frame: np.ndarray, box: tuple[int, int, int, int], iterations: int = GRABCUT_ITERATIONS) -> np.ndarray:
    """bool H,W: GrabCut's (probable) foreground inside `box` of an RGB uint8 frame."""
    height, width = frame.shape[:2]
    size, rect = grabcut_geometry((height, width), box)
    image = frame if size == (height, width) else cv2.resize(frame, size[::-1], interpolation=cv2.INTER_AREA)
    labels = np.zeros(image.shape[:2], np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's k-means start: the same mask every run
    cv2.grabCut(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), labels, rect, background, foreground, iterations,
                cv2.GC_INIT_WITH_RECT)
    mask = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    if size != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return mask.astype(bool)


def paint_order(boxes: list[tuple[int, int, int, int]]) -> list[int]:
    """Indices of `boxes`, largest first: later (smaller) boxes win where objects overlap."""
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    return sorted(range(len(boxes)), key=lambda i: -area(boxes[i]))


def mask_from_boxes(frame: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """uint8 H,W object ids: box i (in the order given) becomes object i+1. Where objects overlap, the one of
    the smaller box wins (it is usually the one in front)."""
    if not boxes:
        raise MvosError("give at least one --box")
    if len(boxes) > 255:
        raise MvosError(f"at most 255 boxes, got {len(boxes)}")
    boxes = [check_box(box, frame.shape[:2]) for box in boxes]
    ids = np.zeros(frame.shape[:2], np.uint8)
    for index in paint_order(boxes):
        found = grabcut(frame, boxes[index])
        if not found.any():
            x0, y0, x1, y1 = boxes[index]
            raise MvosError(f"--box {x0},{y0},{x1},{y1}: GrabCut found no object inside it; draw the box around one")
        ids[found] = index + 1
    return ids
