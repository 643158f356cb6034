"""A loopback Android device: the *device* side of the ADB wire protocol, in Python.

The real ``adb`` client connects to it with ``adb connect 127.0.0.1:PORT`` exactly as it
would to a phone with "wireless debugging" on.  What the device does, it does for real:

* transport: CNXN (with a ``device::`` banner and a feature list), optional AUTH
  (``authorized=False`` sends AUTH TOKEN and never accepts a signature or a public key,
  so the client lists the device as ``unauthorized``), OPEN/OKAY/WRTE/CLSE with local and
  remote stream ids and one-packet-in-flight flow control per stream;
* services: ``shell,v2,...:CMD`` (shell protocol v2: stdin=0, stdout=1, stderr=2, exit=3,
  close-stdin=4, window-size=5; the exit packet carries the real exit code), legacy
  ``shell:CMD`` and ``exec:CMD`` (raw bytes, stderr merged, no exit code), and ``sync:``
  (STAT/LST2/STA2, LIST/LIS2, SEND/SND2, RECV/RCV2, DATA/DONE/OKAY/FAIL/QUIT);
* commands run in a bubblewrap sandbox where ``/data``, ``/sys`` and ``/system`` are the
  test's directories under ``root`` and the project's virtualenv is visible read-only, so
  ``/system/bin/python3`` runs the venv's interpreter (``ai_edge_litert`` included).

Only features the real client has been seen to use correctly are advertised:
``shell_v2, stat_v2, ls_v2, fixed_push_mkdir, fixed_push_symlink_timestamp``.  SND2/RCV2
(``sendrecv_v2``, ``sendrecv_v2_dry_run_send``) are implemented without compression and
advertised only when asked for (``features=``); compression (``sendrecv_v2_brotli``/
``lz4``/``zstd``), ``cmd``, ``abb``, ``apex`` and the rest are never advertised, so a
client never relies on them.

Facts about the protocol this file relies on (AOSP ``packages/modules/adb``:
``protocol.txt``, ``SERVICES.TXT``, ``SYNC.TXT``, ``shell_protocol.h``,
``file_sync_protocol.h``):

* a packet is six little-endian u32 (command, arg0, arg1, data length, data checksum,
  magic = command ^ 0xffffffff) followed by the data; from version 0x01000001 on the
  checksum is neither required nor checked;
* the device answers the host's CNXN with its own CNXN (version, max payload, banner
  ``device::ro.product.name=..;ro.product.model=..;ro.product.device=..;features=..``)
  or with ``AUTH TOKEN`` (arg0=1) and 20 random bytes;
* OPEN(host-id, 0, "service\\0") is answered with OKAY(device-id, host-id) or with
  CLSE(0, host-id) when refused; after each WRTE the sender waits for an OKAY before the
  next one on that stream;
* shell v2 packets are one byte id plus a u32 little-endian length; a signal ends a
  command with exit code 128+signal;
* sync requests are a 4-byte id plus a u32 length plus a path (<= 1024 bytes); DATA
  chunks are at most 64 KiB; ``SEND`` carries ``path,mode`` with the mode in decimal;
  ``SND2``/``RCV2`` follow the path with a setup packet (mode and flags, or flags).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import stat as stat_mod
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
A_AUTH = 0x48545541
A_STLS = 0x534C5453

A_VERSION = 0x01000001  # skip-checksum version, what adb >= 28 speaks
A_VERSION_SKIP_CHECKSUM = 0x01000001
MAX_PAYLOAD = 1024 * 1024
AUTH_TOKEN = 1
AUTH_SIGNATURE = 2
AUTH_RSAPUBLICKEY = 3
TOKEN_SIZE = 20

HEADER = struct.Struct("<6I")
SYNC_DATA_MAX = 64 * 1024
SYNC_PATH_MAX = 1024

SHELL_STDIN = 0
SHELL_STDOUT = 1
SHELL_STDERR = 2
SHELL_EXIT = 3
SHELL_CLOSE_STDIN = 4
SHELL_WINDOW_SIZE = 5
SHELL_HEADER = struct.Struct("<BI")

SYNC_FLAG_DRY_RUN = 0x8000_0000

# What the real adb client (Debian's 29.0.6) has been seen to use correctly against this
# device.  SND2/RCV2 are implemented too (compression-free), but no client at hand speaks
# them, so "sendrecv_v2" and "sendrecv_v2_dry_run_send" are only advertised on request.
FEATURES: tuple[str, ...] = (
    "shell_v2",
    "stat_v2",
    "ls_v2",
    "fixed_push_mkdir",
    "fixed_push_symlink_timestamp",
)
OPTIONAL_FEATURES: tuple[str, ...] = ("sendrecv_v2", "sendrecv_v2_dry_run_send")

DEFAULT_PROPS: dict[str, str] = {
    "ro.product.name": "convbench_loopback",
    "ro.product.model": "LoopbackPhone",
    "ro.product.device": "loopback",
    "ro.product.manufacturer": "convbench",
    "ro.product.brand": "convbench",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
    "ro.build.fingerprint": "convbench/loopback/loopback:14/UQ1A/1:userdebug/test-keys",
    "ro.soc.manufacturer": "convbench",
    "ro.soc.model": "Loopback-1",
    "ro.hardware": "loopback",
}

DEFAULT_SYS: dict[str, str] = {
    "class/thermal/thermal_zone0/type": "cpu-thermal\n",
    "class/thermal/thermal_zone0/temp": "41000\n",
    "class/thermal/thermal_zone1/type": "battery\n",
    "class/thermal/thermal_zone1/temp": "30500\n",
    "class/power_supply/battery/type": "Battery\n",
    "class/power_supply/battery/status": "Discharging\n",
    "class/power_supply/battery/capacity": "80\n",
    "class/power_supply/battery/current_now": "-350000\n",
    "class/power_supply/battery/voltage_now": "3850000\n",
    "class/power_supply/battery/temp": "305\n",
    "devices/system/cpu/online": "0-3\n",
    "devices/system/cpu/cpu0/cpufreq/scaling_cur_freq": "1804800\n",
    "devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq": "2419200\n",
    "devices/system/cpu/cpu0/cpufreq/scaling_governor": "schedutil\n",
}

PROPS_FILE = "system/etc/convbench.prop"

GETPROP_SCRIPT = r"""#!/bin/sh
# getprop for the loopback device: reads /system/etc/convbench.prop (key=value lines).
props=/system/etc/convbench.prop
if [ "$#" -eq 0 ]; then
    awk '{ i = index($0, "="); if (i > 1) printf "[%s]: [%s]\n", substr($0, 1, i - 1), substr($0, i + 1) }' "$props"
    exit 0
fi
awk -v key="$1" -v dflt="$2" '
    { i = index($0, "="); if (i > 1 && substr($0, 1, i - 1) == key) { v = substr($0, i + 1); found = 1 } }
    END { if (found) print v; else print dflt }
' "$props"
"""

PYTHON_WRAPPER = """#!/bin/sh
exec {python} "$@"
"""
# Where the device's programs "log" (threadtime lines, appended): the loopback logd.
LOGCAT_FILE = "/data/misc/logcat"
LOGCAT_SCRIPT = r"""#!/system/bin/python3
# logcat for the loopback device: -d prints the threadtime lines programs appended to
# /data/misc/logcat (``MM-DD HH:MM:SS.mmm  PID  TID L TAG: message``), --pid=N keeps one
# process's, -s TAG[:LEVEL] ... keeps those tags; -c empties it.  Nothing else is kept.
import re
import sys

args = sys.argv[1:]
pid = None
tags = set()
silent = False
i = 0
while i < len(args):
    arg = args[i]
    i += 1
    if arg.startswith("--pid="):
        pid = arg.split("=", 1)[1]
    elif arg == "-c":
        open("/data/misc/logcat", "w").close()
        sys.exit(0)
    elif arg == "-v":
        i += 1
    elif arg == "-s":
        silent = True
    elif silent and not arg.startswith("-"):
        tags.add(arg.split(":", 1)[0])
try:
    lines = open("/data/misc/logcat").read().splitlines()
except OSError:
    lines = []
line_re = re.compile(r"^\S+ \S+\s+(\d+)\s+\d+ \w (\S+?)\s*:")
for line in lines:
    m = line_re.match(line)
    if m and (pid is None or m.group(1) == pid) and (not tags or m.group(2) in tags):
        print(line)
"""


class ProtocolError(RuntimeError):
    """The peer sent something that is not ADB."""


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def sandbox_available() -> str | None:
    """None when commands can run in a bubblewrap sandbox, else the reason they cannot."""
    exe = bwrap_path()
    if exe is None:
        return "bubblewrap (bwrap) is not installed: apt-get install -y bubblewrap"
    probe = subprocess.run(
        [exe, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-pid", "/bin/true"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return f"bwrap cannot create a sandbox here: {probe.stderr.decode(errors='replace').strip()}"
    return None


def _parse_mode(text: str) -> int:
    """strtoul(text, nullptr, 0): decimal, 0octal or 0xhex."""
    text = text.strip()
    if text.lower().startswith("0x"):
        return int(text[2:], 16)
    if len(text) > 1 and text.startswith("0"):
        return int(text[1:], 8)
    return int(text or "0", 10)


class _Stream:
    """One ADB stream between a host socket (remote id) and a device service (local id)."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int, service: str) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.service = service
        self._inbox = bytearray()
        self._cv = threading.Condition()
        self._eof = False  # host closed its side
        self._closed = False  # CLSE sent or received
        self._can_send = threading.Event()
        self._can_send.set()  # the host's OPEN means it is ready to receive
        self._write_lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None

    # -- called by the connection's reader thread --------------------------------------
    def on_data(self, data: bytes) -> None:
        with self._cv:
            self._inbox += data
            self._cv.notify_all()

    def on_okay(self) -> None:
        self._can_send.set()

    def on_remote_close(self) -> None:
        with self._cv:
            self._eof = True
            self._closed = True
            self._cv.notify_all()
        self._can_send.set()
        self.kill_process()

    # -- used by services --------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed or self.conn.is_closed

    def read_exact(self, n: int) -> bytes:
        with self._cv:
            while len(self._inbox) < n:
                if self._eof or self.conn.is_closed:
                    raise EOFError(f"stream {self.service!r} closed by the host")
                self._cv.wait(0.5)
            out = bytes(self._inbox[:n])
            del self._inbox[:n]
            return out

    def read_some(self) -> bytes:
        """Whatever has arrived (blocking until something or EOF; b"" at EOF)."""
        with self._cv:
            while not self._inbox:
                if self._eof or self.conn.is_closed:
                    return b""
                self._cv.wait(0.5)
            out = bytes(self._inbox)
            self._inbox.clear()
            return out

    def write(self, data: bytes) -> None:
        """Send ``data`` as WRTE packets, waiting for the host's OKAY after each."""
        view = memoryview(data)
        with self._write_lock:
            while view:
                chunk = view[: self.conn.max_send]
                while not self._can_send.wait(0.5):
                    if self.closed:
                        break
                if self.closed:
                    raise BrokenPipeError(f"stream {self.service!r} is closed")
                self._can_send.clear()
                self.conn.send_packet(A_WRTE, self.local_id, self.remote_id, bytes(chunk))
                view = view[len(chunk) :]

    def close(self) -> None:
        """Close from the device side (sends CLSE once)."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        self.kill_process()
        with contextlib.suppress(OSError):
            self.conn.send_packet(A_CLSE, self.local_id, self.remote_id)
        self.conn.forget(self)

    def kill_process(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()


class _Connection:
    """One TCP connection from the adb server; a reader thread dispatches its packets."""

    def __init__(self, device: LoopbackAdbDevice, sock: socket.socket) -> None:
        self.device = device
        self.sock = sock
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self.peer_version = A_VERSION
        self.peer_max_payload = 4096
        self.online = False
        self.host_banner = ""
        self._closed = threading.Event()
        self._token = b""

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    @property
    def max_send(self) -> int:
        return max(256, min(self.peer_max_payload, MAX_PAYLOAD))

    # -- wire ---------------------------------------------------------------------------
    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed by the host")
            buf += chunk
        return bytes(buf)

    def send_packet(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        if self.is_closed:
            raise BrokenPipeError("connection closed")
        check = 0 if self.peer_version >= A_VERSION_SKIP_CHECKSUM else sum(data) & 0xFFFFFFFF
        header = HEADER.pack(command, arg0, arg1, len(data), check, command ^ 0xFFFFFFFF)
        with self._send_lock:
            self.sock.sendall(header + data)

    # -- lifecycle ----------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self.is_closed:
                command, arg0, arg1, length, _check, magic = HEADER.unpack(self._recv_exact(HEADER.size))
                if magic != command ^ 0xFFFFFFFF:
                    raise ProtocolError(f"bad magic for command {command:#x}")
                if length > MAX_PAYLOAD:
                    raise ProtocolError(f"payload of {length} bytes exceeds {MAX_PAYLOAD}")
                data = self._recv_exact(length) if length else b""
                self._dispatch(command, arg0, arg1, data)
        except (OSError, EOFError, ProtocolError, struct.error):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            stream.on_remote_close()
        self.device._forget_connection(self)

    def forget(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.pop(stream.local_id, None)

    # -- packets ------------------------------------------------------------------------
    def _dispatch(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == A_CNXN:
            self._on_connect(arg0, arg1, data)
        elif command == A_AUTH:
            self._on_auth(arg0, data)
        elif not self.online:
            return  # nothing else is allowed before the connection is up
        elif command == A_OPEN:
            self._on_open(arg0, data)
        elif command == A_OKAY:
            stream = self._find(arg1, arg0)
            if stream is not None:
                stream.remote_id = arg0
                stream.on_okay()
        elif command == A_WRTE:
            stream = self._find(arg1, arg0)
            if stream is None:
                self.send_packet(A_CLSE, 0, arg0)
                return
            stream.on_data(data)
            self.send_packet(A_OKAY, stream.local_id, stream.remote_id)
        elif command == A_CLSE:
            stream = self._find(arg1, arg0)
            if stream is not None:
                self.forget(stream)
                stream.on_remote_close()
        # A_SYNC and anything unknown are ignored, as adbd does.

    def _find(self, local_id: int, remote_id: int) -> _Stream | None:
        with self._lock:
            if local_id:
                return self._streams.get(local_id)
            # CLSE(host-id, 0): the host gave up before learning our id
            for stream in self._streams.values():
                if stream.remote_id == remote_id:
                    return stream
        return None

    def _on_connect(self, version: int, max_payload: int, data: bytes) -> None:
        self.peer_version = version
        self.peer_max_payload = max_payload or 4096
        self.host_banner = data.rstrip(b"\0").decode(errors="replace")
        if self.device.authorized:
            self._send_connect()
        else:
            self._send_token()

    def _send_connect(self) -> None:
        self.online = True
        banner = self.device.banner().encode()
        self.send_packet(A_CNXN, A_VERSION, MAX_PAYLOAD, banner)

    def _send_token(self) -> None:
        self._token = secrets.token_bytes(TOKEN_SIZE)
        self.send_packet(A_AUTH, AUTH_TOKEN, 0, self._token)

    def _on_auth(self, kind: int, data: bytes) -> None:
        if self.online:
            return
        if kind == AUTH_SIGNATURE:
            # No key is ever accepted: ask for the next one.
            self.device.auth_attempts += 1
            self._send_token()
        elif kind == AUTH_RSAPUBLICKEY:
            # A real phone now shows "Allow USB debugging?"; nobody taps it here.
            self.device.offered_public_keys.append(data.rstrip(b"\0").decode(errors="replace"))

    def _on_open(self, remote_id: int, data: bytes) -> None:
        service = data.rstrip(b"\0").decode(errors="replace")
        handler = self.device._service_handler(service)
        if handler is None:
            self.send_packet(A_CLSE, 0, remote_id)
            return
        with self._lock:
            local_id = self._next_id
            self._next_id += 1
            stream = _Stream(self, local_id, remote_id, service)
            self._streams[local_id] = stream
        self.device.opened_services.append(service)
        threading.Thread(target=self._serve, args=(stream, handler), name=f"adb-{service[:20]}", daemon=True).start()

    def _serve(self, stream: _Stream, handler: Any) -> None:
        try:
            delay = self.device.response_delay
            if delay > 0:
                self.device._vanished.wait(delay)
            if stream.closed:
                return
            self.send_packet(A_OKAY, stream.local_id, stream.remote_id)
            handler(stream)
        except (OSError, EOFError):
            pass
        finally:
            stream.close()


class LoopbackAdbDevice:
    """A TCP-connected Android device whose commands run in a bubblewrap sandbox."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        authorized: bool = True,
        props: dict[str, str] | None = None,
        python: str | None = None,
        response_delay: float = 0.0,
        host: str = "127.0.0.1",
        features: tuple[str, ...] = FEATURES,
    ) -> None:
        reason = sandbox_available()
        if reason is not None:
            raise RuntimeError(reason)
        self.root = Path(root).resolve()
        self.authorized = authorized
        self.response_delay = response_delay
        self.host = host
        self.python = python or sys.executable
        unknown = set(features) - set(FEATURES) - set(OPTIONAL_FEATURES)
        if unknown:
            raise ValueError(f"features not implemented by this device: {sorted(unknown)}")
        self.features = tuple(features)
        self.props = dict(DEFAULT_PROPS)
        self.props.update(props or {})
        self.auth_attempts = 0
        self.offered_public_keys: list[str] = []
        self.opened_services: list[str] = []
        self._vanished = threading.Event()
        self._connections: set[_Connection] = set()
        self._processes: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._build_tree()

    # -- the sandbox's files ------------------------------------------------------------
    def _build_tree(self) -> None:
        for sub in ("data/local/tmp", "sys", "system/bin", "system/etc", "sdcard"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for rel, text in DEFAULT_SYS.items():
            path = self.root / "sys" / rel
            if not path.exists():
                self.write_sys(rel, text)
        getprop = self.root / "system/bin/getprop"
        getprop.write_text(GETPROP_SCRIPT)
        getprop.chmod(0o755)
        logcat = self.root / "system/bin/logcat"
        logcat.write_text(LOGCAT_SCRIPT)
        logcat.chmod(0o755)
        wrapper = self.root / "system/bin/python3"
        wrapper.write_text(PYTHON_WRAPPER.format(python=os.path.abspath(self.python)))
        wrapper.chmod(0o755)
        self._write_props()

    def _write_props(self) -> None:
        lines = "".join(f"{key}={value}\n" for key, value in self.props.items())
        (self.root / PROPS_FILE).write_text(lines)

    def set_prop(self, key: str, value: str) -> None:
        self.props[key] = value
        self._write_props()

    def write_sys(self, relpath: str, text: str) -> Path:
        """Write ``/sys/<relpath>`` as the device's commands will see it."""
        path = self.root / "sys" / relpath.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def host_path(self, device_path: str) -> Path:
        """Where a device path lives on this machine (always inside ``root``)."""
        norm = os.path.normpath("/" + device_path.lstrip("/"))
        return self.root / norm.lstrip("/")

    READ_ONLY = ("/system", "/proc", "/sys")

    def is_read_only(self, device_path: str) -> bool:
        """Paths a sync SEND may not write, as on a phone (commands see /system read-only too)."""
        norm = os.path.normpath("/" + device_path.lstrip("/"))
        return any(norm == p or norm.startswith(p + "/") for p in self.READ_ONLY)

    def banner(self) -> str:
        keys = ("ro.product.name", "ro.product.model", "ro.product.device")
        props = ";".join(f"{key}={self.props.get(key, '')}" for key in keys)
        return f"device::{props};features={','.join(self.features)}"

    # -- network ------------------------------------------------------------------------
    @property
    def serial(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> LoopbackAdbDevice:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(8)
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._vanished.clear()
        self._thread = threading.Thread(target=self._accept_loop, name=f"adb-device-{self.port}", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._vanished.is_set():
            try:
                sock, _addr = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock)
            with self._lock:
                if self._vanished.is_set():
                    sock.close()
                    break
                self._connections.add(conn)
            threading.Thread(target=conn.run, name=f"adb-conn-{self.port}", daemon=True).start()
        with contextlib.suppress(OSError):
            listener.close()

    def _forget_connection(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    @property
    def running_commands(self) -> int:
        """Commands (shell, exec) still running on the device."""
        with self._lock:
            return sum(proc.poll() is None for proc in self._processes)

    def vanish(self) -> None:
        """The phone disappears: no more listening, every connection and command dropped."""
        self._vanished.set()
        listener = self._listener
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.close()
        self._kill_processes()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def stop(self) -> None:
        self.vanish()

    def __enter__(self) -> LoopbackAdbDevice:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- services -----------------------------------------------------------------------
    def _service_handler(self, service: str) -> Any:
        head, sep, rest = service.partition(":")
        if not sep:
            return None
        parts = head.split(",")
        if parts[0] == "shell":
            if "v2" in parts[1:]:
                return lambda stream: self._shell_v2(stream, rest)
            return lambda stream: self._shell_raw(stream, rest)
        if head == "exec":
            return lambda stream: self._shell_raw(stream, rest)
        if head == "sync":
            return self._sync
        return None

    def bwrap_argv(self, command: str) -> list[str]:
        exe = bwrap_path()
        assert exe is not None
        argv = [exe, "--unshare-pid", "--die-with-parent", "--new-session"]
        argv += ["--ro-bind", "/usr", "/usr"]
        for name in ("bin", "lib", "lib64", "sbin", "lib32", "libx32"):
            target = os.readlink(f"/{name}") if os.path.islink(f"/{name}") else None
            if target is not None:
                argv += ["--symlink", target, f"/{name}"]
            elif os.path.isdir(f"/{name}"):
                argv += ["--ro-bind", f"/{name}", f"/{name}"]
        argv += ["--ro-bind", "/etc", "/etc"]
        argv += ["--bind", str(self.root / "data"), "/data"]
        argv += ["--bind", str(self.root / "sdcard"), "/sdcard"]
        argv += ["--bind", str(self.root / "sys"), "/sys"]
        argv += ["--ro-bind", str(self.root / "system"), "/system"]
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        for path in self._python_paths():
            argv += ["--ro-bind", path, path]
        argv += ["--chdir", "/"]
        argv += ["/bin/sh", "-c", command] if command else ["/bin/sh"]
        return argv

    def _python_paths(self) -> list[str]:
        """The venv and the interpreter it points to, read-only at their own paths."""
        paths: list[str] = []
        prefixes: Iterable[str] = (sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(self.python)))
        python_real = os.path.realpath(self.python)
        candidates = [*prefixes, os.path.dirname(os.path.dirname(python_real))]
        for cand in candidates:
            real = os.path.abspath(cand)
            if not os.path.isdir(real) or real in ("/", "/usr") or real.startswith("/usr/"):
                continue
            if any(real == p or real.startswith(p + "/") for p in paths):
                continue
            paths = [p for p in paths if not p.startswith(real + "/")]
            paths.append(real)
        return paths

    def _spawn(self, command: str, *, merge_stderr: bool) -> subprocess.Popen[bytes]:
        env = {
            "PATH": "/system/bin:/usr/bin:/bin",
            "HOME": "/data/local/tmp",
            "TMPDIR": "/data/local/tmp",
            "LANG": "C.UTF-8",
            "ANDROID_DATA": "/data",
            "ANDROID_ROOT": "/system",
        }
        proc = subprocess.Popen(
            self.bwrap_argv(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        with self._lock:
            self._processes.add(proc)
        return proc

    def _reap(self, proc: subprocess.Popen[bytes]) -> int:
        code = proc.wait()
        with self._lock:
            self._processes.discard(proc)
        return code

    def _kill_processes(self) -> None:
        with self._lock:
            procs = list(self._processes)
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.kill()

    @staticmethod
    def _pump(source: Any, sink: Any) -> None:
        fd = source.fileno()
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    break
                sink(data)
        except (OSError, EOFError):
            pass

    def _shell_v2(self, stream: _Stream, command: str) -> None:
        proc = self._spawn(command, merge_stderr=False)
        stream.process = proc

        def packet(kind: int, payload: bytes) -> None:
            stream.write(SHELL_HEADER.pack(kind, len(payload)) + payload)

        def stdin_loop() -> None:
            buf = b""
            try:
                while True:
                    while len(buf) >= SHELL_HEADER.size:
                        kind, length = SHELL_HEADER.unpack(buf[: SHELL_HEADER.size])
                        if len(buf) < SHELL_HEADER.size + length:
                            break
                        payload = buf[SHELL_HEADER.size : SHELL_HEADER.size + length]
                        buf = buf[SHELL_HEADER.size + length :]
                        if kind == SHELL_STDIN and proc.stdin is not None and not proc.stdin.closed:
                            proc.stdin.write(payload)
                        elif kind == SHELL_CLOSE_STDIN and proc.stdin is not None:
                            proc.stdin.close()
                    more = stream.read_some()
                    if not more:
                        break
                    buf += more
            except (OSError, ValueError):
                pass
            finally:
                if proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        proc.stdin.close()

        out = threading.Thread(target=self._pump, args=(proc.stdout, lambda d: packet(SHELL_STDOUT, d)), daemon=True)
        err = threading.Thread(target=self._pump, args=(proc.stderr, lambda d: packet(SHELL_STDERR, d)), daemon=True)
        inp = threading.Thread(target=stdin_loop, daemon=True)
        for thread in (out, err, inp):
            thread.start()
        out.join()
        err.join()
        code = self._reap(proc)
        if code < 0:
            code = 128 + (-code)
        if not stream.closed:
            packet(SHELL_EXIT, bytes([code & 0xFF]))

    def _shell_raw(self, stream: _Stream, command: str) -> None:
        proc = self._spawn(command, merge_stderr=True)
        stream.process = proc

        def stdin_loop() -> None:
            try:
                while True:
                    data = stream.read_some()
                    if not data:
                        break
                    if proc.stdin is not None:
                        proc.stdin.write(data)
            except (OSError, ValueError):
                pass

        inp = threading.Thread(target=stdin_loop, daemon=True)
        inp.start()
        self._pump(proc.stdout, stream.write)
        self._reap(proc)

    # -- sync ---------------------------------------------------------------------------
    def _sync(self, stream: _Stream) -> None:
        while True:
            sid, length = struct.unpack("<4sI", stream.read_exact(8))
            if length > SYNC_PATH_MAX:
                self._sync_fail(stream, "path too long")
                return
            path = stream.read_exact(length).decode("utf-8", "surrogateescape")
            if sid == b"STAT":
                self._sync_stat_v1(stream, path)
            elif sid in (b"STA2", b"LST2"):
                self._sync_stat_v2(stream, sid, path)
            elif sid in (b"LIST", b"LIS2"):
                self._sync_list(stream, path, v2=sid == b"LIS2")
            elif sid == b"SEND":
                spec_path, comma, mode_text = path.rpartition(",")
                if not comma:
                    self._sync_fail(stream, "missing , in ID_SEND_V1")
                    return
                try:
                    mode = _parse_mode(mode_text)
                except ValueError:
                    self._sync_fail(stream, "bad mode")
                    return
                if not self._sync_send(stream, spec_path, mode, dry_run=False):
                    return
            elif sid == b"SND2":
                setup_id, mode, flags = struct.unpack("<4sII", stream.read_exact(12))
                if setup_id != b"SND2":
                    self._sync_fail(stream, "invalid send_v2 setup packet")
                    return
                dry_run = bool(flags & SYNC_FLAG_DRY_RUN)
                flags &= ~SYNC_FLAG_DRY_RUN
                if flags:
                    self._sync_fail(stream, f"unknown flags: {flags} (this device supports no compression)")
                    return
                if not self._sync_send(stream, path, mode, dry_run=dry_run):
                    return
            elif sid == b"RECV":
                if not self._sync_recv(stream, path):
                    return
            elif sid == b"RCV2":
                setup_id, flags = struct.unpack("<4sI", stream.read_exact(8))
                if setup_id != b"RCV2" or flags:
                    self._sync_fail(stream, f"unknown flags: {flags} (this device supports no compression)")
                    return
                if not self._sync_recv(stream, path):
                    return
            elif sid == b"QUIT":
                return
            else:
                self._sync_fail(stream, f"unknown command {int.from_bytes(sid, 'little'):08x}")
                return

    @staticmethod
    def _sync_fail(stream: _Stream, reason: str) -> None:
        data = reason.encode()
        stream.write(b"FAIL" + struct.pack("<I", len(data)) + data)

    def _sync_stat_v1(self, stream: _Stream, path: str) -> None:
        try:
            st = os.lstat(self.host_path(path))
            mode, size, mtime = st.st_mode, st.st_size, int(st.st_mtime)
        except OSError:
            mode = size = mtime = 0
        stream.write(b"STAT" + struct.pack("<III", mode & 0xFFFFFFFF, size & 0xFFFFFFFF, mtime & 0xFFFFFFFF))

    @staticmethod
    def _stat_v2_fields(st: os.stat_result) -> tuple[int, ...]:
        return (
            st.st_dev,
            st.st_ino,
            st.st_mode,
            st.st_nlink,
            st.st_uid,
            st.st_gid,
            st.st_size,
            int(st.st_atime),
            int(st.st_mtime),
            int(st.st_ctime),
        )

    def _sync_stat_v2(self, stream: _Stream, sid: bytes, path: str) -> None:
        host = self.host_path(path)
        try:
            st = os.stat(host) if sid == b"STA2" else os.lstat(host)
            payload = struct.pack("<IQQIIIIQqqq", 0, *self._stat_v2_fields(st))
        except OSError as exc:
            payload = struct.pack("<IQQIIIIQqqq", exc.errno or 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        stream.write(sid + payload)

    def _sync_list(self, stream: _Stream, path: str, *, v2: bool) -> None:
        host = self.host_path(path)
        try:
            names = [".", "..", *sorted(os.listdir(host))]
        except OSError:
            names = []
        for name in names:
            encoded = name.encode("utf-8", "surrogateescape")
            try:
                st = os.lstat(host / name)
            except OSError as exc:
                if not v2:
                    continue
                head = struct.pack("<IQQIIIIQqqqI", exc.errno or 5, *([0] * 10), len(encoded))
                stream.write(b"DNT2" + head + encoded)
                continue
            if v2:
                fields = self._stat_v2_fields(st)
                stream.write(b"DNT2" + struct.pack("<IQQIIIIQqqqI", 0, *fields, len(encoded)) + encoded)
            else:
                head = struct.pack("<IIII", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(encoded))
                stream.write(b"DENT" + head + encoded)
        size = struct.calcsize("<IQQIIIIQqqqI") if v2 else struct.calcsize("<IIII")
        stream.write(b"DONE" + bytes(size))

    def _sync_send(self, stream: _Stream, path: str, mode: int, *, dry_run: bool) -> bool:
        host = self.host_path(path)
        if stat_mod.S_ISLNK(mode):
            return self._sync_send_link(stream, host, dry_run=dry_run)
        perms = mode & 0o777
        perms |= (perms >> 3) & 0o070
        perms |= (perms >> 3) & 0o007
        failure: str | None = None
        out = None
        if not dry_run and self.is_read_only(path):
            failure = "couldn't create file: Read-only file system"
        elif not dry_run:
            try:
                if host.is_symlink() or host.is_file():
                    host.unlink()
                host.parent.mkdir(parents=True, exist_ok=True)
                out = open(host, "wb")  # noqa: SIM115 - closed below on every path
                os.chmod(host, perms)
            except OSError as exc:
                failure = f"couldn't create file: {exc.strerror}"
        mtime = 0
        try:
            while True:
                sid, size = struct.unpack("<4sI", stream.read_exact(8))
                if sid == b"DATA":
                    if size > 4 * SYNC_DATA_MAX:
                        failure = failure or "oversize data message"
                        break
                    data = stream.read_exact(size)
                    if out is not None and failure is None:
                        try:
                            out.write(data)
                        except OSError as exc:
                            failure = f"write failed: {exc.strerror}"
                elif sid == b"DONE":
                    mtime = size
                    break
                else:
                    failure = failure or "invalid data message"
                    break
        finally:
            if out is not None:
                out.close()
        if failure is not None:
            if out is not None:
                with contextlib.suppress(OSError):
                    host.unlink()
            self._sync_fail(stream, failure)
            return False
        if not dry_run:
            with contextlib.suppress(OSError):
                os.utime(host, (mtime, mtime))
        stream.write(b"OKAY" + struct.pack("<I", 0))
        return True

    def _sync_send_link(self, stream: _Stream, host: Path, *, dry_run: bool) -> bool:
        sid, size = struct.unpack("<4sI", stream.read_exact(8))
        if sid != b"DATA" or size > SYNC_DATA_MAX:
            self._sync_fail(stream, "invalid data message: expected ID_DATA")
            return False
        target = stream.read_exact(size).rstrip(b"\0").decode("utf-8", "surrogateescape")
        if not dry_run and self.is_read_only(str(host.relative_to(self.root))):
            self._sync_fail(stream, "symlink failed: Read-only file system")
            return False
        if not dry_run:
            try:
                if host.is_symlink() or host.exists():
                    host.unlink()
                host.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(target, host)
            except OSError as exc:
                self._sync_fail(stream, f"symlink failed: {exc.strerror}")
                return False
        sid, mtime = struct.unpack("<4sI", stream.read_exact(8))
        if sid != b"DONE":
            self._sync_fail(stream, "invalid data message: expected ID_DONE")
            return False
        if not dry_run:
            with contextlib.suppress(OSError, NotImplementedError):
                os.utime(host, (mtime, mtime), follow_symlinks=False)
        stream.write(b"OKAY" + struct.pack("<I", 0))
        return True

    def _sync_recv(self, stream: _Stream, path: str) -> bool:
        try:
            src = open(self.host_path(path), "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            self._sync_fail(stream, f"open failed: {exc.strerror}")
            return False
        with src:
            while True:
                try:
                    data = src.read(SYNC_DATA_MAX)
                except OSError as exc:
                    self._sync_fail(stream, f"read failed: {exc.strerror}")
                    return False
                if not data:
                    break
                stream.write(b"DATA" + struct.pack("<I", len(data)) + data)
        stream.write(b"DONE" + struct.pack("<I", 0))
        return True


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
