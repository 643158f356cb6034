"""`harness run` against a real OpenSSH server on 127.0.0.1: the runner executes on the far side."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.lab.sshd import SshdServer
from harness.store import read_run
from tests.rigs.ssh_fixtures import require_sshd

pytestmark = [pytest.mark.rig, pytest.mark.slow]

PAIR = "conv-standard-M16-N32-k3-x14-s1,conv-separable-M16-N32-k3-x14-s1"
HOSTILE = "work dir; $(touch /tmp/convbench-pwned) 'q\" `id`"


@pytest.fixture
def board(tmp_path):
    require_sshd()
    server = SshdServer(tmp_path / "sshd")
    server.start()
    yield server
    server.stop()


def devices_file(tmp_path: Path, server: SshdServer, **extra: object) -> Path:
    known_hosts = tmp_path / "known_hosts"
    if not known_hosts.exists():
        known_hosts.write_text(server.known_hosts_line)
    (tmp_path / "ssh_config").write_text("")
    fields = {
        "name": "board", "transport": "ssh", "host": server.host, "port": server.port, "user": server.user,
        "key": str(server.user_key), "known_hosts": str(known_hosts), "ssh_config": str(tmp_path / "ssh_config"),
        "python": sys.executable, "workdir": str(tmp_path / "remote" / HOSTILE),
        "backends": ["onnxruntime", "tflite"],
    }
    fields.update(extra)
    import yaml

    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump({"devices": [fields, {"name": "local", "transport": "local",
                                                          "backends": ["onnxruntime"]}]}))
    return path


def run(*args: str) -> object:
    return CliRunner().invoke(main, ["run", "--repeats", "1", "--max-time", "0.3", "--min-time", "0.05", *args])


def test_run_on_ssh_board_end_to_end(tmp_path, board, results_dir):
    Path("/tmp/convbench-pwned").unlink(missing_ok=True)
    path = devices_file(tmp_path, board)
    result = run("--devices", "board", "--devices-file", str(path), "--workloads", PAIR)
    assert result.exit_code == 0, result.output
    (run_path,) = [p for p in results_dir.iterdir() if p.is_dir()]
    info, records = read_run(run_path)
    assert info["status"] == "complete" and len(records) == 4
    for record in records:
        assert record["status"] == "ok", record.get("error")
        assert record["transport"] == "ssh" and record["output_check"]["status"] == "match"
    assert {r["backend"] for r in records} == {"onnxruntime", "tflite"}
    assert not Path("/tmp/convbench-pwned").exists(), "a remote path was executed by a shell"
    remote = tmp_path / "remote" / HOSTILE
    assert (remote / "runner.pyz").exists() and not list((remote / "runs").iterdir())  # run dir removed
    # A second run re-uses the uploaded artifacts (same content, same remote path).
    cached = sorted(p.stat().st_mtime_ns for p in (remote / "cache").rglob("*.onnx"))
    assert run("--devices", "board", "--devices-file", str(path), "--workloads", PAIR,
               "--backends", "onnxruntime").exit_code == 0
    assert sorted(p.stat().st_mtime_ns for p in (remote / "cache").rglob("*.onnx")) == cached


def test_unknown_host_key_is_refused(tmp_path, board, results_dir):
    (tmp_path / "known_hosts").write_text("")
    path = devices_file(tmp_path, board)
    result = run("--devices", "board", "--devices-file", str(path), "--workloads", PAIR)
    assert result.exit_code == 1  # no job succeeded: the run failed
    info, records = read_run(next(p for p in results_dir.iterdir() if p.is_dir()))
    assert info["status"] == "failed" and records and all(r["status"] == "error" for r in records)
    assert "trust_new_host" in records[0]["error"]


def test_changed_host_key_is_refused_even_with_trust_new_host(tmp_path, board, results_dir):
    path = devices_file(tmp_path, board, trust_new_host=True)
    board.stop()
    board.regenerate_host_key()
    board.start()
    result = run("--devices", "board", "--devices-file", str(path), "--workloads", PAIR)
    assert result.exit_code == 1  # no job succeeded: the run failed
    info, records = read_run(next(p for p in results_dir.iterdir() if p.is_dir()))
    assert info["status"] == "failed" and all(r["status"] == "error" for r in records)
    assert "changed" in records[0]["error"].lower()


def test_board_killed_mid_run_fails_its_jobs_and_the_run_goes_on(tmp_path, board, results_dir):
    path = devices_file(tmp_path, board)
    killer_started = threading.Event()

    def kill_when_measuring() -> None:
        killer_started.set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if list(results_dir.glob("*/measurements.jsonl")) and board.session_processes():
                time.sleep(0.5)
                board.kill()
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_when_measuring, daemon=True)
    killer.start()
    result = CliRunner().invoke(main, ["run", "--repeats", "1", "--devices", "board,local", "--devices-file", str(path),
                                       "--workloads", PAIR, "--max-time", "2", "--min-time", "2",
                                       "--target-ci", "0", "--backends", "onnxruntime"])
    killer.join(timeout=5)
    assert result.exit_code == 0, result.output
    info, records = read_run(next(p for p in results_dir.iterdir() if p.is_dir()))
    assert info["status"] == "complete"
    board_records = [r for r in records if r["device"] == "board"]
    local_records = [r for r in records if r["device"] == "local"]
    assert len(board_records) == 2 and len(local_records) == 2
    assert all(r["status"] == "ok" for r in local_records)
    assert any(r["status"] == "error" for r in board_records)
    failed = [r for r in board_records if r["status"] == "error"]
    assert all(("lost" in r["error"]) or ("failed" in r["error"]) for r in failed), failed


def test_runner_timeout_is_a_job_error(tmp_path, board, results_dir, monkeypatch):
    import backends.ssh as ssh_module

    monkeypatch.setattr(ssh_module, "batch_timeout", lambda policy, items, backend=None: 1.0)
    path = devices_file(tmp_path, board)
    result = CliRunner().invoke(main, ["run", "--repeats", "1",
                                       "--devices", "board", "--devices-file", str(path), "--workloads",
                                       "conv-standard-M16-N32-k3-x14-s1", "--backends", "onnxruntime",
                                       "--max-time", "5", "--min-time", "5", "--target-ci", "0"])
    assert result.exit_code == 1  # its only job failed: the run failed
    _, records = read_run(next(p for p in results_dir.iterdir() if p.is_dir()))
    assert records[0]["status"] == "error" and "timed out" in records[0]["error"]
    deadline = time.monotonic() + 10
    while board.session_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not board.session_processes(), "the timed-out runner is still running on the board"


def test_devices_check_over_ssh(tmp_path, board):
    path = devices_file(tmp_path, board)
    result = CliRunner().invoke(main, ["devices", "check", "board", "--devices-file", str(path)])
    assert result.exit_code == 0, result.output
    assert "board (ssh): usable" in result.output and "onnxruntime" in result.output


def test_ssh_board_waits_to_cool_and_says_so(tmp_path, board, results_dir):
    """The runner on the board reads the board's thermal zones and waits; the console hears it over SSH."""
    zone = tmp_path / "board-sys" / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("71500\n")
    path = devices_file(tmp_path, board, sysfs_root=str(tmp_path / "board-sys"), backends=["onnxruntime"],
                        thermal={"zones": ["cpu-thermal"], "cooldown_c": 60, "max_wait_s": 1})
    result = run("--devices", "board", "--devices-file", str(path), "--workloads", PAIR.split(",")[1])
    assert result.exit_code == 0, result.output
    assert "board: did not cool down within 1 s: cpu-thermal 71.5 \u00b0C > 60 \u00b0C target" in result.output
    (run_path,) = [p for p in results_dir.iterdir() if p.is_dir()]
    _, (record,) = read_run(run_path)
    assert record["status"] == "ok" and record["cooldown_timed_out"] and record["cooldown_target_c"] == 60
    assert 1.0 <= record["cooldown_wait_s"] < 10
