"""Android transport: ``benchmark_model`` (LiteRT) and ``executor_runner`` (ExecuTorch) on a phone, over ``adb``.

A ``tflite`` job runs ``benchmark_model`` on the ``.tflite``; an ``executorch`` job runs the
``executor_runner`` devices.yaml declares (``backends.executor_runner``: its flags, its output)
on the ``.pte``.  Per batch (one device, backend, thread count and delegate):

1. the device must be online and authorized (its state from the adb server), otherwise
   ``DeviceError`` with what to do (accept the RSA prompt, reconnect the cable, ``adb connect``);
2. once per transport: the fingerprint (``getprop``, cpufreq), ``benchmark_model`` and
   ``executor_runner`` pushed to ``/data/local/tmp/convbench/`` (or found on the device) and
   probed (``benchmark_model`` must start; ``executor_runner --help`` lists the flags it has),
   the battery sensor probed;
3. per job: the model is pushed unless the device already holds it (same sha256), the
   device cools down below ``thermal.cooldown_c`` if set (bounded by ``max_wait_s``), thermal
   and cpufreq are read, the tool runs (under ``taskset`` when ``cpu_mask`` is set) while one
   shell loop on the phone prints ``current_now``/``voltage_now`` every 100 ms (one stream over
   adb, read by a thread), and its output is parsed.

All of it goes through the user's adb server (``backends.adb``): one socket per call, no adb
process.

Every line the tool prints is timestamped on arrival, so the battery energy is integrated
over the measured loop only: for benchmark_model from the second ``Running benchmark for at
least`` line to the statistics that end it, divided by the runs of that loop; for
executor_runner from the end of the last warm-up execution to the end of the last one (its
``Iteration i of N`` lines), or over the whole process when the build prints only its total.
When the battery can be read, that loop is made long enough for the energy window
(``energy_timing``; the record's ``benchmark.timing_extended_for_energy`` says so).

executor_runner takes a count, not a time: unless devices.yaml sets ``num_runs``, a short
pilot run times one execution and the count is chosen the way benchmark_model stops
(``--min-time``/``--max-time``, at least ``--min-runs``).  It prints per-execution times only
from ExecuTorch 1.3 on; before, the record's latency is the mean of the total it prints, and
says so (``latency.statistic``, ``benchmark.timing``).

Cool-down waits follow the rule every transport shares (``backends.runner.cooldown``) and are
reported to ``on_status`` as they happen.

A job that fails (non-zero exit, timeout, unparsable output, missing binary) gives an error
record with the last lines of output and the batch goes on.  A device that vanishes gives
an error record for the job it was running and ``DeviceError`` for the rest.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from backends.adb import (
    AdbClient,
    AdbCommandFailed,
    AdbDeviceNotFound,
    AdbError,
    AdbNotInstalled,
    AdbTimeout,
    ShellSession,
    integrate_energy,
    power_supply_units,
    quote_args,
)
from backends.base import (
    Artifact,
    DeviceError,
    Job,
    ResultCallback,
    StatusCallback,
    TimingPolicy,
    Transport,
    cooldown_status,
)
from backends.benchmark_model import (
    BenchmarkModelResult,
    TimingStats,
    parse_benchmark_output,
    parse_op_profile,
    timing_event,
)
from backends.executor_runner import (
    BUILD_HELP,
    LOGCAT_TAG,
    RunnerResult,
    diagnose,
    executions_for,
    latency_fields,
    loop_seconds_per_execution,
    parse_help,
    parse_output,
    per_run_estimate,
    runner_argv,
)
from backends.executor_runner import (
    timing_event as runner_event,
)
from backends.runner import file_sha256, wait_until_cool
from harness.records import ErrorKind, error_record, raw_record
from harness.registry import Fail, TransportInfo

REMOTE_DIR = "/data/local/tmp/convbench"
ON_DEVICE_PREFIXES = ("/data/", "/system/")
BENCHMARK_HELP = (
    "download the Android benchmark binary (android_aarch64_benchmark_model, linked from "
    "https://ai.google.dev/edge/litert/models/measurement) and set benchmark_model in devices.yaml to its "
    "path on this computer (it is pushed to " + REMOTE_DIR + "/) or to its path on the device"
)
RUNNER_HELP = "ExecuTorch's executor_runner: " + BUILD_HELP
ENERGY_SENSOR = "battery(power_supply)"
ENERGY_NOTE = "USB charging distorts battery readings: unplug or disable charging (e.g. `dumpsys battery unplug`)"
BATTERY_SENSORS = ("auto", "battery", "power_supply")
SAMPLE_PERIOD_S = 0.1  # battery sampling period of the loop on the phone
SAMPLED_HOW = "by a shell loop on the device, streamed over adb"
COOLDOWN_POLL_S = 0.5
# benchmark_model's measured loop, when the battery is sampled, lasts this many times the energy
# minimum window: the window is stamped by lines crossing adb, so a loop of exactly the minimum
# can come out a little short of it.
ENERGY_WINDOW_MARGIN = 1.5
TAIL_LINES = 8
PID_MARKER = "__CONVBENCH_PID__="
MIB = 1024 * 1024
DELEGATE_FLAGS = {
    "cpu": ["--use_xnnpack=false"],
    "xnnpack": ["--use_xnnpack=true"],
    "gpu": ["--use_gpu=true"],
    "nnapi": ["--use_nnapi=true"],
}
DELEGATE_LABELS = {"gpu": "GPU", "nnapi": "NNAPI", "xnnpack": "XNNPACK"}
_VERSION = re.compile(
    r"(?:LiteRT|TF ?Lite|TensorFlow Lite)(?: runtime)? version\s*[:=]?\s*\[?v?(?P<version>\d+\.\d+[\w.+-]*)", re.I
)


# -- pure helpers (no device) ---------------------------------------------------------------

# The phone's reference probe (see AndroidTransport._reference_probe): 7 MMACs of 3x3 conv over
# 100 KiB of activations, a millisecond or so on a phone core.
PROBE_WORKLOAD = "conv-standard-M32-N32-k3-x28-s1"

# Properties that say a "phone" is not one: the Android Emulator sets ro.boot.qemu (ro.kernel.qemu
# before Android 12) and runs on ranchu/goldfish hardware; convbench's loopback phone says so itself.
EMULATION_PROPS = ("ro.convbench.emulated", "ro.boot.qemu", "ro.kernel.qemu")
EMULATOR_HARDWARE = ("ranchu", "goldfish")


def emulation(props: Mapping[str, str]) -> str | None:
    """What the device's properties say it emulates a phone with, or None for real hardware."""
    if props.get("ro.convbench.emulated"):
        return props["ro.convbench.emulated"]
    for key in ("ro.boot.qemu", "ro.kernel.qemu"):
        if props.get(key) == "1":
            return f"Android Emulator ({key}=1)"
    if props.get("ro.hardware") in EMULATOR_HARDWARE:
        return f"Android Emulator (ro.hardware={props['ro.hardware']})"
    return None



def benchmark_timeout(policy: TimingPolicy, op_profiling: bool = False) -> float:
    """Wall-clock limit for one run: each timed loop stops after max_seconds (plus one
    inference); loading, delegate compilation and the adb round trips get a generous margin."""
    seconds = 120.0 + 3.0 * (policy.max_seconds + policy.warmup_seconds)
    return seconds * (1.5 if op_profiling else 1.0)


def energy_timing(policy: TimingPolicy) -> tuple[TimingPolicy, str | None]:
    """The timing policy benchmark_model gets when the battery is sampled, and why it changed.

    benchmark_model ends its measured loop once it ran --num_runs and --min_secs passed (or
    --max_secs did); the battery energy is integrated over that loop only and needs
    ``energy_min_window_s``.  With the CLI's defaults (--min-time 0.5, --max-time 1) the loop
    of a fast model lasts 0.5 s and energy was never measured: here the loop is made to last
    ENERGY_WINDOW_MARGIN times the minimum window.  Unchanged when it already does.
    """
    wanted = ENERGY_WINDOW_MARGIN * policy.energy_min_window_s
    if policy.min_seconds >= wanted:
        return policy, None
    longer = replace(policy, min_seconds=wanted, max_seconds=max(policy.max_seconds, wanted))
    maximum = (f" and --max_secs from {_secs(policy.max_seconds)} s" if longer.max_seconds != policy.max_seconds
               else "")
    return longer, (f"--min_secs raised from {_secs(policy.min_seconds)} s to {_secs(wanted)} s{maximum}, so that "
                    f"the measured loop covers the battery's {_secs(policy.energy_min_window_s)} s minimum energy "
                    "window with margin (`energy: none` in devices.yaml keeps --min-time/--max-time)")


# Executions the pilot run times after its warm-up: with 5, one slow execution on a busy phone (or host)
# moved the median enough to halve the measured loop and lose the energy window.
PILOT_EXECUTIONS = 20


class StampedLines:
    """What a program on the phone prints, line by line as adb streams it: every line, each timing event
    (``event_of(line)``) stamped on arrival, and the program's pid from the ``PID_MARKER`` line."""

    def __init__(self, event_of: Any) -> None:
        self._event_of = event_of
        self._lock = threading.Lock()
        self.lines: list[str] = []
        self.marks: list[tuple[float, str]] = []
        self._pids: list[str] = []

    def on_line(self, _stream: str, line: str) -> None:
        now = time.monotonic()
        if line.startswith(PID_MARKER):
            self._pids.append(line[len(PID_MARKER):].strip())
            return
        event = self._event_of(line)
        with self._lock:
            self.lines.append(line)
            if event:
                self.marks.append((now, event))

    @property
    def pid(self) -> str | None:
        """The program's pid on the phone (for a kill after a timeout, or its logcat lines), if it said."""
        return self._pids[0] if self._pids and self._pids[0].isdigit() else None


def run_counts(policy: TimingPolicy, options: Mapping[str, Any]) -> tuple[int, int]:
    """(num_runs, warmup_runs): devices.yaml wins, else derived from the timing policy."""
    num_runs = options.get("num_runs")
    warmup = options.get("warmup_runs")
    return (int(num_runs) if num_runs is not None else max(policy.min_runs, 50),
            int(warmup) if warmup is not None else policy.warmup_runs)


def _secs(value: float) -> str:
    return format(float(value), "g")


def benchmark_argv(binary: str, model: str, job: Job, policy: TimingPolicy, options: Mapping[str, Any],
                   cpu_mask: str | None = None) -> list[str]:
    """benchmark_model's argument vector for one job (quote it with ``quote_args``)."""
    num_runs, warmup_runs = run_counts(policy, options)
    argv = [
        binary,
        f"--graph={model}",
        f"--num_threads={job.threads}",
        f"--num_runs={num_runs}",
        f"--warmup_runs={warmup_runs}",
        f"--warmup_min_secs={_secs(policy.warmup_seconds)}",
        f"--min_secs={_secs(policy.min_seconds)}",
        f"--max_secs={_secs(policy.max_seconds)}",
        *DELEGATE_FLAGS.get(job.delegate or "", []),
        "--report_peak_memory_footprint=true",
    ]
    if options.get("op_profiling"):
        argv.append("--enable_op_profiling=true")
    if cpu_mask:
        argv = ["taskset", cpu_mask, *argv]
    return argv


def latency_from(stats: TimingStats) -> dict[str, Any]:
    """The measured loop's statistics in seconds (benchmark_model prints microseconds).

    ``median`` is the printed median, or the mean when this build prints no percentiles
    (then ``median_is_mean`` is true).  No confidence interval: benchmark_model does not
    print its samples, and one cannot be derived from these summaries.
    """
    us = 1e-6
    mean = stats.avg if stats.avg is not None else stats.curr
    out: dict[str, Any] = {"n": stats.count}
    if mean is not None:
        out["mean"] = mean * us
    median = stats.median if stats.median is not None else mean
    if median is not None:
        out["median"] = median * us
    if stats.median is None:
        out["median_is_mean"] = True
    for key in ("std", "min", "max", "p5", "p95"):
        value = getattr(stats, key)
        if value is not None:
            out[key] = value * us
    if out.get("mean") and out.get("std") is not None:
        out["cv"] = out["std"] / out["mean"]
    return out


def observed_provider(requested: str | None, result: BenchmarkModelResult, delegation: dict[str, Any]) -> str:
    """What ran the graph: the requested delegate (``+cpu`` when it took only part), else XNNPACK or built-ins."""
    delegated, total = delegation.get("delegated_nodes") or 0, delegation.get("total_nodes")
    if requested in DELEGATE_LABELS and not delegation.get("ran_nothing") and delegated:
        return requested if not total or delegated >= total else f"{requested}+cpu"
    xnn = result.delegates.get("xnnpack")
    return "xnnpack" if xnn is not None and xnn.nodes_delegated else "builtin"


def delegation_report(requested: str | None, result: BenchmarkModelResult) -> tuple[dict[str, Any], list[str],
                                                                                    list[str]]:
    """(delegation, problems, warnings) for the delegate the job asked for."""
    rep = result.delegates.get(requested) if requested else None
    delegation: dict[str, Any] = {"delegate": requested, "delegated_nodes": None, "total_nodes": None,
                                  "partitions": None, "ran_nothing": False}
    problems: list[str] = []
    warnings: list[str] = []
    if requested not in DELEGATE_LABELS:  # "cpu" (or nothing): the built-in kernels
        xnn = result.delegates.get("xnnpack")
        if requested == "cpu" and xnn is not None and xnn.nodes_delegated:
            warnings.append(f"XNNPACK took {xnn.nodes_delegated} nodes although the cpu delegate "
                            "(built-in kernels, --use_xnnpack=false) was requested")
        delegation.update(delegated_nodes=0, total_nodes=result.total_nodes)
        return delegation, problems, warnings
    label = DELEGATE_LABELS[requested]
    total = rep.nodes_total if rep is not None and rep.nodes_total is not None else None
    if total is None:
        totals = [r.nodes_total for r in result.delegates.values() if r.nodes_total is not None]
        total = max(totals) if totals else None
    delegated = rep.nodes_delegated if rep is not None else None
    ran_nothing = bool(rep is not None and rep.ran_nothing) or (
        result.delegate_ran_nothing and result.delegate_name == requested)
    if ran_nothing and delegated is None:
        delegated = 0
    delegation.update(delegated_nodes=delegated, total_nodes=total,
                      partitions=rep.partitions if rep is not None else None, ran_nothing=ran_nothing,
                      status=rep.status if rep is not None else None)
    if ran_nothing:
        of = f" of {total}" if total else ""
        why = f" ({rep.status})" if rep is not None and rep.status in ("unsupported", "failed") else ""
        problems.append(f"{requested} delegate executed 0{of} nodes{why}: CPU fallback, not a {label} number")
    elif delegated is not None and total and delegated < total:
        parts = f", {rep.partitions} partitions" if rep is not None and rep.partitions else ""
        problems.append(f"{requested} delegate executed only {delegated} of {total} nodes{parts}: the other "
                        f"{total - delegated} ran on the CPU, not a pure {label} number")
    elif rep is not None and rep.status == "partial":
        problems.append(f"{requested} delegate ran only part of the graph ({rep.delegate_kernels} delegate kernels "
                        f"with CPU ops between them): not a pure {label} number")
    elif rep is None or (rep.status is None and delegated is None and rep.delegate_kernels is None):
        warnings.append(f"benchmark_model printed nothing about how many nodes the {requested} delegate took: "
                        "delegation could not be checked")
    return delegation, problems, warnings


def _value_at(points: Sequence[tuple[float, float]], t: float) -> float:
    """Linear interpolation in time-ordered (t, value) points, held constant outside them."""
    if t <= points[0][0]:
        return points[0][1]
    if t >= points[-1][0]:
        return points[-1][1]
    for (ta, wa), (tb, wb) in itertools.pairwise(points):
        if ta <= t <= tb:
            return wa if tb == ta else wa + (wb - wa) * (t - ta) / (tb - ta)
    return points[-1][1]


def window_energy(samples: Sequence[tuple[float, float]], t0: float, t1: float) -> float:
    """Joules between t0 and t1 from (t, watts) samples (trapezoid, interpolated at the edges)."""
    points = sorted(samples)
    if not points or t1 <= t0:
        return 0.0
    inner = [(t, w) for t, w in points if t0 < t < t1]
    return integrate_energy([(t0, _value_at(points, t0)), *inner, (t1, _value_at(points, t1))])


def cpu_count(ranges: str) -> int | None:
    """Number of CPUs in a sysfs list such as ``0-3,6``."""
    total = 0
    for part in ranges.strip().split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            total += (int(high) - int(low) + 1) if high else 1
        except ValueError:
            return None
    return total or None


def _celsius(raw: str) -> float | None:
    """A thermal zone's temp: millidegrees by the kernel ABI, plain degrees on some vendors."""
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value / 1000.0 if abs(value) >= 1000 else value


def _int(raw: str) -> int | None:
    try:
        return int(raw.strip())
    except ValueError:
        return None


def snapshot_command(sysfs_root: str, cpufreq: bool = True, battery: str | None = None) -> str:
    """One remote shell line printing thermal zones (T), cpufreq (C) and battery status (B)."""
    root = shlex.quote(sysfs_root.rstrip("/") or "/")
    parts = [
        f"for z in {root}/class/thermal/thermal_zone*; do [ -e \"$z/temp\" ] || continue; "
        "printf 'T\\t%s\\t%s\\t%s\\n' \"${z##*/}\" \"$(cat \"$z/type\" 2>/dev/null)\" "
        "\"$(cat \"$z/temp\" 2>/dev/null)\"; done",
    ]
    if cpufreq:
        parts.append(
            f"for c in {root}/devices/system/cpu/cpu[0-9]*; do [ -d \"$c/cpufreq\" ] || continue; "
            "printf 'C\\t%s\\t%s\\t%s\\t%s\\n' \"${c##*/}\" \"$(cat \"$c/cpufreq/scaling_cur_freq\" 2>/dev/null)\" "
            "\"$(cat \"$c/cpufreq/cpuinfo_max_freq\" 2>/dev/null)\" "
            "\"$(cat \"$c/cpufreq/scaling_governor\" 2>/dev/null)\"; done"
        )
    if battery:
        status = shlex.quote(f"{sysfs_root.rstrip('/')}/class/power_supply/{battery}/status")
        parts.append(f"printf 'B\\t%s\\n' \"$(cat {status} 2>/dev/null)\"")
    parts.append("true")
    return "; ".join(parts)


def parse_snapshot(text: str) -> dict[str, Any]:
    """``{"zones": [(zone, type, celsius)], "cpufreq": {...}, "battery_status": str|None}``."""
    zones: list[tuple[str, str, float]] = []
    cpufreq: dict[str, dict[str, Any]] = {}
    battery = None
    for line in text.splitlines():
        fields = line.rstrip("\r").split("\t")
        if fields[0] == "T" and len(fields) >= 4:
            celsius = _celsius(fields[3])
            if celsius is not None:
                zones.append((fields[1], fields[2].strip() or fields[1], celsius))
        elif fields[0] == "C" and len(fields) >= 5:
            cpufreq[fields[1]] = {"cur_khz": _int(fields[2]), "max_khz": _int(fields[3]),
                                  "governor": fields[4].strip() or None}
        elif fields[0] == "B" and len(fields) >= 2:
            battery = fields[1].strip() or None
    cpus = sorted(cpufreq, key=lambda name: int(name[3:]) if name[3:].isdigit() else 0)
    return {"zones": zones, "cpufreq": {name: cpufreq[name] for name in cpus}, "battery_status": battery}


def thermal_by_type(zones: Sequence[tuple[str, str, float]]) -> dict[str, float]:
    """Zone temperatures keyed by type, as the runner keys them (``type/zone`` on duplicates)."""
    out: dict[str, float] = {}
    for zone, kind, celsius in zones:
        out[kind if kind not in out else f"{kind}/{zone}"] = celsius
    return out


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"


def _without_pid(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(PID_MARKER))


# -- battery sampling -------------------------------------------------------------------------


def battery_loop_command(current_path: str, voltage_path: str, period_s: float, max_s: float) -> str:
    """One remote shell loop printing ``uptime current_now voltage_now`` every ``period_s``.

    The time is the phone's uptime (/proc/uptime, 10 ms steps); the files are read with the
    shell's own ``read`` (no process per sample); the loop ends by itself after ``max_s``.
    """
    count = max(1, math.ceil(max_s / period_s))
    current, voltage = shlex.quote(current_path), shlex.quote(voltage_path)
    return (f"n=0; while [ $n -lt {count} ]; do read -r t _ < /proc/uptime; read -r c < {current}; "
            f"read -r v < {voltage}; echo \"$t $c $v\"; n=$((n + 1)); sleep {period_s:g}; done")


class BatterySampler:
    """current_now and voltage_now read by one shell loop on the phone, streamed back over adb.

    Each line is stamped on arrival; the phone's times are moved onto this computer's
    monotonic clock by the smallest (arrival - phone time) seen, so samples keep the phone's
    spacing and line up with benchmark_model's lines, which are stamped on arrival too.
    ``samples`` are ``(host monotonic time, watts)``.  ``stop()`` waits for one sample taken
    after it was asked to (so the end of a run is covered), then closes the stream: adbd sends
    the loop SIGHUP.
    """

    def __init__(self, client: AdbClient, current_path: str, voltage_path: str,
                 period_s: float = SAMPLE_PERIOD_S, max_s: float = 3600.0) -> None:
        self.client = client
        self.command = battery_loop_command(current_path, voltage_path, period_s, max_s)
        self.period_s = period_s
        self.units: dict[str, str] | None = None
        self.error: str | None = None
        self._readings: list[tuple[float, float, float]] = []  # (phone time, arrival, watts)
        self._session: ShellSession | None = None
        self._stopping = False
        self._ended = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="adb-battery-sampler", daemon=True)

    def start(self) -> BatterySampler:
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, float]]:
        asked = time.monotonic()
        with self._cv:
            self._cv.wait_for(lambda: self._ended or (self._readings and self._readings[-1][1] >= asked),
                              timeout=3 * self.period_s + 1.0)
            self._stopping = True
            session = self._session
        if session is not None:
            session.close()
        self._thread.join(timeout=30)
        return self.samples

    @property
    def samples(self) -> list[tuple[float, float]]:
        with self._cv:
            readings = list(self._readings)
        if not readings:
            return []
        offset = min(arrival - phone for phone, arrival, _w in readings)
        return [(phone + offset, watts) for phone, _arrival, watts in readings]

    def _loop(self) -> None:
        try:
            session = self.client.open_shell(self.command, timeout=30)
        except AdbError as exc:
            self.error = str(exc)
            with self._cv:
                self._ended = True
                self._cv.notify_all()
            return
        with self._cv:
            self._session = session
            if self._stopping:
                session.close()
        try:
            for stream, line in session.lines():
                if stream == "stdout":
                    self._reading(line, time.monotonic())
                elif line.strip():
                    self.error = f"cannot read the battery: {line.strip()}"
        finally:
            session.close()
            if not self._stopping and self.error is None:
                self.error = "the battery sampling loop on the device ended early"
            with self._cv:
                self._ended = True
                self._cv.notify_all()

    def _reading(self, line: str, arrival: float) -> None:
        fields = line.split()
        try:
            phone = float(fields[0])
            reading = power_supply_units(fields[1], fields[2])
        except (IndexError, ValueError):
            self.error = f"unexpected battery readings {fields[1:3]!r}"
            return
        with self._cv:
            self._readings.append((phone, arrival, reading.watts))
            self._cv.notify_all()
        if self.units is None:
            self.units = {"current": reading.current_unit, "voltage": reading.voltage_unit}

    def interval_s(self) -> float | None:
        """The median time between samples on the phone (a little more than the period)."""
        with self._cv:
            times = [phone for phone, _arrival, _w in self._readings]
        gaps = sorted(b - a for a, b in itertools.pairwise(times))
        return gaps[len(gaps) // 2] if gaps else None


@dataclass
class RunnerRun:
    """One executor_runner process as the transport saw it."""

    command: str
    code: int | None  # None: timed out
    text: str  # everything it printed (and its logcat lines, when it logged there)
    result: RunnerResult
    log_source: str  # "stderr" or "logcat"
    marks: list[tuple[float, str]] = field(default_factory=list)  # (arrival, "iteration"|"total")
    started: float = 0.0
    ended: float = 0.0
    timed_out: bool = False


def _measured_stamps(run: RunnerRun, executions: int, first: int) -> tuple[float, float, int] | None:
    """When the first measured execution's Iteration line and the last arrived, and the executions between
    them; None when the runner did not print one line per execution."""
    iterations = [t for t, kind in run.marks if kind == "iteration"]
    if len(iterations) == len(run.result.iterations_ms) == executions and executions > first:
        return iterations[first - 1], iterations[-1], executions - first
    return None


# -- the transport ----------------------------------------------------------------------------


class AndroidTransport(Transport):
    name = "adb"

    def __init__(self, client: AdbClient, *, device_name: str = "android", options: Mapping[str, Any] | None = None,
                 cpu_mask: str | None = None, energy: Mapping[str, Any] | None = None,
                 zones: Sequence[str] = (), cooldown_c: float | None = None, max_wait_s: float = 120.0,
                 sysfs_root: str = "/sys", backends: Sequence[str] = ("tflite",), source: str = "") -> None:
        self.client = client
        self.serial = client.serial or "the device"
        self.device_name = device_name
        self.options = dict(options or {})
        self.cpu_mask = cpu_mask
        self.energy_spec = dict(energy or {"sensor": "auto"})
        self.zones = tuple(zones)
        self.cooldown_c = cooldown_c
        self.max_wait_s = max_wait_s
        self.sysfs_root = sysfs_root.rstrip("/") or "/sys"
        self._prepared = False
        self._fingerprint: dict[str, Any] | None = None
        self._binary: str | None = None
        self._binary_sha256: str | None = None
        self._binary_error: str | None = None
        self._runtime_version = "benchmark_model"
        self.backends = tuple(backends)
        self.source = source  # devices.yaml file:line of this device, for messages
        self._runner: str | None = None  # executor_runner on the device
        self._runner_sha256: str | None = None
        self._runner_error: str | None = None
        self._runner_flags: frozenset[str] | None = None  # what its --help lists (None: it lists nothing)
        self._energy_unavailable: str | None = None
        self._supply = str(self.energy_spec.get("supply") or "battery")
        self._pushed: dict[str, str] = {}  # remote path -> sha256 this transport knows is there

    @classmethod
    def from_device(cls, device: Any) -> AndroidTransport:
        env: dict[str, str] = {}
        port = device.option("adb_server_port")
        if port is not None:
            env["ANDROID_ADB_SERVER_PORT"] = str(port)
        adb = os.path.expanduser(str(device.option("adb") or "adb"))
        try:
            client = AdbClient(adb, serial=str(device.option("serial")), env=env)
        except AdbNotInstalled as exc:
            raise DeviceError(str(exc)) from None
        thermal = device.thermal
        return cls(client, device_name=device.name, options=device.options, cpu_mask=device.cpu_mask,
                   energy=device.energy, zones=thermal.zones, cooldown_c=thermal.cooldown_c,
                   max_wait_s=thermal.max_wait_s, sysfs_root=device.sysfs_root, backends=device.backends,
                   source=device.source)

    # -- device state ---------------------------------------------------------------------
    def _connect(self) -> None:
        """Raise DeviceError unless the device is online and authorized."""
        try:
            state = self.client.get_state(timeout=30)
        except AdbDeviceNotFound as exc:
            if not re.fullmatch(r"[\w.\-\[\]:]+:\d+", self.serial):
                raise DeviceError(f"{exc}: check the cable and `adb devices` (is USB debugging on?)") from None
            try:  # a phone over Wi-Fi: one `adb connect` attempt
                state = self.client.connect(self.serial, timeout=30)
            except DeviceError as again:
                raise DeviceError(f"{again} (after {exc}): is wireless debugging on and the address right?") from None
        except AdbTimeout as exc:
            raise DeviceError(f"{exc}: the device or the adb server does not answer") from None
        except AdbError as exc:
            if isinstance(exc, DeviceError):
                raise
            raise DeviceError(str(exc)) from None
        if state != "device":
            raise DeviceError(f"{self.serial} is in state {state!r}, not 'device': boot it normally and unlock it")

    def _shell(self, cmd: str, timeout: float = 60, check: bool = False) -> tuple[int, str, str]:
        return self.client.shell(cmd, timeout, check=check)

    def _prepare(self) -> None:
        if self._prepared:
            return
        self._shell(quote_args(["mkdir", "-p", f"{REMOTE_DIR}/models"]), check=True)
        self._fingerprint = self._read_fingerprint()
        self._setup_binary()
        self._setup_runner()
        self._probe_energy()
        self._prepared = True

    def _read_fingerprint(self) -> dict[str, Any]:
        props = ("ro.product.model", "ro.product.manufacturer", "ro.board.platform", "ro.soc.model",
                 "ro.hardware", "ro.build.version.release", "ro.build.version.sdk", "ro.product.cpu.abi",
                 "ro.build.fingerprint", *EMULATION_PROPS)
        root = shlex.quote(self.sysfs_root)
        cmd = "; ".join([
            f"for p in {' '.join(props)}; do printf 'P\\t%s\\t%s\\n' \"$p\" \"$(getprop \"$p\")\"; done",
            "printf 'K\\t%s\\n' \"$(uname -r 2>/dev/null)\"",
            f"for f in possible present online; do printf 'O\\t%s\\t%s\\n' \"$f\" "
            f"\"$(cat {root}/devices/system/cpu/$f 2>/dev/null)\"; done",
            "printf 'M\\t%s\\n' \"$(grep MemTotal /proc/meminfo 2>/dev/null)\"",
            snapshot_command(self.sysfs_root, cpufreq=True),
        ])
        _code, out, _err = self._shell(cmd)
        prop: dict[str, str] = {}
        online: dict[str, str] = {}
        kernel = memory = None
        for line in out.splitlines():
            fields = line.rstrip("\r").split("\t")
            if fields[0] == "P" and len(fields) >= 3:
                prop[fields[1]] = fields[2].strip()
            elif fields[0] == "O" and len(fields) >= 2 and fields[-1].strip():
                online[fields[1]] = fields[-1].strip()
            elif fields[0] == "K" and len(fields) >= 2:
                kernel = fields[1].strip() or None
            elif fields[0] == "M" and len(fields) >= 2:
                match = re.search(r"(\d+)\s*kB", fields[1])
                memory = int(match.group(1)) * 1024 if match else None
        freqs = parse_snapshot(out)["cpufreq"]
        cores = next((cpu_count(online[k]) for k in ("possible", "present", "online") if online.get(k)), None)
        cores = cores or (len(freqs) or None)
        governors = sorted({c["governor"] for c in freqs.values() if c.get("governor")})
        maker, model = prop.get("ro.product.manufacturer", ""), prop.get("ro.product.model", "")
        release = prop.get("ro.build.version.release")
        return {
            "machine": prop.get("ro.product.cpu.abi") or None,
            "cpu_model": prop.get("ro.board.platform") or prop.get("ro.soc.model") or prop.get("ro.hardware") or None,
            "board_model": " ".join(p for p in (maker, model) if p) or None,
            "cores": cores,
            "cpu_max_khz": sorted({c["max_khz"] for c in freqs.values() if c.get("max_khz")}),
            "governor": ",".join(governors) or None,
            "memory_bytes": memory,
            "os": f"Android {release}" if release else None,
            "sdk": prop.get("ro.build.version.sdk") or None,
            "build": prop.get("ro.build.fingerprint") or None,
            "kernel": kernel,
            "emulated": emulation(prop),
            "adb_serial": self.serial,
        }

    def _remote_sha256(self, path: str) -> str | None:
        code, out, _err = self._shell(f"sha256sum {shlex.quote(path)} 2>/dev/null")
        digest = out.split()[0] if out.split() else ""
        return digest.lower() if code == 0 and re.fullmatch(r"[0-9a-fA-F]{64}", digest) else None

    def _push(self, local: Path, remote: str, sha256: str) -> bool:
        """Push unless the device already has these bytes there; True when pushed."""
        if self._pushed.get(remote) == sha256 or self._remote_sha256(remote) == sha256:
            self._pushed[remote] = sha256
            return False
        self.client.push(local, remote, timeout=600)
        self._pushed[remote] = sha256
        return True

    def _install(self, tool: str, help_text: str) -> tuple[str | None, str | None, str | None]:
        """(path on the device, its sha256, error) of the tool devices.yaml field ``tool`` names.

        A path on this computer is pushed to REMOTE_DIR (unless the device already has those
        bytes); a path under /data or /system is used where it is on the device.
        """
        option = self.options.get(tool)
        where = f" ({self.source})" if self.source else ""
        if not option:
            return None, None, f"{tool} not found: devices.yaml sets none for {self.device_name}{where}: {help_text}"
        text = str(option)
        local = Path(os.path.expanduser(text))
        try:
            if local.is_file():
                remote = f"{REMOTE_DIR}/{tool}"
                sha256 = file_sha256(local)
                self._push(local, remote, sha256)
                self._shell(quote_args(["chmod", "755", remote]), check=True)
                return remote, sha256, None
            if text.startswith(ON_DEVICE_PREFIXES):
                code, _out, _err = self._shell(f"test -f {shlex.quote(text)}")
                if code != 0:
                    return None, None, (f"{tool} not found at {text} (neither on this computer nor on the device; "
                                        f"devices.yaml{where}): {help_text}")
                return text, self._remote_sha256(text), None
            return None, None, f"{tool} not found at {local} (devices.yaml{where}): {help_text}"
        except AdbCommandFailed as exc:
            return None, None, f"cannot install {tool} on {self.serial}: {exc}"

    def _setup_binary(self) -> None:
        remote, self._binary_sha256, error = self._install("benchmark_model", BENCHMARK_HELP)
        if remote is None:
            self._binary_error = error
            return
        # Run it without a model: it must start (a wrong-ABI binary fails here, once, clearly).
        code, out, err = self._shell(quote_args([remote]), timeout=60)
        text_out = out + err
        if "STARTING" not in text_out and code != 0:
            self._binary_error = (f"benchmark_model at {remote} does not run on {self.serial} (exit {code}: "
                                  f"{_tail(text_out, 3)}); is it the build for this ABI "
                                  f"({(self._fingerprint or {}).get('machine')})? {BENCHMARK_HELP}")
            return
        match = _VERSION.search(text_out)
        if match:
            self._runtime_version = match.group("version")
        self._binary = remote

    def _setup_runner(self) -> None:
        """executor_runner, when devices.yaml names one: installed, and its flags read from ``--help``."""
        if not self.options.get("executor_runner"):
            if "executorch" in self.backends:
                self._runner_error = self._install("executor_runner", RUNNER_HELP)[2]
            return
        remote, self._runner_sha256, error = self._install("executor_runner", RUNNER_HELP)
        if remote is None:
            self._runner_error = error
            return
        # gflags lists every flag for --help (and exits 1): a wrong-ABI binary prints nothing of it.
        code, out, err = self._shell(f"{quote_args([remote, '--help'])} 2>&1", timeout=60)
        flags = parse_help(out + err)
        if flags is None and (code in (126, 127) or code >= 128):
            self._runner_error = (f"executor_runner at {remote} does not run on {self.serial} (exit {code}: "
                                  f"{_tail(out + err, 3)}); is it the build for this ABI "
                                  f"({(self._fingerprint or {}).get('machine')})? {RUNNER_HELP}")
            return
        if flags is not None and "num_executions" not in flags:
            self._runner_error = (f"executor_runner at {remote} has no --num_executions: it is older than ExecuTorch "
                                  f"0.6 and prints no time; {RUNNER_HELP}")
            return
        self._runner_flags = flags
        self._runner = remote

    def _battery_paths(self) -> tuple[str, str]:
        base = f"{self.sysfs_root}/class/power_supply/{self._supply}"
        return f"{base}/current_now", f"{base}/voltage_now"

    def _probe_energy(self) -> None:
        sensor = str(self.energy_spec.get("sensor", "auto"))
        if sensor == "none":
            self._energy_unavailable = "energy sensor is `none` in devices.yaml"
            return
        if sensor not in BATTERY_SENSORS:
            self._energy_unavailable = (f"energy sensor {sensor!r} cannot be read over adb; use `battery` "
                                        "(the power_supply current_now/voltage_now files)")
            return
        current, voltage = self._battery_paths()
        code, out, err = self._shell(quote_args(["cat", current, voltage]), timeout=30)
        values = out.split()
        if code != 0 or len(values) < 2:
            self._energy_unavailable = (f"{current} and {voltage} are not readable on the device "
                                        f"({_tail(err or out, 2)})")
            return
        try:
            power_supply_units(values[0], values[1])
        except ValueError:
            self._energy_unavailable = f"unexpected battery readings {values[:2]!r} in {current}, {voltage}"

    # -- thermal --------------------------------------------------------------------------
    def _snapshot_raw(self, cpufreq: bool = True, battery: bool = False) -> dict[str, Any]:
        _code, out, _err = self._shell(
            snapshot_command(self.sysfs_root, cpufreq, self._supply if battery else None), timeout=30)
        return parse_snapshot(out)

    @staticmethod
    def _state(raw: Mapping[str, Any]) -> dict[str, Any]:
        return {"time": time.time(), "thermal_c": thermal_by_type(raw["zones"]), "cpufreq": raw["cpufreq"],
                "loadavg": None}

    def _cooldown(self, on_status: StatusCallback | None) -> dict[str, Any]:
        """Wait until the hottest selected zone is below cooldown_c, at most max_wait_s (the shared rule)."""
        assert self.cooldown_c is not None

        def report(progress: dict[str, Any]) -> None:
            if on_status is not None:
                on_status(cooldown_status(progress))

        return wait_until_cool(lambda: self._snapshot_raw(cpufreq=False)["zones"], self.cooldown_c, self.max_wait_s,
                               self.zones, report, poll_s=COOLDOWN_POLL_S)

    # -- running ------------------------------------------------------------------------------
    def run_batch(self, jobs: list[Job], artifacts: Mapping[str, Artifact], policy: TimingPolicy,
                  on_result: ResultCallback, on_status: StatusCallback | None = None) -> None:
        self._connect()
        self._prepare()
        for job in jobs:
            try:
                record = self._run_job(job, artifacts[job.workload_id], policy, on_status,
                                       artifacts.get(PROBE_WORKLOAD))
            except DeviceError as exc:
                reason = self._gone_reason(exc)
                on_result(self._error(job, f"{self.serial} went away during this job: {reason}", ErrorKind.DEVICE))
                raise DeviceError(f"{self.serial} went away during {job.job_id}: {reason}") from exc
            except AdbError as exc:  # a failed push, a command that timed out: this job only
                record = self._error(job, f"{type(exc).__name__}: {exc}", ErrorKind.RUNTIME)
            on_result(record)

    def _gone_reason(self, exc: DeviceError) -> str:
        """What adb says about the device now (shorter than the failed command's error)."""
        try:
            state = self.client.get_state(timeout=15)
        except AdbError as now:
            return str(now)
        return f"{exc} (it is back in state {state!r})"

    def _error(self, job: Job, message: str, kind: ErrorKind, **extra: Any) -> dict[str, Any]:
        if job.backend == "executorch":
            return error_record(job, self.name, message, kind, runtime="executorch",
                                runtime_version=self._runner_version(), device_fingerprint=self._fingerprint, **extra)
        return error_record(job, self.name, message, kind, runtime="tflite", runtime_version=self._runtime_version,
                            device_fingerprint=self._fingerprint, **extra)

    def _runner_version(self) -> str:
        """executor_runner prints no version: the binary's sha256 names the build."""
        return f"executor_runner sha256:{self._runner_sha256[:12]}" if self._runner_sha256 else "executor_runner"

    def _push_model(self, artifact: Artifact) -> str:
        sha = artifact.sha256 or file_sha256(artifact.path)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", artifact.workload_id)
        suffix = ".pte" if artifact.format == "pte" else ".tflite"
        remote = f"{REMOTE_DIR}/models/{safe}-{sha[:12]}{suffix}"
        self._push(Path(artifact.path), remote, sha)
        return remote

    def _run_job(self, job: Job, artifact: Artifact, policy: TimingPolicy,
                 on_status: StatusCallback | None = None, probe_artifact: Artifact | None = None) -> dict[str, Any]:
        if job.backend == "executorch":
            return self._run_executorch_job(job, artifact, policy, on_status, probe_artifact)
        if self._binary is None:
            return self._error(job, self._binary_error or f"benchmark_model not found: {BENCHMARK_HELP}",
                               ErrorKind.RUNTIME)
        remote_model = self._push_model(artifact)
        extra, warnings, before = self._before_job(policy, on_status, probe_artifact)

        timing, extended = energy_timing(policy) if self._energy_unavailable is None else (policy, None)
        argv = benchmark_argv(self._binary, remote_model, job, timing, self.options, self.cpu_mask)
        command = quote_args(argv)
        timeout = benchmark_timeout(timing, bool(self.options.get("op_profiling")))
        num_runs, warmup_runs = run_counts(timing, self.options)
        extra["benchmark"] = {"binary": self._binary, "binary_sha256": self._binary_sha256, "command": command,
                              "num_runs": num_runs, "warmup_runs": warmup_runs, "min_secs": timing.min_seconds,
                              "max_secs": timing.max_seconds,
                              **({"timing_extended_for_energy": extended} if extended else {})}

        idle_watts = self._idle_watts(policy)

        stamped = StampedLines(timing_event)
        lines, marks, on_line = stamped.lines, stamped.marks, stamped.on_line

        sampler = None
        if self._energy_unavailable is None:
            sampler = BatterySampler(self.client, *self._battery_paths(), max_s=timeout + 60).start()
        started = time.monotonic()
        try:
            # The shell prints its pid, then becomes benchmark_model (exec): a timed-out run can be
            # killed by its id, not left running beside the next job.
            code, _out, _err = self.client.shell_stream(f"echo {PID_MARKER}$$; exec {command}", on_line,
                                                        timeout=timeout)
        except AdbTimeout as exc:
            if sampler is not None:
                sampler.stop()
            if stamped.pid is not None:
                with contextlib.suppress(AdbError):
                    self._shell(f"kill -9 {stamped.pid} 2>/dev/null", timeout=15)
            return self._error(job, f"benchmark_model timed out after {timeout:.0f} s (--max_secs "
                                    f"{timing.max_seconds:g} s); last output: "
                                    f"{_tail(_without_pid(exc.stdout) + exc.stderr)}",
                               ErrorKind.TIMEOUT, **extra)
        except BaseException:
            if sampler is not None:
                sampler.stop()
            raise
        finally:
            ended = time.monotonic()
        samples = sampler.stop() if sampler is not None else []
        text = "".join(lines)
        after = self._snapshot_raw()
        extra["thermal_after"] = self._state(after)
        extra["benchmark"]["exit_code"] = code

        if code != 0:
            return self._error(job, f"benchmark_model exited with code {code}: {_tail(text)}", ErrorKind.RUNTIME,
                               **extra)
        result = parse_benchmark_output(text)
        if result.inference is None or result.latency_us is None or not result.inference.count:
            why = "; ".join(result.errors) or "no measured-run statistics"
            return self._error(job, f"cannot read benchmark_model's output ({why}): {_tail(text)}", ErrorKind.RUNTIME,
                               **extra)

        record = raw_record(job, self.name, **extra)
        delegation, problems, delegate_warnings = delegation_report(job.delegate, result)
        warnings += delegate_warnings
        match = _VERSION.search(text)
        record.update(
            runtime="tflite",
            runtime_version=match.group("version") if match else self._runtime_version,
            provider=observed_provider(job.delegate, result, delegation),
            device_fingerprint=self._fingerprint,
            latency=latency_from(result.inference),
            first_inference_s=(result.first_inference_us if result.first_inference_us is not None
                               else (result.warmup.first if result.warmup else None)),
            load_s=result.init_us * 1e-6 if result.init_us is not None else None,
            memory=self._memory(result),
            delegation=delegation,
            problems=problems,
            warnings=warnings,
            output_check={"status": "not_checked", "reason": "benchmark_model runs random inputs"},
            timer="benchmark_model",
        )
        if record["first_inference_s"] is not None:
            record["first_inference_s"] *= 1e-6
        record["benchmark"].update(warmup_count=result.warmup.count if result.warmup else None,
                                   tool_warnings=result.warnings[:10])
        record["energy"] = self._energy(policy, result, marks, samples, sampler, started, ended, idle_watts,
                                        before.get("battery_status"))
        if extended:
            record["energy"]["timing"] = extended
        if self.options.get("op_profiling"):
            # the profiler runs inside the timed loop here: its overhead is in this record's latency
            profile = parse_op_profile(text) or {"source": None,
                                                 "reason": "benchmark_model printed no per-op profile"}
            record["op_profile"] = profile
            if profile.get("total_s") is not None:
                record["op_profile_total_s"] = profile["total_s"]
        return record

    def _idle_watts(self, policy: TimingPolicy) -> float | None:
        """The battery's draw with nothing running, over ``energy_idle_seconds`` (None: not measured)."""
        if self._energy_unavailable is not None or policy.energy_idle_seconds <= 0:
            return None
        idle = BatterySampler(self.client, *self._battery_paths(), max_s=policy.energy_idle_seconds + 60).start()
        idle_started = time.monotonic()
        time.sleep(policy.energy_idle_seconds)
        idle_ended = time.monotonic()
        samples = idle.stop()
        if len(samples) >= 2:
            return window_energy(samples, idle_started, idle_ended) / (idle_ended - idle_started)
        return None

    # -- executorch: ExecuTorch's executor_runner ------------------------------------------------
    def _run_runner(self, remote_model: str, executions: int, threads: int, timeout: float) -> RunnerRun:
        """One executor_runner process, each line stamped on arrival; its log from logcat when the
        build logs there (ExecuTorch's Android PAL) and printed nothing itself."""
        assert self._runner is not None
        command = quote_args(runner_argv(self._runner, remote_model, executions, threads, self._runner_flags,
                                         self.cpu_mask))
        stamped = StampedLines(runner_event)
        lines, marks, on_line = stamped.lines, stamped.marks, stamped.on_line

        started = time.monotonic()
        try:
            # The shell prints its pid, then becomes executor_runner (exec): the pid is the runner's,
            # for a kill after a timeout and for its logcat lines.
            code, _out, _err = self.client.shell_stream(f"echo {PID_MARKER}$$; exec {command}", on_line,
                                                        timeout=timeout)
        except AdbTimeout as exc:
            if stamped.pid is not None:
                with contextlib.suppress(AdbError):
                    self._shell(f"kill -9 {stamped.pid} 2>/dev/null", timeout=15)
            text = _without_pid(exc.stdout) + exc.stderr
            return RunnerRun(command, None, text, parse_output(text), "stderr", marks, started, time.monotonic(),
                             timed_out=True)
        ended = time.monotonic()
        text = "".join(lines)
        result = parse_output(text)
        if code == 0 and result.log_lines == 0 and stamped.pid is not None:
            _code, out, _err = self._shell(
                f"logcat -d -v threadtime --pid={stamped.pid} -s {LOGCAT_TAG} 2>/dev/null", timeout=30)
            logged = parse_output(out)
            if logged.log_lines:
                logged.tensor_lines = result.tensor_lines
                return RunnerRun(command, code, text + out, logged, "logcat", [], started, ended)
        return RunnerRun(command, code, text, result, "stderr", marks, started, ended)

    def _runner_failure(self, run: RunnerRun, timeout: float) -> tuple[str, ErrorKind] | None:
        """What went wrong with one executor_runner process (message, kind), or None when it timed executions."""
        if run.timed_out:
            return (f"executor_runner timed out after {timeout:.0f} s (lower num_runs in devices.yaml, or "
                    f"--max-time); last output: {_tail(run.text)}", ErrorKind.TIMEOUT)
        assert self._runner is not None
        message = diagnose(run.result, run.code, run.text, self._runner)
        if message is None:
            return None
        kind = ErrorKind.CRASH if run.code is not None and run.code >= 128 else ErrorKind.RUNTIME
        return f"{message}; last output: {_tail(run.text)}", kind

    def _run_executorch_job(self, job: Job, artifact: Artifact, policy: TimingPolicy,
                            on_status: StatusCallback | None, probe_artifact: Artifact | None) -> dict[str, Any]:
        if self._runner is None:
            return self._error(job, self._runner_error or f"executor_runner not found: {RUNNER_HELP}",
                               ErrorKind.RUNTIME)
        if job.delegate not in (None, "xnnpack"):
            where = f" ({self.source})" if self.source else ""
            return self._error(job, f"the executorch artifact is a program lowered to XNNPACK at export: delegate "
                                    f"{job.delegate!r} does not apply to it; run executorch with the xnnpack "
                                    f"delegate (devices.yaml `delegates`{where}) and {job.delegate} with tflite",
                               ErrorKind.RUNTIME)
        if artifact.format != "pte":
            return self._error(job, f"executor_runner runs .pte programs, not {artifact.format} ({artifact.path})",
                               ErrorKind.ARTIFACT)
        remote_model = self._push_model(artifact)
        extra, warnings, before = self._before_job(policy, on_status, probe_artifact)
        problems: list[str] = []

        timing, _extended = energy_timing(policy) if self._energy_unavailable is None else (policy, None)
        num_runs, warmup = run_counts(timing, self.options)
        flags = sorted(self._runner_flags) if self._runner_flags is not None else None
        extra["benchmark"] = {"binary": self._runner, "binary_sha256": self._runner_sha256, "flags": flags,
                              "num_runs": num_runs, "warmup_runs": warmup, "min_secs": timing.min_seconds,
                              "max_secs": timing.max_seconds}
        per_run: float | None = None
        extended = None
        if self.options.get("num_runs") is None:
            # A count, not a time: a short pilot run (warm-up + PILOT_EXECUTIONS) times the loop, then the count is
            # chosen the way benchmark_model stops (at least num_runs, at least --min-time, at most --max-time).
            pilot_executions = warmup + PILOT_EXECUTIONS
            pilot_timeout = benchmark_timeout(timing)
            pilot = self._run_runner(remote_model, pilot_executions, job.threads, pilot_timeout)
            failed = self._runner_failure(pilot, pilot_timeout)
            extra["benchmark"]["pilot"] = {"command": pilot.command, "executions": pilot_executions,
                                           "exit_code": pilot.code}
            if failed is not None:
                return self._error(job, failed[0], failed[1], **extra)
            execute_s = per_run_estimate(pilot.result, warmup)
            assert execute_s is not None
            # The loop's pace (inputs and logging too) when the log lines carry their time, else execute()'s.
            per_run = max(execute_s, loop_seconds_per_execution(pilot.result, warmup) or 0.0)
            per_iteration = bool(pilot.result.iterations_ms)
            measured = executions_for(per_run, num_runs, timing.min_seconds, timing.max_seconds, timing.max_runs)
            unstretched = executions_for(per_run, num_runs, policy.min_seconds, policy.max_seconds, policy.max_runs)
            if measured > unstretched:
                extended = (f"measured executions raised from {unstretched} to {measured} (about "
                            f"{_secs(timing.min_seconds)} s), so that they cover the battery's "
                            f"{_secs(policy.energy_min_window_s)} s minimum energy window with margin "
                            "(`energy: none` in devices.yaml keeps --min-time/--max-time)")
            # Warm-up executions are left out only when the build prints each execution's time.
            executions = (warmup if per_iteration else 0) + measured
            extra["benchmark"]["pilot"].update(per_execution_s=execute_s, loop_s_per_execution=per_run,
                                               per_execution_times=per_iteration)
        else:
            executions = warmup + num_runs
        extra["benchmark"].update(executions=executions,
                                  **({"timing_extended_for_energy": extended} if extended else {}))

        idle_watts = self._idle_watts(policy)
        for attempt in range(2):
            timeout = benchmark_timeout(timing) + (3.0 * executions * per_run if per_run else 0.0)
            sampler = None
            if self._energy_unavailable is None:
                sampler = BatterySampler(self.client, *self._battery_paths(), max_s=timeout + 60).start()
            try:
                run = self._run_runner(remote_model, executions, job.threads, timeout)
            finally:
                samples = sampler.stop() if sampler is not None else []
            # A pilot timed on a busy phone (or host) can overestimate the pace: then the measured loop
            # misses the energy window it was sized for, and is run once more, sized by its own pace.
            rerun = (self._rerun_for_energy(run, executions, warmup, timing, policy)
                     if attempt == 0 and sampler is not None and per_run is not None else None)
            if rerun is None:
                break
            executions, per_run = rerun["executions"], rerun["loop_s_per_execution"]
            extra["benchmark"].update(rerun_for_energy=rerun, executions=executions)
        after = self._snapshot_raw()
        extra["thermal_after"] = self._state(after)
        extra["benchmark"].update(command=run.command, exit_code=run.code, log_source=run.log_source)
        failed = self._runner_failure(run, timeout)
        if failed is not None:
            return self._error(job, failed[0], failed[1], **extra)
        result = run.result
        fields = latency_fields(result, warmup)
        known_flags = self._runner_flags if self._runner_flags is not None else frozenset({"cpu_threads"})
        if "cpu_threads" not in known_flags:
            warnings.append(f"this executor_runner has no --cpu_threads: it chose its own thread count, not the "
                            f"{job.threads} asked for")
        elif result.threadpool_threads is None:
            warnings.append(f"executor_runner printed no `Resetting threadpool` line (a build without ExecuTorch's "
                            f"thread pool): --cpu_threads={job.threads} may not have applied")
        elif result.threadpool_threads != job.threads:
            problems.append(f"executor_runner set its thread pool to {result.threadpool_threads} threads, not the "
                            f"{job.threads} asked for")
        delegation, provider = self._pte_delegation(artifact)
        record = raw_record(job, self.name, **extra)
        record.update(
            runtime="executorch",
            runtime_version=self._runner_version(),
            provider=provider,
            device_fingerprint=self._fingerprint,
            first_inference_s=result.iterations_ms[0] * 1e-3 if result.iterations_ms else None,
            load_s=result.load_ms * 1e-3 if result.load_ms is not None else None,
            memory={"peak_rss_bytes": None, "source": None, "reason": "executor_runner reports no memory use"},
            delegation=delegation,
            problems=problems,
            warnings=warnings,
            output_check={"status": "not_checked", "reason": "executor_runner runs all-ones inputs"},
            timer="executor_runner",
        )
        if "samples_s" in fields:
            record["samples_s"] = fields["samples_s"]
        else:
            record["latency"] = fields["latency"]
        measured_count = len(fields["samples_s"]) if "samples_s" in fields else fields["latency"]["n"]
        record["benchmark"].update(timing=fields["timing"], warmup_left_out=fields["warmup_left_out"],
                                   measured_executions=measured_count,
                                   threadpool_threads=result.threadpool_threads, tool_errors=result.errors[:10])
        stamps = _measured_stamps(run, executions, max(fields["warmup_left_out"], 1))
        if stamps is not None:
            window = (*stamps, "the measured executions (between executor_runner's `Iteration` lines)")
        else:
            window = (run.started, run.ended, result.executions or executions,
                      "the whole executor_runner process, loading included (no per-execution lines to time it by)")
        record["energy"] = self._energy_in(policy, window, samples, sampler, idle_watts,
                                           before.get("battery_status"))
        if extended:
            record["energy"]["timing"] = extended
        return record

    @staticmethod
    def _rerun_for_energy(run: Any, executions: int, warmup: int, timing: TimingPolicy,
                          policy: TimingPolicy) -> dict[str, Any] | None:
        """How many executions to run again with when the measured loop fell short of the energy window."""
        stamps = _measured_stamps(run, executions, max(warmup, 1)) if run.code == 0 and run.result else None
        if stamps is None or stamps[2] < 2:
            return None
        start, end, measured = stamps
        window_s = end - start
        if window_s >= policy.energy_min_window_s:
            return None
        pace = window_s / measured
        wanted = executions_for(pace, 1, timing.min_seconds, timing.max_seconds, timing.max_runs)
        return {"measured_window_s": window_s, "loop_s_per_execution": pace,
                "executions": (executions - measured) + wanted,
                "why": f"the measured loop lasted {window_s:.2f} s, short of the battery's "
                       f"{_secs(policy.energy_min_window_s)} s energy window: run again at its own pace"}

    def _before_job(self, policy: TimingPolicy, on_status: Any,
                    probe_artifact: Artifact | None) -> tuple[dict[str, Any], list[str], Any]:
        """What every job does on the phone before its runner starts: cool down, time the reference
        probe, read the thermal state; returns (record fields, warnings, the raw snapshot taken)."""
        extra: dict[str, Any] = {}
        warnings: list[str] = []
        if self.cooldown_c is not None:
            cooled = self._cooldown(on_status)
            if cooled.get("warning"):
                warnings.append(cooled.pop("warning"))
                cooled["cooldown_timed_out"] = bool(cooled.get("cooldown_timed_out"))
            extra.update(cooled)
        if probe_artifact is not None and policy.reference_probe_seconds > 0:
            probe, problem = self._reference_probe(probe_artifact, policy.reference_probe_seconds)
            if probe is not None:
                extra["reference_probe"] = probe
            else:
                warnings.append(f"no reference probe: {problem}")
        before = self._snapshot_raw(battery=self._energy_unavailable is None)
        extra["thermal_before"] = self._state(before)
        return extra, warnings, before

    @staticmethod
    def _pte_delegation(artifact: Artifact) -> tuple[dict[str, Any], str]:
        """(delegation, provider) of a .pte: counted at export when the artifact carries it (executor_runner
        reports nothing about delegation)."""
        from backends.protocol import artifact_facts

        counted = artifact_facts(artifact).get("delegation")
        if not isinstance(counted, dict) or counted.get("delegated") is None:
            return ({"delegate": "xnnpack", "delegated_nodes": None, "total_nodes": None, "partitions": None,
                     "ran_nothing": False, "source": "lowered with XNNPACK's partitioner at export; executor_runner "
                                                     "reports nothing about delegation"}, "xnnpack")
        delegated, left = int(counted["delegated"]), int(counted.get("not_delegated") or 0)
        delegation = {"delegate": "xnnpack", "delegated_nodes": delegated, "total_nodes": delegated + left,
                      "partitions": counted.get("delegated_subgraphs"), "ran_nothing": delegated == 0,
                      "source": "counted at export (the lowered graph)"}
        return delegation, "xnnpack" if left == 0 else ("portable" if delegated == 0 else "xnnpack+portable")

    def _runner_probe(self, artifact: Artifact, seconds: float) -> tuple[dict[str, Any] | None, str]:
        """The phone's speed now for executorch batches: the probe's .pte timed by the same executor_runner."""
        if self._runner is None:
            return None, self._runner_error or "no executor_runner"
        remote_model = self._push_model(artifact)
        warmup, measured = 2, 20
        timeout = 120.0 + 10.0 * seconds
        run = self._run_runner(remote_model, warmup + measured, 1, timeout)
        failed = self._runner_failure(run, timeout)
        if failed is not None:
            return None, f"executor_runner on the probe model: {failed[0]}"
        kernel = f"executor_runner {PROBE_WORKLOAD} (fp32, 1 thread) (v1)"
        rounds = len(run.result.iterations_ms[warmup:]) or (run.result.executions or 0)
        return {"kernel": kernel, "identity": f"{kernel} | executor_runner sha256 {(self._runner_sha256 or '?')[:16]}",
                "median_s": per_run_estimate(run.result, warmup), "rounds": rounds,
                "statistic": "median" if run.result.iterations_ms else "mean"}, ""

    def _reference_probe(self, artifact: Artifact, seconds: float) -> tuple[dict[str, Any] | None, str]:
        """The phone's speed now: a fixed small model timed by the same benchmark_model, one thread.

        A batch's probe artifact is in its backend's format: an executorch batch's is a .pte, timed
        by executor_runner instead (``_runner_probe``); the identity names the tool, so probes of
        the two are never compared.

        It plays the runner's reference probe on a phone: ``compare`` divides each invocation
        by it, so a phone (or a loopback phone's host) slower tonight is not read as a
        regression.  Its identity names the model and the binary's sha256: a new binary's
        probes are not compared with the old one's.
        """
        if artifact.format == "pte":
            return self._runner_probe(artifact, seconds)
        if self._binary is None:
            return None, self._binary_error or "no benchmark_model"
        remote_model = self._push_model(artifact)
        probe_job = Job("reference-probe", PROBE_WORKLOAD, self.name, "tflite", 1)
        timing = TimingPolicy(warmup_runs=2, warmup_seconds=0.05, min_runs=5, min_seconds=seconds,
                              max_seconds=seconds + 0.1)
        command = quote_args(benchmark_argv(self._binary, remote_model, probe_job, timing, {}, self.cpu_mask))
        try:
            code, out, err = self._shell(command, timeout=benchmark_timeout(timing))
        except AdbTimeout as exc:
            return None, f"benchmark_model timed out on the probe model: {exc}"
        result = parse_benchmark_output(out + err)
        if code != 0 or result.inference is None or not result.inference.count:
            return None, f"benchmark_model exited with {code} on the probe model: {_tail(out + err, 3)}"
        median = latency_from(result.inference).get("median")
        kernel = f"benchmark_model {PROBE_WORKLOAD} (fp32, 1 thread) (v1)"
        return {"kernel": kernel, "identity": f"{kernel} | benchmark_model sha256 {(self._binary_sha256 or '?')[:16]}",
                "median_s": median, "rounds": result.inference.count}, ""

    @staticmethod
    def _memory(result: BenchmarkModelResult) -> dict[str, Any]:
        peak = int(result.peak_memory_mb * MIB) if result.peak_memory_mb is not None else None
        memory: dict[str, Any] = {
            "peak_rss_bytes": peak,
            "peak_footprint_bytes": peak,
            "init_delta_bytes": int(result.memory_init_mb * MIB) if result.memory_init_mb is not None else None,
            "overall_delta_bytes": (int(result.memory_overall_mb * MIB) if result.memory_overall_mb is not None
                                    else None),
            "model_size_bytes": int(result.model_size_mb * 1e6) if result.model_size_mb is not None else None,
            "source": "benchmark_model (--report_peak_memory_footprint, periodic monitoring)",
        }
        if peak is None:
            memory["reason"] = "benchmark_model reported no peak memory footprint"
        return memory

    def _energy(self, policy: TimingPolicy, result: BenchmarkModelResult, marks: list[tuple[float, str]],
                samples: list[tuple[float, float]], sampler: BatterySampler | None, started: float, ended: float,
                idle_watts: float | None, battery_status: str | None) -> dict[str, Any]:
        headers = [t for t, kind in marks if kind == "header"]
        window = None
        if len(headers) >= 2:
            end = next((t for t, kind in marks if kind == "stats" and t > headers[1]), None)
            if end is not None:
                window = (headers[1], end, result.inference.count if result.inference else 0,
                          "the measured loop (between benchmark_model's timing lines)")
        if window is None:
            runs = (result.warmup.count if result.warmup else 0) + (result.inference.count if result.inference else 0)
            window = (started, ended, runs, "the whole benchmark_model process (no timing lines seen)")
        return self._energy_in(policy, window, samples, sampler, idle_watts, battery_status)

    def _energy_in(self, policy: TimingPolicy, window: tuple[float, float, int, str],
                   samples: list[tuple[float, float]], sampler: BatterySampler | None, idle_watts: float | None,
                   battery_status: str | None) -> dict[str, Any]:
        """Battery energy over ``window`` = (start, end, inferences in it, what it is)."""
        if self._energy_unavailable is not None or sampler is None:
            return {"status": "unavailable", "sensor": None, "reason": self._energy_unavailable}
        interval = sampler.interval_s()
        period_ms = (interval or sampler.period_s) * 1e3
        energy: dict[str, Any] = {"sensor": ENERGY_SENSOR,
                                  "resolution": f"sampled every {period_ms:.0f} ms {SAMPLED_HOW}",
                                  "note": ENERGY_NOTE, "units": sampler.units, "samples": len(samples),
                                  "battery_status": battery_status}
        if battery_status in ("Charging", "Full"):
            energy["warning"] = f"the battery reports {battery_status!r}: {ENERGY_NOTE}"
        t0, t1, runs, what = window
        span = t1 - t0
        energy.update(window_s=span, window=what, inferences=runs)
        slack = 3 * max(interval or 0.0, sampler.period_s)
        covering = [s for s in samples if t0 - slack <= s[0] <= t1 + slack]
        if span < policy.energy_min_window_s:
            energy.update(status="unavailable", reason=f"measured window {span:.3f} s is shorter than the "
                          f"{policy.energy_min_window_s:g} s minimum (raise --min-time)")
        elif len(covering) < 2 or covering[0][0] > t0 + slack or covering[-1][0] < t1 - slack:
            energy.update(status="unavailable", reason=f"battery samples do not cover the window ({len(covering)} "
                          f"samples{'; ' + sampler.error if sampler.error else ''})")
        elif runs <= 0:
            energy.update(status="unavailable", reason="no inference ran in the window")
        else:
            joules = window_energy(samples, t0, t1)
            energy.update(status="ok", joules=joules, mean_watts=joules / span, joules_per_inference=joules / runs,
                          idle_watts=idle_watts, idle_subtracted=idle_watts is not None)
            if idle_watts is not None:
                energy["joules_per_inference"] = max(0.0, joules - idle_watts * span) / runs
        return energy

    # -- check ----------------------------------------------------------------------------------
    def check(self) -> dict[str, Any]:
        try:
            self._connect()
            self._prepare()
            raw = self._snapshot_raw(battery=True)
            state = self._state(raw)
        except DeviceError as exc:
            return {"usable": False, "problems": [str(exc)], "serial": self.serial}
        except AdbError as exc:
            return {"usable": False, "problems": [f"{type(exc).__name__}: {exc}"], "serial": self.serial}
        problems: list[str] = []
        runtimes: dict[str, Any] = {}
        if "tflite" in self.backends or self.options.get("benchmark_model"):
            runtimes["tflite"] = ({"version": self._runtime_version, "benchmark_model": self._binary}
                                  if self._binary else {"error": self._binary_error})
            if self._binary_error and "tflite" in self.backends:
                problems.append(self._binary_error)
        if "executorch" in self.backends or self.options.get("executor_runner"):
            flags = sorted(self._runner_flags) if self._runner_flags is not None else None
            runtimes["executorch"] = ({"version": self._runner_version(), "executor_runner": self._runner,
                                       "flags": flags} if self._runner else {"error": self._runner_error})
            if self._runner_error and "executorch" in self.backends:
                problems.append(self._runner_error)
        if self._energy_unavailable is None:
            energy: dict[str, Any] = {"sensor": ENERGY_SENSOR,
                                      "resolution": f"sampled every ~{SAMPLE_PERIOD_S * 1e3:.0f} ms {SAMPLED_HOW}",
                                      "note": ENERGY_NOTE}
        else:
            energy = {"sensor": None, "reason": self._energy_unavailable}
        return {"usable": not problems, "problems": problems, "fingerprint": self._fingerprint,
                "runtimes": runtimes, "energy": energy, "state": state, "thermal_zones": raw["zones"],
                "serial": self.serial}

    def close(self) -> None:
        """Nothing stays open: each adb call is one connection to the server, closed when it ends;
        pushed files stay cached on the device."""


def _validate(options: Mapping[str, Any], fail: Fail) -> None:
    if not options.get("serial"):
        fail("", "adb devices need `serial` (see `adb devices`)")
    for tool in ("benchmark_model", "executor_runner"):
        value = options.get(tool)
        if value is not None and not (isinstance(value, str) and value.strip()):
            fail(tool, f"expected the path of {tool} on this computer (pushed to the phone) or on the phone "
                       f"(under /data or /system), got {value!r}")


TRANSPORT = TransportInfo(
    "adb",
    machine=lambda device: f"adb:{device.option('serial') or device.name}",
    fields={
        "serial": "the phone's serial (see `adb devices`), or HOST:PORT for adb over TCP",
        "adb": "the adb client binary (default adb on PATH)",
        "benchmark_model": "path of TFLite's benchmark_model on the host to push (default: one on the phone)",
        "executor_runner": "path of ExecuTorch's executor_runner (XNNPACK build) on the host to push, or on the "
                           "phone: runs the executorch backend",
        "adb_server_port": "port of the adb server (default 5037)",
        "num_runs": "benchmark_model --num_runs; executor_runner measured executions (default: from the timing "
                    "policy)",
        "warmup_runs": "benchmark_model --warmup_runs; executor_runner executions left out first (default: from the "
                       "timing policy)",
        "op_profiling": "also run benchmark_model's per-op profiler (default false)",
    },
    open=lambda device: AndroidTransport.from_device(device),
    probe_workload=PROBE_WORKLOAD,
    default_backends=("tflite",),
    allowed_backends=("tflite", "executorch"),
    allowed_backends_why="run only tflite (benchmark_model) and executorch (ExecuTorch's executor_runner)",
    delegates=("cpu", "xnnpack", "gpu", "nnapi"),
    default_delegates=("xnnpack",),
    validate=_validate,
)
