"""`harness lab`: the headline multi-device run as a newcomer meets it, end to end, and the lab's lifecycle.

Everything runs as separate `harness` processes, as a user types them: `lab up --detach`, the
printed `harness run --devices pi4,pixel7 ...` twice, `report`, `compare`, `lab down`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.lab.lab import STATE_FILE, LabState, missing_requirements, pid_alive
from tests.conftest import require

pytestmark = [pytest.mark.rig, pytest.mark.slow]

HARNESS = [sys.executable, "-m", "harness.cli"]
# The printed run, made lighter for CI: one backend on the board (the arm64 end-to-end test covers
# onnxruntime there) and the fewest iterations; later options override the printed ones.
# Appended to the printed command (the last --workloads wins): the printed pair without MobileNet v2, whose
# 5 s inferences under emulation made this test the suite's slowest (arm64 e2e runs a network there).
LIGHTER = ["--backends", "tflite", "--min-runs", "2", "--warmup-runs", "0",
           "--workloads", "conv-standard-M32-N64-k3-x112-s1,conv-separable-M32-N64-k3-x112-s1"]


def harness(*args: str, cwd: Path, timeout: float = 900, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, check=False)


def require_lab(board: bool = True) -> None:
    missing = missing_requirements(board=board, phone=True)
    require(not missing, "; ".join(missing))


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (the lab directory): leaks."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found


def assert_all_gone(state: LabState, directory: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (pid_alive(state.pid) or processes_mentioning(str(directory))):
        time.sleep(0.2)
    assert not pid_alive(state.pid)
    assert not processes_mentioning(str(directory))
    for port in (state.board_port, state.adb_server_port, int(state.phone_serial.rsplit(":", 1)[1])
                 if state.phone_serial else None):
        if port:
            assert not port_open(port), f"port {port} still listening"
    assert not (directory / STATE_FILE).exists() and not (directory / "devices.yaml").exists()


def printed_run_command(output: str) -> list[str]:
    line = next(line.strip() for line in output.splitlines() if " run --devices-file " in line)
    argv = shlex.split(line)
    return argv[argv.index("run"):]


def test_headline_run_in_the_lab_end_to_end(tmp_path):
    """lab up, then `harness run --devices pi4,pixel7` twice as printed, report, A/A compare, lab down."""
    require_lab()
    directory = tmp_path / "lab"
    work = tmp_path / "work"  # where the user types the commands: results/ and reports/ land here
    work.mkdir()
    env = {"CONVBENCH_RESULTS": str(work / "results"), "CONVBENCH_REPORTS": str(work / "reports")}
    up = harness("lab", "up", "--detach", "--dir", str(directory), cwd=work, env=env, timeout=3600)
    assert up.returncode == 0, up.stdout + up.stderr
    state = LabState.load(directory)
    assert state is not None and state.ready and pid_alive(state.pid)
    try:
        assert "--devices pi4,pixel7" in up.stdout
        run_args = printed_run_command(up.stdout)
        assert run_args[run_args.index("--workloads") + 1].split(",") == [
            "conv-standard-M32-N64-k3-x112-s1", "conv-separable-M32-N64-k3-x112-s1", "mobilenet_v2-1.0-224"]
        devices_file = run_args[run_args.index("--devices-file") + 1]
        check = harness("devices", "check", "--devices-file", devices_file, "pi4", "pixel7", cwd=work, env=env)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "emulated" in check.stdout

        for _ in range(2):
            run = harness(*run_args, *LIGHTER, cwd=work, env=env, timeout=1200)
            assert run.returncode == 0, run.stdout + run.stderr
            assert "pixel7: tflite" in run.stdout and "pi4: tflite" in run.stdout
        runs = sorted(p for p in (work / "results").iterdir() if p.is_dir())
        assert len(runs) == 2
        for run_dir in runs:
            info = json.loads((run_dir / "run.json").read_text())
            assert info["status"] == "complete"
            records = [json.loads(line) for line in (run_dir / "measurements.jsonl").read_text().splitlines()]
            assert {(r["device"], r["status"]) for r in records} == {("pi4", "ok"), ("pixel7", "ok")}, \
                [(r["job_id"], r.get("error")) for r in records if r["status"] != "ok"]
            assert len(records) == 2 * 2 * 3  # two devices x two workloads x three invocations
            for record in records:
                assert record["device_fingerprint"].get("emulated"), record["device"]

        report = harness("report", "latest", cwd=work, env=env)
        assert report.returncode == 0, report.stdout + report.stderr
        markdown = next((work / "reports").glob("*/report.md")).read_text()
        assert "pi4" in markdown and "pixel7" in markdown and "Emulated device(s)" in markdown

        compare = harness("compare", cwd=work, env=env)
        output = compare.stdout + compare.stderr
        assert compare.returncode == 0, output
        rows = [line for line in output.splitlines() if re.search(r"\b(pi4|pixel7)\b", line)
                and re.search(r"\b(unchanged|regressed|improved|inconclusive)\b", line)]
        assert {device for line in rows for device in ("pi4", "pixel7") if device in line} == {"pi4", "pixel7"}
        assert len(rows) == 4, output  # every job of both devices judged
        assert "no raw samples" not in output and "a verdict needs at least 2" not in output
        # An A/A comparison: no false regression (the gate's calibrated rate is under 1% a row); with three
        # invocations a side some rows stay inconclusive, which is an honest verdict, not a failure.
        assert not [line for line in rows if "regressed" in line], output
        assert all(re.search(r"\[[-+]\d", line) for line in rows), output  # each with its interval
    finally:
        down = harness("lab", "down", "--dir", str(directory), cwd=work, env=env, timeout=120)
    assert down.returncode == 0 and "lab stopped" in down.stdout, down.stdout + down.stderr
    assert_all_gone(state, directory)


def wait_ready(directory: Path, proc: subprocess.Popen[str], timeout: float = 600) -> LabState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = LabState.load(directory)
        if state is not None and state.ready:
            return state
        if proc.poll() is not None:
            pytest.fail(f"lab exited with {proc.returncode}: {proc.communicate()}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("lab not ready in time")


@pytest.mark.parametrize(("sig", "board"), [(signal.SIGINT, False), (signal.SIGTERM, True)])
def test_foreground_lab_stops_everything_on_a_signal(tmp_path, sig, board):
    require_lab(board=board)
    directory = tmp_path / "lab"
    argv = [*HARNESS, "lab", "up", "--dir", str(directory)] + ([] if board else ["--no-board"])
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        state = wait_ready(directory, proc)
        assert (directory / "devices.yaml").exists()
        assert bool(state.board_port) == board and state.phone_serial
        # The phone's sandboxed command is running while the lab is stopped: it must go too.
        adb = subprocess.Popen(["adb", "-P", str(state.adb_server_port), "-s", state.phone_serial, "shell",
                                "sleep 600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
        adb.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"lab stopping ({signal.Signals(sig).name})" in err and "lab stopped" in err
    assert_all_gone(state, directory)


def test_a_second_lab_in_the_same_directory_is_refused_and_down_without_a_lab_says_so(tmp_path):
    require_lab(board=False)
    directory = tmp_path / "lab"
    up = harness("lab", "up", "--detach", "--no-board", "--dir", str(directory), cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    state = LabState.load(directory)
    try:
        again = harness("lab", "up", "--detach", "--no-board", "--dir", str(directory), cwd=tmp_path)
        assert again.returncode == 1 and "already running" in again.stderr
        status = harness("lab", "status", "--dir", str(directory), cwd=tmp_path)
        assert status.returncode == 0 and "--devices pixel7" in status.stdout
    finally:
        harness("lab", "down", "--dir", str(directory), cwd=tmp_path)
    assert_all_gone(state, directory)
    down = harness("lab", "down", "--dir", str(directory), cwd=tmp_path)
    assert down.returncode == 0 and "no lab is running" in down.stdout
    status = harness("lab", "status", "--dir", str(directory), cwd=tmp_path)
    assert status.returncode == 1
