"""Resident memory of this process: current, peak (VmHWM) and its reset."""

import resource

from .files import _read


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
