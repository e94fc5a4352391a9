"""`mvos segment` and `mvos info`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from mvos.runtime.errors import MvosError
from mvos.runtime.inference import Timing, track
from mvos.runtime.io import (
    FrameSource,
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
@click.option("--mask", "mask_path", type=click.Path(path_type=Path), default=None,
              help="Mask of the objects: DAVIS palette PNG, 0/255 grayscale, or RGB colours.")
@click.option("--box", "box_texts", multiple=True, metavar="X0,Y0,X1,Y1",
              help="Instead of --mask: a box around an object (repeatable, one per object); GrabCut makes the mask.")
@click.option("--mask-frame", type=click.IntRange(min=0), default=0, show_default=True,
              help="Index of the frame the mask (or the boxes) belongs to.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for one palette PNG per frame (00000.png ...), timing.csv and summary.json.")
@click.option("--overlay", "overlay_path", type=click.Path(path_type=Path), default=None,
              help="Also write an MP4 of the frames with the masks drawn on them.")
@click.option("--resize-mask", is_flag=True, help="Resize a mask of another size (nearest neighbour).")
@overwrite_option
@model_options
def segment_command(input_path: Path, mask_path: Path | None, box_texts: tuple[str, ...], mask_frame: int,
                    out_dir: Path, overlay_path: Path | None, resize_mask: bool, overwrite: bool, **options) -> None:
    """Segment the objects of a first-frame mask (or boxes) through a video file or a folder of frames."""
    from mvos.runtime.boxes import parse_box

    if mask_path is None and not box_texts:
        raise MvosError("missing the objects: give --mask MASK.png or --box X0,Y0,X1,Y1 (one per object)")
    if mask_path is not None and box_texts:
        raise MvosError("give the objects with --mask or with --box, not both")
    boxes = [parse_box(text) for text in box_texts]
    weights = options.get("weights")
    inputs = (input_path, mask_path, None if weights == "random" else weights, options.get("model_dir"))
    check_output(out_dir, inputs=inputs, overwrite=overwrite)
    if overlay_path is not None:
        check_output(overlay_path, inputs=(*inputs, out_dir), overwrite=overwrite, flag="--overlay")
    frames = open_frames(input_path)
    if mask_frame >= len(frames):
        raise MvosError(f"--mask-frame {mask_frame} is past the last frame ({len(frames)} frames)")
    if boxes:
        from mvos.runtime.boxes import mask_from_boxes

        mask = mask_from_boxes(frames.frame(mask_frame), boxes)
    else:
        mask = load_first_mask(mask_path, frames.size, resize_mask)
    segmenter = segmenter_from_options(options)

    timing = Timing()
    overlay = OverlayWriter(overlay_path, frames.fps, frames.size) if overlay_path else None
    completed = False
    try:
        with staged_directory(out_dir) as staging:
            progress = tqdm(same_size_frames(frames), total=len(frames), desc="segment", unit="frame",
                            dynamic_ncols=True)
            for result in track(segmenter, progress, {mask_frame: (mask, None)}):
                write_palette_png(staging / f"{result.index:05d}.png", result.labels)
                if overlay:
                    overlay.write(result.frame, result.labels)
                timing.add(result)
            progress.close()
            summary = _summary(input_path, len(frames), segmenter, timing)
            _write_timings(staging, timing, summary)
        completed = True
    finally:
        if overlay:
            overlay.close(keep=completed)
    click.echo(f"{summary['frames']} frames, {summary['objects']} object(s), {summary['fps']:.1f} FPS "
               f"({summary['ms_per_frame']:.1f} ms/frame, {summary['backend']}, T={summary['queue_len']}) -> {out_dir}")


def same_size_frames(frames: FrameSource):
    """The frames, refusing one whose size differs from the first (a mask cannot follow it)."""
    for index, frame in enumerate(frames):
        if frame.shape[:2] != tuple(frames.size):
            raise MvosError(f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, "
                            f"unlike the first frame ({frames.size[1]}x{frames.size[0]})")
        yield frame


def _summary(input_path: Path, num_frames: int, segmenter, timing: Timing) -> dict:
    return {"input": str(input_path), "frames": num_frames, "segmented_frames": len(timing.ms),
            "objects": len(segmenter.object_ids), "object_ids": segmenter.object_ids,
            "ms_per_frame": timing.ms_per_frame, "fps": timing.fps, **segmenter.describe()}


def _write_timings(folder: Path, timing: Timing, summary: dict) -> None:
    with open(folder / "timing.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["frame", "ms"])
        writer.writerows((index, f"{ms:.3f}") for index, ms in zip(timing.frames, timing.ms))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")


@click.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info_command(as_json: bool) -> None:
    """Variants, parameter counts (ours vs the paper's), shipped weights, their accuracy, recipe and licence."""
    from mvos.runtime.model import DEFAULT_VARIANT, PAPER_PARAMETERS, VARIANTS, build_model
    from mvos.runtime.pretrained import IMAGENET, SHIPPED

    rows = []
    for name, config in VARIANTS.items():
        shipped = SHIPPED.get(name)
        encoder = IMAGENET.get(config.key_encoder)
        rows.append({
            "variant": name, "default": name == DEFAULT_VARIANT, "key_encoder": config.key_encoder,
            "aspp": config.aspp, "parameters": build_model(name).num_parameters(),
            "paper_parameters": PAPER_PARAMETERS.get(name),
            "weights": None if shipped is None else {
                "file": shipped.file, "sha256": shipped.sha256, "test_jf": shipped.test_jf, "val_jf": shipped.val_jf,
                "recipe": shipped.recipe, "licence": shipped.licence},
            "imagenet_key_encoder": None if encoder is None else {"source": encoder.source, "licence": encoder.licence},
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'variant':<20}{'key encoder':<20}{'ASPP':<6}{'params':>9}{'paper':>8}  shipped weights")
    for r in rows:
        paper = f"{r['paper_parameters'] / 1e6:.1f}M" if r["paper_parameters"] else "-"
        w = r["weights"]
        shipped = (f"{w['file']}: test J&F {w['test_jf']:.3f} (DAVIS-2016, held out), recipe {w['recipe']}"
                   if w else "none: pass --weights CKPT (train one with `mvos train`) or --weights random")
        name = r["variant"] + (" *" if r["default"] else "")
        click.echo(f"{name:<20}{r['key_encoder']:<20}{'yes' if r['aspp'] else 'no':<6}"
                   f"{r['parameters'] / 1e6:>8.2f}M{paper:>8}  {shipped}")
    click.echo("\n* default variant. Value encoder: MobileNetV2 over masks only; memory: first frame + T-1 recent "
               "memorised frames, one in --mem-every (--queue-len).")
    licences = {r["weights"]["licence"] for r in rows if r["weights"]}
    for licence in sorted(licences):
        click.echo(f"Shipped weights: {licence}.")
    for name, encoder in IMAGENET.items():
        click.echo(f"ImageNet {name} key encoder: {encoder.source} ({encoder.licence}).")
