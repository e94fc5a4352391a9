"""The output policy every writing command follows (runtime.io.check_output and the staged writers): nothing a
user had is deleted, moved or overwritten by surprise, errors are one line with exit 2, permissions follow the
umask, and a killed run's leftovers are removed by the next run into the same place."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mvos.runtime.errors import MvosError
from mvos.runtime.io import atomic_path, check_output, staged_directory

from cli_helpers import run_mvos
from helpers import moving_scene, write_frame_folder, write_palette_mask, write_video

MODEL = ["--variant", "mobilenetv2-noaspp", "--weights", "random", "--size", "48"]


@pytest.fixture()
def scene(tmp_path):
    frames, masks = moving_scene(num_frames=4, height=48, width=80, objects=1)
    return {"video": write_video(tmp_path / "clip.mp4", frames),
            "folder": write_frame_folder(tmp_path / "frames", frames),
            "mask": write_palette_mask(tmp_path / "mask.png", masks[0])}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(err: str) -> str:
    """The one error line, among progress-bar lines (tqdm redraws with \\r on a terminal)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line
             and not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------ outputs over inputs


@pytest.mark.parametrize("out", ["folder", "inside", "parent"])
def test_segment_never_writes_over_the_input_frames(capsys, tmp_path, scene, out):
    before = snapshot(tmp_path)
    target = {"folder": scene["folder"], "inside": scene["folder"] / "masks", "parent": tmp_path}[out]
    result = run_mvos(capsys, "segment", scene["folder"], "--mask", scene["mask"], "--out", target,
                      "--overwrite", *MODEL)
    assert result.code == 2
    assert "input" in one_error_line(result.err)
    assert snapshot(tmp_path) == before  # the input JPEGs and everything else untouched


def test_segment_never_writes_over_the_input_video(capsys, tmp_path, scene):
    before = snapshot(tmp_path)
    for flags in (["--out", scene["video"]], ["--out", tmp_path / "o", "--overlay", scene["video"]],
                  ["--out", tmp_path / "o", "--overlay", scene["mask"]]):
        result = run_mvos(capsys, "segment", scene["video"], "--mask", scene["mask"], *flags, "--overwrite", *MODEL)
        assert result.code == 2 and "is the input" in one_error_line(result.err)
    assert snapshot(tmp_path) == before
    assert not list(tmp_path.glob(".*"))  # no hidden copies either


# ---------------------------------------------------------------------------------------- existing outputs


def test_existing_output_needs_overwrite_and_is_replaced_only_when_complete(capsys, monkeypatch, tmp_path, scene):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run_mvos(capsys, "segment", scene["video"], "--mask", scene["mask"], "--out", out, *MODEL)
    assert result.code == 2 and "--overwrite" in one_error_line(result.err)
    assert (out / "notes.txt").read_text() == "mine"

    # A run that fails half way leaves the old output as it was.
    from mvos.runtime import io as runtime_io

    calls = {"n": 0}
    real = runtime_io.palette_image

    def failing(mask):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "00002.png"))
        return real(mask)

    monkeypatch.setattr(runtime_io, "palette_image", failing)
    result = run_mvos(capsys, "segment", scene["video"], "--mask", scene["mask"], "--out", out, "--overwrite", *MODEL)
    assert result.code == 2
    assert one_error_line(result.err) == f"error: No space left on device: {out / '00002.png'}"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]  # nothing half-written left

    monkeypatch.setattr(runtime_io, "palette_image", real)
    result = run_mvos(capsys, "segment", scene["video"], "--mask", scene["mask"], "--out", out, "--overwrite", *MODEL)
    assert result.code == 0, result.err
    assert not (out / "notes.txt").exists() and (out / "00003.png").is_file()


def test_empty_output_folder_is_used_without_overwrite(capsys, tmp_path, scene):
    (tmp_path / "empty").mkdir()
    result = run_mvos(capsys, "segment", scene["video"], "--mask", scene["mask"], "--out", tmp_path / "empty", *MODEL)
    assert result.code == 0, result.err


def test_existing_overlay_needs_overwrite(capsys, tmp_path, scene):
    overlay = tmp_path / "overlay.mp4"
    overlay.write_bytes(b"not yours to lose")
    result = run_mvos(capsys, "segment", scene["video"], "--mask", scene["mask"], "--out", tmp_path / "o",
                      "--overlay", overlay, *MODEL)
    assert result.code == 2 and "--overwrite" in one_error_line(result.err)
    assert overlay.read_bytes() == b"not yours to lose" and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------- leftovers, permissions


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_a_killed_run_are_removed_by_the_next_run(capsys, tmp_path, scene):
    dead = _dead_pid()
    stale_dir = tmp_path / f".out.partial-{dead}.abcd1234"
    stale_dir.mkdir()
    (stale_dir / "00000.png").write_bytes(b"half")
    stale_file = tmp_path / f".overlay.mp4.partial-{dead}.beef0001.mp4"
    stale_file.write_bytes(b"half")
    alive = tmp_path / f".out.partial-{os.getppid()}.live0001"  # a run still going: not ours to remove
    alive.mkdir()
    unrelated = tmp_path / ".out.keep"
    unrelated.mkdir()
    result = run_mvos(capsys, "segment", scene["video"], "--mask", scene["mask"], "--out", tmp_path / "out",
                      "--overlay", tmp_path / "overlay.mp4", *MODEL)
    assert result.code == 0, result.err
    assert not stale_dir.exists() and not stale_file.exists()
    assert alive.exists() and unrelated.exists()


def test_outputs_get_the_permissions_the_umask_gives(capsys, tmp_path, scene):
    old = os.umask(0o022)
    try:
        result = run_mvos(capsys, "segment", scene["video"], "--mask", scene["mask"], "--out", tmp_path / "out",
                          "--overlay", tmp_path / "o.mp4", *MODEL)
    finally:
        os.umask(old)
    assert result.code == 0, result.err
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    for name in ("00000.png", "summary.json", "timing.csv"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE((tmp_path / "o.mp4").stat().st_mode) == 0o644


def test_atomic_and_staged_writers_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "f.json") as tmp:
            tmp.write_text("{}")
        with staged_directory(tmp_path / "d") as staging:
            (staging / "x").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750


def test_check_output_rules(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jpg").write_bytes(b"x")
    with pytest.raises(MvosError, match="is the input"):
        check_output(data, inputs=(data,), overwrite=True)
    with pytest.raises(MvosError, match="lies inside the input"):
        check_output(data / "sub", inputs=(data,), overwrite=True)
    with pytest.raises(MvosError, match="contains the input"):
        check_output(tmp_path, inputs=(data / "a.jpg",), overwrite=True, merges=True)
    with pytest.raises(MvosError, match="existing folder"):
        check_output(data, inputs=(tmp_path / "elsewhere",))
    assert check_output(data, merges=True) == data
    assert check_output(tmp_path / "new") == tmp_path / "new"


# ------------------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize("args, expected", [
    (["segment", "x", "--mask", "m", "--out", "o", "--queue-len", "25"], "'--queue-len': 25 is not in the range"),
    (["segment", "x", "--mask", "m", "--out", "o", "--size", "abc"], "'--size'"),
    (["segment", "x", "--mask", "m", "--out", "o", "--variant", "nope"], "'--variant'"),
    (["segment", "x", "--out", "o"], "missing the objects: give --mask MASK.png or --box"),
        (["segment", "x", "--out", "o", "--mask", "m", "--box", "1,2,3,4"], "not both"),
    (["nosuch"], "No such command"),
])
def test_click_usage_errors_are_one_line(capsys, args, expected):
    result = run_mvos(capsys, *args)
    assert result.code == 2
    assert expected in one_error_line(result.err)


def test_a_folder_given_for_a_file_says_so(capsys, tmp_path, scene):
    folder = tmp_path / "adir"
    folder.mkdir()
    result = run_mvos(capsys, "segment", scene["video"], "--mask", folder, "--out", tmp_path / "o", *MODEL)
    assert one_error_line(result.err) == f"error: mask {folder} is a folder, not a file"
    result = run_mvos(capsys, "segment", scene["video"], "--mask", scene["mask"], "--out", tmp_path / "o",
                      "--weights", folder)
    assert one_error_line(result.err) == f"error: checkpoint {folder} is a folder, not a file"


@pytest.mark.parametrize("content", [b"", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200])
def test_unreadable_videos_print_no_ffmpeg_lines(tmp_path, scene, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    proc = subprocess.run([sys.executable, "-c", "from mvos.cli import main; main()", "segment", str(bad),
                           "--mask", str(scene["mask"]), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"})
    assert proc.returncode == 2
    assert one_error_line(proc.stderr).startswith(f"error: cannot read video {bad}")


def test_permission_denied_is_one_line_and_leaves_nothing(capsys, monkeypatch, tmp_path, scene):
    real_mkdir = Path.mkdir

    def denied(self, *args, **kwargs):
        if "locked" in self.parts:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", denied)
    result = run_mvos(capsys, "segment", scene["video"], "--mask", scene["mask"], "--out", tmp_path / "locked" / "o",
                      *MODEL)
    assert result.code == 2
    assert "Permission denied" in one_error_line(result.err)
    assert not (tmp_path / "locked").exists()


# ------------------------------------------------------------------------------------ the other commands


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    from mvos.training.synth import generate

    root = tmp_path_factory.mktemp("policy") / "data"
    generate(root, sequences=2, frames=4, size=(48, 64), objects=(1, 1), seed=0, val_fraction=0.5, progress=False)
    return root


def test_synth_refuses_existing_outputs(capsys, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    result = run_mvos(capsys, "synth", "--out", out, "--sequences", "1", "--frames", "2", "--size", "32x32", "--quiet")
    assert result.code == 2 and "--overwrite" in one_error_line(result.err)
    assert (out / "keep.txt").read_text() == "x"


def test_soup_never_writes_over_an_ingredient(capsys, tmp_path):
    from mvos.runtime.checkpoint import save_checkpoint
    from mvos.runtime.model import build_model

    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    for path in (a, b):
        save_checkpoint(path, build_model("mobilenetv2-noaspp"))
    before = snapshot(tmp_path)
    result = run_mvos(capsys, "soup", a, b, "--out", a, "--overwrite")
    assert result.code == 2 and "is the input" in one_error_line(result.err)
    (tmp_path / "soup.pth").write_bytes(b"older soup")
    result = run_mvos(capsys, "soup", a, b, "--out", tmp_path / "soup.pth")
    assert result.code == 2 and "--overwrite" in one_error_line(result.err)
    assert snapshot(tmp_path) == {**before, "soup.pth": b"older soup"}
    assert run_mvos(capsys, "soup", a, b, "--out", tmp_path / "soup.pth", "--overwrite").code == 0


def test_eval_refuses_outputs_inside_the_dataset_and_merges_its_own(capsys, tmp_path, synth_data):
    before = snapshot(synth_data)
    args = ["eval", "--dataset", "davis2017", "--root", synth_data, "--split", "val", *MODEL]
    result = run_mvos(capsys, *args, "--out", synth_data / "Annotations" / "480p", "--overwrite")
    assert result.code == 2 and "lies inside the input" in one_error_line(result.err)
    assert snapshot(synth_data) == before

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("x")
    result = run_mvos(capsys, *args, "--out", foreign)
    assert result.code == 2 and "--overwrite" in one_error_line(result.err)

    out = tmp_path / "eval"
    assert run_mvos(capsys, *args, "--out", out).code == 0
    (out / "notes.txt").write_text("kept")  # an eval folder is added to: other files stay
    again = run_mvos(capsys, *args, "--out", out)
    assert again.code == 0, again.err
    assert (out / "notes.txt").read_text() == "kept" and (out / "global_results-val.csv").is_file()


def test_train_run_dir_policy(capsys, tmp_path, synth_data):
    import yaml

    config = {"run_dir": str(tmp_path / "run"), "threads": 1, "batch_size": 1, "iterations": 2,
              "checkpoint_every": 2, "prefetch": False,
              "data": {"sources": [{"dataset": "davis2017", "root": str(synth_data), "split": "train"}],
                       "clip_frames": 2, "crop": 32, "max_objects": 1},
              "student": {"variant": "mobilenetv2-noaspp"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    inside = run_mvos(capsys, "train", "--config", path, "--run-dir", synth_data / "runs", "--quiet")
    assert inside.code == 2 and "lies inside the input" in one_error_line(inside.err)
    assert not (synth_data / "runs").exists()

    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    refused = run_mvos(capsys, "train", "--config", path, "--quiet")
    assert refused.code == 2 and "--resume" in one_error_line(refused.err)
    both = run_mvos(capsys, "train", "--config", path, "--quiet", "--resume", "--overwrite")
    assert both.code == 2 and "choose one" in one_error_line(both.err)
    assert (run / "notes.txt").read_text() == "mine"
    replaced = run_mvos(capsys, "train", "--config", path, "--quiet", "--overwrite")
    assert replaced.code == 0, replaced.err
    assert not (run / "notes.txt").exists() and (run / "final.pth").is_file() and (run / "log.csv").is_file()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_export_refuses_a_foreign_folder(capsys, tmp_path):
    out = tmp_path / "exports"
    out.mkdir()
    (out / "photo.jpg").write_bytes(b"x")
    result = run_mvos(capsys, "export", "--variant", "mobilenetv2-noaspp", "--weights", "random", "--size", "32x32",
                      "--out", out,
                      "--no-verify")
    assert result.code == 2 and "--overwrite" in one_error_line(result.err)
    assert (out / "photo.jpg").read_bytes() == b"x"
