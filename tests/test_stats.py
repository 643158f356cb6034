"""Latency statistics: summaries, the median CI (host and runner copies), bootstrap."""

import random

import numpy as np
import pytest

from backends import runner
from harness.measure.stats import bootstrap_ratio_ci, median_ci, summarize


def test_summary_of_known_samples():
    samples = [1.0, 2.0, 3.0, 4.0, 100.0]
    s = summarize(samples)
    assert (s.n, s.median, s.min, s.max) == (5, 3.0, 1.0, 100.0)
    assert s.mean == pytest.approx(22.0)
    assert s.q1 == 2.0 and s.q3 == 4.0 and s.iqr == 2.0
    assert s.outliers == 1  # 100 is beyond q3 + 1.5 IQR
    assert s.std == pytest.approx(np.std(samples, ddof=1))
    assert s.cv == pytest.approx(s.std / s.mean)


def test_median_ci_covers_true_median_about_95_percent():
    rng = random.Random(1)
    hits = 0
    trials = 400
    for _ in range(trials):
        sample = [rng.expovariate(1.0) for _ in range(101)]
        lo, hi = median_ci(sample)
        hits += lo <= np.log(2) <= hi
    assert 0.92 <= hits / trials <= 0.99


def test_runner_copy_matches_host_median_ci():
    rng = random.Random(2)
    for n in (3, 6, 10, 57, 1000):
        sample = sorted(rng.gauss(10, 1) for _ in range(n))
        assert runner.median_ci(sample) == median_ci(sample)


def test_bootstrap_ratio_ci_is_deterministic_and_covers_point():
    rng = np.random.default_rng(0)
    a, b = rng.normal(2.0, 0.1, 300), rng.normal(1.0, 0.05, 300)
    first = bootstrap_ratio_ci(a, b, n_boot=500, seed=3)
    assert first == bootstrap_ratio_ci(a, b, n_boot=500, seed=3)
    point, lo, hi = first
    assert lo < point < hi and point == pytest.approx(2.0, rel=0.05)
