"""The SSH backend against an emulated aarch64 board: the quick suite, end to end.

The board (harness/lab/arm64_board) is an arm64 Debian userland under qemu-user with its
own sshd and sysfs, reached exactly like a Raspberry Pi on the network.  Its timings are
emulation timings, so its fingerprint says ``emulated`` and reports say so.
"""
# ruff: noqa: F811 - fixtures imported for pytest

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from harness import workloads as registry
from harness.cli import main
from harness.store import read_run
from tests.rigs.arm64_fixtures import arm64_board, arm64_board_image  # noqa: F401

pytestmark = [pytest.mark.arm64, pytest.mark.rig, pytest.mark.slow]


def test_quick_suite_on_the_arm64_board(arm64_board, tmp_path, results_dir):
    (tmp_path / "known_hosts").write_text(arm64_board.known_hosts_line + "\n")
    (tmp_path / "ssh_config").write_text("")
    arm64_board.set_temperature(48.5)
    device = {"name": "pi4-emulated", "transport": "ssh", "host": "127.0.0.1", "port": arm64_board.port,
              "user": "root", "key": str(arm64_board.user_key_path), "known_hosts": str(tmp_path / "known_hosts"),
              "ssh_config": str(tmp_path / "ssh_config"), "python": "python3", "workdir": "/tmp/convbench",
              "backends": ["tflite", "onnxruntime"], "energy": {"sensor": "none"}}
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump({"devices": [device]}))
    # Under qemu-user an inference is ~500x slower than native (MobileNet v2: ~5 s), so CI
    # runs the quick suite without its 4.9 GMAC standard-conv twin (~80 s per inference there)
    # and with the fewest iterations; `--suite quick` itself works, only slowly.
    workloads = [w for w in registry.suite("quick") if w != "mobilenet_v1_conv-1.0-224"]
    result = CliRunner().invoke(main, ["run", "--repeats", "1", "--devices", "pi4-emulated",
                                       "--devices-file", str(path),
                                       "--workloads", ",".join(workloads), "--backends", "tflite,onnxruntime",
                                       "--max-time", "0.1", "--min-time", "0", "--min-runs", "2",
                                       "--warmup-runs", "0"])
    assert result.exit_code == 0, result.output
    (run_path,) = [p for p in results_dir.iterdir() if p.is_dir()]
    info, records = read_run(run_path)
    assert info["status"] == "complete" and len(records) == 2 * len(workloads)
    failures = [(r["job_id"], r.get("error"), r.get("problems")) for r in records if r["status"] != "ok"]
    assert not failures, failures
    assert {r["backend"] for r in records} == {"tflite", "onnxruntime"}
    for record in records:
        fingerprint = record["device_fingerprint"]
        assert fingerprint["machine"] == "aarch64" and fingerprint["emulated"]
        assert record["output_check"]["status"] == "match"
        assert record["thermal_before"]["thermal_c"] == {"cpu-thermal": 48.5}
        assert record["thermal_after"]["thermal_c"]
    report = CliRunner().invoke(main, ["report", str(run_path), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "pi4-emulated" in markdown and "emulated" in markdown.lower()
