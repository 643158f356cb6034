"""Measured rooflines: each device x backend x threads' own compute and memory ceilings.

``harness calibrate`` runs the calibration workloads (``harness.workloads.calib``) as an
ordinary run, so every runtime and transport measures them exactly as it measures any job
(Android phones through ``benchmark_model``), and keeps per (device fingerprint, backend,
threads, delegate) a ``Ceiling``:

* ``peak_macs_per_s``: MAC/s of a large compute-bound conv, run by that runtime;
* ``int8_peak_macs_per_s``: the same conv statically quantized (its ``-int8`` id), for backends
  that run int8 (``Backend.precisions``); ``for_precision("int8")`` is the ceiling with it;
* ``stream_bytes_per_s``: bytes/s of a matrix-vector product whose weights (64 MiB) are far
  beyond any last-level cache: each weight is read once per call;
* ``cache_bytes_per_s``: the same kernel on a 4 MiB working set (inside the LLC of desktop and
  server CPUs; on a CPU with a smaller LLC it streams too, and reads close to the stream figure).

Each figure is the median call of the fastest invocation: a ceiling is what the runtime
can reach, and interference from other processes only ever lowers it.

Ceilings are stored as ``<results>/calibrations/<fingerprint-id>/<backend>-t<threads>[-<delegate>].json``
and reused by every later run on the same fingerprint; the calibration runs themselves are
kept under ``<results>/calibrations/runs/`` (out of the way of ``harness report``'s runs).

This module imports nothing heavy: the analysis and the report load ceilings through it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

CALIBRATIONS_DIR = "calibrations"
RUNS_DIR = "runs"  # the calibration runs, under CALIBRATIONS_DIR
SCHEMA_VERSION = 1

# The kernels (see harness/workloads/calib.py). 462 MMACs of 3x3 conv; a 4096 x 4096 fp32
# matrix-vector product streams 64 MiB, a 1024 x 1024 one 4 MiB.
COMPUTE_WORKLOAD = "calib-conv-C256-k3-x28"
INT8_COMPUTE_WORKLOAD = COMPUTE_WORKLOAD + "-int8"
STREAM_WORKLOAD = "calib-gemv-N4096"
CACHE_WORKLOAD = "calib-gemv-N1024"
# Memory roofs are bytes/s whatever the bytes hold; only the compute roof differs per precision.
WORKLOADS = (COMPUTE_WORKLOAD, INT8_COMPUTE_WORKLOAD, STREAM_WORKLOAD, CACHE_WORKLOAD)

CeilingKey = tuple[str, str, int, str | None]  # (fingerprint id, backend, threads, delegate)


@dataclass(frozen=True)
class Ceiling:
    """The measured roofs of one device (fingerprint) x backend x threads (x delegate)."""

    device: str  # the devices.yaml name it was measured as
    fingerprint_id: str
    backend: str
    threads: int
    delegate: str | None  # the job's requested delegate (Android), else None
    runtime_version: str | None
    peak_macs_per_s: float
    stream_bytes_per_s: float
    cache_bytes_per_s: float | None
    sources: dict = field(default_factory=dict)  # role -> workload id, latency, MACs, bytes, invocations
    measured_at: str = ""
    llc_bytes: int | None = None  # the last-level cache size, when the device's sysfs says
    int8_peak_macs_per_s: float | None = None  # the int8 conv's MAC/s (backends that run int8)

    @property
    def key(self) -> CeilingKey:
        return (self.fingerprint_id, self.backend, self.threads, self.delegate)

    def for_precision(self, precision: str) -> Ceiling | None:
        """The roofs a workload of ``precision`` runs under (None: that precision's peak was not measured)."""
        if precision == "fp32":
            return self
        if precision == "int8" and self.int8_peak_macs_per_s:
            return replace(self, peak_macs_per_s=self.int8_peak_macs_per_s)
        return None

    @property
    def ridge_intensity(self) -> float:
        """MACs per byte where the memory roof meets the compute roof (from the streaming bandwidth)."""
        return self.peak_macs_per_s / self.stream_bytes_per_s

    def bandwidth(self, resident: bool = False) -> float:
        if resident and self.cache_bytes_per_s:
            return self.cache_bytes_per_s
        return self.stream_bytes_per_s

    def attainable_macs_per_s(self, intensity: float, resident: bool = False) -> float:
        """The roofline: min(peak, intensity x bandwidth); ``resident``: the working set fits in cache."""
        return min(self.peak_macs_per_s, intensity * self.bandwidth(resident))

    def fits_in_cache(self, bytes_: float | None) -> bool:
        """A working set of ``bytes_`` stays in the last-level cache (unknown cache size: it does not)."""
        return bool(self.llc_bytes and bytes_ and bytes_ <= self.llc_bytes)

    def attainable_for(self, intensity: float, bytes_: float | None) -> float:
        """The roofline at ``intensity`` for a workload moving ``bytes_`` (cache bandwidth when it fits)."""
        return self.attainable_macs_per_s(intensity, self.fits_in_cache(bytes_))

    def roofline_seconds(self, macs: float, bytes_: float, resident: bool = False) -> float:
        """The roofline time of a kernel: max(MACs / peak, bytes / bandwidth)."""
        return max(macs / self.peak_macs_per_s, bytes_ / self.bandwidth(resident))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Ceiling:
        names = {f.name for f in fields(cls)}
        ceiling = cls(**{k: v for k, v in data.items() if k in names})
        for name in ("peak_macs_per_s", "stream_bytes_per_s"):
            value = getattr(ceiling, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(ceiling.threads, int):
            raise ValueError(f"threads must be an integer, got {ceiling.threads!r}")
        return ceiling


def calibrations_dir(results_dir: Path) -> Path:
    return Path(results_dir) / CALIBRATIONS_DIR


def ceiling_path(results_dir: Path, fingerprint_id: str, backend: str, threads: int, delegate: str | None) -> Path:
    name = f"{backend}-t{threads}" + (f"-{delegate}" if delegate else "")
    return calibrations_dir(results_dir) / fingerprint_id / f"{name}.json"


def save_ceiling(results_dir: Path, ceiling: Ceiling, fingerprint: Mapping[str, Any] | None = None) -> Path:
    from harness.store import write_json_atomic

    path = ceiling_path(results_dir, *ceiling.key)
    write_json_atomic(path, {"schema_version": SCHEMA_VERSION, **ceiling.to_dict(),
                             "fingerprint": dict(fingerprint or {})})
    return path


def load_ceilings(results_dir: Path) -> dict[CeilingKey, Ceiling]:
    """Every stored ceiling, keyed by (fingerprint id, backend, threads, delegate).

    A damaged file is skipped with a one-line warning; no calibrations is an empty dict.
    """
    from harness.store import warn

    root = calibrations_dir(results_dir)
    ceilings: dict[CeilingKey, Ceiling] = {}
    if not root.is_dir():
        return ceilings
    for path in sorted(root.glob("*/*.json")):
        if path.parent.name == RUNS_DIR:
            continue
        try:
            ceiling = Ceiling.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            warn(f"{path}: not a usable calibration ({exc}); skipped")
            continue
        ceilings[ceiling.key] = ceiling
    return ceilings


def _clean(value: Any) -> Any:
    """None for the NaN a pandas row has where a record had no value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def ceiling_for(row: Mapping[str, Any], ceilings: Mapping[CeilingKey, Ceiling]) -> Ceiling | None:
    """The ceiling measured for a measurement row (a ``load_frame`` row or a record), or None.

    Matched on ``device_fingerprint_id`` (or a record's ``device_fingerprint.id``), backend,
    threads and the requested delegate: ``requested_delegate`` when the row has it, else its
    ``delegate`` column (which off Android is the provider the runtime reported, so a
    ceiling stored without a delegate matches it too).  An int8 row gets the int8 compute roof
    (``Ceiling.for_precision``), or None when it was not measured.
    """
    fingerprint_id = _clean(row.get("device_fingerprint_id"))
    if fingerprint_id is None and isinstance(row.get("device_fingerprint"), Mapping):
        fingerprint_id = row["device_fingerprint"].get("id")
    threads = _clean(row.get("threads"))
    if fingerprint_id is None or threads is None:
        return None
    backend, threads = row.get("backend"), int(threads)
    for delegate in dict.fromkeys((_clean(row.get("requested_delegate")), _clean(row.get("delegate")), None)):
        ceiling = ceilings.get((fingerprint_id, backend, threads, delegate))
        if ceiling is not None:
            return ceiling.for_precision(_precision(row))
    return None


def _precision(row: Mapping[str, Any]) -> str:
    precision = _clean(row.get("precision"))
    if precision is None and isinstance(row.get("workload"), Mapping):
        precision = row["workload"].get("precision")
    if precision is None:
        from harness.workloads import split_precision

        precision = split_precision(str(row.get("workload_id") or ""))[1]
    return str(precision)


# ---------------------------------------------------------------- from a calibration run's records
@dataclass
class CalibrationFailure:
    device: str
    backend: str
    threads: int
    delegate: str | None
    reason: str


def _local_llc_bytes(sysfs_root: str = "/sys") -> int | None:
    """The largest cache the CPU reports (``cpu0/cache/index*/size``), in bytes."""
    sizes = []
    for path in Path(sysfs_root, "devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = path.read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes) if sizes else None


def ceilings_from_records(records: Iterable[Mapping[str, Any]],
                          llc_bytes: Mapping[str, int | None] | None = None, run_id: str | None = None
                          ) -> tuple[list[tuple[Ceiling, dict]], list[CalibrationFailure]]:
    """(ceiling, fingerprint) per device x backend x threads x delegate measured, and what failed."""
    from harness.catalog import workload_row

    groups: dict[tuple[str, str, int, str | None], list[Mapping[str, Any]]] = {}
    for record in records:
        if record.get("workload_id") not in WORKLOADS:
            continue
        key = (record["device"], record["backend"], int(record["threads"]), record.get("requested_delegate"))
        groups.setdefault(key, []).append(record)
    ceilings: list[tuple[Ceiling, dict]] = []
    failures: list[CalibrationFailure] = []
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for (device, backend, threads, delegate), group in groups.items():
        best: dict[str, Mapping[str, Any]] = {}
        errors: list[str] = []
        for record in group:
            median = (record.get("latency") or {}).get("median")
            if record.get("status") != "ok" or not median:
                errors.append(f"{record['workload_id']}: {record.get('error') or record.get('status')}")
                continue
            current = best.get(record["workload_id"])
            if current is None or median < current["latency"]["median"]:
                best[record["workload_id"]] = record
        missing = [w for w in (COMPUTE_WORKLOAD, STREAM_WORKLOAD) if w not in best]
        if missing:
            failures.append(CalibrationFailure(device, backend, threads, delegate,
                                               "; ".join(errors) or f"no measurement of {', '.join(missing)}"))
            continue
        sources: dict[str, dict[str, Any]] = {}
        rates: dict[str, float] = {}
        roles = (("compute", COMPUTE_WORKLOAD, "macs"), ("compute_int8", INT8_COMPUTE_WORKLOAD, "macs"),
                 ("stream", STREAM_WORKLOAD, "bytes_fp32"), ("cache", CACHE_WORKLOAD, "bytes_fp32"))
        for role, workload_id, unit in roles:
            record = best.get(workload_id)
            if record is None:
                continue
            cost = workload_row(workload_id)
            median = record["latency"]["median"]
            rates[role] = cost[unit] / median
            sources[role] = {"workload_id": workload_id, "latency_median_s": median,
                             "latency_min_s": record["latency"].get("min"), "macs": cost["macs"],
                             "bytes": cost["bytes_fp32"], "invocations": sum(1 for r in group
                                                                              if r["workload_id"] == workload_id),
                             "provider": record.get("provider"), "run_id": record.get("run_id") or run_id}
        if "compute_int8" not in rates and any(r.get("workload_id") == INT8_COMPUTE_WORKLOAD for r in group):
            # Recorded, so that a backend whose int8 export fails is not calibrated again on every run.
            sources["compute_int8"] = {"workload_id": INT8_COMPUTE_WORKLOAD, "error": "; ".join(
                e for e in errors if e.startswith(INT8_COMPUTE_WORKLOAD)) or "no valid measurement"}
        first = best[COMPUTE_WORKLOAD]
        fingerprint = dict(first.get("device_fingerprint") or {})
        if not fingerprint.get("id"):
            failures.append(CalibrationFailure(device, backend, threads, delegate,
                                               "the device reported no fingerprint"))
            continue
        ceiling = Ceiling(device=device, fingerprint_id=fingerprint["id"], backend=backend, threads=threads,
                          delegate=delegate, runtime_version=first.get("runtime_version"),
                          peak_macs_per_s=rates["compute"], stream_bytes_per_s=rates["stream"],
                          cache_bytes_per_s=rates.get("cache"), sources=sources, measured_at=now,
                          llc_bytes=(llc_bytes or {}).get(device), int8_peak_macs_per_s=rates.get("compute_int8"))
        ceilings.append((ceiling, fingerprint))
    return ceilings, failures


# ---------------------------------------------------------------- running a calibration
@dataclass(frozen=True)
class Target:
    """One device x backend x threads x delegate to calibrate."""

    device_name: str
    backend: str
    threads: int
    delegate: str | None
    device: Any = field(compare=False, repr=False)  # harness.devices.Device (not hashable itself)

    @property
    def label(self) -> str:
        tag = f"{self.backend}-{self.delegate}" if self.delegate else self.backend
        return f"{self.device_name}/{tag}/t{self.threads}"


@dataclass
class CalibrationOutcome:
    ceilings: list[Ceiling]
    failures: list[CalibrationFailure]
    run_path: Path | None  # the calibration run (under calibrations/runs/), if one was made
    reused: list[Ceiling] = field(default_factory=list)  # already stored for the fingerprint, not measured again
    seconds: float = 0.0


def targets(devices: list[Any], backends: list[str] | None, threads: list[int] | None) -> list[Target]:
    """What a run with these devices, backends and threads would measure, each once."""
    from harness import plan

    jobs = plan.make_jobs(devices, plan.Selection([COMPUTE_WORKLOAD], backends, threads))
    by_name = {d.name: d for d in devices}
    return list(dict.fromkeys(Target(j.device, j.backend, j.threads, j.delegate, by_name[j.device]) for j in jobs))


def known_fingerprint(device: Any, ceilings: Mapping[CeilingKey, Ceiling]) -> str | None:
    """The device's fingerprint id without running anything on it, or None when it cannot be known yet.

    A local device is this machine: its fingerprint is computed here, by the function the
    runner itself calls.  A remote device is taken to be the one it was when last calibrated
    under its name; if it has changed since (new board, OS update), its records carry the
    new fingerprint and the run says that no ceiling matches it.
    """
    if device.transport == "local":
        from backends.runner import fingerprint
        from harness.records import fingerprint_id

        return fingerprint_id(fingerprint(device.sysfs_root))
    named = [c for c in ceilings.values() if c.device == device.name]
    return max(named, key=lambda c: c.measured_at).fingerprint_id if named else None


def uncalibrated(wanted: list[Target], ceilings: Mapping[CeilingKey, Ceiling]) -> tuple[list[Target], list[Ceiling]]:
    """(targets with no stored ceiling for their device's fingerprint, the ceilings the others have)."""
    missing, found = [], []
    fingerprints: dict[str, str | None] = {}
    for target in wanted:
        if target.device.name not in fingerprints:
            fingerprints[target.device.name] = known_fingerprint(target.device, ceilings)
        fingerprint_id = fingerprints[target.device.name]
        ceiling = ceilings.get((fingerprint_id, target.backend, target.threads, target.delegate)) \
            if fingerprint_id else None
        if ceiling is None or _lacks_int8(ceiling):
            missing.append(target)
        else:
            found.append(ceiling)
    return missing, found


def _lacks_int8(ceiling: Ceiling) -> bool:
    """A ceiling stored before int8 calibration existed, for a backend that runs int8: measure it again."""
    from harness.registry import BACKENDS

    backend = BACKENDS.get(ceiling.backend)
    return bool(backend and "int8" in backend.precisions and not ceiling.int8_peak_macs_per_s
                and "compute_int8" not in ceiling.sources)


def calibration_policy(max_seconds: float = 1.0) -> Any:
    """Short timing: each kernel's median settles within a few dozen calls (the conv takes ~10-50 ms here)."""
    from harness import plan

    return plan.timing_policy(min(0.3, max_seconds), max_seconds, 5, 2, 0.02, 0.0)


def run_calibration(wanted: list[Target], results_dir: Path, *, recalibrate: bool = False, repeats: int = 1,
                    max_seconds: float = 1.0, on_event: Any = None) -> CalibrationOutcome:
    """Measure the kernels for every target without a stored ceiling (all of them with ``recalibrate``)."""
    import time

    from harness import plan
    from harness.run import execute

    started = time.monotonic()
    stored = load_ceilings(results_dir)
    missing, reused = (list(wanted), []) if recalibrate else uncalibrated(wanted, stored)
    if not missing:
        return CalibrationOutcome([], [], None, reused)
    devices = list({t.device.name: t.device for t in missing}.values())
    keys = {(t.device.name, t.backend, t.threads, t.delegate) for t in missing}
    # One cross product covers every target (each device's own lists are overridden); keep the targets.
    selection = plan.Selection(list(WORKLOADS), sorted({t.backend for t in missing}),
                               sorted({t.threads for t in missing}), repeats)
    jobs = [job for job in plan.make_jobs(devices, selection)
            if (job.device, job.backend, job.threads, job.delegate) in keys]
    request = plan.RunRequest(devices, jobs, calibration_policy(max_seconds),
                              calibrations_dir(results_dir) / RUNS_DIR, list(WORKLOADS), "calibration",
                              repeats=repeats)
    request.results_dir.mkdir(parents=True, exist_ok=True)
    outcome = execute(request, on_event or (lambda event: None))
    llc = {d.name: _local_llc_bytes(d.sysfs_root) for d in devices if d.transport == "local"}
    measured, failures = ceilings_from_records(outcome.records, llc, outcome.run_id)
    for ceiling, fingerprint in measured:
        save_ceiling(results_dir, ceiling, fingerprint)
    return CalibrationOutcome([c for c, _ in measured], failures, outcome.path, reused,
                              time.monotonic() - started)
