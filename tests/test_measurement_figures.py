"""Each published figure against an independent reference: energy, memory, block timing, units.

Every test here failed on the instrument before the fixes of "Every published figure right".
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest

from backends import adb, runner
from backends.base import TimingPolicy
from harness.selftest import measure_locally

TINY = "conv-pointwise-M1-N1-k1-x1-s1-nobn"  # a few microseconds a call: always timed in blocks
SMALL = "conv-separable-M16-N32-k3-x14-s1"
LARGE = "mobilenet_v1_conv-1.0-224"  # the standard-conv twin: ~4.9 GMAC, ~120 MB of weights


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path


# ---------------------------------------------------------------- energy
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "tflite"])
def test_energy_per_inference_of_a_block_timed_layer_is_power_times_call_time(tmp_path, backend):
    """10 W held constant: J/inference must be 10 W x the time of one call, whatever the block size."""
    write(tmp_path, "class/hwmon/hwmon0/power1_input", "10000000")  # microwatts
    # tflite's call takes under 1 us here: 100,000 blocks of 16 (the default max_runs) once ended the loop
    # after 0.79 s, short of the energy window, until the runner let the window outlast the sample cap.
    policy = TimingPolicy(warmup_runs=3, warmup_seconds=0.1, min_seconds=1.2, max_seconds=1.5,
                          target_ci_rel_width=0.0)
    # Blocks of 16 calls per sample, fixed so that the test means the same on any machine.
    (record,) = measure_locally(backend, [TINY], policy, options={"block_size": 16}, sysfs_root=str(tmp_path),
                              energy={"sensor": "hwmon"})
    energy = record["energy"]
    assert record["block_size"] == 16
    assert energy["status"] == "ok", energy
    assert energy["inferences"] == 1 + record["warmup_runs"] + len(record["samples_s"]) * record["block_size"]
    # The time of one call as the timed loop saw it (the machine may be shared: the mean of the
    # loop, not its median, is what the sensor integrates over).
    per_call_s = record["loop_wall_s"] / (len(record["samples_s"]) * record["block_size"])
    assert energy["joules_per_inference"] == pytest.approx(10.0 * per_call_s, rel=0.10)


class _FlakySensorFiles:
    """An hwmon energy counter whose file vanishes mid-measurement (a driver unbound, a USB meter pulled)."""

    def __init__(self, root: Path) -> None:
        self.counter = write(root, "class/hwmon/hwmon0/energy1_input", "1000000")
        self.calls = 0

    def timing(self) -> dict:
        self.calls += 1
        self.counter.unlink()
        return {"samples_s": [1e-3] * 10, "warmup_runs": 1, "inferences": 11, "block_size": 1}


def test_a_sensor_failing_at_stop_does_not_rerun_the_measurement(tmp_path):
    files = _FlakySensorFiles(tmp_path)
    timing, energy = runner._energy({"sensor": "hwmon"}, str(tmp_path), {}, files.timing)
    assert files.calls == 1
    assert timing["inferences"] == 11
    assert energy["status"] == "unavailable" and "end of the window" in energy["reason"]


def test_rapl_packages_wrap_each_on_their_own_range(tmp_path):
    pkg0 = write(tmp_path, "class/powercap/intel-rapl:0/energy_uj", "999000000")
    write(tmp_path, "class/powercap/intel-rapl:0/max_energy_range_uj", "1000000000")
    write(tmp_path, "class/powercap/intel-rapl:0/name", "package-0")
    pkg1 = write(tmp_path, "class/powercap/intel-rapl:1/energy_uj", "10000000")
    write(tmp_path, "class/powercap/intel-rapl:1/max_energy_range_uj", "262143328850")
    write(tmp_path, "class/powercap/intel-rapl:1/name", "package-1")
    sensor = runner.open_energy_sensor({"sensor": "rapl"}, str(tmp_path))
    assert sensor.name == "rapl:package-0,package-1"
    sensor.start()
    pkg0.write_text("2000000\n")  # wrapped on its 1000 J range: 1 J to the top, then 2 J
    pkg1.write_text("13000000\n")  # 3 J, no wrap
    assert sensor.stop() == pytest.approx(6.0)


# ---------------------------------------------------------------- memory
@pytest.mark.slow
def test_peak_memory_of_a_job_is_its_own_not_the_previous_models():
    policy = TimingPolicy(warmup_runs=2, warmup_seconds=0.0, min_runs=5, min_seconds=0.05, max_seconds=0.3)
    after_large = measure_locally("onnxruntime", [LARGE, SMALL], policy)
    alone = measure_locally("onnxruntime", [SMALL], policy)
    large, small = after_large[0]["memory"], after_large[1]["memory"]
    assert large["rss_increase_bytes"] > 80e6  # the twin's weights alone are ~120 MB
    assert small["peak_rss_bytes"] == pytest.approx(alone[0]["memory"]["peak_rss_bytes"], rel=0.25)
    for mem in (large, small, alone[0]["memory"]):
        assert mem["isolation"] == "fresh process" and mem["peak_is_per_item"]
        # the runtime's own footprint and the model's increase are reported apart
        assert mem["baseline_rss_bytes"] + mem["rss_increase_bytes"] == mem["peak_rss_bytes"]
    assert small["rss_increase_bytes"] < 0.25 * small["baseline_rss_bytes"]


# ---------------------------------------------------------------- block timing
def test_block_size_is_a_power_of_two_and_stable_under_jitter():
    sizes = {runner.choose_block_size(fastest, 100_000) for fastest in range(9_000, 11_000, 50)}
    assert sizes <= {8, 16}
    assert runner.choose_block_size(200_000, 100_000) == 1
    assert runner.choose_block_size(1, 100_000) == runner.MAX_BLOCK
    for fastest in (1, 37, 999, 12_345, 49_999):
        block = runner.choose_block_size(fastest, 100_000)
        assert block & (block - 1) == 0


@pytest.mark.slow
def test_a_block_size_fixed_by_the_plan_is_used_and_reported():
    # Enough warm-up calls that their fastest is the call's few microseconds even on a busy machine
    # (with two, the fastest of three calls once took over 50 us under CI's load: a block of 1).
    policy = TimingPolicy(warmup_runs=50, warmup_seconds=0.0, min_runs=5, min_seconds=0.05, max_seconds=0.2)
    (fixed,) = measure_locally("onnxruntime", [TINY], policy, options={"block_size": 4})
    (chosen,) = measure_locally("onnxruntime", [TINY], policy)
    assert fixed["block_size"] == 4 and fixed["block_size_source"] == "fixed by the plan"
    assert chosen["block_size_source"] == "chosen from the warm-up" and chosen["block_size"] >= 2
    assert fixed["latency"]["block_size"] == 4 and "blocks of 4" in fixed["latency"]["statistic"]
    assert fixed["timer_covers"] == "compute" and fixed["gc_disabled"]


def test_the_sample_cap_does_not_cut_an_energy_window_short():
    """A fast call in small blocks reaches max_runs early: with an energy window to cover, the loop goes on
    (up to 10x the cap) until it does; without one, the cap ends it as before."""
    policy = {"warmup_runs": 1, "warmup_seconds": 0, "min_runs": 5, "max_runs": 200, "min_seconds": 0,
              "max_seconds": 5, "target_ci_rel_width": 0.0, "block_size": None}
    pause = lambda: time.sleep(0.0005)  # noqa: E731 - 0.5 ms a call: 200 samples in ~0.1 s
    capped = runner.measure(pause, policy, block_size=1)
    assert capped["stop_reason"] == "max_runs" and len(capped["samples_s"]) == 200
    covered = runner.measure(pause, policy, block_size=1, min_wall_s=0.3)
    assert 200 < len(covered["samples_s"]) <= 2000 and covered["loop_wall_s"] >= 0.25


def test_the_garbage_collector_is_off_inside_the_timed_loop_only():
    seen = []
    result = runner.measure(lambda: seen.append(gc.isenabled()),
                            {"warmup_runs": 1, "warmup_seconds": 0, "min_runs": 3, "max_runs": 3,
                             "min_seconds": 0, "max_seconds": 1, "block_size": None})
    assert seen and not any(seen)
    assert gc.isenabled() and result["gc_disabled"]


def test_untimed_calls_are_synchronised():
    events = []
    runner.measure(lambda: events.append("call"), {"warmup_runs": 2, "warmup_seconds": 0, "min_runs": 2,
                                                   "max_runs": 2, "min_seconds": 0, "max_seconds": 1},
                   sync=lambda: events.append("sync"))
    # the first call and each warm-up call are followed by a sync before anything is timed
    assert events[:6] == ["call", "sync", "call", "sync", "call", "sync"]


# ---------------------------------------------------------------- power units
# (current_now, voltage_now) as drivers report them, and the watts they mean.
REAL_READINGS = [
    ("-1093750", "3868000", 1.09375 * 3.868),  # Pixel-style: microamps (negative discharging), microvolts
    ("15000", "3850000", 0.015 * 3.85),  # 15 mA in microamps: an idle phone, not 15 A
    ("523437", "4012000", 0.523437 * 4.012),  # microamps, positive while discharging (some vendors)
    ("-341", "3912000", 0.341 * 3.912),  # Samsung/OnePlus-style milliamps with microvolts
    ("1200", "3700", 1.2 * 3.7),  # milliamps and millivolts
    ("0", "3850000", 0.0),
]


@pytest.mark.parametrize(("current", "voltage", "watts"), REAL_READINGS)
def test_one_power_unit_rule_on_host_and_device(current, voltage, watts):
    assert runner.power_supply_watts(current, voltage) == pytest.approx(watts)
    assert adb.power_supply_units(current, voltage).watts == pytest.approx(watts)


# ---------------------------------------------------------------- block sizes across runs
@pytest.mark.slow
def test_runs_into_one_store_reuse_each_jobs_block_size(tmp_path):
    import json

    from click.testing import CliRunner

    from harness.cli import main
    from harness.store import list_runs, read_run

    args = ["run", "--repeats", "1",
            "--workloads", TINY, "--backends", "onnxruntime", "--min-time", "0.05", "--max-time", "0.2",
            "--out", str(tmp_path)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    stored = json.loads((tmp_path / "block_sizes.json").read_text())
    assert list(stored) == [f"local|onnxruntime|t1|{TINY}"]
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    (rec1,), (rec2,) = (read_run(run)[1] for run in list_runs(tmp_path))  # oldest first
    assert rec1["block_size_source"] == "chosen from the warm-up"
    assert rec2["block_size_source"] == "fixed by the plan"
    assert rec1["block_size"] == rec2["block_size"] == stored[f"local|onnxruntime|t1|{TINY}"]


def test_compare_gives_no_verdict_across_different_block_sizes(tmp_path):
    import json
    import shutil

    from harness import compare as cmp

    runs = Path(__file__).parent / "data" / "runs"
    baseline, current = runs / "20260102T000000Z-bbbbbb", tmp_path / "20260103T000000Z-cccccc"
    shutil.copytree(runs / current.name, current)
    records = [json.loads(line) for line in (current / "measurements.jsonl").read_text().splitlines()]
    for record in records:
        record["block_size"] = 16
    (current / "measurements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = cmp.compare_runs(baseline, current).rows
    assert rows and all(r["verdict"] == "inconclusive" and "block sizes differ (1 in the baseline, 16 now)"
                        in r["note"] for r in rows)


@pytest.mark.slow
def test_selftest_checks_energy_against_a_constant_power_sensor():
    from click.testing import CliRunner

    from harness.cli import main

    result = CliRunner().invoke(main, ["selftest", "--parts", "energy"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("energy ")]
    assert len(lines) == 2 and all("uJ/inference" in line and "ratio" in line for line in lines)


def test_runs_started_in_the_same_second_list_in_start_order(tmp_path):
    from harness.store import RunWriter, list_runs

    ids = ["20260101T000000Z-ffffff", "20260101T000000Z-000000"]  # one second; suffixes sort against start order
    for run_id in ids:
        RunWriter(tmp_path, {}, run_id=run_id).finish("complete")
    assert [p.name for p in list_runs(tmp_path)] == ids
