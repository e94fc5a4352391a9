"""Results CSV (append, resume, per-frame latency), the sweep loop on the host and through a simulated
phone that drops its connection mid-sweep, and the two plots."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.image import imread

from mvos.device.adb import DEVICE_DIR, HostDevice, resolve_device
from mvos.device.plots import plot_results
from mvos.device.results import (
    ENCODER_QUEUE_LEN,
    KEY_COLUMNS,
    append_rows,
    finished_points,
    per_frame_latency,
    read_results,
)
from mvos.device.runner import BenchPoint, SweepSettings, run_points
from mvos.runtime.errors import MvosError


def row(subgraph, T, avg_us, variant="mvos-lite", device="R5CT", delegate="gpu", source="benchmark_model",
        precision="fp16", **extra):
    return {"device": device, "variant": variant, "precision": precision, "delegate": delegate, "queue_len": T,
            "subgraph": subgraph, "source": source, "avg_us": avg_us, **extra}


def sweep_rows(variant, key_us, value_us, decoder_us_by_T, **extra):
    rows = [row("key_encoder", ENCODER_QUEUE_LEN, key_us, variant, **extra),
            row("value_encoder", ENCODER_QUEUE_LEN, value_us, variant, **extra)]
    return rows + [row("decoder", T, us, variant, **extra) for T, us in decoder_us_by_T.items()]


def test_append_read_and_finished_points(tmp_path):
    csv = tmp_path / "out" / "results.csv"
    assert finished_points(csv) == set()
    append_rows(csv, [row("key_encoder", 0, 5000.0)])
    append_rows(csv, [row("decoder", 4, 7000.0, std_us=12.5)])  # a new column appears later
    df = read_results(csv)
    assert list(df["subgraph"]) == ["key_encoder", "decoder"]
    assert df["std_us"].isna().tolist() == [True, False]
    assert finished_points(csv) == {
        ("R5CT", "mvos-lite", "fp16", "gpu", 0, "key_encoder", "benchmark_model", ""),
        ("R5CT", "mvos-lite", "fp16", "gpu", 4, "decoder", "benchmark_model", ""),
    }
    assert list(tmp_path.joinpath("out").iterdir()) == [csv]  # no temporary file left behind


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    csv = tmp_path / "results.csv"
    append_rows(csv, [row("key_encoder", 0, 5000.0)])
    before = csv.read_bytes()

    def half_written(self, path, **kwargs):
        Path(path).write_text("device,variant\nR5CT,")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_written)
    with pytest.raises(OSError):
        append_rows(csv, [row("decoder", 1, 6000.0)])
    assert csv.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_bad_results_files(tmp_path):
    with pytest.raises(MvosError, match="results file not found"):
        read_results(tmp_path / "missing.csv")
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(MvosError, match="missing column"):
        read_results(other)
    with pytest.raises(MvosError, match="lack the key column"):
        append_rows(other, [{"device": "x"}])
    other.write_text("device,variant,precision,delegate,queue_len,subgraph\nd,v,fp16,gpu,four,decoder\n")
    with pytest.raises(MvosError, match="queue_len must be a whole number"):
        finished_points(other)


def test_results_from_before_the_source_column_read_as_benchmark_model(tmp_path):
    old = tmp_path / "old.csv"
    old.write_text("device,variant,precision,delegate,queue_len,subgraph,avg_us\nd,v,fp16,gpu,0,key_encoder,5.0\n")
    assert read_results(old)["source"].tolist() == ["benchmark_model"]
    assert finished_points(old) == {("d", "v", "fp16", "gpu", 0, "key_encoder", "benchmark_model", "")}


def test_per_frame_latency_rule():
    rows = sweep_rows("mvos-lite", 4000.0, 3000.0, {1: 2000.0, 4: 5000.0})
    rows.append(row("decoder", 4, 6000.0))  # re-measured: the newest row wins
    rows += [row("decoder", 2, 1.0, variant="no-encoders")]  # incomplete: left out
    frames = per_frame_latency(pd.DataFrame(rows))
    assert frames["variant"].tolist() == ["mvos-lite", "mvos-lite"]
    assert frames["queue_len"].tolist() == [1, 4]
    assert frames["frame_ms"].tolist() == pytest.approx([4 + 3 + 2, 4 + 3 + 6])
    # one frame in ten memorised (the default): the value encoder's 3 ms spread over ten frames
    assert frames["clip_mean_ms"].tolist() == pytest.approx([4 + 0.3 + 2, 4 + 0.3 + 6])
    two = per_frame_latency(pd.DataFrame(rows), objects=2, mem_every=4)  # the value encoder runs once per object
    assert two["frame_ms"].tolist() == pytest.approx([4 + 2 * 3 + 2, 4 + 2 * 3 + 6])
    assert two["clip_mean_ms"].tolist() == pytest.approx([4 + 2 * 3 / 4 + 2, 4 + 2 * 3 / 4 + 6])
    assert set(frames["memory_precision"]) == {""}  # one precision: nothing to read another's memory
    with pytest.raises(MvosError):
        per_frame_latency(pd.DataFrame(rows), objects=0)
    with pytest.raises(MvosError, match="mem_every"):
        per_frame_latency(pd.DataFrame(rows), mem_every=0)


def test_per_frame_latency_of_int8_reading_fp32s_memory():
    """Measured fp32 and int8 graphs also give int8 with the fp32 memory encoders (`--memory-precision fp32`): a
    memorised frame runs fp32's encoders and int8's decoder; the other frames int8's key encoder and decoder."""
    rows = (sweep_rows("m", 30000.0, 40000.0, {2: 50000.0}, delegate="cpu", precision="fp32")
            + sweep_rows("m", 10000.0, 12000.0, {2: 20000.0}, delegate="cpu", precision="int8")
            + sweep_rows("other", 1.0, 1.0, {2: 1.0}, delegate="cpu", precision="int8"))  # no fp32: no mixed row
    frames = per_frame_latency(pd.DataFrame(rows), mem_every=5)
    by = {(r["variant"], r["precision"], r["memory_precision"]): r for r in frames.to_dict("records")}
    assert set(by) == {("m", "fp32", ""), ("m", "int8", ""), ("m", "int8", "fp32"), ("other", "int8", "")}
    mixed = by[("m", "int8", "fp32")]
    assert (mixed["key_encoder_ms"], mixed["value_encoder_ms"], mixed["decoder_ms"]) == (30, 40, 20)
    assert mixed["frame_ms"] == pytest.approx(30 + 40 + 20)
    assert mixed["clip_mean_ms"] == pytest.approx((4 * 10 + 30 + 40) / 5 + 20)
    assert by[("m", "int8", "")]["clip_mean_ms"] == pytest.approx(10 + 12 / 5 + 20)
    assert by[("m", "fp32", "")]["clip_mean_ms"] == pytest.approx(30 + 40 / 5 + 50)


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000
    image = imread(path)
    assert image.shape[0] > 400 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # lines, bars and text, not a blank canvas
    # more than white, black and grey: the coloured series are drawn
    rgb = image[..., :3].reshape(-1, 3)
    assert (rgb.max(axis=1) - rgb.min(axis=1) > 0.3).mean() > 0.001


def test_plots_from_a_csv(tmp_path):
    csv = tmp_path / "results.csv"
    rows = sweep_rows("mvos-lite", 9000.0, 6000.0, {T: 4000.0 + 900.0 * T for T in (1, 2, 4, 8, 12, 16, 20)},
                      device_model="SM-S901B")
    rows += sweep_rows("mvos-small", 14000.0, 9000.0, {T: 6000.0 + 1500.0 * T for T in (1, 2, 4, 8, 12, 16, 20)},
                       device_model="SM-S901B")
    # int8 beside fp16: also plotted as int8 reading fp16's memory
    rows += sweep_rows("mvos-lite", 4000.0, 2500.0, {T: 2000.0 + 400.0 * T for T in (1, 2, 4, 8, 12, 16, 20)},
                       precision="int8", device_model="SM-S901B")
    append_rows(csv, rows)
    latency, stacked = plot_results(csv, tmp_path / "fig.png")
    assert latency == tmp_path / "fig.png" and stacked == tmp_path / "fig_subgraphs.png"
    _assert_png(latency)
    _assert_png(stacked)
    with pytest.raises(MvosError, match="PNG"):
        plot_results(csv, tmp_path / "fig.svg")
    partial = tmp_path / "partial.csv"
    append_rows(partial, [row("decoder", 1, 1000.0)])
    with pytest.raises(MvosError, match="no complete point"):
        plot_results(partial, tmp_path / "p.png")


def _points(models: dict[str, Path], variants=("tiny-a", "tiny-b"), queue_lens=(1, 2)) -> list[BenchPoint]:
    points = []
    for variant in variants:
        points.append(BenchPoint(variant, "fp32", ENCODER_QUEUE_LEN, "key_encoder", models["key_encoder"]))
        points.append(BenchPoint(variant, "fp32", ENCODER_QUEUE_LEN, "value_encoder", models["value_encoder"]))
        points += [BenchPoint(variant, "fp32", T, "decoder", models["decoder"]) for T in queue_lens]
    return points


@pytest.fixture
def tiny_models(adbsim_tiny_tflite, tmp_path) -> dict[str, Path]:
    """One file per subgraph (the same tiny network), as an export would lay them out."""
    models = {}
    for name in ("key_encoder", "value_encoder", "decoder"):
        models[name] = tmp_path / "models" / f"{name}.tflite"
        models[name].parent.mkdir(exist_ok=True)
        shutil.copyfile(adbsim_tiny_tflite, models[name])
    return models


FAST = dict(threads=1, num_runs=5, warmup_runs=1)


@pytest.mark.slow  # ~10 s: real litert-benchmark runs
def test_host_sweep_with_litert_benchmark_resume_and_plot(tiny_models, tmp_path, monkeypatch):
    monkeypatch.delenv("MVOS_BENCHMARK_MODEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    csv = tmp_path / "host.csv"
    points = _points(tiny_models)
    assert run_points(HostDevice(), points, csv, SweepSettings(**FAST)) == 8
    df = read_results(csv)
    assert len(df) == 8 and set(df["tool"]) == {"litert-benchmark"}
    assert (df["device"] == "host").all() and (df["delegate"] == "cpu").all()
    assert (df["avg_us"] > 0).all() and (df["runs"] == 5).all()
    assert df["device_abi"].notna().all()
    # --resume measures nothing twice; adding a queue length measures only that one
    assert run_points(HostDevice(), points, csv, SweepSettings(**FAST), resume=True) == 0
    more = _points(tiny_models, variants=("tiny-a",), queue_lens=(1, 2, 4))
    assert run_points(HostDevice(), more, csv, SweepSettings(**FAST), resume=True) == 1
    df = read_results(csv)
    assert len(df) == 9 and not df.duplicated(list(KEY_COLUMNS)).any()
    latency, stacked = plot_results(csv, tmp_path / "host.png")
    assert latency.stat().st_size > 20_000 and stacked.stat().st_size > 20_000


@pytest.mark.slow  # ~15 s: real litert-benchmark runs
def test_phone_sweep_survives_a_dropped_connection(adbsim_phones, adbsim_server, adbsim_benchmark_wrapper,
                                                   tiny_models, tmp_path):
    sim = adbsim_phones("s22")
    csv = tmp_path / "phone.csv"
    points = _points(tiny_models)
    settings = SweepSettings(use_gpu=False, benchmark_binary=adbsim_benchmark_wrapper, **FAST)

    def unplug_after_three(row):
        if len(read_results(csv)) == 3:
            sim.drop()

    with pytest.raises(MvosError, match=f"lost the connection to device {sim.address}"):
        run_points(resolve_device(sim.address), points, csv, settings, on_row=unplug_after_three)
    assert len(read_results(csv)) == 3  # what was measured before the drop is kept

    again = sim.restart()  # plugged back in, same port and storage
    try:
        adbsim_server.connect(again)
        assert (again.local_path(DEVICE_DIR)).exists()  # the lost run could not clean up...
        assert run_points(resolve_device(again.address), points, csv, settings, resume=True) == 5
        assert not again.local_path(DEVICE_DIR).exists()  # ...the resumed one did, and its own files
    finally:
        again.stop()
    df = read_results(csv)
    assert len(df) == 8 and not df.duplicated(list(KEY_COLUMNS)).any()
    assert set(df["device"]) == {"R5CT1234SIM"} and set(df["device_model"]) == {"SM-S901B"}
    assert df["battery_before_c"].eq(31.2).all() and df["device_gpu_renderer"].eq("Mali-G710").all()
    frames = per_frame_latency(df)
    assert len(frames) == 4 and (frames["frame_ms"] > 0).all()
