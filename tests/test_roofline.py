"""The memory-aware theory: roofline times from the cost model's MACs and bytes and a device's ceilings."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from harness import roofline, workloads
from harness.cost import network_cost

PAIR = ("conv-standard-M32-N64-k3-x112-s1", "conv-separable-M32-N64-k3-x112-s1")


@dataclass(frozen=True)
class Ceilings:
    peak_macs_per_s: float
    stream_bytes_per_s: float
    cache_bytes_per_s: float | None = None


def macs(workload_id: str) -> int:
    return network_cost(workloads.get(workload_id)).macs


def test_each_layer_is_bound_by_the_slower_of_compute_and_memory():
    ceilings = Ceilings(peak_macs_per_s=50e9, stream_bytes_per_s=10e9)
    bounds = roofline.layer_bounds(PAIR[1], ceilings)
    assert [b.op for b in bounds] == ["depthwise", "pointwise"]
    depthwise, pointwise = bounds
    # 3x3 depthwise: 9 MACs per output element but ~8 bytes moved per element: memory-bound.
    assert depthwise.bound == "memory" and depthwise.seconds == pytest.approx(depthwise.bytes / 10e9)
    # 1x1 conv with 32 inputs and 64 outputs: 2048 MACs per pixel over 384 bytes: compute-bound here.
    assert pointwise.bound == "compute" and pointwise.seconds == pytest.approx(pointwise.macs / 50e9)
    assert roofline.roofline_seconds(PAIR[1], ceilings) == pytest.approx(depthwise.seconds + pointwise.seconds)


def test_with_unlimited_bandwidth_the_roofline_is_the_op_ratio():
    ceilings = Ceilings(peak_macs_per_s=50e9, stream_bytes_per_s=math.inf)
    for standard in ("conv-standard-M32-N64-k3-x112-s1", "conv-standard-M1024-N1024-k3-x7-s1"):
        separable = workloads.pair_of(standard)[1]
        assert roofline.predicted_speedup(standard, separable, ceilings) == pytest.approx(
            macs(standard) / macs(separable))


def test_slower_memory_lowers_the_predicted_separable_speedup():
    """The mission's point: memory-bound depthwise layers make the separable saving smaller than the MACs say."""
    fast = Ceilings(peak_macs_per_s=50e9, stream_bytes_per_s=40e9)
    slow = Ceilings(peak_macs_per_s=50e9, stream_bytes_per_s=2e9)
    op_ratio = macs(PAIR[0]) / macs(PAIR[1])
    assert roofline.predicted_speedup(*PAIR, slow) < roofline.predicted_speedup(*PAIR, fast) <= op_ratio
    assert roofline.memory_bound_share(PAIR[1], slow) > roofline.memory_bound_share(PAIR[1], fast)


def test_a_layer_that_fits_in_the_cache_gets_the_cache_bandwidth():
    ceilings = Ceilings(peak_macs_per_s=1e15, stream_bytes_per_s=5e9, cache_bytes_per_s=50e9)
    (depthwise, _pointwise) = roofline.layer_bounds(PAIR[1], ceilings, cache_bytes=64 << 20)
    assert depthwise.resident and depthwise.seconds == pytest.approx(depthwise.bytes / 50e9)
    (depthwise, _pointwise) = roofline.layer_bounds(PAIR[1], ceilings, cache_bytes=1 << 10)
    assert not depthwise.resident and depthwise.seconds == pytest.approx(depthwise.bytes / 5e9)


def test_theory_error_is_symmetric_on_a_ratio_scale():
    assert roofline.theory_error(2.0, 1.0) == pytest.approx(roofline.theory_error(0.5, 1.0)) == pytest.approx(
        math.log(2))
    assert roofline.error_percent(math.log(2)) == pytest.approx(100.0)
    assert math.isnan(roofline.theory_error(0.0, 1.0))
