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
from mvos.runtime.manifest import (ENCODERS, MANIFEST_NAME, PRODUCERS, GraphFile, Manifest, dequantise, quantise,
                                   requantisation)
from mvos.runtime.memory import check_queue_len
from mvos.runtime.model import KeyFeatures, QueryFeatures


# -------------------------------------------------------------------------------------------------- runner


class SubgraphRunner:
    """One .tflite file: named inputs in, outputs by meaning out, without allocating per call.

    Inputs are written into the interpreter's own buffers; outputs are copied (dequantised, for int8 graphs,
    unless `int8_outputs`) into this runner's buffers, allocated once and overwritten by its next call: callers
    keep what they need before running the same graph again. (Views of the interpreter's buffers cannot be
    handed out: it refuses to run while one is referenced.)

    An int8 input takes float arrays (quantised here) or int8 steps: of the quantisation `int8_sources` gives
    for that input (another graph's output), mapped through a 256-entry table or copied where the two agree,
    else of the input's own."""

    def __init__(self, model_dir: Path, entry: GraphFile, threads: int | None, check_hash: bool = True,
                 int8_outputs: bool = False, int8_sources: dict[str, tuple[float, int]] | None = None,
                 remake: str = "mvos export"):
        from ai_edge_litert.interpreter import Interpreter

        self.path = model_dir / entry.path
        problem = entry.file_problem(model_dir, check_hash)
        if problem:
            raise MvosError(f"{self.path} {problem}: make it again with `{remake}`")
        self.entry = entry
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
            self.interpreter.allocate_tensors()
            runner = self.interpreter.get_signature_runner(entry.signature)
        except (ValueError, RuntimeError) as exc:
            raise MvosError(f"cannot load {self.path}: {str(exc).splitlines()[0]}") from None
        details_in, details_out = runner.get_input_details(), runner.get_output_details()
        # litert-torch names outputs after a returned dict's keys, or output_0..N for tuples: the manifest says.
        self.inputs = {spec.name: (spec, details_in[spec.name]["index"]) for spec in entry.inputs}
        self.outputs = {spec.name: (spec, details_out[spec.signature_output]["index"]) for spec in entry.outputs}
        self.scratch: dict[str, np.ndarray] = {}  # float32 for int8 inputs given floats, made on first use
        self.tables = {name: requantisation(source, (self.inputs[name][0].scale, self.inputs[name][0].zero_point))
                       for name, source in (int8_sources or {}).items() if self.inputs[name][0].dtype == "int8"}
        self.results = {name: np.empty(spec.shape, np.int8 if int8_outputs and spec.dtype == "int8" else np.float32)
                        for name, (spec, _) in self.outputs.items()}

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        for name, array in inputs.items():
            spec, index = self.inputs[name]
            if tuple(array.shape) != tuple(spec.shape):
                raise MvosError(f"{self.path.name}: input {name} has shape {tuple(array.shape)}, "
                                f"expected {tuple(spec.shape)}")
            if array.dtype == np.int8 and spec.dtype != "int8":  # steps of some grid, not values: a caller's bug
                raise MvosError(f"{self.path.name}: input {name} takes {spec.dtype} values, got int8 steps")
            target = self.interpreter.tensor(index)()
            if spec.dtype != "int8":
                target[...] = array
            elif array.dtype != np.int8:  # most int8 inputs get steps from another graph and never need this
                scratch = self.scratch.get(name)
                if scratch is None:
                    scratch = self.scratch[name] = np.empty(spec.shape, np.float32)
                target[...] = quantise(array, spec.scale, spec.zero_point, out=scratch)
            elif self.tables.get(name) is None:  # steps of this input's own quantisation
                target[...] = array
            else:
                np.take(self.tables[name], array.view(np.uint8), out=target)
            del target  # no view of the interpreter's buffers may outlive this point: it refuses to run
        self.interpreter.invoke()
        for name, (spec, index) in self.outputs.items():
            view, result = self.interpreter.tensor(index)(), self.results[name]
            if spec.dtype == "int8" and result.dtype != np.int8:
                dequantise(view, spec.scale, spec.zero_point, out=result)
            else:
                np.copyto(result, view)
            del view
        return self.results


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """Floats as float32; int8 (a full-integer graph's steps) as they are."""
    x = x.detach()
    return (x.to(torch.float32) if x.is_floating_point() else x).cpu().numpy()


def nhwc_numpy(x: torch.Tensor) -> np.ndarray:
    """An N,C,H,W tensor as the N,H,W,C array a graph takes: no copy when it is channels-last in memory (the
    engine keeps frames, features and the memory so for this backend). Floats as float32; int8 (a full-integer
    graph's steps: frames the engine quantised, features and memory from the graphs) as they are."""
    return to_numpy(x.permute(0, 2, 3, 1))


def nchw_view(array: np.ndarray) -> torch.Tensor:
    """A graph's N,H,W,C output as the engine's N,C,H,W tensor, without copying."""
    return torch.from_numpy(array).permute(0, 3, 1, 2)


def decoder_feeds(query: QueryFeatures, memory_keys: torch.Tensor, memory_values: torch.Tensor, num_objects: int,
                  max_objects: int, value_dim: int) -> list[tuple[dict[str, np.ndarray], int]]:
    """The decoder graph's inputs for a group of objects, and how many of each call's outputs are real. The
    graph takes exactly `max_objects` (N) objects: a group of fewer is padded with zero values (their outputs
    are dropped), a larger one runs in chunks of N."""
    # Keys are channels first (the frame's 1,Ck,h,w and T,Ck,h,w slots), everything else NHWC.
    fixed = {"key": to_numpy(query.key), "value": nhwc_numpy(query.value), "f8": nhwc_numpy(query.f8),
             "f4": nhwc_numpy(query.f4), "mem_keys": to_numpy(memory_keys)}
    values = nhwc_numpy(memory_values)  # T,h,w,n*Cv
    if num_objects == max_objects:
        return [({**fixed, "mem_values": values}, num_objects)]
    feeds = []
    for start in range(0, num_objects, max_objects):
        count = min(max_objects, num_objects - start)
        chunk = values[..., start * value_dim:(start + count) * value_dim]
        if count < max_objects:
            # Objects are decoded independently: what fills the padding only affects outputs that are dropped.
            pad = np.zeros((*chunk.shape[:3], (max_objects - count) * value_dim), chunk.dtype)
            chunk = np.concatenate([chunk, pad], axis=3)
        feeds.append(({**fixed, "mem_values": np.ascontiguousarray(chunk)}, count))
    return feeds


def key_features(out: dict[str, np.ndarray]) -> KeyFeatures:
    """A key encoder's outputs (key channels first, the rest NHWC) as the engine's NCHW tensors, without copies."""
    return KeyFeatures(torch.from_numpy(out["key"]), *(nchw_view(out[name]) for name in KeyFeatures._fields[1:]))


def encode_values(value_encoder: SubgraphRunner, f16: np.ndarray, masks: torch.Tensor,
                  others: torch.Tensor) -> np.ndarray:
    """masks, others: N,1,H,W -> values N,h,w,Cv. The exported value encoder takes one object (batch 1) and the
    frame's f16 (MobileVOS's value encoder does not read the frame itself)."""
    n = masks.shape[0]
    values = []
    for i in range(n):
        out = value_encoder(f16=f16, mask=nhwc_numpy(masks[i:i + 1]), others=nhwc_numpy(others[i:i + 1]))
        # A view of the graph's output buffer; the next call overwrites it, so several objects keep copies.
        values.append(out["value"] if n == 1 else out["value"].copy())
        del out
    return values[0] if n == 1 else np.concatenate(values, axis=0)


class MemoryEncoders:
    """Encoders of a more exact precision, run on the frames the engine memorises: every later frame reads the
    memory, so its error weighs on them all (int8 reading a memory the fp32 encoders made follows fp32 far more
    closely, docs/benchmarks.md). Their outputs are put on the grids of the backend's own encoders' outputs, so
    the memory and the decoder get the same kind of tensor on every frame; f16 stays as computed, for the
    memory value encoder."""

    def __init__(self, runners: dict[str, SubgraphRunner], own: dict[str, GraphFile]):
        self.key_encoder, self.value_encoder = runners["key_encoder"], runners["value_encoder"]
        self.frame_quantisation = self.key_encoder.inputs["frame"][0].quantisation
        grids = {graph: {spec.name: spec.quantisation for spec in entry.outputs if spec.quantisation}
                 for graph, entry in own.items()}
        self.key_grids, self.value_grid = grids["key_encoder"], grids["value_encoder"].get("value")
        self.buffers: dict[tuple, np.ndarray] = {}  # float scratch and int8 steps by (output, shape), made once

    def encode_key(self, frame: torch.Tensor) -> KeyFeatures:
        out = self.key_encoder(frame=nhwc_numpy(frame))  # prepared for this key encoder (`frame_quantisation`)
        return key_features({name: array if name == "f16" else self._on_grid(name, array, self.key_grids.get(name))
                             for name, array in out.items()})

    def encode_value(self, features: KeyFeatures, masks: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        # f16 as the memory key encoder left it: the engine said it memorises this frame (`encode_key`)
        values = encode_values(self.value_encoder, nhwc_numpy(features.f16), masks, others)
        return nchw_view(self._on_grid("value", values, self.value_grid))

    def _on_grid(self, name: str, array: np.ndarray, grid: tuple[float, int] | None) -> np.ndarray:
        if grid is None:  # the own graph's output is float too
            return array
        steps = self._buffer((name, "steps"), array.shape, np.int8)
        np.copyto(steps, quantise(array, *grid, out=self._buffer(name, array.shape, np.float32)), casting="unsafe")
        return steps

    def _buffer(self, name, shape: tuple, dtype) -> np.ndarray:
        buffer = self.buffers.get((name, shape))
        if buffer is None:
            buffer = self.buffers[(name, shape)] = np.empty(shape, dtype)
        return buffer


# ------------------------------------------------------------------------------------------------- backend


class TFLiteBackend:
    """`Backend` over an export folder: key encoder, value encoder (one object a call) and the decoder of
    this queue length, at the fixed size of the export."""

    name = "tflite"
    channels_last = True  # the graphs take image-like tensors NHWC: the engine prepares frames so
    # The engine's torch work between graphs runs on one thread: torch's OpenMP workers spin-wait after each
    # parallel op, on the cores XNNPACK's threads need next (int8 frame 67.6 -> 52.9 ms, fp32 127 -> 117 ms here).
    host_threads = 1

    def __init__(self, model_dir: str | Path, queue_len: int, threads: int | None = None,
                 precision: str | None = None, check_hash: bool = True, memory_precision: str | None = None):
        """memory_precision: which exported encoders run on the frames the engine memorises (default: `precision`);
        their outputs go onto the grids of `precision`'s own, so the memory and the decoder take them as theirs."""
        self.model_dir = Path(model_dir)
        check_queue_len(queue_len)
        self.manifest = Manifest.read(self.model_dir)
        available = self.manifest.precisions()
        if not available:
            raise MvosError(f"{self.model_dir}/{MANIFEST_NAME} lists no complete export")
        precision = precision or available[0]  # the most accurate one exported
        remake = self.manifest.export_command(self.model_dir, precision, queue_len)  # what each error below names
        if precision not in available:
            raise MvosError(f"{self.model_dir} has no {precision} export (exported: {', '.join(available)}); add it "
                            f"with `{remake}`")
        decoder = self.manifest.entry(precision, "decoder", queue_len)
        if decoder is None:
            have = ", ".join(map(str, self.manifest.queue_lens(precision))) or "none"
            raise MvosError(f"{self.model_dir} has no {precision} decoder for queue length {queue_len} "
                            f"(exported: {have}); add it with `{remake}`")
        self.precision = precision
        self.queue_len = queue_len
        # Unset, as many threads as torch takes (the machine's cores): TFLite's own default is one thread, which
        # ran `mvos segment --backend tflite` at 93 ms per int8 frame against 61 ms on both cores here.
        self.threads = threads if threads is not None else torch.get_num_threads()
        self.fixed_size = tuple(self.manifest.input_size)
        self.max_objects = self.manifest.max_objects
        self.value_dim = self.manifest.value_dim
        self.top_k = self.manifest.top_k
        entries = {"key_encoder": self.manifest.entry(precision, "key_encoder"),
                   "value_encoder": self.manifest.entry(precision, "value_encoder"), "decoder": decoder}
        # A full-integer export's features and memory stay int8 from the graph that makes them to the one that
        # takes them (the engine only stores and hands them back): one int8 copy each instead of dequantising
        # 1.2 M values after the key encoder and quantising 1.5 M before the decoder every frame.
        made = {(graph, spec.name): spec.quantisation
                for graph, entry in entries.items() for spec in entry.outputs if spec.quantisation}
        self.memory_precision = memory_precision or precision
        runners = {}
        for graph, entry in entries.items():
            if graph == "value_encoder" and self.memory_precision != precision:
                continue  # only memorised frames are value-encoded: the memory's value encoder does them all
            sources = {name: made[source] for (taker, name), source in PRODUCERS.items()
                       if taker == graph and source in made}
            runners[graph] = SubgraphRunner(self.model_dir, entry, self.threads, check_hash,
                                            int8_outputs=graph != "decoder", int8_sources=sources,
                                            remake=remake)
        self.key_encoder, self.value_encoder, self.decoder = (runners.get(graph) for graph in entries)
        self.own_frame_quantisation = self.key_encoder.inputs["frame"][0].quantisation
        self.memory_encoders = None
        if self.memory_precision != precision:
            remake = self.manifest.export_command(self.model_dir, self.memory_precision, queue_len)
            encoders = {}
            for graph in ENCODERS:
                entry = self.manifest.entry(self.memory_precision, graph)
                if entry is None:
                    raise MvosError(f"{self.model_dir} has no {self.memory_precision} {graph} for the memory "
                                    f"(exported: {', '.join(available)}); add it with `{remake}`")
                encoders[graph] = SubgraphRunner(self.model_dir, entry, self.threads, check_hash, remake=remake)
            self.memory_encoders = MemoryEncoders(encoders, {g: entries[g] for g in ENCODERS})

    def frame_quantisation(self, memorise: bool = False) -> tuple[float, int] | None:
        if memorise and self.memory_encoders is not None:
            return self.memory_encoders.frame_quantisation
        return self.own_frame_quantisation

    def encode_key(self, frame: torch.Tensor, memorise: bool = False) -> KeyFeatures:
        if memorise and self.memory_encoders is not None:
            return self.memory_encoders.encode_key(frame)
        return key_features(self.key_encoder(frame=nhwc_numpy(frame)))  # frame: 1,3,H,W (channels-last in memory)

    def encode_value(self, frame: torch.Tensor, features: KeyFeatures, masks: torch.Tensor,
                     others: torch.Tensor) -> torch.Tensor:
        """masks, others: N,1,H,W -> N,Cv,h,w. The exported value encoder takes one object (batch 1) and the
        frame's f16 (MobileVOS's value encoder does not read the frame itself)."""
        if self.memory_encoders is not None:  # the engine only encodes the values of frames it memorises
            return self.memory_encoders.encode_value(features, masks, others)
        return nchw_view(encode_values(self.value_encoder, nhwc_numpy(features.f16), masks, others))

    def decode(self, query: QueryFeatures, memory_keys: torch.Tensor, memory_values: torch.Tensor,
               num_objects: int) -> torch.Tensor:
        """memory_keys T,Ck,h,w ; memory_values T,n*Cv,h,w -> logits n,1,H,W."""
        feeds = decoder_feeds(query, memory_keys, memory_values, num_objects, self.max_objects, self.value_dim)
        logits = []
        for feed, count in feeds:
            out = self.decoder(**feed)
            logits.append(out["logits"][:count] if len(feeds) == 1 else out["logits"][:count].copy())  # n,H,W,1
            del out
        return nchw_view(logits[0] if len(logits) == 1 else np.concatenate(logits, axis=0))

    def describe(self) -> dict:
        m = self.manifest
        return {"backend": self.name, "model_dir": str(self.model_dir), "precision": self.precision,
                "variant": m.variant, "input_size": m.input_size, "max_objects": self.max_objects, "top_k": m.top_k,
                "parameters": m.parameters, "weights_sha256": m.weights_sha256, "threads": self.threads,
                "memory_precision": self.memory_precision}
