"""The shipped weights: present, intact, small, used without --weights, and they segment."""

import json

import numpy as np
import pytest

from mvos.runtime.errors import MvosError
from mvos.runtime.io import file_sha256, read_mask
from mvos.runtime.model import DEFAULT_VARIANT
from mvos.runtime.pretrained import SHIPPED, ShippedWeights, shipped_checkpoint
from mvos.training.metrics import region_similarity

from cli_helpers import run_mvos
from helpers import moving_scene, write_palette_mask, write_video

MIN_SCENE_IOU = 0.85  # the shipped weights score 0.95 on this scene, random weights 0.03


def test_the_default_variant_ships_weights():
    assert DEFAULT_VARIANT in SHIPPED


@pytest.mark.parametrize("variant", sorted(SHIPPED))
def test_shipped_weights_are_intact_fp16_and_under_10_mb(variant):
    import torch

    entry = shipped_checkpoint(variant)
    assert entry is not None and entry.variant == variant and entry.path.stat().st_size <= 10 * 2**20
    assert file_sha256(entry.path) == entry.sha256
    assert 0.0 < entry.val_jf <= 1.0 and 0.0 < entry.test_jf <= 1.0
    assert "non-commercial" in entry.licence and entry.recipe == "docs/training.md"
    state = torch.load(entry.path, map_location="cpu", weights_only=False)
    assert state["variant"] == variant
    tensors = [v for v in state["model"].values() if v.is_floating_point()]
    assert tensors and all(v.dtype == torch.float16 for v in tensors)


def test_damaged_or_missing_shipped_weights_are_refused(monkeypatch, tmp_path):
    import mvos.runtime.pretrained as pretrained

    damaged = tmp_path / "w.pt"
    damaged.write_bytes(b"not the recorded bytes")
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setitem(SHIPPED, "resnet18", ShippedWeights("resnet18", "w.pt", "0" * 64, 0.8, 0.8, "docs/training.md"))
    with pytest.raises(MvosError, match="sha256"):
        shipped_checkpoint("resnet18")
    damaged.unlink()
    with pytest.raises(MvosError, match="missing"):
        shipped_checkpoint("resnet18")


def test_info_shows_the_shipped_weights_accuracy_recipe_and_licence(capsys):
    result = run_mvos(capsys, "info")
    assert result.code == 0
    line = next(l for l in result.out.splitlines() if l.startswith(DEFAULT_VARIANT + " *"))
    assert SHIPPED[DEFAULT_VARIANT].file in line and "docs/training.md" in line
    assert "non-commercial" in result.out
    rows = json.loads(run_mvos(capsys, "info", "--json").out)
    weights = next(r for r in rows if r["variant"] == DEFAULT_VARIANT)["weights"]
    assert weights["test_jf"] == SHIPPED[DEFAULT_VARIANT].test_jf and "non-commercial" in weights["licence"]


@pytest.mark.parametrize("variant", sorted(SHIPPED))
def test_segment_without_weights_tracks_moving_objects(capsys, tmp_path, variant):
    """No --weights: the shipped model, no warning, and it follows two shapes over a textured background."""
    frames, masks = moving_scene(num_frames=10, height=240, width=432, objects=2)
    video = write_video(tmp_path / "clip.mp4", frames)
    mask = write_palette_mask(tmp_path / "mask.png", masks[0])
    result = run_mvos(capsys, "segment", video, "--mask", mask, "--out", tmp_path / "out", "--size", "240",
                      "--variant", variant)
    assert result.code == 0, result.err
    assert "warning" not in result.err
    ious = []
    for t in range(1, 10):
        predicted = read_mask(tmp_path / "out" / f"{t:05d}.png")
        for k in (1, 2):
            ious.append(region_similarity(masks[t] == k, predicted == k))
    assert np.mean(ious) >= MIN_SCENE_IOU, ious
