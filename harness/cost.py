"""Analytic cost model: MACs, parameters, bytes moved and arithmetic intensity.

Conventions (the same as the MobileNet papers):
* MACs count the multiply-accumulates of convolutions and fully connected layers
  (squeeze-and-excite's two 1x1 convs included); BatchNorm, activations, pooling,
  residual adds and SE's channel scaling are not MACs.
* Parameters count every learnable tensor: weights, biases, BatchNorm scale and shift.
* Bytes moved per layer are its weights plus one read of its input and one write of
  its output, i.e. no fusion and no cache reuse across layers; at fp32 (4 bytes per
  value) and int8 (1 byte).  Arithmetic intensity is MACs per byte at the workload's
  precision (``intensity_for``); ``intensity`` alone is per fp32 byte.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from harness.workloads.ir import Block, Conv, GlobalAvgPool, Linear, Network, Op, SqueezeExcite


@dataclass(frozen=True)
class LayerCost:
    name: str
    op: str  # conv | depthwise | pointwise | linear | se | pool
    in_shape: tuple[int, ...]  # (C, H, W) or (F,)
    out_shape: tuple[int, ...]
    macs: int
    params: int
    in_elems: int  # per batch (batch included)
    out_elems: int

    @property
    def weight_bytes_fp32(self) -> int:
        return 4 * self.params

    @property
    def act_bytes_fp32(self) -> int:
        return 4 * (self.in_elems + self.out_elems)

    @property
    def bytes_fp32(self) -> int:
        return self.weight_bytes_fp32 + self.act_bytes_fp32

    @property
    def bytes_int8(self) -> int:
        return self.params + self.in_elems + self.out_elems

    @property
    def intensity(self) -> float:
        return self.macs / self.bytes_fp32 if self.bytes_fp32 else 0.0

    def row(self) -> dict[str, object]:
        row = asdict(self)
        row.update(bytes_fp32=self.bytes_fp32, bytes_int8=self.bytes_int8, intensity=self.intensity)
        return row


@dataclass(frozen=True)
class NetworkCost:
    workload_id: str
    layers: tuple[LayerCost, ...]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def weight_bytes_fp32(self) -> int:
        return sum(layer.weight_bytes_fp32 for layer in self.layers)

    @property
    def act_bytes_fp32(self) -> int:
        return sum(layer.act_bytes_fp32 for layer in self.layers)

    @property
    def bytes_fp32(self) -> int:
        return self.weight_bytes_fp32 + self.act_bytes_fp32

    @property
    def bytes_int8(self) -> int:
        return sum(layer.bytes_int8 for layer in self.layers)

    def bytes_for(self, precision: str) -> int:
        return self.bytes_int8 if precision == "int8" else self.bytes_fp32

    def intensity_for(self, precision: str) -> float:
        moved = self.bytes_for(precision)
        return self.macs / moved if moved else 0.0

    @property
    def intensity(self) -> float:
        return self.macs / self.bytes_fp32 if self.bytes_fp32 else 0.0

    def totals(self) -> dict[str, float]:
        return {
            "macs": self.macs, "params": self.params, "bytes_fp32": self.bytes_fp32,
            "bytes_int8": self.bytes_int8, "weight_bytes_fp32": self.weight_bytes_fp32,
            "act_bytes_fp32": self.act_bytes_fp32, "intensity": self.intensity,
        }


def _conv_op_name(conv: Conv) -> str:
    if conv.groups == conv.cin == conv.cout and conv.groups > 1:
        return "depthwise"
    if conv.kernel == 1 and conv.groups == 1:
        return "pointwise"
    return "conv"


def _conv_cost(conv: Conv, shape: tuple[int, int, int], batch: int) -> LayerCost:
    channels, height, width = shape
    if channels != conv.cin:
        raise ValueError(f"{conv.name}: expects {conv.cin} input channels, gets {channels}")
    if conv.cin % conv.groups or conv.cout % conv.groups:
        raise ValueError(f"{conv.name}: channels not divisible by groups={conv.groups}")
    out = (conv.cout, conv.out_size(height), conv.out_size(width))
    if out[1] < 1 or out[2] < 1:
        raise ValueError(f"{conv.name}: input {height}x{width} too small for kernel {conv.kernel}")
    weights = conv.kernel * conv.kernel * (conv.cin // conv.groups) * conv.cout
    params = weights + (conv.cout if conv.bias else 0) + (2 * conv.cout if conv.bn else 0)
    return LayerCost(
        conv.name, _conv_op_name(conv), shape, out,
        macs=batch * weights * out[1] * out[2],
        params=params,
        in_elems=batch * channels * height * width,
        out_elems=batch * out[0] * out[1] * out[2],
    )


def _walk(ops: tuple[Op, ...], shape: tuple[int, ...], batch: int, rows: list[LayerCost]) -> tuple[int, ...]:
    for op in ops:
        if isinstance(op, Block):
            shape = _walk(op.ops, shape, batch, rows)
        elif isinstance(op, Conv):
            if len(shape) != 3:
                raise ValueError(f"{op.name}: convolution after flattening")
            row = _conv_cost(op, shape, batch)  # type: ignore[arg-type]
            rows.append(row)
            shape = row.out_shape
        elif isinstance(op, SqueezeExcite):
            channels, height, width = shape
            params = 2 * op.channels * op.squeeze + op.squeeze + op.channels
            rows.append(LayerCost(
                op.name, "se", shape, shape, macs=batch * 2 * op.channels * op.squeeze,
                params=params, in_elems=batch * channels * height * width,
                out_elems=batch * channels * height * width,
            ))
        elif isinstance(op, GlobalAvgPool):
            channels, height, width = shape
            rows.append(LayerCost(op.name, "pool", shape, (channels,), 0, 0,
                                  batch * channels * height * width, batch * channels))
            shape = (channels,)
        elif isinstance(op, Linear):
            if shape != (op.fin,):
                raise ValueError(f"{op.name}: expects {op.fin} features, gets {shape}")
            rows.append(LayerCost(op.name, "linear", shape, (op.fout,), batch * op.fin * op.fout,
                                  op.fin * op.fout + op.fout, batch * op.fin, batch * op.fout))
            shape = (op.fout,)
        else:  # pragma: no cover - the IR is closed
            raise TypeError(f"unknown op {op!r}")
    return shape


def network_cost(network: Network) -> NetworkCost:
    rows: list[LayerCost] = []
    _walk(network.ops, network.input_shape[1:], network.batch, rows)
    return NetworkCost(network.workload_id, tuple(rows))
