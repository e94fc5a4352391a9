"""J and F on hand-made masks whose values follow from counting pixels.

A filled HxW square's boundary map (seg2bmap) is the outline of the (H+1)x(W+1) rectangle that
starts one row above and one column left of it: 2H + 2W pixels.
"""

import numpy as np
import pytest

from mvos.runtime.errors import MvosError
from mvos.training import metrics as m

DAVIS_SHAPE = (480, 854)  # diagonal 979.6 px -> tolerance ceil(7.84) = 8 px


def square(top: int, left: int, size: int, shape=DAVIS_SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_disk_matches_euclidean_radius():
    d = m.disk(2)
    assert d.shape == (5, 5)
    # radius 2: the corners (distance sqrt(8)) and their neighbours (sqrt(5)) are out
    expected = np.array(
        [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=np.uint8
    )
    np.testing.assert_array_equal(d, expected)
    assert m.disk(8).sum() == 197  # lattice points within radius 8


def test_tolerance_is_8px_at_480p():
    assert m.boundary_tolerance(DAVIS_SHAPE) == 8
    assert m.boundary_tolerance((64, 96)) == 1  # ceil(0.008 * 115.4)
    assert m.boundary_tolerance((10, 10), bound_th=3) == 3


def test_seg2bmap_of_square_is_offset_outline():
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:5, 3:7] = True  # 3 rows x 4 columns
    b = m.seg2bmap(mask)
    outline = np.zeros_like(b)
    outline[1:5, 2:7] = True
    outline[2:4, 3:6] = False  # the (3+1)x(4+1) rectangle rows 1..4, cols 2..6, hollow
    np.testing.assert_array_equal(b, outline)
    assert b.sum() == 2 * 3 + 2 * 4


def test_identical_masks_score_one():
    a = square(100, 300, 100)
    assert m.region_similarity(a, a) == 1.0
    assert m.boundary_measure(a, a) == 1.0


@pytest.mark.parametrize(
    "shift, j, f",
    [
        # 8 px: every boundary pixel has a partner within 8 px -> F = 1; J = 100*92 / 100*108
        (8, 9200 / 10800, 1.0),
        # 9 px: of the 400 boundary pixels of each square, the far vertical side (101 pixels) and
        # the 83 pixels of the near side more than 8 px from both horizontal sides are unmatched:
        # P = R = (400 - 184) / 400
        (9, 9100 / 10900, 216 / 400),
    ],
)
def test_shifted_square_at_the_tolerance(shift, j, f):
    gt = square(100, 300, 100)
    pred = square(100, 300 + shift, 100)
    assert m.region_similarity(gt, pred) == pytest.approx(j, abs=1e-12)
    assert m.boundary_measure(gt, pred) == pytest.approx(f, abs=1e-12)
    # symmetric: swapping prediction and ground truth swaps P and R only
    assert m.boundary_measure(pred, gt) == pytest.approx(f, abs=1e-12)


def test_empty_frames():
    empty = np.zeros(DAVIS_SHAPE, dtype=bool)
    obj = square(10, 10, 20)
    assert m.region_similarity(empty, empty) == 1.0 and m.boundary_measure(empty, empty) == 1.0
    # empty prediction: P = 1, R = 0 -> F = 0; empty ground truth: P = 0, R = 1 -> F = 0
    assert m.region_similarity(obj, empty) == 0.0 and m.boundary_measure(obj, empty) == 0.0
    assert m.region_similarity(empty, obj) == 0.0 and m.boundary_measure(empty, obj) == 0.0


def test_thin_line_one_pixel_off():
    # A 1-px line moved down by 1 px overlaps nowhere (J = 0) but its boundary is within 1 px (F = 1).
    gt = np.zeros((64, 96), dtype=bool)
    gt[30, 10:60] = True
    pred = np.roll(gt, 1, axis=0)
    assert m.region_similarity(gt, pred) == 0.0
    assert m.boundary_measure(gt, pred) == 1.0
    # Its boundary map is the 2-row band rows 29..30 (2 * 51 px). Two rows down (band 31..32), only
    # row 30 and row 31 are within 1 px of each other: P = R = 0.5. Three rows down: nothing matches.
    assert m.boundary_measure(gt, np.roll(gt, 2, axis=0)) == 0.5
    assert m.boundary_measure(gt, np.roll(gt, 3, axis=0)) == 0.0


def test_partial_boundary_precision_recall():
    # Prediction = left half of the ground-truth square (both 40 rows high, tolerance 1 px at 64x96).
    gt = square(10, 10, 40, shape=(64, 96))
    pred = np.zeros_like(gt)
    pred[10:50, 10:30] = True
    # The 1-px tolerance is a plus-shaped disk: a pixel matches if the other outline has a pixel on
    # it or on one of its 4 neighbours.
    pb, gb = m.seg2bmap(pred), m.seg2bmap(gt)
    assert pb.sum() == 2 * 40 + 2 * 20 and gb.sum() == 2 * 40 + 2 * 40
    # pred's right side (column 29, rows 9..49) lies inside gt: rows 9 and 49 sit on gt's top and
    # bottom, rows 10 and 48 touch them, rows 11..47 (37 px) are unmatched
    precision = (120 - 37) / 120
    # gt's right side rows 10..48 (39 px) and its top and bottom rows at columns 31..49 (2 * 19 px)
    # have no pred pixel within 1 px
    recall = (160 - 77) / 160
    f = 2 * precision * recall / (precision + recall)
    assert m.boundary_measure(gt, pred) == pytest.approx(f, abs=1e-12)
    assert m.region_similarity(gt, pred) == 0.5


def test_void_pixels_are_ignored():
    gt = square(0, 0, 10, shape=(20, 20))
    pred = square(0, 0, 10, shape=(20, 20))
    pred[15:20, 15:20] = True  # a false positive ...
    void = np.zeros_like(gt)
    void[14:20, 14:20] = True  # ... inside a void region counts for nothing
    assert m.region_similarity(gt, pred) == pytest.approx(100 / 125)
    assert m.region_similarity(gt, pred, void) == 1.0
    assert m.boundary_measure(gt, pred, void) == 1.0


def test_size_mismatch_is_an_error():
    with pytest.raises(MvosError, match="sizes differ"):
        m.region_similarity(np.zeros((4, 4)), np.zeros((4, 5)))


def test_statistics_use_official_overlapping_bins():
    values = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    mean, recall, decay = m.db_statistics(values)
    assert mean == pytest.approx(0.55)
    assert recall == pytest.approx(0.5)  # 0.5 itself is not > 0.5
    # bins from round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]: first = frames 0..2, last = 5..7
    # (np.array_split would give 0.85 - 0.25 = 0.6)
    assert decay == pytest.approx(0.8 - 0.3)


def test_statistics_ignore_nan_and_single_frame():
    mean, recall, decay = m.db_statistics(np.array([1.0, np.nan, 0.0, 0.0]))
    assert mean == pytest.approx(1 / 3)
    assert recall == pytest.approx(0.25)  # NaN > 0.5 is False, as in the official code
    assert m.db_statistics(np.array([0.7])) == pytest.approx((0.7, 1.0, 0.0))
    with pytest.raises(MvosError):
        m.db_statistics(np.array([]))


def test_frame_scores_missing_object_is_empty():
    gt = np.zeros((64, 96), dtype=np.uint8)
    gt[5:20, 5:20] = 1
    gt[30:50, 40:70] = 2
    pred = np.where(gt == 1, 1, 0).astype(np.uint8)  # object 2 not predicted at all
    j, f = m.frame_scores(gt, pred, num_objects=3)
    np.testing.assert_allclose(j, [1.0, 0.0, 1.0])  # object 3 absent from both: J = F = 1
    np.testing.assert_allclose(f, [1.0, 0.0, 1.0])


def test_global_results_average_objects():
    scores = m.Scores(
        [
            m.ObjectScores("a_1", j=np.array([1.0, 1.0]), f=np.array([1.0, 1.0])),
            m.ObjectScores("a_2", j=np.array([0.0, 0.4]), f=np.array([0.2, 0.6])),
        ]
    )
    g = scores.global_results()
    assert list(g) == m.GLOBAL_COLUMNS
    assert g["J-Mean"] == pytest.approx(0.6)
    assert g["F-Mean"] == pytest.approx(0.7)
    assert g["J&F-Mean"] == pytest.approx(0.65)
    assert g["J-Recall"] == pytest.approx(0.5)
    assert g["F-Recall"] == pytest.approx(0.75)
    assert scores.per_object()[1] == {"Sequence": "a_2", "J-Mean": pytest.approx(0.2), "F-Mean": pytest.approx(0.4)}
