"""A tiny layer description shared by the cost model and the PyTorch builder.

Every workload (a single conv layer or a whole MobileNet) is a ``Network``: a tuple
of ops over an NCHW input.  The cost model walks these ops analytically; the
builder turns the same ops into ``torch.nn`` modules.  Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

INT8_SUFFIX = "-int8"  # on any workload id: its int8 variant
PRECISIONS = ("fp32", "int8")

Activation = Literal["relu", "relu6", "hswish", "hsigmoid", "none"]


@dataclass(frozen=True)
class Conv:
    """Conv2d (no bias unless ``bias``), optionally followed by BatchNorm and an activation."""

    name: str
    cin: int
    cout: int
    kernel: int
    stride: int = 1
    groups: int = 1
    bn: bool = True
    act: Activation = "relu"
    bias: bool = False
    padding: Literal["same", "valid"] = "same"

    @property
    def pad(self) -> int:
        # MobileNet's "same" padding for odd kernels: k // 2 on each side.
        return self.kernel // 2 if self.padding == "same" else 0

    def out_size(self, size: int) -> int:
        return (size + 2 * self.pad - self.kernel) // self.stride + 1


@dataclass(frozen=True)
class SqueezeExcite:
    """MobileNet v3 squeeze-and-excite: pool, 1x1 conv + ReLU, 1x1 conv + hard-sigmoid, scale."""

    name: str
    channels: int
    squeeze: int


@dataclass(frozen=True)
class Block:
    """A sequence of ops, optionally with an identity shortcut (inverted residual)."""

    name: str
    ops: tuple[Op, ...]
    residual: bool = False


@dataclass(frozen=True)
class GlobalAvgPool:
    name: str = "pool"


@dataclass(frozen=True)
class Linear:
    name: str
    fin: int
    fout: int
    act: Activation = "none"
    dropout: float = 0.0


Op = Conv | SqueezeExcite | Block | GlobalAvgPool | Linear


@dataclass(frozen=True)
class Network:
    """A workload: ops applied to a (batch, channels, size, size) input."""

    workload_id: str
    family: str  # "conv" or a network family such as "mobilenet_v1"
    kind: str  # standard | depthwise | pointwise | separable | network
    ops: tuple[Op, ...]
    in_channels: int
    in_size: int
    batch: int = 1
    # "int8": the same network (same weights, same input) statically quantized by each exporter.
    precision: str = "fp32"

    @property
    def fp32_id(self) -> str:
        """The id of the fp32 network this is (itself, or the id without ``-int8``): it seeds the weights."""
        return self.workload_id.removesuffix(INT8_SUFFIX) if self.precision == "int8" else self.workload_id

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.in_size, self.in_size)


def flatten(ops: tuple[Op, ...]) -> list[Op]:
    """All leaf ops in execution order (blocks expanded)."""
    leaves: list[Op] = []
    for op in ops:
        if isinstance(op, Block):
            leaves.extend(flatten(op.ops))
        else:
            leaves.append(op)
    return leaves
