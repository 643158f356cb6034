"""MobileNet v1 (and its standard-conv twin), v2 and v3 as layer descriptions.

Architectures follow the papers' tables:
* v1: Howard et al. 2017, Table 1 (the last depthwise layer has stride 1; the
  paper's "s2" there is a known typo, the output stays 7x7).  Width multiplier
  alpha scales every layer's channels as int(c * alpha), as in the reference code.
* "Conv MobileNet" (v1 paper, Table 4): each depthwise-separable block becomes one
  standard 3x3 convolution with the same input/output channels and stride.
* v2: Sandler et al. 2018, Table 2; channels rounded with ``make_divisible(c * alpha, 8)``
  and the last 1x1 conv widened to 1280 * alpha only when alpha > 1.
* v3: Howard et al. 2019, Tables 1 and 2; squeeze-and-excite reduces to
  ``make_divisible(expanded / 4, 8)`` channels; the head uses no BatchNorm.
"""

from __future__ import annotations

import re

from harness.workloads.conv import WorkloadIdError
from harness.workloads.ir import Block, Conv, GlobalAvgPool, Linear, Network, Op, SqueezeExcite

NUM_CLASSES = 1000

V1_ALPHAS = (1.0, 0.75, 0.5, 0.25)
V1_RESOLUTIONS = (224, 192, 160, 128)
V2_ALPHAS = (1.0, 1.4)
V3_VARIANTS = ("large", "small")

# (output channels, stride) of v1's 13 depthwise-separable blocks.
_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)

# (expansion t, output channels c, repeats n, first stride s) from the v2 paper.
_V2_BOTTLENECKS = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)

# (kernel, expanded, out, squeeze-excite, activation, stride) from the v3 paper.
_V3_LARGE = (
    (3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1), (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hswish", 2), (3, 200, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1), (3, 184, 80, False, "hswish", 1),
    (3, 480, 112, True, "hswish", 1), (3, 672, 112, True, "hswish", 1),
    (5, 672, 160, True, "hswish", 2), (5, 960, 160, True, "hswish", 1),
    (5, 960, 160, True, "hswish", 1),
)
_V3_SMALL = (
    (3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1), (5, 96, 40, True, "hswish", 2),
    (5, 240, 40, True, "hswish", 1), (5, 240, 40, True, "hswish", 1),
    (5, 120, 48, True, "hswish", 1), (5, 144, 48, True, "hswish", 1),
    (5, 288, 96, True, "hswish", 2), (5, 576, 96, True, "hswish", 1),
    (5, 576, 96, True, "hswish", 1),
)
_V3_HEAD = {"large": (960, 1280), "small": (576, 1024)}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never dropping more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _fmt_alpha(alpha: float) -> str:
    return f"{alpha:g}" if alpha != int(alpha) else f"{alpha:.1f}"


def mobilenet_v1(alpha: float = 1.0, resolution: int = 224, standard_twin: bool = False) -> Network:
    def width(c: int) -> int:
        return max(int(c * alpha), 8)

    ops: list[Op] = [Conv("conv1", 3, width(32), 3, 2)]
    cin = width(32)
    for i, (cout, stride) in enumerate(_V1_BLOCKS, start=1):
        cout = width(cout)
        if standard_twin:
            ops.append(Conv(f"block{i}.conv", cin, cout, 3, stride))
        else:
            ops.append(Block(f"block{i}", (
                Conv(f"block{i}.dw", cin, cin, 3, stride, groups=cin),
                Conv(f"block{i}.pw", cin, cout, 1),
            )))
        cin = cout
    ops += [GlobalAvgPool(), Linear("fc", cin, NUM_CLASSES)]
    family = "mobilenet_v1_conv" if standard_twin else "mobilenet_v1"
    return Network(f"{family}-{_fmt_alpha(alpha)}-{resolution}", family, "network",
                   tuple(ops), 3, resolution)


def mobilenet_v2(alpha: float = 1.0, resolution: int = 224) -> Network:
    cin = make_divisible(32 * alpha)
    ops: list[Op] = [Conv("conv1", 3, cin, 3, 2, act="relu6")]
    index = 0
    for t, c, n, s in _V2_BOTTLENECKS:
        cout = make_divisible(c * alpha)
        for repeat in range(n):
            index += 1
            stride = s if repeat == 0 else 1
            hidden = cin * t
            name = f"block{index}"
            layers: list[Op] = []
            if t != 1:
                layers.append(Conv(f"{name}.expand", cin, hidden, 1, act="relu6"))
            layers.append(Conv(f"{name}.dw", hidden, hidden, 3, stride, groups=hidden, act="relu6"))
            layers.append(Conv(f"{name}.project", hidden, cout, 1, act="none"))
            ops.append(Block(name, tuple(layers), residual=stride == 1 and cin == cout))
            cin = cout
    last = make_divisible(1280 * max(1.0, alpha))
    ops += [Conv("conv_last", cin, last, 1, act="relu6"), GlobalAvgPool(),
            Linear("classifier", last, NUM_CLASSES, dropout=0.2)]
    return Network(f"mobilenet_v2-{_fmt_alpha(alpha)}-{resolution}", "mobilenet_v2", "network",
                   tuple(ops), 3, resolution)


def mobilenet_v3(variant: str = "large", resolution: int = 224) -> Network:
    table = _V3_LARGE if variant == "large" else _V3_SMALL
    cin = 16
    ops: list[Op] = [Conv("conv1", 3, cin, 3, 2, act="hswish")]
    for index, (k, expanded, cout, se, act, stride) in enumerate(table, start=1):
        name = f"block{index}"
        layers: list[Op] = []
        if expanded != cin:
            layers.append(Conv(f"{name}.expand", cin, expanded, 1, act=act))
        layers.append(Conv(f"{name}.dw", expanded, expanded, k, stride, groups=expanded, act=act))
        if se:
            layers.append(SqueezeExcite(f"{name}.se", expanded, make_divisible(expanded / 4)))
        layers.append(Conv(f"{name}.project", expanded, cout, 1, act="none"))
        ops.append(Block(name, tuple(layers), residual=stride == 1 and cin == cout))
        cin = cout
    last_conv, hidden = _V3_HEAD[variant]
    ops += [
        Conv("conv_last", cin, last_conv, 1, act="hswish"),
        GlobalAvgPool(),
        Linear("classifier.0", last_conv, hidden, act="hswish", dropout=0.2),
        Linear("classifier.1", hidden, NUM_CLASSES),
    ]
    family = f"mobilenet_v3_{variant}"
    return Network(f"{family}-{resolution}", family, "network", tuple(ops), 3, resolution)


_NET_RE = re.compile(
    r"^(?P<family>mobilenet_v1_conv|mobilenet_v1|mobilenet_v2|mobilenet_v3_large|mobilenet_v3_small)"
    r"(?:-(?P<alpha>\d+(?:\.\d+)?))?-(?P<res>\d+)$"
)


def network_from_id(workload_id: str) -> Network:
    match = _NET_RE.match(workload_id)
    if not match:
        raise WorkloadIdError(f"{workload_id!r} is not a network id (e.g. mobilenet_v1-1.0-224)")
    family, res = match["family"], int(match["res"])
    alpha = float(match["alpha"]) if match["alpha"] else None
    if res < 32 or res % 32:
        raise WorkloadIdError(f"resolution {res} in {workload_id!r} must be a multiple of 32")
    if family.startswith("mobilenet_v3"):
        if alpha is not None:
            raise WorkloadIdError(f"{workload_id!r}: v3 ids carry no width multiplier")
        network = mobilenet_v3(family.removeprefix("mobilenet_v3_"), res)
    else:
        if alpha is None or not 0 < alpha <= 2:
            raise WorkloadIdError(f"{workload_id!r}: width multiplier must be in (0, 2]")
        if family == "mobilenet_v2":
            network = mobilenet_v2(alpha, res)
        else:
            network = mobilenet_v1(alpha, res, standard_twin=family == "mobilenet_v1_conv")
    if network.workload_id != workload_id:
        raise WorkloadIdError(f"{workload_id!r} is not canonical; did you mean {network.workload_id!r}?")
    return network
