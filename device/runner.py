"""Run the official TFLite `benchmark_model` on a device (or `litert-benchmark` on the host when no
binary is given), parse its output, and record each measured point in the results CSV.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shlex
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from tqdm import tqdm

from mvos.device.adb import Device, DeviceFacts, HostDevice
from mvos.device.benchmark_log import BenchmarkLog, parse_benchmark_log, tail
from mvos.device.results import OWN_MEMORY, append_rows, finished_points, point_key
from mvos.runtime.errors import MvosError

ENV_BINARY = "MVOS_BENCHMARK_MODEL"
DOCS_URL = "https://ai.google.dev/edge/litert/models/measurement"
README = "the TensorFlow Lite benchmark tool README (tensorflow/lite/tools/benchmark/README.md)"
# ABI (ro.product.cpu.abi) -> name of the official nightly prebuilt listed on the docs page
PREBUILT = {
    "arm64-v8a": "android_aarch64_benchmark_model",
    "armeabi-v7a": "android_arm_benchmark_model",
}
LITERT_MODULE = "ai_edge_litert.tools.benchmark_litert_model"
log = logging.getLogger(__name__)


# ---- the tool ------------------------------------------------------------------------------------
def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "mvos" / "benchmark_model"


def cached_binary(abi: str) -> Path:
    """Where a downloaded binary for `abi` is picked up without any flag (host binaries: "host-x86_64")."""
    return cache_dir() / abi / "benchmark_model"


def _cache_key(device: Device) -> str | None:
    abi = device.facts().abi
    # the host is no Android x86_64 emulator: keep their binaries apart
    return f"host-{abi}" if abi and isinstance(device, HostDevice) else abi


def missing_binary_message(abi: str | None) -> str:
    abi = abi or "unknown ABI"
    name = PREBUILT.get(abi)
    if name:
        what = f"the official prebuilt `{name}`"
    else:
        what = f"benchmark_model built for {abi} (no prebuilt is listed for it)"
    return (
        f"no benchmark_model binary for the device's ABI {abi}: get {what} (see {DOCS_URL} and {README}), "
        f"then pass --benchmark-binary PATH, set {ENV_BINARY}=PATH, or save it as {cached_binary(abi)}"
    )


def locate_benchmark_binary(device: Device, explicit: str | Path | None = None) -> Path | None:
    """--benchmark-binary, else $MVOS_BENCHMARK_MODEL, else the cache folder for the device's ABI.
    None on the host (litert-benchmark is used there); a clear error on a phone."""
    for value, origin in ((explicit, "--benchmark-binary"), (os.environ.get(ENV_BINARY), ENV_BINARY)):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise MvosError(f"{origin} {path}: no such file")
            return path
    key = _cache_key(device)
    if key and cached_binary(key).is_file():
        return cached_binary(key)
    if isinstance(device, HostDevice):
        return None
    raise MvosError(missing_binary_message(key))


def tool_name(binary: Path | None) -> str:
    """Who measures (the results' `source`): the official binary, or the host tool when there is none."""
    return "benchmark_model" if binary is not None else "litert-benchmark"


def litert_benchmark_command() -> list[str]:
    """The host tool that ships with ai-edge-litert, run by module so PATH does not matter."""
    if importlib.util.find_spec("ai_edge_litert") is None or importlib.util.find_spec(LITERT_MODULE) is None:
        raise MvosError(
            "--device host without --benchmark-binary needs litert-benchmark from ai-edge-litert: "
            f"pip install ai-edge-litert, or pass the official benchmark_model for this machine ({DOCS_URL})"
        )
    return [sys.executable, "-m", LITERT_MODULE]


def model_signatures(model: Path) -> list[str]:
    """Signature keys of a .tflite file (read from the flatbuffer, nothing is allocated)."""
    from ai_edge_litert import schema_py_generated as schema

    try:
        buf = Path(model).read_bytes()
    except OSError as exc:
        raise MvosError(f"cannot read {model}: {exc.strerror}") from None
    if len(buf) < 8 or not schema.Model.ModelBufferHasIdentifier(buf, 0):
        raise MvosError(f"{model} is not a TFLite model")
    m = schema.Model.GetRootAs(buf, 0)
    return [m.SignatureDefs(i).SignatureKey().decode() for i in range(m.SignatureDefsLength())]


# ---- one measurement ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchSpec:
    model: Path
    use_gpu: bool = False
    threads: int = 4
    num_runs: int = 50
    warmup_runs: int = 5
    signature: str | None = None
    op_profiling: bool = False
    timeout_s: float = 900.0


def signature_flag_value(spec: BenchSpec) -> str | None:
    """The signature to name on the command line: only when the model has several."""
    signatures = model_signatures(spec.model)
    if spec.signature is not None and spec.signature not in signatures:
        have = ", ".join(signatures) or "none"
        raise MvosError(f"{spec.model.name} has no signature '{spec.signature}' (it has: {have})")
    if len(signatures) <= 1:
        return None
    if spec.signature is None:
        raise MvosError(f"{spec.model.name} has several signatures ({', '.join(signatures)}): choose one")
    return spec.signature


def benchmark_model_args(binary: str, model: str, spec: BenchSpec, signature: str | None) -> list[str]:
    args = [
        binary,
        f"--graph={model}",
        f"--num_threads={spec.threads}",
        f"--use_gpu={'true' if spec.use_gpu else 'false'}",
        f"--num_runs={spec.num_runs}",
        f"--warmup_runs={spec.warmup_runs}",
    ]
    if spec.op_profiling:
        args.append("--enable_op_profiling=true")
    if signature:
        args.append(f"--signature_to_run_for={signature}")
    return args


def litert_benchmark_args(tool: list[str], model: str, spec: BenchSpec, signature: str | None) -> list[str]:
    args = [*tool, f"--model={model}", f"--num_threads={spec.threads}", f"--num_runs={spec.num_runs}",
            f"--warmup_runs={spec.warmup_runs}"]
    if spec.op_profiling:
        log.warning("litert-benchmark has no op profiling; pass --benchmark-binary for a per-op profile")
    if spec.use_gpu:
        args.append("--use_gpu")
    if signature:
        args.append(f"--signature={signature}")
    return args


@dataclass(frozen=True)
class BenchResult:
    spec: BenchSpec
    log: BenchmarkLog
    facts: DeviceFacts
    battery_before_c: float | None
    battery_after_c: float | None
    command: str

    def as_row(self) -> dict[str, object]:
        return {
            **self.log.as_row(),
            "threads": self.spec.threads,
            "num_runs": self.spec.num_runs,
            "warmup_runs": self.spec.warmup_runs,
            "model_file": self.spec.model.name,
            "signature": self.spec.signature,
            **self.facts.as_row(),
            "battery_before_c": self.battery_before_c,
            "battery_after_c": self.battery_after_c,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


class BenchmarkSession:
    """Push the tool once, then measure models one at a time. Every model is removed after its run and
    the whole folder on exit, on errors and on Ctrl-C too.

        with BenchmarkSession(device, binary) as session:
            result = session.measure(BenchSpec(model=model_dir / graph_path("fp32", "decoder", 4), use_gpu=True))
    """

    def __init__(self, device: Device, binary: Path | None):
        self.device, self.binary = device, binary
        self._stack = ExitStack()

    def __enter__(self) -> "BenchmarkSession":
        with ExitStack() as stack:
            self.facts = self.device.facts()
            self.workspace = stack.enter_context(self.device.workspace())
            if self.binary is not None:
                self.tool, self._build = [self.workspace.push(self.binary, executable=True)], self._official_args
            elif isinstance(self.device, HostDevice):
                self.tool, self._build = litert_benchmark_command(), litert_benchmark_args
            else:
                raise MvosError(missing_binary_message(self.facts.abi))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)

    def _official_args(self, tool: list[str], model: str, spec: BenchSpec, signature: str | None) -> list[str]:
        return benchmark_model_args(tool[0], model, spec, signature)

    @property
    def tool_name(self) -> str:
        return tool_name(self.binary)

    def measure(self, spec: BenchSpec) -> BenchResult:
        signature = signature_flag_value(spec)
        remote = self.workspace.push(spec.model)
        try:
            argv = self._build(self.tool, remote, spec, signature)
            before = self.device.battery_temperature()
            run = self.workspace.run(argv, timeout=spec.timeout_s, merge_stderr=True)
            after = self.device.battery_temperature()
        except BaseException:
            self.workspace.remove_quietly(remote)
            raise
        self.workspace.remove(remote)
        if run.returncode != 0:
            raise MvosError(f"{self.tool_name} exited with code {run.returncode} on {self.device.serial} "
                            f"for {spec.model.name}; last lines: {tail(run.output)}")
        return BenchResult(spec, parse_benchmark_log(run.output), self.facts, before, after, shlex.join(argv))


# ---- a sweep of points ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchPoint:
    """One row of the results: a subgraph of a variant at a memory queue length T."""

    variant: str
    precision: str
    queue_len: int
    subgraph: str
    model: Path
    signature: str | None = None


@dataclass
class SweepSettings:
    use_gpu: bool = False
    threads: int = 4
    num_runs: int = 50
    warmup_runs: int = 5
    op_profiling: bool = False
    timeout_s: float = 900.0
    benchmark_binary: str | Path | None = None
    extra: dict = field(default_factory=dict)  # constant columns added to every row

    @property
    def delegate(self) -> str:
        return "gpu" if self.use_gpu else "cpu"


def run_points(
    device: Device,
    points: Iterable[BenchPoint],
    out_csv: Path,
    settings: SweepSettings,
    *,
    resume: bool = False,
    on_row: Callable[[dict], None] | None = None,
) -> int:
    """Measure each point and append its row to `out_csv` as soon as it is measured, so a run that is
    killed or loses its phone keeps what it finished; with `resume`, points already in the CSV are
    skipped. Returns the number of rows written."""
    facts = device.facts()
    binary = locate_benchmark_binary(device, settings.benchmark_binary)
    source = tool_name(binary)
    done = finished_points(out_csv) if resume else set()
    todo = [p for p in points if _key(facts, settings, p, source) not in done]
    if not todo:
        return 0
    written = 0
    with BenchmarkSession(device, binary) as session:
        with tqdm(total=len(todo), desc=f"bench {facts.model}", unit="model") as bar:
            for point in todo:
                bar.set_postfix_str(f"{point.variant} {point.subgraph} T={point.queue_len}")
                spec = BenchSpec(
                    model=Path(point.model), use_gpu=settings.use_gpu, threads=settings.threads,
                    num_runs=settings.num_runs, warmup_runs=settings.warmup_runs, signature=point.signature,
                    op_profiling=settings.op_profiling, timeout_s=settings.timeout_s,
                )
                result = session.measure(spec)
                row = {**_key_columns(facts, settings, point, source), **result.as_row(), **settings.extra}
                append_rows(out_csv, [row])
                written += 1
                bar.update(1)
                if on_row:
                    on_row(row)
    return written


def _key_columns(facts: DeviceFacts, settings: SweepSettings, p: BenchPoint, source: str) -> dict[str, object]:
    return {"device": facts.device_id, "variant": p.variant, "precision": p.precision,
            "delegate": settings.delegate, "queue_len": int(p.queue_len), "subgraph": p.subgraph, "source": source,
            "memory_precision": OWN_MEMORY}  # one graph, whose precision is the row's


def _key(facts: DeviceFacts, settings: SweepSettings, p: BenchPoint, source: str) -> tuple:
    return point_key(_key_columns(facts, settings, p, source))
