"""Parse the output of TFLite's official `benchmark_model` (every format it has printed since TF 1.x,
plain, with `INFO:` prefixes or read back through logcat) and of the `litert-benchmark` tool that ships
with the `ai-edge-litert` wheel (a different, millisecond-based report).

All times are returned in microseconds, memory in MB. A value the tool did not print is None, never 0,
and output without a complete result raises MvosError quoting its last lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mvos.runtime.errors import MvosError

NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_num_re = re.compile(NUM)

# Prefixes put in front of the tool's own text: logcat (threadtime and brief), TFLITE_LOG severities
# (newer builds add "[file.cc:NN]"), and Python logging as used by litert-benchmark.
_PREFIX = re.compile(
    r"""^(?:
        \d\d-\d\d\s+\d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+\s+[VDIWEF]\s+[^:]*?\s*:\s?
      | [VDIWEF]/[^(:]+\(\s*\d+\):\s?
      | [VDIWEF]\s+tflite\s*:\s?
      | (?:INFO|WARNING|ERROR|VERBOSE|DEBUG):\s?(?:\[[^\]]*\]\s?)?
      | \d{4}-\d\d-\d\d\s\d\d:\d\d:\d\d(?:,\d+)?\s(?:INFO|WARNING|ERROR|DEBUG)\s\S+:\s
    )""",
    re.VERBOSE,
)

_SUMMARY = re.compile(r"^(Average inference timings in us|Inference timings in us):\s*(.*)$")
_SUMMARY_FIELD = re.compile(rf"([A-Za-z][A-Za-z ()]*?):\s*({NUM})")
# Summary labels across versions -> our field. TF 1.x printed the steady-state average as "no stats".
_SUMMARY_LABELS = {
    "init": "init_us",
    "first inference": "first_us",
    "warmup (avg)": "warmup_avg_us",
    "warmup": "warmup_avg_us",
    "inference (avg)": "inference_avg_us",
    "no stats": "inference_avg_us",
}
_STAT_PAIR = re.compile(rf"(\w+)=({NUM})")
_PEAK_MEMORY = re.compile(rf"^Peak memory footprint \(MB\):\s*init=({NUM})\s+overall=({NUM})")
_MEMORY_DELTA = re.compile(rf"^Memory footprint delta.*?\(MB\):\s*init=({NUM})\s+overall=({NUM})")
_PERIODIC_PEAK = re.compile(rf"^Overall peak memory footprint \(MB\) via periodic monitoring:\s*({NUM})")
_MODEL_SIZE = re.compile(rf"^The input model file size \(MB\):\s*({NUM})")
_INIT_SESSION = re.compile(rf"^Initialized session in\s*({NUM})\s*ms")

_EXPLICIT_FULL = re.compile(r"Explicitly applied (.+?) delegate, and the model graph will be completely executed")
_EXPLICIT_PARTIAL = re.compile(
    r"Explicitly applied (.+?) delegate, and the model graph will be partially executed by the delegate"
    r" w/ (\d+) delegate kernels"
)
_EXPLICIT_NONE = re.compile(r"Though (.+?) delegate is explicitly applied, the model graph will not be executed")
_DELEGATE_FAILED = re.compile(r"^Failed to apply (.+?) delegate")
_CREATED = re.compile(r"^Created TensorFlow Lite (?:(\S+) )?delegate for (\S+?)\.?$")
_DELEGATE_KERNELS = re.compile(r"^Created (\d+) GPU delegate kernels")
_REPLACING = re.compile(
    r"^Replacing (\d+)(?: out of (\d+))? node\(s\) with delegate \(([^)]*)\) node, yielding (\d+) partitions"
)
_GPU_SPLIT = re.compile(
    r"^(?:First )?(\d+) operations will run on the GPU, and the remaining (\d+)(?: operations will run)? on the CPU"
)
_GPU_UNSUPPORTED = re.compile(r"(?:Following|Next) operations are not supported by GPU delegate:")

# litert-benchmark (ai-edge-litert): "Inference (avg):       0.06 ms (20 runs)".
_LITERT_LINE = re.compile(
    rf"^(Model initialization|Warmup \(\w+\)|Inference \(\w+\)):\s+({NUM}) ms(?: \((\d+) runs\))?"
)
_LITERT_FULLY = re.compile(r"^Fully accelerated:\s+(True|False)")
_LITERT_ACCELERATORS = re.compile(r"^Accelerators:\s+(.+)$")

_PROFILE_REGULAR = "Operator-wise Profiling Info for Regular Benchmark Runs"


@dataclass(frozen=True)
class RunStats:
    """One `count= first= curr= min= max= avg= std= [p5= median= p95=]` line (microseconds)."""

    count: int
    avg_us: float
    first_us: float | None = None
    curr_us: float | None = None
    min_us: float | None = None
    max_us: float | None = None
    std_us: float | None = None
    p5_us: float | None = None
    median_us: float | None = None
    p95_us: float | None = None


@dataclass(frozen=True)
class DelegateInfo:
    """What the log says about delegation. `name` is the explicitly applied delegate (None: plain CPU)."""

    name: str | None = None
    fully_delegated: bool | None = None
    delegate_kernels: int | None = None
    nodes_delegated: int | None = None
    nodes_on_cpu: int | None = None  # nodes that fell back to the CPU
    failed: bool = False
    created: tuple[str, ...] = ()  # "Created TensorFlow Lite ... delegate for X" lines, e.g. "XNNPACK/CPU"
    accelerators: tuple[str, ...] = ()  # litert-benchmark: "GPU", "CPU", ...
    unsupported_ops: tuple[str, ...] = ()  # the GPU delegate's "OP: reason" lines


@dataclass(frozen=True)
class OpProfileRow:
    """One row of the op profiling "Run Order" table for the regular benchmark runs."""

    node_type: str
    start_ms: float
    first_ms: float
    avg_ms: float
    percent: float
    cdf_percent: float
    mem_kb: float
    times_called: int
    name: str


@dataclass(frozen=True)
class BenchmarkLog:
    """One complete benchmark run."""

    tool: str  # "benchmark_model" or "litert-benchmark"
    inference_avg_us: float
    init_us: float | None = None
    first_us: float | None = None
    warmup_avg_us: float | None = None
    warmup: RunStats | None = None
    inference: RunStats | None = None
    peak_memory_init_mb: float | None = None
    peak_memory_overall_mb: float | None = None
    memory_delta_init_mb: float | None = None
    memory_delta_overall_mb: float | None = None
    peak_memory_periodic_mb: float | None = None
    model_size_mb: float | None = None
    delegate: DelegateInfo = field(default_factory=DelegateInfo)
    op_profile: tuple[OpProfileRow, ...] = ()

    def as_row(self) -> dict[str, object]:
        """Flat columns for a results table (op profile left out: it is per node)."""
        inf = self.inference or RunStats(count=0, avg_us=self.inference_avg_us)
        d = self.delegate
        return {
            "tool": self.tool,
            "init_us": self.init_us,
            "first_us": self.first_us,
            "warmup_avg_us": self.warmup_avg_us,
            "avg_us": self.inference_avg_us,
            "std_us": inf.std_us,
            "min_us": inf.min_us,
            "max_us": inf.max_us,
            "p5_us": inf.p5_us,
            "median_us": inf.median_us,
            "p95_us": inf.p95_us,
            "runs": inf.count or None,
            "peak_memory_init_mb": self.peak_memory_init_mb,
            "peak_memory_overall_mb": self.peak_memory_overall_mb,
            "memory_delta_init_mb": self.memory_delta_init_mb,
            "memory_delta_overall_mb": self.memory_delta_overall_mb,
            "delegate_applied": d.name,
            "fully_delegated": d.fully_delegated,
            "nodes_on_cpu": d.nodes_on_cpu,
        }


def strip_prefix(line: str) -> str:
    """The tool's own text without logcat / severity / logging prefixes (they can be stacked)."""
    line = line.rstrip("\r\n")
    for _ in range(3):
        m = _PREFIX.match(line)
        if not m or not m.group(0):
            break
        line = line[m.end():]
    return line.strip()


def tail(text: str, n: int = 6) -> str:
    """The last non-empty lines of `text`, joined on one line for an error message."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def parse_benchmark_log(text: str) -> BenchmarkLog:
    """Parse the output of one benchmark run. Raises MvosError (quoting the last lines) when the output
    holds no complete result, or several runs (pass those to parse_benchmark_runs)."""
    runs = parse_benchmark_runs(text)
    if not runs:
        raise MvosError(f"no benchmark result found in the tool's output; last lines: {tail(text)}")
    if len(runs) > 1:
        raise MvosError(f"the tool's output holds {len(runs)} benchmark runs where one was expected")
    return runs[0]


def parse_benchmark_runs(text: str) -> list[BenchmarkLog]:
    """Every complete run in `text`, in order (a transcript of several invocations); an incomplete
    trailing run (a failure, or a log cut short) is left out."""
    runs = []
    for lines, complete in _segments([strip_prefix(ln) for ln in text.splitlines()]):
        if complete:
            runs.append(_parse_segment(lines))
    return runs


def _is_stats_line(line: str) -> bool:
    return line.startswith("count=") and "avg=" in line


def _is_run_start(line: str) -> bool:
    return (
        line.startswith(("STARTING!", "Loaded model", "Running benchmark", "BENCHMARK RESULTS"))
        or _is_stats_line(line)
        or bool(_SUMMARY.match(line))
    )


def _is_run_end(line: str) -> bool:
    return bool(_SUMMARY.match(line)) or line.startswith("Inference (avg):")


def _segments(lines: list[str]) -> list[tuple[list[str], bool]]:
    """Split a transcript into runs. A run is complete once its summary line was seen; the lines after it
    (memory, op profile) belong to it until something that starts a new run."""
    segments: list[tuple[list[str], bool]] = []
    current: list[str] = []
    complete = False
    for line in lines:
        if complete and _is_run_start(line):
            segments.append((current, True))
            current, complete = [], False
        current.append(line)
        complete = complete or _is_run_end(line)
    if current:
        segments.append((current, complete))
    return segments


def _parse_segment(lines: list[str]) -> BenchmarkLog:
    if any(ln.startswith("BENCHMARK RESULTS") for ln in lines):
        return _parse_litert(lines)
    return _parse_benchmark_model(lines)


def _floats(m: re.Match) -> tuple[float, ...]:
    return tuple(float(g) for g in m.groups())


def _first_match(pattern: re.Pattern, lines: list[str]) -> re.Match | None:
    for line in lines:
        m = pattern.search(line)
        if m:
            return m
    return None


def _parse_stats(line: str) -> RunStats:
    pairs = {k: float(v) for k, v in _STAT_PAIR.findall(line)}
    return RunStats(
        count=int(pairs["count"]),
        avg_us=pairs["avg"],
        **{f"{k}_us": pairs.get(k) for k in ("first", "curr", "min", "max", "std", "p5", "median", "p95")},
    )


def _parse_benchmark_model(lines: list[str]) -> BenchmarkLog:
    summary: dict[str, float] = {}
    for line in lines:
        m = _SUMMARY.match(line)
        if m:
            for label, value in _SUMMARY_FIELD.findall(m.group(2)):
                key = _SUMMARY_LABELS.get(label.strip().lower())
                if key:
                    summary[key] = float(value)
    if "inference_avg_us" not in summary:
        raise MvosError(f"benchmark summary line without an inference average: {tail(chr(10).join(lines))}")

    # The warmup stats line comes first, the steady-state one last (some versions print only one).
    stats = [_parse_stats(ln) for ln in lines if _is_stats_line(ln)]
    warmup = inference = None
    if len(stats) >= 2:
        warmup, inference = stats[-2], stats[-1]
    elif stats:
        if abs(stats[0].avg_us - summary["inference_avg_us"]) <= 1e-6 * max(1.0, summary["inference_avg_us"]):
            inference = stats[0]
        else:
            warmup = stats[0]

    if "init_us" not in summary:
        m = _first_match(_INIT_SESSION, lines)
        if m:
            summary["init_us"] = float(m.group(1)) * 1000.0

    peak = _first_match(_PEAK_MEMORY, lines)
    delta = _first_match(_MEMORY_DELTA, lines)
    periodic = _first_match(_PERIODIC_PEAK, lines)
    size = _first_match(_MODEL_SIZE, lines)
    return BenchmarkLog(
        tool="benchmark_model",
        warmup=warmup,
        inference=inference,
        peak_memory_init_mb=_floats(peak)[0] if peak else None,
        peak_memory_overall_mb=_floats(peak)[1] if peak else None,
        memory_delta_init_mb=_floats(delta)[0] if delta else None,
        memory_delta_overall_mb=_floats(delta)[1] if delta else None,
        peak_memory_periodic_mb=float(periodic.group(1)) if periodic else None,
        model_size_mb=float(size.group(1)) if size else None,
        delegate=_parse_delegate(lines),
        op_profile=_parse_op_profile(lines),
        **summary,
    )


def _parse_delegate(lines: list[str]) -> DelegateInfo:
    info: dict[str, object] = {}
    created, unsupported = [], []
    in_unsupported = False
    replacing = []
    for line in lines:
        if in_unsupported:
            split = _GPU_SPLIT.match(line)
            if split or not line:
                in_unsupported = False
            else:
                unsupported.append(line)
                continue
        if m := _EXPLICIT_FULL.search(line):
            info.update(name=m.group(1), fully_delegated=True, nodes_on_cpu=0)
        elif m := _EXPLICIT_PARTIAL.search(line):
            info.update(name=m.group(1), fully_delegated=False, delegate_kernels=int(m.group(2)))
        elif m := _EXPLICIT_NONE.search(line):
            info.update(name=m.group(1), fully_delegated=False, delegate_kernels=0, nodes_delegated=0)
        elif m := _DELEGATE_FAILED.match(line):
            info.update(name=m.group(1), fully_delegated=False, failed=True)
        elif m := _CREATED.match(line):
            created.append(f"{m.group(1)}/{m.group(2)}" if m.group(1) else m.group(2))
        elif m := _DELEGATE_KERNELS.match(line):
            info.setdefault("delegate_kernels", int(m.group(1)))
        elif m := _REPLACING.match(line):
            replacing.append(m)
        elif _GPU_UNSUPPORTED.search(line):
            in_unsupported = True
        if m := _GPU_SPLIT.match(line):
            info.update(nodes_delegated=int(m.group(1)), nodes_on_cpu=int(m.group(2)))
            info.setdefault("fully_delegated", int(m.group(2)) == 0)

    # "Replacing N out of T node(s) with delegate (TfLiteGpuDelegateV2)": count the fallback for the
    # explicitly applied delegate only (XNNPACK prints the same line for the CPU part).
    name = str(info.get("name") or "").lower()
    for m in replacing:
        if name and name in m.group(3).lower():
            info.setdefault("nodes_delegated", int(m.group(1)))
            if m.group(2) is not None:
                info.setdefault("nodes_on_cpu", int(m.group(2)) - int(m.group(1)))
    return DelegateInfo(created=tuple(created), unsupported_ops=tuple(unsupported), **info)


def _parse_op_profile(lines: list[str]) -> tuple[OpProfileRow, ...]:
    """Rows of the "Run Order" table of the regular runs' op profile (rows cut short are skipped)."""
    try:
        start = next(i for i, ln in enumerate(lines) if ln.startswith(_PROFILE_REGULAR))
    except StopIteration:
        return ()
    rows = []
    in_table = False
    for line in lines[start + 1:]:
        if "Run Order" in line and line.startswith("="):
            in_table = True
            continue
        if not in_table or line.startswith("[node type]"):
            continue
        if not line or line.startswith("="):
            break
        row = _parse_op_row(line)
        if row:
            rows.append(row)
    return tuple(rows)


def _parse_op_row(line: str) -> OpProfileRow | None:
    cells = [c.strip() for c in re.split(r"\t|\s{2,}", line) if c.strip()]
    if len(cells) < 9:
        return None
    try:
        values = [float(c.rstrip("%")) for c in cells[1:8]]
    except ValueError:
        return None
    return OpProfileRow(
        node_type=cells[0],
        start_ms=values[0],
        first_ms=values[1],
        avg_ms=values[2],
        percent=values[3],
        cdf_percent=values[4],
        mem_kb=values[5],
        times_called=int(values[6]),
        name=" ".join(cells[8:]),
    )


def _parse_litert(lines: list[str]) -> BenchmarkLog:
    ms: dict[str, float] = {}
    runs: dict[str, int] = {}
    fully = accelerators = None
    for line in lines:
        if m := _LITERT_LINE.match(line):
            ms[m.group(1)] = float(m.group(2))
            if m.group(3) is not None:
                runs[m.group(1)] = int(m.group(3))
        elif m := _LITERT_FULLY.match(line):
            fully = m.group(1) == "True"
        elif m := _LITERT_ACCELERATORS.match(line):
            accelerators = tuple(a.strip() for a in m.group(1).split("|"))
    if "Inference (avg)" not in ms:
        raise MvosError(f"litert-benchmark report without an inference average: {tail(chr(10).join(lines))}")

    def us(label: str) -> float | None:
        return ms[label] * 1000.0 if label in ms else None

    inference = RunStats(
        count=runs.get("Inference (avg)", 0),
        avg_us=us("Inference (avg)"),
        **{f"{k}_us": us(f"Inference ({k})") for k in ("min", "max", "std", "median", "p5", "p95")},
    )
    # With --warmup_runs 0 the tool prints "0.00 ms (0 runs)": that is no measurement, not a zero.
    has_warmup = runs.get("Warmup (avg)", 0) > 0
    warmup = None
    if has_warmup:
        warmup = RunStats(count=runs["Warmup (avg)"], avg_us=us("Warmup (avg)"), first_us=us("Warmup (first)"))
    created = tuple(
        f"{m.group(1)}/{m.group(2)}" if m.group(1) else m.group(2)
        for ln in lines
        if (m := _CREATED.match(ln))
    )
    gpu = accelerators is not None and "GPU" in accelerators
    return BenchmarkLog(
        tool="litert-benchmark",
        inference_avg_us=inference.avg_us,
        init_us=us("Model initialization"),
        first_us=us("Warmup (first)") if has_warmup else None,
        warmup_avg_us=warmup.avg_us if warmup else None,
        warmup=warmup,
        inference=inference,
        delegate=DelegateInfo(
            name="GPU" if gpu else None,
            fully_delegated=fully,
            accelerators=accelerators or (),
            created=created,
        ),
    )

