"""`harness calibrate` and the ceilings API: real runtimes, the real sshd rig and the loopback phone.

Every ceiling is checked against something measured independently in the same test: the
compute ceiling against a bare loop over the same onnxruntime / LiteRT model, the streaming
bandwidth against numpy copying a buffer of the same size.
"""
# ruff: noqa: F811 - the fixtures are imported here, pytest passes them back as arguments

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from harness import calibration
from harness import workloads as registry
from harness.calibration import Ceiling, ceiling_for, load_ceilings
from harness.cli import main
from harness.cost import network_cost
from harness.workloads.conv import WorkloadIdError
from tests.rigs.adb_fixtures import (  # noqa: F401
    AdbServer,
    ConnectedDevice,
    adb_device,
    adb_device_factory,
    adb_processes,
    adb_server,
)

SMALL = "conv-separable-M8-N8-k3-x8-s1"


def calibrate(*args: str) -> object:
    return CliRunner().invoke(main, ["calibrate", *args], catch_exceptions=False)


def calibration_runs(results: Path) -> list[Path]:
    runs = results / "calibrations" / "runs"
    return sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []


def median_loop(call, seconds: float = 1.5) -> float:
    """The median of a bare loop of calls: the independent reference."""
    for _ in range(3):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# -- the kernels and the arithmetic ------------------------------------------------------------


def test_calibration_kernels_are_workloads_with_the_costs_they_claim():
    conv = network_cost(registry.get(calibration.COMPUTE_WORKLOAD))
    assert conv.macs == 256 * 256 * 9 * 28 * 28 and conv.intensity > 100  # compute-bound everywhere
    stream = network_cost(registry.get(calibration.STREAM_WORKLOAD))
    assert stream.macs == 4096 * 4096 and abs(stream.bytes_fp32 / (4 * 4096 * 4096) - 1) < 0.01  # 64 MiB of weights
    assert stream.intensity < 0.26
    assert network_cost(registry.get(calibration.CACHE_WORKLOAD)).bytes_fp32 < 4.1 * 2 ** 20
    assert registry.canonical("calib-gemv-N0512") == "calib-gemv-N512"
    for bad in ("calib-gemv-N0", "calib-conv-C8-k2-x8", "calib-nothing"):
        with pytest.raises(WorkloadIdError):
            registry.get(bad)


def test_ceiling_roofline_arithmetic():
    ceiling = Ceiling("dev", "fp", "onnxruntime", 1, None, "1.0", peak_macs_per_s=40e9, stream_bytes_per_s=10e9,
                      cache_bytes_per_s=40e9, sources={}, measured_at="now")
    assert ceiling.ridge_intensity == 4.0
    assert ceiling.attainable_macs_per_s(1.0) == 10e9 and ceiling.attainable_macs_per_s(100) == 40e9
    assert ceiling.attainable_macs_per_s(0.5, resident=True) == 20e9
    assert ceiling.roofline_seconds(40e9, 1e9) == 1.0  # compute-bound
    assert ceiling.roofline_seconds(1e9, 20e9) == 2.0 and ceiling.roofline_seconds(1e9, 20e9, resident=True) == 0.5
    no_cache = Ceiling("dev", "fp", "tflite", 1, None, None, 40e9, 10e9, None, {}, "now")
    assert no_cache.roofline_seconds(1e9, 20e9, resident=True) == 2.0  # falls back to the stream roof


def test_int8_rows_get_the_int8_compute_roof_and_old_ceilings_are_measured_again():
    ceiling = Ceiling("dev", "fp", "onnxruntime", 1, None, "1.0", 40e9, 10e9, None, {}, "now",
                      int8_peak_macs_per_s=90e9)
    ceilings = {ceiling.key: ceiling}
    row = {"device_fingerprint_id": "fp", "backend": "onnxruntime", "threads": 1}
    assert ceiling_for({**row, "workload_id": "conv-standard-M8-N8-k3-x8-s1"}, ceilings) is ceiling
    int8 = ceiling_for({**row, "workload_id": "conv-standard-M8-N8-k3-x8-s1-int8"}, ceilings)
    assert int8.peak_macs_per_s == 90e9 and int8.stream_bytes_per_s == 10e9  # memory roofs are per byte
    assert ceiling_for({**row, "precision": "int8", "workload_id": "x"}, ceilings).peak_macs_per_s == 90e9
    before_int8 = Ceiling("dev", "fp", "onnxruntime", 1, None, "1.0", 40e9, 10e9, None, {}, "now")
    assert ceiling_for({**row, "workload_id": "mobilenet_v2-1.0-224-int8"}, {before_int8.key: before_int8}) is None
    fp32_only = Ceiling("dev", "fp", "torch", 1, None, "2.13", 40e9, 10e9, None, {}, "now")
    failed = Ceiling("dev", "fp", "tflite", 1, None, "2.3", 40e9, 10e9, None,
                     {"compute_int8": {"error": "export failed"}}, "now")
    assert calibration._lacks_int8(before_int8) and not calibration._lacks_int8(ceiling)
    assert not calibration._lacks_int8(fp32_only) and not calibration._lacks_int8(failed)


def test_damaged_calibration_file_is_skipped_with_a_warning(tmp_path, capsys):
    good = Ceiling("dev", "fp1", "onnxruntime", 2, None, "1.0", 40e9, 10e9, None, {}, "now")
    calibration.save_ceiling(tmp_path, good)
    (tmp_path / "calibrations" / "fp1" / "tflite-t1.json").write_text("{not json")
    (tmp_path / "calibrations" / "fp2").mkdir()
    (tmp_path / "calibrations" / "fp2" / "onnxruntime-t1.json").write_text(json.dumps({"device": "d"}))
    assert load_ceilings(tmp_path) == {("fp1", "onnxruntime", 2, None): good}
    assert capsys.readouterr().err.count("not a usable calibration") == 2
    # A pandas row (NaN where a record had no delegate) and a record both find it.
    assert ceiling_for({"device_fingerprint_id": "fp1", "backend": "onnxruntime", "threads": 2.0,
                        "requested_delegate": float("nan"), "delegate": "CPUExecutionProvider"},
                       load_ceilings(tmp_path)) == good
    assert ceiling_for({"device_fingerprint": {"id": "fp1"}, "backend": "onnxruntime", "threads": 1},
                       load_ceilings(tmp_path)) is None


# -- the local device -----------------------------------------------------------------------------


@pytest.mark.slow
def test_local_calibration_matches_independent_references_and_is_reused(results_dir):
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    from harness.artifacts import get_artifact

    for workload in calibration.WORKLOADS:  # export first: the timed calibration measures, not exports
        get_artifact(workload, "onnx")
        get_artifact(workload, "tflite")
    conv = network_cost(registry.get(calibration.COMPUTE_WORKLOAD)).macs
    onnx_model = get_artifact(calibration.COMPUTE_WORKLOAD, "onnx")[0]
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(onnx_model.path), options, providers=["CPUExecutionProvider"])
    feed = {"input": np.load(onnx_model.input_path)}
    tflite_model = get_artifact(calibration.COMPUTE_WORKLOAD, "tflite")[0]
    interpreter = Interpreter(model_path=str(tflite_model.path), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.load(tflite_model.input_path))
    bare_loops = {"onnxruntime": lambda: session.run(None, feed), "tflite": interpreter.invoke}
    onnx_int8 = get_artifact(calibration.INT8_COMPUTE_WORKLOAD, "onnx")[0]
    session_int8 = ort.InferenceSession(str(onnx_int8.path), options, providers=["CPUExecutionProvider"])
    feed_int8 = {session_int8.get_inputs()[0].name: np.load(onnx_int8.input_path)}
    tflite_int8 = get_artifact(calibration.INT8_COMPUTE_WORKLOAD, "tflite")[0]
    interpreter_int8 = Interpreter(model_path=str(tflite_int8.path), num_threads=1)
    interpreter_int8.allocate_tensors()
    interpreter_int8.set_tensor(interpreter_int8.get_input_details()[0]["index"], np.load(tflite_int8.input_path))
    int8_loops = {"onnxruntime": lambda: session_int8.run(None, feed_int8), "tflite": interpreter_int8.invoke}

    # Each backend's bare loop runs just before and just after its calibration: other processes
    # on a shared machine change what either reaches within seconds, so the calibrated ceiling
    # is held to the references bracketing it.
    references: dict[str, list[float]] = {}
    references["onnxruntime"] = [conv / median_loop(bare_loops["onnxruntime"])]
    started = time.monotonic()
    result = calibrate("--devices", "local", "--backends", "onnxruntime", "--threads", "1")
    onnx_seconds = time.monotonic() - started
    assert result.exit_code == 0, result.output
    print(f"onnxruntime calibration: {onnx_seconds:.1f} s")
    assert onnx_seconds < 60, f"one device/backend calibration took {onnx_seconds:.0f} s"
    references["onnxruntime"].append(conv / median_loop(bare_loops["onnxruntime"]))
    references["tflite"] = [conv / median_loop(bare_loops["tflite"])]
    result = calibrate("--devices", "local", "--backends", "onnxruntime,tflite", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    references["tflite"].append(conv / median_loop(bare_loops["tflite"]))
    both = json.loads(result.stdout)
    assert [c["backend"] for c in both["measured"]] == ["tflite"]  # onnxruntime's ceiling was reused
    assert [c["backend"] for c in both["stored"]] == ["onnxruntime"]
    assert len(calibration_runs(results_dir)) == 2

    ceilings = {c.backend: c for c in load_ceilings(results_dir).values()}
    assert set(ceilings) == {"onnxruntime", "tflite"}
    for backend, bracket in references.items():
        ceiling = ceilings[backend]
        assert ceiling.threads == 1 and ceiling.fingerprint_id and ceiling.runtime_version
        print(f"{backend}: calibrated {ceiling.peak_macs_per_s / 1e9:.1f} GMAC/s, bare loop before/after "
              f"{bracket[0] / 1e9:.1f}/{bracket[1] / 1e9:.1f} GMAC/s")
        assert 0.85 * min(bracket) < ceiling.peak_macs_per_s < 1.15 * max(bracket), (backend, bracket)
        # The conv is compute-bound: far more MAC/s than the streaming kernel's 0.25 MAC per byte allows.
        assert ceiling.peak_macs_per_s > 4 * ceiling.stream_bytes_per_s * 0.25
        assert ceiling.cache_bytes_per_s and ceiling.cache_bytes_per_s > ceiling.stream_bytes_per_s
        assert ceiling.ridge_intensity == pytest.approx(ceiling.peak_macs_per_s / ceiling.stream_bytes_per_s)
        # int8: the same conv quantized, held to a bare loop over the same int8 model run just after.
        assert ceiling.int8_peak_macs_per_s, ceiling.sources.get("compute_int8")
        int8_reference = conv / median_loop(int8_loops[backend])
        print(f"{backend}: int8 {ceiling.int8_peak_macs_per_s / 1e9:.1f} GMAC/s, bare loop "
              f"{int8_reference / 1e9:.1f} GMAC/s")
        assert 0.7 * int8_reference < ceiling.int8_peak_macs_per_s < 1.3 * int8_reference, backend

    # Streaming bandwidth against numpy copying the same 64 MiB (read + write): the same order of magnitude.
    source = np.ones(4096 * 4096, dtype=np.float32)
    target = np.empty_like(source)
    copy_bandwidth = 2 * source.nbytes / median_loop(lambda: np.copyto(target, source), 1.0)
    for backend, ceiling in ceilings.items():
        print(f"{backend}: stream {ceiling.stream_bytes_per_s / 1e9:.1f} GB/s, cache "
              f"{ceiling.cache_bytes_per_s / 1e9:.1f} GB/s, numpy copy {copy_bandwidth / 1e9:.1f} GB/s")
        assert copy_bandwidth / 4 < ceiling.stream_bytes_per_s < copy_bandwidth * 4, backend

    # Stored ceilings are reused; --recalibrate measures again.
    assert "measured" not in calibrate("--devices", "local", "--backends", "onnxruntime", "--threads", "1").output
    assert len(calibration_runs(results_dir)) == 2
    before = ceilings["onnxruntime"].measured_at
    time.sleep(1.1)
    result = calibrate("--devices", "local", "--backends", "onnxruntime", "--threads", "1", "--recalibrate", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["measured"]) == 1
    assert len(calibration_runs(results_dir)) == 3
    after = {c.backend: c for c in load_ceilings(results_dir).values()}["onnxruntime"].measured_at
    assert after > before


@pytest.mark.slow
def test_run_calibrates_first_only_when_no_ceiling_is_stored(results_dir, monkeypatch):
    from harness.store import list_runs, load_frame

    monkeypatch.setenv("CONVBENCH_CALIBRATE", "auto")
    args = ["run", "--repeats", "1", "--devices", "local", "--workloads", SMALL, "--backends", "onnxruntime",
            "--threads", "1", "--max-time", "0.2", "--min-time", "0.05"]
    first = CliRunner().invoke(main, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "calibrating local/onnxruntime/t1 first" in first.output
    assert len(calibration_runs(results_dir)) == 1
    second = CliRunner().invoke(main, args, catch_exceptions=False)
    assert second.exit_code == 0 and "calibrating" not in second.output
    assert "calibrating" not in CliRunner().invoke(main, [*args, "--threads", "2", "--no-calibrate"]).output
    monkeypatch.setenv("CONVBENCH_CALIBRATE", "off")
    forced = CliRunner().invoke(main, [*args, "--recalibrate"], catch_exceptions=False)
    assert "calibrating local/onnxruntime/t1 first (--recalibrate" in forced.output
    assert len(calibration_runs(results_dir)) == 2
    # The calibration runs stay out of the store's runs; each measured row finds its ceiling.
    runs = list_runs(results_dir)
    assert len(runs) == 4
    frame = load_frame(runs)
    ceilings = load_ceilings(results_dir)
    for _, row in frame.iterrows():
        found = ceiling_for(row.to_dict(), ceilings)
        assert (found is None) == (row["threads"] == 2), row["job_id"]


# -- an SSH board and the phone ------------------------------------------------------------------


@pytest.mark.rig
@pytest.mark.slow
def test_ssh_board_calibrates_through_its_runner(tmp_path, results_dir, monkeypatch):
    from harness.lab.sshd import SshdServer
    from tests.rigs.ssh_fixtures import require_sshd
    from tests.test_ssh_transport import devices_file

    require_sshd()
    server = SshdServer(tmp_path / "sshd")
    server.start()
    try:
        path = devices_file(tmp_path, server)
        result = calibrate("--devices", "board", "--devices-file", str(path), "--backends", "onnxruntime",
                           "--threads", "1", "--max-time", "0.5")
        assert result.exit_code == 0, result.output
        (ceiling,) = load_ceilings(results_dir).values()
        assert ceiling.device == "board" and ceiling.backend == "onnxruntime" and ceiling.peak_macs_per_s > 1e8
        (run,) = calibration_runs(results_dir)
        records = [json.loads(line) for line in (run / "measurements.jsonl").read_text().splitlines()]
        assert {r["transport"] for r in records} == {"ssh"} and all(r["status"] == "ok" for r in records)
        # A later run on the board knows its fingerprint from that calibration: no second one.
        monkeypatch.setenv("CONVBENCH_CALIBRATE", "auto")
        run_result = CliRunner().invoke(main, ["run", "--repeats", "1", "--devices", "board", "--devices-file",
                                               str(path), "--workloads", SMALL, "--backends", "onnxruntime",
                                               "--threads", "1", "--max-time", "0.2", "--min-time", "0.05"])
        assert run_result.exit_code == 0, run_result.output
        assert "calibrating" not in run_result.output and "no calibration matches" not in run_result.output
        # The board changed since (here: its calibration claims another fingerprint): the run says so.
        stored = results_dir / "calibrations" / ceiling.fingerprint_id / "onnxruntime-t1.json"
        data = json.loads(stored.read_text())
        calibration.save_ceiling(results_dir, Ceiling.from_dict({**data, "fingerprint_id": "0123456789ab"}))
        stored.unlink()
        run_result = CliRunner().invoke(main, ["run", "--repeats", "1", "--devices", "board", "--devices-file",
                                               str(path), "--workloads", SMALL, "--backends", "onnxruntime",
                                               "--threads", "1", "--max-time", "0.2", "--min-time", "0.05"])
        assert run_result.exit_code == 0, run_result.output
        assert "calibrating" not in run_result.output
        assert "no calibration matches the fingerprint board/onnxruntime/t1" in run_result.output
    finally:
        server.stop()


@pytest.mark.rig
@pytest.mark.slow
def test_phone_calibrates_through_benchmark_model(adb_device: ConnectedDevice, adb_server: AdbServer,
                                                  tmp_path: Path, results_dir: Path) -> None:
    from tests.test_android import device_entry

    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump({"devices": [device_entry(adb_device, adb_server)]}))
    result = calibrate("--devices", "phone", "--devices-file", str(path), "--max-time", "0.5")
    assert result.exit_code == 0, result.output
    (ceiling,) = load_ceilings(results_dir).values()
    assert (ceiling.device, ceiling.backend, ceiling.delegate, ceiling.threads) == ("phone", "tflite", "xnnpack", 1)
    stored = results_dir / "calibrations" / ceiling.fingerprint_id / "tflite-t1-xnnpack.json"
    assert json.loads(stored.read_text())["fingerprint"]["id"] == ceiling.fingerprint_id
    assert ceiling.peak_macs_per_s > 1e8 and ceiling.stream_bytes_per_s > 1e8
    (run,) = calibration_runs(results_dir)
    records = [json.loads(line) for line in (run / "measurements.jsonl").read_text().splitlines()]
    assert {r["transport"] for r in records} == {"adb"} and all(r["status"] == "ok" for r in records)
