"""A strip of a few frames with `mvos segment`'s masks drawn on them, side by side in one PNG (the README's
picture of the dog being tracked):

    mvos segment examples/dog.mp4 --mask examples/dog_00000.png --out out/dog
    python examples/overlay_strip.py examples/dog.mp4 out/dog --frames 0,30,60,89 --out docs/images/dog_strip.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path, help="the video (or frames folder) that was segmented")
    parser.add_argument("masks", type=Path, help="mvos segment's output folder (00000.png ...)")
    parser.add_argument("--frames", default="0,30,60,89", help="comma-separated frame indices")
    parser.add_argument("--width", type=int, default=427, help="width of each frame in the strip (pixels)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from mvos.runtime.io import atomic_path, open_frames, overlay, read_mask

    frames = open_frames(args.video)
    tiles = []
    for index in (int(i) for i in args.frames.split(",")):
        drawn = overlay(frames.frame(index), read_mask(args.masks / f"{index:05d}.png"))
        height = round(drawn.shape[0] * args.width / drawn.shape[1])
        tile = cv2.resize(drawn, (args.width, height), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, f"frame {index}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
        tiles.append(tile)
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    strip = np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        Image.fromarray(strip).save(tmp, format="PNG")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
