"""TFLite flatbuffers (litert-torch, no TensorFlow): what the tflite, litert and phone backends load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.exporters import Exported, PrecisionNotSupported


def export(module: Any, example: Any, reference: Any, path: Path, precision: str = "fp32",
           calibration: Any = None) -> Exported:
    """NHWC input (and output for feature maps), so no transposes are timed on the device."""
    import litert_torch

    if precision != "fp32":
        raise PrecisionNotSupported("int8 TFLite export is not built yet")
    nhwc = litert_torch.to_channel_last_io(module, args=[0], outputs=[0] if reference.dim() == 4 else [])
    example = example.permute(0, 2, 3, 1).contiguous()
    if reference.dim() == 4:
        reference = reference.permute(0, 2, 3, 1).contiguous()
    litert_torch.convert(nhwc.eval(), (example,)).export(str(path))
    return Exported(example, reference, "NHWC")
