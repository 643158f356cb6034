"""Energy sensors: RAPL, hwmon, INA3221, power_supply (batteries), NVML; one unit rule."""

import glob
import os
import threading
import time

from .files import _read, _read_int


class EnergyUnavailable(Exception):
    pass


class MultiCounterSensor:
    """Cumulative energy counters (one per RAPL package), each wrapping on its own range."""

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
            if delta < 0:  # this counter wrapped around
                if not max_joules:
                    raise EnergyUnavailable("%s counter went backwards" % label)
                delta += max_joules
            total += delta
        return total


class CounterSensor(MultiCounterSensor):
    """One cumulative energy counter (hwmon energy*_input, NVML)."""

    def __init__(self, name, resolution, read_joules, max_joules=None):
        super().__init__(name, resolution, [(name, read_joules, max_joules)])


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
