"""DAVIS region (J) and boundary (F) measures, following the official davis2017-evaluation code.

Every rule here mirrors that tool so a number we print can sit next to a paper's table:
- J is the IoU of two binary masks, 1 when both are empty; void pixels (label 255 in the ground
  truth) count for neither.
- F matches 1-pixel boundary maps (`seg2bmap`) within a tolerance of ceil(0.008 * image diagonal)
  pixels, applied by dilating each boundary with a disk.
- Per object, `db_statistics` gives Mean, Recall (fraction > 0.5) and Decay (first quarter minus
  last quarter, with the official overlapping bins).
- Semi-supervised sequences are scored on frames 1..T-2 only (the first is given, the last dropped);
  objects are 1..max(id in the first ground-truth frame); a missing predicted object is empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from mvos.runtime.errors import MvosError

BOUND_TH = 0.008  # the official tolerance, a fraction of the image diagonal


def disk(radius: int) -> np.ndarray:
    """uint8 (2r+1, 2r+1) disk: the pixels within Euclidean distance `radius` of the centre
    (the same element as skimage.morphology.disk, which the official tool uses)."""
    r = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(r, r)
    return (x**2 + y**2 <= radius**2).astype(np.uint8)


def boundary_tolerance(shape: tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """Tolerance in pixels: a fraction of the diagonal when bound_th < 1, else pixels as given
    (8 px at 480x854: ceil(0.008 * 979.6))."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """bool HxW boundary map of a binary HxW mask: a pixel differing from its right, lower or
    lower-right neighbour (boundaries sit half a pixel towards the origin). The last row and
    column compare only along the edge, as in the official `_seg2bmap`."""
    seg = mask.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _check_shapes(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None) -> np.ndarray:
    if gt.shape != pred.shape or gt.ndim != 2:
        raise MvosError(f"mask sizes differ: ground truth {gt.shape}, prediction {pred.shape}")
    if void is None:
        return np.zeros(gt.shape, dtype=bool)
    if void.shape != gt.shape:
        raise MvosError(f"void mask size {void.shape} differs from the ground truth {gt.shape}")
    return void.astype(bool)


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """J for binary HxW masks: |gt & pred| / |gt | pred| outside void pixels; 1 if the union is empty."""
    valid = ~_check_shapes(gt, pred, void)
    gt, pred = gt.astype(bool), pred.astype(bool)
    union = np.count_nonzero((gt | pred) & valid)
    if union == 0:
        return 1.0
    return np.count_nonzero(gt & pred & valid) / union


def boundary_measure(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH
) -> float:
    """F for binary HxW masks: the F-measure of boundary precision and recall within the tolerance."""
    valid = ~_check_shapes(gt, pred, void)
    fg_boundary = seg2bmap(pred.astype(bool) & valid)
    gt_boundary = seg2bmap(gt.astype(bool) & valid)
    element = disk(boundary_tolerance(gt.shape, bound_th))
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), element).astype(bool)
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), element).astype(bool)

    n_fg = np.count_nonzero(fg_boundary)
    n_gt = np.count_nonzero(gt_boundary)
    if n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_fg == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = np.count_nonzero(fg_boundary & gt_dil) / n_fg
        recall = np.count_nonzero(gt_boundary & fg_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def db_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """(Mean, Recall, Decay) of one object's per-frame scores (T,), exactly as the official
    `db_statistics`: NaN-aware mean, fraction > 0.5, and the mean of the first bin minus the last
    of 4 bins whose edges are round(linspace(1, T, 5)) - 1 and which share their edge frames
    (so this is not np.array_split: T=8 gives bins 0-2 and 5-7)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise MvosError("no frames to score (a semi-supervised sequence needs at least 3 frames)")
    mean = float(np.nanmean(values))
    recall = float(np.nanmean(values > 0.5))
    # The official code casts these edges to uint8, which wraps past 256 frames; int keeps them right.
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(int)
    bins = [values[ids[i] : ids[i + 1] + 1] for i in range(4)]
    decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


def frame_scores(
    gt_ids: np.ndarray,
    pred_ids: np.ndarray,
    num_objects: int,
    void: np.ndarray | None = None,
    bound_th: float = BOUND_TH,
) -> tuple[np.ndarray, np.ndarray]:
    """J and F, each (num_objects,), of one frame: object k is `ids == k` for k = 1..num_objects
    in both HxW id maps (an object absent from the prediction is scored as an empty mask)."""
    j = np.empty(num_objects)
    f = np.empty(num_objects)
    for k in range(1, num_objects + 1):
        gt_k, pred_k = gt_ids == k, pred_ids == k
        j[k - 1] = region_similarity(gt_k, pred_k, void)
        f[k - 1] = boundary_measure(gt_k, pred_k, void, bound_th)
    return j, f


@dataclass
class ObjectScores:
    """One object's per-frame scores, named `<sequence>_<object id>` as the official CSV does."""

    name: str
    j: np.ndarray  # (T-2,) per evaluated frame
    f: np.ndarray  # (T-2,)

    def stats(self) -> dict[str, float]:
        jm, jr, jd = db_statistics(self.j)
        fm, fr, fd = db_statistics(self.f)
        return {"J-Mean": jm, "J-Recall": jr, "J-Decay": jd, "F-Mean": fm, "F-Recall": fr, "F-Decay": fd}


GLOBAL_COLUMNS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
SEQUENCE_COLUMNS = ["Sequence", "J-Mean", "F-Mean"]


@dataclass
class Scores:
    """All objects of an evaluation; global numbers are plain means over objects (official)."""

    objects: list[ObjectScores] = field(default_factory=list)

    def per_object(self) -> list[dict[str, float | str]]:
        rows = []
        for obj in self.objects:
            stats = obj.stats()
            rows.append({"Sequence": obj.name, "J-Mean": stats["J-Mean"], "F-Mean": stats["F-Mean"]})
        return rows

    def global_results(self) -> dict[str, float]:
        if not self.objects:
            raise MvosError("nothing was scored: no objects in the ground truth of the chosen sequences")
        all_stats = [obj.stats() for obj in self.objects]
        result = {key: float(np.mean([s[key] for s in all_stats])) for key in GLOBAL_COLUMNS[1:]}
        result["J&F-Mean"] = (result["J-Mean"] + result["F-Mean"]) / 2
        return {key: result[key] for key in GLOBAL_COLUMNS}
