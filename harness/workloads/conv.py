"""Single convolution-layer workloads: standard, depthwise, pointwise, separable."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from harness.errors import UserError
from harness.workloads.ir import Activation, Conv, Network, Op

ConvKind = Literal["standard", "depthwise", "pointwise", "separable"]
CONV_KINDS: tuple[str, ...] = ("standard", "depthwise", "pointwise", "separable")

_ID_RE = re.compile(
    r"^conv-(?P<kind>standard|depthwise|pointwise|separable)"
    r"-M(?P<m>\d+)-N(?P<n>\d+)-k(?P<k>\d+)-x(?P<x>\d+)-s(?P<s>\d+)"
    r"(?:-b(?P<b>\d+))?(?P<valid>-valid)?(?:(?P<nobn>-nobn)|-(?P<act>relu6|hswish|noact))?$"
)
# Activations after BatchNorm other than the default ReLU, as id suffixes: MobileNet v2's
# ReLU6, v3's hard-swish, and the linear (BN, no activation) projections of v2 and v3.
_ACT_SUFFIX: dict[str, str] = {"relu6": "relu6", "hswish": "hswish", "none": "noact"}


class WorkloadIdError(UserError, ValueError):
    """A malformed or unknown workload id."""


@dataclass(frozen=True)
class ConvSpec:
    """One conv layer as in the MobileNet paper: M input channels, N outputs, DkxDk kernel.

    ``depthwise`` ignores N (it has M outputs) and ``pointwise`` ignores Dk (it is 1x1);
    both are kept in the spec so a layer and its twins share one set of parameters.
    Every conv is followed by BatchNorm and ``act`` (ReLU unless the id says ``-relu6``,
    ``-hswish`` or ``-noact``), or by nothing at all (``-nobn``).
    """

    kind: ConvKind
    m: int
    n: int
    k: int = 3
    x: int = 56  # input height and width (Dx)
    stride: int = 1
    batch: int = 1
    padding: Literal["same", "valid"] = "same"
    bn_relu: bool = True  # False: a bare conv (``-nobn``), no BatchNorm and no activation
    act: Activation = "relu"  # the activation after BatchNorm when bn_relu

    def __post_init__(self) -> None:
        if self.kind not in CONV_KINDS:
            raise WorkloadIdError(f"unknown conv kind {self.kind!r}; expected one of {', '.join(CONV_KINDS)}")
        for name in ("m", "n", "k", "x", "stride", "batch"):
            if getattr(self, name) < 1:
                raise WorkloadIdError(f"conv {name} must be >= 1, got {getattr(self, name)}")
        if self.k % 2 == 0 and self.padding == "same":
            raise WorkloadIdError(f"'same' padding needs an odd kernel, got k={self.k}")
        if self.act != "relu" and self.act not in _ACT_SUFFIX:
            raise WorkloadIdError(f"conv activation must be relu or one of {', '.join(_ACT_SUFFIX)}, got {self.act!r}")
        if self.act != "relu" and not self.bn_relu:
            raise WorkloadIdError("a conv without BatchNorm (-nobn) has no activation to choose")
        if self.padding == "valid" and self.k > self.x:
            raise WorkloadIdError(f"kernel {self.k} is larger than the {self.x}x{self.x} input")

    @property
    def workload_id(self) -> str:
        suffix = f"-b{self.batch}" if self.batch != 1 else ""
        suffix += "-valid" if self.padding == "valid" else ""
        suffix += "-nobn" if not self.bn_relu else ""
        suffix += f"-{_ACT_SUFFIX[self.act]}" if self.bn_relu and self.act != "relu" else ""
        return f"conv-{self.kind}-M{self.m}-N{self.n}-k{self.k}-x{self.x}-s{self.stride}{suffix}"

    @classmethod
    def from_id(cls, workload_id: str) -> ConvSpec:
        match = _ID_RE.match(workload_id)
        if not match:
            raise WorkloadIdError(
                f"{workload_id!r} is not a conv workload id "
                "(expected e.g. conv-standard-M64-N128-k3-x56-s1)"
            )
        g = match.groupdict()
        return cls(
            kind=g["kind"],  # type: ignore[arg-type]
            m=int(g["m"]), n=int(g["n"]), k=int(g["k"]), x=int(g["x"]), stride=int(g["s"]),
            batch=int(g["b"] or 1),
            padding="valid" if g["valid"] else "same",
            bn_relu=not g["nobn"],
            act=next((a for a, suffix in _ACT_SUFFIX.items() if suffix == g["act"]), "relu"),
        )

    def twin(self) -> ConvSpec:
        """The standard <-> separable counterpart with the same M, N, Dk, Dx and stride."""
        if self.kind == "standard":
            return replace(self, kind="separable")
        if self.kind == "separable":
            return replace(self, kind="standard")
        raise ValueError(f"{self.kind} layers have no standard/separable twin")

    @property
    def _act(self) -> Activation:
        return self.act if self.bn_relu else "none"

    def _depthwise(self) -> Conv:
        return Conv("dw", self.m, self.m, self.k, self.stride, groups=self.m, bn=self.bn_relu,
                    act=self._act, padding=self.padding)

    def _pointwise(self, stride: int) -> Conv:
        return Conv("pw", self.m, self.n, 1, stride, bn=self.bn_relu,
                    act=self._act, padding=self.padding)

    def ops(self) -> tuple[Op, ...]:
        if self.kind == "standard":
            return (Conv("conv", self.m, self.n, self.k, self.stride, bn=self.bn_relu,
                         act=self._act, padding=self.padding),)
        if self.kind == "depthwise":
            return (self._depthwise(),)
        if self.kind == "pointwise":
            return (self._pointwise(self.stride),)
        return (self._depthwise(), self._pointwise(1))

    def network(self) -> Network:
        return Network(self.workload_id, "conv", self.kind, self.ops(), self.m, self.x, self.batch)


def theoretical_ratio(n: int, k: int) -> float:
    """MobileNet's cost of a separable conv relative to a standard one: 1/N + 1/Dk^2."""
    return 1.0 / n + 1.0 / (k * k)
