"""First-frame masks from boxes (GrabCut), as `mvos segment --box` makes them."""

from __future__ import annotations

import numpy as np
import pytest

from mvos.runtime.boxes import check_box, mask_from_boxes, parse_box
from mvos.runtime.errors import MvosError
from mvos.runtime.io import read_mask

from cli_helpers import run_mvos
from helpers import write_frame_folder


def scene(height: int = 120, width: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A textured background with a red disc (object 1) and a blue square (object 2)."""
    rng = np.random.default_rng(0)
    frame = (rng.integers(90, 160, (height, width, 3))).astype(np.uint8)
    frame[..., 1] = 140  # greenish background
    yy, xx = np.mgrid[:height, :width]
    ids = np.zeros((height, width), np.uint8)
    ids[(yy - 50) ** 2 + (xx - 45) ** 2 <= 25 ** 2] = 1
    ids[70:110, 95:145] = 2
    frame[ids == 1] = (220, 30, 30)
    frame[ids == 2] = (30, 40, 210)
    return frame, ids


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_grabcut_finds_each_boxed_object():
    frame, ids = scene()
    mask = mask_from_boxes(frame, [(18, 23, 73, 78), (92, 67, 148, 113)])
    assert set(np.unique(mask)) == {0, 1, 2}
    assert iou(mask == 1, ids == 1) > 0.9 and iou(mask == 2, ids == 2) > 0.9


@pytest.mark.parametrize("box, message", [
    ((50, 10, 20, 40), "reversed"), ((10, 10, 10, 40), "empty"), ((10, 10, 170, 40), "outside the 160x120"),
    ((-1, 0, 20, 20), "outside"), ((10, 10, 12, 40), "too small"),
])
def test_bad_boxes_are_one_line_errors(box, message):
    with pytest.raises(MvosError, match=message):
        check_box(box, (120, 160))


def test_box_text_is_four_numbers():
    assert parse_box("1,2,30,40") == (1, 2, 30, 40) and parse_box(" 1.4, 2, 30 ,40") == (1, 2, 30, 40)
    for text in ("1,2,3", "a,b,c,d", "1,2,3,4,5"):
        with pytest.raises(MvosError, match="x0,y0,x1,y1"):
            parse_box(text)


def test_segment_with_boxes_writes_the_grabcut_mask_first(capsys, tmp_path):
    frame, ids = scene()
    frames = [frame, np.roll(frame, 2, axis=1), np.roll(frame, 4, axis=1)]
    folder = write_frame_folder(tmp_path / "frames", frames)
    result = run_mvos(capsys, "segment", folder, "--box", "18,23,73,78", "--box", "92,67,148,113", "--out",
                      tmp_path / "out", "--weights", "random", "--variant", "mobilenetv2-noaspp", "--size", "64")
    assert result.code == 0, result.err
    first = read_mask(tmp_path / "out" / "00000.png")
    assert iou(first == 1, ids == 1) > 0.9 and iou(first == 2, ids == 2) > 0.9
    assert "2 object(s)" in result.out
    bad = run_mvos(capsys, "segment", folder, "--box", "73,23,18,78", "--out", tmp_path / "bad", "--weights", "random")
    assert bad.code == 2 and "reversed" in bad.err and not (tmp_path / "bad").exists()
    both = run_mvos(capsys, "segment", folder, "--box", "1,1,50,50", "--mask", tmp_path / "m.png", "--out",
                    tmp_path / "bad")
    assert both.code == 2 and "not both" in both.err
