"""How closely an export's precisions follow fp32 PyTorch on real clips that calibration did not see: each clip is
segmented from its first-frame mask by the TFLite runtime and by PyTorch at the export's size (the checks
`mvos export` records, `mvos.export.verify.end_to_end`), closed loop and one step at a time (the exported graphs
memorising PyTorch's masks, so one frame's differences cannot steer the later ones); each less exact precision
also with the memory made by the most exact one's encoders (`--memory-precision`). Writes agreement.csv.

    mvos export --size 480x864 --queue-len 2 --precision fp32,int8 --out /tmp/export
    python benchmarks/export_agreement.py --model-dir /tmp/export --out benchmarks/results/export_agreement \\
        --clip examples/dog.mp4:examples/dog_00000.png \\
        --clip ../shared/datasets/davis2016-train/JPEGImages/480p/bear:../shared/datasets/davis2016-train/Annotations/480p/bear/00000.png
"""

from __future__ import annotations

from dataclasses import asdict

import real_clips


def main() -> None:
    args = real_clips.parser(__doc__, "benchmarks/results/export_agreement").parse_args()

    from mvos.export.verify import end_to_end
    from mvos.runtime.io import write_csv
    from mvos.runtime.settings import memory_engines

    manifest, model = real_clips.export_and_model(args)
    rows = []
    for clip in real_clips.clips(args):
        references: dict = {}  # PyTorch runs once per clip, for every precision
        for precision, memory in memory_engines(manifest.precisions()):
            check = end_to_end(model, args.model_dir, precision, args.queue_len, manifest.top_k, args.threads,
                               reference_cache=references, clip=clip, memory_precision=memory)
            rows.append(asdict(check))
            print(f"{clip.name:<12} {check.engine:<18} frames {check.frames:>4}  closed-loop IoU "
                  f"{check.mean_iou:.4f}  one-step IoU {check.one_step_iou:.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "agreement.csv", rows)
    print(f"wrote {args.out / 'agreement.csv'}")


if __name__ == "__main__":
    main()
