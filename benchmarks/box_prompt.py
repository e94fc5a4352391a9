"""How good a first mask `mvos segment --box` gives: for every sequence of a DAVIS-layout dataset, the tight box
around frame 0's ground-truth object goes through the same GrabCut as the CLI (mvos.runtime.boxes), and the
mask is scored by IoU against that ground truth. Writes box_prompt.csv (one row per sequence, the split of the
shipped recipe marked) and prints the table.

    python benchmarks/box_prompt.py --root ../shared/datasets/davis2016-train --out benchmarks/results/box_prompt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

SHIPPED_VIDEO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "shipped" / "mobilenetv2_video.yaml"


def shipped_split() -> tuple[set[str], set[str]]:
    """The shipped recipe's DAVIS-2016 test and validation sequences, as its video-stage config holds them:
    validation is what it scores, test the rest of what it excludes from training."""
    from mvos.training.config import load_config

    config = load_config(SHIPPED_VIDEO_CONFIG)
    validation = set(config.val.sequences)
    excluded = {name for source in config.data.sources for name in source.exclude}
    return excluded - validation, validation


def first_frame(root: Path, sequence: str) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 frame 0 and its bool object mask (every labelled pixel: DAVIS-2016 has one object)."""
    images = sorted((root / "JPEGImages" / "480p" / sequence).iterdir())
    masks = sorted((root / "Annotations" / "480p" / sequence).iterdir())
    return np.asarray(Image.open(images[0]).convert("RGB")), np.asarray(Image.open(masks[0])) > 0


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 (x1/y1 exclusive) of a bool mask's pixels."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="a DAVIS-2016 layout dataset")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/box_prompt"))
    args = parser.parse_args()

    from mvos.runtime.boxes import mask_from_boxes
    from mvos.runtime.io import write_csv
    from mvos.training.metrics import region_similarity

    test, validation = shipped_split()
    rows = []
    for sequence in sorted(p.name for p in (args.root / "JPEGImages" / "480p").iterdir()):
        frame, truth = first_frame(args.root, sequence)
        box = tight_box(truth)
        iou = float(region_similarity(truth, mask_from_boxes(frame, [box]) > 0))
        split = "test" if sequence in test else "validation" if sequence in validation else "train"
        rows.append({"sequence": sequence, "split": split, "box": ",".join(map(str, box)), "iou": round(iou, 3)})
        print(f"{sequence:<20}{split:<12}{iou:.3f}")
    for split in ("test", "validation", "train"):
        scores = [r["iou"] for r in rows if r["split"] == split]
        print(f"{split}: {sum(s >= 0.8 for s in scores)}/{len(scores)} with IoU >= 0.8, mean {np.mean(scores):.3f}")
    write_csv(args.out / "box_prompt.csv", rows)
    print(f"wrote {args.out / 'box_prompt.csv'}")


if __name__ == "__main__":
    main()
