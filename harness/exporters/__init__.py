"""One module per artifact format: how a workload's torch module becomes that format's file.

Each module has ``export(module, example, reference, path, precision, calibration) -> Exported``:
``module`` is the fp32 network in eval mode, ``example`` its seeded NCHW input and ``reference``
PyTorch's fp32 output; ``precision`` is "fp32" or "int8" (static post-training quantization,
calibrated on ``calibration``: inputs drawn from the same seeded distribution as ``example``).
The registry (``harness/registry.py``) names the module of each format; ``harness/artifacts.py``
caches what it writes.  Nothing here is imported until a format is exported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class PrecisionNotSupported(RuntimeError):
    """This format's exporter cannot produce the requested precision."""


@dataclass
class Exported:
    example: Any  # the input in the artifact's layout (a torch tensor)
    reference: Any  # the fp32 reference output in the artifact's layout
    layout: str  # "NCHW" or "NHWC"
    meta: dict[str, Any] = field(default_factory=dict)  # stored in meta.json (e.g. delegation, quantization)
