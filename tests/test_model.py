import pytest
import torch

from mvos.runtime.model import (PAPER_PARAMETERS, VARIANTS, aggregated_logits, build_model, memory_readout,
                                soft_aggregate)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stage_shapes(variant):
    model = build_model(variant).eval()
    config = model.config
    with torch.no_grad():
        frame = torch.randn(1, 3, 64, 96)
        features = model.encode_key(frame)
        assert tuple(features.key.shape) == (1, config.key_dim, 4, 6)
        assert tuple(features.value.shape) == (1, config.value_dim, 4, 6)
        value = model.encode_value(frame, features, torch.rand(3, 1, 64, 96), torch.rand(3, 1, 64, 96))
        assert tuple(value.shape) == (3, config.value_dim, 4, 6)
        memory_keys = torch.cat([features.key.flatten(2)] * 2, dim=2)  # 1,Ck,2*h*w (two memory frames)
        memory_values = torch.cat([value.reshape(1, -1, 24).transpose(1, 2)] * 2, dim=1)  # 1,2*h*w,3*Cv
        logits, z = model.segment(features.query, memory_keys, memory_values, num_objects=3)
    assert tuple(logits.shape) == (3, 1, 64, 96)
    assert tuple(z.shape) == (3, config.decoder_dims[2], 16, 24)


@pytest.mark.parametrize("variant", list(PAPER_PARAMETERS))
def test_parameter_counts_near_the_paper(variant):
    count = build_model(variant).num_parameters()
    assert 0.8 <= count / PAPER_PARAMETERS[variant] <= 1.2


def test_memory_readout_matches_stcn_reference():
    torch.manual_seed(0)
    qk, mk, mv = torch.randn(2, 8, 3, 4), torch.randn(2, 8, 30), torch.randn(2, 5, 30)
    # STCN's get_affinity + readout, written the rank-3 way.
    a_sq = mk.pow(2).sum(1).unsqueeze(2)
    ab = mk.transpose(1, 2) @ qk.flatten(2)
    affinity = torch.softmax((2 * ab - a_sq) / 8 ** 0.5, dim=1)  # B,M,HW
    expected = (mv @ affinity).reshape(2, 5, 3, 4)
    assert torch.allclose(memory_readout(qk, mk, mv.transpose(1, 2)), expected, atol=1e-5)  # values position-major


def test_top_k_read_uses_only_the_k_best_matches():
    torch.manual_seed(1)
    qk, mk, mv = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 10), torch.randn(1, 3, 10)
    a = (2 * qk.flatten(2).transpose(1, 2) @ mk - mk.pow(2).sum(1, keepdim=True)) / 2.0  # 1,HW,M
    top = torch.topk(a, 3, dim=-1)
    weights = torch.zeros_like(a).scatter(-1, top.indices, torch.softmax(top.values, dim=-1))
    expected = (weights @ mv.transpose(1, 2)).transpose(1, 2).reshape(1, 3, 2, 2)
    assert torch.allclose(memory_readout(qk, mk, mv.transpose(1, 2), top_k=3), expected, atol=1e-5)


def test_soft_aggregation_sums_to_one_and_keeps_order():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.0]])  # 2 objects x 3 pixels
    out = soft_aggregate(probs, dim=0)
    assert torch.allclose(out.sum(0), torch.ones(3))
    assert out[:, 0].argmax() == 1 and out[:, 1].argmax() == 2 and out[:, 2].argmax() == 0


@pytest.mark.parametrize("objects", [1, 3])  # one object has its own closed form
def test_soft_aggregation_is_the_softmax_of_the_training_logits(objects):
    """The engine's odds form and the log-odds the training loss sees are one aggregation."""
    probs = torch.rand(objects, 1, 17, 19, generator=torch.Generator().manual_seed(0))
    probs[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 0.5])  # the clamp's edges
    kept = probs.clone()
    expected = torch.softmax(aggregated_logits(probs, dim=0), dim=0)
    torch.testing.assert_close(soft_aggregate(probs, dim=0), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(soft_aggregate(probs.movedim(0, 1), dim=1), expected.movedim(0, 1), rtol=1e-5,
                               atol=1e-6)  # objects on another axis
    assert torch.equal(probs, kept)  # the caller's probabilities are left alone


def test_checkpoints_that_stored_top_k_in_the_config_still_load(tmp_path):
    from mvos.runtime.checkpoint import load_checkpoint, save_checkpoint

    model = build_model("mobilenetv2-noaspp")
    path = tmp_path / "old.pth"
    save_checkpoint(path, model)
    data = torch.load(path, weights_only=False)
    data["config"]["top_k"] = None  # what checkpoints written before top-k became an inference setting hold
    torch.save(data, path)
    assert load_checkpoint(path).config == model.config


def test_half_checkpoints_are_half_the_size_and_load_as_fp32(tmp_path):
    from mvos.runtime.checkpoint import load_checkpoint, save_checkpoint

    model = build_model("mobilenetv2")
    save_checkpoint(tmp_path / "full.pth", model)
    save_checkpoint(tmp_path / "half.pth", model, half=True)
    assert (tmp_path / "half.pth").stat().st_size < 0.55 * (tmp_path / "full.pth").stat().st_size
    loaded = load_checkpoint(tmp_path / "half.pth")
    weight = loaded.decoder.pred.weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, model.decoder.pred.weight.half().float())
