"""One `harness run` across an SSH board, an adb phone and this machine: one run, three devices."""
# ruff: noqa: F811 - fixtures imported for pytest

from __future__ import annotations

import sys

import pytest
import yaml
from click.testing import CliRunner

from harness.cli import main
from harness.lab.sshd import SshdServer
from harness.store import read_run
from tests.rigs.adb_fixtures import adb_device, adb_device_factory, adb_server  # noqa: F401
from tests.rigs.ssh_fixtures import require_sshd
from tests.test_android import device_entry, require_litert

pytestmark = [pytest.mark.rig, pytest.mark.slow]
PAIR = "conv-standard-M16-N32-k3-x14-s1,conv-separable-M16-N32-k3-x14-s1"


def test_ssh_adb_and_local_in_one_run(tmp_path, adb_device, adb_server, results_dir):
    require_sshd()
    require_litert()
    board = SshdServer(tmp_path / "sshd")
    board.start()
    try:
        (tmp_path / "known_hosts").write_text(board.known_hosts_line)
        (tmp_path / "ssh_config").write_text("")
        devices = [
            {"name": "board", "transport": "ssh", "host": board.host, "port": board.port, "user": board.user,
             "key": str(board.user_key), "known_hosts": str(tmp_path / "known_hosts"),
             "ssh_config": str(tmp_path / "ssh_config"), "python": sys.executable,
             "workdir": str(tmp_path / "board"), "backends": ["tflite", "onnxruntime"]},
            device_entry(adb_device, adb_server),
            {"name": "local", "transport": "local", "backends": ["tflite", "onnxruntime"]},
        ]
        path = tmp_path / "devices.yaml"
        path.write_text(yaml.safe_dump({"devices": devices}))
        result = CliRunner().invoke(main, ["run", "--repeats", "1",
                                           "--devices", "board,phone,local", "--devices-file", str(path),
                                           "--workloads", PAIR, "--max-time", "0.3", "--min-time", "0.05"])
        assert result.exit_code == 0, result.output
    finally:
        board.stop()
    (run_path,) = [p for p in results_dir.iterdir() if p.is_dir()]
    info, records = read_run(run_path)
    assert info["status"] == "complete"
    assert [d["name"] for d in info["devices"]] == ["board", "phone", "local"]
    by_device = {}
    for record in records:
        by_device.setdefault(record["device"], []).append(record)
    assert {d: len(r) for d, r in by_device.items()} == {"board": 4, "phone": 2, "local": 4}
    assert all(r["status"] == "ok" for r in records), [(r["job_id"], r.get("error")) for r in records]
    assert {r["transport"] for r in records} == {"ssh", "adb", "local"}
    assert len({r["run_id"] for r in records}) == 1
    # The pair table covers all three devices.
    assert "board / tflite" in result.output and "phone / tflite" in result.output
    assert "local / onnxruntime" in result.output
