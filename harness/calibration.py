"""Measured rooflines: each device x backend x threads' own compute and memory ceilings.

``harness calibrate`` runs the calibration workloads (``harness.workloads.calib``) as an
ordinary run, so every runtime and transport measures them exactly as it measures any job
(Android phones through ``benchmark_model``), and keeps per (device fingerprint, backend,
threads, delegate) a ``Ceiling``:

* ``peak_macs_per_s``: MAC/s of a large compute-bound conv, run by that runtime;
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CALIBRATIONS_DIR = "calibrations"
RUNS_DIR = "runs"  # the calibration runs, under CALIBRATIONS_DIR
SCHEMA_VERSION = 1

# The kernels (see harness/workloads/calib.py). 462 MMACs of 3x3 conv; a 4096 x 4096 fp32
# matrix-vector product streams 64 MiB, a 1024 x 1024 one 4 MiB.
COMPUTE_WORKLOAD = "calib-conv-C256-k3-x28"
STREAM_WORKLOAD = "calib-gemv-N4096"
CACHE_WORKLOAD = "calib-gemv-N1024"
WORKLOADS = (COMPUTE_WORKLOAD, STREAM_WORKLOAD, CACHE_WORKLOAD)

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

    @property
    def key(self) -> CeilingKey:
        return (self.fingerprint_id, self.backend, self.threads, self.delegate)

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
    ceiling stored without a delegate matches it too).
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
            return ceiling
    return None


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
                          llc_bytes: Mapping[str, int | None] | None = None
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
        roles = (("compute", COMPUTE_WORKLOAD, "macs"), ("stream", STREAM_WORKLOAD, "bytes_fp32"),
                 ("cache", CACHE_WORKLOAD, "bytes_fp32"))
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
                             "provider": record.get("provider"), "run_id": record.get("run_id")}
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
                          llc_bytes=(llc_bytes or {}).get(device))
        ceilings.append((ceiling, fingerprint))
    return ceilings, failures
