"""Order statistics for the stopping rule (also used by the host)."""

import math


def median_ci(sorted_samples, confidence_z=1.96):
    """Distribution-free CI of the median from order statistics (binomial normal approx).

    A copy of harness.measure.stats.median_ci: the runner must stay self-contained.
    """
    n = len(sorted_samples)
    if n < 6:
        return sorted_samples[0], sorted_samples[-1]
    half = confidence_z * math.sqrt(n) / 2.0
    lo = max(0, math.floor(n / 2.0 - half))
    hi = min(n - 1, math.ceil(n / 2.0 + half))
    return sorted_samples[lo], sorted_samples[hi]


def _median(sorted_samples):
    n = len(sorted_samples)
    mid = n // 2
    return sorted_samples[mid] if n % 2 else (sorted_samples[mid - 1] + sorted_samples[mid]) / 2.0
