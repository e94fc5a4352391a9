"""`manifest.json`: what an export folder holds, for the TFLite runtime, the Android app and the device
benchmark (they read shapes and names from here instead of hard-coding them).

Layout (format_version 1):
    {"format": "mobilevos-tflite", "format_version": 1, "mvos_version", "variant", "config", "parameters",
     "weights": {"source", "sha256"}, "input_size": [H, W], "feature_size": [h, w], "stride", "key_dim",
     "value_dim", "max_objects", "normalisation": {"mean", "std", "layout"}, "memory": {...how to update...},
     "queue_lengths": [...], "precisions": [...],
     "models": {PRECISION: {"key_encoder": FILE, "value_encoder": FILE, "decoders": {"T": FILE}}},
     "verification": {"end_to_end": [{"precision", "queue_len", "mean_iou", "max_prob_diff", "tie_fraction",
                                      "frames", "objects"}]},
     "failures": [{"precision", "subgraph", "queue_len", "error"}]}
    FILE = {"path", "sha256", "bytes", "precision", "subgraph", "queue_len", "signature",
            "inputs": [{"name", "shape", "dtype", "meaning"}],
            "outputs": [{"name", "signature_output", "shape", "dtype", "meaning"}],
            "ops": {"counts", "gpu_fallback", "flex"}, "parity": {"max_abs_diff": {..}, "max_rel_diff": {..}}}
Reading and checking lives in `mvos.runtime.tflite` (the runtime may not import this package).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from mvos import __version__
from mvos.export.subgraphs import MEANINGS, GraphSpec
from mvos.runtime.errors import MvosError
from mvos.runtime.io import atomic_path
from mvos.runtime.memory import MAX_QUEUE_LEN
from mvos.runtime.model import IMAGENET_MEAN, IMAGENET_STD, STRIDE, MobileVOS
from mvos.runtime.tflite import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, PRECISIONS, manifest_entry

# The fields that make two exports the same model: a folder is only ever extended with pieces of these.
IDENTITY = ("variant", "config", "weights_sha256", "input_size", "max_objects")

MEMORY_PROTOCOL = {
    "slots": "T = the decoder's queue length; mem_keys T,Ck,h,w and mem_values T,N*Cv,h,w",
    "first_frame": "write its key and value into every slot (slot 0 keeps it for the whole video)",
    "later_frames": "write into slot 1 + (writes % (T-1)), round robin over 1..T-1; T=1 never writes again",
    "value": "run value_encoder once per object (mask = its aggregated probability, others = the rest, "
             "clamped to 1) and stack the objects' values on channels",
    "queue_length_range": [1, MAX_QUEUE_LEN],
}


def weights_sha256(model: MobileVOS) -> str:
    """A hash of the weights (names, shapes, dtypes and bytes) that does not depend on how they were stored."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d tensors (BN counters) too
    return digest.hexdigest()


def identity(manifest: dict) -> dict:
    return {"variant": manifest["variant"], "config": manifest["config"],
            "weights_sha256": manifest["weights"]["sha256"], "input_size": list(manifest["input_size"]),
            "max_objects": manifest["max_objects"]}


def check_same_model(existing: dict, wanted: dict, model_dir: Path) -> None:
    """MvosError naming the first difference when `model_dir` holds an export of another model."""
    have = identity(existing)
    for field in IDENTITY:
        if have[field] != wanted[field]:
            what = {"weights_sha256": "weights", "input_size": "input size", "max_objects": "max objects"}.get(field, field)
            raise MvosError(f"{model_dir} holds an export of another model ({what}: {_short(have[field])} there, "
                            f"{_short(wanted[field])} here); pick another --out or delete that folder")


def _short(value) -> str:
    if isinstance(value, str) and len(value) == 64:
        return value[:12]
    if isinstance(value, list) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    if isinstance(value, dict):
        return "a different config"
    return str(value)


def new_manifest(model: MobileVOS, weights_source: str, size: tuple[int, int], max_objects: int,
                 weights_hash: str) -> dict:
    config = model.config
    return {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "mvos_version": __version__,
        "variant": model.variant, "config": json.loads(json.dumps(config.to_dict())),
        "parameters": model.num_parameters(),
        "weights": {"source": weights_source, "sha256": weights_hash},
        "input_size": list(size), "feature_size": [size[0] // STRIDE, size[1] // STRIDE], "stride": STRIDE,
        "key_dim": config.key_dim, "value_dim": config.value_dim, "max_objects": max_objects,
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                          "layout": "NCHW float32 RGB, x/255 then (x-mean)/std, resized to fit inside "
                                    "input_size keeping the aspect ratio, zero-padded bottom/right"},
        "memory": MEMORY_PROTOCOL,
        "queue_lengths": [], "precisions": [], "models": {},
        "verification": {"end_to_end": []}, "failures": [],
    }


def file_entry(spec: GraphSpec, precision: str, path: str, content: bytes, signature: dict, ops: dict) -> dict:
    """The manifest entry of one converted file. `signature`: the interpreter's signature runner details
    ({"inputs": {name: detail}, "outputs": {name: detail}}) — the source of truth for shapes and names."""
    inputs = [_tensor(name, signature["inputs"][name]) for name in spec.inputs]
    outputs = []
    signature_outputs = sorted(signature["outputs"])
    for index, name in enumerate(spec.outputs):
        # Dict outputs keep their keys; tuple outputs come out as output_0..N in order.
        key = name if name in signature["outputs"] else f"output_{index}"
        if key not in signature["outputs"]:
            raise MvosError(f"{spec.key}: converted graph has outputs {signature_outputs}, none for {name!r}")
        outputs.append({**_tensor(name, signature["outputs"][key]), "signature_output": key})
    return {"path": path, "sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content),
            "precision": precision, "subgraph": spec.subgraph, "queue_len": spec.queue_len,
            "signature": "serving_default", "inputs": inputs, "outputs": outputs, "ops": ops, "parity": {}}


def _tensor(name: str, detail: dict) -> dict:
    return {"name": name, "shape": [int(d) for d in detail["shape"]], "dtype": detail["dtype"].__name__,
            "meaning": MEANINGS[name]}


def put_entry(manifest: dict, entry: dict) -> None:
    files = manifest["models"].setdefault(entry["precision"], {})
    if entry["subgraph"] == "decoder":
        files.setdefault("decoders", {})[str(entry["queue_len"])] = entry
    else:
        files[entry["subgraph"]] = entry
    refresh_summary(manifest)


def refresh_summary(manifest: dict) -> None:
    """Top-level `precisions` / `queue_lengths`: only complete sets (both encoders and a decoder) count."""
    complete = {}
    for precision in PRECISIONS:
        if all(manifest_entry(manifest, precision, s) for s in ("key_encoder", "value_encoder")):
            lens = sorted(int(t) for t in manifest["models"].get(precision, {}).get("decoders", {}))
            if lens:
                complete[precision] = lens
    manifest["precisions"] = list(complete)
    manifest["queue_lengths"] = sorted({t for lens in complete.values() for t in lens})
    manifest["models"] = {p: manifest["models"][p] for p in PRECISIONS if p in manifest["models"]}


def write_manifest(folder: Path, manifest: dict) -> None:
    with atomic_path(folder / MANIFEST_NAME) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
