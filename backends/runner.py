#!/usr/bin/env python3
"""convbench runner: load artifacts in one runtime, time them, print JSON lines.

This file is copied as-is to remote boards, so it must stay self-contained: the
standard library, numpy, and the one runtime it drives (torch, onnxruntime or a
TFLite interpreter).  No convbench imports; Python 3.9+.

Usage::

    python3 runner.py PLAN.json        # or: python3 runner.py - < PLAN.json

The plan names the runtime, thread count, timing policy, sensors and a list of
items (job id, model path, input .npy, output .npy).  The runner prints one JSON
object per line: first ``{"type": "hello", ...}`` with the device fingerprint and
runtime version, then ``{"type": "result", ...}`` per item as soon as it finishes.
A failing item yields a result with ``error``; the runner goes on with the next.

Timing: ``time.perf_counter_ns`` around the runtime call only, with the garbage
collector off (as timeit and pyperf do); on CUDA, CUDA events recorded around the call
with a synchronisation after each iteration (host timers around asynchronous launches
would measure the launch, not the kernel), and the untimed first call and warm-up are
synchronised too.  Calls under ``block_min_ns`` are timed in blocks of a power-of-two
number of calls, each sample being the per-call mean of one block; the plan can fix the
block size so that repeated runs summarise the same statistic.

Memory: each item runs in a fresh process of this runner (``runner.py --item``), so an
item's peak RSS is its own model's (no earlier model still resident), and
``baseline_rss_bytes`` is that process's footprint once the runtime is imported and
before the model is loaded (interpreter + numpy + runtime).
"""

import gc
import glob
import hashlib
import json
import math
import os
import platform
import resource
import sys
import threading
import time
import traceback

RUNNER_VERSION = 2


# ---------------------------------------------------------------- statistics
def median_ci(sorted_samples, confidence_z=1.96):
    """Distribution-free CI of the median from order statistics (binomial normal approx).

    A copy of harness.measure.stats.median_ci: the runner must stay self-contained.
    """
    n = len(sorted_samples)
    if n < 6:
        return sorted_samples[0], sorted_samples[-1]
    half = confidence_z * math.sqrt(n) / 2.0
    lo = max(0, math.floor(n / 2.0 - half))
    hi = min(n - 1, math.ceil(n / 2.0 + half))
    return sorted_samples[lo], sorted_samples[hi]


def _median(sorted_samples):
    n = len(sorted_samples)
    mid = n // 2
    return sorted_samples[mid] if n % 2 else (sorted_samples[mid - 1] + sorted_samples[mid]) / 2.0


def file_sha256(path, chunk=1 << 20):
    """Hex sha256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- sysfs sensors
def _read(path, default=None):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return default


def _read_int(path):
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def read_thermal(sysfs_root="/sys"):
    """Thermal zone temperatures in degrees C, keyed by zone type (or zone name)."""
    zones = {}
    for zone in sorted(glob.glob(os.path.join(sysfs_root, "class/thermal/thermal_zone*"))):
        milli = _read_int(os.path.join(zone, "temp"))
        if milli is None:
            continue
        kind = _read(os.path.join(zone, "type")) or os.path.basename(zone)
        key = kind if kind not in zones else "%s/%s" % (kind, os.path.basename(zone))
        zones[key] = milli / 1000.0
    return zones


def read_cpufreq(sysfs_root="/sys"):
    """Per-CPU current and maximum frequency (kHz) and governor."""
    cpus = {}
    pattern = os.path.join(sysfs_root, "devices/system/cpu/cpu[0-9]*/cpufreq")
    for path in sorted(glob.glob(pattern), key=lambda p: int(os.path.basename(os.path.dirname(p))[3:])):
        name = os.path.basename(os.path.dirname(path))
        cpus[name] = {
            "cur_khz": _read_int(os.path.join(path, "scaling_cur_freq")),
            "max_khz": _read_int(os.path.join(path, "cpuinfo_max_freq")),
            "governor": _read(os.path.join(path, "scaling_governor")),
        }
    return cpus


def _cpu_jiffies():
    """(busy jiffies of the whole machine, jiffies of this process) from /proc."""
    try:
        fields = (_read("/proc/stat") or "").splitlines()[0].split()[1:]
        values = [int(v) for v in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        own = (_read("/proc/self/stat") or "").rsplit(")", 1)[1].split()
        return sum(values[:8]) - idle, int(own[11]) + int(own[12])
    except (IndexError, ValueError):
        return None


class BusyMeter:
    """How many cores' worth of CPU *other* processes used while we measured.

    Our own runner is excluded, so a busy neighbour shows up even on a one-thread job;
    the load average cannot tell the two apart.
    """

    def start(self):
        self._start, self._t0 = _cpu_jiffies(), time.monotonic()

    def stop(self):
        end, elapsed = _cpu_jiffies(), time.monotonic() - self._t0
        if self._start is None or end is None or elapsed <= 0:
            return None
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        others = (end[0] - self._start[0]) - (end[1] - self._start[1])
        return max(0.0, others / hz / elapsed)


def system_state(sysfs_root="/sys"):
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"time": time.time(), "thermal_c": read_thermal(sysfs_root),
            "cpufreq": read_cpufreq(sysfs_root), "loadavg": list(load) if load else None}


class EnergyUnavailable(Exception):
    pass


class CounterSensor:
    """A cumulative energy counter (RAPL, hwmon energy*_input, NVML)."""

    kind = "counter"

    def __init__(self, name, resolution, read_joules, max_joules=None):
        self.name, self.resolution = name, resolution
        self._read, self._max = read_joules, max_joules

    def start(self):
        self._start = self._read()

    def stop(self):
        end = self._read()
        delta = end - self._start
        if delta < 0:  # the counter wrapped around
            if self._max is None:
                raise EnergyUnavailable("%s counter went backwards" % self.name)
            delta += self._max
        return delta


class SampledSensor:
    """Power sampled in a background thread and integrated (trapezoid)."""

    kind = "sampled"

    def __init__(self, name, resolution, read_watts, period_s=0.05):
        self.name, self.resolution = name, resolution
        self._read, self._period = read_watts, period_s

    def _loop(self):
        while not self._done.is_set():
            self._samples.append((time.monotonic(), self._read()))
            self._done.wait(self._period)

    def start(self):
        self._samples, self._done = [], threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self):
        self._done.set()
        self._thread.join()
        self._samples.append((time.monotonic(), self._read()))
        return integrate_power(self._samples)


def integrate_power(samples):
    """Joules from (time_s, watts) samples in time order, by the trapezoid rule.

    Fewer than two samples give 0.0.
    """
    total = 0.0
    for (t0, p0), (t1, p1) in zip(samples, samples[1:]):
        if t1 < t0:
            raise ValueError("samples are not in time order: %r after %r" % (t1, t0))
        total += (t1 - t0) * (p0 + p1) / 2.0
    return total


_SI_SCALE = {"uA": 1e-6, "mA": 1e-3, "A": 1.0, "uV": 1e-6, "mV": 1e-3, "V": 1.0}


def current_unit(raw):
    """The unit of a power_supply ``current_now`` reading, told from its magnitude.

    The kernel ABI says microamps; some vendors' drivers report milliamps.  A device
    running a benchmark draws 10 mA .. 8 A: in microamps that is >= 10 000, in milliamps
    10 .. 8000 (readings under 10 can only be amps).  0 is taken as microamps.
    """
    magnitude = abs(raw)
    if magnitude >= 10000 or magnitude == 0:
        return "uA"
    if magnitude >= 10:
        return "mA"
    return "A"


def voltage_unit(raw):
    """The unit of a ``voltage_now`` reading: a battery or USB input sits at 2.5 .. 20 V."""
    magnitude = abs(raw)
    if magnitude >= 100000:
        return "uV"
    if magnitude >= 100:
        return "mV"
    return "V"


def power_supply_units(current_raw, voltage_raw):
    """(amps, volts, watts, current unit, voltage unit) from raw current_now/voltage_now.

    Power is the absolute product: the sign of current_now differs between vendors
    (negative while discharging on some, positive on others).
    """
    current, voltage = float(str(current_raw).strip()), float(str(voltage_raw).strip())
    cu, vu = current_unit(current), voltage_unit(voltage)
    amps, volts = current * _SI_SCALE[cu], voltage * _SI_SCALE[vu]
    return amps, volts, abs(amps * volts), cu, vu


def power_supply_watts(current_raw, voltage_raw):
    return power_supply_units(current_raw, voltage_raw)[2]


class MultiCounterSensor:
    """Several cumulative counters (one per RAPL package), each wrapping on its own range."""

    kind = "counter"

    def __init__(self, name, resolution, counters):
        self.name, self.resolution = name, resolution
        self._counters = counters  # [(label, read_joules, max_joules or None)]

    def start(self):
        self._start = [read() for _, read, _ in self._counters]

    def stop(self):
        total = 0.0
        for (label, read, max_joules), start in zip(self._counters, self._start):
            delta = read() - start
            if delta < 0:  # this package's counter wrapped around
                if not max_joules:
                    raise EnergyUnavailable("%s counter went backwards" % label)
                delta += max_joules
            total += delta
        return total


def _rapl_sensor(sysfs_root):
    domains = [d for d in sorted(glob.glob(os.path.join(sysfs_root, "class/powercap/intel-rapl:[0-9]*")))
               if d.count(":") == 1]  # packages only: subdomains are included in them
    readable = [d for d in domains if _read_int(os.path.join(d, "energy_uj")) is not None]
    if not readable:
        reason = "no RAPL domains under %s/class/powercap" % sysfs_root
        if domains:
            reason = "RAPL energy_uj is not readable (needs root on recent kernels)"
        raise EnergyUnavailable(reason)

    def reader(domain):
        path = os.path.join(domain, "energy_uj")

        def read():
            value = _read_int(path)
            if value is None:
                raise EnergyUnavailable("%s became unreadable" % path)
            return value / 1e6

        return read

    counters = []
    for d in readable:
        label = _read(os.path.join(d, "name"), os.path.basename(d))
        max_range = (_read_int(os.path.join(d, "max_energy_range_uj")) or 0) / 1e6
        counters.append(("rapl:" + label, reader(d), max_range or None))
    return MultiCounterSensor("rapl:" + ",".join(c[0][5:] for c in counters), "1 uJ counter", counters)


def _hwmon_sensor(sysfs_root, path=None):
    base = path or os.path.join(sysfs_root, "class/hwmon")
    energy = sorted(glob.glob(os.path.join(base, "**/energy*_input"), recursive=True))
    if energy:
        return CounterSensor("hwmon:" + energy[0], "1 uJ counter",
                             lambda: _read_int(energy[0]) / 1e6)
    power = sorted(glob.glob(os.path.join(base, "**/power*_input"), recursive=True))
    if power:
        return SampledSensor("hwmon:" + power[0], "sampled every 50 ms",
                             lambda: _read_int(power[0]) / 1e6)
    raise EnergyUnavailable("no hwmon energy*_input or power*_input under %s" % base)


def _ina3221_sensor(sysfs_root, path=None):
    base = path or os.path.join(sysfs_root, "class/hwmon")
    pairs = []
    for volt in sorted(glob.glob(os.path.join(base, "**/in[0-9]*_input"), recursive=True)):
        curr = volt.replace("/in", "/curr")
        if os.path.exists(curr):
            pairs.append((volt, curr))
    if not pairs:
        raise EnergyUnavailable("no INA3221 in*_input/curr*_input pairs under %s" % base)

    def read():  # millivolts x milliamps
        return sum(_read_int(v) * _read_int(c) for v, c in pairs) / 1e6

    return SampledSensor("ina3221:%d channels" % len(pairs), "sampled every 50 ms", read)


def _power_supply_sensor(sysfs_root, path=None):
    supply = path or os.path.join(sysfs_root, "class/power_supply/battery")
    current, voltage = os.path.join(supply, "current_now"), os.path.join(supply, "voltage_now")
    if _read_int(current) is None or _read_int(voltage) is None:
        raise EnergyUnavailable("no current_now/voltage_now in %s" % supply)
    return SampledSensor("power_supply:" + os.path.basename(supply), "sampled every 50 ms",
                         lambda: power_supply_watts(_read_int(current), _read_int(voltage)))


def _nvml_sensor(device_index=0):
    try:
        import pynvml
    except ImportError:
        raise EnergyUnavailable("pynvml is not installed (pip install 'convbench[gpu]')") from None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as exc:  # NVML raises its own error classes
        raise EnergyUnavailable("NVML energy counter unavailable: %s" % exc) from None
    return CounterSensor("nvml:gpu%d" % device_index, "1 mJ counter",
                         lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3)


ENERGY_SENSORS = ("rapl", "hwmon", "ina3221", "power_supply", "battery", "nvml")


def open_energy_sensor(spec, sysfs_root="/sys"):
    """The configured sensor, or the first available one for ``auto``.

    Raises EnergyUnavailable with the reason; never pretends to measure zero.
    """
    kind = (spec or {}).get("sensor", "auto")
    path = (spec or {}).get("path")
    if kind == "none":
        raise EnergyUnavailable("energy measurement disabled for this device")
    makers = {
        "rapl": lambda: _rapl_sensor(sysfs_root),
        "hwmon": lambda: _hwmon_sensor(sysfs_root, path),
        "ina3221": lambda: _ina3221_sensor(sysfs_root, path),
        "power_supply": lambda: _power_supply_sensor(sysfs_root, path),
        "battery": lambda: _power_supply_sensor(sysfs_root, path),
        "nvml": lambda: _nvml_sensor(int((spec or {}).get("index", 0))),
    }
    if kind != "auto":
        if kind not in makers:
            raise EnergyUnavailable("unknown energy sensor %r" % kind)
        return makers[kind]()
    reasons = []
    for name in ("rapl", "hwmon", "power_supply"):
        try:
            return makers[name]()
        except EnergyUnavailable as exc:
            reasons.append(str(exc))
    raise EnergyUnavailable("; ".join(reasons))


# ---------------------------------------------------------------- memory
def _status_kb(field):
    text = _read("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def reset_peak_rss():
    """Reset VmHWM (Linux >= 4.0) so the peak of each item is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes():
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes():
    rss = _status_kb("VmRSS")
    return rss * 1024 if rss is not None else None


# ---------------------------------------------------------------- runtimes
class Runtime:
    """Loads one model and returns a zero-argument callable that runs one inference."""

    name = "abstract"
    provider = None
    timer = "perf_counter_ns"
    # What the timed call covers: "compute" when inputs and outputs already live where the
    # runtime computes, "compute+copies" when host<->device copies happen inside it.
    timer_covers = "compute"

    def __init__(self, plan):
        self.threads = int(plan.get("threads", 1))
        self.device = plan.get("device", "cpu")

    def sync(self):
        """Wait until the device has finished all queued work (no-op for synchronous runtimes)."""

    def version(self):
        raise NotImplementedError

    def load(self, model_path, input_array):
        raise NotImplementedError

    def output(self):
        raise NotImplementedError

    def gpu_peak_bytes(self):
        return None


class TorchRuntime(Runtime):
    name = "torch"

    def __init__(self, plan):
        super().__init__(plan)
        import torch

        self.torch = torch
        torch.set_num_threads(self.threads)
        self.channels_last = plan.get("channels_last", True)
        if self.device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("torch reports no CUDA device")
            self.timer = "cuda_events"
        self.provider = self.device

    def version(self):
        return self.torch.__version__

    def load(self, model_path, input_array):
        torch = self.torch
        program = torch.export.load(model_path)
        module = program.module()
        example = torch.from_numpy(input_array)
        fmt = torch.channels_last if self.channels_last and example.dim() == 4 else torch.contiguous_format
        module = module.to(self.device)
        example = example.to(self.device).contiguous(memory_format=fmt)
        if example.dim() == 4 and self.channels_last:
            for param in module.parameters():
                if param.dim() == 4:
                    param.data = param.data.contiguous(memory_format=torch.channels_last)
        self._module, self._input = module, example
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        infer = torch.inference_mode()(module)

        def call():
            self._out = infer(example)

        return call

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def make_cuda_timer(self):
        torch = self.torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def timed(call):
            start.record()
            call()
            end.record()
            end.synchronize()
            return int(start.elapsed_time(end) * 1e6)  # ms -> ns

        return timed

    def output(self):
        out = self._out[0] if isinstance(self._out, (tuple, list)) else self._out
        return out.detach().float().cpu().contiguous().numpy()

    def gpu_peak_bytes(self):
        if self.device == "cuda":
            return int(self.torch.cuda.max_memory_allocated())
        return None


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, plan):
        super().__init__(plan)
        import onnxruntime as ort

        self.ort = ort
        available = ort.get_available_providers()
        if self.device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise RuntimeError("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
            self.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            self.providers = ["CPUExecutionProvider"]
        self.optimization = plan.get("ort_optimization", "all")

    def version(self):
        return self.ort.__version__

    def load(self, model_path, input_array):
        ort = self.ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        session = ort.InferenceSession(model_path, sess_options=options, providers=self.providers)
        self.provider = session.get_providers()[0]
        if self.device == "cuda" and self.provider != "CUDAExecutionProvider":
            raise RuntimeError("onnxruntime fell back to %s instead of CUDA" % self.provider)
        name = session.get_inputs()[0].name
        if self.device == "cuda":
            return self._bind_on_device(session, name, input_array)
        feeds = {name: input_array}
        run = session.run

        def call():
            self._out = run(None, feeds)

        self._read_output = lambda: self._out[0]
        return call

    def _bind_on_device(self, session, name, input_array):
        """Input and output bound to device buffers, so the timer covers compute, not copies.

        ``run_with_iobinding`` synchronises the execution providers when it returns (the
        default run options), and ``synchronize_outputs`` makes that explicit.
        """
        binding = session.io_binding()
        device_input = self.ort.OrtValue.ortvalue_from_numpy(input_array, "cuda", 0)
        binding.bind_ortvalue_input(name, device_input)
        binding.bind_output(session.get_outputs()[0].name, "cuda", 0)
        run = session.run_with_iobinding
        finish = binding.synchronize_outputs
        self._device_input = device_input  # keep the device buffer alive

        def call():
            run(binding)
            finish()

        self._read_output = lambda: binding.copy_outputs_to_cpu()[0]
        return call

    def output(self):
        return self._read_output()


class TfliteRuntime(Runtime):
    name = "tflite"

    def __init__(self, plan):
        super().__init__(plan)
        self.interpreter_cls, self.package = _import_tflite()
        self.provider = "xnnpack" if plan.get("xnnpack", True) else "builtin"

    def version(self):
        try:
            from importlib import metadata

            dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
                    "tensorflow": "tensorflow"}[self.package]
            return metadata.version(dist)
        except Exception:
            return "unknown"

    def load(self, model_path, input_array):
        kwargs = {"model_path": model_path, "num_threads": self.threads}
        if self.provider == "builtin":
            kwargs["experimental_op_resolver_type"] = self._resolver("BUILTIN_WITHOUT_DEFAULT_DELEGATES")
        interpreter = self.interpreter_cls(**kwargs)
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]
        if tuple(inp["shape"]) != tuple(input_array.shape):
            raise RuntimeError("model input shape %s != reference input %s"
                               % (tuple(inp["shape"]), tuple(input_array.shape)))
        interpreter.set_tensor(inp["index"], input_array.astype(inp["dtype"]))
        self._interpreter = interpreter
        self._out_index = interpreter.get_output_details()[0]["index"]
        return interpreter.invoke

    def _resolver(self, name):
        module = sys.modules[self.interpreter_cls.__module__]
        return getattr(module.OpResolverType, name)

    def output(self):
        return self._interpreter.get_tensor(self._out_index)


def _import_tflite():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime"
    except ImportError:
        pass
    try:
        from tensorflow.lite import Interpreter

        return Interpreter, "tensorflow"
    except ImportError:
        raise RuntimeError("no TFLite interpreter: pip install ai-edge-litert") from None


RUNTIMES = {"torch": TorchRuntime, "onnxruntime": OnnxRuntime, "tflite": TfliteRuntime}


# ---------------------------------------------------------------- timing
def _spin_until(deadline_ns):
    while time.perf_counter_ns() < deadline_ns:
        pass


MAX_BLOCK = 8192


def choose_block_size(fastest_ns, block_min_ns):
    """Calls per timed block: the largest power of two whose block lasts about block_min_ns.

    A timer read costs ~0.1-0.5 us; calls that short are timed in blocks so the timers do
    not dominate.  Powers of two keep the choice stable when the warm-up's fastest call
    varies by a few percent from run to run.
    """
    block = 1
    while block * 2 <= MAX_BLOCK and block * 2 * max(1, fastest_ns) <= block_min_ns:
        block *= 2
    return block


class _GcDisabled:
    """The garbage collector off for the timed loop, as timeit and pyperf do."""

    def __enter__(self):
        self._was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()

    def __exit__(self, *exc):
        if self._was_enabled:
            gc.enable()


def measure(call, policy, cuda_timer=None, sync=None, block_size=None):
    """Warm up, then time ``call`` until the median's CI is narrow enough or time runs out.

    ``sync`` waits for the device to finish (CUDA); it runs after the untimed first call
    and warm-up calls so that queued work never spills into the timed loop.  A given
    ``block_size`` is used as is (so runs summarise the same statistic); otherwise it is
    chosen from the fastest warm-up call.
    """
    now = time.perf_counter_ns
    slowdown = float(policy.get("slowdown_fraction", 0.0))
    sync = sync or (lambda: None)

    with _GcDisabled():
        start = now()
        call()
        sync()
        first_ns = now() - start

        warm_deadline = now() + int(float(policy.get("warmup_seconds", 0.2)) * 1e9)
        warm_runs = int(policy.get("warmup_runs", 3))
        done = 0
        warm_cap = now() + int(float(policy.get("max_seconds", 5.0)) * 0.5e9)
        fastest = first_ns
        while (done < warm_runs or now() < warm_deadline) and now() < warm_cap:
            t0 = now()
            call()
            sync()
            fastest = min(fastest, now() - t0)
            done += 1

        if cuda_timer is not None:
            block, block_source = 1, "cuda events time every call"
        elif block_size:
            block, block_source = max(1, int(block_size)), "fixed by the plan"
        else:
            block = choose_block_size(fastest, int(policy.get("block_min_ns", 100000)))
            block_source = "chosen from the warm-up"

        min_runs = int(policy.get("min_runs", 10))
        max_runs = int(policy.get("max_runs", 100000))
        min_ns = int(float(policy.get("min_seconds", 0.5)) * 1e9)
        max_ns = int(float(policy.get("max_seconds", 5.0)) * 1e9)
        target = float(policy.get("target_ci_rel_width", 0.01))

        samples = []
        append = samples.append
        next_check = min_runs
        loop_start = now()
        stop_reason = "max_runs"
        calls = range(block)
        while len(samples) < max_runs:
            if cuda_timer is not None:
                append(cuda_timer(call))
            elif block == 1:
                t0 = now()
                call()
                t1 = now()
                if slowdown:
                    t1 += int((t1 - t0) * slowdown)
                    _spin_until(t1)
                append(t1 - t0)
            else:
                t0 = now()
                for _ in calls:
                    call()
                t1 = now()
                if slowdown:
                    t1 += int((t1 - t0) * slowdown)
                    _spin_until(t1)
                append((t1 - t0) / block)
            if len(samples) >= next_check:
                elapsed = now() - loop_start
                if elapsed >= max_ns:
                    stop_reason = "max_seconds"
                    break
                if elapsed >= min_ns:
                    ordered = sorted(samples)
                    lo, hi = median_ci(ordered)
                    med = _median(ordered)
                    if med > 0 and (hi - lo) / med <= target:
                        stop_reason = "converged"
                        break
                # Check about every 10% more samples: sorting stays O(total), and off the clock.
                next_check = len(samples) + max(1, len(samples) // 10)
        wall_ns = now() - loop_start
    return {
        "first_inference_s": first_ns / 1e9,
        "warmup_runs": done,
        "samples_s": [s / 1e9 for s in samples],
        "block_size": block,
        "block_size_source": block_source,
        "sample_statistic": "per-call time" if block == 1 else "per-call mean of a block of %d calls" % block,
        # Every inference the runtime ran while measuring: the first, warm-up and timed calls.
        "inferences": 1 + done + len(samples) * block,
        "loop_wall_s": wall_ns / 1e9,
        "stop_reason": stop_reason,
        "gc_disabled": True,
    }


# ---------------------------------------------------------------- fingerprint
def _cpu_model():
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _os_release():
    text = _read("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.platform()


def fingerprint(sysfs_root="/sys"):
    board = _read("/etc/convbench-board") or ""
    facts = dict(part.split("=", 1) for part in board.split() if "=" in part)
    mem_kb = None
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    freqs = read_cpufreq(sysfs_root)
    governors = sorted({c["governor"] for c in freqs.values() if c.get("governor")})
    model = _read(os.path.join(sysfs_root, "firmware/devicetree/base/model")) or _read("/proc/device-tree/model")
    return {
        "hostname": platform.node(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "board_model": (model or "").rstrip("\x00") or None,
        "cores": os.cpu_count(),
        "cpu_max_khz": sorted({c["max_khz"] for c in freqs.values() if c.get("max_khz")}),
        "governor": ",".join(governors) or None,
        "memory_bytes": mem_kb * 1024 if mem_kb else None,
        "os": _os_release(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "emulated": facts.get("emulated"),
        "runner_version": RUNNER_VERSION,
    }


# ---------------------------------------------------------------- main
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


def measure_item(runtime, item, plan, isolation="shared process"):
    """Load one item's model, measure it, save its output; never raises."""
    import numpy as np

    sysfs_root = plan.get("sysfs_root", "/sys")
    policy = plan.get("policy", {})
    result = {"type": "result", "job_id": item["job_id"], "thermal_before": system_state(sysfs_root)}
    try:
        input_array = np.load(item["input"])
        baseline = current_rss_bytes()  # runtime imported, model not yet loaded
        peak_reset = reset_peak_rss()
        start = time.perf_counter_ns()
        call = runtime.load(item["model"], input_array)
        result["load_s"] = (time.perf_counter_ns() - start) / 1e9
        cuda_timer = runtime.make_cuda_timer() if runtime.timer == "cuda_events" else None
        energy_spec = dict(plan.get("energy") or {"sensor": "auto"})
        if runtime.device == "cuda" and energy_spec.get("sensor", "auto") == "auto":
            energy_spec["sensor"] = "nvml"
        busy = BusyMeter()
        busy.start()
        timing, energy = _energy(energy_spec, sysfs_root, policy,
                                 lambda: measure(call, policy, cuda_timer, runtime.sync, item.get("block_size")))
        result["other_cpu_cores"] = busy.stop()
        result.update(timing)
        result["energy"] = energy
        result["timer"] = runtime.timer
        result["timer_covers"] = runtime.timer_covers
        result["provider"] = runtime.provider
        peak = peak_rss_bytes()
        result["memory"] = {
            "peak_rss_bytes": peak,
            "baseline_rss_bytes": baseline,
            "rss_increase_bytes": max(0, peak - baseline) if (peak_reset and baseline is not None) else None,
            "peak_is_per_item": peak_reset,
            "isolation": isolation,
            "gpu_peak_bytes": runtime.gpu_peak_bytes(),
        }
        if item.get("output"):
            np.save(item["output"], np.ascontiguousarray(runtime.output()))
    except Exception as exc:
        result["error"] = "%s: %s" % (type(exc).__name__, exc)
        result["traceback"] = traceback.format_exc(limit=5)
    result["thermal_after"] = system_state(sysfs_root)
    return result


def _run_item_in_fresh_process(item, plan):
    """measure_item in a new process of this runner: its peak RSS is its own model's.

    A process reused across items keeps earlier models' memory resident (allocators rarely
    return it), and a forked child does not count library pages its parent faulted in;
    a fresh process is what "this model alone" means.  Its stdout carries the result line;
    its stderr goes to ours, so a crash still leaves its message for the transport.
    """
    import subprocess

    child_plan = dict(plan, items=[item])
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--item"], stdin=subprocess.PIPE,
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
    return {"type": "result", "job_id": item["job_id"], "error": why}


def run_item(runtime, item, plan):
    if plan.get("isolate_items", True):
        return _run_item_in_fresh_process(item, plan)
    return measure_item(runtime, item, plan)


def _item_main():
    """``runner.py --item``: one item of a plan read from stdin, in this fresh process."""
    plan = json.load(sys.stdin)
    item = plan["items"][0]
    try:
        runtime = RUNTIMES[plan["runtime"]](plan)
    except Exception as exc:
        _emit({"type": "result", "job_id": item["job_id"], "error": "%s: %s" % (type(exc).__name__, exc)})
        return 3
    _emit(measure_item(runtime, item, plan, isolation="fresh process"))
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
           "energy": energy, "state": system_state(sysfs_root)})
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
    for item in plan["items"]:
        _emit(run_item(runtime, item, plan))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
