"""Results store: ``results/<run-id>/run.json`` + ``measurements.jsonl``.

``run.json`` holds provenance and the run's state (running, complete, interrupted,
failed); it is rewritten atomically (write to a temporary file, then rename).
``measurements.jsonl`` gets one JSON line per job, appended and flushed as each job
finishes, so an interrupted run keeps everything measured so far.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.errors import UserError

RUN_FILE = "run.json"
MEASUREMENTS_FILE = "measurements.jsonl"


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
        self.info = dict(provenance, run_id=self.run_id, status="running",
                         started_at=dt.datetime.now(dt.UTC).isoformat(), counts={})
        write_json_atomic(self.path / RUN_FILE, self.info)
        self._measurements = (self.path / MEASUREMENTS_FILE).open("a")

    def append(self, record: dict[str, Any]) -> None:
        record = dict(record, run_id=self.run_id)
        # One write of one complete line, flushed and synced: a crash loses at most this record.
        self._measurements.write(json.dumps(record, default=str) + "\n")
        self._measurements.flush()
        os.fsync(self._measurements.fileno())
        status = record.get("status", "unknown")
        self.info["counts"][status] = self.info["counts"].get(status, 0) + 1

    def update(self, **fields: Any) -> None:
        self.info.update(fields)
        write_json_atomic(self.path / RUN_FILE, self.info)

    def finish(self, status: str, **fields: Any) -> None:
        self._measurements.close()
        self.update(status=status, finished_at=dt.datetime.now(dt.UTC).isoformat(), **fields)


def list_runs(results_dir: Path | None = None) -> list[Path]:
    """Run directories, oldest first (run ids start with a UTC timestamp)."""
    root = results_dir or default_results_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / RUN_FILE).is_file())


def resolve_run(ref: str, results_dir: Path | None = None) -> Path:
    """A run directory from a path, a run id, a unique id prefix, or ``latest``."""
    root = results_dir or default_results_dir()
    candidate = Path(ref)
    if (candidate / RUN_FILE).is_file():
        return candidate
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
        raise UserError(f"no run {ref!r} in {root}/ (latest runs: {known}; or give a path)")
    raise UserError(f"run {ref!r} is ambiguous: {', '.join(p.name for p in matches)}")


def read_run(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Provenance and records of one run; a torn last line (crash mid-write) is skipped."""
    info = json.loads((path / RUN_FILE).read_text())
    records: list[dict[str, Any]] = []
    measurements = path / MEASUREMENTS_FILE
    if measurements.exists():
        lines = measurements.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if number == len(lines):
                    continue
                raise UserError(f"{measurements}:{number}: corrupt record ({exc})") from exc
    return info, records


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
            row["run_started_at"] = info.get("started_at")
            rows.append(row)
    return pd.DataFrame(rows)
