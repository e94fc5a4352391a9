"""Quantisation-aware fine-tuning (training.qat): the student rounds as its int8 export does, and checkpoints
stay plain float weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mvos.runtime.checkpoint import load_checkpoint
from mvos.runtime.errors import MvosError
from mvos.runtime.model import build_model
from mvos.training.cli import train_command
from mvos.training.config import TrainConfig, apply_overrides
from mvos.training.qat import ActivationRange, prepare_quantisation_aware, quantised_weight
from mvos.training.trainer import set_train_mode
from test_trainer import read_log, synth_root, tiny_config, write_yaml  # noqa: F401 (a fixture)


def test_weights_round_to_a_symmetric_int8_grid_per_output_channel():
    torch.manual_seed(0)
    weight = torch.randn(4, 3, 3, 3) * torch.tensor([0.01, 1.0, 50.0, 3.0])[:, None, None, None]
    weight.requires_grad_(True)
    rounded = quantised_weight(weight)
    step = weight.detach().flatten(1).abs().amax(dim=1) / 127
    levels = rounded.detach().flatten(1) / step[:, None]
    torch.testing.assert_close(levels, levels.round(), atol=1e-3, rtol=0)  # on each channel's own grid
    assert levels.abs().max() == pytest.approx(127, abs=1e-3)
    assert torch.all((rounded - weight).abs().flatten(1) <= step[:, None] / 2 + 1e-6)
    rounded.sum().backward()
    torch.testing.assert_close(weight.grad, torch.ones_like(weight))  # straight through


def test_activation_ranges_follow_training_and_round_to_256_levels():
    quantise = ActivationRange()
    x = torch.linspace(-1.0, 3.0, 1000)
    torch.testing.assert_close(quantise.eval()(x), x)  # no range yet: unchanged
    quantise.train()(x)
    assert (float(quantise.low), float(quantise.high)) == (-1.0, 3.0)
    out = quantise.eval()(x * 2)  # eval: the range stays, values outside it are clipped
    assert float(quantise.high) == 3.0 and out.max() <= 3.0 + 1e-6 and len(torch.unique(out)) <= 256
    quantise.train()(x * 2)  # training moves the range slowly towards new batches
    assert 3.0 < float(quantise.high) < 6.0


def test_prepared_model_rounds_but_keeps_its_state_dict():
    torch.manual_seed(0)
    model = build_model("mobilenetv2-noaspp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frame = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model.eval().encode_key(frame).key
        rounded = prepare_quantisation_aware(model)
        set_train_mode(model, "all")  # frozen BatchNorm must not freeze the ranges
        model.encode_key(frame)
        got = model.eval().encode_key(frame).key
    key_ranges = [r for name, r in model.activation_ranges.items() if name.startswith("key_encoder/")]
    assert rounded == len(model.activation_ranges) > len(key_ranges) > 30
    assert all(bool(r.seen) for r in key_ranges)  # the key encoder's ranges were measured in training mode
    error = float((got - expected).norm() / expected.norm())
    assert 0 < error < 0.3  # really rounded, and close
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_quantisation_aware_needs_frozen_batchnorm():
    full = apply_overrides({"data": {"sources": [{"root": "/d"}]}, "student": {"quantisation_aware": True},
                            "optim": {"freeze_bn": "key_encoder"}}, [])
    with pytest.raises(MvosError, match="needs optim.freeze_bn: all"):
        TrainConfig.from_dict(full)


def test_quantisation_aware_run_saves_plain_float_weights(synth_root, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    config = tiny_config(synth_root, run_dir, iterations=4, checkpoint_every=2,
                         student={"variant": "mobilenetv2-noaspp", "quantisation_aware": True},
                         optim={"lr": 1e-3, "freeze_bn": "all"})
    path = write_yaml(tmp_path / "qat.yaml", config)
    result = CliRunner().invoke(train_command, ["--config", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "quantisation-aware" in result.output
    assert [float(r["val_JF"]) >= 0 for r in read_log(run_dir) if r["val_JF"]]  # validation ran on the rounding model
    student = load_checkpoint(Path(run_dir) / "final.pth", expect_variant="mobilenetv2-noaspp")
    assert not hasattr(student, "activation_ranges")
    assert set(student.state_dict()) == set(build_model("mobilenetv2-noaspp").state_dict())
