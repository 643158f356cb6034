"""Build deterministic ``torch.nn.Module``s from workload descriptions (imports torch).

Weights are seeded from the workload id, so every machine builds the same network.
A plain random init makes deep MobileNets output values near 1e-9, which would make
any cross-backend output comparison meaningless; instead BatchNorm running statistics
are calibrated on a fixed random batch, so every BN output is standardised and the
network's logits are O(1).  Dropout is omitted: convbench only runs inference.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from harness.workloads.ir import Activation, Block, Conv, GlobalAvgPool, Linear, Network, Op, SqueezeExcite

CALIBRATION_BATCH = 4


def workload_seed(workload_id: str) -> int:
    return int.from_bytes(hashlib.sha256(workload_id.encode()).digest()[:8], "little") & (2**63 - 1)


def _activation(act: Activation) -> nn.Module:
    return {
        "relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish,
        "hsigmoid": nn.Hardsigmoid, "none": nn.Identity,
    }[act]()


def _module_name(name: str) -> str:
    return name.replace(".", "_")


class ConvBNAct(nn.Sequential):
    def __init__(self, op: Conv) -> None:
        layers: list[nn.Module] = [nn.Conv2d(op.cin, op.cout, op.kernel, op.stride, op.pad,
                                             groups=op.groups, bias=op.bias)]
        if op.bn:
            layers.append(nn.BatchNorm2d(op.cout))
        if op.act != "none":
            layers.append(_activation(op.act))
        super().__init__(*layers)


class SqueezeExciteModule(nn.Module):
    def __init__(self, op: SqueezeExcite) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(op.channels, op.squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(op.squeeze, op.channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class BlockModule(nn.Module):
    def __init__(self, op: Block) -> None:
        super().__init__()
        self.residual = op.residual
        self.body = _sequential(op.ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class LinearAct(nn.Sequential):
    def __init__(self, op: Linear) -> None:
        layers: list[nn.Module] = [nn.Linear(op.fin, op.fout)]
        if op.act != "none":
            layers.append(_activation(op.act))
        super().__init__(*layers)


def _module(op: Op) -> nn.Module:
    if isinstance(op, Conv):
        return ConvBNAct(op)
    if isinstance(op, SqueezeExcite):
        return SqueezeExciteModule(op)
    if isinstance(op, Block):
        return BlockModule(op)
    if isinstance(op, GlobalAvgPool):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    if isinstance(op, Linear):
        return LinearAct(op)
    raise TypeError(f"unknown op {op!r}")  # pragma: no cover


def _sequential(ops: tuple[Op, ...]) -> nn.Sequential:
    seq = nn.Sequential()
    for op in ops:
        seq.add_module(_module_name(op.name), _module(op))
    return seq


def _init_weights(module: nn.Module, generator: torch.Generator) -> None:
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if sub.bias is not None:
                nn.init.normal_(sub.bias, 0.0, 0.1, generator=generator)
        elif isinstance(sub, nn.BatchNorm2d):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, 0.0, sub.in_features ** -0.5, generator=generator)
            nn.init.normal_(sub.bias, 0.0, 0.1, generator=generator)


@torch.no_grad()
def _calibrate_batchnorm(module: nn.Module, network: Network, generator: torch.Generator) -> None:
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one pass sets the stats exactly
    batch = torch.randn((CALIBRATION_BATCH, *network.input_shape[1:]), generator=generator)
    module.train()
    module(batch)
    module.eval()


@dataclass
class BuiltWorkload:
    network: Network
    module: nn.Module
    example_input: torch.Tensor  # the reference input, NCHW, seeded


def build_module(network: Network) -> nn.Module:
    """The workload's module in eval mode with deterministic, calibrated weights."""
    generator = torch.Generator().manual_seed(workload_seed(network.fp32_id))
    module = _sequential(network.ops)
    _init_weights(module, generator)
    _calibrate_batchnorm(module, network, generator)
    return module.eval()


def reference_input(network: Network) -> torch.Tensor:
    generator = torch.Generator().manual_seed(workload_seed(network.fp32_id + "/input"))
    return torch.randn(network.input_shape, generator=generator)


def calibration_inputs(network: Network, count: int) -> torch.Tensor:
    """``count`` inputs from the reference input's distribution (other seeds): int8 calibration data."""
    generator = torch.Generator().manual_seed(workload_seed(network.fp32_id + "/calibration"))
    return torch.randn((count, *network.input_shape[1:]), generator=generator)


def build(network: Network) -> BuiltWorkload:
    return BuiltWorkload(network, build_module(network), reference_input(network))


@dataclass(frozen=True)
class CountedLayer:
    name: str
    macs: int
    in_elems: int
    out_elems: int


def count_module(module: nn.Module, example_input: torch.Tensor) -> tuple[list[CountedLayer], int]:
    """Count MACs by walking the built module with forward hooks (independent of cost.py).

    Returns the Conv2d/Linear layers in execution order and the module's parameter count.
    """
    layers: list[CountedLayer] = []

    def hook(sub: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(sub, nn.Conv2d):
            per_output = sub.weight.shape[1] * sub.weight.shape[2] * sub.weight.shape[3]
        else:
            per_output = sub.weight.shape[1]
        layers.append(CountedLayer(name_of[sub], per_output * output.numel(),
                                   inputs[0].numel(), output.numel()))

    name_of = {m: n for n, m in module.named_modules()}
    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            module(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return layers, sum(p.numel() for p in module.parameters())
