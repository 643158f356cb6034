"""``torch.export`` programs (.pt2): what the torch and torch-compile backends load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.exporters import Exported, PrecisionNotSupported


def export(module: Any, example: Any, reference: Any, path: Path, precision: str = "fp32",
           calibration: Any = None) -> Exported:
    import torch

    if precision != "fp32":
        raise PrecisionNotSupported("PyTorch programs are exported in fp32 only")
    torch.export.save(torch.export.export(module, (example,)), str(path))
    return Exported(example, reference, "NCHW")
