"""Export each workload once (torch .pt2, ONNX, TFLite NHWC, ExecuTorch .pte) with its reference data.

Artifacts are cached under ``$CONVBENCH_CACHE`` (default ``~/.cache/convbench``), keyed by
the workload id, a hash of the workload definitions (which fix the weights) and the
exporters' versions, so a second run never re-exports.  Every backend then runs the
identical network with the same weights; the reference output is PyTorch's (fp32, for an
``-int8`` workload too: the output check then allows the quantization error).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from backends.base import Artifact
from backends.runner import file_sha256
from harness.exporters.onnx import ONNX_OPSET
from harness.registry import FORMATS

# Inputs the int8 exporters calibrate on: drawn like the reference input, with other seeds.
CALIBRATION_SAMPLES = 32


class ExportError(RuntimeError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("CONVBENCH_CACHE", Path.home() / ".cache" / "convbench"))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def definition_hash() -> str:
    """Hash of the code that defines workloads and their weights."""
    digest = hashlib.sha256()
    folder = Path(__file__).parent / "workloads"
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def exporter_hash(fmt: str) -> str:
    """Hash of the code that writes this format (a changed int8 recipe must not reuse old artifacts)."""
    module = FORMATS[fmt].exporter.split(":")[0]
    folder = Path(__file__).parent / "exporters"
    digest = hashlib.sha256()
    for path in (folder / "__init__.py", folder / f"{module.rsplit('.', 1)[-1]}.py"):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def artifact_dir(workload_id: str, fmt: str) -> Path:
    versions = "-".join(f"{d}={_version(d)}" for d in FORMATS[fmt].exporter_dists)
    key = hashlib.sha256(f"{definition_hash()}|{exporter_hash(fmt)}|{fmt}|{versions}|opset{ONNX_OPSET}".encode()
                         ).hexdigest()[:16]
    return cache_root() / "artifacts" / workload_id / f"{fmt}-{key}"


def _load_cached(folder: Path, workload_id: str, fmt: str) -> Artifact | None:
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    return Artifact(workload_id, fmt, folder / FORMATS[fmt].filename, folder / "input.npy",
                    folder / "reference_output.npy", meta["layout"], meta["sha256"])


@contextlib.contextmanager
def _quiet(log_path: Path) -> Iterator[None]:
    """Send exporters' C++ and Python chatter to a log file instead of the terminal.

    Both levels: file descriptors 1 and 2 (C++ logs) and sys.stdout/sys.stderr (Python
    prints and progress bars, which may not be the descriptors, e.g. under a test runner).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with log_path.open("ab") as log, log_path.open("a") as text_log:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            with contextlib.redirect_stdout(text_log), contextlib.redirect_stderr(text_log):
                yield
        finally:
            text_log.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _export(workload_id: str, fmt: str, folder: Path) -> None:
    import numpy as np
    import torch

    from harness import workloads as registry
    from harness.workloads.build import build, calibration_inputs

    network = registry.get(workload_id)
    built = build(network)
    module, example = built.module, built.example_input
    with torch.inference_mode():
        reference = module(example)
    path = folder / FORMATS[fmt].filename
    calibration = calibration_inputs(network, CALIBRATION_SAMPLES) if network.precision != "fp32" else None
    exported = FORMATS[fmt].export_function()(module, example, reference, path, network.precision, calibration)
    np.save(folder / "input.npy", exported.example.numpy())
    np.save(folder / "reference_output.npy", exported.reference.numpy())
    (folder / "meta.json").write_text(json.dumps({
        **exported.meta, "workload_id": workload_id, "format": fmt, "layout": exported.layout,
        "precision": network.precision, "sha256": file_sha256(path), "exported_at": time.time(),
        "definition_hash": definition_hash(),
    }, indent=2))


def artifact_for(workload_id: str, backend: str) -> Artifact:
    """The artifact a backend runs for a workload (exported now if not cached)."""
    from harness.registry import BACKENDS

    return get_artifact(workload_id, BACKENDS[backend].format)[0]


def get_artifact(workload_id: str, fmt: str) -> tuple[Artifact, bool]:
    """The cached artifact, exporting it first when needed; returns (artifact, exported_now)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown artifact format {fmt!r}")
    folder = artifact_dir(workload_id, fmt)
    cached = _load_cached(folder, workload_id, fmt)
    if cached is not None:
        return cached, False
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Export into a scratch folder and rename it into place: a crash or Ctrl-C never
    # leaves a half-written artifact that a later run would trust.
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        with _quiet(scratch / "export.log"):
            _export(workload_id, fmt, scratch)
    except Exception as exc:
        log = (scratch / "export.log").read_text(errors="replace")[-2000:]
        _remove(scratch)
        raise ExportError(f"exporting {workload_id} to {fmt} failed: {type(exc).__name__}: {exc}\n{log}") from exc
    except BaseException:
        _remove(scratch)
        raise
    try:
        scratch.rename(folder)
    except OSError:  # another process won the race; use its copy
        _remove(scratch)
    artifact = _load_cached(folder, workload_id, fmt)
    assert artifact is not None
    return artifact, True


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
