"""A small adbd-like device for the test suite: the real adb server connects to it with
`adb connect 127.0.0.1:PORT` and speaks the real transport protocol (CNXN without AUTH, then
OPEN/OKAY/WRTE/CLSE), so mvos.device is exercised exactly as it is against a phone.

Services: `shell:` (v1, output and exit code as a phone's shell gives them) and `shell,v2:` (framed
stdout/stderr/exit), `sync:` (STAT/LIST/SEND/RECV/DATA/DONE/QUIT). Shell commands run locally with
/bin/sh inside a sandbox folder that plays the phone's filesystem: `/data/local/tmp` is mapped into it
(paths are rewritten in commands and back in output), and so is `/sdcard`, where apps keep files adb can pull, and `getprop` / `dumpsys SurfaceFlinger` /
`dumpsys battery` answer from configurable properties. It listens on 127.0.0.1 only, stops by itself
after `idle_timeout` seconds without traffic, and `drop()` resets every connection at once to play a
phone that was unplugged mid-run.

Standalone: python tests/adbd_sim.py --root DIR [--port N] [--prop ro.product.model=SM-S901B ...]
"""

from __future__ import annotations

import argparse
import os
import posixpath
import shlex
import socket
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

A_CNXN = 0x4E584E43
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
A_VERSION = 0x01000001
MAX_PAYLOAD = 256 * 1024
SYNC_CHUNK = 64 * 1024

# shell,v2 packet ids
V2_STDOUT, V2_STDERR, V2_EXIT = 1, 2, 3

PHONE_TMP = "/data/local/tmp"
SDCARD = "/sdcard"
MAPPED = (PHONE_TMP, SDCARD)  # the phone folders the sandbox holds

DEFAULT_PROPS = {
    "ro.product.model": "SM-S901B",
    "ro.product.manufacturer": "samsung",
    "ro.product.brand": "samsung",
    "ro.product.name": "r0sxxx",
    "ro.product.device": "r0s",
    "ro.soc.manufacturer": "Samsung",
    "ro.soc.model": "s5e9925",
    "ro.board.platform": "s5e9925",
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.product.cpu.abilist": "arm64-v8a,armeabi-v7a,armeabi",
    "ro.serialno": "R5CT1234SIM",
}

_GETPROP = """#!/bin/sh
# all properties as "[key]: [value]", or one value
if [ $# -eq 0 ]; then
  awk '{i = index($0, "="); print "[" substr($0, 1, i - 1) "]: [" substr($0, i + 1) "]"}' "{props}"
else
  awk -v k="$1" 'index($0, k "=") == 1 {print substr($0, length(k) + 2)}' "{props}"
fi
"""

_DUMPSYS = """#!/bin/sh
case "$1" in
  SurfaceFlinger) cat "{dir}/surfaceflinger.txt" ;;
  battery) cat "{dir}/battery.txt" ;;
  *) echo "Can't find service: $1" >&2; exit 1 ;;
esac
"""


class _Closed(Exception):
    pass


class _Stream:
    """One OPENed stream. Writes honour adb's flow control: one WRTE in flight until the host OKAYs it."""

    def __init__(self, conn: "_Connection", local_id: int, remote_id: int):
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self._ready = threading.Event()
        self._ready.set()
        self._write_lock = threading.Lock()
        self._inbox = bytearray()
        self._cond = threading.Condition()
        self.closed = False
        self.proc: subprocess.Popen | None = None

    def write(self, data: bytes) -> None:
        with self._write_lock:
            for i in range(0, len(data), self.conn.max_payload):
                if not self._ready.wait(timeout=30) or self.closed:
                    raise _Closed()
                self._ready.clear()
                self.conn.send(A_WRTE, self.local_id, self.remote_id, data[i:i + self.conn.max_payload])

    def okayed(self) -> None:
        self._ready.set()

    def feed(self, data: bytes) -> None:
        with self._cond:
            self._inbox += data
            self._cond.notify_all()

    def read_exact(self, n: int) -> bytes:
        with self._cond:
            while len(self._inbox) < n:
                if self.closed:
                    raise _Closed()
                self._cond.wait(timeout=1)
            out = bytes(self._inbox[:n])
            del self._inbox[:n]
            return out

    def host_closed(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._ready.set()
        if self.proc and self.proc.poll() is None:
            _kill_group(self.proc)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.conn.send(A_CLSE, self.local_id, self.remote_id, b"")
        self.conn.forget(self.local_id)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass


class _Connection:
    """One transport connection from the adb server."""

    def __init__(self, sim: "AdbdSimulator", sock: socket.socket):
        self.sim, self.sock = sim, sock
        self.max_payload = 4096
        self._send_lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._lock = threading.Lock()

    def send(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        header = struct.pack("<6I", command, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, command ^ 0xFFFFFFFF)
        with self._send_lock:
            try:
                self.sock.sendall(header + data)
            except OSError as exc:
                raise _Closed() from exc

    def forget(self, local_id: int) -> None:
        with self._lock:
            self._streams.pop(local_id, None)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise _Closed()
            buf += chunk
        return bytes(buf)

    def serve(self) -> None:
        try:
            while True:
                command, arg0, arg1, length, _, _ = struct.unpack("<6I", self._recv_exact(24))
                data = self._recv_exact(length) if length else b""
                self.sim.touch()
                self._dispatch(command, arg0, arg1, data)
        except (_Closed, OSError):
            pass
        finally:
            self.shutdown()

    def _dispatch(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == A_CNXN:
            self.max_payload = max(1024, min(arg1, MAX_PAYLOAD))
            self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, self.sim.banner())
        elif command == A_OPEN:
            self._open(arg0, data.rstrip(b"\0").decode("utf-8", "replace"))
        elif command == A_OKAY:
            stream = self._streams.get(arg1)
            if stream:
                stream.okayed()
        elif command == A_WRTE:
            stream = self._streams.get(arg1)
            if stream:
                stream.feed(data)
                self.send(A_OKAY, arg1, arg0, b"")
        elif command == A_CLSE:
            with self._lock:
                stream = self._streams.pop(arg1, None)
            if stream:
                stream.host_closed()

    def _open(self, remote_id: int, service: str) -> None:
        handler = self.sim.handler_for(service)
        if handler is None:
            self.send(A_CLSE, 0, remote_id, b"")
            return
        with self._lock:
            local_id = self._next_id
            self._next_id += 1
            stream = _Stream(self, local_id, remote_id)
            self._streams[local_id] = stream
        self.send(A_OKAY, local_id, remote_id, b"")
        threading.Thread(target=self._run, args=(handler, stream), daemon=True).start()

    def _run(self, handler, stream: _Stream) -> None:
        try:
            handler(stream)
        except _Closed:
            pass
        finally:
            try:
                stream.close()
            except _Closed:
                pass

    def shutdown(self, reset: bool = False) -> None:
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            stream.host_closed()
        try:
            if reset:  # RST instead of FIN: what the host sees when a phone vanishes
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass


class AdbdSimulator:
    def __init__(
        self,
        root: Path,
        *,
        props: dict[str, str] | None = None,
        port: int = 0,
        shell_v2: bool = True,
        gpu: tuple[str, str] = ("ARM", "Mali-G710"),
        battery_temp_c: float = 31.2,
        idle_timeout: float = 120.0,
    ):
        self.root = Path(root).resolve()
        # a value of None removes a default property (a phone that lacks it)
        self.props = {k: v for k, v in {**DEFAULT_PROPS, **(props or {})}.items() if v is not None}
        self.shell_v2 = shell_v2
        self.gpu = gpu
        self.idle_timeout = idle_timeout
        self.commands: list[str] = []  # every shell command received, as the phone saw it
        self._requested_port = port
        self._listener: socket.socket | None = None
        self._connections: list[_Connection] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._last_activity = time.monotonic()
        self._sim_dir = self.root / ".sim"
        self._bin_dir = self._sim_dir / "bin"
        for folder in MAPPED:
            (self.root / folder.lstrip("/")).mkdir(parents=True, exist_ok=True)
        self._bin_dir.mkdir(parents=True, exist_ok=True)
        self._write_files(battery_temp_c)

    # ---- setup -------------------------------------------------------------------------------
    def _write_files(self, battery_temp_c: float) -> None:
        props = self._sim_dir / "props.txt"
        props.write_text("".join(f"{k}={v}\n" for k, v in sorted(self.props.items())))
        self._script("getprop", _GETPROP.replace("{props}", str(props)))
        self._script("dumpsys", _DUMPSYS.replace("{dir}", str(self._sim_dir)))
        vendor, renderer = self.gpu
        (self._sim_dir / "surfaceflinger.txt").write_text(
            "Build configuration: [sf PRESENT_TIME_OFFSET=0 FORCE_HWC_FOR_RBG_TO_YUV=1 MAX_VIRT_DISPLAY_DIM=4096]\n"
            "Display identification data:\n"
            "Display 4619827259835644672 (HWC display 0): port=0 pnpId=SAM displayName=\"\"\n\n"
            "Wide-Color information:\n"
            "Device has wide color built-in display: 1\n"
            f"GLES: {vendor}, {renderer}, OpenGL ES 3.2 v1.r38p1-01eac0.c1a71ccca2acf211eb87c5db5322f569\n"
            "Sync configuration: [using: EGL_ANDROID_native_fence_sync EGL_KHR_wait_sync]\n"
        )
        self.set_battery_temperature(battery_temp_c)

    def _script(self, name: str, text: str) -> None:
        path = self._bin_dir / name
        path.write_text(text)
        path.chmod(0o755)

    def set_battery_temperature(self, celsius: float) -> None:
        (self._sim_dir / "battery.txt").write_text(
            "Current Battery Service state:\n  AC powered: false\n  USB powered: true\n  Wireless powered: false\n"
            "  Max charging current: 500000\n  Max charging voltage: 5000000\n  Charge counter: 3015000\n"
            "  status: 2\n  health: 2\n  present: true\n  level: 78\n  scale: 100\n  voltage: 4123\n"
            f"  temperature: {round(celsius * 10)}\n  technology: Li-ion\n"
        )

    def banner(self) -> bytes:
        features = ["shell_v2", "cmd"] if self.shell_v2 else ["cmd"]
        p = self.props
        return (
            f"device::ro.product.name={p.get('ro.product.name', '')};ro.product.model={p.get('ro.product.model', '')};"
            f"ro.product.device={p.get('ro.product.device', '')};features={','.join(features)}"
        ).encode()

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._listener is not None, "not started"
        return self._requested_port  # the bound port once started, also after stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "AdbdSimulator":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._requested_port))
        listener.listen(4)
        self._listener = listener
        self._requested_port = listener.getsockname()[1]  # a restart after drop() comes back on the same port
        threading.Thread(target=self._accept_loop, daemon=True).start()
        threading.Thread(target=self._watchdog, daemon=True).start()
        return self

    def touch(self) -> None:
        self._last_activity = time.monotonic()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            conn = _Connection(self, sock)
            with self._lock:
                self._connections.append(conn)
            threading.Thread(target=conn.serve, daemon=True).start()

    def _watchdog(self) -> None:
        while not self._stopped.wait(0.5):
            if time.monotonic() - self._last_activity > self.idle_timeout:
                self.stop()

    def stop(self, reset: bool = False) -> None:
        self._stopped.set()
        if self._listener is not None:
            try:  # shutdown wakes the thread blocked in accept(); close alone would leave the port bound
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            conn.shutdown(reset=reset)

    def drop(self) -> None:
        """Vanish like an unplugged phone: reset every connection and stop listening."""
        self.stop(reset=True)

    def restart(self) -> "AdbdSimulator":
        """A fresh simulator on the same port and sandbox (the phone plugged back in)."""
        self.stop()
        again = AdbdSimulator(self.root, props=self.props, port=self._requested_port, shell_v2=self.shell_v2,
                              gpu=self.gpu, idle_timeout=self.idle_timeout)
        again.commands = self.commands
        return again.start()

    def __enter__(self) -> "AdbdSimulator":
        return self.start() if self._listener is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- phone filesystem --------------------------------------------------------------------
    def local_path(self, phone_path: str) -> Path | None:
        """Where a phone path lives in the sandbox; None outside the mapped folders (not writable for shell)."""
        norm = posixpath.normpath(phone_path)
        if not any(norm == folder or norm.startswith(folder + "/") for folder in MAPPED):
            return None
        return self.root / norm.lstrip("/")

    def _to_local_text(self, text: str) -> str:
        for folder in MAPPED:
            text = text.replace(folder, str(self.root) + folder)
        return text

    def _to_phone_bytes(self, data: bytes) -> bytes:
        for folder in MAPPED:
            data = data.replace((str(self.root) + folder).encode(), folder.encode())
        return data

    # ---- services ----------------------------------------------------------------------------
    def handler_for(self, service: str):
        if service.startswith("shell"):
            head, _, command = service.partition(":")
            options = head.split(",")[1:]
            if not command.strip():
                return None  # interactive shells are not simulated
            return lambda stream: self._shell(stream, command, v2="v2" in options)
        if service == "sync:":
            return self._sync
        return None

    def _shell(self, stream: _Stream, command: str, v2: bool) -> None:
        self.commands.append(command)
        env = {
            "PATH": f"{self._bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.root / PHONE_TMP.lstrip("/")),
            "TMPDIR": str(self.root / PHONE_TMP.lstrip("/")),
            "LANG": "C.UTF-8",
        }
        proc = subprocess.Popen(
            ["/bin/sh", "-c", self._to_local_text(command)],
            cwd=self.root / PHONE_TMP.lstrip("/"),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if v2 else subprocess.STDOUT,
            start_new_session=True,
        )
        stream.proc = proc

        def pump(pipe, packet_id: int) -> None:
            try:
                for line in iter(pipe.readline, b""):
                    data = self._to_phone_bytes(line)
                    stream.write(struct.pack("<BI", packet_id, len(data)) + data if v2 else data)
            except _Closed:
                _kill_group(proc)

        pumps = [threading.Thread(target=pump, args=(proc.stdout, V2_STDOUT), daemon=True)]
        if v2:
            pumps.append(threading.Thread(target=pump, args=(proc.stderr, V2_STDERR), daemon=True))
        for t in pumps:
            t.start()
        returncode = proc.wait()
        for t in pumps:
            t.join()
        if v2:
            stream.write(struct.pack("<BIB", V2_EXIT, 1, returncode & 0xFF))

    def _sync(self, stream: _Stream) -> None:
        while True:
            request, length = struct.unpack("<4sI", stream.read_exact(8))
            if request == b"QUIT":
                return
            argument = stream.read_exact(length).decode("utf-8", "replace")
            if request == b"STAT":
                stream.write(b"STAT" + self._stat(argument))
            elif request == b"LIST":
                self._list(stream, argument)
            elif request == b"SEND":
                self._receive_file(stream, argument)
            elif request == b"RECV":
                self._send_file(stream, argument)
            else:
                self._fail(stream, f"unknown sync request {request!r}")
                return

    def _stat(self, phone_path: str) -> bytes:
        local = self.local_path(phone_path)
        try:
            st = os.stat(local) if local else None
        except OSError:
            st = None
        if st is None:
            return struct.pack("<III", 0, 0, 0)
        return struct.pack("<III", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime))

    def _list(self, stream: _Stream, phone_path: str) -> None:
        local = self.local_path(phone_path)
        if local and local.is_dir():
            for entry in sorted(os.listdir(local)):
                st = os.stat(local / entry)
                name = entry.encode()
                header = struct.pack("<IIII", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(name))
                stream.write(b"DENT" + header + name)
        stream.write(b"DONE" + struct.pack("<IIII", 0, 0, 0, 0))

    def _fail(self, stream: _Stream, message: str) -> None:
        data = message.encode()
        stream.write(b"FAIL" + struct.pack("<I", len(data)) + data)

    def _receive_file(self, stream: _Stream, spec: str) -> None:
        phone_path, _, mode = spec.rpartition(",")
        local = self.local_path(phone_path)
        chunks = []
        while True:  # the host sends everything before it reads the answer
            kind, length = struct.unpack("<4sI", stream.read_exact(8))
            if kind == b"DONE":
                mtime = length
                break
            if kind != b"DATA":
                self._fail(stream, f"unexpected {kind!r} in SEND")
                return
            chunks.append(stream.read_exact(length))
        if local is None:
            self._fail(stream, f"couldn't create file: Read-only file system ({phone_path})")
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".sim-partial")
        tmp.write_bytes(b"".join(chunks))
        tmp.chmod(stat.S_IMODE(int(mode)) if mode.isdigit() else 0o644)  # adb sends st_mode in decimal
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, local)
        stream.write(b"OKAY" + struct.pack("<I", 0))

    def _send_file(self, stream: _Stream, phone_path: str) -> None:
        local = self.local_path(phone_path)
        if local is None or not local.is_file():
            self._fail(stream, f"remote object '{phone_path}' does not exist")
            return
        with open(local, "rb") as f:
            while chunk := f.read(SYNC_CHUNK):
                stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        stream.write(b"DONE" + struct.pack("<I", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="sandbox folder playing the phone's filesystem")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--prop", action="append", default=[], help="KEY=VALUE, e.g. ro.product.model=SM-S901B")
    parser.add_argument("--idle-timeout", type=float, default=600.0)
    args = parser.parse_args()
    props = dict(p.split("=", 1) for p in args.prop)
    sim = AdbdSimulator(args.root, props=props, port=args.port, idle_timeout=args.idle_timeout).start()
    print(f"adbd simulator on {sim.address}; connect with: adb connect {shlex.quote(sim.address)}", flush=True)
    sim._stopped.wait()


if __name__ == "__main__":
    main()
