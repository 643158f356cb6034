"""ExecuTorch programs (.pte) lowered to XNNPACK: what the executorch backend loads.

``torch.export`` -> ``to_edge_transform_and_lower`` with the XNNPACK partitioner ->
``to_executorch``; input and output stay NCHW (XNNPACK converts layouts inside its
delegate).  For int8 the fp32 module is quantized first with ExecuTorch's XNNPACK quantizer
(PT2E static post-training quantization: symmetric, per-channel weights, int8 activations
observed on every calibration sample), then exported and lowered the same way.

What XNNPACK took and what it left to ExecuTorch's portable kernels is counted here, at
export, from the lowered graph (``executorch.devtools.backend_debug.get_delegation_info``) and
returned as ``meta["delegation"]``; the host copies it into every record of this artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.exporters import Exported, PrecisionNotSupported

INT8_RECIPE = {
    "tool": "executorch XNNPACKQuantizer, get_symmetric_quantization_config(is_per_channel=True), "
            "torchao prepare_pt2e/convert_pt2e",
    "activations": "int8, per tensor, asymmetric",
    "weights": "int8, per output channel, symmetric ([-127, 127])",
    "calibration": "histogram (activations), min/max (weights)",
    "batch_norm": "folded into the convolution before quantizing",
}
PLUMBING = frozenset({"getitem"})  # graph nodes that are not ops: left out of the delegation counts


def export(module: Any, example: Any, reference: Any, path: Path, precision: str = "fp32",
           calibration: Any = None) -> Exported:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if precision not in ("fp32", "int8"):
        raise PrecisionNotSupported(f"ExecuTorch export has no {precision!r} precision")
    meta: dict[str, Any] = {}
    if precision == "int8":
        module = _quantize(module, example, calibration)
        meta["quantization"] = {**INT8_RECIPE, "calibration_samples": len(calibration)}
    program = torch.export.export(module, (example,))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    meta["delegation"] = delegation_summary(lowered.exported_program().graph_module)
    executorch_program = lowered.to_executorch()
    Path(path).write_bytes(executorch_program.buffer)
    return Exported(example, reference, "NCHW", meta)


def _quantize(module: Any, example: Any, calibration: Any) -> Any:
    """The PT2E-quantized module (a graph module with quantize/dequantize pairs around each op)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calibration is None or len(calibration) == 0:
        raise ValueError("int8 export needs calibration inputs")
    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    graph = torch.export.export(module, (example,)).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(len(calibration)):  # one sample at a time, shaped like the example (batch 1)
            prepared(calibration[i:i + 1])
    return convert_pt2e(prepared)


def delegation_summary(graph_module: Any) -> dict[str, Any]:
    """Ops of the lowered graph that XNNPACK runs vs those left to ExecuTorch's own kernels.

    ``ops_not_delegated`` names each op type left outside the delegate (with its count), e.g.
    ``aten_mean_dim`` when XNNPACK cannot take a pooling; ``ops_delegated`` the same for
    the delegate's.  Quantize/dequantize nodes count like any op; tuple unpacking does not.
    """
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    # getitem nodes only unpack tuples (a delegate's outputs, BatchNorm's): no computation
    ops = sorted((b for b in info.delegation_by_operator.values() if b.op_type not in PLUMBING),
                 key=lambda b: b.op_type)
    return {
        "backend": "XnnpackBackend",
        "delegated": sum(b.delegated for b in ops),
        "not_delegated": sum(b.non_delegated for b in ops),
        "delegated_subgraphs": info.num_delegated_subgraphs,
        "ops_delegated": {b.op_type: b.delegated for b in ops if b.delegated},
        "ops_not_delegated": {b.op_type: b.non_delegated for b in ops if b.non_delegated},
    }
