"""THE registry: what each backend is, and which transports exist.

A *backend* is what users pass to ``--backends``: a runtime that executes one artifact
format on one kind of processor. Everything convbench needs to know about one lives in its
``Backend`` entry here: the artifact format (and so the exporter), the runner's runtime, the
modules it needs on the host, the optional extra that installs them, the install hint.

A *transport* moves the runner and artifacts to a device. Each transport module declares a
``TRANSPORT = TransportInfo(...)`` with its devices.yaml fields, their validation and its
capabilities; ``TRANSPORT_MODULES`` below names the modules. Adding a backend touches this
file and the runner's runtime class; adding a transport touches one module of ``backends/``,
its line here, and its tests.

This module imports nothing heavy: ``harness --help`` and devices.yaml validation use it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ArtifactFormat:
    name: str  # "torch" (.pt2), "onnx", "tflite", "pte" (ExecuTorch)
    filename: str
    exporter: str  # "module:function" (see harness/exporters): writes one workload to a path
    export_modules: tuple[str, ...]  # needed on the host to export it
    exporter_dists: tuple[str, ...]  # distributions whose versions key the artifact cache

    def export_function(self) -> Callable[..., Any]:
        module, function = self.exporter.split(":")
        return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class Backend:
    name: str
    format: str  # key of FORMATS
    runtime: str  # the runner's runtime (backends/runner.py RUNTIMES)
    device: str  # "cpu", "cuda", "gpu" or "npu" (LiteRT's accelerators): where the runtime computes
    run_modules: tuple[str, ...]  # needed wherever the runner runs it (this host, for local devices)
    extra: str  # the pyproject extra that installs them ("core": always installed)
    precisions: tuple[str, ...] = ("fp32",)  # workload precisions it runs ("int8": the -int8 ids)
    label: str = ""  # how reports describe it, when its name alone could mislead
    # The transport delegates (Android: xnnpack, gpu, nnapi) it can run with; None: every one.
    delegates: tuple[str, ...] | None = None

    def install_hint(self) -> str:
        return "pip install convbench" if self.extra == "core" else f"pip install 'convbench[{self.extra}]'"

    def missing_modules(self, runs_on_host: bool) -> list[str]:
        """Modules this host lacks to export the artifact, and to run it when the device is this host."""
        needs = [*FORMATS[self.format].export_modules, *(self.run_modules if runs_on_host else ())]
        return [m for m in dict.fromkeys(needs) if not _importable(m)]


FORMATS: dict[str, ArtifactFormat] = {f.name: f for f in (
    ArtifactFormat("torch", "model.pt2", "harness.exporters.torch_program:export", ("torch",), ("torch",)),
    ArtifactFormat("onnx", "model.onnx", "harness.exporters.onnx:export", ("onnx", "onnxscript"),
                   ("torch", "onnx", "onnxscript", "onnxruntime")),
    ArtifactFormat("tflite", "model.tflite", "harness.exporters.tflite:export", ("litert_torch",),
                   ("torch", "litert-torch", "ai-edge-quantizer", "ai-edge-litert")),
    ArtifactFormat("pte", "model.pte", "harness.exporters.executorch:export", ("executorch",),
                   ("torch", "executorch", "torchao")),
)}

BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("torch", "torch", "torch", "cpu", ("torch",), "core", label="PyTorch eager"),
    Backend("torch-cuda", "torch", "torch", "cuda", ("torch",), "core", label="PyTorch eager, CUDA"),
    Backend("torch-compile", "torch", "torch-compile", "cpu", ("torch",), "core",
            label="torch.compile (inductor)"),
    Backend("torch-compile-cuda", "torch", "torch-compile", "cuda", ("torch",), "core",
            label="torch.compile (inductor), CUDA"),
    Backend("onnxruntime", "onnx", "onnxruntime", "cpu", ("onnxruntime",), "onnx", ("fp32", "int8")),
    # fp32 only on CUDA: whether its provider runs the QDQ models' convs in int8 is unchecked here.
    Backend("onnxruntime-cuda", "onnx", "onnxruntime", "cuda", ("onnxruntime",), "onnx"),
    Backend("tflite", "tflite", "tflite", "cpu", ("ai_edge_litert",), "tflite", ("fp32", "int8"),
            label="LiteRT Interpreter"),
    Backend("litert", "tflite", "litert", "cpu", ("ai_edge_litert",), "tflite", ("fp32", "int8"),
            label="LiteRT CompiledModel"),
    # The accelerator must run the whole model (int8 included) or the job fails: never a CPU fallback.
    Backend("litert-gpu", "tflite", "litert", "gpu", ("ai_edge_litert",), "tflite", ("fp32", "int8"),
            label="LiteRT CompiledModel, GPU accelerator"),
    Backend("litert-npu", "tflite", "litert", "npu", ("ai_edge_litert",), "tflite", ("fp32", "int8"),
            label="LiteRT CompiledModel, NPU accelerator"),
    Backend("executorch", "pte", "executorch", "cpu", ("executorch",), "executorch", ("fp32", "int8"),
            label="ExecuTorch (XNNPACK)", delegates=("xnnpack",)),  # lowered to XNNPACK at export
)}


def backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}") from None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# ---------------------------------------------------------------- transports
Fail = Callable[[str, str], None]  # (field, message): a devices.yaml error at that field's line


@dataclass(frozen=True)
class TransportInfo:
    """What a transport declares about itself (``TRANSPORT`` in its module)."""

    name: str
    fields: Mapping[str, str]  # its own devices.yaml fields -> what each holds
    open: Callable[[Any], Any]  # Device -> Transport (heavy imports happen here)
    default_backends: tuple[str, ...] = ("torch", "onnxruntime", "tflite")
    allowed_backends: tuple[str, ...] | None = None  # None: every backend
    allowed_backends_why: str = ""  # e.g. "run benchmark_model, which runs tflite only"
    delegates: tuple[str, ...] = ()  # delegates a job may request (empty: none)
    default_delegates: tuple[str, ...] = ()
    # A workload the transport times on the device beside every job as its reference probe (the
    # runner has its own numpy probe; a phone's benchmark_model can only time a model).
    probe_workload: str | None = None
    # The runner runs in this host's Python: its jobs must never overlap other such jobs (the
    # timing of one would include the load of another), and its backends' modules must be here.
    runs_on_host: bool = False
    validate: Callable[[Mapping[str, Any], Fail], None] = field(default=lambda options, fail: None)
    # Device -> the machine it measures on: two devices.yaml entries naming one board or phone
    # share it, and their jobs are then scheduled in turn, never at the same time.
    machine: Callable[[Any], str] = field(default=lambda device: f"{device.transport}:{device.name}")


THIS_HOST = "this host"  # the machine of every runs_on_host device (a devices.yaml `machine:` may name it too)

TRANSPORT_MODULES: dict[str, str] = {
    "local": "backends.local",
    "ssh": "backends.ssh",
    "adb": "backends.android",
}


def transport(name: str) -> TransportInfo:
    try:
        module = TRANSPORT_MODULES[name]
    except KeyError:
        raise KeyError(f"unknown transport {name!r}; expected one of {', '.join(TRANSPORT_MODULES)}") from None
    return importlib.import_module(module).TRANSPORT
