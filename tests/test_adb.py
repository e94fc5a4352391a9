"""mvos.device against simulated phones over the real adb server and wire protocol (tests/adbd_sim.py):
resolution by serial and alias, device facts, push/run/cleanup, the benchmark binary lookup."""

import shlex
import socket
import time
from pathlib import Path

import adbutils
import pytest
from adbd_sim import AdbdSimulator

from mvos.device import adb as mvos_adb
from mvos.device.adb import DEVICE_DIR, HostDevice, load_aliases, resolve_device
from mvos.device.runner import DOCS_URL, BenchmarkSession, BenchSpec, locate_benchmark_binary
from mvos.runtime.errors import MvosError

LOGS = Path(__file__).parent / "data" / "benchmark_logs"


def phone_dir(sim, path=DEVICE_DIR) -> Path:
    return sim.local_path(path)


def test_shipped_aliases():
    aliases = load_aliases()
    assert aliases["s22"].models == ("SM-S901*", "SM-S906*", "SM-S908*")
    assert aliases["s22"].matches("SM-S908U1") and not aliases["s22"].matches("SM-S911B")
    assert aliases["pixel7"].matches("Pixel 7") and not aliases["pixel7"].matches("Pixel 7a")
    assert {"s23", "s24", "pixel8"} <= set(aliases)


def test_user_alias_file_extends_and_overrides(monkeypatch, tmp_path):
    user = tmp_path / "devices.toml"
    user.write_text('[lab]\nmodels = ["SM-X*"]\n\n[s22]\ndescription = "only the Ultra"\nmodels = ["SM-S908*"]\n')
    monkeypatch.setenv("MVOS_DEVICES", str(user))
    aliases = load_aliases()
    assert aliases["lab"].models == ("SM-X*",)
    assert aliases["s22"].models == ("SM-S908*",)
    user.write_text("[broken]\nmodels = []\n")
    with pytest.raises(MvosError, match=r"alias \[broken\] needs models"):
        load_aliases()
    monkeypatch.setenv("MVOS_DEVICES", str(tmp_path / "missing.toml"))
    with pytest.raises(MvosError, match="does not exist"):
        load_aliases()


def test_resolve_by_alias_and_serial_and_facts(adbsim_phones, no_user_config):
    sim = adbsim_phones("s22", battery_temp_c=30.5)
    device = resolve_device("s22")
    assert device.serial == sim.address
    facts = device.facts()
    assert facts.device_id == "R5CT1234SIM"  # ro.serialno, stable across USB and Wi-Fi
    assert (facts.model, facts.manufacturer, facts.soc) == ("SM-S901B", "samsung", "s5e9925")
    assert (facts.android_version, facts.sdk, facts.abi) == ("14", "34", "arm64-v8a")
    assert facts.gpu_renderer == "Mali-G710"
    assert device.battery_temperature() == 30.5
    sim.set_battery_temperature(33.1)
    assert device.battery_temperature() == 33.1
    assert resolve_device(sim.address).serial == sim.address
    assert resolve_device("S22").serial == sim.address  # aliases are case-insensitive


def test_soc_falls_back_to_board_platform_and_gpu_vendor_text(adbsim_phones):
    sim = adbsim_phones("pixel", props={"ro.product.model": "Pixel 7", "ro.soc.model": None, "ro.board.platform": "gs201"},
                        gpu=("ARM", "Mali-G710 MC10"))
    facts = resolve_device(sim.address).facts()
    assert facts.soc == "gs201" and facts.gpu_renderer == "Mali-G710 MC10" and facts.model == "Pixel 7"


def test_unknown_device_and_alias_without_match(adbsim_phones, no_user_config):
    sim = adbsim_phones("s22")
    with pytest.raises(MvosError) as err:
        resolve_device("pixel7")
    assert "no connected device matches 'pixel7' (Pixel 7, Pixel 7 Pro)" in str(err.value)
    assert f"connected: {sim.address} (SM-S901B)" in str(err.value)
    with pytest.raises(MvosError) as err:
        resolve_device("nokia3310")
    message = str(err.value)
    assert message.startswith("unknown device 'nokia3310'") and "s22" in message and sim.address in message


def test_two_matching_devices(adbsim_phones, no_user_config, monkeypatch, tmp_path):
    first = adbsim_phones("a")
    second = adbsim_phones("b", props={"ro.product.model": "SM-S908U", "ro.serialno": "R5CT9999SIM"})
    with pytest.raises(MvosError) as err:
        resolve_device("s22")
    message = str(err.value)
    assert "'s22' matches several connected devices" in message and "pass --device SERIAL" in message
    assert f"{first.address} (SM-S901B)" in message and f"{second.address} (SM-S908U)" in message
    # a serial always picks one; a user alias can narrow the match
    assert resolve_device(second.address).facts().device_id == "R5CT9999SIM"
    user = tmp_path / "devices.toml"
    user.write_text('[ultra]\nmodels = ["SM-S908*"]\n')
    monkeypatch.setenv("MVOS_DEVICES", str(user))
    assert resolve_device("ultra").serial == second.address


def test_offline_adb_server_is_started_or_explained(adbsim_server, monkeypatch, tmp_path):
    port = str(adbsim_server.port + 1 if adbsim_server.port < 65000 else adbsim_server.port - 1)
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", port)
    monkeypatch.setattr(mvos_adb, "adb_executable", lambda: None)
    with pytest.raises(MvosError, match=rf"no adb server is running at 127.0.0.1:{port}.*apt-get install adb"):
        mvos_adb.adb_client()


def test_push_run_and_cleanup(adbsim_phones, adbsim_server, adbsim_tiny_tflite):
    sim = adbsim_phones("s22")
    device = resolve_device(sim.address)
    with device.workspace() as ws:
        remote = ws.push(adbsim_tiny_tflite)
        assert remote == f"{DEVICE_DIR}/tiny.tflite"
        assert phone_dir(sim, remote).read_bytes() == adbsim_tiny_tflite.read_bytes()
        r = ws.run(["sh", "-c", "ls -l \"$0\"; echo oops >&2; exit 7", remote])
        assert r.returncode == 7 and "tiny.tflite" in r.stdout and r.stderr == "oops\n"
        assert DEVICE_DIR in r.stdout  # the phone's paths, not the sandbox's
        listing = adbutils.AdbClient(port=adbsim_server.port).device(sim.address).sync.list(DEVICE_DIR)
        assert [(f.path, f.size) for f in listing] == [("tiny.tflite", adbsim_tiny_tflite.stat().st_size)]
    assert not phone_dir(sim).exists()


def test_shell_v1_device(adbsim_phones):
    sim = adbsim_phones("old", shell_v2=False)
    device = resolve_device(sim.address)
    r = device.shell(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert r.returncode == 3 and r.stdout == "out\nerr\n"  # v1 merges the streams


def test_cleanup_on_ctrl_c(adbsim_phones, adbsim_tiny_tflite):
    sim = adbsim_phones("s22")
    device = resolve_device(sim.address)
    with pytest.raises(KeyboardInterrupt):
        with device.workspace() as ws:
            ws.push(adbsim_tiny_tflite)
            assert phone_dir(sim).is_dir()
            raise KeyboardInterrupt
    assert not phone_dir(sim).exists()


def test_stale_leftovers_are_cleared(adbsim_phones):
    sim = adbsim_phones("s22")
    stale = phone_dir(sim) / "old.tflite"
    stale.parent.mkdir(parents=True)
    stale.write_text("from a run that lost its phone")
    with resolve_device(sim.address).workspace() as ws:
        assert ws.run(["ls", DEVICE_DIR]).stdout == ""


def _fake_binary(tmp_path: Path, log_name: str, cut: str | None = None, exit_code: int = 0) -> Path:
    """A benchmark_model stand-in that prints a real log."""
    text = (LOGS / log_name).read_text().partition("-" * 70 + "\n")[2]
    if cut:
        text = text[text.index(cut):]
    (tmp_path / "log.txt").write_text(text)
    script = tmp_path / "benchmark_model"
    script.write_text(f'#!/bin/sh\ncat {tmp_path / "log.txt"}\nexit {exit_code}\n')
    script.chmod(0o755)
    return script


def test_benchmark_model_flags_push_and_parse(adbsim_phones, adbsim_tiny_tflite, tmp_path):
    sim = adbsim_phones("s22")
    device = resolve_device(sim.address)
    binary = _fake_binary(tmp_path, "3.txt", cut="+ echo 'running benchmark_model using GPU'")
    with BenchmarkSession(device, binary) as session:
        assert phone_dir(sim, f"{DEVICE_DIR}/benchmark_model").stat().st_mode & 0o111
        spec = BenchSpec(model=adbsim_tiny_tflite, use_gpu=True, threads=2, num_runs=30, warmup_runs=3, op_profiling=True)
        result = session.measure(spec)
        assert not phone_dir(sim, f"{DEVICE_DIR}/tiny.tflite").exists()  # the model goes right after its run
    assert not phone_dir(sim).exists()
    runs = [shlex.split(c) for c in sim.commands if "benchmark_model" in c and "chmod" not in c]
    assert runs == [[
        f"{DEVICE_DIR}/benchmark_model", f"--graph={DEVICE_DIR}/tiny.tflite", "--num_threads=2", "--use_gpu=true", "--num_runs=30",
        "--warmup_runs=3", "--enable_op_profiling=true", "2>&1",
    ]]
    assert result.log.inference_avg_us == 115246 and result.log.delegate.fully_delegated is True
    assert result.battery_before_c == 31.2 and result.facts.model == "SM-S901B"
    row = result.as_row()
    assert row["avg_us"] == 115246 and row["device"] == "R5CT1234SIM" and row["device_abi"] == "arm64-v8a"


def test_failed_run_quotes_the_tool_and_cleans_up(adbsim_phones, adbsim_tiny_tflite, tmp_path):
    sim = adbsim_phones("s22")
    binary = _fake_binary(tmp_path, "1.txt", cut="STARTING!", exit_code=1)
    with pytest.raises(MvosError, match=r"exited with code 1 .*Failed to apply NNAPI delegate\. \| Benchmarking failed\."):
        with BenchmarkSession(resolve_device(sim.address), binary) as session:
            session.measure(BenchSpec(model=adbsim_tiny_tflite))
    assert not phone_dir(sim).exists()


def test_real_litert_run_on_the_simulated_phone(adbsim_phones, adbsim_tiny_tflite, adbsim_benchmark_wrapper):
    sim = adbsim_phones("s22")
    with BenchmarkSession(resolve_device(sim.address), adbsim_benchmark_wrapper) as session:
        result = session.measure(BenchSpec(model=adbsim_tiny_tflite, threads=1, num_runs=5, warmup_runs=1))
    assert result.log.tool == "litert-benchmark"
    assert result.log.inference.count == 5 and result.log.warmup.count == 1
    assert result.log.inference_avg_us > 0
    assert any("--graph=/data/local/tmp/mvos/tiny.tflite" in c for c in sim.commands)
    assert not phone_dir(sim).exists()


def test_binary_missing(adbsim_phones, no_user_config, monkeypatch, tmp_path):
    sim = adbsim_phones("s22")
    device = resolve_device(sim.address)
    with pytest.raises(MvosError) as err:
        locate_benchmark_binary(device)
    message = str(err.value)
    assert "arm64-v8a" in message and "android_aarch64_benchmark_model" in message and DOCS_URL in message
    assert "tensorflow/lite/tools/benchmark/README.md" in message
    assert str(tmp_path / "cache" / "mvos" / "benchmark_model" / "arm64-v8a" / "benchmark_model") in message
    with pytest.raises(MvosError, match="--benchmark-binary .*nope: no such file"):
        locate_benchmark_binary(device, tmp_path / "nope")
    # the cache folder, then the environment variable, then the flag
    cached = tmp_path / "cache" / "mvos" / "benchmark_model" / "arm64-v8a" / "benchmark_model"
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    assert locate_benchmark_binary(device) == cached
    env_binary = tmp_path / "env_benchmark_model"
    env_binary.write_text("#!/bin/sh\n")
    monkeypatch.setenv("MVOS_BENCHMARK_MODEL", str(env_binary))
    assert locate_benchmark_binary(device) == env_binary
    assert locate_benchmark_binary(device, cached) == cached


def test_missing_model_is_a_clear_error(tmp_path):
    with BenchmarkSession(HostDevice(), None) as session:
        with pytest.raises(MvosError, match="cannot read .*missing.tflite"):
            session.measure(BenchSpec(model=tmp_path / "missing.tflite"))


def test_host_needs_no_binary_but_uses_a_cached_one(no_user_config, tmp_path):
    host = HostDevice()
    assert locate_benchmark_binary(host) is None  # litert-benchmark runs instead
    cached = tmp_path / "cache" / "mvos" / "benchmark_model" / f"host-{host.facts().abi}" / "benchmark_model"
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    assert locate_benchmark_binary(host) == cached


def test_adb_server_is_started_when_down(adbsim_server, monkeypatch, tmp_path):
    port = adbsim_server.port + 2 if adbsim_server.port < 65000 else adbsim_server.port - 2
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
    monkeypatch.setenv("HOME", str(tmp_path))  # the new server's adbkey goes here
    monkeypatch.setattr(mvos_adb, "adb_executable", lambda: adbsim_server.exe)
    try:
        client = mvos_adb.adb_client()
        assert client.server_version() > 0
    finally:
        mvos_adb.subprocess.run([adbsim_server.exe, "-P", str(port), "kill-server"], capture_output=True, timeout=30)


def test_timeout_closes_the_stream_and_ends_the_remote_process(adbsim_phones):
    sim = adbsim_phones("s22")
    device = resolve_device(sim.address)
    with pytest.raises(MvosError, match="did not answer in time"):
        device.shell(["sh", "-c", "echo $$ > /data/local/tmp/pid; sleep 30"], timeout=1)
    pid = int(sim.local_path("/data/local/tmp/pid").read_text())
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()


def test_simulator_stops_by_itself(tmp_path):
    sim = AdbdSimulator(tmp_path, idle_timeout=0.3).start()
    time.sleep(1.5)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", sim.port), timeout=1).close()
