"""Building the manifest of an export (the schema, its validation and reading live in `mvos.runtime.manifest`).

Everything the writer knows goes in: the model's identity, sizes, normalisation, the memory protocol (generated
by `mvos.runtime.memory`), and one `GraphFile` per converted graph with its signature, ops and parity.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from mvos import __version__
from mvos.export.subgraphs import MEANINGS, GraphSpec
from mvos.runtime.errors import MvosError
from mvos.runtime.manifest import GraphFile, Manifest, TensorSpec, graph_path
from mvos.runtime.memory import protocol_description
from mvos.runtime.model import IMAGENET_MEAN, IMAGENET_STD, STRIDE, MobileVOS
from mvos.runtime.settings import DEFAULT


def weights_sha256(model: MobileVOS) -> str:
    """A hash of the weights (names, shapes, dtypes and bytes) that does not depend on how they were stored."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d tensors (BN counters) too
    return digest.hexdigest()


def check_same_model(existing: Manifest, wanted: Manifest, model_dir: Path) -> None:
    """MvosError naming the first difference when `model_dir` holds an export of another model."""
    have, want = existing.identity(), wanted.identity()
    for field, value in have.items():
        if value != want[field]:
            raise MvosError(f"{model_dir} holds an export of another model ({field}: {_short(value)} there, "
                            f"{_short(want[field])} here): pass --overwrite to replace it, or pick another --out")


def _short(value) -> str:
    if isinstance(value, str) and len(value) == 64:
        return value[:12]
    if isinstance(value, list) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    if isinstance(value, dict):
        return "a different config"
    return str(value)


def new_manifest(model: MobileVOS, weights_source: str, size: tuple[int, int], max_objects: int,
                 weights_hash: str, top_k: int | None) -> Manifest:
    config = model.config
    return Manifest(
        variant=model.variant, config=json.loads(json.dumps(config.to_dict())), parameters=model.num_parameters(),
        weights_source=weights_source, weights_sha256=weights_hash, input_size=list(size),
        feature_size=[size[0] // STRIDE, size[1] // STRIDE], stride=STRIDE, key_dim=config.key_dim,
        value_dim=config.value_dim, max_objects=max_objects, top_k=top_k,
        normalisation={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                       "layout": "NCHW float32 RGB, x/255 then (x-mean)/std, resized to fit inside input_size "
                                 "keeping the aspect ratio, zero-padded bottom/right"},
        memory=protocol_description(DEFAULT.mem_every), mvos_version=__version__)


def file_entry(spec: GraphSpec, precision: str, content: bytes, signature: dict, ops: dict) -> GraphFile:
    """The manifest entry of one converted file. `signature`: the interpreter's signature runner details
    ({"inputs": {name: detail}, "outputs": {name: detail}}) — the source of truth for shapes and names."""
    inputs = [_tensor(name, signature["inputs"][name]) for name in spec.inputs]
    outputs = []
    for index, name in enumerate(spec.outputs):
        # Dict outputs keep their keys; tuple outputs come out as output_0..N in order.
        key = name if name in signature["outputs"] else f"output_{index}"
        if key not in signature["outputs"]:
            raise MvosError(f"{spec.key}: converted graph has outputs {sorted(signature['outputs'])}, none for {name!r}")
        outputs.append(_tensor(name, signature["outputs"][key], key))
    return GraphFile(path=graph_path(precision, spec.subgraph, spec.queue_len),
                     sha256=hashlib.sha256(content).hexdigest(), bytes=len(content), precision=precision,
                     subgraph=spec.subgraph, queue_len=spec.queue_len, inputs=inputs, outputs=outputs, ops=ops)


def _tensor(name: str, detail: dict, signature_output: str | None = None) -> TensorSpec:
    dtype = detail["dtype"].__name__
    scale, zero_point = detail.get("quantization", (0.0, 0)) if dtype == "int8" else (None, None)
    return TensorSpec(name, [int(d) for d in detail["shape"]], dtype, MEANINGS[name], signature_output,
                      None if scale is None else float(scale), None if zero_point is None else int(zero_point))
