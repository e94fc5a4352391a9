"""PyTorch graph -> .tflite bytes (litert-torch), and fp32 bytes -> fp16 / int8 variants (ai-edge-quantizer).

Quantised files are made from the fp32 flatbuffer, so each subgraph is traced and lowered once whatever the
precisions asked for.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from mvos.export.graph_edit import float_with_int8_edges
from mvos.export.ptq import refine_int8
from mvos.export.subgraphs import GraphSpec
from mvos.runtime.errors import MvosError


class ConversionError(MvosError):
    """One subgraph/precision failed to convert; the message carries the converter's last words."""


@contextlib.contextmanager
def captured_native_output() -> Iterator[list[str]]:
    """Routes the converters' C++ logging (written straight to fd 1/2, not through Python) to a temporary file;
    the yielded list receives its last lines, for error messages."""
    tail: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield tail
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            lines = sink.read().decode("utf-8", "replace").splitlines()
            tail.extend(line for line in lines[-20:] if line.strip())


def _error_line(exc: BaseException, tail: list[str]) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    hint = next((line for line in reversed(tail) if "error" in line.lower()), "")
    return f"{type(exc).__name__}: {first}" + (f" ({hint.strip()[:200]})" if hint else "")


def convert_graph(spec: GraphSpec) -> bytes:
    """Trace and lower one subgraph with named inputs (sample kwargs) and dict outputs (named outputs)."""
    import litert_torch

    litert_torch.config.show_progress = False
    sample = {name: torch.zeros(shape) for name, shape in spec.inputs.items()}
    with captured_native_output() as tail:
        try:
            edge = litert_torch.convert(spec.module.eval(), sample_kwargs=sample)
            return bytes(edge.model_content())
        except Exception as exc:  # the converter raises anything from torch.export to MLIR errors
            error = exc
    raise ConversionError(f"{spec.key}: litert-torch conversion failed: {_error_line(error, tail)}")


def _fp16_recipe():
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                   num_bits=16, algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    return manager.get_quantization_recipe()


def quantize_fp16(fp32: bytes, what: str = "") -> bytes:
    """fp16 weights (half the file; GPU delegates compute in fp16 anyway)."""
    from ai_edge_quantizer import quantizer

    with captured_native_output() as tail:
        try:
            result = quantizer.Quantizer(bytearray(fp32), _fp16_recipe()).quantize(enable_progress_report=False)
            return bytes(result.quantized_model)
        except Exception as exc:  # ai-edge-quantizer raises plain Exceptions for unsupported graphs
            error = exc
    raise ConversionError(f"{what}: fp16 quantisation failed: {_error_line(error, tail)}")


# Kept in float wherever they are:
# - BATCH_MATMUL: XNNPACK runs it in int8 with a reference kernel (the memory read's took 90 ms at 480x864 in
#   int8, 7 ms in fp32);
# - SOFTMAX: the softmax over memory positions needs float's range;
# - RELU: XNNPACK does not take an int8 RELU, so each one split the graph into another delegate partition around
#   a builtin kernel; as dequantise, RELU, quantise all three stay in XNNPACK (int8 decoder 25.5 -> 17.9 ms,
#   value encoder 14.0 -> 12.6 ms here, same outputs).
FLOAT_OPS = ("BATCH_MATMUL", "SOFTMAX", "RELU")
# And every op of the memory read (`MemoryRead`): int8 affinities lose the small differences that decide the read,
# and quantising its 1620x3240 affinity between float ops cost a quantise/dequantise round trip.
FLOAT_SCOPES = ("MemoryRead",)


def _int8_recipe_manager():
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=8,
                              weight_num_bits=8)  # weights per output channel, activations per tensor
    for name in FLOAT_OPS:
        manager.add_quantization_config(".*", qtyping.TFLOperationName[name],
                                        algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    for scope in FLOAT_SCOPES:
        manager.add_quantization_config(scope, qtyping.TFLOperationName.ALL_SUPPORTED,
                                        algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    return manager


def _widest_range(seen: dict, new: dict) -> dict:
    """Min/max over every calibration sample. ai-edge-quantizer's default is a moving average (0.95), which
    shrinks a range that only some samples reach: calibrated on calls that alternate a mask with an empty one,
    the mask inputs' int8 range ended near 0.36 and every object pixel was clipped to it."""
    if not seen:
        return new
    return dict(new, min=np.minimum(seen["min"], new["min"]), max=np.maximum(seen["max"], new["max"]))


def calibrated_ranges(fp32: bytes, calibration: list[dict], signature: str = "serving_default") -> dict:
    """Tensor name -> {min, max} over all of `calibration` (input name -> array, one dict per sample)."""
    from ai_edge_quantizer import calibrator

    calib = calibrator.Calibrator(bytearray(fp32), num_threads=1, qsv_update_func=_widest_range)
    calib.calibrate({signature: calibration}, _int8_recipe_manager())
    return calib.get_model_qsvs()


def quantize_nearest(fp32: bytes, calibration: list[dict], signature: str = "serving_default",
                     input_ranges: dict[str, tuple[float, float]] | None = None) -> bytes:
    """ai-edge-quantizer's full-integer int8 (weights per output channel rounded to nearest, activations per
    tensor) with the activation ranges measured on `calibration` (input name -> array, one dict per sample),
    except the inputs `input_ranges` fixes (input name -> (min, max))."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(bytearray(fp32), _int8_recipe_manager().get_quantization_recipe())
    ranges = calibrated_ranges(fp32, calibration, signature)
    if input_ranges:
        tensors = Interpreter(model_content=fp32).get_signature_runner(signature).get_input_details()
        for name, (low, high) in input_ranges.items():
            measured = ranges[tensors[name]["name"]]
            ranges[tensors[name]["name"]] = dict(measured, min=np.full_like(measured["min"], low),
                                                 max=np.full_like(measured["max"], high))
    return bytes(q.quantize(ranges, enable_progress_report=False).quantized_model)


def quantize_static(fp32: bytes, calibration: list[dict], what: str = "", signature: str = "serving_default",
                    input_ranges: dict[str, tuple[float, float]] | None = None, float_inside: bool = False) -> bytes:
    """int8 of an fp32 flatbuffer (`quantize_nearest`), then its convolutions' weights
    GPTQ-rounded and their biases corrected on the same calibration samples (`mvos.export.ptq`). The graph's
    edges are int8; the manifest records their scales and zero points. `float_inside`: the fp32 graph behind
    those same int8 edges instead (`mvos export --int8-float`)."""
    with captured_native_output() as tail:
        try:
            nearest = quantize_nearest(fp32, calibration, signature, input_ranges)
            if float_inside:
                return float_with_int8_edges(fp32, nearest)
            return refine_int8(fp32, nearest, calibration, signature)[0]
        except Exception as exc:  # ai-edge-quantizer raises plain Exceptions for unsupported graphs
            error = exc
    raise ConversionError(f"{what}: int8 quantisation failed: {_error_line(error, tail)}")

