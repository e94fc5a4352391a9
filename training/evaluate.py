"""`mvos eval`: segment a DAVIS / YouTube-VOS split with a model, or score existing result folders.

DAVIS results are laid out as the official davis2017-evaluation expects (DIR/<seq>/<frame>.png) and
scored with its protocol (see `mvos.training.metrics`); the same two CSVs are written. YouTube-VOS has
no public validation ground truth: predictions are written in the submission layout
(DIR/Annotations/<vid>/<frame>.png for every input frame) and zipped for the evaluation server.
"""

from __future__ import annotations

import csv
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from click.core import ParameterSource
from tqdm import tqdm

from mvos.runtime.errors import MvosError
from mvos.runtime.io import atomic_path, check_output, read_image, staged_directory, write_palette_png
from mvos.runtime.options import model_options, overwrite_option, segmenter_from_options
from mvos.training.datasets import (
    Sequence,
    check_dataset_name,
    load_dataset,
    read_annotation,
    read_annotation_and_void,
    read_id_png,
)
from mvos.training.metrics import GLOBAL_COLUMNS, SEQUENCE_COLUMNS, ObjectScores, Scores, frame_scores

# ------------------------------------------------------------------------------------------- scoring


def score_results(dataset: str, sequences: list[Sequence], results_dir: Path) -> Scores:
    """Scores of every object of `sequences` against the PNGs in results_dir/<seq>/ (semi-supervised)."""
    if dataset == "ytvos2019":
        raise MvosError("YouTube-VOS has no public ground truth: submit the zip to the official server")
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise MvosError(f"results folder {results_dir} does not exist")
    scores = Scores()
    for seq in tqdm(sequences, desc="score", unit="seq", dynamic_ncols=True):
        scores.objects.extend(score_sequence(dataset, seq, results_dir / seq.name))
    return scores


def score_sequence(dataset: str, seq: Sequence, pred_dir: Path) -> list[ObjectScores]:
    """J and F of objects 1..max(first ground-truth frame) on frames 1..T-2, as the official tool."""
    stems = [p.stem for p in seq.frame_paths]
    _check_ground_truth(seq, stems)
    predictions = _prediction_paths(seq.name, stems, pred_dir)
    num_objects = int(read_annotation(seq.mask_paths[0], dataset).max())
    if num_objects == 0:
        raise MvosError(f"sequence {seq.name}: the first-frame ground truth marks no object")

    evaluated = range(1, len(stems) - 1)  # the first frame is given, the last is not scored
    j = np.empty((num_objects, len(evaluated)))  # objects x frames
    f = np.empty_like(j)
    for col, t in enumerate(evaluated):
        gt, void = read_annotation_and_void(seq.mask_paths[t], dataset)
        pred = read_prediction(predictions[t], dataset)
        if pred.shape != gt.shape:
            raise MvosError(f"{predictions[t]} is {pred.shape[1]}x{pred.shape[0]} but the ground truth is "
                            f"{gt.shape[1]}x{gt.shape[0]}")
        if pred.max() > num_objects:
            raise MvosError(f"{predictions[t]} has object id {pred.max()} but {seq.name} has "
                            f"{num_objects} object(s) in its first frame (a 0/255 mask needs --dataset davis2016)")
        j[:, col], f[:, col] = frame_scores(gt, pred, num_objects, void)
    return [ObjectScores(f"{seq.name}_{k + 1}", j[k], f[k]) for k in range(num_objects)]


def read_prediction(path: Path, dataset: str) -> np.ndarray:
    """uint8 HxW predicted ids; for DAVIS 2016 every object is one (the union)."""
    ids = read_id_png(path)
    return (ids > 0).astype(np.uint8) if dataset == "davis2016" else ids


def _check_ground_truth(seq: Sequence, stems: list[str]) -> None:
    if len(stems) < 3:
        raise MvosError(f"sequence {seq.name} has {len(stems)} frames; scoring skips the first and last, so it needs 3")
    missing = [stems[t] for t in range(len(stems)) if t not in seq.mask_paths]
    if missing:
        raise MvosError(f"sequence {seq.name}: {len(missing)} frame(s) have no ground-truth mask "
                        f"(first: {missing[0]}.png); DAVIS scoring needs every frame annotated")


def _prediction_paths(name: str, stems: list[str], pred_dir: Path) -> list[Path]:
    if not pred_dir.is_dir():
        raise MvosError(f"results have no folder for sequence {name} (expected {pred_dir})")
    found = {p.stem for p in pred_dir.glob("*.png")}
    missing = [s for s in stems if s not in found]
    extra = sorted(found - set(stems))
    if missing or extra:
        detail = f"missing {missing[0]}.png" if missing else f"unexpected {extra[0]}.png"
        raise MvosError(f"results for {name} have {len(found)} PNGs but the sequence has {len(stems)} frames "
                        f"({detail})")
    return [pred_dir / f"{s}.png" for s in stems]


# ------------------------------------------------------------------------------------------- segmenting


@dataclass
class RunStats:
    """Model time per frame (step + index map, no file I/O), leaving out the run's first frame,
    which pays one-off allocation and warm-up."""

    frames: int = 0
    seconds: float = 0.0
    warmed_up: bool = False

    def add(self, seconds: float) -> None:
        if self.warmed_up:
            self.frames += 1
            self.seconds += seconds
        self.warmed_up = True

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def segment_sequence(segmenter, dataset: str, seq: Sequence, out_dir: Path, stats: RunStats) -> None:
    """Writes out_dir/<frame>.png for every frame. DAVIS gives the first-frame mask only; YouTube-VOS
    gives each annotated frame's new objects there. Frames before any object are written empty."""
    segmenter.reset()
    with staged_directory(out_dir) as staging:
        frames = tqdm(seq.frame_paths, desc=seq.name, unit="frame", leave=False, dynamic_ncols=True, position=1)
        for t, frame_path in enumerate(frames):
            frame = read_image(frame_path)
            mask, new_ids = _given_mask(dataset, seq, t)
            if not segmenter.object_ids and mask is None:
                write_palette_png(staging / f"{frame_path.stem}.png", np.zeros(frame.shape[:2], np.uint8))
                continue
            start = time.perf_counter()
            probs = segmenter.step(frame, mask, new_ids)  # 1+N,H,W at the frame's size
            result = segmenter.index_map(probs)
            stats.add(time.perf_counter() - start)
            write_palette_png(staging / f"{frame_path.stem}.png", result)


def _given_mask(dataset: str, seq: Sequence, t: int) -> tuple[np.ndarray | None, list[int] | None]:
    """(mask, ids to take from it) given at frame t. DAVIS: every object of the first-frame mask.
    YouTube-VOS: the objects that start at t (a train-split PNG also holds objects already tracked)."""
    if dataset == "ytvos2019":
        new_ids = [i for i, start in seq.object_starts.items() if start == t]
        if not new_ids:
            return None, None
        mask = read_annotation(seq.mask_paths[t], dataset)
        absent = [i for i in new_ids if not (mask == i).any()]
        if absent:
            raise MvosError(f"video {seq.name}: object {absent[0]} starts at frame {seq.frame_paths[t].stem} "
                            f"but {seq.mask_paths[t]} does not contain it")
        return mask, new_ids
    if t > 0:
        return None, None
    mask = read_annotation(seq.mask_paths[0], dataset)
    if not mask.any():
        raise MvosError(f"sequence {seq.name}: the first-frame mask {seq.mask_paths[0]} marks no object")
    return mask, None


def zip_submission(annotations_dir: Path, zip_path: Path) -> int:
    """Zips annotations_dir as Annotations/<vid>/<frame>.png (the server's layout); returns the file count."""
    files = sorted(annotations_dir.rglob("*.png"))
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, Path("Annotations") / path.relative_to(annotations_dir))
    return len(files)


# ------------------------------------------------------------------------------------------- reports


def write_reports(out_dir: Path, split: str, scores: Scores, summary: dict) -> dict:
    """global_results-<split>.csv and per-sequence_results-<split>.csv (official columns, %.3f) and
    summary.json; returns the global results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    global_results = scores.global_results()
    _write_csv(out_dir / f"global_results-{split}.csv", GLOBAL_COLUMNS, [global_results])
    _write_csv(out_dir / f"per-sequence_results-{split}.csv", SEQUENCE_COLUMNS, scores.per_object())
    summary = {
        "J&F": global_results["J&F-Mean"],
        "J": global_results["J-Mean"],
        "F": global_results["F-Mean"],
        **summary,
        "objects": len(scores.objects),
        "global": global_results,
    }
    write_summary(out_dir, summary)
    return global_results


def write_summary(out_dir: Path, summary: dict) -> None:
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row[c] if isinstance(row[c], str) else f"{row[c]:.3f}" for c in columns])


def print_table(split: str, global_results: dict, scores: Scores) -> None:
    click.echo(f"\nGlobal results for {split}")
    click.echo("".join(f"{c:>10}" for c in GLOBAL_COLUMNS))
    click.echo("".join(f"{global_results[c]:>10.3f}" for c in GLOBAL_COLUMNS))
    rows = scores.per_object()
    width = max(len("Sequence"), *(len(r["Sequence"]) for r in rows))
    click.echo(f"\nPer sequence results for {split}")
    click.echo(f"{'Sequence':<{width}}{'J-Mean':>9}{'F-Mean':>9}")
    for r in rows:
        click.echo(f"{r['Sequence']:<{width}}{r['J-Mean']:>9.3f}{r['F-Mean']:>9.3f}")


# ------------------------------------------------------------------------------------------- command


def _parse_sequences(values: tuple[str, ...]) -> list[str] | None:
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return names or None


def _explicit_model_options(ctx: click.Context, options: dict) -> list[str]:
    return [f"--{name.replace('_', '-')}" for name in options
            if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]


def is_eval_output(folder: Path) -> bool:
    """Whether `folder` holds an earlier `mvos eval` result, which a new run may add to (its documented merge)."""
    try:
        summary = json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and {"dataset", "split"} <= set(summary)


def _stale_reports(out_dir: Path, split: str) -> list[Path]:
    return [out_dir / n for n in (f"global_results-{split}.csv", f"per-sequence_results-{split}.csv", "summary.json")]


@click.command("eval")
@click.option("--dataset", default="davis2017", show_default=True, help="davis2017 | davis2016 | ytvos2019.")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Dataset root folder.")
@click.option("--split", default="val", show_default=True, help="Split list to evaluate (val, train, ...).")
@click.option("--sequences", multiple=True, help="Only these sequences (comma-separated or repeated).")
@click.option("--results", "results_dir", type=click.Path(path_type=Path), default=None,
              help="Score existing predictions (DIR/<seq>/<frame>.png) instead of running a model.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder: predictions, CSVs and summary.json (with --results: default DIR). "
                   "An earlier eval's folder is added to: the sequences run again are replaced.")
@overwrite_option
@model_options
@click.pass_context
def eval_command(ctx: click.Context, dataset: str, root: Path, split: str, sequences: tuple[str, ...],
                 results_dir: Path | None, out_dir: Path | None, overwrite: bool, **options) -> None:
    """Evaluate a model (or existing masks, --results) on DAVIS 2016/2017 or YouTube-VOS 2019."""
    check_dataset_name(dataset)
    if results_dir is not None:
        explicit = _explicit_model_options(ctx, options)
        if explicit:
            raise MvosError(f"--results scores existing masks; drop the model options ({', '.join(explicit)})")
        if dataset == "ytvos2019":
            raise MvosError("YouTube-VOS has no public ground truth: submit the zip to the official server")
    elif out_dir is None:
        raise MvosError("--out is required to write the predictions (or pass --results DIR to score existing ones)")
    seqs = load_dataset(dataset, root, split, _parse_sequences(sequences))
    base = {"dataset": dataset, "split": split, "root": str(root), "sequences": len(seqs)}

    if results_dir is not None:
        out_dir = out_dir or results_dir
        # The CSVs go beside the scored masks (documented); elsewhere they follow the usual policy.
        check_output(out_dir, inputs=(root,), overwrite=overwrite,
                     merges=_resolved_equal(out_dir, results_dir) or is_eval_output(out_dir))
        scores = score_results(dataset, seqs, results_dir)
        global_results = write_reports(out_dir, split, scores, {**base, "results": str(results_dir)})
        print_table(split, global_results, scores)
        click.echo(f"\nwrote {out_dir}/global_results-{split}.csv, per-sequence_results-{split}.csv, summary.json")
        return

    merge = is_eval_output(out_dir)
    check_output(out_dir, inputs=(root, options.get("weights"), options.get("model_dir")), overwrite=overwrite,
                 merges=merge)
    segmenter = segmenter_from_options(**options)
    if merge:
        for stale in _stale_reports(out_dir, split):  # they would describe the predictions we overwrite
            stale.unlink(missing_ok=True)
        message = _evaluate_into(out_dir, segmenter, dataset, split, seqs, base, options)
    else:  # a new folder (or --overwrite of another): it appears whole, once complete
        with staged_directory(out_dir) as staging:
            message = _evaluate_into(staging, segmenter, dataset, split, seqs, base, options)
    click.echo(message.replace("{out}", str(out_dir)))


def _resolved_equal(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _evaluate_into(out_dir: Path, segmenter, dataset: str, split: str, seqs: list[Sequence], base: dict,
                   options: dict) -> str:
    """Segments and scores into out_dir; returns the closing line ({out} stands for the final folder)."""
    pred_root = out_dir / "Annotations" if dataset == "ytvos2019" else out_dir
    stats = RunStats()
    for seq in tqdm(seqs, desc="sequences", unit="seq", dynamic_ncols=True, position=0):
        segment_sequence(segmenter, dataset, seq, pred_root / seq.name, stats)
    info = segmenter.describe()
    run = {**base, "fps": stats.fps, "timed_frames": stats.frames, "parameters": segmenter.num_parameters,
           "queue_len": info.get("queue_len"), "variant": info.get("variant"), "backend": info.get("backend"),
           "size": info.get("size"), "memory": info.get("memory"),
           "weights": str(options["weights"]) if options.get("weights") else None}
    speed = f"{stats.fps:.1f} FPS, {run['parameters'] / 1e6:.2f}M parameters, T={run['queue_len']}, {run['variant']}"

    if dataset == "ytvos2019":
        count = zip_submission(pred_root, out_dir / "submission.zip")
        write_summary(out_dir, {**run, "submission": "submission.zip", "scored": False})
        return (f"{len(seqs)} videos, {count} masks -> {{out}}/submission.zip "
                f"(score it on the YouTube-VOS server); {speed}")
    scores = score_results(dataset, seqs, pred_root)
    global_results = write_reports(out_dir, split, scores, run)
    print_table(split, global_results, scores)
    return f"\n{speed}; wrote {{out}}"
