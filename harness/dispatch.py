"""Run jobs on their devices: one worker thread per machine, machines in parallel.

Each machine runs its devices' jobs in sequence, batch by batch ((device, backend, threads,
delegate) groups), in ``schedule`` order: with ``--repeats`` the invocations of every job are
interleaved in randomized rounds.  Devices whose runner runs on this host are one machine (and
hold one lock, which cluster workers share too), so their jobs never overlap each other (or the
timing of one would include the load of another).  A device that fails as a whole marks its
remaining jobs failed with the reason; the other devices finish.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from backends.base import STATUS_ERROR, Artifact, DeviceError, DeviceStatus, Job, TimingPolicy, Transport
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
StateCallback = Callable[[str, str], None]  # (device, state text): the device's progress line
NoticeCallback = Callable[[str, str], None]  # (device, message): a line of its own in the console's log


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


def machine_of(device: Device) -> str:
    """Which machine a device's runner occupies: devices on one machine never measure at once."""
    if device.machine:
        return device.machine
    info = registry.transport(device.transport)
    return registry.THIS_HOST if info.runs_on_host else info.machine(device)


def schedule(jobs: list[Job], seed: int | None) -> list[list[Job]]:
    """Batches in the order they run: a single invocation per job keeps the declared order; with
    repeats, Randomized Multiple Interleaved Trials (Abedi & Brecht, 2017).

    Round r runs every job's r-th invocation once; within a round the batches (device, backend,
    threads, delegate) come in a random order and so do the jobs inside each batch, so a drift
    of the machine during the run is spread over every job instead of landing on a few.
    """
    rounds = sorted({job.repeat for job in jobs})
    rng = random.Random(seed)
    ordered: list[list[Job]] = []
    for repeat in rounds:
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            if job.repeat == repeat:
                groups.setdefault(job.batch_key, []).append(job)
        batches = list(groups.values())
        if len(rounds) > 1:
            rng.shuffle(batches)
            for batch in batches:
                rng.shuffle(batch)
        ordered.extend(batches)
    return ordered


def run_machine(works: list[DeviceWork], artifacts: Mapping[str, Mapping[str, Artifact]], policy: TimingPolicy,
                on_record: RecordCallback, on_state: StateCallback, stop: threading.Event,
                seed: int | None = None, on_notice: NoticeCallback | None = None) -> None:
    """Every job of the devices on one machine, one batch at a time, in ``schedule`` order.

    A job's later invocations reuse the block size its first one chose, so that every
    invocation summarises the same statistic.  A device that fails as a whole marks its
    remaining jobs failed; the machine's other devices go on.  What a transport reports while
    it runs a batch (``DeviceStatus``: a cool-down wait) becomes the device's state meanwhile,
    and a status marked ``notice`` also goes to ``on_notice``.
    """
    by_device = {work.device.name: work for work in works}
    jobs_by_id = {job.job_id: job for work in works for job in work.jobs}
    chosen_block: dict[tuple, int] = {}
    failed: set[str] = set()

    def emit(record: dict[str, Any]) -> None:
        job = jobs_by_id.get(record.get("job_id", ""))
        if job is None:
            return
        work = by_device[job.device]
        if job.job_id in work.done:
            return
        if stop.is_set() and record.get("status") == STATUS_ERROR:
            return  # cut off by the interruption (its runner was stopped): not measured, not failed
        work.done.add(job.job_id)
        if isinstance(record.get("block_size"), int) and not record.get("error"):
            chosen_block.setdefault(job.series_key, record["block_size"])
        on_record(job, record)

    def fail_rest(work: DeviceWork, reason: str) -> None:
        failed.add(work.device.name)
        with contextlib.suppress(StopDispatch):
            for job in work.jobs:
                if job.job_id not in work.done:
                    emit(error_record(job, work.device.transport, reason, ErrorKind.DEVICE))

    def transport_of(work: DeviceWork) -> Transport:
        if work.transport is None:
            on_state(work.device.name, "connecting")
            work.transport = work.transport_factory(work.device)
        return work.transport

    try:
        for batch in schedule([job for work in works for job in work.jobs], seed):
            if stop.is_set():
                break
            work = by_device[batch[0].device]
            if work.device.name in failed:
                continue
            runnable = [_with_block(job, chosen_block) for job in batch
                        if job.workload_id in artifacts.get(job.backend, {})]
            # jobs without an artifact were already recorded as export failures
            work.done.update(job.job_id for job in batch if job.workload_id not in artifacts.get(job.backend, {}))
            if not runnable:
                continue
            first = runnable[0]
            rounds = f" round {first.repeat + 1}/{first.repeats}" if first.repeats > 1 else ""
            label = f"{first.backend} t{first.threads}{rounds}"
            try:
                transport = transport_of(work)
                on_state(work.device.name, label)
                lock = HOST_LOCK if registry.transport(work.device.transport).runs_on_host \
                    else contextlib.nullcontext()
                with lock:
                    transport.run_batch(runnable, artifacts[first.backend], policy, emit,
                                        _status_reporter(work.device.name, label, on_state, on_notice))
            except StopDispatch:
                raise
            except DeviceError as exc:
                on_state(work.device.name, f"failed: {exc}")
                fail_rest(work, f"device {work.device.name} failed: {exc}")
            except Exception as exc:  # a transport bug must not take the other devices down
                on_state(work.device.name, f"failed: {type(exc).__name__}: {exc}")
                fail_rest(work, f"device {work.device.name} failed: {type(exc).__name__}: {exc}")
        for work in works:
            if work.device.name not in failed:
                on_state(work.device.name, "done" if not stop.is_set() else "stopped")
    except StopDispatch:
        for work in works:
            on_state(work.device.name, "stopped")
    finally:
        for work in works:
            transport, work.transport = work.transport, None
            if transport is not None:
                with contextlib.suppress(Exception):
                    transport.close()


def _status_reporter(device: str, label: str, on_state: StateCallback,
                     on_notice: NoticeCallback | None) -> Callable[[DeviceStatus], None]:
    """A transport's status reports as the device's state (its batch's label again once a wait is over)."""

    def report(status: DeviceStatus) -> None:
        # The display must never cost a measurement: a failing view loses a line, not the job.
        with contextlib.suppress(Exception):
            on_state(device, label if status.done else status.text)
            if status.notice and on_notice is not None:
                on_notice(device, status.text)

    return report


def _with_block(job: Job, chosen: dict[tuple, int]) -> Job:
    if job.options.get("block_size") or job.series_key not in chosen:
        return job
    return replace(job, options={**job.options, "block_size": chosen[job.series_key]})


def run_device(work: DeviceWork, artifacts: Mapping[str, Mapping[str, Artifact]], policy: TimingPolicy,
               on_record: RecordCallback, on_state: StateCallback, stop: threading.Event,
               seed: int | None = None, on_notice: NoticeCallback | None = None) -> None:
    """One device's jobs (what a cluster worker runs for the device it owns)."""
    run_machine([work], artifacts, policy, on_record, on_state, stop, seed, on_notice)


def abort(work: list[DeviceWork]) -> None:
    """Stop what the devices are running now (transports that can: local runners are killed)."""
    for item in work:
        stop_now = getattr(item.transport, "abort", None)
        if stop_now is not None:
            with contextlib.suppress(Exception):
                stop_now()


def dispatch(work: list[DeviceWork], artifacts: Mapping[str, Mapping[str, Artifact]], policy: TimingPolicy,
             on_record: RecordCallback, on_state: StateCallback, stop: threading.Event | None = None,
             seed: int | None = None, on_notice: NoticeCallback | None = None) -> None:
    """Run every device's jobs; returns when all devices are done (or stopped).

    One thread per machine (``machine_of``): devices on different machines measure in
    parallel, devices on the same machine (e.g. two Python environments of this host, as
    ``harness ab`` compares) take turns in one interleaved schedule.

    On KeyboardInterrupt (the harness turns SIGTERM and SIGHUP into one too) the devices
    are stopped, their running runners aborted, and their threads given STOP_GRACE_S to
    clean up (temporary directories, remote files) before the interrupt propagates: the
    threads are daemons, and a daemon thread killed at exit runs no ``finally``.  Each
    thread's end is waited for on an Event of its own, not with Thread.join: a join cut
    short by a signal can leave the thread marked stopped while it still runs.
    """
    stop = stop or threading.Event()
    machines: dict[str, list[DeviceWork]] = {}
    for item in work:
        machines.setdefault(machine_of(item.device), []).append(item)
    finished = [threading.Event() for _ in machines]

    def run(items: list[DeviceWork], done: threading.Event) -> None:
        try:
            run_machine(items, artifacts, policy, on_record, on_state, stop, seed, on_notice)
        finally:
            done.set()

    threads = [threading.Thread(target=run, name=f"machine-{name}", args=(items, done), daemon=True)
               for (name, items), done in zip(machines.items(), finished, strict=True)]
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
