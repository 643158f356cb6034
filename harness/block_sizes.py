"""Block sizes fixed per (device, backend, threads, workload), so runs summarise the same statistic.

Calls faster than ``block_min_ns`` are timed in blocks, and each sample is the per-call mean of
one block: the median of such samples moves from the median of single calls (block of 1) toward
their mean as blocks grow. Two runs of a fast layer are comparable only with the same block size,
so the first run in a results store chooses it (from the warm-up) and later runs into the same
store reuse it. ``results/block_sizes.json`` holds the choices; delete it to choose afresh.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from backends.base import Job

FILE = "block_sizes.json"


def _key(device: str, backend: str, threads: int, workload_id: str) -> str:
    return f"{device}|{backend}|t{threads}|{workload_id}"


def load(results_dir: Path) -> dict[str, int]:
    """The stored choices; an unreadable file counts as none (the run then chooses afresh)."""
    try:
        data = json.loads((results_dir / FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int) and v >= 1}


def fix(jobs: Iterable[Job], known: dict[str, int]) -> list[Job]:
    """Jobs with the stored block size in their options, where one is known."""
    out = []
    for job in jobs:
        block = known.get(_key(job.device, job.backend, job.threads, job.workload_id))
        out.append(replace(job, options={**job.options, "block_size": block}) if block else job)
    return out


def remember(results_dir: Path, records: Iterable[dict[str, Any]]) -> None:
    """Store the block size of each new successful measurement (existing choices are kept)."""
    from harness.store import write_json_atomic

    known = load(results_dir)
    added = False
    for record in records:
        block = record.get("block_size")
        if record.get("status") != "ok" or not isinstance(block, int):
            continue
        key = _key(record["device"], record["backend"], int(record["threads"]), record["workload_id"])
        if key not in known:
            known[key] = block
            added = True
    if added:
        write_json_atomic(results_dir / FILE, dict(sorted(known.items())))
