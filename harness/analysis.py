"""Measured speedups against MobileNet's theoretical ratio, and per-workload views.

Input is the tidy frame of ``harness.store.load_frame``.  Invalid measurements
(output mismatch, delegate fallback, errors) never enter a figure or a ratio; they
are listed by ``excluded``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from harness.measure.stats import bootstrap_ratio_ci

GROUP = ["device", "backend", "threads", "delegate"]


def _valid(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty or "status" not in frame:
        return frame.iloc[0:0]
    return frame[frame["status"] == "ok"].copy()


def excluded(frame: pd.DataFrame) -> pd.DataFrame:
    """Measurements left out of the analysis, with why."""
    if frame.empty:
        return frame
    bad = frame[frame["status"] != "ok"].copy()
    reasons = []
    for _, row in bad.iterrows():
        problems = row.get("problems")
        text = row.get("error") if isinstance(row.get("error"), str) else None
        if not text and isinstance(problems, list):
            text = "; ".join(problems)
        reasons.append(text or row.get("status"))
    bad["reason"] = reasons
    columns = [c for c in ["run_id", "job_id", "device", "backend", "threads", "workload_id", "status", "reason"]
               if c in bad]
    return bad[columns].reset_index(drop=True)


def _group_keys(frame: pd.DataFrame) -> list[str]:
    keys = [k for k in GROUP if k in frame]
    if "delegate" in frame:
        frame["delegate"] = frame["delegate"].fillna("")
    return keys


def pair_speedups(frame: pd.DataFrame, bootstrap: int = 1000) -> pd.DataFrame:
    """One row per standard/separable pair and device x backend x threads (x run)."""
    valid = _valid(frame)
    if valid.empty or "pair_id" not in valid:
        return pd.DataFrame()
    keys = _group_keys(valid)
    if "run_id" in valid and valid["run_id"].nunique() > 1:
        keys = ["run_id", *keys]
    rows: list[dict[str, Any]] = []
    for group_values, group in valid.groupby(keys, dropna=False):
        by_id = {row["workload_id"]: row for _, row in group.iterrows()}
        for workload_id, sep in by_id.items():
            if sep.get("kind") != "separable":
                continue
            std = by_id.get(sep["standard_id"])
            if std is None:
                continue
            measured = std["latency_median"] / sep["latency_median"]
            lo = hi = np.nan
            std_samples, sep_samples = std.get("samples_s"), sep.get("samples_s")
            if bootstrap and isinstance(std_samples, list) and isinstance(sep_samples, list) \
                    and std_samples and sep_samples:
                _, lo, hi = bootstrap_ratio_ci(std_samples, sep_samples, n_boot=bootstrap)
            theoretical = 1.0 / sep["ratio"]
            row = dict(zip(keys, group_values if isinstance(group_values, tuple) else (group_values,),
                           strict=True))
            row.update(
                pair_id=workload_id, m=sep["m"], n=sep["n"], k=sep["k"], x=sep["x"], stride=sep["stride"],
                standard_median_s=std["latency_median"], separable_median_s=sep["latency_median"],
                theoretical_speedup=theoretical, measured_speedup=measured,
                speedup_ci_low=lo, speedup_ci_high=hi, efficiency=measured / theoretical,
            )
            rows.append(row)
    return pd.DataFrame(rows)


def workload_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Median latency, achieved GMAC/s, intensity, memory, energy per valid measurement."""
    valid = _valid(frame)
    if valid.empty:
        return pd.DataFrame()
    out = valid.copy()
    out["gmacs_per_s"] = out["macs"] / out["latency_median"] / 1e9
    columns = [c for c in ["run_id", "device", "backend", "threads", "delegate", "workload_id", "kind", "family",
                           "macs", "params", "intensity", "latency_median", "latency_ci_low", "latency_ci_high",
                           "latency_cv", "latency_n", "gmacs_per_s", "memory_peak_rss_bytes",
                           "memory_rss_increase_bytes", "energy_j", "energy_sensor", "output_check_status",
                           "output_check_max_abs_diff", "device_emulated"] if c in out]
    return out[columns].reset_index(drop=True)


def network_summary(frame: pd.DataFrame) -> pd.DataFrame:
    summary = workload_summary(frame)
    if summary.empty:
        return summary
    return summary[summary["kind"] == "network"].reset_index(drop=True)


def v1_vs_twin(frame: pd.DataFrame) -> pd.DataFrame:
    """MobileNet v1 against its standard-conv twin, per device x backend x threads."""
    nets = network_summary(frame)
    if nets.empty:
        return pd.DataFrame()
    rows = []
    keys = [k for k in ["run_id", "device", "backend", "threads", "delegate"] if k in nets]
    for group_values, group in nets.groupby(keys, dropna=False):
        by_id = dict(zip(group["workload_id"], group["latency_median"], strict=True))
        macs = dict(zip(group["workload_id"], group["macs"], strict=True))
        for workload_id, latency in by_id.items():
            if not workload_id.startswith("mobilenet_v1-"):
                continue
            twin = workload_id.replace("mobilenet_v1-", "mobilenet_v1_conv-", 1)
            if twin in by_id:
                row = dict(zip(keys, group_values if isinstance(group_values, tuple) else (group_values,),
                               strict=True))
                row.update(workload_id=workload_id, twin_id=twin, theoretical_speedup=macs[twin] / macs[workload_id],
                           measured_speedup=by_id[twin] / latency)
                row["efficiency"] = row["measured_speedup"] / row["theoretical_speedup"]
                rows.append(row)
    return pd.DataFrame(rows)
