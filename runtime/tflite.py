"""The TFLite backend: runs the subgraphs `mvos export` wrote, through ai-edge-litert, for the shared `Segmenter`.

Only the three networks run here; memory, aggregation and resizing stay in `mvos.runtime.inference`, so the
TFLite path and the PyTorch path share every line of engine logic. Tensors are converted numpy<->torch at
this boundary only.

The manifest (`manifest.json` beside the files) is the contract with every other consumer (the Android app,
the device benchmark): this module also owns reading and checking it, and `mvos.runtime.tflite` may import
nothing but `mvos.runtime` and `ai_edge_litert`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from mvos.runtime.errors import MvosError
from mvos.runtime.memory import MAX_QUEUE_LEN
from mvos.runtime.model import KeyFeatures

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "mobilevos-tflite"
MANIFEST_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
SUBGRAPHS = ("key_encoder", "value_encoder", "decoder")


# ------------------------------------------------------------------------------------------------ manifest


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(model_dir: str | Path) -> dict:
    """The parsed manifest of an export folder; MvosError when it is missing or not ours."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        raise MvosError(f"{model_dir} has no {MANIFEST_NAME}: not a folder written by `mvos export`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MvosError(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise MvosError(f"{path} is not a mobilevos TFLite manifest")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise MvosError(f"{path} has manifest format version {manifest.get('format_version')}; this mobilevos "
                        f"reads version {MANIFEST_VERSION} (re-export with `mvos export`)")
    return manifest


def manifest_entry(manifest: dict, precision: str, subgraph: str, queue_len: int | None = None) -> dict | None:
    """The file entry of one subgraph (decoders by queue length), or None when it was not exported."""
    files = manifest.get("models", {}).get(precision)
    if files is None:
        return None
    if subgraph == "decoder":
        return files.get("decoders", {}).get(str(queue_len))
    return files.get(subgraph)


def exported_queue_lens(manifest: dict, precision: str) -> list[int]:
    return sorted(int(t) for t in manifest.get("models", {}).get(precision, {}).get("decoders", {}))


# -------------------------------------------------------------------------------------------------- runner


class SubgraphRunner:
    """One .tflite file: named numpy inputs in, outputs renamed to their meaning by the manifest entry."""

    def __init__(self, model_dir: Path, entry: dict, threads: int | None, check_hash: bool = True):
        from ai_edge_litert.interpreter import Interpreter

        self.path = model_dir / entry["path"]
        if not self.path.is_file():
            raise MvosError(f"{self.path} is listed in the manifest but missing (re-run `mvos export`)")
        if check_hash and file_sha256(self.path) != entry["sha256"]:
            raise MvosError(f"{self.path} does not match the sha256 in the manifest (a partial copy?)")
        self.entry = entry
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
            self.runner = self.interpreter.get_signature_runner(entry.get("signature", "serving_default"))
        except (ValueError, RuntimeError) as exc:
            raise MvosError(f"cannot load {self.path}: {str(exc).splitlines()[0]}") from None
        self.inputs = {spec["name"]: spec for spec in entry["inputs"]}
        # litert-torch names outputs after a returned dict's keys, or output_0..N for tuples: the manifest says.
        self.outputs = {spec["signature_output"]: spec["name"] for spec in entry["outputs"]}

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        feed = {}
        for name, array in inputs.items():
            expected = tuple(self.inputs[name]["shape"])
            if tuple(array.shape) != expected:
                raise MvosError(f"{self.path.name}: input {name} has shape {tuple(array.shape)}, expected {expected}")
            feed[name] = np.ascontiguousarray(array, dtype=np.float32)
        raw = self.runner(**feed)
        return {self.outputs[key]: value for key, value in raw.items()}


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float32).cpu().numpy()


# ------------------------------------------------------------------------------------------------- backend


class TFLiteBackend:
    """`Backend` over an export folder: key encoder, value encoder (one object a call) and the decoder of
    this queue length, at the fixed size of the export."""

    name = "tflite"

    def __init__(self, model_dir: str | Path, queue_len: int = 2, threads: int | None = None,
                 precision: str | None = None, check_hash: bool = True):
        self.model_dir = Path(model_dir)
        if not 1 <= queue_len <= MAX_QUEUE_LEN:
            raise MvosError(f"queue length must be in 1..{MAX_QUEUE_LEN}, got {queue_len}")
        self.manifest = load_manifest(self.model_dir)
        available = [p for p in PRECISIONS if p in self.manifest.get("models", {})]
        if not available:
            raise MvosError(f"{self.model_dir}/{MANIFEST_NAME} lists no exported models")
        if precision is None:
            precision = available[0]  # the most accurate one exported
        if precision not in available:
            raise MvosError(f"{self.model_dir} has no {precision} export (exported: {', '.join(available)})")
        decoder = manifest_entry(self.manifest, precision, "decoder", queue_len)
        if decoder is None:
            have = ", ".join(map(str, exported_queue_lens(self.manifest, precision))) or "none"
            raise MvosError(f"{self.model_dir} has no {precision} decoder for queue length {queue_len} "
                            f"(exported: {have}); add it with `mvos export --queue-len {queue_len} --out {self.model_dir}`")
        self.precision = precision
        self.queue_len = queue_len
        self.threads = threads
        self.fixed_size = tuple(self.manifest["input_size"])
        self.max_objects = int(self.manifest["max_objects"])
        self.value_dim = int(self.manifest["value_dim"])
        self.key_encoder = SubgraphRunner(self.model_dir, manifest_entry(self.manifest, precision, "key_encoder"),
                                          threads, check_hash)
        self.value_encoder = SubgraphRunner(self.model_dir, manifest_entry(self.manifest, precision, "value_encoder"),
                                            threads, check_hash)
        self.decoder = SubgraphRunner(self.model_dir, decoder, threads, check_hash)

    def encode_key(self, frame: torch.Tensor) -> KeyFeatures:
        out = self.key_encoder(frame=_numpy(frame))  # frame: 1,3,H,W
        return KeyFeatures(*(torch.from_numpy(out[name]) for name in KeyFeatures._fields))

    def encode_value(self, features: KeyFeatures, masks: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        """masks, others: N,1,H,W -> N,Cv,h,w. The exported value encoder takes one object (batch 1)."""
        f16 = _numpy(features.f16)
        values = [self.value_encoder(f16=f16, mask=_numpy(masks[i:i + 1]), others=_numpy(others[i:i + 1]))["value"]
                  for i in range(masks.shape[0])]
        return torch.from_numpy(np.concatenate(values, axis=0))

    def decode(self, features: KeyFeatures, memory_keys: torch.Tensor, memory_values: torch.Tensor,
               num_objects: int) -> torch.Tensor:
        """memory_keys T,Ck,h,w ; memory_values T,n*Cv,h,w -> logits n,1,H,W.

        The decoder graph takes exactly max_objects (N) objects: a group of fewer is padded with zero values
        (their outputs are dropped), a larger one runs in chunks of N.
        """
        fixed = {"key": _numpy(features.key), "value": _numpy(features.value), "f8": _numpy(features.f8),
                 "f4": _numpy(features.f4), "mem_keys": _numpy(memory_keys)}
        values = _numpy(memory_values)  # T,n*Cv,h,w
        cv, n_max = self.value_dim, self.max_objects
        logits = []
        for start in range(0, num_objects, n_max):
            count = min(n_max, num_objects - start)
            chunk = values[:, start * cv:(start + count) * cv]
            if count < n_max:
                pad = np.zeros((chunk.shape[0], (n_max - count) * cv, *chunk.shape[2:]), np.float32)
                chunk = np.concatenate([chunk, pad], axis=1)
            logits.append(self.decoder(**fixed, mem_values=chunk)["logits"][:count])
        return torch.from_numpy(np.concatenate(logits, axis=0))

    def describe(self) -> dict:
        m = self.manifest
        return {"backend": self.name, "model_dir": str(self.model_dir), "precision": self.precision,
                "variant": m.get("variant"), "input_size": m.get("input_size"), "max_objects": self.max_objects,
                "parameters": m.get("parameters", 0), "weights_sha256": m.get("weights", {}).get("sha256"),
                "threads": self.threads}
