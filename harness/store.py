"""Results store: ``results/<run-id>/run.json`` + ``measurements.jsonl``.

``run.json`` holds provenance and the run's state (running, complete, interrupted,
failed); it is rewritten atomically (write to a temporary file, then rename).
``measurements.jsonl`` gets one JSON line per job, appended and flushed as each job
finishes, so an interrupted run keeps everything measured so far.

Writing survives a full disk: a record that does not fit is cut back off the file (no
torn line), later records are refused with ``DiskFull``, and a small reserve file made
at the start is given back so that ``run.json`` can still say the run failed and why.

Reading survives a damaged store: a run whose ``run.json`` is unreadable is skipped
with a one-line warning naming the file (by ``list_runs``, so unrelated commands go on),
as is a record that is not an object or has a field of the wrong type; a run directory
without ``run.json`` is reported, and every warning says what was kept.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import math
import os
import secrets
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.records import SCHEMA_VERSION, migrate, probe_time

RUN_FILE = "run.json"
MEASUREMENTS_FILE = "measurements.jsonl"
RESERVE_FILE = ".reserve"
RESERVE_BYTES = 256 * 1024  # far more than a final run.json needs
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFull(OSError):
    """Results could not be written: no space left (or the file size limit reached)."""


class DamagedRun(UserError):
    """A run whose run.json cannot be read; the message names the file and says why."""


_warned: set[str] = set()
_skipped: dict[Path, list[tuple[str, str]]] = {}  # run -> (file:line, why) of the records read_run skipped


def warn(message: str) -> None:
    """A one-line warning on stderr, once per message per command."""
    if message in _warned:
        return
    _warned.add(message)
    print(f"warning: {message}", file=sys.stderr, flush=True)


def reset_warnings() -> None:
    _warned.clear()
    _skipped.clear()


def skipped_records(path: Path) -> list[tuple[str, str]]:
    """(file:line, why) of each damaged record the last read_run of this run skipped."""
    return list(_skipped.get(path.resolve(), []))


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def default_results_dir() -> Path:
    return Path(os.environ.get("CONVBENCH_RESULTS", "results"))


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunWriter:
    """Writes one run as it happens."""

    def __init__(self, results_dir: Path, provenance: dict[str, Any], run_id: str | None = None) -> None:
        self.run_id = run_id or new_run_id()
        self.path = results_dir / self.run_id
        self.path.mkdir(parents=True, exist_ok=False)
        self.info = dict(provenance, schema_version=SCHEMA_VERSION, run_id=self.run_id, status="running",
                         started_at=dt.datetime.now(dt.UTC).isoformat(), counts={})
        self.disk_full: str | None = None  # why records are refused, once the disk filled
        self._reserve = self.path / RESERVE_FILE
        try:
            with self._reserve.open("wb") as handle:
                handle.write(b"\0" * RESERVE_BYTES)
            write_json_atomic(self.path / RUN_FILE, self.info)
            self._fd: int | None = os.open(self.path / MEASUREMENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                           0o644)
        except OSError as exc:
            self._reserve.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.path.rmdir()  # nothing of this run was written
            if is_disk_full(exc):
                raise DiskFull(exc.errno, f"disk full: cannot write {exc.filename or self.path}: "
                                          f"{exc.strerror}") from None
            raise

    @property
    def closed(self) -> bool:
        return self._fd is None

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as one complete line, synced; raises DiskFull when it does not fit."""
        if self._fd is None:
            raise ValueError(f"run {self.run_id} is finished; no more records")
        if self.disk_full:
            raise DiskFull(errno.ENOSPC, self.disk_full)
        record = dict(record, run_id=self.run_id)
        line = (json.dumps(record, default=str) + "\n").encode()
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            # Cut a partly written line back off: the file keeps whole records only.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            if not is_disk_full(exc):
                raise
            kept = sum(self.info["counts"].values())
            self.disk_full = (f"disk full: cannot write {self.path / MEASUREMENTS_FILE}: {exc.strerror} "
                              f"({kept} record(s) written before are kept)")
            raise DiskFull(exc.errno, self.disk_full) from None
        status = record.get("status", "unknown")
        self.info["counts"][status] = self.info["counts"].get(status, 0) + 1

    def update(self, **fields: Any) -> None:
        self.info.update(fields)
        write_json_atomic(self.path / RUN_FILE, self.info)

    def finish(self, status: str, **fields: Any) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        # Give back the reserve first: on a full disk, it is the room this last run.json needs.
        self._reserve.unlink(missing_ok=True)
        self.update(status=status, finished_at=dt.datetime.now(dt.UTC).isoformat(), **fields)


def list_runs(results_dir: Path | None = None) -> list[Path]:
    """Readable run directories, oldest first.

    Run ids start with a UTC timestamp to the second; runs started within the same second
    are ordered by their run.json's ``started_at``, not by the random suffix of their ids.
    A run whose run.json cannot be read, and a run directory without one, are left out
    with a one-line warning, so one damaged run does not break commands about the others.
    """
    root = results_dir or default_results_dir()
    if not root.is_dir():
        return []
    runs: list[tuple[str, str, Path]] = []
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        if not (path / RUN_FILE).is_file():
            measurements = path / MEASUREMENTS_FILE
            if measurements.is_file():
                count = _count_lines(measurements)
                warn(f"{path / RUN_FILE}: missing; run skipped (its {measurements.name} holds {count} record(s), "
                     "not used without the run's provenance)")
            continue
        try:
            info = read_info(path)
        except DamagedRun as exc:
            warn(f"{exc}; run skipped")
            continue
        runs.append((path.name.split("-")[0], str(info.get("started_at") or ""), path))
    return [path for *_, path in sorted(runs)]


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return 0


def resolve_run(ref: str, results_dir: Path | None = None) -> Path:
    """A run directory from a path, a run id, a unique id prefix, or ``latest``."""
    root = results_dir or default_results_dir()
    candidate = Path(ref)
    if (candidate / RUN_FILE).is_file():
        read_info(candidate)  # a damaged run asked for by name: a one-line error
        return candidate
    if ref != "latest" and (root / ref / RUN_FILE).is_file():
        read_info(root / ref)
    runs = list_runs(root)
    if ref == "latest":
        if not runs:
            raise UserError(f"no runs in {root}/; run `harness run` first")
        return runs[-1]
    matches = [p for p in runs if p.name.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(p.name for p in runs[-5:]) or "none"
    if not matches:
        for where in (candidate, root / ref):
            if (where / MEASUREMENTS_FILE).is_file() and not (where / RUN_FILE).exists():
                raise DamagedRun(f"{where / RUN_FILE}: missing; without it {where} is not a usable run "
                                 f"({_count_lines(where / MEASUREMENTS_FILE)} record(s) in {MEASUREMENTS_FILE})")
        raise UserError(f"no run {ref!r} in {root}/ (latest runs: {known}; or give a path)")
    raise UserError(f"run {ref!r} is ambiguous: {', '.join(p.name for p in matches)}")


# Types of the run.json fields commands rely on; a field of another type is dropped with a warning.
_INFO_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "status": (str,), "started_at": (str,), "finished_at": (str,), "suite": (str, type(None)),
    "workloads": (list,), "devices": (list,), "counts": (dict,), "git": (dict,), "host": (dict,),
    "policy": (dict,), "command": (list,), "skipped": (list,), "reason": (str,),
}
_NUMBER = (int, float)
# Types of record fields; a record with a field of another type is skipped with a warning.
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "job_id": (str,), "workload_id": (str,), "device": (str,), "transport": (str, type(None)),
    "backend": (str,), "threads": (int,), "delegate": (str, type(None)), "status": (str,),
    "error": (str, type(None)), "runtime": (str, type(None)), "runtime_version": (str, type(None)),
    "samples_s": (list, type(None)), "latency": (dict, type(None)), "workload": (dict, type(None)),
    "memory": (dict, type(None)), "energy": (dict, type(None)), "output_check": (dict, type(None)),
    "device_fingerprint": (dict, type(None)), "problems": (list, type(None)), "warnings": (list, type(None)),
    "other_cpu_cores": (*_NUMBER, type(None)), "block_size": (int, type(None)), "worker": (str, type(None)),
}
_REQUIRED = ("workload_id", "status")
# Numbers inside the nested fields that analysis computes with.
_NESTED_NUMBERS = {
    "latency": ("median", "mean", "min", "max", "std", "ci_low", "ci_high", "q1", "q3", "n"),
    "workload": ("macs", "params", "bytes_fp32", "bytes_int8", "intensity"),
    "memory": ("peak_rss_bytes", "rss_increase_bytes"),
    "energy": ("joules_per_inference", "joules", "window_s", "idle_watts"),
    "device_fingerprint": ("cores", "memory_bytes"),
}


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def record_problem(record: Any) -> str | None:
    """Why a stored record cannot be used (None when it can)."""
    if not isinstance(record, dict):
        return f"not a record but {_type_name(record)} {json.dumps(record)[:40]}"
    for key in _REQUIRED:
        if key not in record:
            return f"no {key!r}"
    for key, types in _RECORD_TYPES.items():
        if key in record and not _is(record[key], types):
            return f"field {key!r} is {_type_name(record[key])} {json.dumps(record[key], default=str)[:30]}, " \
                   f"expected {' or '.join(_type_name(None) if t is type(None) else t.__name__ for t in types)}"
    samples = record.get("samples_s") or []
    if not all(_is(s, _NUMBER) and math.isfinite(s) for s in samples):
        return "field 'samples_s' holds something other than numbers"
    for key, fields in _NESTED_NUMBERS.items():
        nested = record.get(key) or {}
        for name in fields:
            if name in nested and nested[name] is not None and not _is(nested[name], _NUMBER):
                return f"field '{key}.{name}' is {_type_name(nested[name])}, expected a number"
    return None


def read_info(path: Path) -> dict[str, Any]:
    """A run's run.json as a dict; DamagedRun (naming the file) when it cannot be read."""
    file = path / RUN_FILE
    try:
        info = json.loads(file.read_text())
    except FileNotFoundError:
        raise DamagedRun(f"{file}: missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedRun(f"{file}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    except json.JSONDecodeError as exc:
        raise DamagedRun(f"{file}: damaged, not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})") \
            from None
    if not isinstance(info, dict):
        raise DamagedRun(f"{file}: damaged, a JSON {_type_name(info)} instead of an object")
    schema = info.get("schema_version", 1)
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise DamagedRun(f"{file}: written with record schema {schema}, newer than this convbench reads "
                         f"({SCHEMA_VERSION}); upgrade convbench to read this run")
    bad = [key for key, types in _INFO_TYPES.items() if key in info and not _is(info[key], types)]
    if bad:
        warn(f"{file}: ignored field(s) of the wrong type: "
             + ", ".join(f"{k} ({_type_name(info[k])})" for k in bad))
        info = {k: v for k, v in info.items() if k not in bad}
    return info


def read_run(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Provenance and usable records of one run.

    DamagedRun when run.json cannot be read.  Records that cannot be used (a torn last
    line, a line that is not JSON, not an object, or has a field of the wrong type) are
    skipped, with one warning per file saying which lines and what was kept.
    """
    info = read_info(path)
    records: list[dict[str, Any]] = []
    measurements = path / MEASUREMENTS_FILE
    if not measurements.exists():
        return info, records
    try:
        text = measurements.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        warn(f"{measurements}: cannot be read ({exc.strerror}); the run's records are not used")
        return info, records
    lines = text.splitlines()
    skipped: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):
                if info.get("status") != "running":
                    # A crash mid-write leaves the run "running"; a finished run should have no torn line.
                    skipped.append((number, f"torn: cut off mid-write although the run is {info.get('status')}"))
            else:
                skipped.append((number, f"not JSON: {exc.msg}"))
            continue
        problem = record_problem(record)
        if problem:
            skipped.append((number, problem))
            continue
        records.append(migrate(record, info.get("schema_version", 1)))
    _skipped[path.resolve()] = [(f"{measurements}:{number}", why) for number, why in skipped]
    if skipped:
        total = len(records) + len(skipped)
        listed = "; ".join(f"line {number} ({why})" for number, why in skipped[:3])
        warn(f"{measurements}: skipped {listed}{' ...' if len(skipped) > 3 else ''}; "
             f"kept {len(records)} of {total} record(s)")
    return info, records


def delegated_ops(delegation: Any) -> tuple[int | None, int | None]:
    """(ops the delegate runs, ops in the graph) of a record's ``delegation``, whichever side counted them:
    a phone's delegate report (``delegated_nodes``/``total_nodes``) or ExecuTorch's export
    (``delegated``/``not_delegated``)."""
    if not isinstance(delegation, dict):
        return None, None
    if delegation.get("delegated_nodes") is not None:
        return delegation["delegated_nodes"], delegation.get("total_nodes")
    if delegation.get("delegated") is not None:
        return delegation["delegated"], delegation["delegated"] + (delegation.get("not_delegated") or 0)
    return None, None


def load_frame(runs: Iterable[Path]):
    """A tidy pandas DataFrame, one row per measurement, over one or many runs.

    Latency summary fields become ``latency_<field>`` columns (seconds); workload costs
    become ``macs``, ``params``, ...; raw samples stay in ``samples_s`` (a list per row).
    """
    import pandas as pd

    rows = []
    for path in runs:
        info, records = read_run(path)
        for record in records:
            row = {k: v for k, v in record.items() if not isinstance(v, dict)}
            for key in ("latency", "workload", "memory", "output_check"):
                for field, value in (record.get(key) or {}).items():
                    row[f"{key}_{field}" if key != "workload" else field] = value
            energy = record.get("energy") or {}
            row["energy_status"] = energy.get("status")
            row["energy_j"] = energy.get("joules_per_inference")
            row["energy_sensor"] = energy.get("sensor")
            fingerprint = record.get("device_fingerprint") or {}
            row["device_machine"] = fingerprint.get("machine")
            row["device_cpu"] = fingerprint.get("cpu_model")
            row["device_emulated"] = fingerprint.get("emulated")
            row["device_fingerprint_id"] = fingerprint.get("id")
            row["probe_s"] = probe_time(record)
            row["delegated_ops"], row["total_ops"] = delegated_ops(record.get("delegation"))
            row["run_started_at"] = info.get("started_at")
            rows.append(row)
    return pd.DataFrame(rows)
