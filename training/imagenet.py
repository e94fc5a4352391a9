"""ImageNet MobileNetV2 weights from a quantised TFLite classifier, for the key encoder of the paper's variants.

No torchvision weights can be had offline, but TFLite ImageNet classifiers can. Their convolutions are our
MobileNetV2's convolutions in the same order (stem, then each inverted residual's expand / depthwise /
project, then the 1280-channel head and a 1x1 classifier), with BatchNorm already folded into each conv.
So the import is: dequantise every weight, move it from TFLite's layout to PyTorch's, put the folded bias
in the BatchNorm that follows the conv (as an identity BN plus that bias), and fold the classifier's input
scaling ([-1, 1] uint8 quantisation) into the stem so the network takes our ImageNet mean/std input.

The check that this is right: the converted network must classify images as the TFLite interpreter does.
TF pads stride-2 convolutions asymmetrically (SAME: 0 before, 1 after, on even sizes) where ours pad 1 on
both sides; `tf_padding` reproduces TF's padding for the comparison.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mvos.runtime.backbones import MobileNetV2
from mvos.runtime.errors import MvosError
from mvos.runtime.io import require_file
from mvos.runtime.model import IMAGENET_MEAN, IMAGENET_STD

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
CLASSES = 1001  # TF-slim ImageNet classifiers: index 0 is "background"


@dataclass
class TFLiteConv:
    weight: np.ndarray  # float32, PyTorch layout (out, in/groups, kh, kw)
    bias: np.ndarray  # float32 (out,)
    depthwise: bool


def _dequantise(interpreter, detail: dict) -> np.ndarray:
    data = interpreter.get_tensor(detail["index"]).astype(np.float32)
    q = detail["quantization_parameters"]
    scales, zero_points = q["scales"], q["zero_points"]
    if scales.size == 0:  # a float tensor
        return data
    shape = [1] * data.ndim
    if scales.size > 1:  # per-channel along quantized_dimension
        shape[q["quantized_dimension"]] = scales.size
    return (data - zero_points.reshape(shape).astype(np.float32)) * scales.reshape(shape)


def read_tflite_convs(path: str | Path) -> tuple[list[TFLiteConv], tuple[float, float]]:
    """The convolutions of a TFLite classifier in graph order, dequantised, and the (scale, zero point) that
    maps the uint8 input pixels to the real values the first conv sees (real = scale * (pixel - zero))."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        raise MvosError("reading TFLite files needs ai-edge-litert: pip install 'mobilevos[export]'") from None
    path = require_file(path, "TFLite model")
    try:  # without delegates, so every op and weight stays visible
        interpreter = Interpreter(str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise MvosError(f"cannot load {path} as a TFLite model: {str(exc).splitlines()[0]}") from None
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    convs = []
    for op in interpreter._get_ops_details():
        if op["op_name"] not in CONV_OPS:
            continue
        _, weight_index, bias_index = op["inputs"]
        weight = _dequantise(interpreter, details[weight_index])
        depthwise = op["op_name"] == "DEPTHWISE_CONV_2D"
        # TFLite: conv (out, kh, kw, in); depthwise (1, kh, kw, channels).
        weight = weight.transpose(3, 0, 1, 2) if depthwise else weight.transpose(0, 3, 1, 2)
        convs.append(TFLiteConv(np.ascontiguousarray(weight), _dequantise(interpreter, details[bias_index]), depthwise))
    q = interpreter.get_input_details()[0]["quantization_parameters"]
    if q["scales"].size != 1:
        raise MvosError(f"{path}: expected a uint8 image input with one quantisation scale")
    return convs, (float(q["scales"][0]), float(q["zero_points"][0]))


def mobilenetv2_from_tflite(path: str | Path) -> MobileNetV2:
    """A whole MobileNetV2 (1001 classes) with the weights of a TFLite MobileNetV2 ImageNet classifier,
    taking ImageNet mean/std normalised RGB like every mobilevos network."""
    convs, (scale, zero) = read_tflite_convs(path)
    model = MobileNetV2(num_classes=CLASSES).eval()
    ours = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != len(ours) + 1:
        raise MvosError(f"{path} has {len(convs)} convolutions; a MobileNetV2 classifier has {len(ours) + 1}")
    batchnorms = _batchnorm_after_each_conv(model.features)
    with torch.no_grad():
        for index, (conv, tfl) in enumerate(zip(ours, convs)):
            weight, bias = torch.from_numpy(tfl.weight), torch.from_numpy(tfl.bias)
            if index == 0:
                weight, bias = _fold_input_scaling(weight, bias, scale, zero)
            if tuple(weight.shape) != tuple(conv.weight.shape) or (conv.groups > 1) != tfl.depthwise:
                raise MvosError(f"{path}: convolution {index} is {tuple(weight.shape)}, but MobileNetV2 has "
                                f"{tuple(conv.weight.shape)} there")
            conv.weight.copy_(weight)
            bn = batchnorms[conv]
            bn.weight.fill_(1.0)
            bn.bias.copy_(bias)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)  # (x - 0) / sqrt(1 - eps + eps) = x: BN adds the bias only
        classifier = convs[-1]
        if classifier.weight.shape[:2] != (CLASSES, 1280):
            raise MvosError(f"{path}: the classifier is {classifier.weight.shape[:2]}, not 1001 x 1280")
        model.classifier[1].weight.copy_(torch.from_numpy(classifier.weight[:, :, 0, 0]))
        model.classifier[1].bias.copy_(torch.from_numpy(classifier.bias))
    return model


def _batchnorm_after_each_conv(features: nn.Module) -> dict[nn.Conv2d, nn.BatchNorm2d]:
    pairs, pending = {}, None
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            pending = module
        elif isinstance(module, nn.BatchNorm2d) and pending is not None:
            pairs[pending], pending = module, None
    return pairs


def _fold_input_scaling(weight: torch.Tensor, bias: torch.Tensor, scale: float,
                        zero: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The stem saw real = scale * (pixel - zero); ours gets x = (pixel / 255 - mean) / std, so
    real = scale * 255 * std * x + scale * (255 * mean - zero), folded into the weights and bias."""
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    offset = scale * (255 * mean - zero)  # 1,3,1,1
    return weight * (scale * 255 * std), bias + (weight * offset).sum(dim=(1, 2, 3))


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's SAME padding along one axis: (before, after), the odd pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@contextlib.contextmanager
def tf_padding(model: nn.Module):
    """Runs stride-2 convolutions with TF's SAME padding inside the block (for comparing with TFLite)."""
    def pad_like_tf(conv, args):
        x = args[0]
        top, bottom = _same_padding(x.shape[-2], conv.kernel_size[0], 2)
        left, right = _same_padding(x.shape[-1], conv.kernel_size[1], 2)
        return (F.pad(x, (left, right, top, bottom)),)

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    saved = [conv.padding for conv in convs]
    hooks = [conv.register_forward_pre_hook(pad_like_tf) for conv in convs]
    for conv in convs:
        conv.padding = (0, 0)
    try:
        yield model
    finally:
        for hook, conv, padding in zip(hooks, convs, saved):
            hook.remove()
            conv.padding = padding


def classify(model: MobileNetV2, image: np.ndarray) -> np.ndarray:
    """1001 class probabilities of an RGB uint8 image already at the classifier's input size."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        f = model.features(x).mean(dim=(2, 3))
        return torch.softmax(model.classifier(f), dim=1)[0].numpy()


def classify_tflite(path: str | Path, image: np.ndarray) -> np.ndarray:
    """The same through the TFLite interpreter (uint8 input), dequantised probabilities."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None].astype(np.uint8))
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    q = out["quantization_parameters"]
    probs = interpreter.get_tensor(out["index"])[0].astype(np.float32)
    if q["scales"].size:
        probs = (probs - q["zero_points"][0]) * q["scales"][0]
    return probs


def top1(probs: np.ndarray, labels: list[str]) -> str:
    index = int(probs.argmax())
    return f"{index} {labels[index] if index < len(labels) else '?'} ({probs[index]:.3f})"


def check_classification(model: MobileNetV2, tflite: str | Path, image_path: str | Path, labels: list[str]) -> str:
    """One line comparing the TFLite classifier with the converted network (TF's padding, then ours)."""
    from mvos.runtime.io import read_image

    image = cv2.resize(read_image(image_path), (224, 224), interpolation=cv2.INTER_AREA)
    with tf_padding(model):
        same = classify(model, image)
    return (f"{Path(image_path).name}: TFLite {top1(classify_tflite(tflite, image), labels)}; converted with TF "
            f"padding {top1(same, labels)}; with ours {top1(classify(model, image), labels)}")


def save_backbone(model: MobileNetV2, path: str | Path) -> int:
    """Writes the stride-16 part a key encoder keeps (what the package ships); returns the number of values."""
    from mvos.runtime.io import atomic_path

    state = model.truncate().state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return sum(v.numel() for v in state.values())

