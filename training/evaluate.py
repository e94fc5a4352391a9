"""Evaluation (`mvos eval`): segment a DAVIS / YouTube-VOS split with a model, or score existing result folders.

DAVIS results are laid out as the official davis2017-evaluation expects (DIR/<seq>/<frame>.png) and
scored with its protocol (see `mvos.training.metrics`); the same two CSVs are written. YouTube-VOS has
no public validation ground truth: predictions are written in the submission layout
(DIR/Annotations/<vid>/<frame>.png for every input frame) and zipped for the evaluation server.
"""

from __future__ import annotations

import csv
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mvos.runtime.errors import MvosError
from mvos.runtime.inference import Timing, track
from mvos.runtime.io import atomic_path, read_image, staged_directory, write_palette_png
from mvos.training.datasets import (
    Sequence,
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


def given_masks(dataset: str, seq: Sequence) -> dict[int, tuple[np.ndarray, list[int] | None]]:
    """Where the benchmark gives objects: DAVIS, every object of the first-frame mask; YouTube-VOS, each object
    on the frame it first appears (a train-split PNG also holds objects already tracked, so ids are listed)."""
    if dataset != "ytvos2019":
        mask = read_annotation(seq.mask_paths[0], dataset)
        if not mask.any():
            raise MvosError(f"sequence {seq.name}: the first-frame mask {seq.mask_paths[0]} marks no object")
        return {0: (mask, None)}
    given = {}
    for t in sorted(set(seq.object_starts.values())):
        new_ids = [i for i, start in seq.object_starts.items() if start == t]
        mask = read_annotation(seq.mask_paths[t], dataset)
        absent = [i for i in new_ids if not (mask == i).any()]
        if absent:
            raise MvosError(f"video {seq.name}: object {absent[0]} starts at frame {seq.frame_paths[t].stem} "
                            f"but {seq.mask_paths[t]} does not contain it")
        given[t] = (mask, new_ids)
    return given


def segment_sequence(segmenter, dataset: str, seq: Sequence, out_dir: Path, timing: Timing) -> None:
    """Writes out_dir/<frame>.png for every frame (frames before any object empty), adding model times to
    `timing`."""
    with staged_directory(out_dir) as staging:
        paths = tqdm(seq.frame_paths, desc=seq.name, unit="frame", leave=False, dynamic_ncols=True, position=1)
        for result in track(segmenter, (read_image(p) for p in paths), given_masks(dataset, seq)):
            timing.add(result)
            write_palette_png(staging / f"{seq.frame_paths[result.index].stem}.png", result.labels)


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


def results_table(split: str, global_results: dict, scores: Scores) -> str:
    """The global and per-sequence tables the official DAVIS tool prints."""
    lines = [f"\nGlobal results for {split}", "".join(f"{c:>10}" for c in GLOBAL_COLUMNS),
             "".join(f"{global_results[c]:>10.3f}" for c in GLOBAL_COLUMNS)]
    rows = scores.per_object()
    width = max(len("Sequence"), *(len(r["Sequence"]) for r in rows))
    lines += [f"\nPer sequence results for {split}", f"{'Sequence':<{width}}{'J-Mean':>9}{'F-Mean':>9}"]
    lines += [f"{r['Sequence']:<{width}}{r['J-Mean']:>9.3f}{r['F-Mean']:>9.3f}" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- a run


def is_eval_output(folder: Path) -> bool:
    """Whether `folder` holds an earlier `mvos eval` result, which a new run may add to (its documented merge)."""
    try:
        summary = json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and {"dataset", "split"} <= set(summary)


def stale_reports(out_dir: Path, split: str) -> list[Path]:
    return [out_dir / n for n in (f"global_results-{split}.csv", f"per-sequence_results-{split}.csv", "summary.json")]


@dataclass
class EvalRun:
    summary: dict
    scores: Scores | None = None  # None for YouTube-VOS (scored by its server)
    global_results: dict | None = None
    submission: Path | None = None
    masks: int = 0


def evaluate(segmenter, dataset: str, split: str, seqs: list[Sequence], out_dir: Path, run_info: dict) -> EvalRun:
    """Segments every sequence into out_dir, then scores them (DAVIS) or zips the submission (YouTube-VOS),
    writing the CSVs and summary.json there."""
    pred_root = out_dir / "Annotations" if dataset == "ytvos2019" else out_dir
    timing = Timing()
    for seq in tqdm(seqs, desc="sequences", unit="seq", dynamic_ncols=True, position=0):
        segment_sequence(segmenter, dataset, seq, pred_root / seq.name, timing)
    info = segmenter.describe()
    run = {**run_info, "fps": timing.fps, "timed_frames": len(timing.steady), "parameters": segmenter.num_parameters,
           **{k: info.get(k) for k in ("queue_len", "mem_every", "variant", "backend", "size", "memory", "top_k",
                                       "precision", "memory_precision", "model_dir")}}
    if dataset == "ytvos2019":
        count = zip_submission(pred_root, out_dir / "submission.zip")
        summary = {**run, "submission": "submission.zip", "scored": False}
        write_summary(out_dir, summary)
        return EvalRun(summary, submission=out_dir / "submission.zip", masks=count)
    scores = score_results(dataset, seqs, pred_root)
    global_results = write_reports(out_dir, split, scores, run)
    return EvalRun(run, scores, global_results)
