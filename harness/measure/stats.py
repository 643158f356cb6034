"""Robust summaries of latency samples and the statistics used to compare them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from backends import runner


def median_ci(samples: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Distribution-free confidence interval of the median from order statistics.

    The rank of the sample median is Binomial(n, 1/2); its normal approximation gives the
    ranks n/2 -/+ z*sqrt(n)/2.  The runner's stopping rule uses the same function.
    """
    if len(samples) == 0:
        raise ValueError("no samples")
    return runner.median_ci(sorted(samples), z)


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    mean: float
    std: float
    min: float
    max: float
    p90: float
    p99: float
    q1: float
    q3: float
    iqr: float
    cv: float  # std / mean
    ci_low: float  # 95% CI of the median
    ci_high: float
    ci_rel_width: float  # (ci_high - ci_low) / median
    outliers: int  # beyond 1.5 IQR from the quartiles

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(samples: Sequence[float]) -> Summary:
    values = np.asarray(samples, dtype=float)
    if values.size == 0:
        raise ValueError("no samples")
    q1, median, q3, p90, p99 = np.percentile(values, [25, 50, 75, 90, 99])
    iqr = q3 - q1
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    lo, hi = median_ci(values.tolist())
    outliers = int(np.count_nonzero((values < q1 - 1.5 * iqr) | (values > q3 + 1.5 * iqr)))
    return Summary(
        n=int(values.size), median=float(median), mean=mean, std=std, min=float(values.min()),
        max=float(values.max()), p90=float(p90), p99=float(p99), q1=float(q1), q3=float(q3), iqr=float(iqr),
        cv=std / mean if mean else 0.0, ci_low=float(lo), ci_high=float(hi),
        ci_rel_width=float((hi - lo) / median) if median else 0.0, outliers=outliers,
    )


def bootstrap_ratio_ci(
    numerator: Sequence[float],
    denominator: Sequence[float],
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """statistic(numerator) / statistic(denominator) with a percentile bootstrap CI.

    ``scipy.stats.bootstrap`` with the two samples resampled independently (they come from
    separate runs; ``paired=False``).  ``statistic`` reduces the last axis (default: the
    median).  Returns (point estimate, low, high).  Deterministic for a given seed.
    """
    from scipy.stats import bootstrap

    a = np.asarray(numerator, dtype=float)
    b = np.asarray(denominator, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("both samples need values")

    def stat(x: np.ndarray) -> np.ndarray:
        return np.median(x, axis=-1) if statistic is None else statistic(x)

    point = float(stat(a[None, :])[0] / stat(b[None, :])[0])
    # scipy resamples only samples of two or more values; one value resamples to itself: a constant.
    resampled = [x for x in (a, b) if x.size > 1]
    if not resampled:
        return point, point, point

    def ratio(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        drawn = iter(np.moveaxis(x, axis, -1) for x in samples)
        num = next(drawn) if a.size > 1 else a[None, :]
        den = next(drawn) if b.size > 1 else b[None, :]
        return stat(num) / stat(den)

    # Batches keep memory bounded for large sample counts.
    batch = max(1, min(n_boot, 2_000_000 // max(a.size, b.size)))
    result = bootstrap(resampled, ratio, n_resamples=n_boot, batch=batch, vectorized=True, paired=False,
                       confidence_level=confidence, method="percentile",
                       random_state=np.random.default_rng(seed))
    return point, float(result.confidence_interval.low), float(result.confidence_interval.high)

