"""`harness run`: export artifacts, dispatch jobs to devices, store records as they arrive."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import platform
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.base import Artifact, Job, TimingPolicy
from harness import __version__, block_sizes
from harness.devices import Device
from harness.dispatch import DeviceWork, StopDispatch, dispatch
from harness.errors import UserError
from harness.plan import RunRequest
from harness.records import ErrorKind, error_record, finalize
from harness.registry import BACKENDS
from harness.store import DiskFull, RunWriter


def git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def provenance(devices: list[Device], workload_ids: list[str], policy: TimingPolicy,
               suite: str | None) -> dict[str, Any]:
    from backends.runner import fingerprint

    versions = {}
    for dist in ("torch", "onnxruntime", "onnx", "onnxscript", "ai-edge-litert", "litert-torch", "numpy",
                 "paramiko", "adbutils"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "convbench_version": __version__,
        "git": git_commit(),
        "command": sys.argv,
        "host": dict(fingerprint(), python_implementation=platform.python_implementation()),
        "host_versions": versions,
        "suite": suite,
        "workloads": workload_ids,
        "devices": [{"name": d.name, "transport": d.transport, "backends": list(d.backends),
                     "threads": list(d.threads), "source": d.source} for d in devices],
        "policy": policy.to_dict(),
    }


@dataclass
class RunOutcome:
    run_id: str
    path: Path
    status: str
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    reason: str | None = None  # why the run failed or stopped
    exit_code: int = 0  # 128 + the signal that interrupted it


# What CI systems, systemd and a closed terminal send, handled like Ctrl-C.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class _StopSignals:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread (once) and set ``stop``.

    A signal the process was started with ignored (``nohup``, a background job) stays
    ignored.  After ``disarm()`` (the run is being written up) signals only set ``stop``.
    """

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.received: int | None = None
        self.armed = True
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.stop.set()
        if self.received is not None or not self.armed:
            return  # already stopping: let the cleanup finish
        self.received = signum
        raise KeyboardInterrupt

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                signum = getattr(signal, name, None)
                if signum is None or signal.getsignal(signum) == signal.SIG_IGN:
                    continue
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def disarm(self) -> None:
        self.armed = False

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "SIGINT"


def export_artifacts(jobs: list[Job], report: Any, probes: Iterable[tuple[str, str]] = ()
                     ) -> tuple[dict[str, dict[str, Artifact]], dict[tuple, str]]:
    """Artifacts per backend; export failures per (workload, format).

    ``probes``: (workload, backend) of the transports' reference probes, exported beside the jobs'.
    """
    from harness.artifacts import ExportError, get_artifact

    needed: dict[tuple[str, str], None] = {}
    for job in jobs:
        needed[(job.workload_id, BACKENDS[job.backend].format)] = None
    for workload_id, backend in probes:
        needed[(workload_id, BACKENDS[backend].format)] = None
    by_format: dict[str, dict[str, Artifact]] = {}
    failures: dict[tuple, str] = {}
    for index, (workload_id, fmt) in enumerate(needed, start=1):
        report(f"[{index}/{len(needed)}] {workload_id} -> {fmt}", None)
        started = time.monotonic()
        try:
            artifact, exported = get_artifact(workload_id, fmt)
        except ExportError as exc:
            failures[(workload_id, fmt)] = str(exc).splitlines()[0]
            report(f"[{index}/{len(needed)}] {workload_id} -> {fmt}: FAILED", False)
            continue
        by_format.setdefault(fmt, {})[workload_id] = artifact
        if exported:
            report(f"[{index}/{len(needed)}] exported {workload_id} -> {fmt} "
                   f"in {time.monotonic() - started:.1f}s", True)
    artifacts = {backend: by_format.get(BACKENDS[backend].format, {}) for backend in {j.backend for j in jobs}}
    return artifacts, failures


def probe_workloads(devices: Iterable[Any], jobs: list[Job]) -> list[tuple[str, str]]:
    """(workload, backend) of every reference probe a device with jobs times on itself."""
    from harness import registry

    used = {(job.device, job.backend) for job in jobs}
    probes = []
    for device in devices:
        workload = registry.transport(device.transport).probe_workload
        probes += [(workload, backend) for name, backend in sorted(used) if workload and name == device.name]
    return probes


# ---------------------------------------------------------------- events (drawn by the CLI)
@dataclass(frozen=True)
class ExportProgress:
    message: str
    ok: bool | None  # None: under way; True: done (exported now); False: failed


@dataclass(frozen=True)
class MeasuringStarted:
    jobs_per_device: dict[str, int]
    already_recorded: int  # export failures, recorded before any device starts


@dataclass(frozen=True)
class JobRecorded:
    job: Job
    record: dict[str, Any]


@dataclass(frozen=True)
class DeviceState:
    device: str
    state: str


@dataclass(frozen=True)
class DeviceNotice:
    """Something a device reported that deserves a line of its own (a cool-down that timed out)."""

    device: str
    message: str


@dataclass(frozen=True)
class Interrupted:
    signal_name: str


@dataclass(frozen=True)
class Problem:
    message: str


Event = ExportProgress | MeasuringStarted | JobRecorded | DeviceState | DeviceNotice | Interrupted | Problem


def execute(request: RunRequest, on_event: Callable[[Event], None] = lambda event: None) -> RunOutcome:
    """Measure a request's jobs and store every record as it arrives; progress goes out as events."""
    devices, policy, results_dir = request.devices, request.policy, request.results_dir
    try:
        writer = RunWriter(results_dir, provenance(devices, request.workload_ids, policy, request.suite))
        seed = request.order_seed if request.order_seed is not None else random.SystemRandom().randrange(2 ** 32)
        writer.update(skipped=list(request.skipped), jobs=len(request.jobs), repeats=request.repeats,
                      order_seed=seed, **({"cluster": request.cluster} if request.cluster else {}))
    except OSError as exc:
        raise UserError(str(exc) if isinstance(exc, DiskFull) else
                        f"cannot write results to {results_dir}: {exc.filename or ''}: {exc.strerror or exc}") \
            from None
    # Fast layers are timed in blocks: reuse the block sizes earlier runs in this store chose.
    jobs = block_sizes.fix(request.jobs, block_sizes.load(results_dir))
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    status = "interrupted"
    reason: str | None = None
    stop = threading.Event()
    signals = _StopSignals(stop)

    def store(record: dict[str, Any]) -> bool:
        """Append one record; False (and stop the run) once the disk is full."""
        if writer.disk_full or writer.closed:
            return False  # the disk is full, or the run was written up (a device outlived its grace)
        try:
            writer.append(record)
        except DiskFull:
            stop.set()
            return False
        records.append(record)
        return True

    try:
        with signals:
            try:
                artifacts, failures = export_artifacts(jobs, lambda message, ok: on_event(ExportProgress(message, ok)),
                                                       probe_workloads(devices, jobs))
                artifact_of = {(j.job_id): artifacts[j.backend].get(j.workload_id) for j in jobs}
                for job in jobs:
                    failure = failures.get((job.workload_id, BACKENDS[job.backend].format))
                    if failure:
                        store(finalize(error_record(job, None, failure, ErrorKind.EXPORT)))
                on_event(MeasuringStarted({d.name: sum(1 for j in jobs if j.device == d.name) for d in devices},
                                          len(records)))

                def on_record(job: Job, raw: dict[str, Any]) -> None:
                    record = finalize(raw)
                    with lock:
                        if not store(record):
                            raise StopDispatch(writer.disk_full or "results are not being stored")
                        on_event(JobRecorded(job, record))

                def on_state(device: str, state: str) -> None:
                    on_event(DeviceState(device, state))

                def on_notice(device: str, message: str) -> None:
                    on_event(DeviceNotice(device, message))

                work = [DeviceWork(d, [j for j in jobs if j.device == d.name and artifact_of[j.job_id] is not None])
                        for d in devices]
                if writer.disk_full:  # not one more job: nothing it measured could be stored
                    work = []
                if request.cluster and work:  # scale-out on Dask distributed (harness/cluster): same callbacks
                    from harness.cluster import cluster_dispatch

                    with contextlib.suppress(StopDispatch):  # the disk filled: stop, say so below
                        cluster_dispatch(work, artifacts, policy, on_record, on_state, stop,
                                         scheduler=request.cluster, security=request.cluster_security,
                                         on_notice=on_notice)
                else:
                    dispatch(work, artifacts, policy, on_record, on_state, stop, seed=seed, on_notice=on_notice)
                status, reason = _final_status(records, writer.disk_full)
            finally:
                signals.disarm()  # from here on a signal must not cut the write-up short
    except KeyboardInterrupt:
        stop.set()
        status = "interrupted"
        reason = f"stopped by {signals.name}"
        on_event(Interrupted(signals.name))
    except BaseException as exc:
        status = "failed"
        reason = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        with lock:
            try:
                writer.finish(status, **({"reason": reason} if reason else {}))
            except OSError as exc:  # even the reserve did not make room: say so, keep the records
                on_event(Problem(f"error: cannot mark {writer.path / 'run.json'} {status}: {exc.strerror or exc}"))
            with contextlib.suppress(OSError):  # losing the choice only means choosing again next time
                block_sizes.remember(results_dir, records)
    exit_code = 128 + signals.received if status == "interrupted" and signals.received else 0
    return RunOutcome(writer.run_id, writer.path, status, records, list(request.skipped), reason=reason,
                      exit_code=exit_code)


def _final_status(records: list[dict[str, Any]], disk_full: str | None) -> tuple[str, str | None]:
    """complete, or failed with the reason: the disk filled, or not one job succeeded."""
    if disk_full:
        return "failed", disk_full
    counts: dict[str, int] = {}
    for record in records:
        counts[record.get("status", "unknown")] = counts.get(record.get("status", "unknown"), 0) + 1
    if not counts.get("ok"):
        detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no job ran"
        return "failed", f"no job succeeded ({detail})"
    return "complete", None
