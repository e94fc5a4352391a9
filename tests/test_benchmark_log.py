"""The benchmark output parser on every real log in tests/data/benchmark_logs/ and on synthetic variants."""

from pathlib import Path

import pytest

from mvos.device.benchmark_log import (
    OpProfileRow,
    RunStats,
    parse_benchmark_log,
    parse_benchmark_runs,
    strip_prefix,
)
from mvos.runtime.errors import MvosError

LOGS = Path(__file__).parent / "data" / "benchmark_logs"
DASHES = "-" * 70 + "\n"


def load(name: str) -> str:
    """A fixture's verbatim tool output: its provenance header sits above a line of dashes."""
    header, sep, body = (LOGS / name).read_text().partition(DASHES)
    assert sep and header.startswith("SOURCE:"), f"{name} lost its header"
    return body


def test_every_fixture_has_a_test():
    tested = {"1.txt", "2.txt", "3.txt", "4.txt", "5.txt", "6.txt", "litert_benchmark_2.3.txt"}
    assert {p.name for p in LOGS.glob("*.txt")} == tested


def test_tf24_readme_transcript_holds_four_runs_and_a_failed_one():
    text = load("1.txt")
    runs = parse_benchmark_runs(text)
    assert [r.inference_avg_us for r in runs] == [249684, 156669, 92571.2, 95788.3]
    cpu = runs[0]
    assert (cpu.init_us, cpu.first_us, cpu.warmup_avg_us) == (16242, 360262, 304586)
    assert cpu.inference == RunStats(
        count=50, avg_us=249684, first_us=249042, curr_us=250889, min_us=247067, max_us=254474, std_us=1442
    )
    assert cpu.warmup is None  # the README kept only the steady-state stats line
    assert (cpu.peak_memory_init_mb, cpu.peak_memory_overall_mb) == (4.92969, 138.809)
    assert runs[2].peak_memory_overall_mb == 61.0547
    assert runs[3].inference.std_us == 1284
    # the whole transcript is not one run
    with pytest.raises(MvosError, match="holds 4 benchmark runs"):
        parse_benchmark_log(text)
    # the last invocation failed (NNAPI compilation): an error that quotes the tool, never a zero
    failed = text[text.index("### NNAPI qti-default"):]
    with pytest.raises(MvosError, match=r"no benchmark result.*Failed to apply NNAPI delegate\. \| Benchmarking failed\."):
        parse_benchmark_log(failed)


def test_tf115_gpu_log_with_op_profiling_cut_short():
    log = parse_benchmark_log(load("2.txt"))
    assert log.tool == "benchmark_model"
    assert (log.init_us, log.first_us, log.warmup_avg_us, log.inference_avg_us) == (870557, 130565, 122373, 119375)
    assert log.warmup == RunStats(
        count=4, avg_us=122373, first_us=130565, curr_us=120829, min_us=117370, max_us=130565, std_us=4930
    )
    assert log.inference == RunStats(
        count=50, avg_us=119375, first_us=119212, curr_us=118055, min_us=113737, max_us=124776, std_us=1948
    )
    assert log.model_size_mb == 7.07479
    assert log.peak_memory_overall_mb is None  # the excerpt stops inside the note line
    assert log.delegate.name == "GPU"
    assert log.delegate.fully_delegated is True
    assert log.delegate.nodes_on_cpu == 0
    assert log.delegate.delegate_kernels == 1
    assert log.op_profile == ()


def test_2025_log_with_info_prefixes_percentiles_and_memory_delta():
    cpu, gpu = parse_benchmark_runs(load("3.txt"))
    assert (cpu.init_us, cpu.first_us, cpu.warmup_avg_us, cpu.inference_avg_us) == (87639, 106436, 106065, 105784)
    assert cpu.inference == RunStats(
        count=50, avg_us=105784, first_us=106022, curr_us=105780, min_us=105416, max_us=106528, std_us=260,
        p5_us=105485, median_us=105718, p95_us=106281,
    )
    assert cpu.warmup.p95_us == 106436 and cpu.warmup.count == 5
    assert (cpu.memory_delta_init_mb, cpu.memory_delta_overall_mb) == (14.4414, 14.8164)
    assert cpu.peak_memory_overall_mb is None
    assert cpu.delegate.name is None and cpu.delegate.created == ("XNNPACK/CPU",)

    assert (gpu.init_us, gpu.inference_avg_us) == (1361236, 115246)
    assert gpu.inference.median_us == 115350 and gpu.inference.p5_us == 112107
    assert (gpu.memory_delta_init_mb, gpu.memory_delta_overall_mb) == (132.816, 132.816)
    assert gpu.delegate.name == "GPU" and gpu.delegate.fully_delegated is True
    assert gpu.model_size_mb == 4.2761


def test_tf23_cpu_log_with_zero_init_memory_and_truncated_profile():
    log = parse_benchmark_log(load("4.txt"))
    assert (log.init_us, log.first_us, log.warmup_avg_us, log.inference_avg_us) == (855, 49060, 34825.1, 33209.4)
    assert log.warmup.count == 15 and log.warmup.std_us == 3930
    assert log.inference.min_us == 32641 and log.inference.max_us == 34005
    # "init=0" is a real printed zero, distinct from a missing value
    assert log.peak_memory_init_mb == 0.0 and log.peak_memory_overall_mb == 12.8672
    assert log.model_size_mb == 0.004448
    assert log.op_profile == ()  # only the initialisation table, and it stops mid-row


def test_logcat_prefixed_nnapi_partial_delegation():
    log = parse_benchmark_log(load("5.txt"))
    assert (log.init_us, log.first_us, log.warmup_avg_us, log.inference_avg_us) == (126059, 32942, 12581.9, 12167.6)
    assert log.warmup.count == 40 and log.inference.count == 75 and log.inference.std_us == 325
    assert log.delegate.name == "NNAPI"
    assert log.delegate.fully_delegated is False
    assert log.delegate.delegate_kernels == 44
    assert log.model_size_mb == 0.113392


def test_tf1_average_inference_timings_format():
    log = parse_benchmark_log(load("6.txt"))  # the second, unfinished run is left out
    assert (log.warmup_avg_us, log.init_us, log.inference_avg_us) == (76605.9, 9933, 66767.6)
    assert log.first_us is None  # TF 1.x printed no first-inference time
    assert log.warmup == RunStats(
        count=7, avg_us=76605.9, first_us=127425, curr_us=66709, min_us=66709, max_us=127425, std_us=20944
    )
    assert log.inference.count == 15 and log.inference.std_us == 39
    assert log.peak_memory_overall_mb is None and log.memory_delta_overall_mb is None


def test_litert_benchmark_report():
    """ai-edge-litert's litert-benchmark prints its own millisecond report, not benchmark_model's."""
    log = parse_benchmark_log(load("litert_benchmark_2.3.txt"))
    assert log.tool == "litert-benchmark"
    assert log.init_us == pytest.approx(1490)
    assert log.first_us == pytest.approx(150)
    assert log.warmup_avg_us == pytest.approx(90) and log.warmup.count == 3
    assert log.inference_avg_us == pytest.approx(60) and log.inference.count == 20
    assert (log.inference.min_us, log.inference.max_us) == pytest.approx((50, 80))
    assert (log.inference.p5_us, log.inference.median_us, log.inference.p95_us) == pytest.approx((50, 50, 80))
    assert log.inference.std_us == pytest.approx(10)
    assert log.delegate.fully_delegated is True
    assert log.delegate.accelerators == ("CPU",)
    assert log.delegate.name is None


def test_litert_without_warmup_is_no_zero():
    text = "\n".join([
        "BENCHMARK RESULTS",
        "Model initialization:  3.00 ms",
        "Warmup (first):        0.00 ms",
        "Warmup (avg):          0.00 ms (0 runs)",
        "Inference (avg):       2.50 ms (10 runs)",
        "Fully accelerated:     False",
    ])
    log = parse_benchmark_log(text)
    assert log.warmup is None and log.warmup_avg_us is None and log.first_us is None
    assert log.inference_avg_us == 2500 and log.delegate.fully_delegated is False


SYNTHETIC_EXPONENT = """\
count=12 first=1.5e+06 curr=1.23e+06 min=1.2e+06 max=1.5e+06 avg=1.3e+06 std=8.5e+04
count=50 first=1.23457e+06 curr=1.2e+06 min=1.1e+06 max=1.3e+06 avg=1.23e+06 std=5000 p5=1.11e+06 median=1.22e+06 p95=1.29e+06
Inference timings in us: Init: 2.5e+06, First inference: 1.5e+06, Warmup (avg): 1.3e+06, Inference (avg): 1.23e+06
Peak memory footprint (MB): init=1.5e+01 overall=2.25e+02
"""


def test_exponent_form_values():
    log = parse_benchmark_log(SYNTHETIC_EXPONENT)
    assert (log.init_us, log.first_us, log.warmup_avg_us, log.inference_avg_us) == (2.5e6, 1.5e6, 1.3e6, 1.23e6)
    assert log.inference.first_us == 1.23457e6 and log.inference.p95_us == 1.29e6
    assert log.warmup.std_us == 8.5e4
    assert (log.peak_memory_init_mb, log.peak_memory_overall_mb) == (15.0, 225.0)


@pytest.mark.parametrize("prefix", [
    "INFO: ",
    "I tflite  : ",
    "05-30 15:16:46.366  3380  3380 I tflite  : ",
    "I/tflite  ( 3380): ",
    "05-30 15:16:46.366  3380  3380 I tflite  : INFO: ",
])
def test_prefixed_lines(prefix):
    text = "".join(prefix + line + "\n" for line in SYNTHETIC_EXPONENT.splitlines())
    log = parse_benchmark_log(text)
    assert log.inference_avg_us == 1.23e6 and log.inference.count == 50 and log.peak_memory_overall_mb == 225.0


def test_strip_prefix_keeps_plain_lines():
    assert strip_prefix("count=5 avg=3") == "count=5 avg=3"
    assert strip_prefix("INFO: [benchmark.cc:12] Initialized session in 3ms.") == "Initialized session in 3ms."


def test_gpu_partial_fallback_and_op_profile():
    text = """\
INFO: Created TensorFlow Lite delegate for GPU.
ERROR: Following operations are not supported by GPU delegate:
GATHER_ND: Operation is not supported.
MEAN: Operation is not supported.
42 operations will run on the GPU, and the remaining 3 operations will run on the CPU.
INFO: Replacing 42 out of 45 node(s) with delegate (TfLiteGpuDelegateV2) node, yielding 2 partitions for the whole graph.
INFO: Explicitly applied GPU delegate, and the model graph will be partially executed by the delegate w/ 2 delegate kernels.
INFO: count=10 first=2100 curr=2000 min=1990 max=2100 avg=2010 std=30
INFO: count=50 first=2001 curr=2003 min=1980 max=2050 avg=2004.5 std=12
INFO: Inference timings in us: Init: 310000, First inference: 2100, Warmup (avg): 2010, Inference (avg): 2004.5
INFO: Operator-wise Profiling Info for Regular Benchmark Runs:
INFO: ============================== Run Order ==============================
INFO: \t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
INFO: \t     TfLiteGpuDelegateV2\t            0.000\t    1.500\t    1.480\t 74.000%\t 74.000%\t     0.000\t        1\t[GPU partition 0]
INFO: \t               GATHER_ND\t            1.480\t    0.300\t    0.310\t 15.500%\t 89.500%\t     0.000\t        1\t[model/gather]
INFO: 
INFO: ============================== Top by Computation Time ==============================
"""
    log = parse_benchmark_log(text)
    d = log.delegate
    assert d.name == "GPU" and d.fully_delegated is False and d.delegate_kernels == 2
    assert (d.nodes_delegated, d.nodes_on_cpu) == (42, 3)
    assert d.unsupported_ops == ("GATHER_ND: Operation is not supported.", "MEAN: Operation is not supported.")
    assert log.op_profile == (
        OpProfileRow("TfLiteGpuDelegateV2", 0.0, 1.5, 1.48, 74.0, 74.0, 0.0, 1, "[GPU partition 0]"),
        OpProfileRow("GATHER_ND", 1.48, 0.3, 0.31, 15.5, 89.5, 0.0, 1, "[model/gather]"),
    )
    row = log.as_row()
    assert row["avg_us"] == 2004.5 and row["nodes_on_cpu"] == 3 and row["fully_delegated"] is False


def test_delegate_not_used_at_all():
    text = (
        "Though GPU delegate is explicitly applied, the model graph will not be executed by the delegate.\n"
        "count=5 first=10 curr=10 min=10 max=10 avg=10 std=0\n"
        "Inference timings in us: Init: 1, First inference: 10, Warmup (avg): 10, Inference (avg): 10\n"
    )
    d = parse_benchmark_log(text).delegate
    assert d.name == "GPU" and d.fully_delegated is False and d.nodes_delegated == 0


@pytest.mark.parametrize("text", [
    "",
    "Segmentation fault\n",
    "STARTING!\nGraph: [/data/local/tmp/mvos/m.tflite]\nERROR: Could not open '/data/local/tmp/mvos/m.tflite'.\n",
    # a summary whose average is not a number must not become a zero
    "count=5 first=1 curr=1 min=1 max=1 avg=1 std=0\nInference timings in us: Init: 5, Inference (avg): -nan\n",
])
def test_unparseable_output_is_an_error_quoting_the_last_lines(text):
    with pytest.raises(MvosError) as err:
        parse_benchmark_log(text)
    message = str(err.value)
    assert "\n" not in message
    last = [ln for ln in text.splitlines() if ln.strip()]
    assert (last[-1] in message) if last else "(no output)" in message


def test_litert_traceback_is_an_error():
    text = (
        "2026-11-23 21:14:30 INFO benchmark_litert_model: Loading model...\n"
        "Traceback (most recent call last):\n"
        '  File "benchmark_litert_model.py", line 338, in run_benchmark\n'
        "RuntimeError: ERROR: [litert/runtime/compiled_model.cc:1036]\n"
    )
    with pytest.raises(MvosError, match=r"RuntimeError: ERROR: \[litert/runtime/compiled_model.cc:1036\]"):
        parse_benchmark_log(text)
