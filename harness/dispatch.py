"""Run jobs on their devices: one worker thread per device, devices in parallel.

Each device runs its jobs in sequence, batch by batch ((backend, threads, delegate)
groups).  Transports whose runner runs on this host share one lock, so their jobs never
overlap each other (or the timing of one would include the load of another).  A device that fails as a
whole marks its remaining jobs failed with the reason; the other devices finish.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backends.base import STATUS_ERROR, Artifact, DeviceError, Job, TimingPolicy, Transport
from harness import registry
from harness.devices import Device
from harness.records import ErrorKind, error_record

HOST_LOCK = threading.Lock()  # jobs whose runner runs on this host never overlap
# After Ctrl-C (or SIGTERM/SIGHUP), how long devices get to stop their runners and clean up.
STOP_GRACE_S = 30.0


class StopDispatch(Exception):
    """Raised by a record callback to stop its device at once (e.g. results can no longer be stored).

    The device's remaining jobs are not marked failed: nobody could record that either.
    """

RecordCallback = Callable[[Job, dict[str, Any]], None]
StateCallback = Callable[[str, str], None]  # (device, state text)


def make_transport(device: Device) -> Transport:
    """The transport object for a device, as its transport module opens it."""
    return registry.transport(device.transport).open(device)


@dataclass
class DeviceWork:
    device: Device
    jobs: list[Job]
    transport_factory: Callable[[Device], Transport] = make_transport
    state: str = "queued"
    done: set[str] = field(default_factory=set)
    transport: Transport | None = None  # while the device runs: what dispatch() aborts on an interrupt


def _batches(jobs: list[Job]) -> list[list[Job]]:
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.batch_key, []).append(job)
    return list(groups.values())


def run_device(work: DeviceWork, artifacts: Mapping[str, Mapping[str, Artifact]], policy: TimingPolicy,
               on_record: RecordCallback, on_state: StateCallback, stop: threading.Event) -> None:
    device = work.device
    jobs_by_id = {job.job_id: job for job in work.jobs}

    def emit(record: dict[str, Any]) -> None:
        job = jobs_by_id.get(record.get("job_id", ""))
        if job is None or job.job_id in work.done:
            return
        if stop.is_set() and record.get("status") == STATUS_ERROR:
            return  # cut off by the interruption (its runner was stopped): not measured, not failed
        work.done.add(job.job_id)
        on_record(job, record)

    def fail_rest(reason: str) -> None:
        with contextlib.suppress(StopDispatch):
            for job in work.jobs:
                if job.job_id not in work.done:
                    emit(error_record(job, device.transport, reason, ErrorKind.DEVICE))

    transport: Transport | None = None
    try:
        on_state(device.name, "connecting")
        transport = work.transport_factory(device)
        work.transport = transport
        for batch in _batches(work.jobs):
            if stop.is_set():
                break
            runnable = []
            for job in batch:
                fmt_artifacts = artifacts.get(job.backend, {})
                if job.workload_id in fmt_artifacts:
                    runnable.append(job)
                # jobs without an artifact were already recorded as export failures
                elif job.job_id not in work.done:
                    work.done.add(job.job_id)
            if not runnable:
                continue
            on_state(device.name, f"{runnable[0].backend} t{runnable[0].threads}")
            lock = HOST_LOCK if registry.transport(device.transport).runs_on_host else contextlib.nullcontext()
            with lock:
                transport.run_batch(runnable, artifacts[runnable[0].backend], policy, emit)
        on_state(device.name, "done" if not stop.is_set() else "stopped")
    except StopDispatch:
        on_state(device.name, "stopped")
    except DeviceError as exc:
        on_state(device.name, f"failed: {exc}")
        fail_rest(f"device {device.name} failed: {exc}")
    except Exception as exc:  # a transport bug must not take the other devices down
        on_state(device.name, f"failed: {type(exc).__name__}: {exc}")
        fail_rest(f"device {device.name} failed: {type(exc).__name__}: {exc}")
    finally:
        work.transport = None
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()


def abort(work: list[DeviceWork]) -> None:
    """Stop what the devices are running now (transports that can: local runners are killed)."""
    for item in work:
        stop_now = getattr(item.transport, "abort", None)
        if stop_now is not None:
            with contextlib.suppress(Exception):
                stop_now()


def dispatch(work: list[DeviceWork], artifacts: Mapping[str, Mapping[str, Artifact]], policy: TimingPolicy,
             on_record: RecordCallback, on_state: StateCallback, stop: threading.Event | None = None) -> None:
    """Run every device's jobs; returns when all devices are done (or stopped).

    On KeyboardInterrupt (the harness turns SIGTERM and SIGHUP into one too) the devices
    are stopped, their running runners aborted, and their threads given STOP_GRACE_S to
    clean up (temporary directories, remote files) before the interrupt propagates: the
    threads are daemons, and a daemon thread killed at exit runs no ``finally``.  Each
    thread's end is waited for on an Event of its own, not with Thread.join: a join cut
    short by a signal can leave the thread marked stopped while it still runs.
    """
    stop = stop or threading.Event()
    finished = [threading.Event() for _ in work]

    def run(item: DeviceWork, done: threading.Event) -> None:
        try:
            run_device(item, artifacts, policy, on_record, on_state, stop)
        finally:
            done.set()

    threads = [threading.Thread(target=run, name=f"device-{w.device.name}", args=(w, done), daemon=True)
               for w, done in zip(work, finished, strict=True)]
    started: list[threading.Event] = []
    try:
        for thread, done in zip(threads, finished, strict=True):
            thread.start()
            started.append(done)
        for done in finished:
            while not done.wait(timeout=0.2):  # short waits keep Ctrl-C responsive
                pass
    except BaseException:
        stop.set()
        abort(work)
        deadline = time.monotonic() + STOP_GRACE_S
        for done in started:
            while not done.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C must not cut the cleanup
                    done.wait(timeout=0.2)
        raise
