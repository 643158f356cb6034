"""Measured speedups against MobileNet's theoretical ratio, and per-workload views.

Input is the tidy frame of ``harness.store.load_frame``.  Invalid measurements
(status other than ``ok``: output mismatch, delegate fallback, errors) never enter a
figure or a ratio; they are listed by ``excluded``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.measure.invocations import collapse, ratio_ci
from harness.measure.stats import bootstrap_ratio_ci

GROUP = ["device", "backend", "threads", "delegate"]
# The bootstrap resamples at most this many samples per side (evenly spaced in time).
# Beyond it the interval only gets wider (conservative); 100k samples would take seconds.
MAX_BOOTSTRAP_SAMPLES = 5000
# measured/theoretical of a pair is the separable layer's achieved GMAC/s over the standard conv's.
# A standard conv at under this fraction of its backend's typical GMAC/s on the device (the median
# of the backend's *other* standard convs there) inflates that ratio by the inverse of the fraction
# or more: the ratio then measures the standard conv's inefficiency, not the separable layer's gain.
SLOW_STANDARD_FRACTION = 0.5
# "Typical" needs a few convs to be a median of: with fewer other standard convs no pair is flagged.
MIN_OTHER_STANDARD_CONVS = 2
SLOW_STANDARD_REASON = "its ratio measures the standard conv's inefficiency, not the separable layer's gain"


def thin(samples: Sequence[float], limit: int = MAX_BOOTSTRAP_SAMPLES) -> list[float]:
    """At most ``limit`` samples, evenly spaced over the run (keeps slow drift in)."""
    values = list(samples)
    if len(values) <= limit:
        return values
    index = np.linspace(0, len(values) - 1, limit).round().astype(int)
    return [values[i] for i in index]


def valid(frame: pd.DataFrame) -> pd.DataFrame:
    """The measurements every ratio, table and figure is built from (status ``ok``)."""
    return _valid(frame)


def _valid(frame: pd.DataFrame) -> pd.DataFrame:
    """Valid measurements, one row per job: a job's invocations are collapsed (``invocations.collapse``)."""
    if frame.empty or "status" not in frame:
        return frame.iloc[0:0]
    out = frame[frame["status"] == "ok"].copy()
    if "latency_median" in out:
        out = collapse(out[out["latency_median"].notna()])
    return out


def excluded(frame: pd.DataFrame) -> pd.DataFrame:
    """Measurements left out of the analysis, with why."""
    if frame.empty:
        return frame
    bad = frame[frame["status"] != "ok"].copy()
    reasons = []
    for _, row in bad.iterrows():
        problems = row.get("problems")
        text = row.get("error") if isinstance(row.get("error"), str) else None
        if not text and isinstance(problems, list | np.ndarray) and len(problems):
            text = "; ".join(map(str, problems))
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


def _key_dict(keys: list[str], values: Any) -> dict[str, Any]:
    return dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True))


def geometric_mean(values: Sequence[float]) -> float:
    """The mean of ratios: 0.5 and 2.0 average to 1.0 (the arithmetic mean would say 1.25)."""
    positive = [float(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    return math.exp(sum(math.log(v) for v in positive) / len(positive)) if positive else math.nan


def _typical_other_gmacs(standard: pd.DataFrame) -> dict[str, float]:
    """Per standard conv: the median GMAC/s of the group's other standard convs (NaN with too few)."""
    rates = dict(zip(standard["workload_id"], standard["macs"] / standard["latency_median"] / 1e9, strict=True))
    typical = {}
    for workload_id in rates:
        others = [rate for other, rate in rates.items() if other != workload_id]
        typical[workload_id] = float(np.median(others)) if len(others) >= MIN_OTHER_STANDARD_CONVS else math.nan
    return typical


def pair_speedups(frame: pd.DataFrame, bootstrap: int = 1000) -> pd.DataFrame:
    """One row per standard/separable pair and device x backend x threads (x run).

    theoretical_speedup is the MAC ratio standard/separable; measured_speedup the ratio
    of median latencies, with a percentile-bootstrap 95% CI (speedup_ci_low/high);
    efficiency = measured / theoretical.  ``standard_gmacs_per_s`` is the standard conv's
    achieved throughput, ``typical_standard_gmacs_per_s`` the median over the same
    device/backend/threads' other standard convs, and ``slow_standard`` is true when the
    first is under ``SLOW_STANDARD_FRACTION`` of the second (see there).
    """
    valid_rows = _valid(frame)
    if valid_rows.empty or "pair_id" not in valid_rows:
        return pd.DataFrame()
    keys = _group_keys(valid_rows)
    if "run_id" in valid_rows and valid_rows["run_id"].nunique() > 1:
        keys = ["run_id", *keys]
    rows: list[dict[str, Any]] = []
    for group_values, group in valid_rows.groupby(keys, dropna=False):
        by_id = {row["workload_id"]: row for _, row in group.iterrows()}
        typical: dict[str, float] = {}
        if "kind" in group:  # int8 convs run at other rates: each precision is typical of itself
            standard = group[group["kind"] == "standard"]
            for _, same_precision in standard.groupby(standard.apply(_precision, axis=1)):
                typical.update(_typical_other_gmacs(same_precision))
        for workload_id, sep in by_id.items():
            if sep.get("kind") != "separable":
                continue
            std = by_id.get(sep["standard_id"])
            if std is None:
                continue
            measured = std["latency_median"] / sep["latency_median"]
            lo = hi = np.nan
            std_samples, sep_samples = std.get("samples_s"), sep.get("samples_s")
            std_runs, sep_runs = _invocation_medians(std), _invocation_medians(sep)
            if len(std_runs) >= 2 and len(sep_runs) >= 2:
                estimate = ratio_ci(sep_runs, std_runs, level=0.95)
                lo, hi = estimate.ci_low, estimate.ci_high
            elif bootstrap and isinstance(std_samples, list) and isinstance(sep_samples, list) \
                    and std_samples and sep_samples:
                _, lo, hi = bootstrap_ratio_ci(thin(std_samples), thin(sep_samples), n_boot=bootstrap)
            theoretical = 1.0 / sep["ratio"]
            standard_gmacs = std["macs"] / std["latency_median"] / 1e9
            typical_gmacs = typical.get(std["workload_id"], math.nan)
            row = _key_dict(keys, group_values)
            row.update(
                pair_id=workload_id, precision=_precision(sep),
                m=int(sep["m"]), n=int(sep["n"]), k=int(sep["k"]), x=int(sep["x"]),
                stride=int(sep["stride"]),
                standard_median_s=std["latency_median"], separable_median_s=sep["latency_median"],
                theoretical_speedup=theoretical, measured_speedup=measured,
                speedup_ci_low=lo, speedup_ci_high=hi, efficiency=measured / theoretical,
                efficiency_ci_low=lo / theoretical, efficiency_ci_high=hi / theoretical,
                standard_id=sep["standard_id"], runtime_version=sep.get("runtime_version"),
                n_standard=len(std_samples) if isinstance(std_samples, list) else None,
                n_separable=len(sep_samples) if isinstance(sep_samples, list) else None,
                standard_gmacs_per_s=standard_gmacs, typical_standard_gmacs_per_s=typical_gmacs,
                slow_standard=bool(standard_gmacs < SLOW_STANDARD_FRACTION * typical_gmacs),
            )
            rows.append(row)
    return pd.DataFrame(rows)


def _precision(row: Any) -> str:
    value = row.get("precision") if hasattr(row, "get") else None
    return value if isinstance(value, str) and value else "fp32"


def _invocation_medians(row: Any) -> list[float]:
    values = row.get("invocation_medians")
    return list(values) if isinstance(values, list) else []


def efficiency_summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per device x backend x threads (x run): how much of the theoretical speedup is reached.

    ``geomean_efficiency`` is the geometric mean of measured/theoretical over the pairs (a
    mean of ratios: 27% and 286% average to 88%, where the arithmetic mean would say 157%),
    the lowest and highest pairs give its range and are named by their N (output channels)
    and Dx (input size).  ``slow_standard_pairs`` counts the pairs flagged ``slow_standard``;
    ``geomean_efficiency_unflagged`` is the geometric mean without them (NaN when none is left).
    """
    if pairs.empty:
        return pd.DataFrame()
    keys = [k for k in ["run_id", *GROUP, "precision"] if k in pairs]
    rows = []
    for group_values, group in pairs.groupby(keys, dropna=False, sort=True):
        low = group.loc[group["efficiency"].idxmin()]
        high = group.loc[group["efficiency"].idxmax()]
        slow = group["slow_standard"].astype(bool) if "slow_standard" in group else pd.Series(False, group.index)
        row = _key_dict(keys, group_values)
        row.update(
            pairs=len(group), geomean_efficiency=geometric_mean(group["efficiency"]),
            median_efficiency=float(group["efficiency"].median()),
            geomean_measured_speedup=geometric_mean(group["measured_speedup"]),
            geomean_theoretical_speedup=geometric_mean(group["theoretical_speedup"]),
            lowest_pair=low["pair_id"], lowest_n=int(low["n"]), lowest_x=int(low["x"]),
            lowest_efficiency=float(low["efficiency"]),
            highest_pair=high["pair_id"], highest_n=int(high["n"]), highest_x=int(high["x"]),
            highest_efficiency=float(high["efficiency"]),
            slow_standard_pairs=int(slow.sum()),
            geomean_efficiency_unflagged=geometric_mean(group.loc[~slow, "efficiency"]),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def workload_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Median latency, achieved GMAC/s, intensity, memory, energy per valid measurement."""
    valid_rows = _valid(frame)
    if valid_rows.empty:
        return pd.DataFrame()
    out = valid_rows.copy()
    out["gmacs_per_s"] = out["macs"] / out["latency_median"] / 1e9
    if "delegate" in out:
        out["delegate"] = out["delegate"].fillna("")
    columns = [c for c in ["run_id", "device", "backend", "threads", "delegate", "workload_id", "kind", "family",
                           "macs", "params", "intensity", "latency_median", "latency_ci_low", "latency_ci_high",
                           "latency_cv", "latency_n", "gmacs_per_s", "memory_peak_rss_bytes",
                           "memory_rss_increase_bytes", "energy_j", "energy_sensor", "output_check_status",
                           "output_check_max_abs_diff", "device_emulated", "runtime_version", "energy_status",
                           "memory_gpu_peak_bytes", "bytes_fp32", "bytes", "precision", "device_fingerprint_id",
                           "requested_delegate"]
               if c in out]
    return out[columns].reset_index(drop=True)


def network_summary(frame: pd.DataFrame) -> pd.DataFrame:
    summary = workload_summary(frame)
    if summary.empty:
        return summary
    return summary[summary["kind"] == "network"].reset_index(drop=True)


def network_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """The networks against each other, per device x backend x threads (x run).

    ``vs_fastest_network``: latency over the fastest network of the same device, backend
    and threads; ``vs_fastest_backend``: latency over the same network's fastest backend
    on the same device and threads.
    """
    nets = network_summary(frame)
    if nets.empty:
        return pd.DataFrame()
    keys = [k for k in ["run_id", *GROUP] if k in nets]
    out = nets.copy()
    out["vs_fastest_network"] = out["latency_median"] / out.groupby(keys, dropna=False)[
        "latency_median"].transform("min")
    across = [k for k in ["run_id", "device", "threads", "workload_id"] if k in out]
    out["vs_fastest_backend"] = out["latency_median"] / out.groupby(across, dropna=False)[
        "latency_median"].transform("min")
    columns = [c for c in [*keys, "workload_id", "macs", "params", "latency_median", "gmacs_per_s",
                           "vs_fastest_network", "vs_fastest_backend", "memory_peak_rss_bytes", "energy_j"]
               if c in out]
    return out[columns].sort_values([*keys, "latency_median"]).reset_index(drop=True)


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
                row = _key_dict(keys, group_values)
                row.update(workload_id=workload_id, twin_id=twin, theoretical_speedup=macs[twin] / macs[workload_id],
                           measured_speedup=by_id[twin] / latency)
                row["efficiency"] = row["measured_speedup"] / row["theoretical_speedup"]
                row["twin_median_s"] = by_id[twin]
                row["v1_median_s"] = latency
                rows.append(row)
    return pd.DataFrame(rows)


def int8_speedups(frame: pd.DataFrame) -> pd.DataFrame:
    """Each int8 workload against its fp32 twin on the same device x backend x threads (x run).

    ``int8_speedup`` = fp32 median / int8 median (above 1: int8 is faster); ``kind`` says what
    the workload is (standard, separable, depthwise, pointwise or network), since depthwise
    layers are known to gain much less from int8 than pointwise and standard ones.
    """
    from harness.workloads import split_precision, with_precision

    summary = workload_summary(frame)
    if summary.empty:
        return pd.DataFrame()
    summary = summary.assign(precision=[split_precision(w)[1] for w in summary["workload_id"]])
    if not (summary["precision"] == "int8").any():
        return pd.DataFrame()
    keys = [k for k in ["run_id", *GROUP] if k in summary]
    if "run_id" in summary and summary["run_id"].nunique() <= 1:
        keys.remove("run_id")
    rows = []
    for group_values, group in summary.groupby(keys, dropna=False, sort=True):
        latency = dict(zip(group["workload_id"], group["latency_median"], strict=True))
        for _, int8 in group[group["precision"] == "int8"].iterrows():
            fp32_id = with_precision(int8["workload_id"], "fp32")
            if fp32_id not in latency:
                continue
            row = _key_dict(keys, group_values)
            row.update(workload_id=fp32_id, kind=int8.get("kind"), macs=int8.get("macs"),
                       fp32_median_s=latency[fp32_id], int8_median_s=int8["latency_median"],
                       int8_speedup=latency[fp32_id] / int8["latency_median"],
                       int8_gmacs_per_s=int8["macs"] / int8["latency_median"] / 1e9)
            rows.append(row)
    return pd.DataFrame(rows)


def int8_by_kind(speedups: pd.DataFrame) -> pd.DataFrame:
    """Per device x backend x threads and workload kind: the geometric mean int8 speedup and its range."""
    if speedups.empty:
        return pd.DataFrame()
    keys = [k for k in ["run_id", *GROUP, "kind"] if k in speedups]
    rows = []
    for group_values, group in speedups.groupby(keys, dropna=False, sort=True):
        row = _key_dict(keys, group_values)
        row.update(workloads=len(group), geomean_int8_speedup=geometric_mean(group["int8_speedup"]),
                   lowest=float(group["int8_speedup"].min()), highest=float(group["int8_speedup"].max()))
        rows.append(row)
    return pd.DataFrame(rows)


def delegate_backends(frame: pd.DataFrame) -> frozenset[str]:
    """Backends whose labels name the delegate: a job asked for one (an Android delegate:
    xnnpack, gpu, nnapi rows differ), or the backend ran with more than one.

    Counted over every record given, excluded ones too: when the gpu and nnapi rows fell back
    and were excluded, the xnnpack rows left must still say they are xnnpack.
    """
    if frame.empty or "backend" not in frame:
        return frozenset()
    named: set[str] = set()
    if "requested_delegate" in frame:
        requested = frame[frame["requested_delegate"].apply(lambda d: isinstance(d, str) and bool(d))]
        named.update(str(b) for b in requested["backend"].unique())
    if "delegate" in frame:
        # A record with no delegate (a job that failed before the runtime said what it used) is no other one.
        known = frame[frame["delegate"].apply(lambda d: isinstance(d, str) and bool(d))]
        delegates = known.groupby("backend")["delegate"].nunique()
        named.update(str(b) for b in delegates[delegates > 1].index)
    return frozenset(named)


def backend_label(row: Any, named_delegates: Collection[str] = ()) -> str:
    """backend, or backend[delegate] when its backend is in ``named_delegates``."""
    label = str(row["backend"])
    delegate = row.get("delegate") if hasattr(row, "get") else None
    if label in named_delegates and isinstance(delegate, str) and delegate:
        label += f"[{delegate}]"
    return label


def series_label(row: Any, multi_threads: bool, named_delegates: Collection[str] = ()) -> str:
    """backend[delegate][ tN]: the legend entry of one measurement in the figures."""
    label = backend_label(row, named_delegates)
    if multi_threads:
        label += f" t{row['threads']}"
    return label


def where_label(row: Any, named_delegates: Collection[str] = ()) -> str:
    """device/backend[delegate]/tN: a table row's measurement setting."""
    return f"{row['device']}/{backend_label(row, named_delegates)}/t{row['threads']}"


def precision_tag(row: Any) -> str:
    """" (int8)" for a row that aggregates int8 workloads (pairs, their summaries), else ""."""
    return " (int8)" if _precision(row) == "int8" else ""


def theory_comparison(frame: pd.DataFrame, ceilings: Mapping[Any, Any]) -> pd.DataFrame:
    """Which theory predicts each measured speedup better: the op ratio or the roofline.

    One row per standard/separable pair and per MobileNet v1 vs its standard-conv twin, on every
    device x backend x threads with a stored ceiling (``harness calibrate``).  ``op_ratio`` is
    the MAC ratio; ``roofline`` the ratio of the two workloads' roofline times under that
    device and backend's ceilings (``harness.roofline``); ``*_error`` how far each is from the
    measured speedup on a ratio scale, ``closer`` which one is nearer.
    """
    from harness import roofline
    from harness.calibration import ceiling_for

    if not ceilings:
        return pd.DataFrame()
    comparisons: list[tuple[Any, str, str, str, float, float]] = []  # (row, what, slow id, fast id, measured, op)
    pairs = pair_speedups(frame, bootstrap=0)
    valid_rows = _valid(frame)
    by_key = {}
    if not valid_rows.empty:
        for _, row in valid_rows.iterrows():
            by_key[(row.get("run_id"), row["device"], row["backend"], row["threads"], row.get("delegate") or "",
                    row["workload_id"])] = row
    # pair_speedups names the run only when there are several; a single run's rows share its id.
    single_run = valid_rows["run_id"].iloc[0] if not valid_rows.empty and "run_id" in valid_rows else None
    for _, pair in pairs.iterrows():
        key = (pair.get("run_id", single_run), pair["device"], pair["backend"], pair["threads"],
               pair.get("delegate") or "")
        row = by_key.get((*key, pair["pair_id"]))
        if row is not None:
            comparisons.append((row, "pair", pair["standard_id"], pair["pair_id"], pair["measured_speedup"],
                                pair["theoretical_speedup"]))
    for _, net in v1_vs_twin(frame).iterrows():
        key = (net.get("run_id"), net["device"], net["backend"], net["threads"], net.get("delegate") or "")
        row = by_key.get((*key, net["workload_id"]))
        if row is not None:
            comparisons.append((row, "network", net["twin_id"], net["workload_id"], net["measured_speedup"],
                                net["theoretical_speedup"]))
    out = []
    for row, what, slow_id, fast_id, measured, op_ratio in comparisons:
        ceiling = ceiling_for(row, ceilings)
        if ceiling is None:
            continue
        predicted = roofline.predicted_speedup(slow_id, fast_id, ceiling, ceiling.llc_bytes)
        op_error, roof_error = roofline.theory_error(op_ratio, measured), roofline.theory_error(predicted, measured)
        out.append({
            **{k: row.get(k) for k in ("run_id", *GROUP) if k in row}, "precision": _precision(row),
            "comparison": what, "slow_id": slow_id, "fast_id": fast_id, "measured_speedup": measured,
            "op_ratio_speedup": op_ratio,
            "roofline_speedup": predicted, "op_ratio_error_pct": roofline.error_percent(op_error),
            "roofline_error_pct": roofline.error_percent(roof_error),
            "closer": _closer(op_error, roof_error),
            "fast_memory_bound_share": roofline.memory_bound_share(fast_id, ceiling, ceiling.llc_bytes),
            "peak_gmacs_per_s": ceiling.peak_macs_per_s / 1e9, "stream_gb_per_s": ceiling.stream_bytes_per_s / 1e9,
        })
    return pd.DataFrame(out)


THEORY_TIE = 0.005  # predictions within half a percent of each other are the same prediction


def _closer(op_error: float, roofline_error: float) -> str:
    """Which theory is nearer the measurement; "tie" when both predict the same (every layer compute-bound)."""
    if abs(op_error - roofline_error) < THEORY_TIE:
        return "tie"
    return "roofline" if roofline_error < op_error else "op ratio"


def roofline_positions(workloads: pd.DataFrame, ceilings: Mapping[Any, Any]) -> pd.DataFrame:
    """``workload_summary`` rows placed against their device and backend's measured roofs.

    Adds ``attainable_gmacs_per_s`` (the roofline at the workload's arithmetic intensity, the
    cache-resident bandwidth when its bytes fit in the last-level cache), ``pct_of_attainable``
    and ``bound`` (memory or compute: which roof is the lower at that intensity); rows without
    a ceiling keep NaN.
    """
    from harness.calibration import ceiling_for
    from harness.layers import moved_bytes

    out = workloads.copy()
    attainable, bound = [], []
    for _, row in out.iterrows():
        ceiling = ceiling_for(row, ceilings) if ceilings else None
        if ceiling is None or not row.get("intensity"):
            attainable.append(math.nan)
            bound.append("")
            continue
        roof = ceiling.attainable_for(float(row["intensity"]), moved_bytes(row))
        attainable.append(roof / 1e9)
        bound.append("compute" if roof >= ceiling.peak_macs_per_s else "memory")
    out["attainable_gmacs_per_s"] = attainable
    out["pct_of_attainable"] = out["gmacs_per_s"] / out["attainable_gmacs_per_s"] if len(out) else []
    out["bound"] = bound
    return out
