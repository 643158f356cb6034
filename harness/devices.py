"""devices.yaml: which devices exist, how to reach them, what they can run.

Validation reports the file, line and field of every problem and what is expected.
``${ENV_VAR}`` in any string is replaced from the environment (for secrets and hosts);
an undefined variable is an error, never an empty string.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from backends.base import BACKENDS
from harness.errors import UserError

TRANSPORTS = ("local", "ssh", "adb")
ENERGY_SENSORS = ("auto", "none", "rapl", "hwmon", "ina3221", "power_supply", "battery", "nvml")
DELEGATES = ("cpu", "xnnpack", "gpu", "nnapi")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

COMMON_FIELDS = {"name", "transport", "backends", "threads", "cpu_mask", "delegates", "energy", "thermal",
                 "sysfs_root", "description"}
TRANSPORT_FIELDS = {
    "local": {"python"},
    "ssh": {"host", "port", "user", "key", "python", "workdir", "trust_new_host", "known_hosts",
            "ssh_config", "connect_timeout"},
    "adb": {"serial", "adb", "benchmark_model", "adb_server_port", "num_runs", "warmup_runs", "op_profiling"},
}


class DevicesFileError(UserError):
    pass


@dataclass(frozen=True)
class Thermal:
    zones: tuple[str, ...] = ()  # empty: all zones
    cooldown_c: float | None = None  # wait until every zone is below this before each job
    max_wait_s: float = 120.0


@dataclass(frozen=True)
class Device:
    name: str
    transport: str
    backends: tuple[str, ...]
    threads: tuple[int, ...] = (1,)
    cpu_mask: str | None = None
    delegates: tuple[str, ...] = ()
    energy: dict[str, Any] = field(default_factory=lambda: {"sensor": "auto"})
    thermal: Thermal = Thermal()
    sysfs_root: str = "/sys"
    options: dict[str, Any] = field(default_factory=dict)  # transport fields
    source: str = ""  # file:line, for messages

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


def _node_to_python(node: yaml.Node, lines: dict[tuple, int], path: tuple = ()) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node)) if not isinstance(key_node, yaml.ScalarNode) \
                else key_node.value
            result[key] = _node_to_python(value_node, lines, (*path, key))
            lines[(*path, key)] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_node_to_python(item, lines, (*path, i)) for i, item in enumerate(node.value)]
    # Scalars: let the safe constructor resolve types (ints, bools, null).
    return yaml.safe_load(yaml.serialize(node))


class _Checker:
    def __init__(self, path: Path, lines: dict[tuple, int]) -> None:
        self.path, self.lines, self.errors = path, lines, []

    def where(self, key: tuple) -> str:
        while key and key not in self.lines:
            key = key[:-1]
        return f"{self.path}:{self.lines.get(key, 1)}"

    def fail(self, key: tuple, message: str) -> None:
        field_name = ".".join(str(k) for k in key[2:]) if len(key) > 2 else ""
        prefix = f"{self.where(key)}: " + (f"{field_name}: " if field_name else "")
        self.errors.append(prefix + message)


def _expand(value: Any, key: tuple, checker: _Checker) -> Any:
    if isinstance(value, str):
        def substitute(match: re.Match) -> str:
            name = match.group(1)
            if name not in os.environ:
                checker.fail(key, f"environment variable {name} is not set (used as ${{{name}}})")
                return ""
            return os.environ[name]
        return _ENV_RE.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand(v, (*key, k), checker) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*key, i), checker) for i, v in enumerate(value)]
    return value


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value if isinstance(value, list) else [value]


def _parse_device(raw: Any, index: int, checker: _Checker) -> Device | None:
    key = ("devices", index)
    if not isinstance(raw, dict):
        checker.fail(key, "each device must be a mapping with at least `name` and `transport`")
        return None
    raw = _expand(raw, key, checker)
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        checker.fail((*key, "name"), f"expected a name of letters, digits, '-', '_' or '.', got {name!r}")
        return None
    transport = raw.get("transport")
    if transport not in TRANSPORTS:
        checker.fail((*key, "transport"), f"expected one of {', '.join(TRANSPORTS)}, got {transport!r}")
        return None
    allowed = COMMON_FIELDS | TRANSPORT_FIELDS[transport]
    for unknown in sorted(set(raw) - allowed):
        checker.fail((*key, unknown), f"unknown field for a {transport} device; expected one of "
                                      f"{', '.join(sorted(allowed))}")
    default_backends = ["tflite"] if transport == "adb" else ["torch", "onnxruntime", "tflite"]
    backends = _as_list(raw.get("backends", default_backends))
    for backend in backends:
        if backend not in BACKENDS:
            checker.fail((*key, "backends"), f"unknown backend {backend!r}; expected {', '.join(BACKENDS)}")
    if transport == "adb" and set(backends) - {"tflite"}:
        checker.fail((*key, "backends"), "adb devices run benchmark_model, which runs tflite only")
    threads = _as_list(raw.get("threads", [1]))
    if not threads or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in threads):
        checker.fail((*key, "threads"), f"expected a list of positive integers, got {raw.get('threads')!r}")
        threads = [1]
    delegates = _as_list(raw.get("delegates", ["xnnpack"] if transport == "adb" else []))
    for delegate in delegates:
        if delegate not in DELEGATES:
            checker.fail((*key, "delegates"), f"unknown delegate {delegate!r}; expected {', '.join(DELEGATES)}")
    cpu_mask = raw.get("cpu_mask")
    if cpu_mask is not None:
        cpu_mask = str(cpu_mask)
        if not re.fullmatch(r"(0x)?[0-9a-fA-F]+", cpu_mask):
            checker.fail((*key, "cpu_mask"), f"expected a hex taskset mask such as f0, got {cpu_mask!r}")
    energy = raw.get("energy", {"sensor": "auto"})
    if isinstance(energy, str):
        energy = {"sensor": energy}
    if not isinstance(energy, dict) or energy.get("sensor", "auto") not in ENERGY_SENSORS:
        checker.fail((*key, "energy"), f"expected a sensor among {', '.join(ENERGY_SENSORS)} "
                                       "(e.g. `energy: {sensor: rapl}`)")
        energy = {"sensor": "none"}
    thermal_raw = raw.get("thermal") or {}
    thermal = Thermal()
    if not isinstance(thermal_raw, dict):
        checker.fail((*key, "thermal"), "expected a mapping with zones, cooldown_c, max_wait_s")
    else:
        try:
            thermal = Thermal(tuple(_as_list(thermal_raw.get("zones"))),
                              float(thermal_raw["cooldown_c"]) if thermal_raw.get("cooldown_c") is not None
                              else None, float(thermal_raw.get("max_wait_s", 120)))
        except (TypeError, ValueError):
            checker.fail((*key, "thermal"), "cooldown_c and max_wait_s must be numbers")
    options = {k: v for k, v in raw.items() if k in TRANSPORT_FIELDS[transport]}
    if transport == "ssh":
        if not options.get("host"):
            checker.fail(key, "ssh devices need `host` (a hostname, address or ~/.ssh/config alias)")
        port = options.get("port")
        if port is not None and not (isinstance(port, int) and 0 < port < 65536):
            checker.fail((*key, "port"), f"expected a port number, got {port!r}")
        if "trust_new_host" in options and not isinstance(options["trust_new_host"], bool):
            checker.fail((*key, "trust_new_host"), "expected true or false")
    if transport == "adb" and not options.get("serial"):
        checker.fail(key, "adb devices need `serial` (see `adb devices`)")
    return Device(name, transport, tuple(backends), tuple(threads), cpu_mask, tuple(delegates), energy,
                  thermal, str(raw.get("sysfs_root", "/sys")), options,
                  f"{checker.path}:{checker.lines.get(key, 1)}")


def load_devices(path: Path) -> dict[str, Device]:
    if not path.exists():
        raise DevicesFileError(f"{path}: no such devices file (create one; see README 'Devices')")
    try:
        node = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise DevicesFileError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    lines: dict[tuple, int] = {}
    data = _node_to_python(node, lines) if node is not None else None
    checker = _Checker(path, lines)
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        raise DevicesFileError(f"{path}:1: expected a top-level `devices:` list")
    devices: dict[str, Device] = {}
    for index, raw in enumerate(data["devices"]):
        device = _parse_device(raw, index, checker)
        if device is None:
            continue
        if device.name in devices:
            checker.fail((("devices", index, "name")), f"duplicate device name {device.name!r} "
                         f"(first defined at {devices[device.name].source})")
        devices[device.name] = device
    if checker.errors:
        raise DevicesFileError("\n".join(checker.errors))
    return devices


def default_devices_path() -> Path:
    return Path(os.environ.get("CONVBENCH_DEVICES", "devices.yaml"))


def local_device() -> Device:
    """The implicit device when no devices.yaml exists."""
    return Device("local", "local", ("torch", "onnxruntime", "tflite"), source="built-in")


def select(devices: dict[str, Device], names: list[str]) -> list[Device]:
    unknown = [n for n in names if n not in devices]
    if unknown:
        raise UserError(f"unknown device {', '.join(map(repr, unknown))}; devices: {', '.join(devices)}")
    return [devices[n] for n in names]
