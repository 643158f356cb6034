"""Workload metadata as plain rows: id, kind, analytic costs and pair ratios.

This is what measurement records carry about their workload, and what
``harness workloads`` prints, so both always agree.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from harness import workloads as registry
from harness.cost import network_cost


@lru_cache(maxsize=4096)
def workload_row(workload_id: str) -> dict[str, Any]:
    network = registry.get(workload_id)
    cost = network_cost(network)
    row: dict[str, Any] = {
        "workload_id": workload_id,
        "family": network.family,
        "kind": network.kind,
        "macs": cost.macs,
        "params": cost.params,
        "bytes_fp32": cost.bytes_fp32,
        "bytes_int8": cost.bytes_int8,
        "precision": network.precision,
        # What this workload moves at its own precision, and its MACs per such byte.
        "bytes": cost.bytes_for(network.precision),
        "intensity": cost.intensity_for(network.precision),
    }
    pair = registry.pair_of(workload_id)
    if pair is not None:
        standard, separable = (network_cost(registry.get(i)).macs for i in pair)
        spec = registry.ConvSpec.from_id(network.fp32_id)
        row.update(
            pair_id=pair[1],  # pairs are named after their separable member
            standard_id=pair[0],
            ratio=separable / standard,
            theoretical_ratio=registry.theoretical_ratio(spec.n, spec.k),
            m=spec.m, n=spec.n, k=spec.k, x=spec.x, stride=spec.stride,
        )
    return row


def suite_rows(workload_ids: list[str]) -> list[dict[str, Any]]:
    return [dict(workload_row(i)) for i in workload_ids]
