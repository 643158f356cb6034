"""Workload registry: ids -> ``Network`` descriptions, and named suites.

Any well-formed id works, not only those in a suite:
``conv-<kind>-M<m>-N<n>-k<k>-x<x>-s<s>[-b<batch>][-valid][-nobn]`` or a network id such
as ``mobilenet_v1-0.75-192``, ``mobilenet_v1_conv-1.0-224``, ``mobilenet_v2-1.4-224``,
``mobilenet_v3_small-224``; ``fc-I<in>-O<out>`` (a classifier layer, see ``layers.py``).
Any id ending in ``-int8`` is that workload statically quantized to int8 (same weights, same
input; each exporter quantizes it, see ``harness/exporters``).
Suite ``layers-of:NETWORK[,NETWORK]`` is each network followed by its distinct layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import ModuleType

from harness.errors import UserError
from harness.workloads.conv import ConvSpec, WorkloadIdError, theoretical_ratio
from harness.workloads.ir import INT8_SUFFIX, Network
from harness.workloads.mobilenet import (
    V1_ALPHAS,
    V1_RESOLUTIONS,
    V2_ALPHAS,
    V3_VARIANTS,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3,
    network_from_id,
)

__all__ = [
    "SUITES",
    "ConvSpec",
    "Network",
    "UnknownName",
    "WorkloadIdError",
    "canonical",
    "get",
    "pair_of",
    "split_precision",
    "suite",
    "suite_names",
    "theoretical_ratio",
    "with_precision",
]


class UnknownName(UserError, ValueError):
    """A user-supplied name that is not known; the message lists valid names."""


# Further workload families, each a module with ``network(workload_id) -> Network`` and
# ``canonical(workload_id) -> str``, imported when an id of theirs is first used.
FAMILY_MODULES: dict[str, str] = {
    "calib-": "harness.workloads.calib",  # the runtimes' own ceilings (harness calibrate)
    "fc-": "harness.workloads.layers",  # fully connected layers: a network's classifier measured alone
}


def _family(workload_id: str) -> ModuleType | None:
    import importlib

    for prefix, module in FAMILY_MODULES.items():
        if workload_id.startswith(prefix):
            return importlib.import_module(module)
    return None


def split_precision(workload_id: str) -> tuple[str, str]:
    """(the fp32 id, "fp32" or "int8") of a workload id."""
    if workload_id.endswith(INT8_SUFFIX):
        return workload_id.removesuffix(INT8_SUFFIX), "int8"
    return workload_id, "fp32"


def with_precision(workload_id: str, precision: str) -> str:
    base, _ = split_precision(workload_id)
    return base + INT8_SUFFIX if precision == "int8" else base


def get(workload_id: str) -> Network:
    """The network for a workload id; raises WorkloadIdError with a helpful message."""
    base, precision = split_precision(workload_id)
    if precision != "fp32":
        return dataclasses.replace(_get_fp32(base), workload_id=workload_id, precision=precision)
    return _get_fp32(workload_id)


def _get_fp32(workload_id: str) -> Network:
    if workload_id.startswith("conv-"):
        return ConvSpec.from_id(workload_id).network()
    if workload_id.startswith("mobilenet"):
        return network_from_id(workload_id)
    family = _family(workload_id)
    if family is not None:
        return family.network(workload_id)
    raise WorkloadIdError(
        f"unknown workload {workload_id!r}: expected conv-<kind>-M<m>-N<n>-k<k>-x<x>-s<s> "
        "or a network id such as mobilenet_v1-1.0-224 (see `harness workloads`)"
    )


def canonical(workload_id: str) -> str:
    """The one spelling of a workload id that artifacts, records and layer pairs are keyed by.

    ``conv-standard-M016-N016-k03-x056-s01`` is ``conv-standard-M16-N16-k3-x56-s1``; a
    network id must already be canonical (``get`` says which spelling it expects).
    Raises WorkloadIdError for an id that is not a workload.
    """
    workload_id = workload_id.strip()
    base, precision = split_precision(workload_id)
    if precision != "fp32":
        return with_precision(canonical(base), precision)
    network = get(workload_id)
    if workload_id.startswith("conv-"):
        return ConvSpec.from_id(workload_id).workload_id
    family = _family(workload_id)
    if family is not None:
        return family.canonical(workload_id)
    return network.workload_id


def pair_of(workload_id: str) -> tuple[str, str] | None:
    """(standard id, separable id) when the workload is half of a layer pair (of one precision)."""
    base, precision = split_precision(workload_id)
    if not base.startswith("conv-"):
        return None
    spec = ConvSpec.from_id(base)
    if spec.kind == "standard":
        return workload_id, with_precision(spec.twin().workload_id, precision)
    if spec.kind == "separable":
        return with_precision(spec.twin().workload_id, precision), workload_id
    return None


def _pairs(specs: list[tuple[int, int, int, int, int]]) -> list[str]:
    ids: list[str] = []
    for m, n, k, x, s in specs:
        standard = ConvSpec("standard", m, n, k, x, s)
        ids += [standard.workload_id, standard.twin().workload_id]
    return ids


def _quick() -> list[str]:
    # (M, N, Dk, Dx, stride): small and large N, small and large Dx.
    layers = _pairs([(32, 64, 3, 112, 1), (128, 128, 3, 56, 1), (512, 512, 3, 14, 1), (1024, 1024, 3, 7, 1)])
    return layers + ["mobilenet_v1-1.0-224", "mobilenet_v1_conv-1.0-224",
                     "mobilenet_v2-1.0-224", "mobilenet_v3_large-224"]


def _layers() -> list[str]:
    # MobileNet-like stages: channels grow as resolution shrinks, so every shape is one
    # a real network has; then kernel size and stride vary on each.
    stages = [(32, 112), (64, 112), (128, 56), (256, 28), (512, 14), (1024, 7)]
    shapes: list[tuple[int, int, int, int, int]] = []
    for m, x in stages:
        for n in sorted({m, min(2 * m, 1024)}):
            for k in (3, 5, 7):
                for s in (1, 2):
                    shapes.append((m, n, k, x, s))
    shapes += [(32, 1024, 3, 7, 1), (1024, 32, 3, 7, 1), (64, 64, 3, 7, 1), (1024, 1024, 3, 56, 1)]
    return _pairs(shapes)


def _mobilenets() -> list[str]:
    ids = [mobilenet_v1(a, r).workload_id for a in V1_ALPHAS for r in V1_RESOLUTIONS]
    ids += [mobilenet_v1(a, r, standard_twin=True).workload_id for a in V1_ALPHAS for r in V1_RESOLUTIONS]
    ids += [mobilenet_v2(a).workload_id for a in V2_ALPHAS]
    ids += [mobilenet_v3(v).workload_id for v in V3_VARIANTS]
    return ids


def _paper() -> list[str]:
    # The v1 paper's Table 1 body as standard/separable pairs (each distinct shape once),
    # then its multiplier grid (Tables 6 and 7) and the "Conv MobileNet" of Table 4.
    table1 = [(32, 64, 3, 112, 1), (64, 128, 3, 112, 2), (128, 128, 3, 56, 1), (128, 256, 3, 56, 2),
              (256, 256, 3, 28, 1), (256, 512, 3, 28, 2), (512, 512, 3, 14, 1),
              (512, 1024, 3, 14, 2), (1024, 1024, 3, 7, 1)]
    ids = _pairs(table1)
    ids += [mobilenet_v1(a, 224).workload_id for a in V1_ALPHAS]
    ids += [mobilenet_v1(1.0, r).workload_id for r in V1_RESOLUTIONS if r != 224]
    ids += [mobilenet_v1(1.0, 224, standard_twin=True).workload_id]
    return ids


def _int8() -> list[str]:
    # The quick suite at both precisions, so every int8 row has its fp32 twin in the same run.
    ids = _quick()
    return ids + [with_precision(i, "int8") for i in ids]


SUITES: dict[str, Callable[[], list[str]]] = {
    "quick": _quick,
    "int8": _int8,
    "layers": _layers,
    "mobilenets": _mobilenets,
    "paper": _paper,
}


def suite_names() -> list[str]:
    return list(SUITES)


def suite(name: str) -> list[str]:
    from harness.workloads.layers import suite_of

    layers_of = suite_of(name)  # layers-of:NETWORK[,NETWORK]: each network and its distinct layers
    if layers_of is not None:
        return layers_of
    if name not in SUITES:
        raise UnknownName(f"unknown suite {name!r}; valid suites: {', '.join(SUITES)}, "
                          "or layers-of:NETWORK[,NETWORK] (a network and each of its distinct layers)")
    return SUITES[name]()
