"""Where an export's masks differ from fp32 PyTorch, one step at a time (the exported graphs memorising PyTorch's
masks, as `benchmarks/export_agreement.py`'s one-step IoU): how wide fp32's unsure band is on each clip (pixels
whose object probability is between 0.2 and 0.8, over the object's area), how many pixels the export labels
otherwise (over the object's area), and how many of those lie inside the band. Writes unsure_band.csv.

    D=../shared/datasets/davis2016-train
    python benchmarks/int8_unsure_band.py --model-dir /tmp/export --out benchmarks/results/int8_unsure_band \\
        --clip examples/dog.mp4:examples/dog_00000.png \\
        --clip $D/JPEGImages/480p/bear:$D/Annotations/480p/bear/00000.png
"""

from __future__ import annotations

import real_clips


def main() -> None:
    parser = real_clips.parser(__doc__, "benchmarks/results/int8_unsure_band")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--memory-precision", default=None,
                        help="the encoders that make the memory (`mvos segment --memory-precision`; default: --precision)")
    args = parser.parse_args()

    import torch

    from mvos.export.verify import band_stats, one_step_run, reference_run
    from mvos.runtime.io import write_csv
    from mvos.runtime.settings import InferenceSettings
    from mvos.runtime.tflite import TFLiteBackend

    manifest, model = real_clips.export_and_model(args)
    settings = InferenceSettings(queue_len=args.queue_len, top_k=manifest.top_k)
    exported = TFLiteBackend(args.model_dir, args.queue_len, threads=args.threads, precision=args.precision,
                             memory_precision=args.memory_precision)
    rows = []
    for clip in real_clips.clips(args):
        masks = {0: clip.mask}
        with torch.inference_mode():
            expected, memorised = reference_run(model, manifest.top_k, exported.fixed_size, settings, clip.frames, masks)
            got = one_step_run(exported, memorised, settings, clip.frames, masks)
        row = {"clip": clip.name, "precision": args.precision, "memory_precision": exported.memory_precision,
               "frames": len(clip.frames), **band_stats(expected, got)}
        rows.append(row)
        print(f"{row['clip']:<12} unsure band {row['band_over_area']:.3f} of the object, labelled otherwise "
              f"{row['differ_over_area']:.4f} ({row['differ_over_band']:.3f} of the band), "
              f"{row['differ_in_band']:.3f} of them inside the band", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "unsure_band.csv", rows)
    print(f"wrote {args.out / 'unsure_band.csv'}")


if __name__ == "__main__":
    main()
