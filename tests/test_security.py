"""Hostile input against `harness` (issue 11, Security, and two devices.yaml cases of item 9).

* `harness worker` listens on the interface facing the scheduler only, never 0.0.0.0/[::], and
  without TLS refuses anything beyond loopback unless `--insecure`: checked on a real Dask
  scheduler and a real `harness worker` process by listing its listening sockets from /proc.
* A devices.yaml `host` cannot reach a shell through the user's ssh config (`Match exec "... %h"`,
  the class of OpenSSH CVE-2023-51385).
* YAML resource attacks (alias bomb, recursive alias, deep nesting, huge file) are refused fast
  with a clear error instead of hanging, tracing back or eating memory.

Everything runs through the CLI as a user types it, in a subprocess with a timeout where a
regression would hang.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main
from tests.conftest import ROOT, require

HARNESS = [sys.executable, "-m", "harness.cli"]


def harness(*args: str, cwd: Path | None = None, timeout: float = 60) -> tuple[int, str, float]:
    """(exit code, stdout+stderr, seconds) of `harness ARGS` in a fresh process."""
    started = time.monotonic()
    try:
        done = subprocess.run([*HARNESS, *args], cwd=cwd or ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`harness {' '.join(args)}` still running after {timeout:g}s", pytrace=False)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def first_line(output: str) -> str:
    return next((line for line in output.splitlines() if line.strip()), "")


# ------------------------------------------------------------------ YAML resource attacks


def billion_laughs(path: Path) -> Path:
    """The classic alias bomb: 9 levels of 9 aliases, 9**9 (387 million) strings from ~400 bytes."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for parent, child in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{child}: &{child} [{','.join([f'*{parent}'] * 9)}]")
    lines.append("devices: [*i]")
    path.write_text("\n".join(lines) + "\n")
    assert len(path.read_bytes()) < 420
    return path


def test_alias_bomb_is_refused_fast(tmp_path: Path) -> None:
    bomb = billion_laughs(tmp_path / "devices.yaml")
    code, output, _ = harness("devices", "list", "--devices-file", str(bomb), timeout=30)
    assert code == 2, output
    assert first_line(output).startswith(f"error: {bomb}:"), output
    assert "YAML aliases" in output and "refused" in output and "Traceback" not in output
    # In-process, without the interpreter's start-up: well under a second.
    from harness.devices import DevicesFileError, load_devices

    started = time.perf_counter()
    with pytest.raises(DevicesFileError):
        load_devices(bomb)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("text", [
    "devices: &a [*a]\n",
    "devices: &a {x: *a}\n",
    "devices:\n  - &d {name: x, transport: local, thermal: {zones: *d}}\n",
])
def test_recursive_alias_is_an_error_not_a_traceback(tmp_path: Path, text: str) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    code, output, _ = harness("devices", "list", "--devices-file", str(path), timeout=30)
    assert code == 2, output
    assert first_line(output).startswith(f"error: {path}:"), output
    assert "contains it" in output and "RecursionError" not in output and "Traceback" not in output


@pytest.mark.parametrize("text", [
    "devices: " + "[" * 200_000 + "\n",  # flow style: PyYAML would recurse out of stack
    "devices:\n" + "".join("  " * depth + "a:\n" for depth in range(1, 80)),  # block style
])
def test_deep_nesting_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    code, output, _ = harness("devices", "list", "--devices-file", str(path), timeout=30)
    assert code == 2, output
    assert first_line(output).startswith(f"error: {path}:"), output
    assert ("nested" in output or "nesting" in output) and "Traceback" not in output


def test_huge_devices_file_is_refused_before_parsing(tmp_path: Path) -> None:
    from harness.devices import MAX_FILE_BYTES

    entry = b"  - {name: dNNNNNNNN, transport: local, backends: [torch], threads: [1, 2, 4], description: padding}\n"
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"devices:\n" + entry * (13_000_000 // len(entry)))  # 13 MB: minutes and GBs in PyYAML
    code, output, seconds = harness("devices", "list", "--devices-file", str(huge), timeout=30)
    assert code == 2, output
    assert first_line(output).startswith(f"error: {huge}: larger than 1024 KiB"), output
    assert seconds < 15  # the interpreter's start-up only; parsing it took minutes
    just_over = tmp_path / "just-over.yaml"
    just_over.write_bytes(b"devices:\n  - {name: local, transport: local}\n#" + b"x" * MAX_FILE_BYTES)
    code, output, _ = harness("devices", "list", "--devices-file", str(just_over), timeout=30)
    assert code == 2 and "larger than 1024 KiB" in output, output


def test_ordinary_files_keep_file_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text("base: &base {transport: local, backends: [onnxruntime]}\n"
                    "devices:\n"
                    "  - {name: a, transport: local}\n"
                    "  - name: b\n"
                    "    transport: local\n"
                    "    threads: [1, zero]\n")
    code, output, _ = harness("devices", "list", "--devices-file", str(path), timeout=30)
    assert code == 2 and first_line(output) == (f"error: {path}:6: threads: expected a list of positive integers, "
                                                 "got [1, 'zero']"), output


# ------------------------------------------------------------------ devices.yaml cases of item 9


def test_unknown_energy_field_is_a_file_line_error(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text("devices:\n"
                    "  - name: local\n"
                    "    transport: local\n"
                    "    energy: {sensor: auto, idel_seconds: 5}\n"
                    "  - name: board\n"
                    "    transport: ssh\n"
                    "    host: pi4.lab\n"
                    "    energy:\n"
                    "      sensor: hwmon\n"
                    "      path: /sys/class/hwmon/hwmon2\n"
                    "      senosr: ina3221\n")
    code, output, _ = harness("devices", "list", "--devices-file", str(path), timeout=30)
    assert code == 2, output
    assert f"{path}:4: energy.idel_seconds: unknown field of `energy`; expected one of sensor, path" in output
    assert f"{path}:11: energy.senosr: unknown field of `energy`" in output
    path.write_text("devices:\n  - {name: local, transport: local, energy: {sensor: hwmon, path: /sys/x}}\n")
    code, output, _ = harness("devices", "list", "--devices-file", str(path), timeout=30)
    assert code == 0, output


@pytest.mark.parametrize("text", ["devices: []\n", "# all commented out\ndevices:\n# - name: local\n"])
def test_a_devices_file_without_devices_says_so(tmp_path: Path, text: str, results_dir: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    code, output, _ = harness("devices", "list", "--devices-file", str(path), timeout=30)
    assert code == 2, output
    assert first_line(output).startswith(f"error: {path}:") and "declares no devices" in output, output
    result = CliRunner().invoke(main, ["run", "--repeats", "1", "--devices-file", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}" in result.output and "declares no devices" in result.output
    assert "none installed" not in result.output


# ------------------------------------------------------------------ a hostile `host`


def require_match_exec() -> None:
    try:
        import invoke  # noqa: F401 - paramiko runs `Match exec` through invoke
        import paramiko  # noqa: F401
    except ImportError:
        require(False, "paramiko and invoke are needed for ssh_config `Match exec`: pip install -e '.[ssh]' invoke")


HOSTILE_CONFIG = 'Match exec "test %h = trusted-board"\n    Port 1\n'


def test_hostile_host_never_reaches_the_ssh_config(tmp_path: Path) -> None:
    """`host: "x;touch PWNED;#"` with `Match exec "test %h = ..."` in the user's ssh config."""
    require_match_exec()
    config = tmp_path / "ssh_config"
    config.write_text(HOSTILE_CONFIG)
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n"
                       "  - name: board\n"
                       "    transport: ssh\n"
                       '    host: "x;touch PWNED;#"\n'
                       f"    ssh_config: {config}\n"
                       "    connect_timeout: 2\n")
    code, output, _ = harness("devices", "check", "board", "--devices-file", str(devices), cwd=tmp_path)
    assert not (tmp_path / "PWNED").exists(), "the host ran a local command through the ssh config"
    assert code == 2, output
    assert first_line(output).startswith(f"error: {devices}:4: host: 'x;touch PWNED;#' is not a hostname"), output
    code, output, _ = harness("run", "--repeats", "1",
                              "--devices", "board", "--devices-file", str(devices), cwd=tmp_path)
    assert not (tmp_path / "PWNED").exists() and code == 2 and f"{devices}:4: host:" in output, output


def test_hostile_host_refused_by_the_connection_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever builds an SshTarget (the Python API, a cluster task), the host is checked first."""
    require_match_exec()
    from backends.ssh_connection import SshConfigError, SshConnection, SshTarget

    config = tmp_path / "ssh_config"
    config.write_text(HOSTILE_CONFIG)
    monkeypatch.chdir(tmp_path)
    for host in ("x;touch PWNED;#", "$(touch PWNED)", "`touch PWNED`", "-oProxyCommand=touch PWNED",
                 "a b", "x%h", "x\ntouch PWNED"):
        with pytest.raises(SshConfigError, match="is not a hostname"):
            SshConnection(SshTarget(host=host, ssh_config=str(config), connect_timeout=2))
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(("field", "value"), [
    ("host", "$(touch PWNED)"), ("host", "-oProxyCommand=touch PWNED"), ("host", "pi4 lab"), ("host", "pi4%h"),
    ("host", "[::1]"), ("user", "pi;touch PWNED"), ("user", "-l"), ("user", "pi %u"),
])
def test_host_and_user_are_validated_with_file_and_line(tmp_path: Path, field: str, value: str) -> None:
    from harness.devices import DevicesFileError, load_devices

    options = {"host": "pi4.lab", "user": "pi", field: value}
    path = tmp_path / "devices.yaml"
    path.write_text("devices:\n  - name: board\n    transport: ssh\n"
                    + "".join(f"    {k}: {json.dumps(v)}\n" for k, v in options.items()))
    line = 4 if field == "host" else 5
    with pytest.raises(DevicesFileError, match=rf"devices.yaml:{line}: {field}: "):
        load_devices(path)


@pytest.mark.parametrize("host", ["pi4.lab", "trusted-board", "pi_4", "10.0.0.7", "fe80::1", "::1",
                                  "board-01.lab.example.org"])
def test_hostnames_addresses_and_aliases_are_accepted(tmp_path: Path, host: str) -> None:
    from harness.devices import load_devices

    path = tmp_path / "devices.yaml"
    path.write_text(f"devices:\n  - {{name: board, transport: ssh, host: '{host}', user: pi.user-1}}\n")
    assert load_devices(path)["board"].option("host") == host


@pytest.mark.rig
def test_an_alias_still_works_through_match_exec(tmp_path: Path) -> None:
    """The same kind of config keeps working for a legitimate alias (a real sshd on 127.0.0.1)."""
    require_match_exec()
    from harness.lab.sshd import SshdServer
    from tests.rigs.ssh_fixtures import require_sshd

    require_sshd()
    server = SshdServer(tmp_path / "sshd").start()
    try:
        config = tmp_path / "ssh_config"
        config.write_text(f'Match exec "test %h = trusted-board"\n    HostName {server.host}\n    Port {server.port}\n')
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(server.known_hosts_line)
        device = {"name": "board", "transport": "ssh", "host": "trusted-board", "user": server.user,
                  "key": str(server.user_key), "known_hosts": str(known_hosts), "ssh_config": str(config),
                  "python": sys.executable, "workdir": str(tmp_path / "remote"), "backends": ["onnxruntime"]}
        devices = tmp_path / "devices.yaml"
        devices.write_text(json.dumps({"devices": [device]}))  # JSON is YAML
        code, output, _ = harness("devices", "check", "board", "--devices-file", str(devices), cwd=tmp_path,
                                  timeout=120)
        assert code == 0 and first_line(output) == "board (ssh): usable", output
    finally:
        server.stop()


# ------------------------------------------------------------------ harness worker


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state held by ``pid`` or its descendants."""
    pids, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in pids:
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == parent:
                    pids.add(int(entry.name))
                    frontier.append(int(entry.name))
    inodes = set()
    for each in pids:
        with_fds = Path(f"/proc/{each}/fd")
        try:
            fds = list(with_fds.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def local_devices_file(folder: Path) -> Path:
    path = folder / "devices.yaml"
    path.write_text("devices:\n  - {name: here, transport: local, backends: [onnxruntime], energy: none}\n")
    return path


def start_worker(workdir: Path, scheduler: str, *extra: str):  # -> tests.test_cluster.Proc
    from tests.test_cluster import Proc

    proc = Proc("worker", [*HARNESS, "worker", "--scheduler", scheduler, "--devices-file",
                           str(local_devices_file(workdir)), *extra], workdir / "worker.log",
                env={"CONVBENCH_WORKER_CACHE": str(workdir / "worker-cache")}).start()
    return proc


def start_scheduler_on(workdir: Path, host: str):  # -> (Proc, address)
    from tests.test_cluster import start_scheduler

    return start_scheduler(workdir, host=host)


def lan_address() -> str | None:
    """This host's address on its default route, if it has one that is not loopback."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("198.51.100.1", 9))  # TEST-NET-2; a UDP connect sends nothing
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


@pytest.fixture
def distributed_available() -> None:
    from tests.test_cluster import require_distributed

    require_distributed()


@pytest.mark.rig
@pytest.mark.slow
def test_worker_listens_on_the_scheduler_interface_only(tmp_path: Path, distributed_available: None) -> None:
    from tests.test_cluster import READY

    scheduler, address = start_scheduler_on(tmp_path, "127.0.0.1")
    worker = None
    try:
        worker = start_worker(tmp_path, address)  # no --host: the default must be safe
        worker_address = worker.wait_for(READY, timeout=120).group(1)
        listeners = listening_sockets(worker.popen.pid)
        assert len(listeners) >= 2, listeners  # the worker's comm and its HTTP server (/health, /metrics)
        assert all(host == "127.0.0.1" for host, _ in listeners), (
            f"the worker listens beyond the scheduler's interface: {listeners}")
        assert worker_address.startswith("tcp://127.0.0.1:")
    finally:
        if worker is not None:
            worker.stop()
        scheduler.stop()


@pytest.mark.rig
@pytest.mark.slow
def test_insecure_worker_on_a_lan_listens_on_that_interface_only(tmp_path: Path,
                                                                  distributed_available: None) -> None:
    from tests.test_cluster import READY

    lan = lan_address()
    if lan is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    scheduler, address = start_scheduler_on(tmp_path, lan)
    worker = None
    try:
        code, output, _ = harness("worker", "--scheduler", address, "--devices-file",
                                  str(local_devices_file(tmp_path)), timeout=60)
        assert code == 2 and "without TLS" in output and "--insecure" in output, output
        worker = start_worker(tmp_path, address, "--insecure")
        worker.wait_for(READY, timeout=120)
        listeners = listening_sockets(worker.popen.pid)
        assert listeners and all(host == lan for host, _ in listeners), listeners
    finally:
        if worker is not None:
            worker.stop()
        scheduler.stop()


def test_worker_refuses_a_lan_scheduler_without_tls(tmp_path: Path, distributed_available: None) -> None:
    code, output, _ = harness("worker", "--scheduler", "tcp://198.51.100.7:8786", "--devices-file",
                              str(local_devices_file(tmp_path)), timeout=60)
    assert code == 2, output
    line = first_line(output)
    assert line.startswith("error: refusing to join tcp://198.51.100.7:8786 without TLS"), output
    assert "--tls-ca" in line and "--insecure" in line
    assert "device here" not in output  # refused before anything else is done


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", ""])
def test_worker_refuses_to_listen_on_every_interface(tmp_path: Path, host: str, distributed_available: None) -> None:
    code, output, _ = harness("worker", "--scheduler", "tcp://127.0.0.1:8786", "--host", host, "--devices-file",
                              str(local_devices_file(tmp_path)), timeout=60)
    assert code == 2, output
    assert "would listen on every interface" in first_line(output), output
