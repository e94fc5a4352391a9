"""Training clip datasets: shapes, clip-consistent augmentation, first-frame objects, frame-gap curriculum."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mvos.runtime.errors import MvosError
from mvos.runtime.io import read_image, write_palette_png
from mvos.runtime.model import IMAGENET_MEAN, IMAGENET_STD
from mvos.training.clips import (
    NO_AUGMENT,
    Augment,
    StaticImageDataset,
    VideoClipDataset,
    elastic_field,
    find_image_mask_pairs,
    sample_frame_positions,
    sample_view,
)
from mvos.training.datasets import Sequence, load_dataset
from mvos.training.synth import generate

H, W = 48, 64


def _image(seed: int) -> np.ndarray:
    """A left/right and up/down asymmetric RGB image (H,W,3) uint8, so flips are visible."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.uniform(0, 255, (6, 8, 3)).astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
    img[:, : W // 4, 0] = 250
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_video(root: Path, name: str, images: list[np.ndarray], labels: list[np.ndarray],
                 annotated: list[int] | None = None) -> Sequence:
    """Frames + palette PNGs on disk and the Sequence the dataset reader would return for them."""
    (root / name).mkdir(parents=True)
    frames, masks = [], {}
    for t, (img, lab) in enumerate(zip(images, labels)):
        frames.append(root / name / f"{t:05d}.jpg")
        cv2.imwrite(str(frames[-1]), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
        if annotated is None or t in annotated:
            masks[t] = root / name / f"{t:05d}.png"
            write_palette_png(masks[t], lab)
    ids = sorted({int(i) for lab in labels for i in np.unique(lab) if i})
    return Sequence(name, frames, masks, ids)


def _two_objects() -> np.ndarray:
    lab = np.zeros((H, W), np.uint8)
    lab[10:30, 5:25] = 1
    lab[20:40, 35:60] = 2
    return lab


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "ds"
    generate(root, sequences=3, frames=10, size=(96, 128), objects=(2, 3), seed=4, val_fraction=0.0,
             progress=False)
    return root


def test_clip_shapes_and_contents(synth_root):
    seqs = load_dataset("davis2017", synth_root, "train")
    ds = VideoClipDataset(seqs, num_frames=4, max_gap=2, crop=(64, 80), max_objects=2)
    rng = np.random.default_rng(0)
    for i in range(len(ds)):
        s = ds.sample(i, rng)
        assert s["frames"].shape == (4, 3, 64, 80) and s["frames"].dtype == torch.float32
        assert s["masks"].shape == (4, 2, 64, 80) and s["labels"].shape == (4, 64, 80)
        assert s["labels"].dtype == torch.long
        n = s["num_objects"]
        assert 1 <= n <= 2 and int(s["labels"].max()) <= n
        for k in range(2):  # masks are exactly the one-hot of labels; padded objects stay empty
            torch.testing.assert_close(s["masks"][:, k], (s["labels"] == k + 1).float())
        for k in range(1, n + 1):
            assert int((s["labels"][0] == k).sum()) >= 100  # every chosen object is in frame 0
        assert s["info"]["name"] == seqs[i].name and len(s["info"]["frames"]) == 4
    batch = next(iter(DataLoader(ds, batch_size=2)))  # default collation works
    assert batch["frames"].shape == (2, 4, 3, 64, 80) and batch["num_objects"].shape == (2,)


def test_no_augment_reproduces_the_frame(tmp_path):
    img = _image(1)
    seq = _write_video(tmp_path, "v", [img] * 3, [_two_objects()] * 3)
    ds = VideoClipDataset([seq], num_frames=3, crop=(H, W), augment=NO_AUGMENT, reverse_p=0.0)
    s = ds.sample(0, np.random.default_rng(0))
    std, mean = torch.tensor(IMAGENET_STD).view(3, 1, 1), torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    rgb = (s["frames"][0] * std + mean) * 255
    decoded = torch.from_numpy(read_image(seq.frame_paths[0])).permute(2, 0, 1).float()
    torch.testing.assert_close(rgb, decoded, atol=1e-3, rtol=0)  # the identity view changes no pixel
    assert s["num_objects"] == 2
    # objects are relabelled in random order, but each region keeps one label
    regions = {int(s["labels"][0, 15, 10]), int(s["labels"][0, 30, 50])}
    assert regions == {1, 2} and int(s["labels"][0, 2, 2]) == 0


def test_augmentation_is_shared_by_the_clip(tmp_path):
    # A still video: with one transform per clip, every output frame must be identical.
    seq = _write_video(tmp_path, "still", [_image(2)] * 4, [_two_objects()] * 4)
    shared = replace(Augment(), frame_degrees=0.0, frame_translate=0.0, frame_colour=0.0)
    ds = VideoClipDataset([seq], num_frames=4, crop=40, augment=shared, min_object_pixels=20)
    rng = np.random.default_rng(1)
    outputs = [ds.sample(0, rng) for _ in range(6)]
    for s in outputs:
        for t in range(1, 4):
            torch.testing.assert_close(s["frames"][t], s["frames"][0])
            torch.testing.assert_close(s["labels"][t], s["labels"][0])
    assert not torch.equal(outputs[0]["frames"][0], outputs[1]["frames"][0])  # but clips differ
    jittered = VideoClipDataset([seq], num_frames=4, crop=40, min_object_pixels=20).sample(0, rng)
    assert not torch.equal(jittered["frames"][1], jittered["frames"][0])  # the optional per-frame jitter


def test_flip_is_consistent_across_the_clip(tmp_path):
    img = _image(3)
    seq = _write_video(tmp_path, "v", [img] * 3, [_two_objects()] * 3)
    ds = VideoClipDataset([seq], num_frames=3, crop=(H, W), augment=replace(NO_AUGMENT, flip_p=0.5))
    plain = torch.from_numpy(_two_objects() > 0)
    seen = set()
    rng = np.random.default_rng(2)
    for _ in range(12):
        fg = ds.sample(0, rng)["labels"] > 0  # (T,H,W)
        flipped = [torch.equal(f, plain.flip(-1)) for f in fg]
        unflipped = [torch.equal(f, plain) for f in fg]
        assert all(flipped) or all(unflipped)
        seen.add(all(flipped))
    assert seen == {True, False}


def test_first_frame_always_has_an_object(tmp_path):
    # The object is a small square in one corner: most random crops miss it and must be redrawn.
    lab = np.zeros((H, W), np.uint8)
    lab[2:14, 2:14] = 1
    seq = _write_video(tmp_path, "corner", [_image(4)] * 3, [lab] * 3)
    ds = VideoClipDataset([seq], num_frames=3, crop=32, augment=replace(Augment(), scale=(0.1, 0.3)),
                          min_object_pixels=30, max_tries=50)
    rng = np.random.default_rng(3)
    for _ in range(10):
        s = ds.sample(0, rng)
        assert s["num_objects"] == 1 and int((s["labels"][0] == 1).sum()) >= 30
    empty = _write_video(tmp_path, "empty", [_image(5)] * 3, [np.zeros((H, W), np.uint8)] * 3)
    with pytest.raises(MvosError, match="first frame"):
        VideoClipDataset([empty], num_frames=3, crop=32, max_tries=2).sample(0, rng)


def test_frame_positions_respect_gap():
    rng = np.random.default_rng(4)
    for _ in range(200):
        pos = sample_frame_positions(rng, 12, 5, max_gap=3)
        steps = np.abs(np.diff(pos))
        assert len(set(pos)) == 5 and min(pos) >= 0 and max(pos) < 12
        assert ((steps >= 1) & (steps <= 3)).all()
    assert sorted(sample_frame_positions(rng, 5, 5, max_gap=9)) == [0, 1, 2, 3, 4]  # gap shrinks to fit
    with pytest.raises(ValueError):
        sample_frame_positions(rng, 4, 5, max_gap=1)


def test_curriculum_and_annotated_frames_only(tmp_path):
    frames = 40
    labels = [_two_objects()] * frames
    # YouTube-VOS train style: every 5th frame annotated; gaps count annotated frames.
    seq = _write_video(tmp_path, "yt", [_image(6)] * frames, labels, annotated=list(range(0, frames, 5)))
    ds = VideoClipDataset([seq], num_frames=3, max_gap=1, crop=32, min_object_pixels=20)
    rng = np.random.default_rng(5)
    gaps = {1: set(), 3: set()}
    directions = set()
    for max_gap in (1, 3):
        ds.set_max_gap(max_gap)
        for _ in range(25):
            got = ds.sample(0, rng)["info"]["frames"]
            assert all(f % 5 == 0 for f in got)
            steps = np.diff(got) // 5
            assert (np.abs(steps) >= 1).all() and (np.abs(steps) <= max_gap).all()
            gaps[max_gap] |= set(np.abs(steps).tolist())
            directions.add(int(np.sign(steps[0])))
    assert gaps[1] == {1} and max(gaps[3]) > 1
    assert directions == {-1, 1}  # clips are also played backwards
    with pytest.raises(MvosError):
        ds.set_max_gap(0)
    with pytest.raises(MvosError, match="annotated frames"):
        VideoClipDataset([seq], num_frames=9)


def test_sample_view_matrices():
    eye = sample_view(np.random.default_rng(0), (H, W), replace(NO_AUGMENT, crop=(H, W)))
    np.testing.assert_allclose(eye, np.eye(3), atol=1e-9)
    mirror = sample_view(np.random.default_rng(0), (H, W), replace(NO_AUGMENT, crop=(H, W), flip_p=1.0))
    np.testing.assert_allclose(mirror @ [0, 5, 1], [W - 1, 5, 1], atol=1e-9)
    half = sample_view(np.random.default_rng(0), (H, W), replace(NO_AUGMENT, crop=(H // 2, W // 2)))
    # half-pixel centres, as cv2.resize: the last source pixel centre lands 0.75 px before the crop's edge
    np.testing.assert_allclose(half @ [W - 1, H - 1, 1], [W / 2 - 0.75, H / 2 - 0.75, 1], atol=1e-9)


def test_elastic_field_is_smooth_and_bounded():
    field = elastic_field(np.random.default_rng(0), (64, 64), alpha=5.0, grid=4)
    assert field.shape == (2, 64, 64) and field.dtype == np.float32
    assert np.abs(field).max() <= 7.5 and np.abs(field).max() > 1.0
    assert np.abs(np.diff(field, axis=2)).max() < 1.0  # neighbours move together


def test_static_pseudo_clips(tmp_path, synth_root):
    pairs = find_image_mask_pairs(synth_root / "JPEGImages/480p", synth_root / "Annotations/480p")
    assert len(pairs) == 30 and all(m.suffix == ".png" and m.stem == i.stem for i, m in pairs)
    ds = StaticImageDataset(pairs, num_frames=3, crop=56, max_objects=3, elastic_p=1.0)
    rng = np.random.default_rng(6)
    for _ in range(5):
        s = ds.sample(int(rng.integers(len(ds))), rng)
        assert s["frames"].shape == (3, 3, 56, 56) and s["masks"].shape == (3, 3, 56, 56)
        assert s["num_objects"] >= 1 and int((s["labels"][0] > 0).sum()) >= 100
        assert not torch.equal(s["labels"][1], s["labels"][0])  # each pseudo-frame is its own view
    # binary 0/255 masks beside their images (saliency-dataset style) are one object
    folder = tmp_path / "salient"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), _image(7))
    cv2.imwrite(str(folder / "a.png"), (_two_objects() > 0).astype(np.uint8) * 255)
    side = find_image_mask_pairs(folder)
    assert side == [(folder / "a.jpg", folder / "a.png")]
    s = StaticImageDataset(side, crop=32, min_object_pixels=20).sample(0, rng)
    assert s["num_objects"] == 1 and int(s["labels"].max()) == 1
    with pytest.raises(MvosError):
        find_image_mask_pairs(tmp_path / "nothing-here", tmp_path)
