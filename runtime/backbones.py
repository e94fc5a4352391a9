"""ImageNet backbones written to match torchvision's (and efficientnet_pytorch's) state_dict names exactly,
so users can load weights files they already have: torchvision cannot be installed next to this CPU torch.

Every backbone is built whole (classifier included) so a weights file is checked strictly against the real
architecture; `truncate()` then drops what a stride-16 encoder never runs (ResNet layer4, MobileNetV2 features
14+, the classifiers). `forward_features` returns the f4/f8/f16 maps the key and value encoders need.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from mvos.runtime.errors import MvosError

# ----------------------------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 bias: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 bias: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=bias)  # torchvision v1.5: stride on the 3x3
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=bias)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.ResNet. `in_channels` != 3 and `bias=True` serve STCN's value encoder."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], in_channels: int = 3,
                 num_classes: int = 1000, bias: bool = False):
        super().__init__()
        self.inplanes = 64
        self.bias = bias
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=bias)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self.channels = {"f4": 64 * block.expansion, "f8": 128 * block.expansion, "f16": 256 * block.expansion}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=self.bias),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, bias=self.bias)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, bias=self.bias) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def truncate(self) -> "ResNet":
        del self.layer4, self.avgpool, self.fc
        return self

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # B,64,H/4,W/4
        f4 = self.layer1(x)  # B,64e,H/4,W/4
        f8 = self.layer2(f4)  # B,128e,H/8,W/8
        f16 = self.layer3(f8)  # B,256e,H/16,W/16
        return {"f4": f4, "f8": f8, "f16": f16}


def resnet18(**kwargs) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet50(**kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


# ------------------------------------------------------------------------------------------ MobileNetV2


def tapped_features(layers, taps: dict[str, int], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Runs `layers` up to the last tap; returns the outputs of the layers `taps` names (f4, f8, f16)."""
    names = {index: name for name, index in taps.items()}
    out = {}
    for index, layer in enumerate(layers[: taps["f16"] + 1]):
        x = layer(x)
        if index in names:
            out[names[index]] = x
    return out


class ConvBNAct(nn.Sequential):
    """torchvision's Conv2dNormActivation: keys `.0` (conv) and `.1` (BN)."""

    def __init__(self, inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden, kernel=1))
        layers += [
            ConvBNAct(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.MobileNetV2 (width 1.0). features[3] ends stride 4, [6] stride 8, [13] stride 16."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]
    TAPS = {"f4": 3, "f8": 6, "f16": 13}

    def __init__(self, in_channels: int = 3, num_classes: int = 1000):
        super().__init__()
        features: list[nn.Module] = [ConvBNAct(in_channels, 32, stride=2)]
        inp = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        features.append(ConvBNAct(inp, 1280, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))
        self.channels = {"f4": 24, "f8": 32, "f16": 96}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def truncate(self) -> "MobileNetV2":
        self.features = self.features[: self.TAPS["f16"] + 1]
        del self.classifier
        return self

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return tapped_features(self.features, self.TAPS, x)  # f4: B,24,H/4 ; f8: B,32,H/8 ; f16: B,96,H/16


# ------------------------------------------------------------------------------------ EfficientNet-Lite0


class MBConvBlock(nn.Module):
    """efficientnet_pytorch's MBConvBlock as used by the Lite models: no squeeze-excite, ReLU6."""

    def __init__(self, inp: int, oup: int, kernel: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(inp, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, momentum=0.01, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, momentum=0.01, eps=1e-3)
        self._project_conv = nn.Conv2d(hidden, oup, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(oup, momentum=0.01, eps=1e-3)
        self._relu = nn.ReLU6(inplace=True)
        self.use_skip = stride == 1 and inp == oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._relu(self._bn0(self._expand_conv(x))) if self.expand else x
        out = self._relu(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return x + out if self.use_skip else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with efficientnet_pytorch key names (`_conv_stem`, `_bn0`, `_blocks.N...`)."""

    # (expand ratio, kernel, stride, out channels, repeats)
    STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
              (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
    TAPS = {"f4": 2, "f8": 4, "f16": 10}  # index of the last block at each stride

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, momentum=0.01, eps=1e-3)
        blocks: list[nn.Module] = []
        inp = 32
        for expand, kernel, stride, out, repeats in self.STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(inp, out, kernel, stride if i == 0 else 1, expand))
                inp = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, momentum=0.01, eps=1e-3)
        self._fc = nn.Linear(1280, num_classes)
        self._relu = nn.ReLU6(inplace=True)
        self.channels = {"f4": 24, "f8": 40, "f16": 112}

    def truncate(self) -> "EfficientNetLite0":
        self._blocks = self._blocks[: self.TAPS["f16"] + 1]
        del self._conv_head, self._bn1, self._fc
        return self

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self._relu(self._bn0(self._conv_stem(x)))
        return tapped_features(self._blocks, self.TAPS, x)  # f4: B,24,H/4 ; f8: B,40,H/8 ; f16: B,112,H/16


BACKBONES = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenetv2": MobileNetV2,
    "efficientnet-lite0": EfficientNetLite0,
}


def build_backbone(name: str, **kwargs) -> nn.Module:
    if name not in BACKBONES:
        raise MvosError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name](**kwargs)


# ----------------------------------------------------------------------------------------- weight loading


def read_state_dict(path: str | Path) -> "OrderedDict[str, torch.Tensor]":
    """Reads a plain state_dict file, or one wrapped as {'state_dict'|'model': ...}."""
    from mvos.runtime.io import require_file

    path = require_file(path, "weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise MvosError(f"cannot read weights file {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MvosError(f"{path} does not hold a state_dict of tensors")
    return OrderedDict((k.removeprefix("module."), v) for k, v in obj.items())


def check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], what: str) -> None:
    """Strict comparison of key names and shapes, reported in one line."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in given and tuple(given[k].shape) != tuple(v.shape)]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            shown = ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise MvosError(f"weights do not match {what}: " + "; ".join(problems))


def load_backbone_weights(backbone: nn.Module, name: str, path: str | Path) -> None:
    """Loads ImageNet weights into a (possibly truncated) backbone, checked against the whole architecture."""
    state = read_state_dict(path)
    reference = build_backbone(name, **_backbone_kwargs(backbone))
    own = backbone.state_dict()
    # A whole classifier's weights, or exactly the stride-16 part an encoder keeps (what we ship).
    expected = own if set(state) == set(own) else reference.state_dict()
    check_state_dict(expected, state, f"the {name} architecture")
    backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)


def _backbone_kwargs(backbone: nn.Module) -> dict:
    first_conv = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
    return {} if first_conv.in_channels == 3 else {"in_channels": first_conv.in_channels}
