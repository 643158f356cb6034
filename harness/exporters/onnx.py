"""ONNX (torch.onnx's dynamo exporter): what onnxruntime loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.exporters import Exported, PrecisionNotSupported

ONNX_OPSET = 18


def export(module: Any, example: Any, reference: Any, path: Path, precision: str = "fp32",
           calibration: Any = None) -> Exported:
    import torch

    if precision != "fp32":
        raise PrecisionNotSupported("int8 ONNX export is not built yet")
    torch.onnx.export(module, (example,), str(path), opset_version=ONNX_OPSET, dynamo=True,
                      external_data=False, input_names=["input"], output_names=["output"])
    return Exported(example, reference, "NCHW")
