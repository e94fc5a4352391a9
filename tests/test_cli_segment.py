import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mvos.runtime.io import read_mask

from cli_helpers import run_mvos
from helpers import moving_scene, write_frame_folder, write_palette_mask, write_video

MODEL = ["--variant", "mobilenetv2-noaspp", "--weights", "random", "--size", "48"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene")
    frames, masks = moving_scene(num_frames=6, height=48, width=80, objects=2)
    return {
        "video": write_video(root / "clip.mp4", frames),
        "folder": write_frame_folder(root / "frames", frames),
        "mask": write_palette_mask(root / "mask.png", masks[0]),
        "masks": masks,
    }


@pytest.mark.parametrize("source", ["video", "folder"])
def test_segment_end_to_end(capsys, monkeypatch, tmp_path, scene, source):
    out = tmp_path / "out"
    overlay = tmp_path / "videos" / "overlay.mp4"  # a folder that does not exist yet, as README's out/dog.mp4
    result = run_mvos(capsys, "segment", scene[source], "--mask", scene["mask"], "--out", out,
                      "--overlay", overlay, *MODEL)
    assert result.code == 0, result.err
    assert "6 frames, 2 object(s)" in result.out
    assert "random" in result.err  # says plainly the weights are random
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"{i:05d}.png" for i in range(6)]
    first = read_mask(out / "00000.png")
    np.testing.assert_array_equal(first, scene["masks"][0])  # the given mask comes back on its frame
    assert Image.open(out / "00003.png").mode == "P"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 6 and summary["objects"] == 2 and summary["queue_len"] == 2 and summary["fps"] > 0
    assert (out / "timing.csv").read_text().count("\n") == 7
    assert overlay.stat().st_size > 1000


def test_mask_on_a_later_frame(capsys, tmp_path, scene):
    mask = write_palette_mask(tmp_path / "m3.png", scene["masks"][3])
    result = run_mvos(capsys, "segment", scene["folder"], "--mask", mask, "--mask-frame", "3",
                      "--out", tmp_path / "out", *MODEL)
    assert result.code == 0, result.err
    assert not read_mask(tmp_path / "out" / "00002.png").any()
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "00003.png"), scene["masks"][3])


def test_mask_of_another_size(capsys, tmp_path, scene):
    small = write_palette_mask(tmp_path / "small.png", scene["masks"][0][::2, ::2].copy())
    result = run_mvos(capsys, "segment", scene["video"], "--mask", small, "--out", tmp_path / "a", *MODEL)
    assert result.code == 2
    assert "is 40x24 but the frames are 80x48 (pass --resize-mask" in result.err
    assert not (tmp_path / "a").exists()
    result = run_mvos(capsys, "segment", scene["video"], "--mask", small, "--out", tmp_path / "b",
                      "--resize-mask", *MODEL)
    assert result.code == 0, result.err


def bad_inputs(tmp_path, scene):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 50)
    empty = write_palette_mask(tmp_path / "empty.png", np.zeros((48, 80), np.uint8))
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(1, 255, (48, 80, 3)).astype(np.uint8)).save(photo)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    return {
        "missing video": (["segment", tmp_path / "nope.mp4", "--mask", scene["mask"]], "input not found"),
        "corrupt video": (["segment", broken, "--mask", scene["mask"]], "cannot read video"),
        "missing mask": (["segment", scene["video"], "--mask", tmp_path / "nope.png"], "mask not found"),
        "empty mask": (["segment", scene["video"], "--mask", empty], "is empty"),
        "over 255 objects": (["segment", scene["video"], "--mask", photo], "more than 255 objects"),
        "mask frame past the end": (["segment", scene["video"], "--mask", scene["mask"], "--mask-frame", "9"],
                                    "past the last frame"),
        "unwritable output": (["segment", scene["video"], "--mask", scene["mask"], "--out", blocker / "out"],
                              "cannot write"),
        "memory precision on PyTorch": (["segment", scene["video"], "--mask", scene["mask"], "--memory-precision",
                                         "fp32"], "a memory precision is for the TFLite backend"),
    }


@pytest.mark.parametrize("case", ["missing video", "corrupt video", "missing mask", "empty mask",
                                  "over 255 objects", "mask frame past the end", "unwritable output",
                                  "memory precision on PyTorch"])
def test_bad_input_is_one_line_exit_2_and_no_output(capsys, tmp_path, scene, case):
    args, message = bad_inputs(tmp_path, scene)[case]
    if "--out" not in args:
        args = [*args, "--out", tmp_path / "out"]
    result = run_mvos(capsys, *args, *MODEL)
    assert result.code == 2
    assert message in result.err
    assert "Traceback" not in result.err
    assert len([line for line in result.err.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "out").exists()


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mvos", "segment", str(tmp_path / "missing.mp4"), "--mask",
                           str(tmp_path / "m.png"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: input not found: {tmp_path / 'missing.mp4'}"
