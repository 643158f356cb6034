"""The local measurement engine with real runtimes: artifacts, runner, transport, store, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from backends.base import STATUS_ERROR, Job, TimingPolicy
from backends.local import LocalTransport
from harness.artifacts import ONNX_OPSET, artifact_for, get_artifact
from harness.cli import main
from harness.records import finalize
from harness.store import RunWriter, load_frame, read_run, resolve_run

SMALL = "conv-separable-M16-N32-k3-x14-s1"
SMALL_STD = "conv-standard-M16-N32-k3-x14-s1"
FAST = TimingPolicy(warmup_runs=2, warmup_seconds=0.0, min_runs=5, min_seconds=0.05, max_seconds=0.3)

pytestmark = pytest.mark.slow


def artifacts_for(backend, *workloads):
    return {w: artifact_for(w, backend) for w in workloads}


def run_local(backend, workloads, policy=FAST, **transport_args):
    artifacts = artifacts_for(backend, *workloads)
    jobs = [Job(f"local/{backend}/t1/{w}", w, "local", backend, 1) for w in workloads]
    records = []
    # Finalize inside the callback: a record's output file lives only until it returns.
    LocalTransport(**transport_args).run_batch(
        jobs, artifacts, policy, lambda r: records.append(finalize(r)))
    return records


def test_artifacts_are_cached_and_shaped():
    for fmt in ("torch", "onnx", "tflite"):
        first, _ = get_artifact(SMALL, fmt)
        again, exported = get_artifact(SMALL, fmt)
        assert not exported and again == first and first.path.exists()
    import numpy as np
    import onnx

    model = onnx.load(str(get_artifact(SMALL, "onnx")[0].path))
    assert model.opset_import[0].version == ONNX_OPSET >= 17
    tflite = get_artifact(SMALL, "tflite")[0]
    assert tflite.layout == "NHWC" and np.load(tflite.input_path).shape == (1, 14, 14, 16)
    assert np.load(tflite.reference_output_path).shape == (1, 14, 14, 32)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "tflite"])
def test_every_backend_matches_pytorch(backend):
    records = run_local(backend, [SMALL, "mobilenet_v3_small-224"])
    assert len(records) == 2
    for record in records:
        assert record["status"] == "ok", record.get("error") or record.get("problems")
        assert record["output_check"]["status"] == "match"
        assert record["output_check"]["max_abs_diff"] <= record["output_check"]["tolerance"]
        assert record["latency"]["n"] == len(record["samples_s"]) >= FAST.min_runs
        assert record["stop_reason"] in ("converged", "max_seconds", "max_runs")
        assert record["memory"]["peak_rss_bytes"] > 0
        assert record["energy"]["status"] == "unavailable" and record["energy"]["reason"]
        assert record["workload"]["macs"] > 0 and record["runtime_version"]
        assert record["device_fingerprint"]["id"]


def test_energy_from_a_sysfs_power_sensor_with_idle_subtraction(tmp_path):
    power = tmp_path / "class/hwmon/hwmon0/power1_input"
    power.parent.mkdir(parents=True)
    power.write_text("3000000\n")  # 3 W, constant: active minus idle must be ~0
    policy = TimingPolicy(warmup_runs=1, warmup_seconds=0, min_runs=5, min_seconds=1.2, max_seconds=1.5,
                          target_ci_rel_width=0.0, energy_idle_seconds=0.3, energy_min_window_s=1.0)
    (record,) = run_local("onnxruntime", [SMALL], policy, sysfs_root=str(tmp_path),
                          energy={"sensor": "hwmon"})
    energy = record["energy"]
    assert energy["status"] == "ok" and energy["sensor"].startswith("hwmon:")
    assert energy["idle_watts"] == pytest.approx(3.0, rel=0.2)
    assert energy["joules"] == pytest.approx(3.0 * energy["window_s"], rel=0.1)
    assert energy["joules_per_inference"] < 0.1 * energy["joules"] / energy["inferences"]


def test_short_window_gives_unavailable_energy_not_zero(tmp_path):
    power = tmp_path / "class/hwmon/hwmon0/power1_input"
    power.parent.mkdir(parents=True)
    power.write_text("3000000\n")
    (record,) = run_local("onnxruntime", [SMALL], FAST, sysfs_root=str(tmp_path), energy={"sensor": "hwmon"})
    assert record["energy"]["status"] == "unavailable" and "shorter than" in record["energy"]["reason"]
    assert "joules_per_inference" not in record["energy"]


def test_broken_artifact_fails_its_job_only(tmp_path):
    artifacts = artifacts_for("onnxruntime", SMALL, SMALL_STD)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    from dataclasses import replace

    artifacts[SMALL_STD] = replace(artifacts[SMALL_STD], path=broken)
    jobs = [Job(f"j/{w}", w, "local", "onnxruntime", 1) for w in (SMALL_STD, SMALL)]
    by_id = {}
    LocalTransport().run_batch(jobs, artifacts, FAST,
                               lambda r: by_id.update({r["workload_id"]: finalize(r)}))
    assert by_id[SMALL_STD]["status"] == STATUS_ERROR and by_id[SMALL_STD]["error"]
    assert by_id[SMALL]["status"] == "ok"


def test_runner_without_its_runtime_fails_every_job(tmp_path):
    # A Python with no onnxruntime: the system interpreter outside the venv, with -I.
    bare = tmp_path / "python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -I -c 'import runpy, sys; sys.modules[\"onnxruntime\"] = None; "
                    f"sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name=\"__main__\")' \"$@\"\n")
    bare.chmod(0o755)
    artifacts = artifacts_for("onnxruntime", SMALL)
    jobs = [Job("j1", SMALL, "local", "onnxruntime", 1)]
    records = []
    LocalTransport(python=str(bare)).run_batch(jobs, artifacts, FAST, records.append)
    assert len(records) == 1 and records[0]["status"] == STATUS_ERROR
    assert "onnxruntime" in records[0]["error"]


def test_store_round_trip_and_torn_line(tmp_path):
    writer = RunWriter(tmp_path, {"suite": "quick"})
    writer.append({"job_id": "a", "workload_id": SMALL, "status": "ok", "latency": {"median": 1e-3},
                   "workload": {"macs": 10}, "samples_s": [1e-3, 1e-3]})
    writer.append({"job_id": "b", "workload_id": SMALL, "status": "error", "error": "boom"})
    writer.finish("complete")
    info, records = read_run(writer.path)
    assert info["status"] == "complete" and info["counts"] == {"ok": 1, "error": 1}
    assert [r["job_id"] for r in records] == ["a", "b"] and all(r["run_id"] == writer.run_id for r in records)
    with (writer.path / "measurements.jsonl").open("a") as handle:
        handle.write('{"job_id": "c", "trunc')  # a crash mid-write
    assert len(read_run(writer.path)[1]) == 2
    frame = load_frame([writer.path])
    assert list(frame["job_id"]) == ["a", "b"] and frame.loc[0, "latency_median"] == 1e-3
    assert frame.loc[0, "macs"] == 10
    assert resolve_run(writer.run_id[:12], tmp_path) == writer.path
    assert resolve_run("latest", tmp_path) == writer.path


def test_harness_run_end_to_end(results_dir):
    # The three classic backends (tests/test_deployed_backends.py runs the others: their imports and
    # compiles cost half a minute per process).
    result = CliRunner().invoke(main, ["run", "--repeats", "1", "--backends", "torch,onnxruntime,tflite",
                                       "--workloads", f"{SMALL_STD},{SMALL}", "--max-time", "0.3",
                                       "--min-time", "0.05"])
    assert result.exit_code == 0, result.output
    assert "standard vs separable" in result.output and "results:" in result.output
    (run_path,) = [p for p in results_dir.iterdir() if p.is_dir()]
    info, records = read_run(run_path)
    assert info["status"] == "complete" and info["git"]["commit"] and info["host"]["cores"]
    assert {r["backend"] for r in records} == {"torch", "onnxruntime", "tflite"}
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]


@pytest.mark.parametrize(("args", "needle"), [
    (["--backends", "tensorrt"], "valid backends: torch"),
    (["--workloads", "conv-standard-M1"], "conv-standard-M1"),
    (["--suite", "nightly"], "valid suites: quick"),
    (["--devices", "pixel9"], "unknown device 'pixel9'"),
    (["--threads", "two"], "--threads expects"),
    (["--min-time", "9", "--max-time", "1"], "--min-time"),
])
def test_run_rejects_bad_names_with_one_line(args, needle, results_dir):
    result = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--repeats", "1", *args],
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stdout + result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not results_dir.exists()


def test_missing_backend_is_skipped_with_install_hint(tmp_path, results_dir):
    # Make ai_edge_litert and litert_torch unimportable for the child, as if not installed.
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ai_edge_litert', 'litert_torch'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n")
    env = dict(os.environ, PYTHONPATH=str(blocker))
    result = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--repeats", "1", "--workloads", SMALL,
                             "--max-time", "0.2", "--min-time", "0.05", "--backends", "onnxruntime,tflite"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "skipping backend tflite" in result.stdout and "pip install 'convbench[tflite]'" in result.stdout
    (run_path,) = [p for p in results_dir.iterdir() if p.is_dir()]
    info, records = read_run(run_path)
    assert {r["backend"] for r in records} == {"onnxruntime"} and info["skipped"]


def test_interrupted_run_is_valid_and_marked(results_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", "--repeats", "1", "--workloads", f"{SMALL_STD},{SMALL}",
         "--backends", "onnxruntime", "--threads", "1,2", "--max-time", "3", "--min-time", "3", "--target-ci", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    measurements = None
    while time.monotonic() < deadline:
        found = list(results_dir.glob("*/measurements.jsonl")) if results_dir.exists() else []
        if found and found[0].read_text().count("\n") >= 1:
            measurements = found[0]
            break
        time.sleep(0.2)
    assert measurements is not None, "no measurement arrived"
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    process.communicate(timeout=60)
    assert process.returncode == 130
    info, records = read_run(measurements.parent)
    assert info["status"] == "interrupted" and 1 <= len(records) < 4
    assert all(json.loads(line) for line in measurements.read_text().splitlines())


def test_exporter_chatter_stays_out_of_the_terminal(tmp_path, monkeypatch, results_dir):
    monkeypatch.setenv("CONVBENCH_CACHE", str(tmp_path / "cache"))  # force a fresh export
    result = CliRunner().invoke(main, ["run", "--repeats", "1", "--workloads", "conv-separable-M8-N8-k3-x8-s1",
                                       "--backends", "tflite", "--max-time", "0.1", "--min-time", "0"])
    assert result.exit_code == 0, result.output
    assert "exported conv-separable-M8-N8-k3-x8-s1 -> tflite" in result.output
    assert "LiteRT-Torch Convert" not in result.output and "_pytree" not in result.output
    logs = list((tmp_path / "cache").rglob("export.log"))
    assert logs and "LiteRT-Torch" in logs[0].read_text()



# -- cool-down waits on a runner-based device (the runner waits, and tells the host as it waits) ----------


def hot_sysfs(tmp_path, celsius):
    """A sysfs-shaped directory with one thermal zone, ``cpu-thermal`` at ``celsius``; returns its temp file."""
    zone = tmp_path / "sys" / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text(f"{round(celsius * 1000)}\n")
    return zone / "temp"


def hot_local_devices(tmp_path, **thermal):
    import yaml

    entry = {"name": "hot", "transport": "local", "backends": ["onnxruntime"], "sysfs_root": str(tmp_path / "sys"),
             "thermal": {"cooldown_c": 50, **thermal}}
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump({"devices": [entry]}))
    return path


def execute_collecting(devices_file, results, workloads, events):
    """``harness.run.execute`` on every device of the file; its events are appended to ``events`` as they come."""
    from harness import plan
    from harness.devices import load_devices
    from harness.run import execute

    devices = list(load_devices(devices_file).values())
    jobs = plan.make_jobs(devices, plan.Selection(workloads, None, None))
    return execute(plan.RunRequest(devices, jobs, FAST, results, workloads), events.append)


def states_of(events):
    from harness.run import DeviceState

    return [e.state for e in list(events) if isinstance(e, DeviceState)]


def test_local_device_waits_to_cool_and_the_wait_is_shown(tmp_path, results_dir):
    import threading

    from harness.run import DeviceNotice

    temp = hot_sysfs(tmp_path, 60.0)
    devices = hot_local_devices(tmp_path, max_wait_s=30)
    events = []

    def cool_once_the_wait_was_shown():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any("(1 s of at most 30 s)" in s for s in states_of(events)):
                temp.write_text("45000\n")
                return
            time.sleep(0.05)

    cooler = threading.Thread(target=cool_once_the_wait_was_shown, daemon=True)
    cooler.start()
    started = time.monotonic()
    outcome = execute_collecting(devices, results_dir, [SMALL], events)
    cooler.join(timeout=5)
    assert outcome.status == "complete" and time.monotonic() - started < 60
    states = states_of(events)
    # As it happens: the device's progress line says why it waits, how hot, and for how long at most...
    assert "cooling down: cpu-thermal 60.0 \u00b0C > 50 \u00b0C target (0 s of at most 30 s)" in states, states
    assert "cooling down: cpu-thermal 60.0 \u00b0C > 50 \u00b0C target (1 s of at most 30 s)" in states
    # ... then shows the batch again once the device is cool, and the job is measured.
    waiting = max(i for i, s in enumerate(states) if s.startswith("cooling down:"))
    assert states[waiting + 1] == "onnxruntime t1" and states[-1] == "done"
    assert not [e for e in events if isinstance(e, DeviceNotice)]
    (record,) = outcome.records
    assert record["status"] == "ok" and 1.0 <= record["cooldown_wait_s"] < 30
    assert record["cooldown_target_c"] == 50 and "cooldown_timed_out" not in record
    assert not [w for w in record["warnings"] if "cool" in w]  # (a busy shared machine may warn of itself)
    assert record["thermal_before"]["thermal_c"] == {"cpu-thermal": 45.0}


def test_local_wait_that_times_out_is_printed_and_recorded(tmp_path, results_dir):
    hot_sysfs(tmp_path, 61.5)
    devices = hot_local_devices(tmp_path, max_wait_s=1)
    result = CliRunner().invoke(main, ["run", "--repeats", "1", "--devices", "hot", "--devices-file", str(devices),
                                       "--workloads", SMALL, "--max-time", "0.3", "--min-time", "0.05"])
    assert result.exit_code == 0, result.output
    # A line of its own, not only a passing progress line: it is still on the screen after the run.
    assert ("hot: did not cool down within 1 s: cpu-thermal 61.5 \u00b0C > 50 \u00b0C target; measuring anyway"
            in result.output), result.output
    (run,) = [p for p in results_dir.iterdir() if p.is_dir()]
    _, (record,) = read_run(run)
    assert record["status"] == "ok" and record["cooldown_timed_out"] and 1.0 <= record["cooldown_wait_s"] < 5
    (warning,) = [w for w in record["warnings"] if "cool" in w]  # (a busy shared machine may warn of itself)
    assert warning.startswith("the device did not cool below 50 \u00b0C within 1 s (hottest: cpu-thermal "
                              "(thermal_zone0) at 61.5 \u00b0C)")


def test_devices_check_flags_a_device_hotter_than_its_cooldown_target(tmp_path):
    temp = hot_sysfs(tmp_path, 41.0)
    devices = hot_local_devices(tmp_path, cooldown_c=40, max_wait_s=300)
    result = CliRunner().invoke(main, ["devices", "check", "--devices-file", str(devices)])
    assert result.exit_code == 0, result.output  # hot is a warning, not "not usable"
    assert ("warning:  hot: cpu-thermal at 41.0 \u00b0C, above the 40 \u00b0C cool-down target: every job will "
            "wait up to 300 s") in result.output, result.output
    temp.write_text("39000\n")
    result = CliRunner().invoke(main, ["devices", "check", "--devices-file", str(devices)])
    assert result.exit_code == 0 and "hot:" not in result.output and "cpu-thermal 39.0C" in result.output
    temp.parent.rename(tmp_path / "sys" / "class" / "thermal" / "cooling_device0")  # no zone left to watch
    result = CliRunner().invoke(main, ["devices", "check", "--devices-file", str(devices)])
    assert "warning:  no thermal zone matches (any): the 40 \u00b0C cool-down target cannot be checked" \
        in result.output, result.output
