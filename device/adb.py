"""Where benchmarks run: a phone over adb (through adbutils and the adb server) or this machine
(`--device host`). Both offer one interface (facts, shell, a workspace that is removed afterwards), so
the runner has a single code path.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import platform
import posixpath
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from mvos.runtime.errors import MvosError

log = logging.getLogger(__name__)

DEVICE_DIR = "/data/local/tmp/mvos"
HOST = "host"
USER_ALIASES = Path("~/.config/mvos/devices.toml")


# ---- device facts --------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceFacts:
    """What we record about the device with every result."""

    device_id: str  # stable across USB and Wi-Fi: ro.serialno, else the adb serial; "host" for this machine
    serial: str
    model: str | None
    manufacturer: str | None
    soc: str | None
    android_version: str | None
    sdk: str | None
    abi: str | None
    gpu_renderer: str | None

    def as_row(self) -> dict[str, object]:
        return {("device" if k == "device_id" else f"device_{k}"): v for k, v in asdict(self).items()}


_GETPROP_LINE = re.compile(r"^\[(.+?)\]: \[(.*)\]$")
_GLES_LINE = re.compile(r"^\s*GLES:\s*([^,]+),\s*([^,]+),", re.MULTILINE)
_BATTERY_TEMP = re.compile(r"^\s*temperature:\s*(-?\d+)\s*$", re.MULTILINE)


def parse_getprop(text: str) -> dict[str, str]:
    """`getprop` output ("[key]: [value]" lines) as a dict."""
    return {m.group(1): m.group(2) for line in text.splitlines() if (m := _GETPROP_LINE.match(line.strip()))}


def parse_gpu_renderer(surfaceflinger: str) -> str | None:
    """The renderer from `dumpsys SurfaceFlinger` ("GLES: Qualcomm, Adreno (TM) 730, OpenGL ES 3.2 ...")."""
    m = _GLES_LINE.search(surfaceflinger)
    return m.group(2).strip() if m else None


def parse_battery_temperature(battery: str) -> float | None:
    """Degrees Celsius from `dumpsys battery` (which reports tenths of a degree)."""
    m = _BATTERY_TEMP.search(battery)
    return int(m.group(1)) / 10.0 if m else None


@dataclass(frozen=True)
class ShellResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


# ---- the common interface --------------------------------------------------------------------------
class Device(ABC):
    """A place to run the benchmark tool. Subclasses provide the primitives; `workspace()` is shared."""

    serial: str

    @abstractmethod
    def facts(self) -> DeviceFacts: ...

    @abstractmethod
    def battery_temperature(self) -> float | None: ...

    @abstractmethod
    def shell(self, argv: Sequence[str], timeout: float | None = None, merge_stderr: bool = False) -> ShellResult:
        """Run a command; with merge_stderr its two streams come back interleaved in `stdout`."""

    @abstractmethod
    def read_file(self, remote: str) -> bytes:
        """The bytes of a file on the device (adb pull); a clear error when it is not there."""

    @abstractmethod
    def _new_workdir(self) -> str:
        """An empty folder for pushed files (stale leftovers removed)."""

    @abstractmethod
    def _push(self, local: Path, remote: str, mode: int) -> None: ...

    @abstractmethod
    def _remove_tree(self, remote: str) -> None: ...

    @contextmanager
    def workspace(self) -> Iterator["Workspace"]:
        """A folder on the device for the binary and models, removed on exit, also on errors and Ctrl-C."""
        workdir = self._new_workdir()
        try:
            yield Workspace(self, workdir)
        finally:
            try:
                self._remove_tree(workdir)
            except MvosError as exc:  # e.g. the phone went away: keep the original error visible
                log.warning("could not remove %s from %s (%s); remove it by hand: adb shell rm -rf %s",
                            workdir, self.serial, exc, workdir)


class Workspace:
    """Files pushed for one benchmark session; everything lives under `workdir`."""

    def __init__(self, device: Device, workdir: str):
        self.device, self.workdir = device, workdir

    def push(self, local: Path, executable: bool = False) -> str:
        local = Path(local)
        if not local.is_file():
            raise MvosError(f"cannot push {local}: no such file")
        remote = posixpath.join(self.workdir, local.name)
        self.device._push(local, remote, 0o755 if executable else 0o644)
        if executable:
            check(self.run(["chmod", "+x", remote]), f"chmod +x {remote}", self.device.serial)
        return remote

    def remove(self, remote: str) -> None:
        if posixpath.dirname(remote) != self.workdir:
            raise MvosError(f"refusing to remove {remote}: outside {self.workdir}")
        self.device._remove_tree(remote)

    def remove_quietly(self, remote: str) -> None:
        """Remove while another error is on its way: a failure here must not hide that one."""
        try:
            self.remove(remote)
        except MvosError as exc:
            log.warning("could not remove %s from %s: %s", remote, self.device.serial, exc)

    def run(self, argv: Sequence[str], timeout: float | None = None, merge_stderr: bool = False) -> ShellResult:
        return self.device.shell(argv, timeout=timeout, merge_stderr=merge_stderr)


def check(result: ShellResult, what: str, serial: str) -> ShellResult:
    """`result`, or MvosError quoting the command's last lines when it failed."""
    if result.returncode != 0:
        lines = " | ".join(result.output.strip().splitlines()[-3:]) or "(no output)"
        raise MvosError(f"`{what}` failed on {serial} (exit {result.returncode}): {lines}")
    return result


# ---- phones over adb --------------------------------------------------------------------------------
class AdbDevice(Device):
    def __init__(self, adb_device, model: str | None = None):
        self._d = adb_device
        self.serial = adb_device.serial
        self._model = model
        self._facts: DeviceFacts | None = None
        self._v2: bool | None = None

    def __repr__(self) -> str:
        return f"AdbDevice({self.serial}, {self._model})"

    def _call(self, fn, *args, **kwargs):
        import adbutils

        try:
            return fn(*args, **kwargs)
        except adbutils.AdbTimeout as exc:
            raise MvosError(f"device {self.serial} did not answer in time ({exc})") from None
        except (adbutils.AdbError, OSError) as exc:
            raise MvosError(
                f"lost the connection to device {self.serial} ({exc or type(exc).__name__}); "
                f"check `adb devices`, reconnect, and rerun (with --resume to keep finished points)"
            ) from None

    def shell_line(self, command: str, timeout: float | None = None) -> ShellResult:
        """Run a shell command line (pipes allowed) and return its exit code and output."""
        if self._v2 is None:
            self._v2 = "shell_v2" in self._call(self._d.get_features).split(",")
        # adbutils' timeout is per read, so it bounds silence rather than the total run time
        r = self._call(self._d.shell2, command, timeout=timeout, v2=self._v2)
        if self._v2:
            return ShellResult(r.returncode, r.stdout, r.stderr)
        return ShellResult(r.returncode, r.output, "")  # shell v1 merges the two streams

    def shell(self, argv: Sequence[str], timeout: float | None = None, merge_stderr: bool = False) -> ShellResult:
        return self.shell_line(shlex.join(argv) + (" 2>&1" if merge_stderr else ""), timeout=timeout)

    def getprop(self) -> dict[str, str]:
        return parse_getprop(self.shell_line("getprop").stdout)

    def facts(self) -> DeviceFacts:
        if self._facts is None:
            props = self.getprop()
            sf = self.shell_line("dumpsys SurfaceFlinger")
            self._facts = DeviceFacts(
                device_id=props.get("ro.serialno") or self.serial,
                serial=self.serial,
                model=props.get("ro.product.model"),
                manufacturer=props.get("ro.product.manufacturer"),
                soc=props.get("ro.soc.model") or props.get("ro.board.platform"),
                android_version=props.get("ro.build.version.release"),
                sdk=props.get("ro.build.version.sdk"),
                abi=props.get("ro.product.cpu.abi"),
                gpu_renderer=parse_gpu_renderer(sf.stdout) if sf.returncode == 0 else None,
            )
        return self._facts

    def battery_temperature(self) -> float | None:
        r = self.shell_line("dumpsys battery")
        return parse_battery_temperature(r.stdout) if r.returncode == 0 else None

    def read_file(self, remote: str) -> bytes:
        import stat

        info = self._call(self._d.sync.stat, remote)
        if not stat.S_ISREG(info.mode):
            raise MvosError(f"device {self.serial} has no file {remote}")
        return b"".join(self._call(lambda: list(self._d.sync.iter_content(remote))))

    def _new_workdir(self) -> str:
        # a run that lost its phone could not clean up: start from an empty folder
        self.shell(["rm", "-rf", DEVICE_DIR])
        check(self.shell(["mkdir", "-p", DEVICE_DIR]), f"mkdir -p {DEVICE_DIR}", self.serial)
        return DEVICE_DIR

    def _push(self, local: Path, remote: str, mode: int) -> None:
        self._call(self._d.sync.push, local, remote, mode=mode)

    def _remove_tree(self, remote: str) -> None:
        check(self.shell(["rm", "-rf", remote]), f"rm -rf {remote}", self.serial)


# ---- this machine ------------------------------------------------------------------------------------
class HostDevice(Device):
    """`--device host`: the same benchmark on this machine, in a temporary folder."""

    serial = HOST

    def __repr__(self) -> str:
        return "HostDevice()"

    def facts(self) -> DeviceFacts:
        return DeviceFacts(
            device_id=HOST,
            serial=HOST,
            model=HOST,
            manufacturer=platform.system() or None,
            soc=_cpu_name(),
            android_version=None,
            sdk=None,
            abi=platform.machine() or None,
            gpu_renderer=None,
        )

    def battery_temperature(self) -> float | None:
        for supply in sorted(Path("/sys/class/power_supply").glob("*")):
            try:
                if (supply / "type").read_text().strip() == "Battery":
                    return int((supply / "temp").read_text()) / 10.0
            except (OSError, ValueError):
                continue
        return None

    def shell(self, argv: Sequence[str], timeout: float | None = None, merge_stderr: bool = False) -> ShellResult:
        try:
            r = subprocess.run(list(argv), stdout=subprocess.PIPE, text=True, timeout=timeout,
                               stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE)
        except subprocess.TimeoutExpired:
            raise MvosError(f"`{shlex.join(argv)}` did not finish within {timeout:.0f} s") from None
        except OSError as exc:
            raise MvosError(f"cannot run {argv[0]}: {exc.strerror}") from None
        return ShellResult(r.returncode, r.stdout, r.stderr or "")

    def read_file(self, remote: str) -> bytes:
        try:
            return Path(remote).read_bytes()
        except OSError as exc:
            raise MvosError(f"this machine has no readable file {remote} ({exc.strerror})") from None

    def _new_workdir(self) -> str:
        return tempfile.mkdtemp(prefix="mvos-bench-")

    def _push(self, local: Path, remote: str, mode: int) -> None:
        shutil.copyfile(local, remote)
        os.chmod(remote, mode)

    def _remove_tree(self, remote: str) -> None:
        if os.path.isdir(remote):
            shutil.rmtree(remote)
        elif os.path.lexists(remote):
            os.remove(remote)


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


# ---- the adb server ----------------------------------------------------------------------------------
def _server_address() -> tuple[str, int]:
    # the same variables adb itself and adbutils read
    return os.environ.get("ANDROID_ADB_SERVER_HOST", "127.0.0.1"), int(os.environ.get("ANDROID_ADB_SERVER_PORT", 5037))


def _server_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def adb_executable() -> str | None:
    """`adb` on PATH, else the one shipped inside the adbutils wheel."""
    found = shutil.which("adb")
    if found:
        return found
    try:
        import adbutils

        return adbutils.adb_path()
    except Exception:  # adbutils raises its own error when it has no binary for this platform
        return None


def adb_client():
    """An adbutils client for a running adb server, starting the server when it is local and down."""
    import adbutils

    host, port = _server_address()
    if not _server_up(host, port):
        exe = adb_executable()
        if exe is None or host not in ("127.0.0.1", "localhost"):
            raise MvosError(
                f"no adb server is running at {host}:{port}; install Android platform-tools "
                "(Debian/Ubuntu: apt-get install adb) and run `adb start-server`"
            )
        done = subprocess.run([exe, "-P", str(port), "start-server"], capture_output=True, text=True, timeout=60)
        if not _server_up(host, port):
            raise MvosError(f"`{exe} start-server` did not start the adb server on port {port}: "
                            f"{(done.stderr or done.stdout).strip() or 'no output'}")
    return adbutils.AdbClient(host=host, port=port)


# ---- aliases and resolution ------------------------------------------------------------------------
@dataclass(frozen=True)
class Alias:
    name: str
    models: tuple[str, ...]
    description: str = ""

    def matches(self, model: str | None) -> bool:
        return model is not None and any(fnmatch.fnmatchcase(model.lower(), p.lower()) for p in self.models)


def user_aliases_path() -> Path:
    env = os.environ.get("MVOS_DEVICES")
    if env:
        return Path(env).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME")
    return (Path(config) / "mvos" / "devices.toml") if config else USER_ALIASES.expanduser()


def _read_aliases(text: str, origin: str) -> dict[str, Alias]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MvosError(f"{origin} is not valid TOML: {exc}") from None
    table = {}
    for name, entry in data.items():
        models = entry.get("models") if isinstance(entry, dict) else None
        if not (isinstance(models, list) and models and all(isinstance(m, str) and m for m in models)):
            raise MvosError(
                f'{origin}: alias [{name}] needs models = ["SM-S901*", ...] (patterns for ro.product.model)'
            )
        table[name.lower()] = Alias(name.lower(), tuple(models), str(entry.get("description", "")))
    return table


def load_aliases() -> dict[str, Alias]:
    """The shipped table, extended and overridden by the user's file (if there is one)."""
    shipped = resources.files("mvos.device").joinpath("aliases.toml").read_text()
    table = _read_aliases(shipped, "the shipped aliases.toml")
    user = user_aliases_path()
    if user.is_file():
        table.update(_read_aliases(user.read_text(), str(user)))
    elif os.environ.get("MVOS_DEVICES"):
        raise MvosError(f"MVOS_DEVICES names {user}, which does not exist")
    return table


def _model_of(client, serial: str) -> str | None:
    try:
        return client.device(serial).shell("getprop ro.product.model", timeout=20).strip() or None
    except Exception as exc:  # an unresponsive device is listed without a model, not fatal here
        log.debug("getprop on %s failed: %s", serial, exc)
        return None


def _listing(entries: list[tuple[str, str | None]]) -> str:
    if not entries:
        return "none (is the phone plugged in, with USB debugging on? see `adb devices`)"
    return ", ".join(f"{serial} ({model or 'model unknown'})" for serial, model in entries)


def resolve_device(spec: str) -> Device:
    """`--device` value -> Device: "host", a connected serial, or an alias from the alias tables."""
    if spec == HOST:
        return HostDevice()
    client = adb_client()
    infos = client.list()
    for info in infos:
        if info.serial == spec:
            if info.state != "device":
                hint = " (accept the USB debugging prompt on the phone)" if info.state == "unauthorized" else ""
                raise MvosError(f"device {spec} is {info.state}{hint}")
            return AdbDevice(client.device(spec))
    ready = [(info.serial, _model_of(client, info.serial)) for info in infos if info.state == "device"]
    aliases = load_aliases()
    alias = aliases.get(spec.lower())
    if alias is None:
        raise MvosError(
            f"unknown device '{spec}': not a connected serial, not an alias ({', '.join(sorted(aliases))}; "
            f"add one in {user_aliases_path()}) and not 'host'; connected: {_listing(ready)}"
        )
    matches = [(serial, model) for serial, model in ready if alias.matches(model)]
    if not matches:
        raise MvosError(
            f"no connected device matches '{alias.name}' ({', '.join(alias.models)}); connected: {_listing(ready)}"
        )
    if len(matches) > 1:
        raise MvosError(
            f"'{alias.name}' matches several connected devices: {_listing(matches)}; pass --device SERIAL"
        )
    serial, model = matches[0]
    return AdbDevice(client.device(serial), model=model)
