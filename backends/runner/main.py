"""The runner's entry point: read a plan, emit JSON lines, one fresh process per item.

Usage (as the zipapp every transport ships, see ``backends.runner.zipapp_path``)::

    python3 runner.pyz PLAN.json        # or: python3 runner.pyz - < PLAN.json
    python3 runner.pyz --check OPTIONS_JSON
    python3 runner.pyz --item           # one item of a plan on stdin (the runner runs this itself)

The plan names the runtime, thread count, timing policy, sensors and a list of items (job
id, model path, input .npy, output .npy).  The runner prints one JSON object per line: first
``{"type": "hello", ...}`` with the device fingerprint and runtime version, then
``{"type": "result", ...}`` per item as soon as it finishes.  A failing item yields a result
with ``error``; the runner goes on with the next.  When the plan asks for a cool-down
(``cooldown``: target_c, max_wait_s, zones), the runner waits before each item until the
device is cool, printing ``{"type": "status", ...}`` lines meanwhile (``cooldown.py``).

Memory: each item runs in a fresh process of this runner (``--item``), so an item's peak RSS
is its own model's (no earlier model still resident), and ``baseline_rss_bytes`` is that
process's footprint once the runtime is imported and before the model is loaded
(interpreter + numpy + runtime).

Compile: a runtime that compiles the model (torch-compile) does it inside ``load``, with the
first call that triggers it; ``compile_s`` is that time (also inside ``load_s``), never timed.

Op profile: after an item is measured (and its memory and output taken), a runtime with a
profiler of its own runs a short profiled loop and reports ``op_profile`` (time per op type
and per layer type, see ``runtimes.summarise_ops``) and ``op_profile_total_s`` when the policy's
``op_profile`` asks for it.
"""

import json
import os
import sys
import time
import traceback

from .cooldown import wait_until_cool
from .energy import EnergyUnavailable, open_energy_sensor
from .fingerprint import fingerprint
from .memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss
from .probe import run_probe
from .runtimes import RUNTIMES
from .state import BusyMeter, read_thermal_zones, system_state
from .timing import measure


def _emit(doc):
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def _energy(sensor_spec, sysfs_root, policy, timing_fn):
    """Run timing_fn once under an energy sensor; returns (timing, energy dict).

    The measurement is never repeated: a sensor that fails at start or stop only costs
    the energy figure, which is then reported unavailable with the reason.
    """
    try:
        sensor = open_energy_sensor(sensor_spec, sysfs_root)
    except EnergyUnavailable as exc:
        return timing_fn(), {"status": "unavailable", "reason": str(exc)}
    idle_s = float(policy.get("energy_idle_seconds", 0.0))
    idle_watts = None
    try:
        if idle_s > 0:
            sensor.start()
            time.sleep(idle_s)
            idle_watts = sensor.stop() / idle_s
        sensor.start()
    except Exception as exc:  # sensors raise OSError, ValueError, EnergyUnavailable...
        return timing_fn(), {"status": "unavailable", "sensor": sensor.name,
                             "reason": "sensor failed before measuring: %s: %s" % (type(exc).__name__, exc)}
    window_start = time.monotonic()
    timing = timing_fn()
    try:
        joules = sensor.stop()
    except Exception as exc:
        return timing, {"status": "unavailable", "sensor": sensor.name,
                        "reason": "sensor failed at the end of the window: %s: %s" % (type(exc).__name__, exc)}
    window = time.monotonic() - window_start
    inferences = timing["inferences"]
    energy = {"sensor": sensor.name, "resolution": sensor.resolution, "window_s": window,
              "joules": joules, "inferences": inferences, "idle_watts": idle_watts,
              "covers": "first, warm-up and timed inferences"}
    min_window = float(policy.get("energy_min_window_s", 1.0))
    if window < min_window:
        energy.update(status="unavailable",
                      reason="measured window %.3fs is shorter than the %.1fs minimum" % (window, min_window))
    elif idle_watts is None:
        energy.update(status="ok", joules_per_inference=joules / inferences, idle_subtracted=False)
    else:
        energy.update(status="ok", joules_per_inference=max(0.0, joules - idle_watts * window) / inferences,
                      idle_subtracted=True)
    return timing, energy


def measure_item(runtime, item, plan):
    """Load one item's model, measure it, save its output; never raises.

    Called in the fresh process that ``--item`` starts, with the runtime imported and no
    model loaded yet: the RSS at that moment is the runtime's own baseline.
    """
    import numpy as np

    sysfs_root = plan.get("sysfs_root", "/sys")
    policy = plan.get("policy", {})
    result = {"type": "result", "job_id": item["job_id"], "thermal_before": system_state(sysfs_root)}
    try:
        input_array = np.load(item["input"])
        probe_s = float(policy.get("reference_probe_seconds", 0.2))
        if probe_s > 0:  # before the model loads: its arrays are freed before the memory baseline
            result["reference_probe"] = run_probe(probe_s)
        baseline = current_rss_bytes()  # runtime imported, model not yet loaded
        peak_reset = reset_peak_rss()
        start = time.perf_counter_ns()
        call = runtime.load(item["model"], input_array)
        result["load_s"] = (time.perf_counter_ns() - start) / 1e9
        result["compile_s"] = runtime.compile_s  # inside load_s; None unless the runtime compiles (torch-compile)
        cuda_timer = runtime.make_cuda_timer() if runtime.timer == "cuda_events" else None
        energy_spec = dict(plan.get("energy") or {"sensor": "auto"})
        if runtime.device == "cuda" and energy_spec.get("sensor", "auto") == "auto":
            energy_spec["sensor"] = "nvml"
        busy = BusyMeter()
        busy.start()
        # With a sensor the loop must outlast the energy window (margin for the sensor's own reads).
        window_s = 1.05 * float(policy.get("energy_min_window_s", 1.0)) \
            if energy_spec.get("sensor", "auto") != "none" else 0.0
        timing, energy = _energy(energy_spec, sysfs_root, policy,
                                 lambda: measure(call, policy, cuda_timer, runtime.sync, item.get("block_size"),
                                                 window_s))
        result["other_cpu_cores"] = busy.stop()
        result.update(timing)
        result["energy"] = energy
        result["timer"] = runtime.timer
        result["timer_covers"] = runtime.timer_covers
        result["provider"] = runtime.provider
        if getattr(runtime, "warnings", None):
            result["warnings"] = list(runtime.warnings)
        peak = peak_rss_bytes()
        result["memory"] = {
            "peak_rss_bytes": peak,
            "baseline_rss_bytes": baseline,
            "rss_increase_bytes": max(0, peak - baseline) if (peak_reset and baseline is not None) else None,
            "peak_is_per_item": peak_reset,
            "isolation": "fresh process",
            "gpu_peak_bytes": runtime.gpu_peak_bytes(),
        }
        if item.get("output"):
            np.save(item["output"], np.ascontiguousarray(runtime.output()))
        if policy.get("op_profile", False):
            result.update(_op_profile(runtime, item["model"], input_array, call))
    except Exception as exc:
        result["error"] = "%s: %s" % (type(exc).__name__, exc)
        result["traceback"] = traceback.format_exc(limit=5)
    result["thermal_after"] = system_state(sysfs_root)
    return result


def _op_profile(runtime, model_path, input_array, call):
    """The runtime's own per-op profile, after timing, memory and output are taken; never raises.

    ``op_profile_total_s`` (the profiled per-inference total) is a top-level number too, so
    that a flat table of records has it.  A failing profiler costs the profile, not the item.
    """
    try:
        profile = runtime.op_profile(model_path, input_array, call)
    except Exception as exc:
        return {"op_profile": {"source": None, "error": "%s: %s" % (type(exc).__name__, exc)}}
    if profile is None:
        return {}
    fields = {"op_profile": profile}
    if profile.get("total_s") is not None:
        fields["op_profile_total_s"] = profile["total_s"]
    return fields


def _run_item_in_fresh_process(entry, item, plan):
    """measure_item in a new process of this runner: its peak RSS is its own model's.

    A process reused across items keeps earlier models' memory resident (allocators rarely
    return it), and a forked child does not count library pages its parent faulted in;
    a fresh process is what "this model alone" means.  Its stdout carries the result line;
    its stderr goes to ours, so a crash still leaves its message for the transport.
    """
    import subprocess

    child_plan = dict(plan, items=[item])
    proc = subprocess.Popen([sys.executable, *entry, "--item"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, universal_newlines=True)
    out, _ = proc.communicate(json.dumps(child_plan))
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("type") == "result":
                return doc
    if proc.returncode < 0:
        why = "the runtime crashed (signal %d) while measuring this item" % -proc.returncode
    else:
        why = "the measuring process exited with code %d and no result" % proc.returncode
    return {"type": "result", "job_id": item["job_id"], "error": why, "error_kind": "runner_crashed"}


def _item_main():
    """``runner.py --item``: one item of a plan read from stdin, in this fresh process."""
    plan = json.load(sys.stdin)
    item = plan["items"][0]
    try:
        runtime = RUNTIMES[plan["runtime"]](plan)
    except Exception as exc:
        _emit({"type": "result", "job_id": item["job_id"], "error": "%s: %s" % (type(exc).__name__, exc)})
        return 3
    _emit(measure_item(runtime, item, plan))
    return 0


def check(options):
    """What this device offers: fingerprint, runtimes, energy sensor, temperatures."""
    sysfs_root = options.get("sysfs_root") or "/sys"
    runtimes = {}
    for name, cls in sorted(RUNTIMES.items()):
        try:
            runtimes[name] = {"version": cls({"threads": 1}).version()}
        except Exception as exc:
            runtimes[name] = {"error": "%s: %s" % (type(exc).__name__, exc)}
    try:
        sensor = open_energy_sensor(options.get("energy"), sysfs_root)
        energy = {"sensor": sensor.name, "resolution": sensor.resolution}
    except EnergyUnavailable as exc:
        energy = {"sensor": None, "reason": str(exc)}
    _emit({"type": "check", "fingerprint": fingerprint(sysfs_root), "runtimes": runtimes,
           "energy": energy, "state": system_state(sysfs_root), "thermal_zones": read_thermal_zones(sysfs_root)})
    return 0


def main(argv):
    if len(argv) == 2 and argv[1] == "--item":
        return _item_main()
    if len(argv) == 3 and argv[1] == "--check":
        return check(json.loads(argv[2]) if argv[2] else {})
    if len(argv) != 2:
        sys.stderr.write("usage: runner.py PLAN.json | -   or   runner.py --check OPTIONS_JSON\n")
        return 2
    if argv[1] == "-":
        plan = json.load(sys.stdin)
    else:
        with open(argv[1]) as handle:
            plan = json.load(handle)
    sysfs_root = plan.get("sysfs_root", "/sys")
    hello = {"type": "hello", "fingerprint": fingerprint(sysfs_root), "runtime": plan["runtime"]}
    try:
        runtime = RUNTIMES[plan["runtime"]](plan)
        hello["runtime_version"] = runtime.version()
    except Exception as exc:
        hello["error"] = "%s: %s" % (type(exc).__name__, exc)
        _emit(hello)
        return 3
    _emit(hello)
    # What a fresh process per item runs: this runner.pyz, or the package in a source checkout.
    entry = ["-m", "backends.runner"] if argv[0].endswith("__main__.py") else [os.path.abspath(argv[0])]
    for item in plan["items"]:
        cooled = _cool_down(plan, item["job_id"])
        result = _run_item_in_fresh_process(entry, item, plan)
        if cooled:
            warning = cooled.pop("warning", None)
            result.update(cooled)
            if warning:
                result["warnings"] = [*result.get("warnings", []), warning]
        _emit(result)
    return 0


def _cool_down(plan, job_id):
    """Wait before an item until the device is cool (the plan's ``cooldown``); its record fields, or {}.

    While it waits, ``{"type": "status", "job_id": ..., "cooldown": {...}}`` lines tell the host
    how hot the device still is, so the console can show the wait as it happens.
    """
    cooldown = plan.get("cooldown")
    if not cooldown or cooldown.get("target_c") is None:
        return {}
    sysfs_root = plan.get("sysfs_root", "/sys")
    return wait_until_cool(lambda: read_thermal_zones(sysfs_root), float(cooldown["target_c"]),
                           float(cooldown.get("max_wait_s", 120.0)), tuple(cooldown.get("zones") or ()),
                           report=lambda progress: _emit({"type": "status", "job_id": job_id, "cooldown": progress}))
