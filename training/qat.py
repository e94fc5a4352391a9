"""Quantisation-aware fine-tuning: the student trains with the rounding its full-integer export applies, so
its weights learn to tolerate it (`student.quantisation_aware`).

`mvos export --precision int8` (mvos.export.convert, mvos.export.ptq) gives every convolution int8 weights per
output channel (symmetric, -127..127, after BatchNorm is folded in) and every activation one int8 scale and
zero point from its calibrated min/max. Here, in PyTorch:

- each Conv2d and Linear weight is rounded to its per-output-channel int8 grid in the forward pass. Rounding
  per output channel commutes with folding a frozen BatchNorm's per-channel scale into it, so the unfolded
  weight is rounded onto the same grid (freeze BatchNorm: `optim.freeze_bn: all`);
- each activation the graph stores as int8 is rounded to 256 levels between a running min and max (the output
  of every BatchNorm, ReLU/ReLU6 and of every convolution with a bias, the ones no BatchNorm follows). Residual
  additions are left out: close enough to teach tolerance, not a bit-exact simulation;
- gradients pass the rounding straight through inside the range (the fake-quantise ops' own gradient).

Nothing is added to the state dict: checkpoints stay plain float MobileVOS weights, exported as any other.
The memory read has no weights and stays float, as in the export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_LEVELS = 127  # symmetric int8 weights: -127..127
RANGE_MOMENTUM = 0.01  # running min/max of the activations, per training step


def quantised_weight(weight: torch.Tensor) -> torch.Tensor:
    """weight out,... rounded per output channel to a symmetric int8 grid (max |w| -> 127)."""
    w = weight.float()
    scale = (w.detach().flatten(1).abs().amax(dim=1) / WEIGHT_LEVELS).clamp_min(1e-12)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -WEIGHT_LEVELS, WEIGHT_LEVELS).to(weight.dtype)


class ActivationRange(nn.Module):
    """Rounds a tensor to 256 levels between a running min and max (per tensor, asymmetric, as TFLite's int8
    activations), after updating the range in training mode. Its buffers are not persistent: checkpoints
    are unchanged."""

    def __init__(self):
        super().__init__()
        self.register_buffer("low", torch.zeros(()), persistent=False)
        self.register_buffer("high", torch.zeros(()), persistent=False)
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                low, high = x.detach().amin().float().clamp_max(0), x.detach().amax().float().clamp_min(0)
                if not bool(self.seen):
                    self.low.copy_(low), self.high.copy_(high), self.seen.fill_(True)
                else:
                    self.low.lerp_(low, RANGE_MOMENTUM), self.high.lerp_(high, RANGE_MOMENTUM)
        if not bool(self.seen):
            return x
        scale = float((self.high - self.low).clamp_min(1e-8)) / 255
        zero_point = int(round(-128 - float(self.low) / scale))
        return torch.fake_quantize_per_tensor_affine(x.float(), scale, max(-128, min(127, zero_point)),
                                                     -128, 127).to(x.dtype)


def _quantised_forward(layer: nn.Conv2d | nn.Linear):
    if isinstance(layer, nn.Conv2d):
        return lambda x: layer._conv_forward(x, quantised_weight(layer.weight), layer.bias)
    return lambda x: F.linear(x, quantised_weight(layer.weight), layer.bias)


def prepare_quantisation_aware(model: nn.Module) -> int:
    """Makes `model` (in place) round weights and activations as its int8 export does; returns how many
    activations are rounded. The model's parameters and state dict are unchanged."""
    activations = (nn.ReLU, nn.ReLU6)
    fused = set()  # BatchNorms an activation follows: the export stores only the activation's output
    for container in model.modules():
        if isinstance(container, nn.Sequential):
            layers = list(container)
            fused.update(id(a) for a, b in zip(layers, layers[1:]) if isinstance(b, activations))
    # The ranges live at the model's root, not inside the layers: freezing BatchNorm (module.eval()) would
    # freeze a range held inside it.
    model.activation_ranges = nn.ModuleDict()
    for name, layer in list(model.named_modules()):
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            layer.forward = _quantised_forward(layer)  # an instance attribute: the class's forward is untouched
        stored = isinstance(layer, activations) or (isinstance(layer, nn.BatchNorm2d) and id(layer) not in fused) \
            or (isinstance(layer, nn.Conv2d) and layer.bias is not None)
        if stored:
            quantise = model.activation_ranges[name.replace(".", "/")] = ActivationRange()
            layer.register_forward_hook(lambda module, args, out, quantise=quantise: quantise(out))
    return len(model.activation_ranges)
