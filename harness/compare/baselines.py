"""Where ``harness compare`` finds its baseline: ``baseline.json`` (set/get) or the automatic choice."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from harness.errors import UserError

BASELINE_FILE = "baseline.json"


def baseline_file(results_dir: Path) -> Path:
    return results_dir / BASELINE_FILE


def set_baseline(run: Path, results_dir: Path) -> dict[str, Any]:
    from harness.store import read_run, write_json_atomic

    info, records = read_run(run)
    if not any(r.get("status") == "ok" for r in records):
        raise UserError(f"run {run.name} has no valid measurement; it cannot be a baseline")
    entry = {"run_id": info.get("run_id", run.name), "path": str(run.resolve()),
             "set_at": dt.datetime.now(dt.UTC).isoformat(), "status": info.get("status")}
    write_json_atomic(baseline_file(results_dir), entry)
    return entry


def stored_baseline(results_dir: Path) -> Path | None:
    path = baseline_file(results_dir)
    if not path.is_file():
        return None
    entry = json.loads(path.read_text())
    for candidate in (results_dir / str(entry.get("run_id")), Path(str(entry.get("path")))):
        if (candidate / "run.json").is_file():
            return candidate
    raise UserError(f"{path}: the baseline run {entry.get('run_id')} no longer exists; "
                    "set another with `harness baseline set RUN`")


def _signature(path: Path) -> tuple[Any, frozenset]:
    """(suite or workload set, requested device names) of one run.

    Requested, not measured: a device that was down one night must not change which runs
    count as comparable (its jobs show up as unmatched instead).
    """
    from harness.store import read_run

    info, records = read_run(path)
    suite = info.get("suite") or frozenset(info.get("workloads") or {r.get("workload_id") for r in records})
    devices = frozenset(d.get("name") for d in info.get("devices") or []) or \
        frozenset(r.get("device") for r in records)
    return suite, devices


def auto_baseline(current: Path, results_dir: Path) -> Path:
    """The newest complete run before ``current`` with the same devices and suite."""
    from harness.store import list_runs, read_run

    suite, devices = _signature(current)
    earlier = [p for p in list_runs(results_dir) if p.name < current.name and p.resolve() != current.resolve()]
    for candidate in reversed(earlier):
        info, _ = read_run(candidate)
        if info.get("status") != "complete":
            continue
        if _signature(candidate) == (suite, devices):
            return candidate
    what = f"suite {suite}" if isinstance(suite, str) else f"the same {len(suite)} workloads"
    raise UserError(f"no earlier complete run in {results_dir}/ with {what} on the same devices "
                    f"({', '.join(sorted(map(str, devices))) or 'none'}); "
                    "run it once more, or name a baseline (`harness baseline set RUN`)")


def resolve_baseline(ref: str | None, current: Path, results_dir: Path) -> tuple[Path, str]:
    """The baseline run for ``ref`` (auto, stored, a run reference; None: stored, else auto)."""
    from harness.store import resolve_run

    if ref is None:
        stored = stored_baseline(results_dir)
        if stored is not None and stored.resolve() != current.resolve():
            return stored, f"set with `harness baseline set` ({baseline_file(results_dir)})"
        return auto_baseline(current, results_dir), "auto: newest earlier run with the same devices and suite"
    if ref == "auto":
        return auto_baseline(current, results_dir), "auto: newest earlier run with the same devices and suite"
    if ref == "stored":
        stored = stored_baseline(results_dir)
        if stored is None:
            raise UserError(f"no baseline set in {results_dir}/; use `harness baseline set RUN` or --baseline auto")
        return stored, "set with `harness baseline set`"
    return resolve_run(ref, results_dir), "given"
