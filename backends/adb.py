"""A client for the user's adb server (through ``adbutils``), plus battery-energy helpers.

Every call goes to the adb server over its socket protocol, the server the ``adb`` command
line uses (``127.0.0.1``, port ``ANDROID_ADB_SERVER_PORT`` or 5037), so devices, their
authorization and ``adb connect`` state are shared with it.  ``adbutils`` speaks the host
protocol (device listing, ``connect``/``disconnect``, transport selection, request framing);
no adb process is started per call.  The ``adb`` executable (path configurable, default from
``PATH``) runs once at most: ``adb start-server`` when nothing listens on the server port, with
the caller's environment, so ``ADB_VENDOR_KEYS`` and friends apply to the server it starts.
(Should the server die between that check and a call, adbutils starts one itself with the
``adb`` it finds on ``PATH`` and this process's environment.)

Errors are typed, by the state the server lists for the device when a call fails:

* ``AdbUnauthorized`` - the phone lists as "unauthorized": someone must accept the
  "Allow USB debugging?" RSA-key prompt on its screen;
* ``AdbOffline`` - the phone is known but offline (cable or Wi-Fi dropped, adbd restarting);
* ``AdbDeviceNotFound`` - no such serial, or no device at all;
* ``AdbTimeout`` - a call took longer than its timeout (its connection is closed);
* ``AdbCommandFailed`` - the operation failed (a push, a pull, a remote command the caller
  required to succeed).

The first three are ``DeviceError``s: the device as a whole is unusable.

``shell()`` returns the remote exit code: on a device that advertises ``shell_v2`` the command
runs under shell protocol v2 (stdout, stderr and the exit code arrive as separate packets); on
one without it, under the legacy ``shell:`` service with the command printing its status on a
marker line.  A command whose stream closes before its status arrives was cut off: the device
went away (``AdbOffline``/``AdbDeviceNotFound`` saying so) or, if it is still listed, the command
failed (``AdbCommandFailed``).

Every remote *shell* argument built here is quoted with ``shlex.quote``; callers who
build their own command lines should use ``quote_args``.  ``push``/``pull`` paths are not
quoted: they travel through the sync protocol literally, not through a shell.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shlex
import shutil
import socket
import stat as stat_mod
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from backends import runner
from backends.base import DeviceError

UNAUTHORIZED_HELP = (
    "the device has not authorized this computer: unlock the phone and accept the "
    "'Allow USB debugging?' prompt for this computer's RSA key (tick 'Always allow'); "
    "if no prompt shows, revoke USB debugging authorizations in Developer options and reconnect"
)
ADBUTILS_HELP = "the adbutils package is missing: pip install 'convbench[android]'"
SERVER_HOST = "127.0.0.1"
SYNC_DATA_MAX = 64 * 1024  # the largest DATA chunk adbd accepts

_EXIT_MARKER = "__CONVBENCH_EXIT__"
_SHELL_PACKET = struct.Struct("<BI")  # shell protocol v2: id, length
_STDOUT, _STDERR, _EXIT, _CLOSE_STDIN = 1, 2, 3, 4


class AdbError(RuntimeError):
    """Something went wrong talking to a device through adb."""

    def __init__(
        self,
        message: str,
        *,
        serial: str | None = None,
        command: Sequence[str] | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.serial = serial
        self.command = list(command or [])
        self.stdout = stdout
        self.stderr = stderr


class AdbNotInstalled(AdbError):
    """The adb executable or the adbutils package cannot be found."""


class AdbUnauthorized(AdbError, DeviceError):
    """The device shows as 'unauthorized': the RSA prompt on the phone was not accepted."""


class AdbOffline(AdbError, DeviceError):
    """The device is known to the adb server but offline."""


class AdbDeviceNotFound(AdbError, DeviceError):
    """No device with that serial (or no device at all) is connected."""


class AdbTimeout(AdbError):
    """An adb call exceeded its timeout."""


class AdbCommandFailed(AdbError):
    """adb ran, but the operation failed."""

    def __init__(self, message: str, *, exit_code: int | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.exit_code = exit_code


def quote_args(argv: Sequence[str]) -> str:
    """A remote shell command line with every argument quoted."""
    return " ".join(shlex.quote(str(arg)) for arg in argv)


def _adbutils() -> Any:
    try:
        import adbutils
    except ImportError:
        raise AdbNotInstalled(ADBUTILS_HELP) from None
    return adbutils


class ShellSession:
    """One remote command on an open adb stream: its output as it arrives, then its exit code.

    ``lines()`` yields ``(stream, line)`` (``"stdout"``/``"stderr"``, newline kept) until the
    command ends; ``exit_code`` is None when the stream closed without a status.  ``close()``
    (from any thread) ends the command: adbd sends it SIGHUP.
    """

    def __init__(self, conn: Any, command: str, v2: bool) -> None:
        self.conn = conn
        self.sock = conn.conn
        self.command = command
        self.v2 = v2
        self.exit_code: int | None = None
        self.output = {"stdout": bytearray(), "stderr": bytearray()}
        self.closed = False
        self._lock = threading.Lock()
        if v2:  # like `adb shell` with stdin from /dev/null
            self.sock.sendall(_SHELL_PACKET.pack(_CLOSE_STDIN, 0))

    def close(self) -> None:
        with self._lock:  # adbutils' close() is not safe to call twice at once
            if self.closed:
                return
            self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.conn.close()

    def __enter__(self) -> ShellSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def text(self, name: str) -> str:
        return self.output[name].decode(errors="replace")

    def _recv(self, deadline: float | None) -> bytes:
        """What arrives next (b"" at the end of the stream); TimeoutError past the deadline."""
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError:  # closed by close(), or reset
            return b""

    def _chunks(self, deadline: float | None) -> Iterator[tuple[str, bytes]]:
        if not self.v2:
            while data := self._recv(deadline):
                yield "stdout", data
            return
        buf = b""
        while True:
            while len(buf) >= _SHELL_PACKET.size:
                kind, length = _SHELL_PACKET.unpack_from(buf)
                end = _SHELL_PACKET.size + length
                if len(buf) < end:
                    break
                payload, buf = buf[_SHELL_PACKET.size : end], buf[end:]
                if kind == _EXIT:
                    self.exit_code = payload[0] if payload else 255
                    return
                if kind in (_STDOUT, _STDERR):
                    yield ("stdout" if kind == _STDOUT else "stderr"), payload
            data = self._recv(deadline)
            if not data:
                return
            buf += data

    def lines(self, deadline: float | None = None) -> Iterator[tuple[str, str]]:
        partial = {"stdout": b"", "stderr": b""}
        for name, data in self._chunks(deadline):
            self.output[name] += data
            *complete, partial[name] = (partial[name] + data).split(b"\n")
            for line in complete:
                yield name, (line + b"\n").decode(errors="replace")
        for name, rest in partial.items():
            if rest:
                yield name, rest.decode(errors="replace")
        if not self.v2:  # the legacy shell: the status is on the marker line
            stdout = self.text("stdout")
            match = re.search(rf"\r?\n{_EXIT_MARKER}(\d+)\r?\n?$", stdout)
            if match is not None:
                self.exit_code = int(match.group(1))
                self.output["stdout"] = bytearray(stdout[: match.start()].encode())


class AdbClient:
    """One device (``serial``) or the server as a whole, through the user's adb server."""

    def __init__(
        self,
        adb_path: str = "adb",
        serial: str | None = None,
        env: Mapping[str, str] | None = None,
        default_timeout: float = 60.0,
    ) -> None:
        resolved = shutil.which(adb_path) if os.sep not in adb_path else adb_path
        if resolved is None or not os.path.exists(resolved):
            raise AdbNotInstalled(
                f"adb executable {adb_path!r} not found: install Android platform-tools "
                "(Debian/Ubuntu: apt-get install adb) or pass its path",
                serial=serial,
            )
        self.adb_path = resolved
        self.serial = serial
        self.env = {**os.environ, **(env or {})}
        self.default_timeout = default_timeout
        self.port = int(self.env.get("ANDROID_ADB_SERVER_PORT") or 5037)
        self._lib = _adbutils()
        self._server = self._lib.AdbClient(host=SERVER_HOST, port=self.port, socket_timeout=default_timeout)
        self._server_checked = False
        self._features: frozenset[str] | None = None

    @property
    def who(self) -> str:
        return self.serial or "the device"

    # -- the server ---------------------------------------------------------------------
    def start_server(self) -> None:
        """``adb start-server`` unless a server listens on the port: the one use of the adb binary."""
        self._server_checked = True
        with contextlib.suppress(OSError), socket.create_connection((SERVER_HOST, self.port), timeout=3):
            return  # something listens: the server (adbutils reports it if not)
        try:
            proc = subprocess.run([self.adb_path, "start-server"], stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, errors="replace", env=self.env, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AdbError(f"cannot start the adb server (port {self.port}): {exc}") from None
        if proc.returncode != 0:
            raise AdbError(f"adb start-server (port {self.port}) failed: {_first_line(proc.stderr + proc.stdout)}")

    @contextlib.contextmanager
    def _calling(self, what: str, timeout: float, *, classify: bool = True) -> Iterator[None]:
        """Turn adbutils' and the socket's exceptions into typed errors (by the device's state
        when ``classify``)."""
        if not self._server_checked:
            self.start_server()
        try:
            yield
        except AdbError:
            raise
        except (self._lib.AdbTimeout, TimeoutError):
            raise AdbTimeout(f"{what} on {self.who} timed out after {timeout:g} s", serial=self.serial) from None
        except (self._lib.AdbError, OSError, EOFError) as exc:
            self._server_checked = False  # the next call checks that the server still listens
            message = f"{what} on {self.who} failed: {exc}"
            raise (self._failure(message) if classify else AdbError(message, serial=self.serial)) from None

    def _listed_state(self) -> str:
        """The device's state in the server's list ('absent' when not listed)."""
        listed = dict(self.devices(timeout=15))
        if self.serial is None:
            return next(iter(listed.values())) if len(listed) == 1 else "absent"
        return listed.get(self.serial, "absent")

    def _state_error(self, state: str, **kwargs: Any) -> AdbError:
        kwargs.setdefault("serial", self.serial)
        if state == "unauthorized":
            return AdbUnauthorized(f"{self.who} is unauthorized: {UNAUTHORIZED_HELP}", **kwargs)
        if state == "offline":
            return AdbOffline(f"{self.who} is offline: check the cable or Wi-Fi connection, then 'adb reconnect'",
                              **kwargs)
        if state == "absent":
            return AdbDeviceNotFound(f"{self.who} not found by the adb server on port {self.port} "
                                     "(`adb devices` does not list it)", **kwargs)
        return AdbError(f"{self.who} is in state {state!r}", **kwargs)

    def _failure(self, message: str) -> AdbError:
        """A typed error from the device's listed state, else ``message``."""
        try:
            state = self._listed_state()
        except AdbError:
            return AdbError(message, serial=self.serial)
        return AdbError(message, serial=self.serial) if state == "device" else self._state_error(state)

    def _host_query(self, service: str, timeout: float) -> str:
        """A host service about this device (``host-serial:SERIAL:service``): its reply."""
        prefix = f"host-serial:{self.serial}" if self.serial else "host"
        with self._calling(service, timeout), self._server.make_connection(timeout=timeout) as conn:
            conn.send_command(f"{prefix}:{service}")
            conn.check_okay()
            return conn.read_string_block()

    def _open(self, service: str, timeout: float) -> Any:
        """A connection to a device service (after ``host:transport``), ready for its bytes."""
        conn = self._server.make_connection(timeout=timeout)
        try:
            conn.send_command(f"host:transport:{self.serial}" if self.serial else "host:transport-any")
            conn.check_okay()
            conn.send_command(service)
            conn.check_okay()
        except BaseException:
            conn.close()
            raise
        return conn

    def devices(self, timeout: float | None = None) -> list[tuple[str, str]]:
        """``[(serial, state), ...]`` as the server lists them (``adb devices``; adbutils' list
        waits at most the client's default timeout)."""
        with self._calling("devices", self._timeout(timeout), classify=False):
            return [(info.serial, info.state) for info in self._server.list()]

    def connect(self, host_port: str, timeout: float | None = None, wait: float = 10.0) -> str:
        """``adb connect host:port``; returns the device state once it settles.

        Raises ``AdbUnauthorized`` when the device needs its RSA prompt accepted and
        ``AdbDeviceNotFound`` when nothing answers at ``host_port``.
        """
        timeout = self._timeout(timeout)
        with self._calling(f"connect {host_port}", timeout, classify=False):
            reply = str(self._server.connect(host_port, timeout=timeout))
        if re.search(r"failed to authenticate", reply, re.I):
            raise AdbUnauthorized(f"{host_port} is unauthorized: {UNAUTHORIZED_HELP}", serial=host_port, stdout=reply)
        if not re.search(r"\bconnected to\b", reply):
            raise AdbDeviceNotFound(f"adb connect {host_port} failed: {_first_line(reply)}", serial=host_port,
                                    stdout=reply)
        deadline = time.monotonic() + wait
        while True:
            state = dict(self.devices()).get(host_port, "unknown")
            if state in ("device", "unauthorized", "recovery", "sideload", "bootloader"):
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if state == "unauthorized":
            raise AdbUnauthorized(f"{host_port} is unauthorized: {UNAUTHORIZED_HELP}", serial=host_port)
        if state == "offline":
            raise AdbOffline(f"{host_port} connected but stays offline", serial=host_port)
        return state

    def disconnect(self, host_port: str | None = None, timeout: float | None = None) -> None:
        target = host_port or self.serial or ""
        with self._calling(f"disconnect {target}", self._timeout(timeout), classify=False):
            self._server.disconnect(target)

    # -- the device -----------------------------------------------------------------------
    def _timeout(self, timeout: float | None) -> float:
        return self.default_timeout if timeout is None else timeout

    def get_state(self, timeout: float | None = None) -> str:
        """'device' (or recovery, bootloader, ...), else raises AdbUnauthorized / AdbOffline / AdbDeviceNotFound."""
        return self._host_query("get-state", self._timeout(timeout)).strip()

    def features(self, timeout: float | None = None) -> frozenset[str]:
        """The transport features both sides support (cached)."""
        if self._features is None:
            text = self._host_query("features", self._timeout(timeout))
            self._features = frozenset(f.strip() for f in text.split(",") if f.strip())
        return self._features

    def open_shell(self, cmd: str, timeout: float | None = None) -> ShellSession:
        """Start ``cmd`` in the device's shell; read it with ``ShellSession.lines()``."""
        timeout = self._timeout(timeout)
        v2 = "shell_v2" in self.features(timeout)
        remote = cmd if v2 else f"( {cmd} ); printf '\\n{_EXIT_MARKER}%d\\n' $?"
        with self._calling("shell", timeout):
            conn = self._open(f"shell,v2,raw:{remote}" if v2 else f"shell:{remote}", timeout)
            return ShellSession(conn, cmd, v2)

    def shell(self, cmd: str, timeout: float | None = None, *, check: bool = False) -> tuple[int, str, str]:
        """Run ``cmd`` in the device's shell; ``(exit_code, stdout, stderr)``.

        ``cmd`` is one remote command line: quote its arguments (``quote_args``).
        With ``check=True`` a non-zero exit raises ``AdbCommandFailed``.
        """
        return self.shell_stream(cmd, None, timeout, check=check)

    def shell_stream(
        self,
        cmd: str,
        on_line: Callable[[str, str], None] | None,
        timeout: float | None = None,
        *,
        check: bool = False,
    ) -> tuple[int, str, str]:
        """Like ``shell()``, but calls ``on_line(stream, line)`` as each line arrives.

        ``stream`` is ``"stdout"`` or ``"stderr"``; lines keep their newline.  Used to time
        what a long remote command prints (benchmark_model's timing lines) while it runs.
        On timeout the stream is closed (adbd sends the command SIGHUP) and ``AdbTimeout``
        carries the output so far.
        """
        timeout = self._timeout(timeout)
        deadline = time.monotonic() + timeout
        with self.open_shell(cmd, timeout) as session:
            try:
                for name, line in session.lines(deadline):
                    if on_line is not None and not line.startswith(_EXIT_MARKER):
                        with contextlib.suppress(Exception):  # a callback bug must not stall the stream
                            on_line(name, line)
            except TimeoutError:
                raise AdbTimeout(f"shell on {self.who} timed out after {timeout:g} s", serial=self.serial,
                                 command=[cmd], stdout=session.text("stdout"), stderr=session.text("stderr")) from None
        code, stdout, stderr = session.exit_code, session.text("stdout"), session.text("stderr")
        if code is None:
            raise self._cut_off(cmd, stdout, stderr)
        if check and code != 0:
            raise AdbCommandFailed(f"{cmd!r} exited with {code} on {self.who}: {_first_line(stderr or stdout)}",
                                   exit_code=code, serial=self.serial, command=[cmd], stdout=stdout, stderr=stderr)
        return code, stdout, stderr

    def _cut_off(self, cmd: str, stdout: str, stderr: str, wait: float = 5.0) -> AdbError:
        """The error for a command whose stream closed without its exit status."""
        deadline = time.monotonic() + wait
        while True:  # the server may list the device for a moment after dropping its streams
            try:
                state = self._listed_state()
            except AdbError:
                state = "unknown"
            if state != "device" or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if state in ("offline", "absent", "unauthorized"):
            why = self._state_error(state)
            return type(why)(f"{self.who} went away while running {cmd!r}; its output is incomplete ({why})",
                             serial=self.serial, stdout=stdout, stderr=stderr)
        return AdbCommandFailed(f"{cmd!r} on {self.who} ended without reporting its exit status (device {state})",
                                serial=self.serial, stdout=stdout, stderr=stderr)

    # -- files (sync protocol) ----------------------------------------------------------------
    def push(self, local: str | os.PathLike[str], remote: str, timeout: float | None = None) -> None:
        """Send one file, keeping its mode and mtime; into ``remote`` when that is a directory.

        The sync requests (STAT, SEND, RECV) are written here on adbutils' connection: its
        ``Sync`` reports a refused push as a bare "FAIL" (dropping adbd's reason, e.g.
        "Read-only file system"), stamps pushed files with the current time, pulls a missing
        path as an empty directory and gives its sync connections no timeout.
        """
        local = os.fspath(local)
        timeout = self._timeout(timeout)
        with open(local, "rb") as source, self._calling(f"push {local} {remote}", timeout):
            info = os.fstat(source.fileno())
            conn = self._open("sync:", timeout)
            try:
                if remote.endswith("/") or stat_mod.S_ISDIR(self._sync_stat(conn, remote)[0]):
                    remote = posixpath.join(remote, os.path.basename(local))
                _sync_request(conn, b"SEND", f"{remote},{stat_mod.S_IFREG | stat_mod.S_IMODE(info.st_mode)}")
                while chunk := source.read(SYNC_DATA_MAX):
                    conn.conn.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                conn.conn.sendall(b"DONE" + struct.pack("<I", int(info.st_mtime) & 0xFFFFFFFF))
                reply, length = struct.unpack("<4sI", conn.read_exact(8))
                if reply != b"OKAY":
                    reason = conn.read_exact(length).decode(errors="replace") if reply == b"FAIL" else repr(reply)
                    raise AdbCommandFailed(f"adb push {local} {remote} failed: {reason}", serial=self.serial)
                _sync_request(conn, b"QUIT", "")
            finally:
                conn.close()

    def pull(self, remote: str, local: str | os.PathLike[str], timeout: float | None = None) -> Path:
        """Fetch a file (``local`` is only written once the whole file arrived)."""
        target = Path(local)
        part = target.with_name(target.name + ".part")
        timeout = self._timeout(timeout)
        try:
            with self._calling(f"pull {remote}", timeout), open(part, "wb") as out:
                conn = self._open("sync:", timeout)
                try:
                    _sync_request(conn, b"RECV", remote)
                    while True:
                        reply, length = struct.unpack("<4sI", conn.read_exact(8))
                        if reply == b"DONE":
                            break
                        data = conn.read_exact(length)
                        if reply != b"DATA":
                            reason = data.decode(errors="replace") if reply == b"FAIL" else repr(reply)
                            raise AdbCommandFailed(f"adb pull {remote} failed: {reason}", serial=self.serial)
                        out.write(data)
                    _sync_request(conn, b"QUIT", "")
                finally:
                    conn.close()
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        part.replace(target)
        return target

    def _sync_stat(self, conn: Any, path: str) -> tuple[int, int, int]:
        _sync_request(conn, b"STAT", path)
        reply, mode, size, mtime = struct.unpack("<4sIII", conn.read_exact(16))
        if reply != b"STAT":
            raise AdbCommandFailed(f"unexpected sync reply {reply!r} to STAT {path}", serial=self.serial)
        return mode, size, mtime

    def stat(self, path: str, timeout: float | None = None) -> tuple[int, int, int] | None:
        """``(size, mode, mtime)`` of a remote path (not following a symlink), or None if it does not exist."""
        timeout = self._timeout(timeout)
        with self._calling(f"stat {path}", timeout):
            conn = self._open("sync:", timeout)
            try:
                mode, size, mtime = self._sync_stat(conn, path)
                _sync_request(conn, b"QUIT", "")
            finally:
                conn.close()
        return None if mode == 0 else (size, mode, mtime)

    # -- conveniences -------------------------------------------------------------------------
    def getprop(self, name: str, timeout: float | None = None) -> str:
        """A system property ('' when unset)."""
        _code, out, _err = self.shell(f"getprop {shlex.quote(name)}", timeout, check=True)
        return out.strip()

    def read_file(self, path: str, timeout: float | None = None) -> str:
        """The text of a remote file (e.g. a sysfs node); AdbCommandFailed if unreadable."""
        _code, out, _err = self.shell(f"cat {shlex.quote(path)}", timeout, check=True)
        return out


def _sync_request(conn: Any, request: bytes, path: str) -> None:
    data = path.encode()
    conn.conn.sendall(request + struct.pack("<I", len(data)) + data)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "no output"


# -- battery energy -----------------------------------------------------------------------


class PowerSample(NamedTuple):
    """One power_supply reading converted to SI units."""

    current_a: float
    voltage_v: float
    watts: float
    current_unit: str  # "uA" | "mA" | "A"
    voltage_unit: str  # "uV" | "mV" | "V"


def power_supply_units(current_raw: float | str, voltage_raw: float | str) -> PowerSample:
    """Raw ``current_now``/``voltage_now`` in SI units, by the runner's one unit rule.

    The rule lives in ``backends/runner/energy.py`` (``power_supply_units``) because boards read
    the same sysfs files through the runner; both sides must agree on what 15000 means.
    """
    return PowerSample(*runner.power_supply_units(current_raw, voltage_raw))


integrate_energy = runner.integrate_power  # joules from time-ordered (t_seconds, watts) samples
