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

from harness import registry
from harness.errors import UserError
from harness.registry import BACKENDS

MAX_FILE_BYTES = 1 << 20  # a devices file is a few kilobytes; more is a mistake or an attack
MAX_VALUES = 50_000  # values after expanding YAML aliases (a large lab's file has a few thousand)
MAX_DEPTH = 32  # nesting of lists and mappings

ENERGY_SENSORS = ("auto", "none", "rapl", "hwmon", "ina3221", "power_supply", "battery", "nvml")
ENERGY_FIELDS = {  # what the runner (backends/runner.py) and the adb transport read
    "sensor": "the sensor",
    "path": "a sysfs path (hwmon, ina3221, power_supply)",
    "index": "a GPU index for nvml (0, 1, ...)",
    "supply": "a power_supply name on an adb device (default battery)",
}
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

COMMON_FIELDS = {"name", "transport", "backends", "threads", "cpu_mask", "delegates", "energy", "thermal",
                 "sysfs_root", "description", "machine"}
THERMAL_FIELDS = {
    "zones": "thermal zone types or names to watch (default: all)",
    "cooldown_c": "before each job, wait until the hottest watched zone is below this (default: no wait)",
    "max_wait_s": "longest cool-down wait in seconds (default 120)",
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
    # Devices naming one machine are measured in turn, never at once (e.g. an emulator on this
    # host: `machine: this host`); None: the transport's own notion (host:port, adb serial).
    machine: str | None = None

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


try:  # LibYAML's parser is about 7 times faster than PyYAML's; nodes are composed in Python either way
    from yaml.cyaml import CParser

    _PARSER: tuple[type, ...] = (CParser,)
except ImportError:  # PyYAML built without LibYAML
    _PARSER = (yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser)


class _Loader(yaml.composer.Composer, *_PARSER, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """A safe loader refusing deep nesting as it composes (PyYAML's scanner and composer would
    spend seconds, then recurse out of stack, on ``[[[[...``)."""

    depth = 0

    def __init__(self, stream: str) -> None:
        if len(_PARSER) == 1:
            _PARSER[0].__init__(self, stream)
        else:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Builder:
    """YAML nodes to Python values, recording the line of every path, within resource limits.

    Aliases are expanded (each ``*name`` becomes a copy of its anchor's value), so a few
    hundred bytes of nested aliases ("billion laughs") could expand to billions of values,
    and an alias inside its own anchor (``&a [*a]``) forever: both are refused.
    """

    def __init__(self, path: Path, lines: dict[tuple, int]) -> None:
        self.path, self.lines, self.count = path, lines, 0
        self.open: set[int] = set()  # the collections being built (an alias to one is a cycle)
        self.constructor = yaml.constructor.SafeConstructor()

    def fail(self, node: yaml.Node, message: str) -> DevicesFileError:
        return DevicesFileError(f"{self.path}:{node.start_mark.line + 1}: {message}")

    def build(self, node: yaml.Node, path: tuple = ()) -> Any:
        self.lines[path] = node.start_mark.line + 1
        self.count += 1
        if self.count > MAX_VALUES:
            raise self.fail(node, f"has more than {MAX_VALUES:,} values once its YAML aliases are expanded "
                                  "(each `*name` copies what `&name` anchors; a devices file needs a few hundred "
                                  "values): refused")
        if len(path) > MAX_DEPTH:
            raise self.fail(node, f"nested more than {MAX_DEPTH} levels deep: refused")
        if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            try:  # scalars: the safe constructor resolves types (ints, bools, null)
                return self.constructor.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                raise self.fail(node, f"not a plain value: {getattr(exc, 'problem', None) or exc}") from None
        if id(node) in self.open:
            raise self.fail(node, "a YAML alias refers to a value that contains it (`&a [*a]`): it never ends; "
                                  "refused")
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            result = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.fail(key_node, "a key must be a plain name, not a list or a mapping")
                key = key_node.value
                result[key] = self.build(value_node, (*path, key))
                self.lines[(*path, key)] = key_node.start_mark.line + 1
            return result
        finally:
            self.open.discard(id(node))


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
    if transport not in registry.TRANSPORT_MODULES:
        checker.fail((*key, "transport"), f"expected one of {', '.join(registry.TRANSPORT_MODULES)}, "
                                          f"got {transport!r}")
        return None
    info = registry.transport(transport)
    allowed = COMMON_FIELDS | set(info.fields)
    for unknown in sorted(set(raw) - allowed):
        checker.fail((*key, unknown), f"unknown field for a {transport} device; expected one of "
                                      f"{', '.join(sorted(allowed))}")
    backends = _as_list(raw.get("backends", list(info.default_backends)))
    for backend in backends:
        if backend not in BACKENDS:
            checker.fail((*key, "backends"), f"unknown backend {backend!r}; expected {', '.join(BACKENDS)}")
    if info.allowed_backends is not None and set(backends) - set(info.allowed_backends):
        why = info.allowed_backends_why or f"run {', '.join(info.allowed_backends)} only"
        checker.fail((*key, "backends"), f"{transport} devices {why}")
    threads = _as_list(raw.get("threads", [1]))
    if not threads or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in threads):
        checker.fail((*key, "threads"), f"expected a list of positive integers, got {raw.get('threads')!r}")
        threads = [1]
    delegates = _as_list(raw.get("delegates", list(info.default_delegates)))
    for delegate in delegates:
        if delegate not in info.delegates:
            expected = ", ".join(info.delegates) if info.delegates else f"none: {transport} devices take no delegates"
            checker.fail((*key, "delegates"), f"unknown delegate {delegate!r}; expected {expected}")
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
    for unknown in sorted(set(energy) - set(ENERGY_FIELDS), key=str):
        checker.fail((*key, "energy", unknown), f"unknown field of `energy`; expected one of "
                                                f"{', '.join(ENERGY_FIELDS)}")
    for text_field in ("path", "supply"):
        if text_field in energy and not (isinstance(energy[text_field], str) and energy[text_field]):
            checker.fail((*key, "energy", text_field), f"expected {ENERGY_FIELDS[text_field]}, "
                                                       f"got {energy[text_field]!r}")
    if "index" in energy and not (isinstance(energy["index"], int) and not isinstance(energy["index"], bool)
                                  and energy["index"] >= 0):
        checker.fail((*key, "energy", "index"), f"expected {ENERGY_FIELDS['index']}, got {energy['index']!r}")
    thermal_raw = raw.get("thermal") or {}
    thermal = Thermal()
    if not isinstance(thermal_raw, dict):
        checker.fail((*key, "thermal"), "expected a mapping with zones, cooldown_c, max_wait_s")
    else:
        for unknown in sorted(set(thermal_raw) - set(THERMAL_FIELDS), key=str):
            checker.fail((*key, "thermal", unknown), f"unknown field of `thermal`; expected one of "
                                                     f"{', '.join(THERMAL_FIELDS)}")
        try:
            thermal = Thermal(tuple(_as_list(thermal_raw.get("zones"))),
                              float(thermal_raw["cooldown_c"]) if thermal_raw.get("cooldown_c") is not None
                              else None, float(thermal_raw.get("max_wait_s", 120)))
        except (TypeError, ValueError):
            checker.fail((*key, "thermal"), "cooldown_c and max_wait_s must be numbers")
    machine = raw.get("machine")
    if machine is not None and not (isinstance(machine, str) and machine.strip()):
        checker.fail((*key, "machine"), f"expected a machine name such as `this host`, got {machine!r}")
        machine = None
    options = {k: v for k, v in raw.items() if k in info.fields}
    info.validate(options, lambda name, message: checker.fail((*key, name) if name else key, message))
    return Device(name, transport, tuple(backends), tuple(threads), cpu_mask, tuple(delegates), energy,
                  thermal, str(raw.get("sysfs_root", "/sys")), options,
                  f"{checker.path}:{checker.lines.get(key, 1)}", machine.strip() if machine else None)


def _read_text(path: Path) -> str:
    """The file's text, refused beyond MAX_FILE_BYTES before anything is parsed."""
    too_big = (f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB, which no devices file needs "
               "(is this the right file?): refused")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise DevicesFileError(too_big)
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)  # also bounds what a FIFO or a device file can send
    except OSError as exc:
        raise DevicesFileError(f"{path}: cannot read the devices file: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise DevicesFileError(too_big)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DevicesFileError(f"{path}:{line}: not UTF-8 text (byte {exc.start}): is this a devices file?") from None


def load_devices(path: Path) -> dict[str, Device]:
    if not path.exists():
        raise DevicesFileError(f"{path}: no such devices file (create one; see README 'Devices')")
    text = _read_text(path)
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise DevicesFileError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except _TooDeep as exc:
        raise DevicesFileError(f"{path}:{exc.line}: nested more than {MAX_DEPTH} levels deep: refused") from None
    lines: dict[tuple, int] = {}
    data = _Builder(path, lines).build(node) if node is not None else None
    checker = _Checker(path, lines)
    if isinstance(data, dict) and "devices" in data and data["devices"] in (None, []):
        raise DevicesFileError(f"{path}:{lines.get(('devices',), 1)}: this devices file declares no devices "
                               "(`devices:` is empty); add at least one, e.g. `- {name: local, transport: local}` "
                               "(see README 'Devices')")
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
    return Device("local", "local", registry.transport("local").default_backends, source="built-in")


def select(devices: dict[str, Device], names: list[str]) -> list[Device]:
    unknown = [n for n in names if n not in devices]
    if unknown:
        raise UserError(f"unknown device {', '.join(map(repr, unknown))}; devices: {', '.join(devices)}")
    return [devices[n] for n in names]
