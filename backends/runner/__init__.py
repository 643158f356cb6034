"""The device-side library: one runner for every device, shipped as one file.

Standard library, numpy and the one runtime it drives (torch, torch.compile, onnxruntime, a
TFLite interpreter, LiteRT's CompiledModel or ExecuTorch); no other convbench import; Python
3.9+, so it runs on any board.  Transports ship it as a zipapp (``zipapp_path()``:
``runner.pyz``, built from this package and cached by content); the host imports the same
pure functions from here instead of copying them (order statistics, power units and
integration, sensors, fingerprint, sha256, the timed loop).

Modules: ``timing`` (the timed loop), ``runtimes``, ``energy`` (sensors, one unit rule),
``memory``, ``state`` (thermal, cpufreq, other processes' CPU), ``cooldown`` (waiting for a hot
device, the rule every transport applies), ``fingerprint``, ``stats``,
``files``, and ``main`` (the plan in, JSON lines out; one fresh process per item).
"""

from .cooldown import hottest, status_text, wait_until_cool
from .energy import (
    ENERGY_SENSORS,
    CounterSensor,
    EnergyUnavailable,
    MultiCounterSensor,
    SampledSensor,
    current_unit,
    integrate_power,
    open_energy_sensor,
    power_supply_units,
    power_supply_watts,
    voltage_unit,
)
from .files import file_sha256
from .fingerprint import RUNNER_VERSION, fingerprint
from .main import _energy, main, measure_item
from .memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss
from .runtimes import RUNTIMES, Runtime, _import_tflite
from .state import BusyMeter, read_cpufreq, read_thermal, read_thermal_zones, system_state
from .stats import median_ci
from .timing import MAX_BLOCK, choose_block_size, measure

__all__ = [
    "ENERGY_SENSORS", "MAX_BLOCK", "RUNNER_VERSION", "RUNTIMES", "BusyMeter", "CounterSensor", "EnergyUnavailable",
    "MultiCounterSensor", "Runtime", "SampledSensor", "_energy", "_import_tflite", "choose_block_size",
    "current_rss_bytes", "current_unit", "file_sha256", "fingerprint", "hottest", "integrate_power", "main",
    "measure", "measure_item", "median_ci", "open_energy_sensor", "peak_rss_bytes", "power_supply_units",
    "power_supply_watts", "read_cpufreq", "read_thermal", "read_thermal_zones", "reset_peak_rss", "status_text",
    "system_state", "voltage_unit", "wait_until_cool", "zipapp_path",
]


def zipapp_path():
    """``runner.pyz`` built from this package, cached under the convbench cache by content hash.

    Every transport runs this one file: locally with the host's Python, on a board after an
    upload (skipped when the board already holds the same bytes).
    """
    import hashlib
    import os
    import shutil
    import tempfile
    import zipapp
    from pathlib import Path

    here = Path(__file__).resolve().parent
    sources = sorted(p for p in here.glob("*.py"))
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    cache = Path(os.environ.get("CONVBENCH_CACHE") or Path("~/.cache/convbench").expanduser())
    target = cache / "runner" / ("runner-%s.pyz" % digest.hexdigest()[:16])
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="convbench-runner-") as tmp:
        package = Path(tmp) / "runner"
        package.mkdir()
        for path in sources:
            if path.name != "__main__.py":
                shutil.copy2(path, package / path.name)
        (Path(tmp) / "__main__.py").write_text("import sys\n\nfrom runner.main import main\n\n"
                                               "sys.exit(main(sys.argv))\n")
        partial = target.with_name(target.name + ".%d.part" % os.getpid())
        zipapp.create_archive(tmp, partial, interpreter="/usr/bin/env python3")
        os.replace(partial, target)  # atomic: concurrent builders write the same bytes
    return target
