"""Turn a transport's raw result into a self-describing measurement record.

Adds the workload's analytic cost, the latency summary, the output check against the
PyTorch reference and the final status.  Every transport's results pass through here,
so records look alike whichever way they travelled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from backends.base import STATUS_ERROR, STATUS_INVALID, STATUS_OK, Artifact
from harness.catalog import workload_row
from harness.measure.stats import summarize

# fp32 outputs must agree to 1e-4 of the output's scale (its largest magnitude).
OUTPUT_RTOL = 1e-4
# Other processes using more than this many cores during a job make its timing suspect.
BUSY_CORES = 0.25
_FINGERPRINT_KEYS = ("machine", "cpu_model", "board_model", "cores", "memory_bytes", "os", "emulated")


def fingerprint_id(fingerprint: dict[str, Any] | None) -> str | None:
    """A short stable id of the hardware and OS, for matching runs across days."""
    if not fingerprint:
        return None
    stable = {k: fingerprint.get(k) for k in _FINGERPRINT_KEYS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:12]


def check_output(output_path: Path, artifact: Artifact) -> dict[str, Any]:
    import numpy as np

    reference = np.load(artifact.reference_output_path)
    try:
        output = np.load(output_path)
    except (OSError, ValueError) as exc:
        return {"status": "not_checked", "reason": f"cannot read output: {exc}"}
    if output.shape != reference.shape:
        output = output.reshape(reference.shape) if output.size == reference.size else output
    if output.shape != reference.shape:
        return {"status": "mismatch", "reason": f"shape {output.shape} != reference {reference.shape}"}
    scale = float(np.max(np.abs(reference))) or 1.0
    max_abs = float(np.max(np.abs(output.astype(np.float64) - reference)))
    tolerance = OUTPUT_RTOL * scale
    return {"status": "match" if max_abs <= tolerance else "mismatch",
            "max_abs_diff": max_abs, "scale": scale, "tolerance": tolerance}


def finalize(record: dict[str, Any], artifact: Artifact | None) -> dict[str, Any]:
    record = dict(record)
    try:
        record["workload"] = workload_row(record["workload_id"])
    except Exception as exc:  # an unknown id was already rejected upstream; keep the record anyway
        record["workload"] = {"error": str(exc)}
    record["device_fingerprint"] = dict(record.get("device_fingerprint") or {})
    if record["device_fingerprint"]:
        record["device_fingerprint"]["id"] = fingerprint_id(record["device_fingerprint"])
    if record.get("error"):
        record["status"] = STATUS_ERROR
        return record
    samples = record.get("samples_s") or []
    if samples:
        block = int(record.get("block_size") or 1)
        record["latency"] = {**summarize(samples).to_dict(), "block_size": block,
                             "statistic": "median of per-call times" if block == 1 else
                             f"median of per-call means over blocks of {block} calls"}
    if not record.get("latency"):
        record.update(status=STATUS_ERROR, error="no latency samples were returned")
        return record
    problems = list(record.get("problems") or [])
    output_path = record.pop("output_path", None)
    if output_path and artifact is not None:
        record["output_check"] = check_output(Path(output_path), artifact)
    elif not record.get("output_check"):
        record["output_check"] = {"status": "not_checked",
                                  "reason": record.get("output_fetch_error") or "the runtime returned no output"}
    if record["output_check"]["status"] == "mismatch":
        problems.append("output differs from the PyTorch reference")
    record["problems"] = problems
    warnings = list(record.get("warnings") or [])
    others = record.get("other_cpu_cores")
    if others is not None and others > BUSY_CORES:
        warnings.append(f"machine was busy: other processes used {others:.2f} cores while measuring")
    record["warnings"] = warnings
    record["status"] = STATUS_INVALID if problems else STATUS_OK
    return record
