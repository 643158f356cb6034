"""Start and stop the lab: the emulated Pi board, the loopback phone, and the devices file naming them.

A lab lives in one directory (default ``./lab``)::

    lab/devices.yaml   pi4, pixel7 and local, for ``harness run --devices-file lab/devices.yaml``
    lab/lab.json       the running lab: its pid, ports and serial (``harness lab down`` reads it)
    lab/lab.log        what a detached lab printed
    lab/board/         the board's keys, sysfs and sshd log;  lab/phone/  the phone's file tree
    lab/adb-home/      the private adb server's HOME (its RSA key stays out of ~/.android)

The phone is threads of the process that started the lab, so a lab lasts as long as that
process: ``harness lab up`` in the foreground until Ctrl-C or SIGTERM, or ``--detach``ed in a
process of its own that ``harness lab down`` stops.  Whatever way it ends, everything it
started is stopped: the board's sshd (also killed by bwrap if this process dies), the phone's
commands and the private adb server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError
from harness.lab.sshd import free_port
from harness.registry import THIS_HOST

DEFAULT_DIR = Path("lab")
STATE_FILE = "lab.json"
DEVICES_FILE = "devices.yaml"
LOG_FILE = "lab.log"
BUILD_LOG = "board-build.log"
BUILD_TIMEOUT_S = 45 * 60
QUIET_BUILD_S = 3.0  # a board image ready within this is a cached one: its build log is not shown
READY_TIMEOUT_S = BUILD_TIMEOUT_S + 300  # a detached lab may have to build the board image first
BOARD_TEMP_C = 45.0
PHONE_TEMP_C = 35.0
PHONE_MODEL = "Pixel 7 (loopback)"
PHONE_EMULATION = "loopback phone: the ADB protocol on 127.0.0.1, models run on this host by LiteRT's interpreter"
# The quick suite's first pair and MobileNet v2: a layer pair and a network, both on every device.
TRY_WORKLOADS = ("conv-standard-M32-N64-k3-x112-s1", "conv-separable-M32-N64-k3-x112-s1", "mobilenet_v2-1.0-224")
# Under qemu-user an inference is ~500x slower than native (MobileNet v2: seconds): few, short
# iterations keep the suggested run to minutes while still giving compare three invocations a job.
TRY_OPTIONS = ("--repeats", "3", "--max-time", "0.5", "--min-time", "0", "--min-runs", "3", "--warmup-runs", "1")

Say = Callable[[str], None]


class LabError(UserError):
    pass


@dataclass
class LabState:
    """What ``lab.json`` holds about a running lab."""

    pid: int
    directory: str
    devices_file: str
    started: float
    board_port: int | None = None
    phone_serial: str | None = None
    adb_server_port: int | None = None
    ready: bool = False

    def save(self, directory: Path) -> None:
        from harness.store import write_json_atomic

        write_json_atomic(directory / STATE_FILE, asdict(self))

    @classmethod
    def load(cls, directory: Path) -> LabState | None:
        try:
            raw = json.loads((directory / STATE_FILE).read_text())
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (OSError, ValueError, TypeError, KeyError):
            return None

    @property
    def alive(self) -> bool:
        return pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not a running lab.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


def missing_requirements(board: bool = True, phone: bool = True) -> list[str]:
    """What this machine lacks to run the lab, each with how to get it."""
    from harness.lab.adb_device import sandbox_available

    missing = []
    system = "run `make lab` (or `sudo sh tools/system-deps.sh`) to install the Debian packages"
    modules: list[tuple[str, str]] = []
    if phone:
        if shutil.which("adb") is None:
            missing.append(f"the adb client (Debian package adb): {system}")
        reason = sandbox_available()
        if reason:
            missing.append(f"{reason}; {system}")
        modules += [("adbutils", "android"), ("ai_edge_litert", "tflite")]
    if board:
        # The image build (harness/lab/arm64_board/build.py) installs and checks its own tools.
        if shutil.which("bwrap") is None:
            missing.append(f"bubblewrap (bwrap): {system}")
        modules += [("paramiko", "ssh"), ("cryptography", "ssh")]
    for module, extra in modules:
        try:
            __import__(module)
        except ImportError:
            missing.append(f"Python package {module}: pip install -e '.[{extra}]' (make setup installs it)")
    return missing


class Lab:
    """The lab's parts, started in order and stopped in reverse; ``stop`` is safe to call twice."""

    def __init__(self, directory: Path, *, board: bool = True, phone: bool = True, say: Say = print) -> None:
        self.directory = directory.resolve()
        self.want_board, self.want_phone = board, phone
        self.say = say
        self.board = None
        self.phone = None
        self.adb_env: dict[str, str] | None = None
        self.state: LabState | None = None
        self._stopped = False

    # -- starting --------------------------------------------------------------------------
    def start(self) -> LabState:
        running = LabState.load(self.directory)
        if running is not None and running.alive and running.pid != os.getpid():
            raise LabError(f"a lab is already running from {self.directory} (pid {running.pid}): "
                           f"use it, or stop it with `harness lab down --dir {self.directory}`")
        missing = missing_requirements(self.want_board, self.want_phone)
        if missing:
            raise LabError("the lab cannot start on this machine:\n  " + "\n  ".join(missing))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.state = LabState(os.getpid(), str(self.directory), str(self.directory / DEVICES_FILE), time.time())
        self.state.save(self.directory)
        try:
            if self.want_board:
                self._start_board()
            if self.want_phone:
                self._start_phone()
            self._write_devices_file()
            self.state.ready = True
            self.state.save(self.directory)
        except BaseException:
            self.stop()
            raise
        return self.state

    def _start_board(self) -> None:
        from harness.lab.arm64_board.board import Arm64Board

        image = self._board_image()
        self.say("starting the emulated Raspberry Pi 4 (arm64 Debian under qemu-user, sshd on 127.0.0.1)")
        board = Arm64Board(image, self.directory / "board", temp_c=BOARD_TEMP_C, hostname="pi4")
        try:
            board.start()
        except Exception as exc:
            board.kill()
            raise LabError(f"the emulated board did not start: {exc}") from None
        self.board = board
        (self.directory / "known_hosts").write_text(board.known_hosts_line + "\n")
        self.state.board_port = board.port
        self.state.save(self.directory)
        self.say(f"  pi4: ssh root@127.0.0.1 -p {board.port} (key {board.user_key_path})")

    def _board_image(self) -> Path:
        """The cached board image, built first if needed (minutes, as root), its progress shown."""
        import harness.lab.arm64_board as package

        script = Path(package.__file__).with_name("build.py")
        log_path = self.directory / BUILD_LOG
        lines: list[str] = []
        started = time.monotonic()
        shown = 0
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    if not line.startswith("IMAGE_DIR="):
                        lines.append(line.rstrip())
                    # A cached image is reused in a second: its log is noise.  A build takes minutes:
                    # show its phases as they come.
                    if time.monotonic() - started > QUIET_BUILD_S:
                        if shown == 0:
                            self.say("building the board image (first time only: several minutes, as root)")
                        for pending in lines[shown:]:
                            self.say("  " + pending)
                        shown = len(lines)
                proc.wait(timeout=BUILD_TIMEOUT_S)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        image = next((line.split("=", 1)[1].strip() for line in log_path.read_text().splitlines()
                      if line.startswith("IMAGE_DIR=")), None)
        if proc.returncode != 0 or image is None:
            hint = "" if os.geteuid() == 0 else " (a first build needs root: run `sudo make lab` once)"
            raise LabError(f"cannot build the board image{hint}; its log is {log_path}:\n  "
                           + "\n  ".join(lines[-15:]))
        if shown == 0:
            self.say(f"board image: {Path(image).parent} (cached)")
        return Path(image)

    def _start_phone(self) -> None:
        from harness.lab.adb_device import LoopbackAdbDevice

        adb = shutil.which("adb")
        assert adb is not None
        home = self.directory / "adb-home"
        home.mkdir(exist_ok=True)
        self.say("starting a private adb server and the loopback phone (the real adb client, ADB protocol on "
                 "127.0.0.1)")
        for _attempt in range(3):  # another process may take the port between choosing and binding it
            port = free_port()
            env = {"ANDROID_ADB_SERVER_PORT": str(port), "HOME": str(home),
                   "ANDROID_USER_HOME": str(home / ".android"), "ANDROID_SDK_HOME": str(home)}
            started = self._adb(adb, env, "start-server", timeout=60)
            if started.returncode == 0:
                break
        else:
            raise LabError(f"cannot start an adb server: {(started.stderr or started.stdout).strip()}")
        self.adb_env = env
        self.state.adb_server_port = port
        self.state.save(self.directory)
        phone_root = self.directory / "phone"
        shutil.rmtree(phone_root, ignore_errors=True)  # a fresh phone each time: nothing stale pushed
        phone = LoopbackAdbDevice(phone_root, props={"ro.product.model": PHONE_MODEL, "ro.product.name": "panther",
                                                     "ro.product.device": "panther",
                                                     "ro.convbench.emulated": PHONE_EMULATION})
        phone.write_sys("class/thermal/thermal_zone0/temp", f"{int(PHONE_TEMP_C * 1000)}\n")
        self.phone = phone.start()
        self.state.phone_serial = phone.serial
        self.state.save(self.directory)
        self._adb(adb, env, "connect", phone.serial, timeout=30)
        deadline = time.monotonic() + 20
        while self._adb_state(adb, env, phone.serial) != "device":
            if time.monotonic() > deadline:
                raise LabError(f"adb did not connect to the loopback phone {phone.serial}: "
                               f"{self._adb(adb, env, 'devices').stdout.strip()}")
            time.sleep(0.2)
        self.say(f"  pixel7: adb -P {port} -s {phone.serial} shell")

    @staticmethod
    def _adb(adb: str, env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([adb, *args], env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)

    def _adb_state(self, adb: str, env: dict[str, str], serial: str) -> str:
        for line in self._adb(adb, env, "devices").stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == serial:
                return parts[1]
        return "absent"

    def _write_devices_file(self) -> None:
        import harness.lab as package

        state = self.state
        assert state is not None
        (self.directory / "ssh_config").write_text("# empty: the lab's board must not pick up ~/.ssh/config\n")
        devices: list[dict] = []
        if self.board is not None:
            devices.append({
                "name": "pi4", "description": "emulated Raspberry Pi 4: arm64 Debian under qemu-user (convbench lab)",
                "transport": "ssh", "host": "127.0.0.1", "port": self.board.port, "user": "root",
                "key": str(self.board.user_key_path), "known_hosts": str(self.directory / "known_hosts"),
                "ssh_config": str(self.directory / "ssh_config"), "python": "python3", "workdir": "/tmp/convbench",
                "backends": ["tflite", "onnxruntime"], "threads": [1], "energy": {"sensor": "none"},
                "thermal": {"zones": ["cpu-thermal"], "cooldown_c": 55, "max_wait_s": 60},
                "machine": THIS_HOST,  # the board is processes of this machine: never measure beside another
            })
        if self.phone is not None:
            devices.append({
                "name": "pixel7", "description": f"{PHONE_EMULATION} (convbench lab)",
                "transport": "adb", "serial": self.phone.serial, "adb": shutil.which("adb"),
                "adb_server_port": state.adb_server_port,
                "benchmark_model": str(Path(package.__file__).with_name("benchmark_model_standin.py")),
                # ExecuTorch's executor_runner, as a stand-in running the .pte with ExecuTorch's Python
                # runtime: add `executorch` to backends (or copy the entry) to measure that backend here.
                "executor_runner": str(Path(package.__file__).with_name("executor_runner_standin.py")),
                "backends": ["tflite"], "delegates": ["xnnpack"], "threads": [1],
                # The loopback phone's battery files hold constants, not readings: no energy figures.
                "energy": {"sensor": "none"},
                "thermal": {"zones": ["cpu-thermal"], "cooldown_c": 40, "max_wait_s": 60},
                "machine": THIS_HOST,
            })
        devices.append({"name": "local", "description": "this machine", "transport": "local",
                        "backends": ["tflite", "onnxruntime"], "threads": [1]})
        header = (f"# Written by `harness lab up` (pid {state.pid}); `harness lab down` stops the lab.\n"
                  "# pi4 and pixel7 are emulations on this machine: their timings are not a real Pi's or\n"
                  "# phone's, and reports say so.  They share this machine's CPUs (`machine: this host`),\n"
                  "# so their jobs take turns with each other and with `local`, never overlapping.\n"
                  "# Real devices go in devices.yaml (see its comments).\n")
        body = yaml.safe_dump({"devices": devices}, sort_keys=False, width=120)
        path = Path(state.devices_file)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(header + body)
        tmp.replace(path)

    # -- stopping --------------------------------------------------------------------------
    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.phone is not None:
            self.say("stopping the loopback phone")
            with contextlib.suppress(Exception):
                self.phone.stop()
            self.phone = None
        if self.adb_env is not None:
            adb = shutil.which("adb")
            if adb:
                with contextlib.suppress(Exception):
                    self._adb(adb, self.adb_env, "kill-server", timeout=30)
            self.adb_env = None
        if self.board is not None:
            self.say("stopping the emulated board")
            with contextlib.suppress(Exception):
                self.board.stop()
            self.board = None
        # The state file is left alone when another lab has taken the directory over since.
        mine = (LabState.load(self.directory) or self.state).pid == os.getpid()
        _remove(self.directory, DEVICES_FILE, *([STATE_FILE] if mine else []))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def harness_command() -> str:
    """How to call this harness from the current directory: ``harness`` when PATH finds this one."""
    script = Path(sys.executable).with_name("harness")
    on_path = shutil.which("harness")
    if on_path and script.exists() and Path(on_path).resolve() == script.resolve():
        return "harness"
    if script.exists():
        with contextlib.suppress(ValueError):
            return str(script.relative_to(Path.cwd()))
        return str(script)
    return f"{sys.executable} -m harness.cli"


def suggested_commands(state: LabState) -> list[str]:
    """What to type next, with paths as the user should type them (relative when under the cwd)."""
    devices_file = Path(state.devices_file)
    with contextlib.suppress(ValueError):
        devices_file = devices_file.relative_to(Path.cwd())
    names = ",".join(n for n, up in (("pi4", state.board_port), ("pixel7", state.phone_serial)) if up)
    harness = harness_command()
    run = [harness, "run", "--devices-file", str(devices_file), "--devices", names,
           "--workloads", ",".join(TRY_WORKLOADS), *TRY_OPTIONS]
    return [
        f"{harness} devices check --devices-file {devices_file}",
        " ".join(run),
        f"{harness} report latest",
        f"{harness} compare   # after a second, identical `run`: an A/A comparison, with verdicts",
    ]


class Stopped(BaseException):
    """A signal asked the lab to stop (BaseException: no ``except Exception`` swallows it)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _stop_signals_handled(handler: Any) -> Iterator[None]:
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_on_signals() -> contextlib.AbstractContextManager[None]:
    """Inside the block SIGINT, SIGTERM and SIGHUP raise ``Stopped``, so cleanup code runs for each."""

    def handler(signum: int, _frame: object) -> None:
        raise Stopped(signal.Signals(signum).name)

    return _stop_signals_handled(handler)


def signals_ignored() -> contextlib.AbstractContextManager[None]:
    """While the lab stops, a second Ctrl-C must not cut the cleanup short and leak a process."""
    return _stop_signals_handled(signal.SIG_IGN)


def serve(lab: Lab, poll_s: float = 1.0) -> str:
    """Keep the lab up until a signal (raised as ``Stopped``) or until the board dies; returns why it ended."""
    while True:
        time.sleep(poll_s)
        if lab.board is not None and not lab.board.running:
            return f"the board's sshd exited (its log: {lab.board.log_path})"


def _remove(directory: Path, *names: str) -> None:
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()


def stop_running(directory: Path, timeout: float = 60.0, say: Say = print) -> bool:
    """SIGTERM the lab running from ``directory`` and wait for it to stop; False when none was running."""
    state = LabState.load(directory.resolve())
    if state is None:
        return False
    if not state.alive:
        _remove(directory, STATE_FILE, DEVICES_FILE)
        say(f"the lab of pid {state.pid} is not running any more (removed its stale state)")
        return False
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(state.pid):
        if time.monotonic() > deadline:
            raise LabError(f"the lab (pid {state.pid}) did not stop within {timeout:.0f} s after SIGTERM; "
                           f"kill it with `kill -9 {state.pid}`")
        time.sleep(0.2)
    return True
