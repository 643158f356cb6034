"""Calibration kernels: what ``harness calibrate`` runs to find a runtime's own ceilings.

They are ordinary workloads, so they go through the same export, transports and timing
as every other job (Android included: ``benchmark_model`` runs any .tflite):

* ``calib-conv-C<c>-k<k>-x<x>``: one bare ``c -> c`` conv, ``k x k``, on an ``x x x`` input
  (no BatchNorm, no activation): hundreds of MMACs over a few MiB, compute-bound on every
  runtime; its MAC/s is the compute ceiling.
* ``calib-gemv-N<n>``: one fully connected layer ``n -> n`` at batch 1, i.e. a
  matrix-vector product: every weight is read once per call and used for one MAC
  (0.25 MAC per fp32 byte), so its time is the time to stream ``4 n²`` bytes.  Weights
  rather than activations are streamed because they are constants inside the runtime:
  no input copy, output allocation or page faults of a huge tensor are timed with them,
  and no exporter can fold the op away because the vector is the model's input.  A
  working set well beyond the last-level cache gives the streaming bandwidth, one well
  inside it the cache-resident bandwidth.
"""

from __future__ import annotations

import re

from harness.workloads.conv import WorkloadIdError
from harness.workloads.ir import Conv, GlobalAvgPool, Linear, Network

_CONV_RE = re.compile(r"^calib-conv-C(?P<c>\d+)-k(?P<k>\d+)-x(?P<x>\d+)$")
_GEMV_RE = re.compile(r"^calib-gemv-N(?P<n>\d+)$")
_FORMS = "calib-conv-C<channels>-k<kernel>-x<size> or calib-gemv-N<features>"


def _parse(workload_id: str) -> tuple[str, dict[str, int]]:
    for kind, pattern in (("conv", _CONV_RE), ("gemv", _GEMV_RE)):
        match = pattern.match(workload_id.strip())
        if match:
            values = {key: int(value) for key, value in match.groupdict().items()}
            if any(value < 1 for value in values.values()):
                raise WorkloadIdError(f"calibration workload {workload_id!r}: every size must be >= 1")
            if kind == "conv" and values["k"] % 2 == 0:
                raise WorkloadIdError(f"calibration workload {workload_id!r}: the kernel must be odd ('same' padding)")
            return kind, values
    raise WorkloadIdError(f"unknown calibration workload {workload_id!r}: expected {_FORMS}")


def canonical(workload_id: str) -> str:
    kind, values = _parse(workload_id)
    if kind == "conv":
        return conv_id(values["c"], values["k"], values["x"])
    return gemv_id(values["n"])


def conv_id(channels: int, kernel: int, size: int) -> str:
    return f"calib-conv-C{channels}-k{kernel}-x{size}"


def gemv_id(features: int) -> str:
    return f"calib-gemv-N{features}"


def network(workload_id: str) -> Network:
    kind, values = _parse(workload_id)
    if kind == "conv":
        c = values["c"]
        op = Conv("conv", c, c, values["k"], bn=False, act="none")
        return Network(canonical(workload_id), "calib", "compute", (op,), c, values["x"])
    n = values["n"]
    # A 1x1 input pooled to a vector (a no-op that gives the fully connected layer its input shape).
    return Network(canonical(workload_id), "calib", "memory", (GlobalAvgPool(), Linear("fc", n, n)), n, 1)
