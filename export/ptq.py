"""Two refinements of a full-integer int8 graph after the quantiser, both measured on the calibration inputs:

1. GPTQ rounding of the convolution weights (Frantar et al., 2023, applied to convolutions). The quantiser
   rounds each weight to its nearest int8 step. GPTQ rounds a layer's weights one input position at a time and
   moves each rounding error onto the weights not yet rounded, weighted by the second moments of the layer's
   inputs (H = E[x x^T]), so that the layer's output stays close to fp32 rather than each weight on its own.
2. Empirical bias correction (Nagel et al., 2019): layer by layer in graph order, the mean per-channel
   difference between the int8 graph's output and fp32's (what the layers before it and its own int8 weights
   and activations shift it by) is taken out of its int32 bias.

Scales, zero points and the graph are unchanged: only int8 weight and int32 bias values move, in place, so the
file runs exactly as fast.

Why: the shipped MobileNetV2 key encoder's first depthwise convolution has large BN-folded weights whose output
is a small difference of large terms. Rounded to nearest, its weights alone put relative errors of 0.13-0.23
on the key encoder's outputs (per-channel int8, activations in float); GPTQ-rounded, 0.03-0.05. And the value
encoder's int8 output was shifted per channel: the shift was 40 % of its error's energy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvos.runtime.manifest import dequantise, quantise

DAMPING = 0.01  # of H's mean diagonal (GPTQ's default): keeps H invertible where inputs are collinear
MAX_POSITIONS = 8192  # output positions sampled per call to estimate H (enough for d <= a few thousand)
BIAS_POSITIONS = 1024  # output positions sampled per call to measure a layer's shift
BIAS_SAMPLES = 16  # calibration calls bias correction runs (each layer reruns the int8 graph on them)
INT8_MAX = 127  # symmetric weights: -127..127
# Output ranges of a fused activation: positions where fp32 or int8 sits on a clip are left out of the mean
# shift, which is measured before the activation.
_CLIP = {0: (-np.inf, np.inf), 1: (0.0, np.inf), 3: (0.0, 6.0)}  # NONE, RELU, RELU6


@dataclass
class _Layer:
    """One int8 convolution of the graph and what the refinements measure for it."""

    weight: int  # tensor indices in the quantised graph
    bias: int  # -1: none
    weight_name: str
    input_name: str
    output_name: str
    depthwise: bool
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    same_padding: bool
    clip: tuple[float, float]
    second_moments: np.ndarray | None = None  # groups,d,d (1 group for a convolution, C for a depthwise one)
    samples: int = 0


def gptq_round(weights: np.ndarray, second_moments: np.ndarray, scales: np.ndarray,
               damping: float = DAMPING) -> np.ndarray:
    """int8 values (G,O,d) for float `weights` (G groups of O rows of d inputs) on a grid of per-row `scales`
    (G,O), each group's rows sharing the inputs' second moments (G,d,d). GPTQ's update: after rounding column
    i, the remaining columns absorb its error through the Cholesky factor of H^-1."""
    w = weights.astype(np.float64).copy()
    h = second_moments.astype(np.float64).copy()
    d = w.shape[2]
    diagonal = np.einsum("gii->gi", h)  # a view: writes go into h
    dead = diagonal <= 0  # inputs that were always zero: their weights cannot matter
    diagonal[dead] = 1.0
    w[np.broadcast_to(dead[:, None, :], w.shape)] = 0.0
    diagonal += damping * diagonal.mean(axis=1, keepdims=True)
    upper = np.swapaxes(np.linalg.cholesky(np.linalg.inv(h)), 1, 2)  # H^-1 = U^T U
    scales = scales.astype(np.float64)
    out = np.empty(w.shape, np.int8)
    for i in range(d):
        column = w[:, :, i]
        rounded = np.clip(np.rint(column / scales), -INT8_MAX, INT8_MAX)
        out[:, :, i] = rounded
        error = (column - rounded * scales) / upper[:, i, i][:, None]  # G,O
        w[:, :, i + 1:] -= error[:, :, None] * upper[:, None, i, i + 1:]
    return out


def output_error(weights: np.ndarray, quantised: np.ndarray, scales: np.ndarray,
                 second_moments: np.ndarray) -> np.ndarray:
    """Per group, the expected squared output error sum_o (q_o - w_o)^T H (q_o - w_o) of a rounding."""
    delta = quantised.astype(np.float64) * scales[..., None] - weights
    return np.einsum("god,gde,goe->g", delta, second_moments, delta)


def _patches(x: np.ndarray, layer: _Layer, rng: np.random.Generator) -> np.ndarray:
    """The layer's input windows at up to MAX_POSITIONS output positions: (n, kh*kw, C) from x (1,H,W,C)."""
    _, height, width, _ = x.shape
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.stride, layer.dilation
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if layer.same_padding:  # TFLite's SAME: the output covers ceil(size/stride), extra padding bottom/right
        out_h, out_w = -(-height // sh), -(-width // sw)
        pad_h, pad_w = max((out_h - 1) * sh + span_h - height, 0), max((out_w - 1) * sw + span_w - width, 0)
        x = np.pad(x[0], ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    else:
        out_h, out_w = (height - span_h) // sh + 1, (width - span_w) // sw + 1
        x = x[0]
    positions = out_h * out_w
    chosen = rng.choice(positions, MAX_POSITIONS, replace=False) if positions > MAX_POSITIONS else None
    windows = []
    for i in range(kh):
        for j in range(kw):
            tap = x[i * dh: i * dh + (out_h - 1) * sh + 1: sh, j * dw: j * dw + (out_w - 1) * sw + 1: sw]
            tap = tap.reshape(positions, -1)
            windows.append(tap if chosen is None else tap[chosen])
    return np.stack(windows, axis=1).astype(np.float64)


def _accumulate(layer: _Layer, x: np.ndarray, rng: np.random.Generator) -> None:
    patches = _patches(x, layer, rng)  # n,k,C
    if layer.depthwise:
        moments = np.einsum("nkc,njc->ckj", patches, patches)  # one k x k matrix per channel
    else:
        flat = patches.reshape(len(patches), -1)  # n, kh*kw*C: the (O,kh,kw,I) weights' order
        moments = (flat.T @ flat)[None]
    moments /= len(patches)
    layer.second_moments = moments if layer.second_moments is None else layer.second_moments + moments
    layer.samples += 1


def _layers(model, subgraph) -> list[_Layer]:
    """The graph's int8 CONV_2D and DEPTHWISE_CONV_2D (multiplier 1) with symmetric per-channel weights."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools.flatbuffer_utils import (
        get_builtin_code_from_operator_code,
    )

    layers = []
    for op in subgraph.operators:
        code = get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
        if code not in (schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D):
            continue
        depthwise = code == schema.BuiltinOperator.DEPTHWISE_CONV_2D
        source, weight = subgraph.tensors[op.inputs[0]], subgraph.tensors[op.inputs[1]]
        q = weight.quantization
        channel_axis = 3 if depthwise else 0
        if (weight.type != schema.TensorType.INT8 or q is None or q.scale is None or
                len(q.scale) != weight.shape[channel_axis] or np.any(np.asarray(q.zeroPoint) != 0)):
            continue
        options = op.builtinOptions
        if depthwise and options.depthMultiplier not in (0, 1):
            continue
        if not depthwise and source.shape[-1] != weight.shape[3]:  # grouped convolution
            continue
        if options.fusedActivationFunction not in _CLIP:
            continue
        bias = op.inputs[2] if len(op.inputs) > 2 else -1
        if bias >= 0 and subgraph.tensors[bias].type != schema.TensorType.INT32:
            bias = -1
        layers.append(_Layer(
            op.inputs[1], bias, weight.name.decode(), source.name.decode(),
            subgraph.tensors[op.outputs[0]].name.decode(), depthwise,
            (int(weight.shape[1]), int(weight.shape[2])), (options.strideH, options.strideW),
            (options.dilationHFactor, options.dilationWFactor), options.padding == schema.Padding.SAME,
            _CLIP[options.fusedActivationFunction]))
    return layers


def _buffer_span(content: bytearray, buffer: int) -> tuple[int, int]:
    """Where a constant buffer's bytes lie in the file: inside the flatbuffer, or (files the quantiser packs)
    after it, at the buffer's offset. Values are rewritten in place, so nothing else moves."""
    from ai_edge_litert import schema_py_generated as schema

    entry = schema.Model.GetRootAs(content, 0).Buffers(buffer)
    if entry.Offset() > 1:
        return entry.Offset(), entry.Offset() + entry.Size()
    start = entry._tab.Vector(entry._tab.Offset(4))  # the data vector's first byte
    return start, start + entry.DataLength()


def _interpreter(content: bytes):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(content), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    return interpreter, {d["name"]: d for d in interpreter.get_tensor_details()}


def to_edge(value: np.ndarray, detail: dict) -> np.ndarray:
    """A float array as a graph input described by an interpreter `detail` takes it (quantised if int8)."""
    return quantise(value, *detail["quantization"]).astype(np.int8) if detail["dtype"] == np.int8 else value


def from_edge(value: np.ndarray, detail: dict) -> np.ndarray:
    """A graph tensor described by an interpreter `detail` as float (dequantised if int8)."""
    return dequantise(value, *detail["quantization"]) if detail["dtype"] == np.int8 else value


def refine_int8(fp32: bytes, int8: bytes, calibration: list[dict], signature: str = "serving_default",
                seed: int = 0) -> tuple[bytes, dict]:
    """`int8` (a full-integer quantisation of `fp32`) with its convolutions' weights GPTQ-rounded and their
    biases corrected, both on `calibration` (input name -> float array, one dict per call). Returns the new
    flatbuffer and {"gptq": layers re-rounded, "bias": layers corrected}. A layer keeps its nearest rounding
    where that is better on the calibration inputs; layers fp32 has no same-named tensors for are left alone."""
    from ai_edge_litert.tools.flatbuffer_utils import convert_bytearray_to_object

    content = bytearray(int8)
    model = convert_bytearray_to_object(content)
    index = next(d.subgraphIndex for d in model.signatureDefs if d.signatureKey.decode() == signature)
    subgraph = model.subgraphs[index]
    reference, by_name = _interpreter(fp32)
    layers = [layer for layer in _layers(model, subgraph)
              if {layer.input_name, layer.weight_name, layer.output_name} <= by_name.keys()]
    rng = np.random.default_rng(seed)
    runner = reference.get_signature_runner(signature)
    for sample in calibration:
        runner(**sample)
        for layer in layers:
            _accumulate(layer, reference.get_tensor(by_name[layer.input_name]["index"]), rng)
    counts = {"gptq": sum(_gptq_layer(content, subgraph, layer, reference, by_name) for layer in layers)}
    counts["bias"] = _correct_biases(content, subgraph, layers, reference, by_name, calibration, signature, rng)
    return bytes(content), counts


def _as_groups(weights: np.ndarray, depthwise: bool) -> np.ndarray:
    """TFLite weights as GPTQ's groups of rows: a depthwise 1,kh,kw,C is C groups of one row over kh*kw
    inputs; a convolution's O,kh,kw,I one group of O rows over kh*kw*I inputs (the patches' order)."""
    if depthwise:
        return weights.reshape(-1, weights.shape[-1]).T[:, None, :]
    return weights.reshape(1, weights.shape[0], -1)


def _from_groups(groups: np.ndarray, shape: tuple, depthwise: bool) -> np.ndarray:
    return (groups[:, 0, :].T if depthwise else groups).reshape(shape)


def _gptq_layer(content: bytearray, subgraph, layer: _Layer, reference, by_name: dict) -> bool:
    tensor = subgraph.tensors[layer.weight]
    shape = tuple(tensor.shape)
    start, end = _buffer_span(content, tensor.buffer)
    w = _as_groups(reference.get_tensor(by_name[layer.weight_name]["index"]).astype(np.float64), layer.depthwise)
    nearest = _as_groups(np.frombuffer(bytes(content[start:end]), np.int8).reshape(shape), layer.depthwise)
    scales = np.asarray(tensor.quantization.scale, np.float64)
    scales = scales[:, None] if layer.depthwise else scales[None, :]  # G,O like the rows
    h = layer.second_moments / layer.samples
    try:
        gptq = gptq_round(w, h, scales)
    except np.linalg.LinAlgError:  # H too ill-conditioned even damped: nearest rounding stays
        return False
    better = output_error(w, gptq, scales, h) < output_error(w, nearest, scales, h)
    if not better.any():
        return False
    chosen = np.where(better[:, None, None], gptq, nearest)
    content[start:end] = np.ascontiguousarray(_from_groups(chosen, shape, layer.depthwise)).tobytes()
    return True


def _correct_biases(content: bytearray, subgraph, layers: list[_Layer], reference, by_name: dict,
                    calibration: list[dict], signature: str, rng: np.random.Generator) -> int:
    """Layer by layer in graph order (each measured with the corrections before it in place), the mean
    per-channel shift of the int8 output against fp32 at sampled positions, taken out of the int32 bias."""
    step = max(1, len(calibration) // BIAS_SAMPLES)
    samples = calibration[::step][:BIAS_SAMPLES]
    layers = [layer for layer in layers if layer.bias >= 0]
    runner = reference.get_signature_runner(signature)
    expected, positions = {id(layer): [] for layer in layers}, {id(layer): [] for layer in layers}
    for sample in samples:  # fp32 outputs at fixed sampled positions, kept for the int8 passes
        runner(**sample)
        for layer in layers:
            out = reference.get_tensor(by_name[layer.output_name]["index"])
            flat = out.reshape(-1, out.shape[-1])
            chosen = rng.choice(len(flat), min(BIAS_POSITIONS, len(flat)), replace=False)
            positions[id(layer)].append(chosen)
            expected[id(layer)].append(flat[chosen].copy())
    corrected = 0
    for layer in layers:
        interpreter, details = _interpreter(content)
        if layer.output_name not in details:
            continue
        quantised_runner = interpreter.get_signature_runner(signature)
        low, high = layer.clip
        shift_sum, count = 0.0, 0
        inputs, detail = quantised_runner.get_input_details(), details[layer.output_name]
        for sample, chosen, want in zip(samples, positions[id(layer)], expected[id(layer)]):
            quantised_runner(**{name: to_edge(value, inputs[name]) for name, value in sample.items()})
            out = from_edge(interpreter.get_tensor(detail["index"]), detail)
            got = out.reshape(-1, out.shape[-1])[chosen]
            inside = (want > low) & (want < high) & (got > low) & (got < high)
            shift_sum = shift_sum + np.where(inside, got - want, 0.0).sum(axis=0)
            count = count + inside.sum(axis=0)
        shift = np.where(count > 0, shift_sum / np.maximum(count, 1), 0.0)
        bias = subgraph.tensors[layer.bias]
        start, end = _buffer_span(content, bias.buffer)
        values = np.frombuffer(bytes(content[start:end]), np.int32).copy()
        steps = np.rint(shift / np.asarray(bias.quantization.scale, np.float64)).astype(np.int64)
        if not steps.any():
            continue
        content[start:end] = np.clip(values - steps, -2**31, 2**31 - 1).astype(np.int32).tobytes()
        corrected += 1
    return corrected
