"""``harness export``: a run as pytest-benchmark JSON or as a flat CSV.

The pytest-benchmark file follows the layout pytest-benchmark writes with
``--benchmark-json`` (machine_info, commit_info, benchmarks[].stats, datetime, version),
and its statistics use pytest-benchmark's own definitions (sample stddev, its quartile
method, Tukey fences), so ``pytest-benchmark compare`` and dashboards built on it read
convbench results like their own.  Only valid measurements are exported, as
pytest-benchmark leaves out benchmarks that errored.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from bisect import bisect_left, bisect_right
from pathlib import Path
from typing import Any

FORMATS = ("pytest-benchmark", "csv")
# The pytest-benchmark release whose JSON layout this follows.
PYTEST_BENCHMARK_VERSION = "5.1.0"


def _quartiles(data: list[float]) -> tuple[float, float]:
    """pytest-benchmark's q1 and q3 (Wikipedia's methods 2 and 3)."""
    rounds = len(data)
    if rounds == 1:
        return data[0], data[0]
    if rounds % 2:
        n, q = rounds // 4, rounds % 4
        if q == 1:
            return 0.25 * data[n - 1] + 0.75 * data[n], 0.75 * data[3 * n] + 0.25 * data[3 * n + 1]
        return 0.75 * data[n] + 0.25 * data[n + 1], 0.25 * data[3 * n + 1] + 0.75 * data[3 * n + 2]
    return statistics.median(data[: rounds // 2]), statistics.median(data[rounds // 2:])


def benchmark_stats(samples: list[float]) -> dict[str, Any]:
    """pytest-benchmark's ``stats`` of raw per-iteration times in seconds."""
    data = sorted(samples)
    rounds = len(data)
    mean = statistics.fmean(data)
    stddev = statistics.stdev(data) if rounds > 1 else 0.0
    q1, q3 = _quartiles(data)
    iqr = q3 - q1
    total = math.fsum(data)
    low_fence, high_fence = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    iqr_outliers = bisect_left(data, low_fence) + (rounds - bisect_right(data, high_fence))
    stddev_outliers = bisect_left(data, mean - stddev) + (rounds - bisect_right(data, mean + stddev))
    if rounds == 1:
        ld15iqr = hd15iqr = data[0]
    else:
        ld15iqr = data[bisect_left(data, low_fence)]
        hd15iqr = data[bisect_right(data, high_fence) - 1]
    return {"min": data[0], "max": data[-1], "mean": mean, "stddev": stddev, "rounds": rounds,
            "median": statistics.median(data), "iqr": iqr, "q1": q1, "q3": q3, "iqr_outliers": iqr_outliers,
            "stddev_outliers": stddev_outliers, "outliers": f"{stddev_outliers};{iqr_outliers}",
            "ld15iqr": ld15iqr, "hd15iqr": hd15iqr, "ops": rounds / total if total else 0, "total": total}


def _summary_stats(latency: dict[str, Any]) -> dict[str, Any]:
    """The same fields from a latency summary, for records without raw samples."""
    rounds = int(latency.get("n") or 0)
    mean = float(latency.get("mean") or latency["median"])
    total = mean * rounds
    q1, q3 = latency.get("q1", latency["median"]), latency.get("q3", latency["median"])
    return {"min": latency.get("min", latency["median"]), "max": latency.get("max", latency["median"]),
            "mean": mean, "stddev": latency.get("std", 0.0), "rounds": rounds, "median": latency["median"],
            "iqr": q3 - q1, "q1": q1, "q3": q3, "iqr_outliers": latency.get("outliers", 0), "stddev_outliers": 0,
            "outliers": f"0;{latency.get('outliers', 0)}", "ld15iqr": latency.get("min", q1),
            "hd15iqr": latency.get("max", q3), "ops": rounds / total if total else 0, "total": total}


def machine_info(info: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    host = info.get("host") or {}
    devices = {}
    for record in records:
        fingerprint = record.get("device_fingerprint") or {}
        if fingerprint and record.get("device") not in devices:
            devices[record.get("device")] = fingerprint
    # The measured device when there is one, else the host that ran the harness.
    main = next(iter(devices.values())) if len(devices) == 1 else host
    return {
        "node": main.get("hostname") or "", "processor": main.get("cpu_model") or "",
        "machine": main.get("machine") or "", "python_compiler": "",
        "python_implementation": host.get("python_implementation", "CPython"),
        "python_implementation_version": main.get("python") or host.get("python") or "",
        "python_version": main.get("python") or host.get("python") or "", "python_build": ["", ""],
        "release": main.get("kernel") or "", "system": "Linux" if "linux" in str(main.get("os", "")).lower()
        or main.get("kernel") else "",
        "cpu": {"brand_raw": main.get("cpu_model") or "", "arch": main.get("machine") or "",
                "count": main.get("cores")},
        "convbench_devices": devices,
    }


def commit_info(info: dict[str, Any]) -> dict[str, Any]:
    git = info.get("git") or {}
    return {"id": git.get("commit") or "unknown", "time": None, "author_time": None,
            "dirty": bool(git.get("dirty")), "project": "convbench", "branch": git.get("branch") or "(unknown)"}


def to_pytest_benchmark(run: Path, with_data: bool = False) -> tuple[dict[str, Any], int]:
    """(document, number of invalid measurements left out)."""
    from harness.store import read_run

    info, records = read_run(run)
    policy = info.get("policy") or {}
    benchmarks, skipped = [], 0
    for record in records:
        samples = record.get("samples_s") or []
        latency = record.get("latency") or {}
        if record.get("status") != "ok" or not (samples or latency.get("median")):
            skipped += 1
            continue
        where = f"{record.get('device')}-{record.get('backend')}-t{record.get('threads')}"
        if int(record.get("repeats") or 1) > 1:  # one benchmark per invocation: names must stay unique
            where += f"-invocation{int(record.get('repeat') or 0) + 1}"
        stats = benchmark_stats(samples) if samples else _summary_stats(latency)
        if with_data and samples:
            stats["data"] = list(samples)
        # Each sample is the per-call mean of a block of calls (pytest-benchmark's "iterations").
        stats["iterations"] = int(record.get("block_size") or 1)
        workload = record.get("workload") or {}
        benchmarks.append({
            "group": f"{record.get('device')}/{record.get('backend')}/t{record.get('threads')}",
            "name": f"{record['workload_id']}[{where}]",
            "fullname": f"convbench::{record.get('job_id') or record['workload_id']}",
            "params": {"device": record.get("device"), "backend": record.get("backend"),
                       "threads": record.get("threads"), "delegate": record.get("delegate"),
                       "invocation": int(record.get("repeat") or 0) + 1},
            "param": where,
            "extra_info": {
                "workload_id": record["workload_id"], "kind": workload.get("kind"), "macs": workload.get("macs"),
                "gmacs_per_s": workload["macs"] / stats["median"] / 1e9 if workload.get("macs") else None,
                "runtime": record.get("runtime"), "runtime_version": record.get("runtime_version"),
                "device_fingerprint": (record.get("device_fingerprint") or {}).get("id"),
                "output_check": (record.get("output_check") or {}).get("status"),
                "energy_j_per_inference": (record.get("energy") or {}).get("joules_per_inference"),
                "peak_rss_bytes": (record.get("memory") or {}).get("peak_rss_bytes"),
                "run_id": info.get("run_id"),
            },
            "options": {"disable_gc": bool(record.get("gc_disabled")),
                        "timer": record.get("timer") or "perf_counter_ns",
                        "min_rounds": policy.get("min_runs"), "max_time": policy.get("max_seconds"),
                        "min_time": policy.get("min_seconds"), "warmup": bool(policy.get("warmup_runs", 1))},
            "stats": stats,
        })
    document = {"machine_info": machine_info(info, records), "commit_info": commit_info(info),
                "benchmarks": benchmarks, "datetime": info.get("started_at"), "version": PYTEST_BENCHMARK_VERSION}
    return document, skipped


CSV_COLUMNS = ["run_id", "job_id", "workload_id", "kind", "device", "device_fingerprint_id", "backend", "runtime",
               "runtime_version", "delegate", "threads", "status", "macs", "params", "intensity",
               "latency_n", "latency_median", "latency_mean", "latency_std", "latency_min", "latency_max",
               "latency_q1", "latency_q3", "latency_ci_low", "latency_ci_high", "latency_cv", "gmacs_per_s",
               "memory_peak_rss_bytes", "energy_j", "energy_sensor", "output_check_status", "error"]


def to_csv(run: Path) -> str:
    """One row per measurement (all statuses), times in seconds."""
    from harness.store import load_frame

    frame = load_frame([run])
    if "macs" in frame and "latency_median" in frame:
        frame["gmacs_per_s"] = frame["macs"] / frame["latency_median"] / 1e9
    columns = [c for c in CSV_COLUMNS if c in frame]
    buffer = io.StringIO()
    frame.to_csv(buffer, columns=columns, index=False, quoting=csv.QUOTE_MINIMAL)
    return buffer.getvalue()
