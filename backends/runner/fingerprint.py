"""What the device is: hardware, OS, Python, emulation, runner version."""

import os
import platform

from .files import _read
from .state import read_cpufreq

RUNNER_VERSION = 8  # 3: reference probe in every invocation; 4: cool-down waits, with status lines;
# 5: own CPU time from times(2) (qemu-user fakes /proc/self/stat); 6: op_profile after each item;
# 7: op_profile only when the policy asks for it; 8: runtimes torch-compile (compile_s), litert (CompiledModel),
# executorch; runtime warnings in the result


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
