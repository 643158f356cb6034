"""A network's layers as workloads of their own, and the ``fc-`` (fully connected) family.

``decompose(network_id)`` lists every distinct layer of a network as a layer workload id
with the same shape, stride, padding, BatchNorm and activation it has in the network, the
number of times the network runs it, and the network layers it stands for.  Measuring each
distinct layer once (``--suite layers-of:NETWORK``) works on every backend and device,
including Android through benchmark_model, because a layer is just another small network.

Layer types: ``standard`` (a k x k conv, k > 1), ``depthwise``, ``pointwise`` (1x1),
``fully connected`` and ``other``.  Other ops (pooling, squeeze-and-excite, residual adds)
are not measured separately: their time is part of what the network takes beyond the sum
of its measured layers.  Squeeze-and-excite's two tiny 1x1 convs act on a pooled 1x1 map
and are counted as ``other`` with the MACs the cost model gives them.

Fully connected ids: ``fc-I<in>-O<out>[-b<batch>][-hswish]``, a classifier head on a
(batch, in, 1, 1) input: a global average pool over that single pixel (a flatten in
effect) and a Linear layer with bias, optionally followed by hard-swish (MobileNet v3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.workloads.conv import ConvSpec, WorkloadIdError
from harness.workloads.ir import Conv, GlobalAvgPool, Linear, Network, SqueezeExcite, flatten

LAYER_TYPES: tuple[str, ...] = ("standard", "depthwise", "pointwise", "fully connected", "other")
SUITE_PREFIX = "layers-of:"

_FC_RE = re.compile(r"^fc-I(?P<fin>\d+)-O(?P<fout>\d+)(?:-b(?P<b>\d+))?(?P<hswish>-hswish)?$")


@dataclass(frozen=True)
class FcSpec:
    fin: int
    fout: int
    batch: int = 1
    hswish: bool = False

    def __post_init__(self) -> None:
        for name in ("fin", "fout", "batch"):
            if getattr(self, name) < 1:
                raise WorkloadIdError(f"fc {name} must be >= 1, got {getattr(self, name)}")

    @property
    def workload_id(self) -> str:
        suffix = f"-b{self.batch}" if self.batch != 1 else ""
        suffix += "-hswish" if self.hswish else ""
        return f"fc-I{self.fin}-O{self.fout}{suffix}"

    @classmethod
    def from_id(cls, workload_id: str) -> FcSpec:
        match = _FC_RE.match(workload_id)
        if not match:
            raise WorkloadIdError(f"{workload_id!r} is not a fully connected workload id (e.g. fc-I1024-O1000)")
        return cls(int(match["fin"]), int(match["fout"]), int(match["b"] or 1), bool(match["hswish"]))

    def network(self) -> Network:
        ops = (GlobalAvgPool("flatten"), Linear("fc", self.fin, self.fout, act="hswish" if self.hswish else "none"))
        return Network(self.workload_id, "fc", "fully connected", ops, self.fin, 1, self.batch)


def network(workload_id: str) -> Network:
    """The ``fc-`` family's network (FAMILY_MODULES protocol)."""
    return FcSpec.from_id(workload_id).network()


def canonical(workload_id: str) -> str:
    return FcSpec.from_id(workload_id).workload_id


@dataclass(frozen=True)
class LayerRef:
    """One distinct layer of a network: the workload that measures it and how often it runs."""

    workload_id: str | None  # None for "other" ops, which are not measured on their own
    layer_type: str  # one of LAYER_TYPES
    count: int  # how many layers of the network it stands for
    names: tuple[str, ...] = field(default=())  # those layers' names in the network
    macs: int = 0  # of one instance, as the cost model counts them

    @property
    def total_macs(self) -> int:
        return self.macs * self.count


def conv_layer_type(conv: Conv) -> str:
    if conv.groups > 1 and conv.groups == conv.cin == conv.cout:
        return "depthwise"
    if conv.groups == 1:
        return "pointwise" if conv.kernel == 1 else "standard"
    return "other"  # a grouped conv no layer workload expresses


def _conv_id(conv: Conv, size: int, batch: int) -> str | None:
    kind = conv_layer_type(conv)
    if kind == "other" or conv.bias:
        return None
    if conv.bn:
        bn_relu, act = True, conv.act
    elif conv.act == "none":
        bn_relu, act = False, "relu"
    else:
        return None  # an activation without BatchNorm: no conv id says that
    spec = ConvSpec(kind, conv.cin, conv.cout if kind != "depthwise" else conv.cin,  # type: ignore[arg-type]
                    conv.kernel if kind != "pointwise" else 1, size, conv.stride, batch, conv.padding,
                    bn_relu, act)
    return spec.workload_id


def decompose(network_id_or_network: str | Network) -> list[LayerRef]:
    """The distinct layers of a network in order of first use; "other" ops last, one row per op kind.

    The MACs of all refs times their counts add up to the cost model's network MACs.
    """
    from harness import workloads as registry
    from harness.cost import network_cost

    net = (registry.get(network_id_or_network) if isinstance(network_id_or_network, str)
           else network_id_or_network)
    leaves = flatten(net.ops)
    rows = network_cost(net).layers
    if len(leaves) != len(rows):  # pragma: no cover - the cost model walks one row per leaf op
        raise ValueError(f"{net.workload_id}: {len(leaves)} ops but {len(rows)} cost rows")
    measured: dict[str, LayerRef] = {}
    others: dict[str, LayerRef] = {}
    for op, row in zip(leaves, rows, strict=True):
        workload_id, layer_type = None, "other"
        if isinstance(op, Conv):
            layer_type = conv_layer_type(op)
            workload_id = _conv_id(op, row.in_shape[1], net.batch)
            if workload_id is None:
                layer_type = "other"
        elif isinstance(op, Linear):
            layer_type = "fully connected"
            workload_id = FcSpec(op.fin, op.fout, net.batch, op.act == "hswish").workload_id \
                if op.act in ("none", "hswish") else None
            if workload_id is None:
                layer_type = "other"
        if workload_id is None:
            kind = {SqueezeExcite: "squeeze-excite", GlobalAvgPool: "pool"}.get(type(op), type(op).__name__)
            ref = others.get(kind, LayerRef(None, "other", 0, (), 0))
            # "other" rows sum MACs over their ops: keep count 1 and macs the total
            others[kind] = LayerRef(None, "other", 1, (*ref.names, op.name), ref.macs + row.macs)
            continue
        workload_id = registry.with_precision(workload_id, net.precision)  # an int8 network's layers are int8
        ref = measured.get(workload_id)
        if ref is None:
            measured[workload_id] = LayerRef(workload_id, layer_type, 1, (op.name,), row.macs)
        else:
            measured[workload_id] = LayerRef(workload_id, layer_type, ref.count + 1, (*ref.names, op.name), ref.macs)
    return [*measured.values(), *others.values()]


def layer_ids(network_ids: list[str]) -> list[str]:
    """Each network, then its distinct measurable layers (each id once, in order)."""
    from harness import workloads as registry

    ids: list[str] = []
    for given in network_ids:
        network_id = registry.canonical(given)
        for workload_id in [network_id, *(r.workload_id for r in decompose(network_id) if r.workload_id)]:
            if workload_id not in ids:
                ids.append(workload_id)
    return ids


def suite_of(name: str) -> list[str] | None:
    """``layers-of:NETWORK[,NETWORK]``: the networks and their layers; None for another suite name."""
    if not name.startswith(SUITE_PREFIX):
        return None
    networks = [part.strip() for part in name[len(SUITE_PREFIX):].split(",") if part.strip()]
    if not networks:
        raise WorkloadIdError(f"suite {name!r} names no network; e.g. {SUITE_PREFIX}mobilenet_v1-1.0-224")
    return layer_ids(networks)
