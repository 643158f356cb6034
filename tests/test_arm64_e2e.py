"""The SSH backend against an emulated aarch64 board: the quick suite and the new backends, end to end.

The board (harness/lab/arm64_board) is an arm64 Debian userland under qemu-user with its
own sshd and sysfs, reached exactly like a Raspberry Pi on the network.  Its timings are
emulation timings, so its fingerprint says ``emulated`` and reports say so.

Its default image runs onnxruntime and tflite.  The backends it lacks fail with a record that
says so; those with aarch64 wheels (torch, executorch) run on a second image, built when
$CONVBENCH_ARM64_BACKENDS asks for them (opt-in, see tests/rigs/arm64_fixtures.py).
"""
# ruff: noqa: F811 - fixtures imported for pytest

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from harness import workloads as registry
from harness.cli import main
from harness.store import read_run
from tests.rigs.arm64_fixtures import (  # noqa: F401
    arm64_backends_board,
    arm64_backends_board_image,
    arm64_board,
    arm64_board_image,
    requested_backends,
)

pytestmark = [pytest.mark.arm64, pytest.mark.rig, pytest.mark.slow]

SMALL_CONV = "conv-separable-M8-N8-k3-x8-s1"  # 2 convs, 8x8x8: milliseconds even emulated


def board_devices_file(board, tmp_path, backends: list[str]):
    """A devices.yaml with the board as ``pi4-emulated`` (ssh), running ``backends``."""
    (tmp_path / "known_hosts").write_text(board.known_hosts_line + "\n")
    (tmp_path / "ssh_config").write_text("")
    device = {"name": "pi4-emulated", "transport": "ssh", "host": "127.0.0.1", "port": board.port,
              "user": "root", "key": str(board.user_key_path), "known_hosts": str(tmp_path / "known_hosts"),
              "ssh_config": str(tmp_path / "ssh_config"), "python": "python3", "workdir": "/tmp/convbench",
              "backends": backends, "energy": {"sensor": "none"}}
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump({"devices": [device]}))
    return path


def run_small(path, backends: list[str], workloads: list[str]):
    """``harness run`` of ``workloads`` x ``backends`` on the board with the fewest iterations (its result)."""
    return CliRunner().invoke(main, ["run", "--repeats", "1", "--devices", "pi4-emulated",
                                     "--devices-file", str(path), "--workloads", ",".join(workloads),
                                     "--backends", ",".join(backends), "--max-time", "0.1", "--min-time", "0",
                                     "--min-runs", "2", "--warmup-runs", "0"])


def board_check(path) -> dict:
    """``harness devices check --json`` of the board: what its runner found (runtimes and their errors)."""
    result = CliRunner().invoke(main, ["devices", "check", "pi4-emulated", "--devices-file", str(path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output[result.output.index("{"):])
    return doc.get("pi4-emulated", doc)


def test_quick_workloads_on_the_arm64_board(arm64_board, tmp_path, results_dir):
    arm64_board.set_temperature(48.5)
    path = board_devices_file(arm64_board, tmp_path, ["tflite", "onnxruntime"])
    # Under qemu-user an inference is ~500x slower than native (MobileNet v2: ~5 s; the quick suite's
    # 4.9 GMAC standard-conv twin: ~80 s), so CI runs the quick suite's first standard/separable pair
    # and its network with the most kinds of ops (hard-swish, squeeze-excite) with the fewest
    # iterations; `--suite quick` itself works, only slowly.  The lab test runs MobileNet v2 there.
    quick = registry.suite("quick")
    workloads = [quick[0], quick[1], "mobilenet_v3_large-224"]
    assert set(workloads) <= set(quick)
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


def test_backends_the_default_board_lacks_fail_with_a_clear_record(arm64_board, tmp_path, results_dir):
    """executorch (no torch in the default image) and litert (no aarch64 wheel with CompiledModel's
    options API) are error records naming what is missing, not a crash or a hang."""
    path = board_devices_file(arm64_board, tmp_path, ["executorch", "litert"])
    result = run_small(path, ["executorch", "litert"], [SMALL_CONV])
    assert result.exit_code == 1 and "no job succeeded" in result.output, result.output
    (run_path,) = [p for p in results_dir.iterdir() if p.is_dir()]
    _, records = read_run(run_path)
    by_backend = {r["backend"]: r for r in records}
    assert set(by_backend) == {"executorch", "litert"}, records
    for backend, missing in (("executorch", ("torch", "executorch")), ("litert", ("ai_edge_litert", "litert"))):
        record = by_backend[backend]
        assert record["status"] == "error", record
        assert record["error_kind"] == "runtime_error", record
        assert any(name in record["error"] for name in missing), record["error"]
        assert record["device_fingerprint"]["machine"] == "aarch64", record
    runtimes = board_check(path)["runtimes"]
    assert "version" in runtimes["onnxruntime"] and "version" in runtimes["tflite"], runtimes
    for runtime in ("executorch", "litert", "torch"):
        if runtime in runtimes:  # the runner lists every runtime it knows, with why it is unavailable
            assert "error" in runtimes[runtime] and "version" not in runtimes[runtime], runtimes[runtime]


def test_new_backends_on_the_board_with_their_wheels(arm64_backends_board, tmp_path, results_dir):
    """executorch and torch (eager) on the image that has their aarch64 wheels, through the real SSH
    transport: outputs match the host's reference; litert stays an error record."""
    backends = [b for b in requested_backends() if b in ("executorch", "torch", "torch-compile")]
    path = board_devices_file(arm64_backends_board, tmp_path, [*backends, "litert"])
    runtimes = board_check(path)["runtimes"]
    for backend in backends:
        assert "version" in runtimes[backend], runtimes[backend]
    result = run_small(path, [*backends, "litert"], [SMALL_CONV])
    assert result.exit_code == 0, result.output
    (run_path,) = [p for p in results_dir.iterdir() if p.is_dir()]
    _, records = read_run(run_path)
    by_backend = {r["backend"]: r for r in records}
    assert set(by_backend) == {*backends, "litert"}, records
    for backend in backends:
        record = by_backend[backend]
        assert record["status"] == "ok", (record.get("error"), record.get("traceback"))
        assert record["output_check"]["status"] == "match", record["output_check"]
        assert record["device_fingerprint"]["machine"] == "aarch64" and record["device_fingerprint"]["emulated"]
        assert record["runtime_version"], record
    if "executorch" in backends:
        assert by_backend["executorch"]["runtime_version"] == "1.5.1"
        assert by_backend["executorch"]["provider"] == "xnnpack"
    assert by_backend["litert"]["status"] == "error"
