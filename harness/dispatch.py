"""Run jobs on their devices: one worker thread per device, devices in parallel.

Each device runs its jobs in sequence, batch by batch ((backend, threads, delegate)
groups).  Local transports share one lock, so local jobs never overlap each other
(or the timing of one would include the load of another).  A device that fails as a
whole marks its remaining jobs failed with the reason; the other devices finish.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backends.base import Artifact, DeviceError, Job, TimingPolicy, Transport, error_record
from harness.devices import Device

LOCAL_LOCK = threading.Lock()

RecordCallback = Callable[[Job, dict[str, Any]], None]
StateCallback = Callable[[str, str], None]  # (device, state text)


def make_transport(device: Device) -> Transport:
    """The transport object for a device (heavy imports happen here, per transport)."""
    if device.transport == "local":
        from backends.local import LocalTransport

        return LocalTransport(python=device.option("python"), sysfs_root=device.sysfs_root,
                              energy=device.energy, cpu_mask=device.cpu_mask)
    if device.transport == "ssh":
        from backends.ssh import SshTransport

        return SshTransport.from_device(device)
    if device.transport == "adb":
        from backends.android import AndroidTransport

        return AndroidTransport.from_device(device)
    raise ValueError(f"unknown transport {device.transport!r}")


@dataclass
class DeviceWork:
    device: Device
    jobs: list[Job]
    transport_factory: Callable[[Device], Transport] = make_transport
    state: str = "queued"
    done: set[str] = field(default_factory=set)


def _batches(jobs: list[Job]) -> list[list[Job]]:
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.batch_key, []).append(job)
    return list(groups.values())


def _run_device(work: DeviceWork, artifacts: Mapping[str, Mapping[str, Artifact]], policy: TimingPolicy,
                on_record: RecordCallback, on_state: StateCallback, stop: threading.Event) -> None:
    device = work.device
    jobs_by_id = {job.job_id: job for job in work.jobs}

    def emit(record: dict[str, Any]) -> None:
        job = jobs_by_id.get(record.get("job_id", ""))
        if job is None or job.job_id in work.done:
            return
        work.done.add(job.job_id)
        on_record(job, record)

    def fail_rest(reason: str) -> None:
        for job in work.jobs:
            if job.job_id not in work.done:
                emit(error_record(job, device.transport, reason))

    transport: Transport | None = None
    try:
        on_state(device.name, "connecting")
        transport = work.transport_factory(device)
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
            lock = LOCAL_LOCK if device.transport == "local" else contextlib.nullcontext()
            with lock:
                transport.run_batch(runnable, artifacts[runnable[0].backend], policy, emit)
        on_state(device.name, "done" if not stop.is_set() else "stopped")
    except DeviceError as exc:
        on_state(device.name, f"failed: {exc}")
        fail_rest(f"device {device.name} failed: {exc}")
    except Exception as exc:  # a transport bug must not take the other devices down
        on_state(device.name, f"failed: {type(exc).__name__}: {exc}")
        fail_rest(f"device {device.name} failed: {type(exc).__name__}: {exc}")
    finally:
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()


def dispatch(work: list[DeviceWork], artifacts: Mapping[str, Mapping[str, Artifact]], policy: TimingPolicy,
             on_record: RecordCallback, on_state: StateCallback, stop: threading.Event | None = None) -> None:
    """Run every device's jobs; returns when all devices are done (or stopped)."""
    stop = stop or threading.Event()
    threads = [threading.Thread(target=_run_device, name=f"device-{w.device.name}",
                                args=(w, artifacts, policy, on_record, on_state, stop), daemon=True)
               for w in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.2)  # short joins keep Ctrl-C responsive
