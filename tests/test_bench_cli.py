"""`mvos bench` and `mvos plot` as a user runs them: on the host with litert-benchmark, resume, and the
phone-side failures (unknown device, no benchmark binary) through the adb simulator."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from cli_helpers import run_mvos

SMALL = ["--variant", "mobilenetv2-noaspp", "--random-weights", "--size", "32x32", "--queue-len", "1,2", "--threads", "1",
         "--num-runs", "3", "--warmup-runs", "1", "--no-verify"]


@pytest.mark.slow  # ~60 s: exports, then litert-benchmark
def test_host_bench_exports_measures_resumes_and_plots(capsys, no_user_config, tmp_path):
    models, results = tmp_path / "exports", tmp_path / "results.csv"
    first = run_mvos(capsys, "bench", "--device", "host", *SMALL, "--model-dir", models, "--out", results,
                     "--plot", tmp_path / "fig.png")
    assert first.code == 0, first.err
    assert "4 measurement(s) written" in first.out
    assert (models / "mobilenetv2-noaspp" / "manifest.json").is_file()
    rows = pd.read_csv(results)
    assert sorted(zip(rows["subgraph"], rows["queue_len"])) == [
        ("decoder", 1), ("decoder", 2), ("key_encoder", 0), ("value_encoder", 0)]
    assert (rows["avg_us"] > 0).all() and set(rows["delegate"]) == {"cpu"}
    assert "frame_ms" in first.out and "clip_mean_ms" in first.out  # the per-frame latency table
    assert (tmp_path / "fig.png").stat().st_size > 10_000 and (tmp_path / "fig_subgraphs.png").is_file()

    again = run_mvos(capsys, "bench", "--device", "host", *SMALL, "--model-dir", models, "--out", results,
                     "--resume")
    assert again.code == 0, again.err
    assert "0 measurement(s) written" in again.out
    assert len(pd.read_csv(results)) == 4

    # Without --resume an existing CSV and plots are refused; --overwrite measures anew and replaces them.
    before = results.read_bytes()
    refused = run_mvos(capsys, "bench", "--device", "host", *SMALL, "--model-dir", models, "--out", results)
    assert refused.code == 2 and "--overwrite" in refused.err and results.read_bytes() == before
    refused = run_mvos(capsys, "bench", "--device", "host", *SMALL, "--model-dir", models, "--out",
                       tmp_path / "new.csv", "--plot", tmp_path / "fig.png")
    assert refused.code == 2 and "fig.png" in refused.err and not (tmp_path / "new.csv").exists()
    replaced = run_mvos(capsys, "bench", "--device", "host", *SMALL, "--model-dir", models, "--out", results,
                        "--overwrite")
    assert replaced.code == 0, replaced.err
    assert len(pd.read_csv(results)) == 4 and results.read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    both = run_mvos(capsys, "bench", "--device", "host", *SMALL, "--model-dir", models, "--out", results,
                    "--overwrite", "--resume")
    assert both.code == 2 and "choose one" in both.err

    plotted = run_mvos(capsys, "plot", results, "--out", tmp_path / "again.png", "--objects", "2")
    assert plotted.code == 0 and (tmp_path / "again.png").is_file() and (tmp_path / "again_subgraphs.png").is_file()
    refused = run_mvos(capsys, "plot", results, "--out", tmp_path / "again.png")
    assert refused.code == 2 and "--overwrite" in refused.err
    assert run_mvos(capsys, "plot", results, "--out", tmp_path / "again.png", "--overwrite").code == 0


def test_bad_queue_lengths_and_sizes(capsys, no_user_config, tmp_path):
    for args, message in ((["--queue-len", "0..3"], "out of range"), (["--size", "30x32"], "16")):
        result = run_mvos(capsys, "bench", "--device", "host", *args, "--model-dir", tmp_path / "m",
                          "--out", tmp_path / "r.csv")
        assert result.code == 2 and message in result.err and "Traceback" not in result.err
    assert not (tmp_path / "m").exists()


def test_unknown_device_lists_what_is_connected(capsys, no_user_config, adbsim_phones, tmp_path):
    sim = adbsim_phones("s22")
    result = run_mvos(capsys, "bench", "--device", "pixel8", *SMALL, "--model-dir", tmp_path / "m",
                      "--out", tmp_path / "r.csv")
    assert result.code == 2
    assert "no connected device matches 'pixel8'" in result.err and f"{sim.address} (SM-S901B)" in result.err
    assert not (tmp_path / "m").exists()  # nothing exported for a device that is not there


def test_phone_without_benchmark_binary_says_what_to_download(capsys, no_user_config, adbsim_phones, tmp_path):
    adbsim_phones("s22")
    result = run_mvos(capsys, "bench", "--device", "s22", *SMALL, "--model-dir", tmp_path / "m",
                      "--out", tmp_path / "r.csv")
    assert result.code == 2
    assert "android_aarch64_benchmark_model" in result.err and "arm64-v8a" in result.err
    assert "--benchmark-binary" in result.err
    assert not (tmp_path / "m").exists() and not (tmp_path / "r.csv").exists()


def test_plot_of_a_missing_or_foreign_csv(capsys, tmp_path):
    missing = run_mvos(capsys, "plot", tmp_path / "none.csv", "--out", tmp_path / "f.png")
    assert missing.code == 2 and "results file not found" in missing.err
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    foreign = run_mvos(capsys, "plot", tmp_path / "other.csv", "--out", tmp_path / "f.png")
    assert foreign.code == 2 and "not a results CSV" in foreign.err


APP_FIXTURE = Path(__file__).parent / "data" / "app_benchmark.csv"  # written by the app's Kotlin core (JVM test)


def test_bench_pulls_the_apps_benchmark_csv_beside_benchmark_model(capsys, no_user_config, adbsim_phones, tmp_path):
    from mvos.device.app import APP_CSV

    sim = adbsim_phones("s22")
    results = tmp_path / "results.csv"
    missing = run_mvos(capsys, "bench", "--device", sim.address, "--app", "--out", results)
    assert missing.code == 2 and APP_CSV in missing.err and not results.exists()

    on_phone = sim.local_path(APP_CSV)
    on_phone.parent.mkdir(parents=True)
    shutil.copyfile(APP_FIXTURE, on_phone)
    # results benchmark_model measured earlier on the same phone, for the same model
    earlier = pd.read_csv(APP_FIXTURE)
    earlier = earlier[earlier["subgraph"] != "frame"].assign(device="R5CT1234SIM", source="benchmark_model",
                                                             avg_us=lambda d: d["avg_us"] * 0.8)
    earlier.to_csv(results, index=False)
    refused = run_mvos(capsys, "bench", "--device", sim.address, "--app", "--out", results)
    assert refused.code == 2 and "--resume" in refused.err

    pulled = run_mvos(capsys, "bench", "--device", sim.address, "--app", "--out", results, "--resume",
                      "--objects", "2", "--plot", tmp_path / "fig.png")
    assert pulled.code == 0, pulled.err
    assert "4 row(s) from the app" in pulled.out
    rows = pd.read_csv(results)
    app = rows[rows["source"] == "app"]
    # the phone is named as adb names it (an app cannot read the serial), the rest is the app's
    assert set(app["device"]) == {"R5CT1234SIM"} and set(app["device_model"]) == {"SM-S901B"}
    assert sorted(app["subgraph"]) == ["decoder", "frame", "key_encoder", "value_encoder"]
    assert app.set_index("subgraph")["avg_us"].to_dict() == {
        "key_encoder": 9500.0, "value_encoder": 6500.0, "decoder": 10500.0, "frame": 36500.0}
    # per-frame latency of both sources: 9.5 + 2 x 6.5 + 10.5 = 33 ms for the app's graphs, 36.5 ms whole
    assert "measured_frame_ms" in pulled.out and "36.50" in pulled.out and "33.00" in pulled.out
    assert "26.40" in pulled.out  # benchmark_model's rows, 0.8x
    assert (tmp_path / "fig.png").stat().st_size > 10_000 and (tmp_path / "fig_subgraphs.png").is_file()

    not_app = tmp_path / "not_app.csv"
    earlier.to_csv(not_app, index=False)
    shutil.copyfile(not_app, on_phone)
    foreign = run_mvos(capsys, "bench", "--device", sim.address, "--app", "--out", tmp_path / "x.csv")
    assert foreign.code == 2 and "not the app's benchmark CSV" in foreign.err
    mixed = run_mvos(capsys, "bench", "--device", sim.address, "--app", "--model-dir", tmp_path, "--out",
                     tmp_path / "x.csv")
    assert mixed.code == 2 and "--app" in mixed.err


APP_MEMORY_FIXTURE = Path(__file__).parent / "data" / "app_benchmark_memory_precision.csv"  # ditto, int8 + fp32 memory


def test_bench_pulls_the_apps_run_with_an_fp32_memory(capsys, no_user_config, adbsim_phones, tmp_path):
    """The app run as int8 with fp32 memory encoders: each graph is a row of its own precision, and the table
    composes that engine (fp32 encoders on memorised frames, int8 key encoder on the others, int8 decoder) beside
    the whole frame the app measured. No int8 value encoder ran, so there is no plain int8 frame to compose."""
    from mvos.device.app import APP_CSV

    sim = adbsim_phones("s22")
    on_phone = sim.local_path(APP_CSV)
    on_phone.parent.mkdir(parents=True)
    shutil.copyfile(APP_MEMORY_FIXTURE, on_phone)
    results = tmp_path / "results.csv"
    pulled = run_mvos(capsys, "bench", "--device", sim.address, "--app", "--out", results, "--objects", "2",
                      "--mem-every", "5", "--plot", tmp_path / "fig.png")
    assert pulled.code == 0, pulled.err
    rows = pd.read_csv(results, keep_default_na=False)
    assert sorted(zip(rows["precision"], rows["subgraph"], rows["memory_precision"])) == [
        ("fp32", "key_encoder", ""), ("fp32", "value_encoder", ""), ("int8", "decoder", ""),
        ("int8", "frame", "fp32"), ("int8", "key_encoder", "")]
    table = pulled.out[pulled.out.index("per-frame latency"):].splitlines()
    assert table[3].startswith("wrote")  # the title, the header, one row, then the plots
    assert table[1].split()[:3] == ["variant", "precision", "memory_precision"]
    # memorised frame 25 + 2 x 30 + 18 = 103 ms; clip mean (4 x 11.5 + 25 + 2 x 30) / 5 + 18 = 44.2 ms;
    # the app's own mean frame 48.4 ms
    assert table[2].split()[1:3] == ["int8", "fp32"] and table[2].split()[-3:] == ["103.00", "44.20", "48.40"]
    assert (tmp_path / "fig.png").stat().st_size > 10_000
