"""The adb transport: benchmark_model on a (loopback) Android device through the real adb server.

The device (harness/lab/adb_device.py) speaks the ADB protocol to the real adb server (and
client), runs commands in a sandbox whose /data/local/tmp and /sys this test controls, and
the benchmark_model stand-in really runs the .tflite with ai_edge_litert.
"""
# ruff: noqa: F811 - the fixtures are imported here, pytest passes them back as arguments

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from backends.android import (
    AndroidTransport,
    BatterySampler,
    battery_loop_command,
    benchmark_argv,
    cpu_count,
    delegation_report,
    latency_from,
    parse_snapshot,
    thermal_by_type,
    window_energy,
)
from backends.base import Artifact, DeviceStatus, Job, TimingPolicy
from backends.benchmark_model import parse_benchmark_output, timing_event
from harness.devices import load_devices
from harness.records import finalize
from tests.conftest import require
from tests.rigs.adb_fixtures import (  # noqa: F401
    STANDIN,
    AdbServer,
    ConnectedDevice,
    adb_device,
    adb_device_factory,
    adb_processes,
    adb_server,
)

SMALL = "conv-separable-M16-N32-k3-x14-s1"
SMALL_STD = "conv-standard-M16-N32-k3-x14-s1"
FAST = TimingPolicy(warmup_runs=1, warmup_seconds=0.0, min_runs=5, min_seconds=0.05, max_seconds=0.3)
rig = pytest.mark.rig


# -- pure helpers -------------------------------------------------------------------------------


def test_benchmark_argv_flags_and_quoting() -> None:
    job = Job("j", SMALL, "phone", "tflite", 4, "gpu")
    argv = benchmark_argv("/data/local/tmp/convbench/benchmark_model", "/data/local/tmp/convbench/m it's.tflite",
                          job, FAST, {"op_profiling": True}, cpu_mask="f0")
    assert argv[:2] == ["taskset", "f0"]
    assert "--graph=/data/local/tmp/convbench/m it's.tflite" in argv and "--num_threads=4" in argv
    assert "--num_runs=50" in argv and "--warmup_runs=1" in argv  # max(min_runs, 50), policy warm-up
    assert "--min_secs=0.05" in argv and "--max_secs=0.3" in argv and "--use_gpu=true" in argv
    assert "--report_peak_memory_footprint=true" in argv and "--enable_op_profiling=true" in argv
    cpu = benchmark_argv("bm", "m", Job("j", SMALL, "p", "tflite", 1, "cpu"), FAST, {"num_runs": 7, "warmup_runs": 2})
    assert cpu[0] == "bm" and "--use_xnnpack=false" in cpu and "--num_runs=7" in cpu and "--warmup_runs=2" in cpu
    assert "--enable_op_profiling=true" not in cpu
    assert "--use_nnapi=true" in benchmark_argv("bm", "m", Job("j", SMALL, "p", "tflite", 1, "nnapi"), FAST, {})
    assert "--use_xnnpack=true" in benchmark_argv("bm", "m", Job("j", SMALL, "p", "tflite", 1, "xnnpack"), FAST, {})


GPU_FALLBACK = """INFO: STARTING!
INFO: Use gpu: [1]
INFO: Created TensorFlow Lite delegate for GPU.
INFO: Though GPU delegate is explicitly applied, the model graph will not be executed by the delegate.
VERBOSE: Replacing 65 out of 65 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions \
for the whole graph.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=4 first=2000 curr=1500 min=1400 max=2000 avg=1600 std=200
INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=50 first=1500 curr=1450 min=1400 max=1700 avg=1500 std=50 p5=1410 median=1490 p95=1650
INFO: Inference timings in us: Init: 25000, First inference: 2000, Warmup (avg): 1600, Inference (avg): 1500
INFO: Overall peak memory footprint (MB) via periodic monitoring: 12.5
"""


def test_latency_delegation_and_timing_events() -> None:
    result = parse_benchmark_output(GPU_FALLBACK)
    latency = latency_from(result.inference)
    assert latency["n"] == 50 and latency["median"] == pytest.approx(1.49e-3)
    assert latency["mean"] == pytest.approx(1.5e-3)
    assert latency["p5"] == pytest.approx(1.41e-3) and latency["p95"] == pytest.approx(1.65e-3)
    assert latency["std"] == pytest.approx(5e-5) and "ci_low" not in latency and "median_is_mean" not in latency
    delegation, problems, _ = delegation_report("gpu", result)
    assert delegation["ran_nothing"] and delegation["delegated_nodes"] == 0 and delegation["total_nodes"] == 65
    assert problems == ["gpu delegate executed 0 of 65 nodes: CPU fallback, not a GPU number"]
    partial = parse_benchmark_output(GPU_FALLBACK.replace(
        "INFO: Though GPU delegate is explicitly applied, the model graph will not be executed by the delegate.",
        "VERBOSE: Replacing 60 out of 65 node(s) with delegate (TfLiteGpuDelegateV2) node, yielding 3 partitions "
        "for the whole graph."))
    _, problems, _ = delegation_report("gpu", partial)
    assert problems and "executed only 60 of 65 nodes, 3 partitions" in problems[0]
    plain = parse_benchmark_output(GPU_FALLBACK.replace(" p5=1410 median=1490 p95=1650", ""))
    no_median = latency_from(plain.inference)
    assert no_median["median"] == pytest.approx(1.5e-3) and no_median["median_is_mean"] and "p5" not in no_median
    events = [timing_event(line) for line in GPU_FALLBACK.splitlines()]
    assert events.count("header") == 2 and events.count("stats") == 2
    assert timing_event("INFO: Timings (microseconds): count=50 first=1") is None  # op-profiling table


def test_energy_window_and_sysfs_parsing() -> None:
    samples = [(0.0, 2.0), (1.0, 2.0), (2.0, 4.0), (3.0, 4.0)]
    assert window_energy(samples, 0.5, 1.5) == pytest.approx(2.0 * 0.5 + (2.0 + 3.0) / 2 * 0.5)
    assert window_energy([(0.0, 3.0), (0.1, 3.0)], -1.0, 2.0) == pytest.approx(9.0)  # held at the ends
    assert cpu_count("0-3") == 4 and cpu_count("0-3,6,8-9") == 7 and cpu_count("") is None
    snap = parse_snapshot("T\tthermal_zone0\tcpu\t41000\nT\tthermal_zone1\tcpu\t39\nT\tthermal_zone2\tgpu\tbad\n"
                          "C\tcpu1\t1000\t2000\tschedutil\nC\tcpu0\t\t\t\nB\tDischarging\n")
    assert snap["zones"] == [("thermal_zone0", "cpu", 41.0), ("thermal_zone1", "cpu", 39.0)]
    assert thermal_by_type(snap["zones"]) == {"cpu": 41.0, "cpu/thermal_zone1": 39.0}
    assert list(snap["cpufreq"]) == ["cpu0", "cpu1"] and snap["cpufreq"]["cpu1"]["max_khz"] == 2000
    assert snap["battery_status"] == "Discharging"


def test_battery_loop_runs_under_a_posix_sh(tmp_path: Path) -> None:
    (tmp_path / "current_now").write_text("-350000\n")
    (tmp_path / "voltage_now").write_text("3850000\n")
    command = battery_loop_command(str(tmp_path / "current_now"), str(tmp_path / "voltage_now"), 0.05, 0.2)
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30, check=True).stdout
    lines = [line.split() for line in out.splitlines()]
    assert len(lines) == 4 and all(fields[1:] == ["-350000", "3850000"] for fields in lines)
    times = [float(fields[0]) for fields in lines]
    assert times == sorted(times) and times[-1] - times[0] >= 0.14  # the device's uptime, 10 ms steps


def test_battery_samples_move_the_phone_clock_onto_arrival_times() -> None:
    sampler = BatterySampler(None, "/c", "/v", period_s=0.1)  # type: ignore[arg-type]
    # Phone times 0.1 s apart; the second line was delayed 30 ms more than the others on its way.
    for phone, arrival, current in ((500.0, 20.05, "-500000"), (500.1, 20.18, "-500000"),
                                    (500.2, 20.25, "-1000000")):
        sampler._reading(f"{phone:.2f} {current} 4000000\n", arrival)
    samples = sampler.samples
    assert [t for t, _w in samples] == pytest.approx([20.05, 20.15, 20.25])  # phone spacing, least delay
    assert [w for _t, w in samples] == pytest.approx([2.0, 2.0, 4.0])
    assert sampler.units == {"current": "uA", "voltage": "uV"} and sampler.interval_s() == pytest.approx(0.1)
    sampler._reading("500.30 garbage\n", 20.35)
    assert len(sampler.samples) == 3 and "unexpected battery readings" in str(sampler.error)


# -- against the real adb and the loopback device ------------------------------------------------


@rig
def test_battery_sampler_is_one_loop_on_the_device(adb_device: ConnectedDevice) -> None:
    adb_device.write_sys("class/power_supply/battery/current_now", "-500000\n")
    adb_device.write_sys("class/power_supply/battery/voltage_now", "4000000\n")
    client = adb_device.client()
    base = "/sys/class/power_supply/battery"
    with adb_processes() as started:
        sampler = BatterySampler(client, f"{base}/current_now", f"{base}/voltage_now").start()
        time.sleep(1.0)
        adb_device.write_sys("class/power_supply/battery/current_now", "-1000000\n")
        stepped = time.monotonic()
        time.sleep(1.0)
        samples = sampler.stop()
    assert started == [] and sampler.error is None
    assert [s for s in adb_device.device.opened_services if "/proc/uptime" in s] == [
        s for s in adb_device.device.opened_services if s.startswith("shell")]  # one stream, one loop
    assert len([s for s in adb_device.device.opened_services if s.startswith("shell")]) == 1
    assert 8 <= len(samples) <= 25 and 0.09 <= sampler.interval_s() <= 0.3  # type: ignore[operator]
    assert [t for t, _w in samples] == sorted(t for t, _w in samples) and samples[-1][0] <= time.monotonic()
    assert {round(w, 6) for _t, w in samples} == {2.0, 4.0}
    assert all(w == pytest.approx(2.0) for t, w in samples if t < stepped - 0.25)
    assert all(w == pytest.approx(4.0) for t, w in samples if t > stepped + 0.25)
    count = len(samples)
    time.sleep(0.5)
    assert len(sampler.samples) == count and adb_device.device.running_commands == 0  # the loop is gone


def require_litert() -> None:
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        require(False, "ai_edge_litert (the tflite extra) is needed by the benchmark_model stand-in")


def tflite(workload_id: str) -> Artifact:
    from harness.artifacts import get_artifact

    return get_artifact(workload_id, "tflite")[0]


def device_entry(handle: ConnectedDevice, server: AdbServer, **fields: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "name": "phone", "transport": "adb", "serial": handle.serial, "adb": server.adb,
        "adb_server_port": server.port, "benchmark_model": str(STANDIN), "backends": ["tflite"],
        "delegates": ["xnnpack"], "threads": [1],
    }
    entry.update(fields)
    return entry


def write_devices(path: Path, *entries: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump({"devices": list(entries)}))
    return path


def transport_for(tmp_path: Path, handle: ConnectedDevice, server: AdbServer, **fields: object) -> AndroidTransport:
    devices = load_devices(write_devices(tmp_path / "devices.yaml", device_entry(handle, server, **fields)))
    return AndroidTransport.from_device(devices["phone"])


def run_jobs(transport: AndroidTransport, workloads: list[str], policy: TimingPolicy = FAST,
             delegate: str = "xnnpack", artifacts: dict[str, Artifact] | None = None,
             statuses: list[DeviceStatus] | None = None) -> list[dict]:
    artifacts = artifacts or {w: tflite(w) for w in workloads}
    jobs = [Job(f"phone/tflite-{delegate}/t1/{w}", w, "phone", "tflite", 1, delegate) for w in workloads]
    records: list[dict] = []
    transport.run_batch(jobs, artifacts, policy, lambda r: records.append(finalize(r)),
                        statuses.append if statuses is not None else None)
    return records


def harness_run(devices_file: Path, results: Path, workloads: list[str],
                *extra: str, exit_code: int = 0) -> tuple[dict, list[dict], str]:
    from harness.cli import main

    result = CliRunner().invoke(main, ["run", "--repeats", "1", "--devices", "phone",
                                       "--devices-file", str(devices_file),
                                       "--workloads", ",".join(workloads), "--out", str(results), *extra],
                                catch_exceptions=False)
    assert result.exit_code == exit_code, result.output
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    records = [json.loads(line) for line in (run_dir / "measurements.jsonl").read_text().splitlines() if line]
    return json.loads((run_dir / "run.json").read_text()), records, result.output


def wait_for_service(handle: ConnectedDevice, predicate: Callable[[str], bool], timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(predicate(s) for s in list(handle.device.opened_services)):
            return True
        time.sleep(0.02)
    return False


def wait_for_service_count(handle: ConnectedDevice, text: str, count: int, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(text in s for s in list(handle.device.opened_services)) >= count:
            return True
        time.sleep(0.02)
    return False


@rig
@pytest.mark.slow
def test_harness_run_measures_on_the_phone(adb_device: ConnectedDevice, adb_server: AdbServer, tmp_path: Path,
                                           results_dir: Path) -> None:
    require_litert()
    devices = write_devices(tmp_path / "devices.yaml",
                            device_entry(adb_device, adb_server, cpu_mask="1", op_profiling=True))
    started = time.monotonic()
    run, records, output = harness_run(devices, results_dir, [SMALL, SMALL_STD], "--max-time", "0.3",
                                       "--min-time", "0.05")
    assert run["status"] == "complete" and time.monotonic() - started < 120
    assert sorted(r["workload_id"] for r in records) == sorted([SMALL, SMALL_STD])
    for record in records:
        assert record["status"] == "ok", (record.get("error"), record.get("problems"), output)
        assert record["transport"] == "adb" and record["runtime"] == "tflite" and record["delegate"] == "xnnpack"
        latency = record["latency"]
        assert latency["n"] >= 5 and 0 < latency["min"] <= latency["median"] <= latency["max"] < 1.0
        assert latency["p5"] <= latency["median"] <= latency["p95"] and latency["mean"] > 0
        assert record["load_s"] > 0 and record["first_inference_s"] > 0 and record["memory"]["peak_rss_bytes"] > 0
        delegation = record["delegation"]
        assert delegation["delegate"] == "xnnpack" and not delegation["ran_nothing"]
        assert delegation["delegated_nodes"] == delegation["total_nodes"] >= 1
        assert record["output_check"] == {"status": "not_checked", "reason": "benchmark_model runs random inputs"}
        fingerprint = record["device_fingerprint"]
        assert fingerprint["board_model"] == "convbench LoopbackPhone" and fingerprint["machine"] == "arm64-v8a"
        assert fingerprint["os"] == "Android 14" and fingerprint["cores"] == 4 and fingerprint["id"]
        assert fingerprint["cpu_model"] == "Loopback-1" and fingerprint["cpu_max_khz"] == [2419200]
        assert record["thermal_before"]["thermal_c"] == {"cpu-thermal": 41.0, "battery": 30.5}
        assert record["thermal_after"]["cpufreq"]["cpu0"]["governor"] == "schedutil"
        command = record["benchmark"]["command"]
        assert command.startswith("taskset 1 /data/local/tmp/convbench/benchmark_model ")
        assert "--enable_op_profiling=true" in command and "--use_xnnpack=true" in command
        # --max-time 0.3 would give a loop shorter than the 1 s energy minimum: the battery is sampled, so
        # benchmark_model's loop was stretched to cover it, and the record says so.
        assert "--min_secs=1.5" in command and "--max_secs=1.5" in command
        assert "--min_secs raised from 0.05 s to 1.5 s and --max_secs from 0.3 s" in \
            record["benchmark"]["timing_extended_for_energy"]
        energy = record["energy"]
        assert energy["status"] == "ok" and energy["window_s"] >= 1.0 and energy["joules"] > 0, energy
        assert energy["sensor"] == "battery(power_supply)" and "unplug" in energy["note"]
        assert energy["timing"] == record["benchmark"]["timing_extended_for_energy"]
        assert record["reference_probe"]["median_s"] > 0  # the phone's speed beside the job
    models = list((adb_device.root / "data/local/tmp/convbench/models").iterdir())
    # The two workloads and the reference probe's model.
    assert len(models) == 3 and all(m.suffix == ".tflite" for m in models)


@rig
@pytest.mark.slow
def test_battery_energy_is_integrated_over_the_measured_loop(adb_device: ConnectedDevice, adb_server: AdbServer,
                                                             tmp_path: Path) -> None:
    require_litert()
    adb_device.write_sys("class/power_supply/battery/current_now", "-500000\n")  # 0.5 A
    adb_device.write_sys("class/power_supply/battery/voltage_now", "4000000\n")  # 4.0 V: 2 W
    transport = transport_for(tmp_path, adb_device, adb_server, energy={"sensor": "battery"})
    policy = TimingPolicy(warmup_runs=1, warmup_seconds=0.0, min_runs=5, min_seconds=1.2, max_seconds=1.6,
                          energy_min_window_s=1.0)
    (record,) = run_jobs(transport, [SMALL], policy)
    assert record["status"] == "ok", record.get("error")
    energy = record["energy"]
    assert energy["status"] == "ok", energy
    assert energy["units"] == {"current": "uA", "voltage": "uV"} and energy["samples"] >= 5
    assert 1.1 <= energy["window_s"] <= 3.0 and "measured loop" in energy["window"]
    assert energy["joules"] == pytest.approx(2.0 * energy["window_s"], rel=1e-6)
    assert energy["inferences"] == record["latency"]["n"]
    assert energy["joules_per_inference"] == pytest.approx(energy["joules"] / energy["inferences"])
    # The loop's inferences fit in the window, and the window is not much more than them.
    busy = record["latency"]["mean"] * record["latency"]["n"]
    assert busy <= energy["window_s"] * 1.05 and energy["window_s"] <= busy + 1.5
    assert energy["resolution"].startswith("sampled every ")
    assert energy["resolution"].endswith(" ms by a shell loop on the device, streamed over adb")
    assert sum("/proc/uptime" in s for s in adb_device.device.opened_services) == 1  # one loop for the job

    # Power doubles to 4 W inside the next run's 3 s loop: the energy follows the samples.
    def step() -> None:
        runs = sum("--graph=" in s for s in adb_device.device.opened_services)
        if wait_for_service_count(adb_device, "--graph=", runs + 1):
            time.sleep(2.0)  # start-up (imports) < 2 s < start-up + 3 s
            adb_device.write_sys("class/power_supply/battery/current_now", "-1000000\n")

    stepper = threading.Thread(target=step, daemon=True)
    stepper.start()
    # Pushed once: a second batch of the same model finds it by sha256 and does not push again.
    pushes = sum(s.startswith("sync:") for s in adb_device.device.opened_services)
    with adb_processes() as started:
        (again,) = run_jobs(transport, [SMALL], TimingPolicy(warmup_runs=1, warmup_seconds=0.0, min_runs=5,
                                                             min_seconds=3.0, max_seconds=3.5))
    stepper.join(timeout=5)
    assert started == []  # every call went to the adb server's socket: no adb process
    assert again["energy"]["samples"] >= 20  # ~10 a second from the one loop
    assert sum(s.startswith("sync:") for s in adb_device.device.opened_services) == pushes
    energy = again["energy"]
    assert again["status"] == "ok" and energy["status"] == "ok", energy
    assert 2.0 * energy["window_s"] * 1.02 < energy["joules"] < 4.0 * energy["window_s"] * 0.98


@rig
@pytest.mark.slow
def test_cooldown_waits_until_the_device_is_cool(adb_device: ConnectedDevice, adb_server: AdbServer,
                                                 tmp_path: Path) -> None:
    require_litert()
    # benchmark_model already on the device (not on this computer)
    (adb_device.root / "data/local/tmp/tools").mkdir(parents=True)
    on_device = adb_device.root / "data/local/tmp/tools/benchmark_model"
    on_device.write_bytes(STANDIN.read_bytes())
    on_device.chmod(0o755)
    adb_device.write_sys("class/thermal/thermal_zone0/temp", "60000\n")
    transport = transport_for(tmp_path, adb_device, adb_server, thermal={"cooldown_c": 50, "max_wait_s": 30},
                              benchmark_model="/data/local/tmp/tools/benchmark_model")

    def cool_down() -> None:  # 1 s after the first cool-down poll (thermal only, no cpufreq)
        if wait_for_service(adb_device, lambda s: "thermal_zone" in s and "cpufreq" not in s):
            time.sleep(1.0)
            adb_device.write_sys("class/thermal/thermal_zone0/temp", "40000\n")

    cooler = threading.Thread(target=cool_down, daemon=True)
    cooler.start()
    statuses: list[DeviceStatus] = []
    (record,) = run_jobs(transport, [SMALL], statuses=statuses)
    cooler.join(timeout=5)
    assert record["status"] == "ok", record.get("error")
    assert 0.9 <= record["cooldown_wait_s"] < 10 and record["cooldown_target_c"] == 50
    # The wait was reported as it happened, then its end (the display shows the batch again).
    assert statuses[0] == DeviceStatus("cooling down: cpu-thermal 60.0 \u00b0C > 50 \u00b0C target "
                                       "(0 s of at most 30 s)")
    assert statuses[-1].done and not statuses[-1].notice and statuses[-1].text.startswith("cooled down in ")
    assert all(not s.done for s in statuses[:-1])
    assert record["warnings"] == [] and record["thermal_before"]["thermal_c"]["cpu-thermal"] == 40.0
    assert record["benchmark"]["binary"] == "/data/local/tmp/tools/benchmark_model"


@rig
@pytest.mark.slow
def test_cooldown_is_bounded_and_warns(adb_device: ConnectedDevice, adb_server: AdbServer, tmp_path: Path) -> None:
    require_litert()
    adb_device.write_sys("class/thermal/thermal_zone0/temp", "90000\n")  # never cools
    adb_device.write_sys("class/thermal/thermal_zone1/temp", "95000\n")  # hotter, but not a zone we watch
    transport = transport_for(tmp_path, adb_device, adb_server,
                              thermal={"cooldown_c": 50, "max_wait_s": 1.0, "zones": ["cpu-thermal"]})
    started = time.monotonic()
    statuses: list[DeviceStatus] = []
    (record,) = run_jobs(transport, [SMALL], statuses=statuses)
    assert time.monotonic() - started < 30
    assert record["status"] == "ok", record.get("error")
    assert 0.9 <= record["cooldown_wait_s"] < 3 and record["cooldown_timed_out"]
    (warning,) = record["warnings"]
    assert "did not cool below 50 \u00b0C within 1 s" in warning
    assert "cpu-thermal (thermal_zone0) at 90.0 \u00b0C" in warning
    # Shown while waiting, and the timeout is a notice: a line of its own in the console.
    assert statuses[0].text == "cooling down: cpu-thermal 90.0 \u00b0C > 50 \u00b0C target (0 s of at most 1 s)"
    assert statuses[-1] == DeviceStatus("did not cool down within 1 s: cpu-thermal 90.0 \u00b0C > 50 \u00b0C "
                                        "target; measuring anyway (the result may be thermally throttled)",
                                        done=True, notice=True)


@rig
def test_unauthorized_phone_fails_every_job(adb_device_factory: Callable[..., ConnectedDevice],
                                            adb_server: AdbServer, tmp_path: Path, results_dir: Path) -> None:
    handle = adb_device_factory(authorized=False)
    devices = write_devices(tmp_path / "devices.yaml", device_entry(handle, adb_server))
    run, records, _ = harness_run(devices, results_dir, [SMALL, SMALL_STD], exit_code=1)
    assert run["status"] == "failed" and run["reason"] == "no job succeeded (2 error)" and len(records) == 2
    for record in records:
        assert record["status"] == "error"
        assert "unauthorized" in record["error"] and "accept the 'Allow USB debugging?' prompt" in record["error"]
        assert "RSA key" in record["error"]


@rig
@pytest.mark.slow
def test_phone_vanishing_mid_run(adb_device: ConnectedDevice, adb_server: AdbServer, tmp_path: Path,
                                 results_dir: Path) -> None:
    require_litert()
    devices = write_devices(tmp_path / "devices.yaml", device_entry(adb_device, adb_server))

    def pull_the_cable() -> None:
        if wait_for_service(adb_device, lambda s: "--graph=" in s):
            time.sleep(0.7)
            adb_device.vanish()

    cable = threading.Thread(target=pull_the_cable, daemon=True)
    cable.start()
    started = time.monotonic()
    run, records, _ = harness_run(devices, results_dir, [SMALL, SMALL_STD], "--min-time", "4",
                                  "--max-time", "5", exit_code=1)
    cable.join(timeout=5)
    assert run["status"] == "failed" and time.monotonic() - started < 60  # no job succeeded
    by_workload = {r["workload_id"]: r for r in records}
    assert len(by_workload) == 2 and all(r["status"] == "error" for r in records)
    first, rest = by_workload[SMALL]["error"], by_workload[SMALL_STD]["error"]
    assert f"{adb_device.serial} went away during this job: " in first
    assert "offline" in first or "not found" in first
    assert rest.startswith(f"device phone failed: {adb_device.serial} went away during phone/tflite-xnnpack/t1/")


@rig
@pytest.mark.slow
def test_gpu_fallback_is_invalid(adb_device: ConnectedDevice, adb_server: AdbServer, tmp_path: Path,
                                 results_dir: Path) -> None:
    require_litert()
    devices = write_devices(tmp_path / "devices.yaml", device_entry(adb_device, adb_server, delegates=["gpu"]))
    run, (record,), _ = harness_run(devices, results_dir, [SMALL], "--max-time", "0.2", "--min-time", "0.05",
                                    exit_code=1)  # its only job is invalid: the run failed
    assert run["status"] == "failed" and record["status"] == "invalid" and record["delegate"] == "gpu"
    assert record["latency"]["median"] > 0
    assert record["delegation"]["ran_nothing"] and record["delegation"]["delegated_nodes"] == 0
    assert any("gpu delegate executed 0 of" in p and "CPU fallback, not a GPU number" in p
               for p in record["problems"]), record["problems"]


@rig
@pytest.mark.slow
def test_failures_are_per_job_and_the_batch_goes_on(adb_device: ConnectedDevice, adb_server: AdbServer,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_litert()
    good = tflite(SMALL)
    broken_path = tmp_path / "broken.tflite"
    broken_path.write_bytes(b"this is not a flatbuffer")
    broken = Artifact(SMALL_STD, "tflite", broken_path, good.input_path, good.reference_output_path, "NHWC",
                      "0" * 64)
    transport = transport_for(tmp_path, adb_device, adb_server)
    first, second = run_jobs(transport, [SMALL_STD, SMALL], artifacts={SMALL_STD: broken, SMALL: good})
    assert first["status"] == "error" and "benchmark_model exited with code 1" in first["error"]
    assert "Failed to construct interpreter" in first["error"]  # the last lines of its output
    assert second["status"] == "ok", second.get("error")

    import backends.android

    monkeypatch.setattr(backends.android, "benchmark_timeout", lambda policy, op_profiling=False: 3.0)
    started = time.monotonic()
    (slow,) = run_jobs(transport, [SMALL], TimingPolicy(warmup_runs=1, warmup_seconds=0.0, min_runs=5,
                                                        min_seconds=30, max_seconds=40))
    assert slow["status"] == "error" and "timed out after 3 s" in slow["error"]
    assert time.monotonic() - started < 20

    missing = transport_for(tmp_path, adb_device, adb_server, benchmark_model=str(tmp_path / "nope"))
    records = run_jobs(missing, [SMALL, SMALL_STD])
    assert [r["status"] for r in records] == ["error", "error"]
    assert all("benchmark_model not found" in r["error"] and "download the Android benchmark binary" in r["error"]
               for r in records)
    on_device = transport_for(tmp_path, adb_device, adb_server, benchmark_model="/data/local/tmp/none/benchmark_model")
    (record,) = run_jobs(on_device, [SMALL])
    assert "benchmark_model not found at /data/local/tmp/none/benchmark_model" in record["error"]


@rig
def test_check_reports_device_binary_and_sensors(adb_device: ConnectedDevice, adb_server: AdbServer,
                                                 adb_device_factory: Callable[..., ConnectedDevice],
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(adb_server.port))  # honoured without adb_server_port
    result = transport_for(tmp_path, adb_device, adb_server, adb_server_port=None).check()
    assert result["usable"] and result["problems"] == [], result
    assert result["fingerprint"]["board_model"] == "convbench LoopbackPhone"
    assert result["fingerprint"]["emulated"] is None  # nothing says otherwise: treated as real hardware
    assert result["runtimes"]["tflite"]["benchmark_model"] == "/data/local/tmp/convbench/benchmark_model"
    adb_device.set_prop("ro.boot.qemu", "1")  # what the Android Emulator sets
    fingerprint = transport_for(tmp_path, adb_device, adb_server).check()["fingerprint"]
    assert fingerprint["emulated"] == "Android Emulator (ro.boot.qemu=1)"
    adb_device.set_prop("ro.convbench.emulated", "loopback phone")  # what `harness lab up` sets
    assert transport_for(tmp_path, adb_device, adb_server).check()["fingerprint"]["emulated"] == "loopback phone"
    assert result["energy"]["sensor"] == "battery(power_supply)"
    assert result["state"]["thermal_c"]["cpu-thermal"] == 41.0

    none = transport_for(tmp_path, adb_device, adb_server, energy={"sensor": "none"},
                         benchmark_model=str(tmp_path / "missing"))
    result = none.check()
    assert not result["usable"] and "benchmark_model not found" in result["problems"][0]
    assert result["energy"] == {"sensor": None, "reason": "energy sensor is `none` in devices.yaml"}

    import shutil

    shutil.rmtree(adb_device.root / "sys/class/power_supply")
    result = transport_for(tmp_path, adb_device, adb_server).check()
    assert result["usable"] and "current_now" in result["energy"]["reason"]

    locked = adb_device_factory(authorized=False)
    result = transport_for(tmp_path, locked, adb_server).check()
    assert not result["usable"] and "Allow USB debugging" in result["problems"][0]


@rig
@pytest.mark.slow
def test_device_without_shell_v2_and_cpu_delegate(adb_device_factory: Callable[..., ConnectedDevice],
                                                  adb_server: AdbServer, tmp_path: Path) -> None:
    require_litert()
    handle = adb_device_factory(features=("stat_v2", "ls_v2", "fixed_push_mkdir"))
    transport = transport_for(tmp_path, handle, adb_server, delegates=["cpu"])
    assert "shell_v2" not in transport.client.features()
    (record,) = run_jobs(transport, [SMALL], delegate="cpu")
    assert record["status"] == "ok", record.get("error")
    assert "--use_xnnpack=false" in record["benchmark"]["command"] and record["benchmark"]["exit_code"] == 0
    assert record["delegation"]["delegate"] == "cpu" and record["warnings"] == []
    assert record["latency"]["n"] >= 5


@rig
@pytest.mark.slow
def test_wait_and_hot_phone_through_the_cli(adb_device: ConnectedDevice, adb_server: AdbServer, tmp_path: Path,
                                            results_dir: Path) -> None:
    """The loopback phone starts at 41 \u00b0C: with a 40 \u00b0C target, check says so and a run shows its wait."""
    require_litert()
    from harness.cli import main

    devices = write_devices(tmp_path / "devices.yaml", device_entry(
        adb_device, adb_server, thermal={"cooldown_c": 40, "max_wait_s": 300, "zones": ["cpu-thermal"]},
        energy={"sensor": "none"}))
    check = CliRunner().invoke(main, ["devices", "check", "--devices-file", str(devices)], catch_exceptions=False)
    assert check.exit_code == 0, check.output  # a warning, not "not usable"
    assert ("phone (adb): usable" in check.output and "warning:  hot: cpu-thermal at 41.0 \u00b0C, above the "
            "40 \u00b0C cool-down target: every job will wait up to 300 s") in check.output, check.output

    from harness.run import DeviceState

    events: list[object] = []

    def cool_once_shown() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(isinstance(e, DeviceState) and "(1 s of at most 300 s)" in e.state for e in list(events)):
                adb_device.write_sys("class/thermal/thermal_zone0/temp", "39500\n")
                return
            time.sleep(0.05)

    cooler = threading.Thread(target=cool_once_shown, daemon=True)
    cooler.start()
    from harness import plan
    from harness.run import execute

    phone = list(load_devices(devices).values())
    jobs = plan.make_jobs(phone, plan.Selection([SMALL], None, None))
    outcome = execute(plan.RunRequest(phone, jobs, FAST, results_dir, [SMALL]), events.append)
    cooler.join(timeout=5)
    states = [e.state for e in events if isinstance(e, DeviceState)]
    assert "cooling down: cpu-thermal 41.0 \u00b0C > 40 \u00b0C target (0 s of at most 300 s)" in states, states
    assert states[-2:] == ["tflite t1", "done"]
    (record,) = outcome.records
    assert record["status"] == "ok" and 1.0 <= record["cooldown_wait_s"] < 60 and record["warnings"] == []


@rig
@pytest.mark.slow
def test_default_timing_measures_phone_energy(adb_device: ConnectedDevice, adb_server: AdbServer, tmp_path: Path,
                                              results_dir: Path) -> None:
    """The CLI's default timing (--min-time 0.5, --max-time 1): energy is measured when the battery can be read."""
    require_litert()
    adb_device.write_sys("class/power_supply/battery/current_now", "-500000\n")  # 0.5 A at 4 V: 2 W
    adb_device.write_sys("class/power_supply/battery/voltage_now", "4000000\n")
    battery = write_devices(tmp_path / "battery.yaml", device_entry(adb_device, adb_server))
    _run, (record,), _ = harness_run(battery, results_dir, [SMALL])  # no timing option: the defaults
    assert record["status"] == "ok", record.get("error")
    energy = record["energy"]
    assert energy["status"] == "ok", energy
    assert energy["joules"] == pytest.approx(2.0 * energy["window_s"], rel=1e-6) and energy["window_s"] >= 1.0
    assert energy["joules_per_inference"] > 0 and energy["inferences"] == record["latency"]["n"]
    command = record["benchmark"]["command"]
    assert "--min_secs=1.5" in command and "--max_secs=1.5" in command  # 1.5 x the 1 s energy window
    assert record["benchmark"]["timing_extended_for_energy"].startswith(
        "--min_secs raised from 0.5 s to 1.5 s and --max_secs from 1 s, so that the measured loop covers the "
        "battery's 1 s minimum energy window with margin")

    # Without a battery sensor nothing is stretched: benchmark_model gets the CLI's timing as it is.
    none = write_devices(tmp_path / "none.yaml", device_entry(adb_device, adb_server, energy={"sensor": "none"}))
    _run, (plain,), _ = harness_run(none, tmp_path / "plain", [SMALL])
    assert plain["status"] == "ok" and plain["energy"]["status"] == "unavailable"
    assert "--min_secs=0.5" in plain["benchmark"]["command"] and "--max_secs=1" in plain["benchmark"]["command"]
    assert "timing_extended_for_energy" not in plain["benchmark"] and "timing" not in plain["energy"]
