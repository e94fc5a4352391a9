"""What a converted .tflite file contains: its operators, read from the flatbuffer (ai_edge_litert's schema),
and a static check against what the TFLite GPU delegate accepts, so ops that would fall back to the CPU on a
phone are listed in the manifest and the `mvos export` report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

# Builtin ops the GPU delegate's compatibility checker accepts (tensorflow/lite/tools/versioning/
# gpu_compatibility.cc, CheckGpuDelegateCompatibility). Per-op conditions are checked below where our graphs
# can hit them; everything not listed (TOPK_V2, BROADCAST_TO, GATHER_ND, Flex/custom ops...) falls back.
GPU_DELEGATE_OPS = frozenset("""
ABS ADD ADD_N AVERAGE_POOL_2D BATCH_MATMUL CAST CONCATENATION CONV_2D COS CUMSUM DENSIFY DEPTH_TO_SPACE
DEPTHWISE_CONV_2D DEQUANTIZE DIV ELU EQUAL EXP FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GELU GREATER
GREATER_EQUAL HARD_SWISH LEAKY_RELU LESS LESS_EQUAL LOG LOGICAL_AND LOGISTIC LSTM MAXIMUM MAX_POOL_2D MEAN
MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL ONE_HOT PACK PAD PADV2 POW PRELU QUANTIZE REDUCE_MAX REDUCE_MIN REDUCE_PROD
RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR RSQRT SELECT SELECT_V2 SIGN SIN SLICE
SOFTMAX SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE SQUARED_DIFFERENCE STRIDED_SLICE SUB SUM TANH TILE TRANSPOSE
TRANSPOSE_CONV
""".split())
MAX_GPU_RANK = 4  # the delegate works on BHWC tensors


@dataclass
class OpReport:
    counts: Counter = field(default_factory=Counter)  # op name -> number of nodes
    gpu_fallback: dict[str, str] = field(default_factory=dict)  # op name -> why the GPU delegate refuses it
    flex: list[str] = field(default_factory=list)  # Flex (TensorFlow) ops: need the Flex delegate, never OK
    int8_mac_share: float = 0.0  # of the multiply-accumulates, those ops with int8 outputs do (`int8_mac_share`)

    def to_dict(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "gpu_fallback": dict(sorted(self.gpu_fallback.items())),
                "flex": sorted(set(self.flex)), "int8_mac_share": self.int8_mac_share}


def _op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


def _op_name(model, op, names: dict[int, str]) -> str:
    """An operator's builtin name: codes above 127 live in BuiltinCode, DeprecatedBuiltinCode holds the rest
    (schema v3a)."""
    code = model.OperatorCodes(op.OpcodeIndex())
    return names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")


def inspect_ops(content: bytes) -> OpReport:
    """Operators of every subgraph of a .tflite flatbuffer, with GPU-delegate fallbacks."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(content, 0)
    names = _op_names()
    report = OpReport()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            name = _op_name(model, op, names)
            if name == "CUSTOM":
                name = f"CUSTOM:{model.OperatorCodes(op.OpcodeIndex()).CustomCode().decode()}"
                if name.startswith("CUSTOM:Flex"):
                    report.flex.append(name)
            report.counts[name] += 1
            reason = _gpu_refusal(name, graph, op)
            if reason:
                report.gpu_fallback.setdefault(name, reason)
    report.int8_mac_share = int8_mac_share(content)
    return report


def int8_mac_share(content: bytes) -> float:
    """The share of the first subgraph's multiply-accumulates done in int8, rounded to 0.001: what an int8 export
    computes in float (the memory read, a graph kept float inside) shows here."""
    macs = macs_by_precision(content)
    total = macs["int8"] + macs["float"]
    return round(macs["int8"] / total, 3) if total else 0.0


def macs_by_precision(content: bytes) -> dict[str, int]:
    """{"int8": MACs of ops with int8 outputs, "float": the rest} of the first subgraph (`graph_macs`)."""
    out = {"int8": 0, "float": 0}
    for (_, macs), (_, _, dtype) in zip(graph_macs(content), op_outputs(content)):
        out["int8" if dtype == "INT8" else "float"] += macs
    return out


def _ranks(graph, indices) -> list[int]:
    return [graph.Tensors(i).ShapeLength() for i in indices if i >= 0]


def _gpu_refusal(name: str, graph, op) -> str | None:
    if name not in GPU_DELEGATE_OPS:
        return "not a GPU delegate op"
    ranks = _ranks(graph, [op.Inputs(j) for j in range(op.InputsLength())]) + \
        _ranks(graph, [op.Outputs(j) for j in range(op.OutputsLength())])
    if max(ranks, default=0) > MAX_GPU_RANK:
        return f"rank-{max(ranks)} tensor (the GPU delegate takes rank <= {MAX_GPU_RANK})"
    if name == "BATCH_MATMUL":
        lhs, rhs = _ranks(graph, [op.Inputs(0), op.Inputs(1)])
        if 3 in (lhs, rhs):
            return "rank-3 batched matmul (GPU delegates mishandle it; use rank-4 operands)"
    return None


def op_outputs(content: bytes) -> list[tuple[str, str, str]]:
    """(op name, first output tensor's name, its type: FLOAT32, INT8...) of every op of the first subgraph."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(content, 0)
    graph = model.Subgraphs(0)
    names = _op_names()
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_") and isinstance(v, int)}
    out = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        tensor = graph.Tensors(op.Outputs(0))
        out.append((_op_name(model, op, names), tensor.Name().decode(), types.get(tensor.Type(), "UNKNOWN")))
    return out


def graph_macs(content: bytes) -> list[tuple[str, int]]:
    """(op name, multiply-accumulates) of every op of the first subgraph, in execution order, from the static
    tensor shapes of the flatbuffer: convolutions, depthwise convolutions, fully connected and batched matmuls;
    0 for everything else (elementwise, resizes, reshapes)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(content, 0)
    graph = model.Subgraphs(0)
    names = _op_names()

    def shape(index: int) -> list[int]:
        return graph.Tensors(index).ShapeAsNumpy().tolist() if index >= 0 else []

    out = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        name = _op_name(model, op, names)
        result = shape(op.Outputs(0))
        elements = int(np.prod(result)) if result else 0
        macs = 0
        if name == "CONV_2D":
            _, kh, kw, cin = shape(op.Inputs(1))
            macs = elements * kh * kw * cin
        elif name == "DEPTHWISE_CONV_2D":
            _, kh, kw, _ = shape(op.Inputs(1))
            macs = elements * kh * kw
        elif name == "FULLY_CONNECTED":
            macs = elements * shape(op.Inputs(1))[-1]
        elif name == "BATCH_MATMUL":
            options = schema.BatchMatMulOptions()
            table = op.BuiltinOptions()
            options.Init(table.Bytes, table.Pos)
            lhs = shape(op.Inputs(0))
            macs = elements * (lhs[-2] if options.AdjX() else lhs[-1])
        out.append((name, macs))
    return out
