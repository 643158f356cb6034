"""The task a device's jobs run in, on the worker that owns the device.

It runs ``harness.dispatch.run_device``, the in-process device loop, with this host's own
definition of the device, checks each output against the reference here (the worker has it),
and sends small JSON-like records to the controller's queue as jobs finish.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

from backends.base import Artifact, Job, TimingPolicy
from harness.cluster.common import DEVICES_PLUGIN
from harness.cluster.shipping import ArtifactUnavailable, materialize
from harness.records import ErrorKind, error_record

_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def _device_lock(name: str) -> threading.Lock:
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(name, threading.Lock())


def _jsonable(record: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(record, default=str))


def run_device_task(device: Any, jobs: list[Job], plan: dict[str, dict[str, str]], descs: dict[str, dict],
                    payloads: list[dict[str, Any]], policy: TimingPolicy, queue_name: str,
                    stop_name: str) -> dict[str, Any]:
    """One device's jobs on the worker that owns it; records go to the controller's queue."""
    from distributed import Event, Queue, get_worker
    from distributed.worker import thread_state

    from harness.dispatch import DeviceWork, run_device

    worker = get_worker()
    address = worker.address
    key = getattr(thread_state, "key", None)
    plugin = worker.plugins.get(DEVICES_PLUGIN)
    device = (getattr(plugin, "devices", {}) or {}).get(device.name, device)  # how *this* host reaches it
    queue = Queue(queue_name)
    stop_event = Event(stop_name)
    send_lock = threading.Lock()
    stop, broken = threading.Event(), threading.Event()

    def send(message: dict[str, Any]) -> None:
        with send_lock:
            if broken.is_set():
                return
            try:
                queue.put(dict(message, device=device.name, worker=address))
            except Exception:  # the scheduler or the controller is gone: nobody will store more records
                broken.set()
                stop.set()

    send({"kind": "started"})
    by_payload = {p["key"]: p for p in payloads}
    artifacts: dict[str, dict[str, Artifact]] = {}
    unavailable: dict[str, str] = {}
    for backend, workloads in plan.items():
        for workload_id, art_key in workloads.items():
            try:
                artifacts.setdefault(backend, {})[workload_id] = materialize(descs[art_key], by_payload.get(art_key))
            except (ArtifactUnavailable, OSError) as exc:
                unavailable[art_key] = str(exc)
    runnable = []
    for job in jobs:
        art_key = plan.get(job.backend, {}).get(job.workload_id)
        if art_key in unavailable:
            record = error_record(job, device.transport, f"on worker {address}: {unavailable[art_key]}",
                                  ErrorKind.ARTIFACT)
            send({"kind": "record", "job_id": job.job_id, "record": record})
        else:
            runnable.append(job)

    def on_record(job: Job, raw: dict[str, Any]) -> None:  # checked by the transport already
        send({"kind": "record", "job_id": job.job_id, "record": _jsonable(raw)})

    def on_state(_device: str, state: str) -> None:
        send({"kind": "state", "state": state})

    def on_notice(_device: str, message: str) -> None:
        send({"kind": "notice", "message": message})

    finished = threading.Event()

    def watch() -> None:  # Ctrl-C on the controller, or this task cancelled (controller gone)
        while not finished.is_set():
            try:
                if stop_event.wait(timeout=1.0):
                    stop.set()
                    return
            except Exception:  # scheduler unreachable: keep measuring, the worker will retry
                time.sleep(1.0)
            task = worker.state.tasks.get(key) if key is not None else None
            if key is not None and (task is None or task.state in ("cancelled", "released", "forgotten")):
                stop.set()
                return

    watcher = threading.Thread(target=watch, name=f"convbench-stop-{device.name}", daemon=True)
    watcher.start()
    work = DeviceWork(device, runnable)
    try:
        # Process-wide: a task left running by a worker that lost its scheduler finishes its batch first.
        with _device_lock(device.name):
            if runnable and not stop.is_set():
                run_device(work, artifacts, policy, on_record, on_state, stop, on_notice=on_notice)
    finally:
        finished.set()
        with contextlib.suppress(Exception):
            queue.close()
    reported = sorted(work.done | {j.job_id for j in jobs if j not in runnable})
    return {"worker": address, "reported": reported}
