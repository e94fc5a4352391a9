"""The STCN teacher: official checkpoint layout, strict loading with clear errors, stage API, engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvos.runtime.checkpoint import save_checkpoint
from mvos.runtime.errors import MvosError
from mvos.runtime.model import build_model
from mvos.training.stcn import STCN_KEY_PREFIXES, STCN_SETTINGS, STCN, ValueEncoder, build_stcn, load_stcn_state, load_stcn_weights
from mvos.training.teacher import build_teacher, build_teacher_segmenter


@pytest.fixture(scope="module")
def stcn() -> STCN:
    torch.manual_seed(0)
    return build_stcn()


# Shapes of the official hkchengrex/STCN stcn.pth at a few telling keys.
OFFICIAL_SHAPES = {
    "key_encoder.conv1.weight": (64, 3, 7, 7),
    "key_encoder.res2.0.conv1.weight": (64, 64, 1, 1),
    "key_encoder.res2.0.downsample.0.weight": (256, 64, 1, 1),
    "key_encoder.layer3.5.conv3.weight": (1024, 256, 1, 1),
    "key_proj.key_proj.weight": (64, 1024, 3, 3),
    "key_proj.key_proj.bias": (64,),
    "key_comp.weight": (512, 1024, 3, 3),
    "value_encoder.conv1.weight": (64, 5, 7, 7),
    "value_encoder.conv1.bias": (64,),
    "value_encoder.layer1.1.conv2.bias": (64,),
    "value_encoder.layer3.0.downsample.0.bias": (256,),
    "value_encoder.layer3.1.bn2.running_var": (256,),
    "value_encoder.fuser.block1.downsample.weight": (512, 1280, 3, 3),
    "value_encoder.fuser.block1.conv1.weight": (512, 1280, 3, 3),
    "value_encoder.fuser.attention.ChannelGate.mlp.1.weight": (32, 512),
    "value_encoder.fuser.attention.ChannelGate.mlp.3.weight": (512, 32),
    "value_encoder.fuser.attention.SpatialGate.spatial.conv.weight": (1, 2, 7, 7),
    "value_encoder.fuser.block2.conv2.weight": (512, 512, 3, 3),
    "decoder.compress.downsample.weight": (512, 1024, 3, 3),
    "decoder.up_16_8.skip_conv.weight": (512, 512, 3, 3),
    "decoder.up_16_8.out_conv.downsample.weight": (256, 512, 3, 3),
    "decoder.up_8_4.skip_conv.weight": (256, 256, 3, 3),
    "decoder.up_8_4.out_conv.conv1.weight": (256, 256, 3, 3),
    "decoder.pred.weight": (1, 256, 3, 3),
}


def test_state_dict_has_the_official_key_layout(stcn):
    state = stcn.state_dict()
    for prefix in STCN_KEY_PREFIXES:
        assert any(k.startswith(prefix) for k in state), f"no key starts with {prefix}"
    stray = [k for k in state if not k.startswith(STCN_KEY_PREFIXES)]
    assert stray == []
    for key, shape in OFFICIAL_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    # torchvision ResNet50 key encoder: no conv biases, and no layer1/layer4 names
    assert "key_encoder.conv1.bias" not in state and "key_encoder.res2.0.conv1.bias" not in state
    assert not any(k.startswith(("key_encoder.layer1.", "key_encoder.layer4.", "value_encoder.layer4.")) for k in state)
    # STCN's mod_resnet value encoder: every conv has a bias
    convs = [k for k in state if k.startswith("value_encoder.layer") and k.endswith("weight") and state[k].ndim == 4]
    assert convs and all(k.replace(".weight", ".bias") in state for k in convs)


def test_round_trip_strict_through_a_file(stcn, tmp_path):
    # DataParallel-style "module." names, as checkpoints saved from multi-GPU training have
    path = tmp_path / "stcn.pth"
    torch.save({f"module.{k}": v for k, v in stcn.state_dict().items()}, path)
    torch.manual_seed(1)
    other = STCN()
    assert not torch.equal(other.key_comp.weight, stcn.key_comp.weight)
    load_stcn_weights(other, path)
    for key, value in stcn.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    # a checkpoint saved without BatchNorm batch counters still loads
    torch.save({k: v for k, v in stcn.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    load_stcn_weights(other, path)


def _error(stcn, edit) -> str:
    state = dict(stcn.state_dict())
    edit(state)
    with pytest.raises(MvosError) as info:
        load_stcn_state(stcn, state)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_wrong_shape_through_the_teacher_option_is_a_clear_error(stcn, tmp_path):
    state = dict(stcn.state_dict())
    state["decoder.pred.weight"] = torch.zeros(1, 128, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(MvosError) as info:
        build_teacher("stcn", path)
    message = str(info.value)
    assert message == (f"weights do not match STCN (the official hkchengrex/STCN layout) in {path}: "
                       "1 shape mismatch: decoder.pred.weight (1, 128, 3, 3) vs (1, 256, 3, 3)")


def test_missing_unexpected_and_reshaped_keys_are_named(stcn):
    before = stcn.key_comp.bias.clone()
    assert "1 missing: key_comp.bias" in _error(stcn, lambda s: s.pop("key_comp.bias"))

    def extra(state):
        state["memory.scale"] = torch.zeros(1)
        state["key_comp.bias"] = torch.ones(512)

    assert "1 unexpected: memory.scale" in _error(stcn, extra)
    assert torch.equal(stcn.key_comp.bias, before)  # a rejected checkpoint loads nothing

    def four_channels(state):  # STCN's older value encoder, without the "other objects" input
        state["value_encoder.conv1.weight"] = torch.zeros(64, 4, 7, 7)

    assert "value_encoder.conv1.weight (64, 4, 7, 7) vs (64, 5, 7, 7)" in _error(stcn, four_channels)


def test_teacher_specs_are_checked(tmp_path):
    with pytest.raises(MvosError, match="needs --teacher-weights"):
        build_teacher("stcn")
    with pytest.raises(MvosError, match="neither"):
        build_teacher(str(tmp_path / "nope.pth"))
    path = tmp_path / "student.pth"
    save_checkpoint(path, build_model("mobilenetv2-noaspp"))
    with pytest.raises(MvosError, match="only for --teacher stcn"):
        build_teacher(str(path), weights=path)
    teacher = build_teacher(str(path))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_stage_api_matches_mobilevos(stcn):
    frame = torch.randn(1, 3, 64, 96)
    features = stcn.encode_key(frame)
    assert [tuple(f.shape) for f in features] == [(1, 64, 4, 6), (1, 512, 4, 6), (1, 1024, 4, 6),
                                                  (1, 512, 8, 12), (1, 256, 16, 24)]
    masks = torch.zeros(2, 1, 64, 96)
    masks[0, :, :32], masks[1, :, 32:] = 1, 1
    with torch.no_grad():
        value = stcn.encode_value(frame, features, masks, masks.flip(0))  # B*N,512,h,w
        assert value.shape == (2, 512, 4, 6)
        values = value.reshape(1, -1, 24).transpose(1, 2)  # 1,h*w,2*512: position-major
        logits, z = stcn.segment(features.query, features.key.flatten(2), values, num_objects=2)
    assert logits.shape == (2, 1, 64, 96) and z.shape == (2, 256, 16, 24)
    assert (z >= 0).all()  # z is what the prediction conv sees: after the ReLU


def test_fuser_concatenates_mask_features_before_key_features():
    """STCN's fuser sees [value-encoder layer3 (256), key f16 (1024)]; loaded weights depend on that order."""
    encoder = ValueEncoder().eval()
    with torch.no_grad():
        for conv in (encoder.fuser.block1.conv1, encoder.fuser.block1.downsample):
            conv.weight[:, 256:] = 0  # blind to the key features when the order is right
        frame, masks = torch.randn(1, 3, 32, 32), torch.ones(1, 1, 32, 32)
        a = encoder(frame, torch.randn(1, 1024, 2, 2), masks, masks * 0)
        b = encoder(frame, torch.randn(1, 1024, 2, 2), masks, masks * 0)
        c = encoder(frame, torch.randn(1, 1024, 2, 2), masks * 0, masks)  # the masks do matter
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_engine_runs_stcn_with_unbounded_memory_every_5_and_top_k_20():
    torch.manual_seed(0)
    engine, warning = build_teacher_segmenter("stcn", settings=STCN_SETTINGS.replace(size=32))
    assert "random weights" in warning
    assert engine.describe()["top_k"] == 20 and engine.settings.memory == "unbounded"
    rng = np.random.default_rng(0)
    mask = np.zeros((32, 48), np.uint8)
    mask[4:14, 4:14], mask[18:30, 20:40] = 1, 2
    for t in range(7):
        probs = engine.step(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8), mask if t == 0 else None)
        assert probs.shape == (3, 32, 48)
        np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert engine.groups[0].memory.frames() == [0, 5, 6]  # reference, every 5th, and the last frame


def test_engine_from_a_mobilevos_checkpoint_gets_top_k(tmp_path):
    path = tmp_path / "teacher.pth"
    save_checkpoint(path, build_model("mobilenetv2-noaspp"))
    engine, warning = build_teacher_segmenter(str(path), settings=STCN_SETTINGS.replace(size=32))
    assert warning is None and engine.describe()["variant"] == "mobilenetv2-noaspp"
    assert engine.describe()["top_k"] == 20 and engine.settings.memory == "unbounded"
