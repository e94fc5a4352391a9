"""Fixtures for the adb device simulator (tests/adbd_sim.py). All are named adbsim_*: a private adb
server for the session, simulated phones connected to it with `adb connect`, a tiny .tflite model and a
stand-in for the phone's benchmark_model that runs the host's litert-benchmark. `no_user_config` hides the
developer's own device aliases and benchmark binary from the device tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from adbd_sim import AdbdSimulator  # noqa: E402


def pytest_collection_modifyitems(items):
    """Tests on the shared TFLite export pay for its conversion (~75 s on 2 cores): they are slow."""
    for item in items:
        if "export_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def _adb_executable() -> str | None:
    found = shutil.which("adb")
    if found:
        return found
    try:  # the adbutils wheel ships an adb binary
        import adbutils

        return adbutils.adb_path()
    except Exception:
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AdbsimServer:
    exe: str
    port: int
    env: dict

    def adb(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.exe, "-P", str(self.port), *args], env=self.env, capture_output=True,
                              text=True, timeout=30)

    def state(self, serial: str) -> str | None:
        for line in self.adb("devices").stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == serial:
                return parts[1]
        return None

    def connect(self, sim: AdbdSimulator, timeout: float = 15.0) -> None:
        """`adb connect` and wait until the server lists the simulator as a ready device."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.adb("connect", sim.address)
            for _ in range(20):
                if self.state(sim.address) == "device":
                    return
                time.sleep(0.1)
            self.adb("disconnect", sim.address)  # stuck offline after a drop: start over
        raise AssertionError(f"adb never listed {sim.address} as a device: {self.adb('devices').stdout!r}")

    def disconnect(self, sim: AdbdSimulator) -> None:
        self.adb("disconnect", sim.address)


@pytest.fixture(scope="session")
def adbsim_server(tmp_path_factory):
    """A private adb server (own port and HOME) that mvos.device talks to through ANDROID_ADB_SERVER_PORT."""
    exe = _adb_executable()
    if exe is None:
        pytest.skip("no adb client: apt-get install adb (or pip install adbutils, whose wheel bundles one)")
    port = _free_port()
    home = tmp_path_factory.mktemp("adb-home")
    env = {**os.environ, "HOME": str(home), "ANDROID_ADB_SERVER_PORT": str(port)}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([exe, "-P", str(port), "nodaemon", "server"], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"adb server did not start: {(home / 'server.log').read_text()[-500:]}")
            time.sleep(0.1)
    previous = os.environ.get("ANDROID_ADB_SERVER_PORT")
    os.environ["ANDROID_ADB_SERVER_PORT"] = str(port)
    try:
        yield AdbsimServer(exe, port, env)
    finally:
        if previous is None:
            os.environ.pop("ANDROID_ADB_SERVER_PORT", None)
        else:
            os.environ["ANDROID_ADB_SERVER_PORT"] = previous
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def adbsim_phones(adbsim_server, tmp_path):
    """Factory: adbsim_phones(name, props={...}, shell_v2=...) -> a started simulator connected to adb."""
    sims: list[AdbdSimulator] = []

    def make(name: str = "phone", **kwargs) -> AdbdSimulator:
        sim = AdbdSimulator(tmp_path / name, **kwargs).start()
        sims.append(sim)
        adbsim_server.connect(sim)
        return sim

    yield make
    for sim in sims:
        adbsim_server.disconnect(sim)
        sim.stop()


@pytest.fixture(scope="session")
def adbsim_tiny_tflite(tmp_path_factory) -> Path:
    """A 2-layer conv model converted with litert-torch (a few seconds, once per session)."""
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.b = torch.nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    litert_torch.convert(Tiny().eval(), (torch.randn(1, 3, 32, 32),)).export(str(path))
    return path


_WRAPPER = '''#!{python}
"""Stand-in for benchmark_model on the simulated phone: takes benchmark_model's flags and runs the
host's litert-benchmark, which prints its own report."""
import os, sys
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
args = ["--model=" + flags["graph"], "--num_threads=" + flags["num_threads"],
        "--num_runs=" + flags["num_runs"], "--warmup_runs=" + flags["warmup_runs"]]
if flags.get("use_gpu") == "true":
    args.append("--use_gpu")
if "signature_to_run_for" in flags:
    args.append("--signature=" + flags["signature_to_run_for"])
os.execv(sys.executable, [sys.executable, "-m", "ai_edge_litert.tools.benchmark_litert_model", *args])
'''


@pytest.fixture(scope="session")
def adbsim_benchmark_wrapper(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bin") / "benchmark_model"
    path.write_text(_WRAPPER.replace("{python}", sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture
def no_user_config(monkeypatch, tmp_path):
    """No user alias file and no cached or configured benchmark binary from the developer's machine."""
    monkeypatch.delenv("MVOS_DEVICES", raising=False)
    monkeypatch.delenv("MVOS_BENCHMARK_MODEL", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
