"""How closely an export's precisions follow fp32 PyTorch on real clips that calibration did not see: each clip is
segmented from its first-frame mask by the TFLite runtime and by PyTorch at the export's size (the checks
`mvos export` records, `mvos.export.verify.end_to_end`), closed loop and one step at a time (the exported graphs
memorising PyTorch's masks, so one frame's differences cannot steer the later ones). Writes agreement.csv.

    mvos export --size 480x864 --queue-len 2 --precision fp32,int8 --out /tmp/export
    python benchmarks/export_agreement.py --model-dir /tmp/export --out benchmarks/results/export_agreement \\
        --clip examples/dog.mp4:examples/dog_00000.png \\
        --clip ../shared/datasets/davis2016-train/JPEGImages/480p/bear:../shared/datasets/davis2016-train/Annotations/480p/bear/00000.png
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="an `mvos export` folder")
    parser.add_argument("--clip", action="append", required=True, metavar="VIDEO:MASK",
                        help="a video (file or frames folder) and its first-frame mask; repeatable")
    parser.add_argument("--weights", default=None, help="the checkpoint the export was made from (default: shipped)")
    parser.add_argument("--queue-len", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/export_agreement"))
    args = parser.parse_args()

    import torch

    from mvos.export.calibrate import read_clip, video_and_mask
    from mvos.export.verify import end_to_end, exported_model
    from mvos.runtime.io import write_csv

    torch.set_num_threads(args.threads)
    manifest, model = exported_model(args.model_dir, args.weights)
    rows = []
    for text in args.clip:
        video, mask = video_and_mask(text, "--clip")
        clip = read_clip(video, mask)
        clip.name = video.stem
        references: dict = {}  # PyTorch runs once per clip, for every precision
        for precision in manifest.precisions():
            check = end_to_end(model, args.model_dir, precision, args.queue_len, manifest.top_k, args.threads,
                               reference_cache=references, clip=clip)
            rows.append(asdict(check))
            print(f"{clip.name:<12} {precision:<5} frames {check.frames:>4}  closed-loop IoU {check.mean_iou:.4f}  "
                  f"one-step IoU {check.one_step_iou:.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "agreement.csv", rows)
    print(f"wrote {args.out / 'agreement.csv'}")


if __name__ == "__main__":
    main()
