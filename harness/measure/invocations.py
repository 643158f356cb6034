"""Statistics whose unit of replication is the invocation (one fresh runner process), not the sample.

Samples inside one invocation are autocorrelated and share that process's luck (its memory
layout, its CPU, the neighbours of the moment): thousands of them say little about the next
process.  Kalibera & Jones (2013) showed that the variation between invocations dominates;
so every comparison here reduces each invocation to its median latency and compares those.

The comparison statistic is the ratio of the geometric means of the invocation medians, with a
Student-t interval on their logarithms: Welch's for two independent runs, paired by round for
an A/B measured in one run (``harness ab``), where both candidates share each round's
interference.  With the handful of invocations a run makes (3-10), a t interval on logs is
better calibrated than a bootstrap, whose percentile intervals under-cover at such sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# A job's identity across its invocations within one run (the store's frame columns).
JOB_KEYS = ["run_id", "device", "backend", "threads", "delegate", "workload_id"]


@dataclass(frozen=True)
class RatioEstimate:
    """current / baseline, with a confidence interval at ``level``; NaN bounds when not estimable."""

    ratio: float
    ci_low: float
    ci_high: float
    level: float
    n_baseline: int
    n_current: int
    paired: bool = False
    p_value: float = math.nan  # two-sided, of "no change", from the same t statistic

    @property
    def estimable(self) -> bool:
        return not (math.isnan(self.ci_low) or math.isnan(self.ci_high))


def _logs(values: Sequence[float]) -> np.ndarray:
    array = np.asarray([v for v in values if v is not None and np.isfinite(v) and v > 0], dtype=float)
    return np.log(array)


def ratio_ci(baseline: Sequence[float], current: Sequence[float], level: float = 0.98) -> RatioEstimate:
    """Ratio of geometric means current/baseline of two independent sets of invocation medians (Welch t)."""
    from scipy import stats

    base, cur = _logs(baseline), _logs(current)
    if base.size == 0 or cur.size == 0:
        return RatioEstimate(math.nan, math.nan, math.nan, level, int(base.size), int(cur.size))
    diff = float(cur.mean() - base.mean())
    nan = math.nan
    if base.size < 2 or cur.size < 2:
        return RatioEstimate(math.exp(diff), nan, nan, level, int(base.size), int(cur.size))
    var_b, var_c = base.var(ddof=1) / base.size, cur.var(ddof=1) / cur.size
    se = math.sqrt(var_b + var_c)
    if se == 0:
        return RatioEstimate(math.exp(diff), math.exp(diff), math.exp(diff), level, int(base.size), int(cur.size),
                             p_value=1.0 if diff == 0 else 0.0)
    # Welch-Satterthwaite degrees of freedom
    dof = (var_b + var_c) ** 2 / (var_b ** 2 / (base.size - 1) + var_c ** 2 / (cur.size - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    return RatioEstimate(math.exp(diff), math.exp(diff - half), math.exp(diff + half), level,
                         int(base.size), int(cur.size), p_value=float(2 * stats.t.sf(abs(diff) / se, dof)))


def paired_ratio_ci(baseline: Sequence[float], current: Sequence[float], level: float = 0.98) -> RatioEstimate:
    """Ratio current/baseline from invocations paired by round (same length, same order)."""
    from scipy import stats

    if len(baseline) != len(current):
        raise ValueError("paired invocations need equal counts")
    pairs = [(b, c) for b, c in zip(baseline, current, strict=True)
             if b and c and np.isfinite(b) and np.isfinite(c) and b > 0 and c > 0]
    n = len(pairs)
    if n == 0:
        return RatioEstimate(math.nan, math.nan, math.nan, level, 0, 0, paired=True)
    diffs = np.log([c for _, c in pairs]) - np.log([b for b, _ in pairs])
    mean = float(diffs.mean())
    if n < 2:
        return RatioEstimate(math.exp(mean), math.nan, math.nan, level, n, n, paired=True)
    se = float(diffs.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return RatioEstimate(math.exp(mean), math.exp(mean), math.exp(mean), level, n, n, paired=True,
                             p_value=1.0 if mean == 0 else 0.0)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return RatioEstimate(math.exp(mean), math.exp(mean - half), math.exp(mean + half), level, n, n, paired=True,
                         p_value=float(2 * stats.t.sf(abs(mean) / se, n - 1)))


def geometric_mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(geometric mean, low, high) of invocation medians, a t interval on their logs; NaN bounds below 2."""
    from scipy import stats

    logs = _logs(values)
    if logs.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(logs.mean())
    if logs.size < 2:
        return math.exp(mean), math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, logs.size - 1)) * float(logs.std(ddof=1)) / math.sqrt(logs.size)
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def spread(values: Sequence[float]) -> float:
    """Standard deviation of the log invocation medians (~ their coefficient of variation); NaN below 2."""
    logs = _logs(values)
    return float(logs.std(ddof=1)) if logs.size >= 2 else math.nan


def collapse(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per job of a run: its invocations (records) reduced to one summary.

    ``latency_median`` becomes the median of the invocation medians and ``latency_ci_low/high``
    a 95% interval of the geometric mean across invocations (``latency_ci_rel_width`` stays the
    precision inside one invocation: the median over the invocations) (a job measured once keeps its own
    within-invocation interval, marked by ``invocations`` = 1).  Added columns: ``invocations``,
    ``invocation_medians`` (list, in the order measured), ``invocation_spread`` (SD of their
    logs), ``probe_s`` (median reference-probe time of the job's invocations, when measured).
    Rows that are not ``ok`` are left as they are: they are listed, never summarised.
    """
    if frame.empty or "latency_median" not in frame:
        return frame
    keys = [k for k in JOB_KEYS if k in frame]
    work = frame.copy()
    if "delegate" in work:
        work["delegate"] = work["delegate"].fillna("")
    ok = work[(work["status"] == "ok") & work["latency_median"].notna()]
    rest = work[~work.index.isin(ok.index)]
    rows = []
    for _, group in ok.groupby(keys, dropna=False, sort=False):
        if "repeat" in group:
            group = group.sort_values("repeat", kind="stable")
        first = group.iloc[0].to_dict()
        medians = [float(v) for v in group["latency_median"]]
        first["invocations"] = len(medians)
        first["invocation_medians"] = medians
        first["invocation_spread"] = spread(medians)
        if len(medians) >= 2:
            _, low, high = geometric_mean_ci(medians)
            first["latency_median"] = float(np.median(medians))
            first["latency_ci_low"], first["latency_ci_high"] = low, high
            if "latency_ci_rel_width" in group:  # the precision inside an invocation, typically
                widths = group["latency_ci_rel_width"].astype(float)
                # benchmark_model (phones) prints no samples, so it has no within-invocation interval
                first["latency_ci_rel_width"] = float(np.nanmedian(widths)) if widths.notna().any() else math.nan
            samples = [s for value in group.get("samples_s", []) if isinstance(value, list) for s in value]
            first["samples_s"] = samples or first.get("samples_s")
        if "probe_s" in group:
            probes = [float(v) for v in group["probe_s"] if v is not None and np.isfinite(v)]
            first["probe_s"] = float(np.median(probes)) if probes else math.nan
        rows.append(first)
    collapsed = pd.DataFrame(rows, columns=list(work.columns) + ["invocations", "invocation_medians",
                                                                  "invocation_spread"])
    if not rest.empty:
        collapsed = pd.concat([collapsed, rest], ignore_index=True)
    return collapsed.reset_index(drop=True)
