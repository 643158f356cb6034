"""ONNX (torch.onnx's dynamo exporter): what onnxruntime loads.

int8 is ONNX Runtime's static post-training quantization in QDQ form: the fp32 export, then
``quantize_static`` calibrated on every calibration input.  The graph keeps float32 input and
output (QuantizeLinear/DequantizeLinear pairs inside it); onnxruntime's CPU execution provider
fuses each DequantizeLinear -> Conv -> QuantizeLinear into a QLinearConv (Gemm into QGemm, Add
and Mul into QLinearAdd/QLinearMul), so the convolutions run on its int8 kernels.

The recipe, and why:

* activations uint8 (asymmetric, per tensor), weights int8 (symmetric, per output channel):
  the U8S8 pairing onnxruntime's x86 kernels are built around.  With int8 activations on x86
  its QDQ fusion left about half of MobileNet v3's convolutions as float Conv between
  Dequantize/Quantize nodes (30 of 62 fused), with uint8 activations it fused all 62.
* ``reduce_range``: weights use 7 bits.  Without VNNI (AVX2 here) the U8S8 kernels multiply
  with VPMADDUBSW, whose 16-bit pairwise sums saturate for full-range weights: the int8
  kernels' output then drifted from the exact arithmetic of the same QDQ graph (cosine 0.965
  on MobileNet v2, 0.948 on v3, measured against the graph run unfused in float).  With 7-bit
  weights they agree (0.9985, 0.996) on any CPU, so one artifact means the same computation on
  x86 with or without VNNI and on ARM.
* MinMax calibration (the calibration inputs come from the reference input's own distribution):
  entropy calibration gave the same ranges; percentile was no better on v2 and a little better
  on v3 (cosine 0.975 against 0.965) for two to three times the export time.
* ``quant_pre_process`` (symbolic shape inference and onnxruntime's basic graph optimisation)
  first, as onnxruntime recommends: it splits HardSwish into HardSigmoid and Mul, so v3's
  multiplies run as QLinearMul instead of float.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from harness.exporters import Exported, PrecisionNotSupported

ONNX_OPSET = 18

INT8_RECIPE = {
    "tool": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "activations": "uint8, per tensor, asymmetric",
    "weights": "int8, per output channel, symmetric, 7-bit (reduce_range)",
    "calibration": "MinMax",
    "pre_process": "onnxruntime.quantization.shape_inference.quant_pre_process",
}


def export(module: Any, example: Any, reference: Any, path: Path, precision: str = "fp32",
           calibration: Any = None) -> Exported:
    if precision == "int8":
        return _export_int8(module, example, reference, Path(path), calibration)
    if precision != "fp32":
        raise PrecisionNotSupported(f"ONNX export has no precision {precision!r}")
    _export_fp32(module, example, path)
    return Exported(example, reference, "NCHW")


def _export_fp32(module: Any, example: Any, path: Path) -> None:
    import torch

    torch.onnx.export(module, (example,), str(path), opset_version=ONNX_OPSET, dynamo=True,
                      external_data=False, input_names=["input"], output_names=["output"])


def _export_int8(module: Any, example: Any, reference: Any, path: Path, calibration: Any) -> Exported:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is None or len(calibration) == 0:
        raise ValueError("int8 ONNX export needs calibration inputs")
    samples = calibration.detach().cpu().numpy().astype("float32")
    with tempfile.TemporaryDirectory(prefix="onnx-int8-", dir=path.parent) as scratch:
        fp32 = Path(scratch) / "fp32.onnx"
        prepared = Path(scratch) / "fp32-preprocessed.onnx"
        _export_fp32(module, example, fp32)
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(
            str(prepared), str(path), _Calibration(samples), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            reduce_range=True, calibrate_method=CalibrationMethod.MinMax,
        )
    return Exported(example, reference, "NCHW",
                    meta={"quantization": {**INT8_RECIPE, "calibration_samples": len(samples)}})


class _Calibration:
    """A CalibrationDataReader (onnxruntime duck-types it) over (N, C, H, W) samples, one per call."""

    def __init__(self, samples: Any) -> None:
        self._samples = samples
        self._next = 0

    def get_next(self) -> dict[str, Any] | None:
        if self._next >= len(self._samples):
            return None
        self._next += 1
        return {"input": self._samples[self._next - 1:self._next]}
