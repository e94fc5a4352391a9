"""The TFLite backend: runs the subgraphs `mvos export` wrote, through ai-edge-litert, for the shared `Segmenter`.

Only the three networks run here; memory, aggregation and resizing stay in `mvos.runtime.inference`, so the
TFLite path and the PyTorch path share every line of engine logic. Tensors are converted numpy<->torch at
this boundary only.

Shapes, names and files come from the export's manifest (`mvos.runtime.manifest`); this module imports nothing
but `mvos.runtime` and `ai_edge_litert`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mvos.runtime.errors import MvosError
from mvos.runtime.io import file_sha256
from mvos.runtime.manifest import MANIFEST_NAME, GraphFile, Manifest
from mvos.runtime.memory import check_queue_len
from mvos.runtime.model import KeyFeatures, QueryFeatures


# -------------------------------------------------------------------------------------------------- runner


class SubgraphRunner:
    """One .tflite file: named numpy inputs in, outputs renamed to their meaning by the manifest entry."""

    def __init__(self, model_dir: Path, entry: GraphFile, threads: int | None, check_hash: bool = True):
        from ai_edge_litert.interpreter import Interpreter

        self.path = model_dir / entry.path
        if not self.path.is_file():
            raise MvosError(f"{self.path} is listed in the manifest but missing (re-run `mvos export`)")
        if check_hash and file_sha256(self.path) != entry.sha256:
            raise MvosError(f"{self.path} does not match the sha256 in the manifest (a partial copy?)")
        self.entry = entry
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
            self.runner = self.interpreter.get_signature_runner(entry.signature)
        except (ValueError, RuntimeError) as exc:
            raise MvosError(f"cannot load {self.path}: {str(exc).splitlines()[0]}") from None
        self.inputs = {spec.name: spec for spec in entry.inputs}
        # litert-torch names outputs after a returned dict's keys, or output_0..N for tuples: the manifest says.
        self.outputs = entry.output_names()

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        feed = {}
        for name, array in inputs.items():
            expected = tuple(self.inputs[name].shape)
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

    def __init__(self, model_dir: str | Path, queue_len: int, threads: int | None = None,
                 precision: str | None = None, check_hash: bool = True):
        self.model_dir = Path(model_dir)
        check_queue_len(queue_len)
        self.manifest = Manifest.read(self.model_dir)
        available = self.manifest.precisions()
        if not available:
            raise MvosError(f"{self.model_dir}/{MANIFEST_NAME} lists no complete export")
        precision = precision or available[0]  # the most accurate one exported
        if precision not in available:
            raise MvosError(f"{self.model_dir} has no {precision} export (exported: {', '.join(available)})")
        decoder = self.manifest.entry(precision, "decoder", queue_len)
        if decoder is None:
            have = ", ".join(map(str, self.manifest.queue_lens(precision))) or "none"
            raise MvosError(f"{self.model_dir} has no {precision} decoder for queue length {queue_len} "
                            f"(exported: {have}); add it with `mvos export --queue-len {queue_len} --out {self.model_dir}`")
        self.precision = precision
        self.queue_len = queue_len
        self.threads = threads
        self.fixed_size = tuple(self.manifest.input_size)
        self.max_objects = self.manifest.max_objects
        self.value_dim = self.manifest.value_dim
        self.top_k = self.manifest.top_k
        self.key_encoder = SubgraphRunner(self.model_dir, self.manifest.entry(precision, "key_encoder"), threads,
                                          check_hash)
        self.value_encoder = SubgraphRunner(self.model_dir, self.manifest.entry(precision, "value_encoder"), threads,
                                            check_hash)
        self.decoder = SubgraphRunner(self.model_dir, decoder, threads, check_hash)

    def encode_key(self, frame: torch.Tensor) -> KeyFeatures:
        out = self.key_encoder(frame=_numpy(frame))  # frame: 1,3,H,W
        return KeyFeatures(*(torch.from_numpy(out[name]) for name in KeyFeatures._fields))

    def encode_value(self, frame: torch.Tensor, features: KeyFeatures, masks: torch.Tensor,
                     others: torch.Tensor) -> torch.Tensor:
        """masks, others: N,1,H,W -> N,Cv,h,w. The exported value encoder takes one object (batch 1) and the
        frame's f16 (MobileVOS's value encoder does not read the frame itself)."""
        f16 = _numpy(features.f16)
        values = [self.value_encoder(f16=f16, mask=_numpy(masks[i:i + 1]), others=_numpy(others[i:i + 1]))["value"]
                  for i in range(masks.shape[0])]
        return torch.from_numpy(np.concatenate(values, axis=0))

    def decode(self, query: QueryFeatures, memory_keys: torch.Tensor, memory_values: torch.Tensor,
               num_objects: int) -> torch.Tensor:
        """memory_keys T,Ck,h,w ; memory_values T,n*Cv,h,w -> logits n,1,H,W.

        The decoder graph takes exactly max_objects (N) objects: a group of fewer is padded with zero values
        (their outputs are dropped), a larger one runs in chunks of N.
        """
        fixed = {"key": _numpy(query.key), "value": _numpy(query.value), "f8": _numpy(query.f8),
                 "f4": _numpy(query.f4), "mem_keys": _numpy(memory_keys)}
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
                "variant": m.variant, "input_size": m.input_size, "max_objects": self.max_objects, "top_k": m.top_k,
                "parameters": m.parameters, "weights_sha256": m.weights_sha256, "threads": self.threads}
