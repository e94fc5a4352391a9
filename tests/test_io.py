import numpy as np
import pytest
from PIL import Image

from mvos.runtime.errors import MvosError
from mvos.runtime.io import DAVIS_PALETTE, open_frames, read_mask, staged_directory, write_palette_png

from helpers import moving_scene, write_frame_folder, write_video


def test_palette_round_trip(tmp_path):
    mask = np.random.default_rng(0).integers(0, 6, (20, 30)).astype(np.uint8)
    write_palette_png(tmp_path / "00000.png", mask)
    image = Image.open(tmp_path / "00000.png")
    assert image.mode == "P"
    assert tuple(image.getpalette()[3:6]) == (128, 0, 0)  # DAVIS object 1 is dark red
    np.testing.assert_array_equal(read_mask(tmp_path / "00000.png"), mask)
    assert [p.name for p in tmp_path.iterdir()] == ["00000.png"]  # no temporary left behind


def test_grayscale_and_colour_masks(tmp_path):
    binary = np.zeros((10, 10), np.uint8)
    binary[2:5, 2:5] = 255
    Image.fromarray(binary, "L").save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "gray.png"), (binary == 255).astype(np.uint8))

    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[0:3, 5:8] = (0, 255, 0)  # appears first in raster order -> object 1
    rgb[6:9, 1:3] = (255, 0, 0)
    Image.fromarray(rgb, "RGB").save(tmp_path / "colour.png")
    ids = read_mask(tmp_path / "colour.png")
    assert ids[1, 6] == 1 and ids[7, 2] == 2 and ids[5, 5] == 0
    assert DAVIS_PALETTE[2].tolist() == [0, 128, 0]


def test_more_than_255_colours_is_an_error(tmp_path):
    rgb = np.random.default_rng(0).integers(1, 255, (40, 40, 3)).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "photo.png")
    with pytest.raises(MvosError, match="more than 255 objects"):
        read_mask(tmp_path / "photo.png")


def test_video_and_folder_give_the_same_frames(tmp_path):
    frames, _ = moving_scene(num_frames=5, height=32, width=48)
    video = open_frames(write_video(tmp_path / "clip.mp4", frames))
    folder = open_frames(write_frame_folder(tmp_path / "frames", frames))
    assert len(video) == len(folder) == 5 and video.size == folder.size == (32, 48)
    for a, b in zip(video, folder):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 12  # both lossy, same content


def test_corrupt_or_missing_video(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(MvosError, match="cannot read video"):
        open_frames(tmp_path / "broken.mp4")
    with pytest.raises(MvosError, match="not found"):
        open_frames(tmp_path / "nope.mp4")


def test_staged_directory_keeps_previous_result_on_failure(tmp_path):
    out = tmp_path / "out"
    with staged_directory(out) as staging:
        (staging / "a.txt").write_text("complete")
    with pytest.raises(RuntimeError):
        with staged_directory(out) as staging:
            (staging / "a.txt").write_text("half")
            raise RuntimeError("crash")
    assert (out / "a.txt").read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_csv_takes_every_column_in_order_and_leaves_no_partial(tmp_path):
    import csv

    from mvos.runtime.io import write_csv

    path = tmp_path / "out" / "rows.csv"
    write_csv(path, [{"a": 1, "b": 2}, {"a": 3, "c": 4}])
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["a", "b", "c"]
    assert rows == [{"a": "1", "b": "2", "c": ""}, {"a": "3", "b": "", "c": "4"}]
    with pytest.raises(ValueError):  # a row with a column not asked for: the old file stays, nothing partial
        write_csv(path, [{"a": 5, "z": 6}], columns=["a"])
    assert [p.name for p in path.parent.iterdir()] == ["rows.csv"] and "3" in path.read_text()
