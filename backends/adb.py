"""A small client around the user's ``adb`` executable, plus battery-energy helpers.

Everything goes through the real ``adb`` binary (path configurable, default from
``PATH``) with the caller's environment, so ``ANDROID_ADB_SERVER_PORT``,
``ADB_VENDOR_KEYS`` and friends apply as they do on the command line.

Errors are typed:

* ``AdbUnauthorized`` - the phone lists as "unauthorized": someone must accept the
  "Allow USB debugging?" RSA-key prompt on its screen;
* ``AdbOffline`` - the phone is known but offline (cable or Wi-Fi dropped, adbd restarting);
* ``AdbDeviceNotFound`` - no such serial, or no device at all;
* ``AdbTimeout`` - an adb call took longer than its timeout (the adb process is killed);
* ``AdbCommandFailed`` - adb ran but the operation failed (a push, a pull, a remote
  command the caller required to succeed).

The first three are ``DeviceError``s: the device as a whole is unusable.

``shell()`` returns the remote exit code: modern devices advertise the ``shell_v2``
feature and ``adb shell`` exits with the remote command's status.  On a device without
``shell_v2`` the command is wrapped to print its status on a marker line instead.  An adb
client (at least 29.x) exits 0 with truncated output when the device disappears in the
middle of a command, so every ``shell()`` confirms afterwards that the device is still
online and raises ``AdbOffline``/``AdbDeviceNotFound`` if it is not.

Every remote *shell* argument built here is quoted with ``shlex.quote``; callers who
build their own command lines should use ``quote_args``.  ``push``/``pull`` paths are not
quoted: they travel through the sync protocol literally, not through a shell.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from backends import runner
from backends.base import DeviceError

UNAUTHORIZED_HELP = (
    "the device has not authorized this computer: unlock the phone and accept the "
    "'Allow USB debugging?' prompt for this computer's RSA key (tick 'Always allow'); "
    "if no prompt shows, revoke USB debugging authorizations in Developer options and reconnect"
)

_EXIT_MARKER = "__CONVBENCH_EXIT__"


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
    """The adb executable cannot be found."""


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


# adb's own diagnostics, as printed by adb 29 .. 36 (stderr, sometimes stdout).
_UNAUTHORIZED = re.compile(r"\bdevice (?:'[^']*' )?unauthorized\b|failed to authenticate to", re.I)
_OFFLINE = re.compile(r"\bdevice (?:'[^']*' )?offline\b", re.I)
_NOT_FOUND = re.compile(r"\bdevice '[^']*' not found\b|\bno devices(?:/emulators)? found\b|\bdevice not found\b", re.I)
_MORE_THAN_ONE = re.compile(r"more than one (?:device|emulator)", re.I)


class AdbClient:
    """Runs the real ``adb`` for one device (``serial``) or for the server as a whole."""

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
        self._features: frozenset[str] | None = None

    # -- plumbing ---------------------------------------------------------------------
    def _argv(self, args: Sequence[str], *, with_serial: bool = True) -> list[str]:
        argv = [self.adb_path]
        if with_serial and self.serial:
            argv += ["-s", self.serial]
        return argv + [str(a) for a in args]

    def _run(
        self,
        args: Sequence[str],
        timeout: float | None = None,
        *,
        with_serial: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        argv = self._argv(args, with_serial=with_serial)
        timeout = self.default_timeout if timeout is None else timeout
        try:
            return subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                env=self.env,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise AdbTimeout(
                f"adb {' '.join(args[:1])} on {self.serial or 'the adb server'} timed out after {timeout:g} s",
                serial=self.serial,
                command=argv,
                stdout=_text(exc.stdout),
                stderr=_text(exc.stderr),
            ) from None
        except FileNotFoundError as exc:
            raise AdbNotInstalled(f"cannot run adb: {exc}", serial=self.serial, command=argv) from None

    def _raise_for_adb_error(self, proc: subprocess.CompletedProcess[str], argv_tail: Sequence[str]) -> None:
        """Raise a typed error if adb itself (not the remote command) reported a problem."""
        text = f"{proc.stderr}\n{proc.stdout}"
        who = self.serial or "the device"
        kwargs = {"serial": self.serial, "command": self._argv(argv_tail), "stdout": proc.stdout, "stderr": proc.stderr}
        if _UNAUTHORIZED.search(text):
            raise AdbUnauthorized(f"{who} is unauthorized: {UNAUTHORIZED_HELP}", **kwargs)
        if _OFFLINE.search(text):
            raise AdbOffline(f"{who} is offline: check the cable or Wi-Fi connection, then 'adb reconnect'", **kwargs)
        if _NOT_FOUND.search(text):
            raise AdbDeviceNotFound(f"{who} not found by adb ({_first_line(text)})", **kwargs)
        if _MORE_THAN_ONE.search(text):
            raise AdbError(f"more than one device is connected: pass a serial ({_first_line(text)})", **kwargs)

    # -- server-level -------------------------------------------------------------------
    def devices(self, timeout: float | None = None) -> list[tuple[str, str]]:
        """``[(serial, state), ...]`` as listed by ``adb devices``."""
        proc = self._run(["devices"], timeout, with_serial=False)
        if proc.returncode != 0:
            raise AdbError(f"adb devices failed: {_first_line(proc.stderr or proc.stdout)}")
        found: list[tuple[str, str]] = []
        for line in proc.stdout.splitlines():
            line = line.strip()
            if not line or line.startswith(("List of devices", "*")):
                continue
            parts = line.split()
            if len(parts) >= 2:
                found.append((parts[0], parts[1]))
        return found

    def connect(self, host_port: str, timeout: float | None = None, wait: float = 10.0) -> str:
        """``adb connect host:port``; returns the device state once it settles.

        Raises ``AdbUnauthorized`` when the device needs its RSA prompt accepted and
        ``AdbDeviceNotFound`` when nothing answers at ``host_port``.
        """
        proc = self._run(["connect", host_port], timeout, with_serial=False)
        out = f"{proc.stdout}\n{proc.stderr}"
        kwargs = {"serial": host_port, "command": self._argv(["connect", host_port], with_serial=False)}
        if re.search(r"failed to authenticate", out, re.I):
            raise AdbUnauthorized(f"{host_port} is unauthorized: {UNAUTHORIZED_HELP}", stdout=out, **kwargs)
        if proc.returncode != 0 or not re.search(r"\bconnected to\b", out):
            raise AdbDeviceNotFound(f"adb connect {host_port} failed: {_first_line(out)}", stdout=out, **kwargs)
        deadline = time.monotonic() + wait
        state = "unknown"
        while True:
            state = dict(self.devices()).get(host_port, "unknown")
            if state in ("device", "unauthorized", "recovery", "sideload", "bootloader"):
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if state == "unauthorized":
            raise AdbUnauthorized(f"{host_port} is unauthorized: {UNAUTHORIZED_HELP}", **kwargs)
        if state == "offline":
            raise AdbOffline(f"{host_port} connected but stays offline", **kwargs)
        return state

    def disconnect(self, host_port: str | None = None, timeout: float | None = None) -> None:
        target = host_port or self.serial
        args = ["disconnect", target] if target else ["disconnect"]
        self._run(args, timeout, with_serial=False)

    # -- device-level -------------------------------------------------------------------
    def get_state(self, timeout: float | None = None) -> str:
        """'device', or raises AdbUnauthorized / AdbOffline / AdbDeviceNotFound."""
        proc = self._run(["get-state"], timeout)
        if proc.returncode != 0:
            self._raise_for_adb_error(proc, ["get-state"])
            raise AdbError(f"adb get-state failed: {_first_line(proc.stderr or proc.stdout)}", serial=self.serial)
        return proc.stdout.strip()

    def ensure_online(self, timeout: float | None = None) -> None:
        state = self.get_state(timeout)
        if state == "offline":
            raise AdbOffline(f"{self.serial or 'the device'} is offline", serial=self.serial)
        if state == "unauthorized":
            raise AdbUnauthorized(f"{self.serial or 'the device'} is unauthorized: {UNAUTHORIZED_HELP}")

    def features(self, timeout: float | None = None) -> frozenset[str]:
        """The transport features both sides support (cached)."""
        if self._features is None:
            proc = self._run(["features"], timeout)
            if proc.returncode != 0:
                self._raise_for_adb_error(proc, ["features"])
                raise AdbError(f"adb features failed: {_first_line(proc.stderr or proc.stdout)}", serial=self.serial)
            self._features = frozenset(line.strip() for line in proc.stdout.splitlines() if line.strip())
        return self._features

    def shell(self, cmd: str, timeout: float | None = None, *, check: bool = False) -> tuple[int, str, str]:
        """Run ``cmd`` in the device's shell; ``(exit_code, stdout, stderr)``.

        ``cmd`` is one remote command line: quote its arguments (``quote_args``).
        With ``check=True`` a non-zero exit raises ``AdbCommandFailed``.
        """
        v2 = "shell_v2" in self.features(timeout)
        proc = self._run(["shell", self._remote_command(cmd, v2)], timeout)
        return self._finish_shell(cmd, v2, proc.returncode, proc.stdout, proc.stderr, check=check)

    def shell_stream(
        self,
        cmd: str,
        on_line: Callable[[str, str], None],
        timeout: float | None = None,
        *,
        check: bool = False,
    ) -> tuple[int, str, str]:
        """Like ``shell()``, but calls ``on_line(stream, line)`` as each line arrives.

        ``stream`` is ``"stdout"`` or ``"stderr"``; lines keep their newline.  Used to time
        what a long remote command prints (benchmark_model's timing lines) while it runs.
        On timeout the local adb process is killed (which closes the remote shell) and
        ``AdbTimeout`` carries the output so far.
        """
        v2 = "shell_v2" in self.features(timeout)
        timeout = self.default_timeout if timeout is None else timeout
        argv = self._argv(["shell", self._remote_command(cmd, v2)])
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                env=self.env,
                bufsize=1,
            )
        except FileNotFoundError as exc:
            raise AdbNotInstalled(f"cannot run adb: {exc}", serial=self.serial, command=argv) from None
        chunks: dict[str, list[str]] = {"stdout": [], "stderr": []}

        def pump(name: str, source: object) -> None:
            for line in iter(source.readline, ""):  # type: ignore[attr-defined]
                chunks[name].append(line)
                if not line.startswith(_EXIT_MARKER):
                    with contextlib.suppress(Exception):  # a callback bug must not stall the pipe
                        on_line(name, line)

        readers = [threading.Thread(target=pump, args=(name, stream), daemon=True)
                   for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr))]
        for reader in readers:
            reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            for reader in readers:
                reader.join(timeout=5)
            raise AdbTimeout(
                f"adb shell on {self.serial or 'the device'} timed out after {timeout:g} s",
                serial=self.serial,
                command=argv,
                stdout="".join(chunks["stdout"]),
                stderr="".join(chunks["stderr"]),
            ) from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        for reader in readers:
            reader.join(timeout=30)
        stdout, stderr = "".join(chunks["stdout"]), "".join(chunks["stderr"])
        return self._finish_shell(cmd, v2, proc.returncode, stdout, stderr, check=check)

    @staticmethod
    def _remote_command(cmd: str, v2: bool) -> str:
        return cmd if v2 else f"( {cmd} ); printf '\\n{_EXIT_MARKER}%d\\n' $?"

    def _finish_shell(
        self, cmd: str, v2: bool, code: int, stdout: str, stderr: str, *, check: bool
    ) -> tuple[int, str, str]:
        if code != 0 and _looks_like_adb_error(stderr):
            proc = subprocess.CompletedProcess(["shell", cmd], code, stdout, stderr)
            self._raise_for_adb_error(proc, ["shell", cmd])
        # adb (29.x at least) exits 0 with truncated output when the device vanishes
        # in the middle of a command: make sure it is still there.
        self._confirm_online_after(cmd, stdout, stderr)
        if not v2:
            match = re.search(rf"\r?\n{_EXIT_MARKER}(\d+)\r?\n?$", stdout)
            if match is None:
                raise AdbCommandFailed(
                    f"{cmd!r} ended without reporting its exit status", serial=self.serial, stdout=stdout, stderr=stderr
                )
            code = int(match.group(1))
            stdout = stdout[: match.start()]
        if check and code != 0:
            raise AdbCommandFailed(
                f"{cmd!r} exited with {code} on {self.serial or 'the device'}: {_first_line(stderr or stdout)}",
                exit_code=code,
                serial=self.serial,
                command=self._argv(["shell", cmd]),
                stdout=stdout,
                stderr=stderr,
            )
        return code, stdout, stderr

    def _confirm_online_after(self, cmd: str, stdout: str, stderr: str) -> None:
        try:
            self.ensure_online(timeout=15)
        except (AdbOffline, AdbDeviceNotFound) as exc:
            raise type(exc)(
                f"{self.serial or 'the device'} went away while running {cmd!r}; its output is incomplete ({exc})",
                serial=self.serial,
                stdout=stdout,
                stderr=stderr,
            ) from None

    def push(self, local: str | os.PathLike[str], remote: str, timeout: float | None = None) -> None:
        local = os.fspath(local)
        if not os.path.exists(local):
            raise FileNotFoundError(local)
        self._transfer(["push", local, remote], f"adb push {local} {remote}", timeout)

    def pull(self, remote: str, local: str | os.PathLike[str], timeout: float | None = None) -> Path:
        local = os.fspath(local)
        self._transfer(["pull", remote, local], f"adb pull {remote}", timeout)
        return Path(local)

    def _transfer(self, args: list[str], what: str, timeout: float | None) -> None:
        """Run push/pull; adb reports some failures only as "adb: error:" text, exit 0."""
        proc = self._run(args, timeout)
        if proc.returncode != 0 or re.search(r"adb: error:", proc.stdout + proc.stderr):
            self._raise_for_adb_error(proc, args)
            raise AdbCommandFailed(
                f"{what} failed: {_first_line(proc.stderr or proc.stdout)}",
                exit_code=proc.returncode,
                serial=self.serial,
                stdout=proc.stdout,
                stderr=proc.stderr,
            )

    def getprop(self, name: str, timeout: float | None = None) -> str:
        """A system property ('' when unset)."""
        _code, out, _err = self.shell(f"getprop {shlex.quote(name)}", timeout, check=True)
        return out.strip()

    def read_file(self, path: str, timeout: float | None = None) -> str:
        """The text of a remote file (e.g. a sysfs node); AdbCommandFailed if unreadable."""
        _code, out, _err = self.shell(f"cat {shlex.quote(path)}", timeout, check=True)
        return out

    def stat(self, path: str, timeout: float | None = None) -> tuple[int, int, int] | None:
        """``(size, mode, mtime)`` of a remote path, or None if it does not exist."""
        code, out, _err = self.shell(f"stat -c '%s %f %Y' {shlex.quote(path)}", timeout)
        fields = out.split()
        if code != 0 or len(fields) != 3:
            return None
        return int(fields[0]), int(fields[1], 16), int(fields[2])


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "no output"


def _looks_like_adb_error(text: str) -> bool:
    return bool(re.search(r"^(?:adb: )?error: ", text, re.M))


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
