"""The measurement record: one typed shape, built and checked in one place.

Transports report what they measured with ``raw_record`` (or ``error_record`` for a job that
could not be measured); ``finalize`` turns that into a ``Measurement``: the workload's
analytic cost, the latency summary (nested ``Latency``), memory, energy, the output check
against the PyTorch reference (``OutputCheck``), the final status, an ``ErrorKind`` for
failures and a busy-machine flag. ``Measurement.to_dict()`` is what the store writes, one JSON
object per line, under ``SCHEMA_VERSION`` (run.json says which; readers migrate older runs).

``requested_delegate`` is what the job asked for (an Android delegate: cpu, xnnpack, gpu,
nnapi); ``provider`` is what the runtime reports it used (an ONNX Runtime execution
provider, TFLite's xnnpack or builtin kernels, the delegate benchmark_model applied).
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from backends.base import STATUS_ERROR, STATUS_INVALID, STATUS_OK, Artifact, Job
from harness.catalog import workload_row
from harness.measure.stats import summarize

# fp32 outputs must agree to 1e-4 of the output's scale (its largest magnitude).
OUTPUT_RTOL = 1e-4
# An int8 workload's output is compared with PyTorch's fp32 output by direction (cosine
# similarity of the flattened outputs), as int8 rounding moves every element a little.
# A single layer (conv, depthwise, pointwise, separable, fully connected) measured 0.9996 or
# more on onnxruntime and TFLite; 0.99 still rejects any wrong output (a permuted feature map
# scores about 0.3, another workload's output about 0).
INT8_MIN_COSINE_LAYER = 0.99
# Whole networks measured 0.926-0.999 on the seeded input and 0.896-0.999 on 16 other inputs
# (MobileNet v1 at 0.25/128 to 1.0/224, its standard-conv twin, v2 at 0.35/1.0/1.4, v3 large
# and small; both formats).  convbench's networks have random (seeded) weights, and such
# networks amplify a perturbation layer after layer (noise added at the input at 40 dB SNR
# leaves v1/v2/v3 at 16-25 dB), so each layer's int8 rounding (about 38 dB) ends at 10-20 dB,
# worst for the narrowest.  Another network's output or a permuted one scores within 0.06 of 0.
INT8_MIN_COSINE_NETWORK = 0.85
# Top-1 of a classifier.  With random weights the 1000 logits often have near-tied leaders, so
# a correct int8 output can put another class on top: on 16 other inputs the reference's top
# class fell to rank 2-18 in 0 to 11 of the 16 (none for v2 1.0), and on the seeded input it
# did for v1 0.25/128 (onnx), v1 0.5/160 and v2 1.4 (never for the quick suite's four
# networks), always within 5.0 times the output's own rms error of the output's top.  The
# check fails a classifier whose reference top class lies further below the output's top than
# this many rms errors: near-tied classes pass, a class pushed up on its own (one corrupted
# logit, which barely moves the cosine) does not.  top1_agrees records the strict agreement.
INT8_TOP1_MAX_GAP = 8.0
# Other processes using more than this many cores during a job make its timing suspect.
BUSY_CORES = 0.25
_FINGERPRINT_KEYS = ("machine", "cpu_model", "board_model", "cores", "memory_bytes", "os", "emulated")
# Version 2: requested_delegate and provider apart (v1 had one `delegate`), error_kind, machine_busy.
SCHEMA_VERSION = 2


class ErrorKind(enum.StrEnum):
    """Why a job has no trustworthy measurement (status error), as a value, not words in a message."""

    EXPORT = "export_failed"  # the artifact could not be exported on the host
    DEVICE = "device_failed"  # the device as a whole: unreachable, unauthorized, vanished, its worker lost
    RUNTIME = "runtime_error"  # the runtime raised while loading or running this job
    CRASH = "runner_crashed"  # the process measuring this job died
    TIMEOUT = "timeout"  # the job outlived its wall-clock limit
    NO_SAMPLES = "no_samples"  # it ran but returned no latency
    ARTIFACT = "artifact_unavailable"  # the artifact could not be brought to the device


@dataclass
class Latency:
    """The summary of one invocation's samples (each the per-call mean of a block of calls)."""

    n: int
    median: float
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    p90: float | None = None
    p99: float | None = None
    q1: float | None = None
    q3: float | None = None
    iqr: float | None = None
    cv: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_rel_width: float | None = None
    outliers: int | None = None
    block_size: int = 1
    statistic: str = "median of per-call times"
    extra: dict[str, Any] = field(default_factory=dict)  # a transport's own fields (e.g. benchmark_model's)

    @classmethod
    def from_samples(cls, samples: list[float], block_size: int) -> Latency:
        return cls(**summarize(samples).to_dict(), block_size=block_size,
                   statistic="median of per-call times" if block_size == 1 else
                   f"median of per-call means over blocks of {block_size} calls")


@dataclass
class OutputCheck:
    status: str  # match | mismatch | not_checked
    max_abs_diff: float | None = None
    scale: float | None = None
    tolerance: float | None = None  # the fp32 rule's bound on max_abs_diff
    reason: str | None = None
    rule: str | None = None  # "int8" for an int8 workload (None: the fp32 max-abs rule)
    cosine: float | None = None  # int8: of the flattened output and reference
    min_cosine: float | None = None
    top1_agrees: bool | None = None  # int8 classifier: the reference's top class is the output's top (ties count)
    top1_gap: float | None = None  # how far it is below the output's top, in rms errors of the output
    max_top1_gap: float | None = None


@dataclass
class Memory:
    peak_rss_bytes: int | None = None  # the measuring process's peak (VmHWM), or the device tool's
    baseline_rss_bytes: int | None = None  # runtime imported, model not loaded
    rss_increase_bytes: int | None = None  # the model's own: peak - baseline
    gpu_peak_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Energy:
    status: str  # ok | unavailable
    joules_per_inference: float | None = None
    joules: float | None = None
    inferences: int | None = None
    window_s: float | None = None
    sensor: str | None = None
    resolution: str | None = None
    idle_watts: float | None = None
    idle_subtracted: bool | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _partition(cls: type, data: dict[str, Any], derived: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """(the dataclass's own fields, everything else) of a stored dict; ``derived`` keys are dropped."""
    names = {f.name for f in fields(cls)} - {"extra"}
    known = {k: v for k, v in data.items() if k in names}
    rest = {k: v for k, v in data.items() if k not in names and k != "extra" and k not in derived}
    rest.update(data.get("extra") or {})
    return known, rest


def _split(cls: type, data: dict[str, Any] | None) -> Any:
    """A nested type from a dict: known fields typed, the rest kept in ``extra`` where it has one."""
    if data is None:
        return None
    known, rest = _partition(cls, data)
    return cls(**known, extra=rest) if "extra" in {f.name for f in fields(cls)} else cls(**known)


def _flat(value: Any) -> Any:
    """A nested type as the JSON object it is stored as (``extra`` merged back in)."""
    if value is None:
        return None
    data = asdict(value)
    extra = data.pop("extra", None) or {}
    return {k: v for k, v in {**data, **extra}.items() if v is not None}


@dataclass
class Measurement:
    job_id: str
    workload_id: str
    device: str
    transport: str | None
    backend: str
    threads: int
    status: str
    requested_delegate: str | None = None
    provider: str | None = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    machine_busy: bool = False
    repeat: int = 0  # this invocation of the job (0-based), one fresh runner process each
    repeats: int = 1
    latency: Latency | None = None
    memory: Memory | None = None
    energy: Energy | None = None
    output_check: OutputCheck | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # samples, thermal, fingerprint, workload cost, ...

    @property
    def delegate(self) -> str | None:
        """What one column shows and runs are matched on: the request if any, else what ran."""
        return self.requested_delegate or self.provider

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for name in ("latency", "memory", "energy", "output_check"):
            out[name] = _flat(out[name])
        out["error_kind"] = str(self.error_kind) if self.error_kind else None
        out["delegate"] = self.delegate
        return {k: v for k, v in {**out, **self.extra}.items() if v is not None or k in ("error", "status")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        known, extra = _partition(cls, data, derived=("delegate",))
        known["latency"] = _split(Latency, known.get("latency"))
        known["memory"] = _split(Memory, known.get("memory"))
        known["energy"] = _split(Energy, known.get("energy"))
        known["output_check"] = _split(OutputCheck, known.get("output_check"))
        kind = known.get("error_kind")
        known["error_kind"] = ErrorKind(kind) if kind in ErrorKind._value2member_map_ else None
        known.setdefault("status", STATUS_ERROR)
        return cls(**known, extra=extra)


def raw_record(job: Job, transport: str | None, **fields: Any) -> dict[str, Any]:
    """What a transport reports for one job (``finalize`` makes it a Measurement)."""
    return {"job_id": job.job_id, "workload_id": job.workload_id, "device": job.device, "transport": transport,
            "backend": job.backend, "threads": job.threads, "requested_delegate": job.delegate,
            "repeat": job.repeat, "repeats": job.repeats, **fields}


def error_record(job: Job, transport: str | None, message: str, kind: ErrorKind, **fields: Any) -> dict[str, Any]:
    """What a transport reports for a job it could not measure."""
    return raw_record(job, transport, status=STATUS_ERROR, error=message, error_kind=str(kind), **fields)


def migrate(record: dict[str, Any], schema: int) -> dict[str, Any]:
    """A stored record in today's shape (``schema``: the version its run.json gives)."""
    if schema < 2 and "requested_delegate" not in record:
        # v1 had one `delegate`: the requested Android delegate on adb, the observed provider elsewhere.
        record = dict(record)
        delegate = record.get("delegate")
        if record.get("transport") == "adb":
            record["requested_delegate"] = delegate
        else:
            record.setdefault("provider", delegate)
            record["requested_delegate"] = None
    return record


def probe_time(record: dict[str, Any]) -> float | None:
    """The reference-probe time a comparison divides this invocation by: the probe's compute part.

    The runner's probe times an sgemm and a 16 MiB copy.  The copy (DRAM bandwidth) is the noisy
    half on a shared VM: over 8 back-to-back A/A runs of two conv layers its per-invocation spread
    was 2-16% against the sgemm's 0.5-3%, and under a neighbour copying memory the whole probe
    slowed by 44% (its copy by 89%) while the convs slowed by 7%, so dividing by the whole probe
    turned every comparison into a false "improved".  The sgemm tracks the clock and CPU steal; a
    memory-bound slowdown of the machine is not divided out, and the drift line shows the copy apart.
    A phone's probe is a conv model, all compute: its median is the time.
    """
    probe = record.get("reference_probe")
    if not isinstance(probe, dict):
        return None
    value = probe.get("matmul_median_s") or probe.get("median_s")
    return float(value) if value else None


def fingerprint_id(fingerprint: dict[str, Any] | None) -> str | None:
    """A short stable id of the hardware and OS, for matching runs across days."""
    if not fingerprint:
        return None
    stable = {k: fingerprint.get(k) for k in _FINGERPRINT_KEYS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:12]


def check_output(output_path: Path, artifact: Artifact) -> dict[str, Any]:
    """The runtime's output against PyTorch's fp32 reference: max-abs for fp32, the int8 rule for int8."""
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
    if _is_int8(artifact.workload_id):
        return {**check_int8_output(output, reference, _is_network(artifact.workload_id)),
                "max_abs_diff": max_abs, "scale": scale}
    tolerance = OUTPUT_RTOL * scale
    return {"status": "match" if max_abs <= tolerance else "mismatch",
            "max_abs_diff": max_abs, "scale": scale, "tolerance": tolerance}


def _is_int8(workload_id: str) -> bool:
    from harness.workloads import split_precision

    return split_precision(workload_id)[1] == "int8"


def _is_network(workload_id: str) -> bool:
    """A whole network (the looser int8 cosine and the top-1 check), not a layer."""
    from harness import workloads

    try:
        return workloads.get(workload_id).kind == "network"
    except Exception:  # not a workload id this version knows: hold it to the stricter layer rule
        return False


def check_int8_output(output: Any, reference: Any, network: bool) -> dict[str, Any]:
    """An int8 output against the fp32 reference: cosine, and top-1 for a network's classifier output.

    ``top1_gap`` is how far below the output's largest logit the reference's top class is, in
    units of the output's rms error against the reference (0: it is the output's top class).
    """
    import numpy as np

    min_cosine = INT8_MIN_COSINE_NETWORK if network else INT8_MIN_COSINE_LAYER
    out = np.asarray(output, dtype=np.float64).ravel()
    ref = np.asarray(reference, dtype=np.float64).ravel()
    check: dict[str, Any] = {"rule": "int8", "min_cosine": min_cosine}
    if not np.all(np.isfinite(out)):
        return {**check, "status": "mismatch", "reason": "the output has NaN or infinite values"}
    cosine = _cosine(out, ref)
    check["cosine"] = cosine
    problems = [] if cosine >= min_cosine else [f"cosine {cosine:.4f} < {min_cosine}"]
    notes = []
    if network and np.ndim(reference) == 2 and np.shape(reference)[0] == 1 and ref.size > 1:
        top, out_top = int(np.argmax(ref)), int(np.argmax(out))
        below = float(out.max() - out[top])
        error = float(np.sqrt(np.mean((out - ref) ** 2)))
        gap = below / error if below > 0 else 0.0
        check.update(top1_agrees=below == 0, top1_gap=gap, max_top1_gap=INT8_TOP1_MAX_GAP)
        if below > 0:
            words = (f"top-1 differs: the reference's class {top} is {gap:.1f} rms errors below "
                     f"the output's class {out_top}")
            if gap > INT8_TOP1_MAX_GAP:
                problems.append(words)
            else:
                notes.append(words + f" (within {INT8_TOP1_MAX_GAP:g}: near-tied reference logits)")
    check["status"] = "mismatch" if problems else "match"
    if problems or notes:
        check["reason"] = "; ".join(problems + notes)
    return check


def _cosine(a: Any, b: Any) -> float:
    import numpy as np

    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.dot(a, b) / norms)


def finalize(raw: dict[str, Any]) -> dict[str, Any]:
    """The one place a transport's result becomes a Measurement (returned as its stored dict).

    Transports check the runtime's output against the reference themselves, while the output
    exists (``backends.protocol.RunnerSession``); here the record gains the workload's cost,
    the latency summary, the busy-machine flag and its final status.
    """
    record = dict(raw)
    try:
        record["workload"] = workload_row(record["workload_id"])
    except Exception as exc:  # an unknown id was already rejected upstream; keep the record anyway
        record["workload"] = {"error": str(exc)}
    record["device_fingerprint"] = dict(record.get("device_fingerprint") or {})
    if record["device_fingerprint"]:
        record["device_fingerprint"]["id"] = fingerprint_id(record["device_fingerprint"])
    record.pop("delegate", None)
    m = Measurement.from_dict({**record, "status": record.get("status") or STATUS_OK})
    others = m.extra.get("other_cpu_cores")
    m.machine_busy = others is not None and others > BUSY_CORES
    if m.error:
        m.status = STATUS_ERROR
        m.error_kind = m.error_kind or ErrorKind.RUNTIME
        return m.to_dict()
    samples = m.extra.get("samples_s") or []
    if samples:
        m.latency = Latency.from_samples(samples, int(m.extra.get("block_size") or 1))
    if m.latency is None:
        m.status, m.error, m.error_kind = STATUS_ERROR, "no latency samples were returned", ErrorKind.NO_SAMPLES
        return m.to_dict()
    if m.output_check is None:
        m.output_check = OutputCheck("not_checked", reason="the runtime returned no output")
    problems = list(m.problems)
    if m.output_check.status == "mismatch":
        problems.append("output differs from the PyTorch reference")
    m.problems = problems
    if m.machine_busy:
        m.warnings = [*m.warnings, f"machine was busy: other processes used {others:.2f} cores while measuring"]
    m.status = STATUS_INVALID if problems else STATUS_OK
    return m.to_dict()
