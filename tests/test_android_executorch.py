"""The executorch backend on an adb device: ExecuTorch's executor_runner on the loopback phone.

The phone is harness/lab/adb_device.py behind the real adb client and server; its
executor_runner is harness/lab/executor_runner_standin.py, which runs the pushed .pte with
ExecuTorch's Python runtime and prints what the binary prints, so the transport's parser
(backends/executor_runner.py) reads the real format.
"""
# ruff: noqa: F811 - the fixtures are imported here, pytest passes them back as arguments

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import harness.lab as lab
from backends.android import AndroidTransport
from backends.base import Artifact, Job, TimingPolicy
from harness.devices import load_devices
from harness.records import finalize
from tests.conftest import require
from tests.rigs.adb_fixtures import (  # noqa: F401
    AdbServer,
    ConnectedDevice,
    adb_device,
    adb_device_factory,
    adb_server,
)
from tests.test_android import SMALL, harness_run, write_devices

RUNNER_STANDIN = Path(lab.__file__).with_name("executor_runner_standin.py")
FAST = TimingPolicy(warmup_runs=1, warmup_seconds=0.0, min_runs=5, min_seconds=0.05, max_seconds=0.3)
rig = pytest.mark.rig


def require_executorch() -> None:
    try:
        import executorch.extension.pybindings._C  # noqa: F401
    except ImportError:
        require(False, "executorch (the executorch extra) is needed by the executor_runner stand-in")


def pte(workload_id: str) -> Artifact:
    from harness.artifacts import get_artifact

    return get_artifact(workload_id, "pte")[0]


def phone(handle: ConnectedDevice, server: AdbServer, **fields: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "name": "phone", "transport": "adb", "serial": handle.serial, "adb": server.adb,
        "adb_server_port": server.port, "executor_runner": str(RUNNER_STANDIN), "backends": ["executorch"],
        "delegates": ["xnnpack"], "threads": [1],
    }
    entry.update(fields)
    return entry


def runner_on_device(handle: ConnectedDevice, name: str, env: str) -> str:
    """The stand-in installed on the phone behind a wrapper that sets ``env``: its path on the phone."""
    tools = handle.root / "data/local/tmp/tools"
    tools.mkdir(parents=True, exist_ok=True)
    (tools / "standin.py").write_bytes(RUNNER_STANDIN.read_bytes())
    wrapper = tools / name
    wrapper.write_text(f"#!/bin/sh\n{env} exec /system/bin/python3 /data/local/tmp/tools/standin.py \"$@\"\n")
    wrapper.chmod(0o755)
    return f"/data/local/tmp/tools/{name}"


def et_transport(tmp_path: Path, entry: dict[str, object], name: str = "devices.yaml") -> AndroidTransport:
    return AndroidTransport.from_device(load_devices(write_devices(tmp_path / name, entry))["phone"])


def run_executorch(transport, artifacts: dict[str, Artifact], policy: TimingPolicy = FAST,
                   delegate: str = "xnnpack", threads: int = 1) -> list[dict]:
    jobs = [Job(f"phone/executorch-{delegate}/t{threads}/{w}", w, "phone", "executorch", threads, delegate)
            for w in artifacts]
    records: list[dict] = []
    transport.run_batch(jobs, artifacts, policy, lambda r: records.append(finalize(r)))
    return records


@rig
@pytest.mark.slow
def test_executorch_job_end_to_end_on_the_phone(adb_device: ConnectedDevice, adb_server: AdbServer, tmp_path: Path,
                                               results_dir: Path) -> None:
    """`harness run` of an executorch job: the .pte pushed, executor_runner run twice (a pilot, then the
    measured count), its per-execution lines parsed into samples, the probe timed by the same runner."""
    require_executorch()
    devices = write_devices(tmp_path / "devices.yaml", phone(adb_device, adb_server))
    run, (record,), output = harness_run(devices, results_dir, [SMALL], "--max-time", "0.3", "--min-time", "0.05")
    assert run["status"] == "complete", output
    assert record["status"] == "ok", (record.get("error"), record.get("problems"))
    assert record["transport"] == "adb" and record["backend"] == "executorch" and record["runtime"] == "executorch"
    assert record["timer"] == "executor_runner" and record["provider"] == "xnnpack"
    latency = record["latency"]
    assert latency["statistic"] == "median of per-call times" and latency["n"] >= 5
    assert 0 < latency["min"] <= latency["median"] <= latency["max"] < 0.1
    bench = record["benchmark"]
    assert bench["binary"] == "/data/local/tmp/convbench/executor_runner" and bench["log_source"] == "stderr"
    assert {"model_path", "num_executions", "cpu_threads", "print_output"} <= set(bench["flags"])
    assert "--cpu_threads=1" in bench["command"] and "--print_output=none" in bench["command"]
    assert bench["pilot"]["per_execution_times"] and bench["pilot"]["per_execution_s"] > 0
    assert bench["warmup_left_out"] == bench["warmup_runs"] >= 1 and bench["measured_executions"] == latency["n"]
    assert bench["executions"] == latency["n"] + bench["warmup_runs"] and bench["threadpool_threads"] == 1
    assert "per-execution times printed by executor_runner" in bench["timing"]
    assert record["load_s"] > 0 and record["first_inference_s"] > 0 and record["warnings"] == []
    assert record["output_check"] == {"status": "not_checked", "reason": "executor_runner runs all-ones inputs"}
    assert record["runtime_version"].startswith("executor_runner sha256:")
    # The battery is readable on the loopback phone: the measured executions were stretched to cover the
    # energy window, which runs between the runner's Iteration lines.
    energy = record["energy"]
    assert energy["status"] == "ok" and energy["window_s"] >= 1.0, (energy, bench)
    assert energy["window"] == "the measured executions (between executor_runner's `Iteration` lines)"
    assert energy["inferences"] == latency["n"] and "measured executions raised from" in bench[
        "timing_extended_for_energy"]
    probe = record["reference_probe"]
    assert probe["median_s"] > 0 and probe["identity"].startswith(
        "executor_runner conv-standard-M32-N32-k3-x28-s1 (fp32, 1 thread) (v1) | executor_runner sha256 ")
    models = sorted(p.name for p in (adb_device.root / "data/local/tmp/convbench/models").iterdir())
    assert len(models) == 2 and all(m.endswith(".pte") for m in models)  # the workload's and the probe's


@rig
@pytest.mark.slow
def test_executorch_failures_are_per_job_and_say_what_to_do(adb_device: ConnectedDevice, adb_server: AdbServer,
                                                            tmp_path: Path) -> None:
    require_executorch()
    good = pte(SMALL)
    broken_path = tmp_path / "broken.pte"
    broken_path.write_bytes(b"this is not a program")
    broken = Artifact("conv-standard-M16-N32-k3-x14-s1", "pte", broken_path, good.input_path,
                      good.reference_output_path, "NCHW", "1" * 64)
    fixed = TimingPolicy(warmup_runs=1, warmup_seconds=0.0, min_runs=5, min_seconds=0.05, max_seconds=0.3)
    transport = et_transport(tmp_path, phone(adb_device, adb_server, energy={"sensor": "none"}, num_runs=5,
                                             warmup_runs=1))
    first, second = run_executorch(transport, {broken.workload_id: broken, SMALL: good}, fixed)
    assert first["status"] == "error" and first["runtime"] == "executorch"
    assert first["error"].startswith("executor_runner failed: program.cpp:168: Program identifier ' is ' != "
                                     "expected 'ET12'; executor_runner.cpp:473: Failed to parse model file ")
    assert second["status"] == "ok", second.get("error")
    assert second["benchmark"]["executions"] == 6 and second["latency"]["n"] == 5 and "pilot" not in \
        second["benchmark"]
    (gpu,) = run_executorch(transport, {SMALL: good}, fixed, delegate="gpu")
    assert gpu["status"] == "error" and "delegate 'gpu' does not apply to it" in gpu["error"]

    # A Release build without logging prints no time: the error says how to rebuild it.
    quiet = runner_on_device(adb_device, "quiet_runner", "CONVBENCH_EXECUTOR_RUNNER_LOGGING=off")
    silent = et_transport(tmp_path, phone(adb_device, adb_server, energy={"sensor": "none"}, num_runs=2,
                                          executor_runner=quiet), "quiet.yaml")
    (record,) = run_executorch(silent, {SMALL: good}, fixed)
    assert record["status"] == "error" and record["benchmark"]["binary"] == "/data/local/tmp/tools/quiet_runner"
    assert "printed no time: it printed no log line" in record["error"]
    assert "-DEXECUTORCH_ENABLE_LOGGING=ON" in record["error"]

    # A binary the phone cannot execute (here: an interpreter it lacks, as a wrong-ABI build fails).
    foreign = adb_device.root / "data/local/tmp/tools/foreign_runner"
    foreign.write_text("#!/system/bin/no-such-loader\n")
    foreign.chmod(0o755)
    wrong = et_transport(tmp_path, phone(adb_device, adb_server, energy={"sensor": "none"},
                                         executor_runner="/data/local/tmp/tools/foreign_runner"), "foreign.yaml")
    (record,) = run_executorch(wrong, {SMALL: good}, fixed)
    assert record["error"].startswith("executor_runner at /data/local/tmp/tools/foreign_runner does not run on ")
    assert "is it the build for this ABI (arm64-v8a)?" in record["error"]

    # No executor_runner in devices.yaml: every executorch job says which device entry lacks it.
    entry = phone(adb_device, adb_server)
    del entry["executor_runner"]
    devices_file = tmp_path / "none.yaml"
    bare = et_transport(tmp_path, entry, "none.yaml")
    (missing,) = run_executorch(bare, {SMALL: good}, fixed)
    assert missing["status"] == "error"
    assert missing["error"].startswith(f"executor_runner not found: devices.yaml sets none for phone ({devices_file}:")
    assert "-DEXECUTORCH_BUILD_EXECUTOR_RUNNER=ON" in missing["error"]
    check = bare.check()
    assert not check["usable"] and check["problems"] == [missing["error"]]
    runtimes = transport.check()["runtimes"]
    assert runtimes["executorch"]["executor_runner"] == "/data/local/tmp/convbench/executor_runner"
    assert "num_executions" in runtimes["executorch"]["flags"] and "tflite" not in runtimes


@rig
@pytest.mark.slow
def test_a_runner_logging_to_logcat_is_read_from_logcat(adb_device: ConnectedDevice, adb_server: AdbServer,
                                                        tmp_path: Path) -> None:
    """A build of ExecuTorch's `android` preset prints nothing: its times are in logcat (tag ExecuTorch),
    read back for the runner's pid."""
    require_executorch()
    runner = runner_on_device(adb_device, "logcat_runner", "CONVBENCH_EXECUTOR_RUNNER_PAL=android")
    transport = et_transport(tmp_path, phone(adb_device, adb_server, executor_runner=runner, num_runs=5,
                                             warmup_runs=1))
    fixed = TimingPolicy(warmup_runs=1, warmup_seconds=0.0, min_runs=5, min_seconds=0.05, max_seconds=0.3)
    (record,) = run_executorch(transport, {SMALL: pte(SMALL)}, fixed)
    assert record["status"] == "ok", record.get("error")
    bench = record["benchmark"]
    assert bench["log_source"] == "logcat" and bench["executions"] == 6 and bench["threadpool_threads"] == 1
    assert record["latency"]["n"] == 5 and record["latency"]["statistic"] == "median of per-call times"
    assert record["load_s"] > 0
    # No line to time the loop by on this computer: the energy window is the whole process, and says so.
    assert record["energy"]["window"].startswith("the whole executor_runner process, loading included")
    logged = (adb_device.root / "data/misc/logcat").read_text().splitlines()
    assert any(" I ExecuTorch: Model executed successfully 6 time(s) in " in line for line in logged)


def test_a_loop_that_missed_the_energy_window_is_sized_again_by_its_own_pace() -> None:
    """A pilot timed on a busy machine overestimated the pace (CI: a 0.72 s window for 1.5 s wanted):
    the measured loop's own Iteration stamps size one more run; a loop that covered it is kept."""
    from backends.android import AndroidTransport, RunnerRun
    from backends.base import TimingPolicy
    from backends.executor_runner import RunnerResult

    policy = TimingPolicy(min_seconds=0.05, max_seconds=0.3)
    timing = replace(policy, min_seconds=1.5, max_seconds=1.5)
    warmup, executions = 1, 61  # 60 measured executions at 12 ms: a 0.72 s window
    marks = [(10.0 + 0.012 * i, "iteration") for i in range(executions)] + [(10.8, "total")]
    printed = RunnerResult(executions=executions, iterations_ms=[12.0] * executions)  # one line per execution
    short = RunnerRun("executor_runner ...", 0, "", printed, "stderr", marks)
    rerun = AndroidTransport._rerun_for_energy(short, executions, warmup, timing, policy)
    assert rerun is not None and rerun["measured_window_s"] == pytest.approx(0.72)
    assert rerun["loop_s_per_execution"] == pytest.approx(0.012) and 1 + 124 <= rerun["executions"] <= 1 + 125
    assert "0.72 s, short of the battery's 1 s energy window" in rerun["why"]
    covered = RunnerRun("executor_runner ...", 0, "", printed,
                        "stderr", [(10.0 + 0.025 * i, "iteration") for i in range(executions)])
    assert AndroidTransport._rerun_for_energy(covered, executions, warmup, timing, policy) is None
    failed = replace(short, code=1)
    assert AndroidTransport._rerun_for_energy(failed, executions, warmup, timing, policy) is None
