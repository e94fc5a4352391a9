"""Dataset readers, scoring of result folders with known answers, and `mvos eval` end to end on small
datasets generated here (DAVIS 2017/2016 and YouTube-VOS layouts, 64x96 frames)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvos.runtime.errors import MvosError
from mvos.runtime.io import write_palette_png
from mvos.runtime.settings import DEFAULT
from mvos.training.datasets import load_dataset, read_annotation, read_annotation_and_void

H, W = 64, 96
COLOURS = np.array([[70, 70, 70], [220, 40, 40], [40, 200, 60], [40, 60, 220]], dtype=np.uint8)


def moving_masks(num_frames: int, num_objects: int) -> list[np.ndarray]:
    """uint8 HxW id maps: object k is a 16x20 box moving 3 px right per frame on its own row band."""
    masks = []
    for t in range(num_frames):
        m = np.zeros((H, W), np.uint8)
        for k in range(1, num_objects + 1):
            top = 4 + 20 * (k - 1)
            m[top : top + 16, 8 + 3 * t : 28 + 3 * t] = k
        masks.append(m)
    return masks


def make_davis(root: Path, seqs: dict[str, list[np.ndarray]], split_file: str = "ImageSets/2017/val.txt") -> Path:
    for name, masks in seqs.items():
        (root / "JPEGImages/480p" / name).mkdir(parents=True)
        (root / "Annotations/480p" / name).mkdir(parents=True)
        for t, mask in enumerate(masks):
            frame = COLOURS[np.minimum(mask, 3)]
            Image.fromarray(frame).save(root / "JPEGImages/480p" / name / f"{t:05d}.jpg", quality=95)
            write_palette_png(root / "Annotations/480p" / name / f"{t:05d}.png", mask)
    (root / split_file).parent.mkdir(parents=True, exist_ok=True)
    (root / split_file).write_text("".join(f"{n}\n" for n in seqs))
    return root


def write_results(folder: Path, seqs: dict[str, list[np.ndarray]]) -> Path:
    for name, masks in seqs.items():
        (folder / name).mkdir(parents=True)
        for t, mask in enumerate(masks):
            write_palette_png(folder / name / f"{t:05d}.png", mask)
    return folder


def run_mvos(*args) -> tuple[int, str, str]:
    """Runs the real `mvos` entry point; returns (exit code, stdout, stderr)."""
    from mvos.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["mvos", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------------------------- readers


def test_davis2017_reader(tmp_path):
    masks = moving_masks(5, 2)
    masks[3] = masks[3].copy()
    masks[3][50:60, 80:90] = 4  # an object that only appears later still counts as annotated
    root = make_davis(tmp_path, {"b": moving_masks(4, 1), "a": masks})
    seqs = load_dataset("davis2017", root, "val")
    assert [s.name for s in seqs] == ["b", "a"]  # the split file's order
    a = seqs[1]
    assert [p.name for p in a.frame_paths] == [f"{t:05d}.jpg" for t in range(5)]
    assert list(a.mask_paths) == [0, 1, 2, 3, 4]
    assert a.object_ids == [1, 2, 4]
    assert a.object_starts == {1: 0, 2: 0, 4: 3}
    np.testing.assert_array_equal(read_annotation(a.mask_paths[3], "davis2017"), masks[3])
    assert [s.name for s in load_dataset("davis2017", root, "val", ["a"])] == ["a"]


def test_plain_imagesets_split_and_partial_annotations(tmp_path):
    root = make_davis(tmp_path, {"a": moving_masks(4, 1)}, split_file="ImageSets/train.txt")
    (root / "Annotations/480p/a/00002.png").unlink()
    (seq,) = load_dataset("davis2017", root, "train")
    assert list(seq.mask_paths) == [0, 1, 3]


def test_void_label(tmp_path):
    mask = moving_masks(1, 1)[0]
    mask[:, :4] = 255
    write_palette_png(tmp_path / "m.png", mask)
    ids, void = read_annotation_and_void(tmp_path / "m.png", "davis2017")
    assert void[:, :4].all() and not void[:, 4:].any()
    assert set(np.unique(ids)) == {0, 1}
    # DAVIS 2016 masks are 0/255: 255 is the object, never void
    assert read_annotation(tmp_path / "m.png", "davis2016")[:, :4].all()


def make_davis2016(root: Path, seqs: dict[str, list[np.ndarray]]) -> Path:
    lines = []
    for name, masks in seqs.items():
        (root / "JPEGImages/480p" / name).mkdir(parents=True)
        (root / "Annotations/480p" / name).mkdir(parents=True)
        for t, mask in enumerate(masks):
            Image.fromarray(COLOURS[np.minimum(mask, 3)]).save(root / "JPEGImages/480p" / name / f"{t:05d}.jpg")
            Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8), mode="L").save(
                root / "Annotations/480p" / name / f"{t:05d}.png"
            )
            lines.append(f"/JPEGImages/480p/{name}/{t:05d}.jpg /Annotations/480p/{name}/{t:05d}.png\n")
    (root / "ImageSets/480p").mkdir(parents=True)
    (root / "ImageSets/480p/val.txt").write_text("".join(lines))
    return root


def test_davis2016_reader_unions_objects(tmp_path):
    root = make_davis2016(tmp_path, {"a": moving_masks(4, 2), "b": moving_masks(3, 1)})
    seqs = load_dataset("davis2016", root, "val")
    assert [s.name for s in seqs] == ["a", "b"]
    assert seqs[0].object_ids == [1]
    np.testing.assert_array_equal(read_annotation(seqs[0].mask_paths[2], "davis2016"), moving_masks(4, 2)[2] > 0)


def make_ytvos(root: Path, with_meta: bool = True, split: str = "valid") -> Path:
    """Two videos of 5 frames named 00000, 00005, ...; in v1 object 3 starts at frame 0 and object 5 at
    00010, in v2 object 1 starts at 00005. "valid" has a PNG only where objects start (each holding only
    the new object); "train" annotates every frame from the first object on."""
    meta = {"videos": {}}
    for vid, starts in {"v1": {3: 0, 5: 2}, "v2": {1: 1}}.items():
        (root / split / "JPEGImages" / vid).mkdir(parents=True)
        (root / split / "Annotations" / vid).mkdir(parents=True)
        names = [f"{t * 5:05d}" for t in range(5)]
        for t, name in enumerate(names):
            frame = np.full((H, W, 3), 80 + 20 * t, np.uint8)
            Image.fromarray(frame).save(root / split / "JPEGImages" / vid / f"{name}.jpg")
            mask = np.zeros((H, W), np.uint8)
            for oid, t0 in starts.items():
                if t == t0 or (split == "train" and t > t0):
                    mask[10 + 6 * oid : 16 + 6 * oid, 20:50] = oid
            if mask.any():
                write_palette_png(root / split / "Annotations" / vid / f"{name}.png", mask)
        objects = {str(oid): {"category": "thing", "frames": names[t0:]} for oid, t0 in starts.items()}
        meta["videos"][vid] = {"objects": objects}
    if with_meta:
        (root / split / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("with_meta", [True, False])
def test_ytvos_reader(tmp_path, with_meta):
    root = make_ytvos(tmp_path, with_meta)
    v1, v2 = load_dataset("ytvos2019", root, "val")  # "val" finds the official "valid" folder
    assert v1.name == "v1" and len(v1.frame_paths) == 5
    assert {t: p.name for t, p in v1.mask_paths.items()} == {0: "00000.png", 2: "00010.png"}
    assert v1.object_ids == [3, 5] and v1.object_starts == {3: 0, 5: 2}
    assert list(v2.mask_paths) == [1] and v2.object_ids == [1]


@pytest.mark.parametrize("with_meta", [True, False])
def test_ytvos_train_split_keeps_every_annotated_frame(tmp_path, with_meta):
    from mvos.training.evaluate import given_masks

    (v1, v2) = load_dataset("ytvos2019", make_ytvos(tmp_path, with_meta, split="train"), "train")
    assert list(v1.mask_paths) == [0, 1, 2, 3, 4] and list(v2.mask_paths) == [1, 2, 3, 4]
    assert v1.object_starts == {3: 0, 5: 2}
    # evaluation gives an object only where it starts, even though later PNGs hold it too
    given = given_masks("ytvos2019", v1)
    assert sorted(given) == [0, 2]
    mask, ids = given[2]
    assert ids == [5] and set(np.unique(mask)) == {0, 3, 5}


@pytest.mark.parametrize(
    "setup, dataset, split, sequences, message",
    [
        (None, "davis2017", "val", None, "does not exist"),
        ("empty_split", "davis2017", "val", None, "split 'val' is empty"),
        ("davis", "davis2017", "test", None, "no split list for 'test'"),
        ("davis", "davis2017", "val", ["zz"], "not in split 'val': zz"),
        ("no_first_mask", "davis2017", "val", None, "first frame 00000.jpg has no mask"),
        ("stray_mask", "davis2017", "val", None, "00009.png has no matching frame"),
        ("davis", "davis2018", "val", None, "unknown dataset 'davis2018'"),
        ("davis", "ytvos2019", "val", None, "no YouTube-VOS split 'val'"),
    ],
)
def test_reader_errors(tmp_path, setup, dataset, split, sequences, message):
    root = tmp_path / "root"
    if setup is not None:
        make_davis(root, {"a": moving_masks(4, 1)})
    if setup == "empty_split":
        (root / "ImageSets/2017/val.txt").write_text("\n")
    if setup == "no_first_mask":
        (root / "Annotations/480p/a/00000.png").unlink()
    if setup == "stray_mask":
        shutil.copy(root / "Annotations/480p/a/00000.png", root / "Annotations/480p/a/00009.png")
    with pytest.raises(MvosError, match=message):
        load_dataset(dataset, root, split, sequences)


# ----------------------------------------------------------------------------------- scoring result folders

GT = {"alpha": moving_masks(6, 1), "beta": moving_masks(6, 2)}


@pytest.fixture
def davis_root(tmp_path):
    return make_davis(tmp_path / "davis", GT)


def test_perfect_predictions_score_one(davis_root, tmp_path):
    results = write_results(tmp_path / "res", GT)
    code, out, _ = run_mvos("eval", "--root", davis_root, "--results", results)
    assert code == 0
    (row,) = read_csv(results / "global_results-val.csv")
    assert row == {"J&F-Mean": "1.000", "J-Mean": "1.000", "J-Recall": "1.000", "J-Decay": "0.000",
                   "F-Mean": "1.000", "F-Recall": "1.000", "F-Decay": "0.000"}
    per_seq = read_csv(results / "per-sequence_results-val.csv")
    assert [r["Sequence"] for r in per_seq] == ["alpha_1", "beta_1", "beta_2"]
    assert all(r["J-Mean"] == r["F-Mean"] == "1.000" for r in per_seq)
    assert "J&F-Mean" in out and "beta_2" in out
    summary = json.loads((results / "summary.json").read_text())
    assert summary["J&F"] == 1.0 and summary["objects"] == 3


def test_empty_predictions_score_zero(davis_root, tmp_path):
    empty = {name: [np.zeros((H, W), np.uint8)] * len(masks) for name, masks in GT.items()}
    results = write_results(tmp_path / "res", empty)
    out_dir = tmp_path / "scores"
    assert run_mvos("eval", "--root", davis_root, "--results", results, "--out", out_dir)[0] == 0
    (row,) = read_csv(out_dir / "global_results-val.csv")
    assert row["J-Mean"] == row["F-Mean"] == row["J&F-Mean"] == "0.000"
    assert not (results / "global_results-val.csv").exists()  # --out puts reports elsewhere


def test_known_partial_scores_and_missing_object(davis_root, tmp_path):
    # alpha: right on frames 1-3, empty on 0, 4 and 5. Only frames 1..4 are scored, so per-frame
    #   J = F = [1, 1, 1, 0]: Mean 0.75, Recall 0.75; the official bin edges for 4 values are
    #   [0, 1, 2, 2, 3], so Decay = mean(frames 1-2) - mean(frames 3-4) = 1 - 0.5 = 0.5.
    #   (Scoring frames 0 and 5 too would give a mean of 0.5.)
    # beta: object 1 perfect, object 2 never predicted (scored as empty masks) -> 1 and 0.
    alpha = [m if 1 <= t <= 3 else np.zeros_like(m) for t, m in enumerate(GT["alpha"])]
    beta = [np.where(m == 1, 1, 0).astype(np.uint8) for m in GT["beta"]]
    results = write_results(tmp_path / "res", {"alpha": alpha, "beta": beta})
    assert run_mvos("eval", "--root", davis_root, "--results", results)[0] == 0
    per_seq = {r["Sequence"]: r for r in read_csv(results / "per-sequence_results-val.csv")}
    assert {k: (v["J-Mean"], v["F-Mean"]) for k, v in per_seq.items()} == {
        "alpha_1": ("0.750", "0.750"), "beta_1": ("1.000", "1.000"), "beta_2": ("0.000", "0.000")}
    (row,) = read_csv(results / "global_results-val.csv")
    assert row["J-Mean"] == row["F-Mean"] == row["J&F-Mean"] == "0.583"  # (0.75 + 1 + 0) / 3
    assert row["J-Recall"] == row["F-Recall"] == "0.583"
    assert row["J-Decay"] == row["F-Decay"] == "0.167"  # (0.5 + 0 + 0) / 3


def test_reports_are_recomputed_not_reread(davis_root, tmp_path):
    results = write_results(tmp_path / "res", GT)
    (results / "global_results-val.csv").write_text("J&F-Mean\n0.123\n")
    assert run_mvos("eval", "--root", davis_root, "--results", results, "--sequences", "alpha")[0] == 0
    (row,) = read_csv(results / "global_results-val.csv")
    assert row["J&F-Mean"] == "1.000"
    assert [r["Sequence"] for r in read_csv(results / "per-sequence_results-val.csv")] == ["alpha_1"]


def test_davis2016_scores_the_union(tmp_path):
    root = make_davis2016(tmp_path / "d16", {"a": moving_masks(5, 2)})
    # a two-object palette prediction whose union is the 2016 mask scores perfectly
    results = write_results(tmp_path / "res", {"a": moving_masks(5, 2)})
    assert run_mvos("eval", "--dataset", "davis2016", "--root", root, "--results", results)[0] == 0
    (row,) = read_csv(results / "global_results-val.csv")
    assert row["J&F-Mean"] == "1.000"
    assert [r["Sequence"] for r in read_csv(results / "per-sequence_results-val.csv")] == ["a_1"]


def _drop_sequence(res: Path):
    shutil.rmtree(res / "beta")


def _drop_frame(res: Path):
    (res / "alpha/00003.png").unlink()


def _extra_frame(res: Path):
    shutil.copy(res / "alpha/00003.png", res / "alpha/00099.png")


def _wrong_size(res: Path):
    write_palette_png(res / "alpha/00002.png", np.zeros((H, W + 1), np.uint8))


def _extra_object(res: Path):
    write_palette_png(res / "alpha/00002.png", np.full((H, W), 2, np.uint8))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_drop_sequence, "results have no folder for sequence beta"),
        (_drop_frame, "results for alpha have 5 PNGs but the sequence has 6 frames (missing 00003.png)"),
        (_extra_frame, "results for alpha have 7 PNGs but the sequence has 6 frames (unexpected 00099.png)"),
        (_wrong_size, "00002.png is 97x64 but the ground truth is 96x64"),
        (_extra_object, "00002.png has object id 2 but alpha has 1 object(s)"),
    ],
)
def test_mismatched_results_are_clear_errors(davis_root, tmp_path, damage, message):
    results = write_results(tmp_path / "res", GT)
    damage(results)
    code, _, err = run_mvos("eval", "--root", davis_root, "--results", results)
    assert code == 2
    assert message in error_line(err)
    assert not (results / "global_results-val.csv").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "kitti"], "unknown dataset 'kitti'"),
        (["--results", "RES", "--weights", "w.pt"], "drop the model options (--weights)"),
        ([], "--out is required"),
        (["--results", "NOPE"], "results folder NOPE does not exist"),
        (["--dataset", "ytvos2019", "--results", "RES"], "no public ground truth"),
    ],
)
def test_command_errors(davis_root, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_results(tmp_path / "RES", GT)
    code, _, err = run_mvos("eval", "--root", davis_root, *args)
    assert code == 2
    assert message in error_line(err)


def test_ground_truth_without_every_mask_is_an_error(davis_root, tmp_path):
    (davis_root / "Annotations/480p/alpha/00004.png").unlink()
    results = write_results(tmp_path / "res", GT)
    code, _, err = run_mvos("eval", "--root", davis_root, "--results", results)
    assert code == 2
    assert "alpha: 1 frame(s) have no ground-truth mask (first: 00004.png)" in error_line(err)


# ------------------------------------------------------------------------------------- end to end with a model

MODEL = ["--variant", "mobilenetv2-noaspp", "--weights", "random", "--size", "64", "--queue-len", "3", "--threads", "2"]


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    root = make_davis(tmp_path_factory.mktemp("davis"), GT)
    out_dir = tmp_path_factory.mktemp("eval") / "out"
    code, out, err = run_mvos("eval", "--root", root, "--out", out_dir, *MODEL)
    assert code == 0, err
    return root, out_dir, out, err


def test_eval_with_model_writes_predictions_and_reports(model_run):
    root, out_dir, out, err = model_run
    for name, masks in GT.items():
        pngs = sorted((out_dir / name).glob("*.png"))
        assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(len(masks))]
        with Image.open(pngs[0]) as first:
            assert first.mode == "P" and first.size == (W, H)
            # the first frame's mask is given: the prediction reproduces it
            np.testing.assert_array_equal(np.array(first), masks[0])
        assert set(np.unique(np.array(Image.open(pngs[-1])))) <= set(np.unique(masks[0]))
    (row,) = read_csv(out_dir / "global_results-val.csv")
    summary = json.loads((out_dir / "summary.json").read_text())
    assert f"{summary['J&F']:.3f}" == row["J&F-Mean"]
    assert summary["J&F"] == pytest.approx((summary["J"] + summary["F"]) / 2)
    assert 0.0 <= summary["J"] <= 1.0 and 0.0 <= summary["F"] <= 1.0
    assert summary["variant"] == "mobilenetv2-noaspp" and summary["queue_len"] == 3
    assert summary["mem_every"] == DEFAULT.mem_every
    assert summary["backend"] == "torch" and summary["precision"] is None  # what a TFLite run names
    assert summary["parameters"] > 1_000_000 and summary["fps"] > 0
    assert summary["timed_frames"] == 11  # 12 frames less the warm-up frame
    per_seq = read_csv(out_dir / "per-sequence_results-val.csv")
    assert [r["Sequence"] for r in per_seq] == ["alpha_1", "beta_1", "beta_2"]
    assert "Global results for val" in out and "FPS" in out
    assert "alpha" in err and "sequences" in err  # per-sequence and overall progress bars


def test_rescoring_model_predictions_gives_the_same_numbers(model_run, tmp_path):
    root, out_dir, _, _ = model_run
    assert run_mvos("eval", "--root", root, "--results", out_dir, "--out", tmp_path)[0] == 0
    assert read_csv(tmp_path / "global_results-val.csv") == read_csv(out_dir / "global_results-val.csv")
    assert read_csv(tmp_path / "per-sequence_results-val.csv") == read_csv(out_dir / "per-sequence_results-val.csv")


def test_ytvos_eval_writes_a_submission(tmp_path):
    root = make_ytvos(tmp_path / "yt")
    out_dir = tmp_path / "out"
    code, out, err = run_mvos("eval", "--dataset", "ytvos2019", "--root", root, "--split", "valid",
                              "--out", out_dir, *MODEL)
    assert code == 0, err
    with zipfile.ZipFile(out_dir / "submission.zip") as archive:
        names = sorted(archive.namelist())
    assert names == sorted(f"Annotations/{v}/{t * 5:05d}.png" for v in ("v1", "v2") for t in range(5))

    def ids(vid, t):
        return set(np.unique(np.array(Image.open(out_dir / "Annotations" / vid / f"{t * 5:05d}.png")))) - {0}

    assert ids("v1", 0) == {3} and ids("v1", 1) <= {3}  # object 5 does not exist before 00010
    assert 5 in ids("v1", 2)  # ... and is given there
    assert ids("v2", 0) == set() and ids("v2", 1) == {1}  # nothing to track before the first mask
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["scored"] is False and summary["sequences"] == 2 and "J&F" not in summary
    assert "submission.zip" in out
