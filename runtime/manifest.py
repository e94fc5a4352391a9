"""`manifest.json`, the contract of an export folder, as one typed schema: `mvos export` writes it, and the TFLite
runtime, the device benchmark, the CLIs and the Android core read it (shapes, names and the memory protocol
come from here, never hard-coded). `Manifest.from_json` is the one validation.

format_version 2:
    {"format": "mobilevos-tflite", "format_version": 2, "mvos_version", "variant", "config", "parameters",
     "weights": {"source", "sha256"}, "input_size": [H, W], "feature_size": [h, w], "stride", "key_dim",
     "value_dim", "max_objects", "top_k", "normalisation": {"mean", "std", "layout"},
     "memory": runtime.memory.protocol_description(),
     "precisions": [...], "queue_lengths": [...],            (derived: complete sets only)
     "files": [GraphFile...], "end_to_end": [EndToEndCheck...], "failures": [ConversionFailure...]}
    EndToEndCheck = {"precision", "queue_len", "mean_iou", "max_prob_diff", "tie_fraction", "frames", "objects",
                     "clip", "one_step_iou", "memory_precision" (null: the memory made by `precision`'s encoders),
                     "one_step_band_flips"}
    GraphFile = {"path", "sha256", "bytes", "precision", "subgraph", "queue_len", "signature",
                 "inputs": [TensorSpec], "outputs": [TensorSpec], "ops": {...}, "parity": {...}}
    TensorSpec = {"name", "shape", "dtype", "meaning", "signature_output" (outputs only)}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvos.runtime.errors import MvosError
from mvos.runtime.memory import check_queue_len
from mvos.runtime.settings import PRECISIONS, engine_label

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "mobilevos-tflite"
MANIFEST_VERSION = 2
SUBGRAPHS = ("key_encoder", "value_encoder", "decoder")  # the three graphs a phone runs, in frame order
ENCODERS = SUBGRAPHS[:2]
# Where each graph input that another graph makes comes from: (graph, input) -> (graph, output). The memory's
# keys are key encoder keys and its values value encoder values (`mvos.runtime.memory`). An int8 export gives
# each such input its producer's quantisation, so int8 steps pass between graphs as they are.
PRODUCERS = {
    ("value_encoder", "f16"): ("key_encoder", "f16"),
    ("decoder", "key"): ("key_encoder", "key"),
    ("decoder", "value"): ("key_encoder", "value"),
    ("decoder", "f8"): ("key_encoder", "f8"),
    ("decoder", "f4"): ("key_encoder", "f4"),
    ("decoder", "mem_keys"): ("key_encoder", "key"),
    ("decoder", "mem_values"): ("value_encoder", "value"),
}


def graph_key(subgraph: str, queue_len: int | None = None) -> str:
    """key_encoder, value_encoder, decoder_T<t>: the name of one graph of an export."""
    return subgraph if subgraph != "decoder" else f"decoder_T{queue_len}"


def graph_path(precision: str, subgraph: str, queue_len: int | None = None) -> str:
    """Where a graph lives inside an export folder: <precision>/<graph_key>.tflite."""
    return f"{precision}/{graph_key(subgraph, queue_len)}.tflite"


@dataclass
class TensorSpec:
    name: str  # the graph's signature name for inputs; the meaning's name for outputs
    shape: list[int]
    dtype: str  # float32, or int8 in full-integer graphs: real = scale * (q - zero_point)
    meaning: str
    signature_output: str | None = None  # outputs: what the converted graph calls it (output_0..N)
    scale: float | None = None  # int8 tensors only
    zero_point: int | None = None

    @property
    def quantisation(self) -> tuple[float, int] | None:
        """(scale, zero point) of an int8 tensor; None for a float one."""
        return (self.scale, self.zero_point) if self.dtype == "int8" else None

    def int8_range(self) -> tuple[float, float]:
        """The real values an int8 tensor can hold: its steps -128 and 127."""
        return self.scale * (-128 - self.zero_point), self.scale * (127 - self.zero_point)

    def to_graph(self, array: np.ndarray) -> np.ndarray:
        """A float array as this input takes it (quantised for int8 inputs)."""
        if self.dtype != "int8":
            return np.ascontiguousarray(array, dtype=np.float32)
        return quantise(array, self.scale, self.zero_point).astype(np.int8)

    def from_graph(self, array: np.ndarray) -> np.ndarray:
        """This output as float32 (dequantised for int8 outputs)."""
        if self.dtype != "int8":
            return array
        return dequantise(array, self.scale, self.zero_point)


def quantise(values: np.ndarray, scale: float, zero_point: int, out: np.ndarray | None = None) -> np.ndarray:
    """Real values -> the int8 steps q of a tensor whose real = scale * (q - zero_point), held as floats (written
    into `out`, a float32 array of the same shape, when given: the runtime's scratch, allocated once)."""
    out = np.divide(values, scale, out=out)
    np.rint(out, out=out)  # before adding the zero point, as the Android core's Quantization.quantize
    np.add(out, zero_point, out=out)
    return np.clip(out, -128, 127, out=out)


def dequantise(steps: np.ndarray, scale: float, zero_point: int, out: np.ndarray | None = None) -> np.ndarray:
    """int8 steps q -> float32 real values scale * (q - zero_point) (into `out` when given)."""
    out = np.subtract(steps, zero_point, out=out, dtype=np.float32)
    return np.multiply(out, np.float32(scale), out=out)


def requantisation(source: tuple[float, int], target: tuple[float, int]) -> np.ndarray | None:
    """How int8 steps of one quantisation (scale, zero point) become another's: a table indexed by the steps'
    bytes (an int8 array viewed as uint8), or None where every step maps to itself, as between graphs whose
    scales differ only by float rounding (one tensor calibrated in two graphs): those take the steps as they
    are, with no dequantise and quantise between them."""
    steps = np.arange(-128, 128, dtype=np.float32)
    mapped = quantise(dequantise(steps, *source), *target).astype(np.int8)
    if np.array_equal(mapped, steps.astype(np.int8)):
        return None
    return np.roll(mapped, -128)  # index 0..127 are steps 0..127, 128..255 are -128..-1


@dataclass
class GraphFile:
    path: str
    sha256: str
    bytes: int
    precision: str
    subgraph: str
    queue_len: int | None  # decoders only
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ops: dict = field(default_factory=dict)  # {"counts", "gpu_fallback", "flex", "int8_mac_share"}
    parity: dict = field(default_factory=dict)  # {"max_abs_diff": {name: x}, "max_rel_diff": {name: x}}
    signature: str = "serving_default"

    @property
    def key(self) -> str:
        return graph_key(self.subgraph, self.queue_len)

    @property
    def float_inside(self) -> bool:
        """An int8 graph that computes in float between its int8 edges (`mvos export --int8-float`): none of its
        MACs in int8 (manifests written before `int8_mac_share` was recorded hold full-integer graphs only)."""
        return self.precision == "int8" and self.ops.get("int8_mac_share") == 0.0

    def file_problem(self, model_dir: str | Path, check_hash: bool = True) -> str | None:
        """What is wrong with this graph's file in `model_dir` (None: it is there, with the sha256 recorded)."""
        from mvos.runtime.io import file_sha256

        path = Path(model_dir) / self.path
        if not path.is_file():
            return "is listed in the manifest but missing"
        if check_hash and file_sha256(path) != self.sha256:
            return "does not match the sha256 in the manifest (a partial copy?)"
        return None

    def output_names(self) -> dict[str, str]:
        """signature output -> meaning name."""
        return {spec.signature_output: spec.name for spec in self.outputs}

    def shapes(self) -> dict[str, list[int]]:
        return {spec.name: spec.shape for spec in self.inputs + self.outputs}


@dataclass
class EndToEndCheck:
    """TFLite runtime against fp32 PyTorch through the same engine, on a generated video or a real clip."""

    precision: str
    queue_len: int
    mean_iou: float
    max_prob_diff: float
    tie_fraction: float
    frames: int
    objects: int
    clip: str = "synthetic"  # or the real clip's file name
    # The same IoU with PyTorch's masks in the memory at every frame, so one frame's differences cannot steer
    # the later ones: what the graphs themselves lose. (mean_iou also measures how far the model's tracking
    # amplifies differences; None in manifests written before this measure.)
    one_step_iou: float | None = None
    # The precision of the encoders that made the memory (`InferenceSettings.memory_precision`); None: `precision`.
    memory_precision: str | None = None
    # One step, the pixels labelled otherwise over the reference's unsure band (object probability 0.2-0.8), where
    # nearly all of them lie: what rounding flips, apart from how sure the model is of the clip (an IoU also
    # rises when the object grows onto pixels the model is sure of; docs/benchmarks.md). None in older manifests.
    one_step_band_flips: float | None = None

    @property
    def engine(self) -> str:
        return engine_label(self.precision, self.memory_precision)


@dataclass
class ConversionFailure:
    precision: str
    subgraph: str
    queue_len: int | None
    error: str


@dataclass
class Manifest:
    variant: str
    config: dict
    parameters: int
    weights_source: str
    weights_sha256: str
    input_size: list[int]  # H, W the graphs take
    feature_size: list[int]  # h, w = input_size / stride
    stride: int
    key_dim: int
    value_dim: int
    max_objects: int  # objects per decoder call
    top_k: int | None  # the decoder's memory read (baked into the graph)
    normalisation: dict
    memory: dict
    files: list[GraphFile] = field(default_factory=list)
    end_to_end: list[EndToEndCheck] = field(default_factory=list)
    failures: list[ConversionFailure] = field(default_factory=list)
    mvos_version: str = ""

    # ---- queries ---------------------------------------------------------------------------------------

    def entry(self, precision: str, subgraph: str, queue_len: int | None = None) -> GraphFile | None:
        key = graph_key(subgraph, queue_len)
        return next((f for f in self.files if f.precision == precision and f.key == key), None)

    def queue_lens(self, precision: str) -> list[int]:
        return sorted(f.queue_len for f in self.files if f.precision == precision and f.subgraph == "decoder")

    def precisions(self) -> list[str]:
        """Precisions with a complete set (both encoders and at least one decoder), most accurate first."""
        return [p for p in PRECISIONS if all(self.entry(p, s) for s in ENCODERS) and self.queue_lens(p)]

    def queue_lengths(self) -> list[int]:
        return sorted({t for p in self.precisions() for t in self.queue_lens(p)})

    def export_command(self, model_dir: str | Path, precision: str, queue_len: int) -> str:
        """The `mvos export` call that adds `precision` at `queue_len` to this folder: the options that make the
        same model (the folder takes nothing else) and keep its int8 graphs made as they are."""
        from mvos.runtime.loading import weights_option  # loading imports the model; this module stays light

        h, w = self.input_size
        args = ["mvos export", f"--variant {self.variant}", f"--size {h}x{w}", f"--max-objects {self.max_objects}"]
        if self.top_k is not None:
            args.append(f"--top-k {self.top_k}")
        weights = weights_option(self.weights_source)
        if weights is not None:
            args.append(f"--weights {weights}")
        in_float = [s for s in SUBGRAPHS if any(f.float_inside and f.subgraph == s for f in self.files)]
        if precision == "int8" and in_float:
            args.append(f"--int8-float {','.join(in_float)}")
        args += [f"--precision {precision}", f"--queue-len {queue_len}", f"--out {model_dir}"]
        return " ".join(args)

    def identity(self) -> dict:
        """What makes two exports the same model: a folder is only ever extended with pieces of these."""
        return {"variant": self.variant, "config": self.config, "weights": self.weights_sha256,
                "input size": self.input_size, "max objects": self.max_objects, "top_k": self.top_k}

    # ---- updates ---------------------------------------------------------------------------------------

    def put(self, entry: GraphFile) -> None:
        """Adds or replaces one graph; a failure recorded for it earlier is dropped."""
        same = (entry.precision, entry.key)
        self.files = [f for f in self.files if (f.precision, f.key) != same] + [entry]
        self.files.sort(key=lambda f: (PRECISIONS.index(f.precision), SUBGRAPHS.index(f.subgraph), f.queue_len or 0))
        self.failures = [f for f in self.failures if (f.precision, graph_key(f.subgraph, f.queue_len)) != same]

    def record_failure(self, failure: ConversionFailure) -> None:
        same = (failure.precision, graph_key(failure.subgraph, failure.queue_len))
        self.failures = [f for f in self.failures if (f.precision, graph_key(f.subgraph, f.queue_len)) != same]
        self.failures.append(failure)

    def record_check(self, check: EndToEndCheck) -> None:
        def identity(c: EndToEndCheck) -> tuple:
            return c.precision, c.memory_precision, c.queue_len, c.clip

        self.end_to_end = [c for c in self.end_to_end if identity(c) != identity(check)]
        self.end_to_end.append(check)
        self.end_to_end.sort(key=lambda c: (PRECISIONS.index(c.precision), c.queue_len, c.memory_precision or "",
                                            c.clip))

    # ---- JSON ------------------------------------------------------------------------------------------

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        weights = {"source": data.pop("weights_source"), "sha256": data.pop("weights_sha256")}
        return {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "mvos_version": data.pop("mvos_version"),
                "variant": data.pop("variant"), "config": data.pop("config"), "parameters": data.pop("parameters"),
                "weights": weights, **{k: data[k] for k in ("input_size", "feature_size", "stride", "key_dim",
                                                            "value_dim", "max_objects", "top_k", "normalisation",
                                                            "memory")},
                "precisions": self.precisions(), "queue_lengths": self.queue_lengths(),
                "files": data["files"], "end_to_end": data["end_to_end"], "failures": data["failures"]}

    @classmethod
    def from_json(cls, data, where: str = MANIFEST_NAME) -> "Manifest":
        """The one validation of a manifest: MvosError naming the first problem."""
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise MvosError(f"{where} is not a mobilevos TFLite manifest")
        if data.get("format_version") != MANIFEST_VERSION:
            raise MvosError(f"{where} has manifest format version {data.get('format_version')}; this mobilevos "
                            f"reads version {MANIFEST_VERSION} (re-export with `mvos export`)")
        try:
            weights = _require(data, "weights", dict, where)
            manifest = cls(
                variant=_require(data, "variant", str, where), config=_require(data, "config", dict, where),
                parameters=_require(data, "parameters", int, where),
                weights_source=_require(weights, "source", str, where),
                weights_sha256=_require(weights, "sha256", str, where),
                input_size=_ints(data, "input_size", 2, where), feature_size=_ints(data, "feature_size", 2, where),
                stride=_require(data, "stride", int, where), key_dim=_require(data, "key_dim", int, where),
                value_dim=_require(data, "value_dim", int, where),
                max_objects=_require(data, "max_objects", int, where),
                top_k=_require(data, "top_k", (int, type(None)), where),
                normalisation=_require(data, "normalisation", dict, where),
                memory=_require(data, "memory", dict, where),
                files=[_graph_file(f, where) for f in _require(data, "files", list, where)],
                end_to_end=[EndToEndCheck(**c) for c in _require(data, "end_to_end", list, where)],
                failures=[ConversionFailure(**f) for f in _require(data, "failures", list, where)],
                mvos_version=str(data.get("mvos_version", "")))
        except TypeError as exc:  # a record with missing or unknown fields
            raise MvosError(f"{where}: {exc}") from None
        for name in ("mean", "std"):
            values = manifest.normalisation.get(name)
            if not (isinstance(values, list) and len(values) == 3 and all(isinstance(v, (int, float)) for v in values)):
                raise MvosError(f"{where}: normalisation.{name} must be three numbers")
        if manifest.max_objects < 1:
            raise MvosError(f"{where}: max_objects must be at least 1")
        return manifest

    # ---- files -----------------------------------------------------------------------------------------

    @classmethod
    def read(cls, folder: str | Path) -> "Manifest":
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not path.is_file():
            raise MvosError(f"{folder} has no {MANIFEST_NAME}: not a folder written by `mvos export`")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MvosError(f"cannot read {path}: {exc}") from None
        return cls.from_json(data, str(path))

    def write(self, folder: str | Path) -> None:
        from mvos.runtime.io import atomic_path

        with atomic_path(Path(folder) / MANIFEST_NAME) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")


def _require(data: dict, key: str, kind, where: str):
    if key not in data:
        raise MvosError(f"{where}: missing field {key!r}")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise MvosError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _ints(data: dict, key: str, length: int, where: str) -> list[int]:
    value = _require(data, key, list, where)
    if len(value) != length or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise MvosError(f"{where}: {key} must be {length} positive integers, got {value}")
    return value


def _graph_file(data, where: str) -> GraphFile:
    if not isinstance(data, dict):
        raise MvosError(f"{where}: every entry of files must be an object")
    entry = GraphFile(**{**data, "inputs": [TensorSpec(**t) for t in data.get("inputs", [])],
                         "outputs": [TensorSpec(**t) for t in data.get("outputs", [])]})
    what = f"{where}: file {entry.path!r}"
    if entry.subgraph not in SUBGRAPHS:
        raise MvosError(f"{what} has unknown subgraph {entry.subgraph!r} ({', '.join(SUBGRAPHS)})")
    if entry.precision not in PRECISIONS:
        raise MvosError(f"{what} has unknown precision {entry.precision!r} ({', '.join(PRECISIONS)})")
    if entry.subgraph == "decoder":
        check_queue_len(entry.queue_len, f"{what}: queue_len")
    elif entry.queue_len is not None:
        raise MvosError(f"{what}: only decoders have a queue length")
    if entry.path != graph_path(entry.precision, entry.subgraph, entry.queue_len):
        raise MvosError(f"{what} should be at {graph_path(entry.precision, entry.subgraph, entry.queue_len)}")
    for spec in entry.inputs + entry.outputs:
        if not spec.shape or not all(isinstance(d, int) and d > 0 for d in spec.shape):
            raise MvosError(f"{what}: tensor {spec.name!r} has shape {spec.shape}")
        if spec.dtype not in ("float32", "int8"):
            raise MvosError(f"{what}: tensor {spec.name!r} has dtype {spec.dtype!r} (float32 or int8)")
        if spec.dtype == "int8" and not (isinstance(spec.scale, float) and spec.scale > 0
                                         and isinstance(spec.zero_point, int)):
            raise MvosError(f"{what}: int8 tensor {spec.name!r} needs a positive scale and an integer zero_point")
    return entry
