"""Edits of converted .tflite flatbuffers through ai_edge_litert's object API: unpack, change the graph, pack.

`float_with_int8_edges` makes a graph that computes in float between int8 inputs and outputs: a drop-in for a
full-integer graph (the same signature, the same quantisation at every edge) where int8 inside costs too much.
"""

from __future__ import annotations

import numpy as np


def unpack(content: bytes):
    """The flatbuffer as a mutable `ModelT`, with weights stored past the flatbuffer (large or quantised models
    keep them there) moved inside, so `pack` writes a self-contained file."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    for buffer in model.buffers or []:
        if buffer.offset and buffer.offset > 1:
            buffer.data = np.frombuffer(content, np.uint8, buffer.size, buffer.offset)
            buffer.offset = buffer.size = 0
    return model


def pack(model) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _builtin_versions(content: bytes) -> dict[int, int]:
    """Builtin operator code -> its version in a flatbuffer, read in place (codes above 127 live in BuiltinCode,
    DeprecatedBuiltinCode holds the rest)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    codes = (model.OperatorCodes(i) for i in range(model.OperatorCodesLength()))
    return {max(c.BuiltinCode(), c.DeprecatedBuiltinCode()): c.Version() for c in codes}


def _opcode_index(model, code: int, versions: dict[int, int]) -> int:
    """Index of builtin `code` in the model's operator codes, added (at its version in `versions`) if absent."""
    from ai_edge_litert import schema_py_generated as schema

    for index, existing in enumerate(model.operatorCodes):
        if max(existing.builtinCode, existing.deprecatedBuiltinCode) == code:
            return index
    entry = schema.OperatorCodeT()
    entry.builtinCode = code
    entry.deprecatedBuiltinCode = min(code, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    entry.version = versions.get(code, 1)
    model.operatorCodes.append(entry)
    return len(model.operatorCodes) - 1


def _int8_twin(model, graph, index: int, scale: float, zero_point: int) -> int:
    """A new int8 tensor shaped as tensor `index`, quantised by (scale, zero point); returns its index."""
    from ai_edge_litert import schema_py_generated as schema

    source = graph.tensors[index]
    tensor = schema.TensorT()
    tensor.shape, tensor.shapeSignature = source.shape, source.shapeSignature
    tensor.type = schema.TensorType.INT8
    tensor.name = (source.name or b"") + b"_int8"
    tensor.quantization = schema.QuantizationParametersT()
    tensor.quantization.scale, tensor.quantization.zeroPoint = [float(scale)], [int(zero_point)]
    model.buffers.append(schema.BufferT())
    tensor.buffer = len(model.buffers) - 1
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _operator(opcode: int, inputs: list[int], outputs: list[int]):
    from ai_edge_litert import schema_py_generated as schema

    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode, inputs, outputs
    return op


def float_with_int8_edges(fp32: bytes, int8: bytes) -> bytes:
    """The fp32 graph with the int8 graph's edges: every input and output the int8 graph has as int8 becomes int8
    with its scale and zero point, behind a DEQUANTIZE (inputs) or a QUANTIZE (outputs); every op between stays
    float. The two graphs must be one graph's fp32 and quantised versions (the same signature names)."""
    from ai_edge_litert import schema_py_generated as schema

    from mvos.export.verify import signature_details

    edges, versions = signature_details(int8), _builtin_versions(int8)
    model = unpack(fp32)
    graph = model.subgraphs[0]
    signature = model.signatureDefs[0]
    dequantize = _opcode_index(model, schema.BuiltinOperator.DEQUANTIZE, versions)
    quantize = _opcode_index(model, schema.BuiltinOperator.QUANTIZE, versions)
    first, last = [], []
    for mapping in signature.inputs:
        detail = edges["inputs"][_text(mapping.name)]
        if detail["dtype"] != np.int8:
            continue
        twin = _int8_twin(model, graph, mapping.tensorIndex, *detail["quantization"])
        first.append(_operator(dequantize, [twin], [mapping.tensorIndex]))
        graph.inputs = [twin if i == mapping.tensorIndex else i for i in graph.inputs]
        mapping.tensorIndex = twin
    for mapping in signature.outputs:
        detail = edges["outputs"][_text(mapping.name)]
        if detail["dtype"] != np.int8:
            continue
        twin = _int8_twin(model, graph, mapping.tensorIndex, *detail["quantization"])
        last.append(_operator(quantize, [mapping.tensorIndex], [twin]))
        graph.outputs = [twin if i == mapping.tensorIndex else i for i in graph.outputs]
        mapping.tensorIndex = twin
    graph.operators = first + list(graph.operators) + last
    return pack(model)


def _text(name) -> str:
    return name.decode() if isinstance(name, bytes) else name
