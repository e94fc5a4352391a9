"""int8 refinements after the quantiser (`mvos.export.ptq`): GPTQ rounding and bias correction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mvos.export.ptq import from_edge, gptq_round, output_error, refine_int8, to_edge
from torch import nn


def correlated_inputs(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n samples of d strongly correlated inputs, like neighbouring pixels."""
    mixing = rng.normal(size=(d, d)) * 0.2 + 1.0
    return rng.normal(size=(n, d)) @ mixing


@pytest.mark.parametrize("groups,rows,inputs", [(1, 16, 24), (32, 1, 9)])  # a convolution; a depthwise one
def test_gptq_rounding_beats_nearest_on_the_layers_output(groups, rows, inputs):
    rng = np.random.default_rng(0)
    x = np.stack([correlated_inputs(rng, 2000, inputs) for _ in range(groups)])  # G,n,d
    h = np.einsum("gnd,gne->gde", x, x) / x.shape[1]
    weights = rng.normal(size=(groups, rows, inputs))
    scales = np.abs(weights).max(axis=2) / 127
    nearest = np.clip(np.rint(weights / scales[..., None]), -127, 127)
    rounded = gptq_round(weights, h, scales)
    assert rounded.dtype == np.int8 and np.abs(rounded.astype(int)).max() <= 127
    assert np.all(np.abs(rounded - nearest) <= 3)  # still a rounding of the same weights, not a new layer
    # Over the layer: a group of one short row may round better to nearest (refine_int8 then keeps that).
    assert output_error(weights, rounded, scales, h).sum() < 0.5 * output_error(weights, nearest, scales, h).sum()


def test_gptq_rounding_ignores_inputs_that_are_always_zero():
    rng = np.random.default_rng(1)
    x = correlated_inputs(rng, 500, 6)
    x[:, 2] = 0
    h = (x.T @ x / len(x))[None]
    weights = rng.normal(size=(1, 4, 6))
    scales = np.abs(weights).max(axis=2) / 127
    rounded = gptq_round(weights, h, scales)
    assert np.all(rounded[0, :, 2] == 0)
    assert np.isfinite(output_error(weights, rounded, scales, h)).all()


class CancellingNet(nn.Module):
    """A convolution whose output is a small difference of large terms (large weights summing to about zero, as
    in the MobileNetV2 key encoder's first block), and a second branch whose 1x1 weights pass 256 KB, so the
    quantiser stores them after the flatbuffer rather than inside it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.wide = nn.Conv2d(512, 512, 1)
        with torch.no_grad():
            w = torch.randn(8, 3, 3, 3)
            self.conv.weight.copy_(20 * (w - w.mean(dim=(1, 2, 3), keepdim=True)) + 0.5 * torch.randn(8, 3, 3, 3))

    def forward(self, image, wide):
        return {"out": self.conv(image.permute(0, 3, 1, 2)).permute(0, 2, 3, 1),
                "wide_out": self.wide(wide.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)}


def smooth_images(rng: np.random.Generator, count: int) -> list[dict]:
    """Images on int8's grid of 0..1 (so quantising the input loses nothing and the weights' rounding is what
    the output error measures), smooth like photographs."""
    samples = []
    for _ in range(count):
        coarse = torch.from_numpy(rng.uniform(0, 1, size=(1, 3, 4, 4)).astype(np.float32))
        image = torch.round(F.interpolate(coarse, size=(24, 24), mode="bilinear") * 255) / 255
        image[0, 0, 0, :2] = torch.tensor([0.0, 1.0])  # every sample spans 0..1: one input scale fits all
        samples.append({"image": image.permute(0, 2, 3, 1).numpy(),
                        "wide": rng.normal(size=(1, 1, 1, 512)).astype(np.float32)})
    return samples


def run_tflite(content: bytes, samples: list[dict]) -> list[np.ndarray]:
    """The "out" output of each sample, int8 edges quantised and dequantised by the graph's own parameters."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=content).get_signature_runner("serving_default")
    details_in, detail_out = runner.get_input_details(), runner.get_output_details()["out"]
    return [from_edge(runner(**{name: to_edge(value, details_in[name]) for name, value in sample.items()})["out"],
                      detail_out) for sample in samples]


def conv_weights(content: bytes) -> np.ndarray:
    """The 3x3 convolution's weights (O,kh,kw,I) as the file holds them, dequantised if int8."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    detail = next(d for d in interpreter.get_tensor_details() if tuple(d["shape"]) == (8, 3, 3, 3))
    weights = interpreter.get_tensor(detail["index"]).astype(np.float64)
    scales = detail["quantization_parameters"]["scales"]
    return weights * scales.reshape(-1, 1, 1, 1) if len(scales) else weights


def relative_error(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    return float(np.mean([np.linalg.norm(g - e) / np.linalg.norm(e) for e, g in zip(expected, got)]))


@pytest.fixture(scope="module")
def cancelling_graph():
    import litert_torch
    from mvos.export.convert import quantize_nearest

    litert_torch.config.show_progress = False
    sample = {"image": torch.zeros(1, 24, 24, 3), "wide": torch.zeros(1, 1, 1, 512)}
    fp32 = bytes(litert_torch.convert(CancellingNet().eval(), sample_kwargs=sample).model_content())
    rng = np.random.default_rng(0)
    calibration, held_out = smooth_images(rng, 24), smooth_images(rng, 12)
    nearest = quantize_nearest(fp32, calibration)
    refined, counts = refine_int8(fp32, nearest, calibration)
    return fp32, nearest, refined, counts, held_out


@pytest.mark.slow
def test_gptq_weights_follow_the_fp32_layer_on_inputs_they_were_not_rounded_on(cancelling_graph):
    fp32, nearest, refined, counts, held_out = cancelling_graph
    assert counts == {"gptq": 2, "bias": 2}  # both convolutions

    images = torch.from_numpy(np.concatenate([s["image"] for s in held_out])).permute(0, 3, 1, 2).double()

    def conv(weights: np.ndarray) -> torch.Tensor:  # the layer in float with these weights
        return F.conv2d(images, torch.from_numpy(weights).permute(0, 3, 1, 2), padding=1)

    expected = conv(conv_weights(fp32))

    def layer_error(content: bytes) -> float:
        return float(torch.linalg.norm(conv(conv_weights(content)) - expected) / torch.linalg.norm(expected))

    assert layer_error(refined) < 0.5 * layer_error(nearest)


@pytest.mark.slow
def test_refined_int8_graph_follows_fp32_closer(cancelling_graph):
    """The whole int8 graph, its output quantised too: measured 0.0226 -> 0.0178."""
    fp32, nearest, refined, _, held_out = cancelling_graph
    expected = run_tflite(fp32, held_out)
    before = relative_error(expected, run_tflite(nearest, held_out))
    after = relative_error(expected, run_tflite(refined, held_out))
    assert after < 0.85 * before, (before, after)


@pytest.mark.slow
def test_refinement_moves_only_weight_and_bias_values(cancelling_graph):
    """Same size, same tensors with the same scales and zero points, weights stored where the quantiser put
    them (inside the flatbuffer and after it): the graph runs as before."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    _, nearest, refined, _, _ = cancelling_graph
    model = schema.Model.GetRootAs(bytearray(nearest), 0)
    assert any(model.Buffers(i).Offset() > 1 for i in range(model.BuffersLength()))  # the wide branch's
    assert len(refined) == len(nearest) and refined != nearest
    a, b = Interpreter(model_content=nearest), Interpreter(model_content=refined)
    for x, y in zip(a.get_tensor_details(), b.get_tensor_details()):
        assert (x["name"], tuple(x["shape"]), x["dtype"]) == (y["name"], tuple(y["shape"]), y["dtype"])
        for field in ("scales", "zero_points"):
            assert np.array_equal(x["quantization_parameters"][field], y["quantization_parameters"][field])
