"""A memory-aware theory: each layer's roofline time from the cost model and a device's measured ceilings.

The op-ratio theory (MobileNet's ``1/N + 1/Dk²``) counts multiply-accumulates only.  The
roofline theory gives each layer the time ``max(MACs / peak, bytes / bandwidth)``: a layer is
limited either by the arithmetic the runtime can do (``peak``: MAC/s of a large compute-bound
conv, run by that runtime on that device) or by the bytes it must move (the cost model's
weights + one read of the input + one write of the output, at the bandwidth a streaming kernel
reaches; a layer whose bytes fit in the last-level cache gets the cache-resident bandwidth).
A network's time is the sum over its layers.  ``harness calibrate`` measures the ceilings.

Both theories predict a speedup (standard / separable, or twin / MobileNet); ``theory_error``
says how far each prediction is from the measured speedup, on a ratio scale (a prediction
twice too high and one half too low are equally wrong).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from harness.cost import network_cost


class Ceilings(Protocol):
    """What the theory needs of a device x backend x threads (``harness.calibration.Ceiling``)."""

    peak_macs_per_s: float
    stream_bytes_per_s: float
    cache_bytes_per_s: float | None


@dataclass(frozen=True)
class LayerBound:
    """One layer's roofline time and what bounds it."""

    name: str
    op: str
    macs: int
    bytes: int
    compute_s: float
    memory_s: float
    resident: bool  # its bytes fit in the last-level cache: the cache-resident bandwidth applies

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s > self.compute_s else "compute"


def layer_bounds(workload_id: str, ceilings: Ceilings, cache_bytes: int | None = None) -> list[LayerBound]:
    """Every layer of a workload with its roofline time; ``cache_bytes``: the last-level cache size, if known."""
    from harness import workloads

    network = workloads.get(workload_id)
    bounds = []
    for layer in network_cost(network).layers:
        moved = layer.bytes_int8 if network.precision == "int8" else layer.bytes_fp32
        resident = bool(cache_bytes and ceilings.cache_bytes_per_s and moved <= cache_bytes)
        bandwidth = ceilings.cache_bytes_per_s if resident else ceilings.stream_bytes_per_s
        bounds.append(LayerBound(layer.name, layer.op, layer.macs, moved,
                                 layer.macs / ceilings.peak_macs_per_s, moved / bandwidth, resident))
    return bounds


def roofline_seconds(workload_id: str, ceilings: Ceilings, cache_bytes: int | None = None) -> float:
    """The workload's predicted latency: the sum of its layers' roofline times."""
    return sum(bound.seconds for bound in layer_bounds(workload_id, ceilings, cache_bytes))


def predicted_speedup(slow_id: str, fast_id: str, ceilings: Ceilings, cache_bytes: int | None = None) -> float:
    """How much faster ``fast_id`` should run than ``slow_id`` by the roofline (standard / separable)."""
    return roofline_seconds(slow_id, ceilings, cache_bytes) / roofline_seconds(fast_id, ceilings, cache_bytes)


def memory_bound_share(workload_id: str, ceilings: Ceilings, cache_bytes: int | None = None) -> float:
    """The share of the predicted time spent in memory-bound layers."""
    bounds = layer_bounds(workload_id, ceilings, cache_bytes)
    total = sum(b.seconds for b in bounds)
    return sum(b.seconds for b in bounds if b.bound == "memory") / total if total else math.nan


def theory_error(predicted: float, measured: float) -> float:
    """|log(predicted / measured)|: 0 for a perfect prediction, log 2 for one off by 2x either way."""
    if not (predicted > 0 and measured > 0):
        return math.nan
    return abs(math.log(predicted / measured))


def error_percent(error: float) -> float:
    """A ``theory_error`` as the percentage it is off by (log 2 -> 100%)."""
    return (math.exp(error) - 1.0) * 100.0
