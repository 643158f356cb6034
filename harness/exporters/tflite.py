"""TFLite flatbuffers (litert-torch, no TensorFlow): what the tflite, litert and phone backends load.

int8 is the fp32 .tflite (the same NHWC conversion) statically quantized by ai-edge-quantizer,
calibrated on every calibration input: TFLite's own int8 scheme, activations int8 asymmetric
per tensor and weights int8 symmetric per output channel, with int32 biases.  Every op the
recipe knows is quantized (convolutions, depthwise convolutions, fully connected, add, mul,
mean, pad, hard-swish); only the graph's input and output stay float32, with one QUANTIZE
after the input and one DEQUANTIZE before the output, so the runner feeds the same float
input and the output is compared with the same reference.  XNNPACK runs the int8 ops with its
QS8 kernels.

Why ai-edge-quantizer and not litert-torch's PT2E quantizer: with these versions PT2E made
the model's input and output int8 (the runner would have to quantize the reference input
itself) and leaves hard-swish and ReLU6 unannotated (v3's hard-swish stays float; ReLU6 shares
the range of the convolution before it).  ai-edge-quantizer lets the graph input and output
stay float and quantizes hard-swish too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.exporters import Exported, PrecisionNotSupported

INT8_RECIPE = {
    "tool": "ai_edge_quantizer static_wi8_ai8 (graph input and output kept float32)",
    "activations": "int8, per tensor, asymmetric",
    "weights": "int8, per output channel, symmetric",
    "calibration": "min/max",
}

# ai-edge-quantizer quantizes a constant tensor above this size in row chunks, and that path
# fails for per-channel convolution weights (its scales do not broadcast to the flattened rows:
# google-ai-edge/ai-edge-quantizer issues 472 and 512).  MobileNet v1's standard-conv twin has
# 1024x3x3x1024 float weights (36 MiB); _per_channel_in_slices quantizes such tensors in slices
# of output channels, each below the limit, which the library quantizes correctly.
_AEQ_CHUNKED_BYTES = 32 * 1024 * 1024


def export(module: Any, example: Any, reference: Any, path: Path, precision: str = "fp32",
           calibration: Any = None) -> Exported:
    """NHWC input (and output for feature maps), so no transposes are timed on the device."""
    if precision not in ("fp32", "int8"):
        raise PrecisionNotSupported(f"TFLite export has no precision {precision!r}")
    example = example.permute(0, 2, 3, 1).contiguous()
    feature_map = reference.dim() == 4
    if feature_map:
        reference = reference.permute(0, 2, 3, 1).contiguous()
    if precision == "fp32":
        _convert_fp32(module, example, feature_map, Path(path))
        return Exported(example, reference, "NHWC")
    if calibration is None or len(calibration) == 0:
        raise ValueError("int8 TFLite export needs calibration inputs")
    samples = calibration.permute(0, 2, 3, 1).contiguous().detach().cpu().numpy().astype("float32")
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="tflite-int8-", dir=path.parent) as scratch:
        fp32 = Path(scratch) / "fp32.tflite"
        _convert_fp32(module, example, feature_map, fp32)
        _quantize_int8(fp32, samples, path)
    return Exported(example, reference, "NHWC",
                    meta={"quantization": {**INT8_RECIPE, "calibration_samples": len(samples)}})


def _convert_fp32(module: Any, example_nhwc: Any, feature_map: bool, path: Path) -> None:
    import litert_torch

    nhwc = litert_torch.to_channel_last_io(module, args=[0], outputs=[0] if feature_map else [])
    litert_torch.convert(nhwc.eval(), (example_nhwc,)).export(str(path))


def int8_recipe() -> Any:
    """ai-edge-quantizer's static int8 recipe for every supported op, graph input and output left float."""
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    recipes = recipe_manager.RecipeManager()
    recipes.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                              activation_num_bits=8, weight_num_bits=8)
    # Later rules win: the virtual INPUT/OUTPUT ops are not quantized, so the quantizer puts a
    # QUANTIZE after the float input and a DEQUANTIZE before the float output.
    for io in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
        recipes.add_quantization_config(".*", io, algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    return recipes.get_quantization_recipe()


def _quantize_int8(fp32_path: Path, samples: Any, path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer

    signatures = Interpreter(model_path=str(fp32_path)).get_signature_list()
    if len(signatures) != 1:
        raise RuntimeError(f"expected one signature in the fp32 model, found {list(signatures)}")
    (key, signature), = signatures.items()
    (name,) = signature["inputs"]
    quant = quantizer.Quantizer(str(fp32_path))
    quant.load_quantization_recipe(int8_recipe())
    calibration = quant.calibrate({key: [{name: samples[i:i + 1]} for i in range(len(samples))]})
    with _per_channel_in_slices():
        result = quant.quantize(calibration)
    result.export_model(str(path), overwrite=True)


def uniform_quantize_in_slices(original: Any, limit: int) -> Any:
    """``uniform_quantize`` that hands per-channel tensors above ``limit`` bytes over in channel slices."""
    import numpy as np

    def quantize(tensor_data: Any, params: Any, is_blockwise_quant: bool = False) -> Any:
        scale = np.asarray(params.scale)
        if is_blockwise_quant or tensor_data.ndim <= 2 or tensor_data.nbytes <= limit or scale.size <= 1:
            return original(tensor_data, params, is_blockwise_quant)
        axis = params.quantized_dimension
        channels = tensor_data.shape[axis]
        per_channel = tensor_data.nbytes // channels
        step = max(1, (limit // 2) // max(per_channel, 1))
        scale = scale.reshape(-1)
        zero_point = np.asarray(params.zero_point).reshape(-1)
        if scale.size != channels:
            return original(tensor_data, params, is_blockwise_quant)
        pieces = []
        for start in range(0, channels, step):
            part = slice(start, min(start + step, channels))
            piece = np.take(tensor_data, np.arange(channels)[part], axis=axis)
            pieces.append(original(piece, dataclasses.replace(
                params, scale=scale[part], zero_point=zero_point[part], quantized_data=None)))
        return np.concatenate(pieces, axis=axis)

    return quantize


@contextlib.contextmanager
def _per_channel_in_slices() -> Iterator[None]:
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as module

    original = module.uniform_quantize
    module.uniform_quantize = uniform_quantize_in_slices(original, _AEQ_CHUNKED_BYTES)
    try:
        yield
    finally:
        module.uniform_quantize = original
