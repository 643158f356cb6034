"""Device state around a measurement: thermal zones, cpufreq, load, other processes' CPU."""

import glob
import os
import time

from .files import _read, _read_int


def read_thermal_zones(sysfs_root="/sys"):
    """Thermal zones as ``(zone, type, celsius)``, e.g. ``("thermal_zone0", "cpu-thermal", 41.0)``."""
    zones = []
    for zone in sorted(glob.glob(os.path.join(sysfs_root, "class/thermal/thermal_zone*"))):
        milli = _read_int(os.path.join(zone, "temp"))
        if milli is None:
            continue
        name = os.path.basename(zone)
        zones.append((name, _read(os.path.join(zone, "type")) or name, milli / 1000.0))
    return zones


def read_thermal(sysfs_root="/sys"):
    """Thermal zone temperatures in degrees C, keyed by zone type (or zone name)."""
    zones = {}
    for name, kind, celsius in read_thermal_zones(sysfs_root):
        key = kind if kind not in zones else "%s/%s" % (kind, name)
        zones[key] = celsius
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
    """(busy jiffies of the whole machine, CPU seconds of this process)."""
    try:
        fields = (_read("/proc/stat") or "").splitlines()[0].split()[1:]
        values = [int(v) for v in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
    except (IndexError, ValueError):
        return None
    # times(2), not /proc/self/stat: under qemu-user /proc/self/stat is qemu's fake with zero CPU
    # times, so an emulated board would count its own runner as another process.
    own = os.times()
    return sum(values[:8]) - idle, own.user + own.system


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
        others = (end[0] - self._start[0]) / hz - (end[1] - self._start[1])
        return max(0.0, others / elapsed)


def system_state(sysfs_root="/sys"):
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"time": time.time(), "thermal_c": read_thermal(sysfs_root),
            "cpufreq": read_cpufreq(sysfs_root), "loadavg": list(load) if load else None}
