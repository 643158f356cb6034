"""The controller's side of a cluster run: launch one task per device on its owner, stream the records
back, and fail the jobs of devices whose worker (or the scheduler) is lost."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backends.base import Artifact, Job, TimingPolicy
from harness.cluster.common import RESOURCE_PREFIX, ClusterError, require_distributed, resource_name
from harness.cluster.security import check_address
from harness.cluster.shipping import artifact_payload, cached_keys, describe_artifact
from harness.cluster.task import run_device_task
from harness.records import ErrorKind, error_record

CONNECT_TIMEOUT_S = 30.0
POLL_S = 0.5  # queue poll; also how often worker liveness is checked
DRAIN_S = 10.0  # after a task ends, how long to wait for its last records

RecordCallback = Callable[[Job, dict[str, Any]], None]
StateCallback = Callable[[str, str], None]
NoticeCallback = Callable[[str, str], None]  # (device, a line of its own for the console: a cool-down timed out)


@dataclass
class _DeviceTask:
    work: Any  # harness.dispatch.DeviceWork
    owner: str | None = None
    future: Any = None
    worker: str | None = None  # set by the task's "started" message
    result: dict[str, Any] | None = None
    ended_at: float | None = None
    closed: bool = False
    jobs_by_id: dict[str, Job] = field(default_factory=dict)


def _members(client: Any) -> tuple[set[str], dict[str, list[str]]]:
    """(addresses of the live workers, device name -> addresses of the workers advertising it)."""
    try:
        info = client.scheduler_info(n_workers=-1)  # newer Dask lists only 5 workers unless asked
    except TypeError:
        info = client.scheduler_info()
    workers = info.get("workers") or {}
    owners: dict[str, list[str]] = {}
    for address, worker in workers.items():
        for resource, amount in (worker.get("resources") or {}).items():
            if resource.startswith(RESOURCE_PREFIX) and amount >= 1:
                owners.setdefault(resource[len(RESOURCE_PREFIX):], []).append(address)
    return set(workers), owners


class _SchedulerLost(Exception):
    pass


def ask(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A call to the scheduler; a broken connection becomes _SchedulerLost (a timeout stays a timeout)."""
    try:
        return call(*args, **kwargs)
    except TimeoutError:
        raise
    except OSError as exc:  # distributed's CommClosedError is an OSError
        raise _SchedulerLost(f"{type(exc).__name__}: {exc}") from exc


def lost_reason(worker: str | None, device: str) -> str:
    return (f"worker {worker} owning device {device} was lost mid-run: it left the Dask cluster (process killed, "
            "host down or network cut)")


def no_owner_reason(scheduler: str, device: str) -> str:
    return (f"no worker of the cluster at {scheduler} owns device {device} (resource {resource_name(device)}): "
            f"start `harness worker --scheduler {scheduler}` on a host that reaches it, and check its output for "
            "why the device was skipped")


class _Controller:
    """The controller's side of one run: launch device tasks, stream their records, notice losses."""

    def __init__(self, client: Any, scheduler: str, work: list[Any], artifacts: Mapping[str, Mapping[str, Artifact]],
                 policy: TimingPolicy, on_record: RecordCallback, on_state: StateCallback, stop: threading.Event,
                 shared_cache: bool, on_notice: NoticeCallback | None = None) -> None:
        from distributed import Event, Queue

        self.on_notice = on_notice
        self.client, self.scheduler, self.artifacts, self.policy = client, scheduler, artifacts, policy
        self.on_record, self.on_state, self.stop, self.shared_cache = on_record, on_state, stop, shared_cache
        self.tasks = {w.device.name: _DeviceTask(w, jobs_by_id={j.job_id: j for j in w.jobs}) for w in work}
        self.token = secrets.token_hex(6)
        self.queue = Queue(f"convbench-records-{self.token}", client=client)
        self.stop_event = Event(f"convbench-stop-{self.token}", client=client)
        self.descs: dict[str, dict] = {}
        self.shipped: dict[tuple[str, str], Any] = {}  # (worker, artifact key) -> future of the scattered bytes

    # -- records
    def emit(self, task: _DeviceTask, job_id: str, record: dict[str, Any], worker: str | None) -> None:
        job = task.jobs_by_id.get(job_id)
        if job is None or job_id in task.work.done:
            return
        task.work.done.add(job_id)
        self.on_record(job, dict(record, worker=worker) if worker else record)

    def fail_rest(self, task: _DeviceTask, reason: str, state: str) -> None:
        task.closed = True
        self.on_state(task.work.device.name, state)
        for job in task.work.jobs:
            if job.job_id not in task.work.done:
                self.emit(task, job.job_id, error_record(job, task.work.device.transport, reason, ErrorKind.DEVICE),
                          task.worker or task.owner)

    def close(self, task: _DeviceTask, state: str) -> None:
        task.closed = True
        self.on_state(task.work.device.name, state)

    def pump(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            task = self.tasks.get(message.get("device", ""))
            if task is None or task.closed:
                continue
            name = task.work.device.name
            if message["kind"] == "started":
                task.worker = message["worker"]
                self.on_state(name, f"running on {task.worker}")
            elif message["kind"] == "state":
                self.on_state(name, f"{message['state']} ({message['worker']})")
            elif message["kind"] == "notice" and self.on_notice is not None:
                self.on_notice(name, f"{message['message']} (on {message['worker']})")
            elif message["kind"] == "record":
                self.emit(task, message["job_id"], message["record"], message["worker"])

    def receive(self, wait: float) -> None:
        messages: list[dict[str, Any]] = []
        try:
            if wait > 0:
                messages.append(ask(self.queue.get, timeout=wait))
            messages.extend(ask(self.queue.get, batch=True))
        except TimeoutError:
            pass
        self.pump(messages)

    # -- tasks
    def launch(self, name: str, task: _DeviceTask) -> None:
        """Ship the artifacts the owner lacks, then submit the device's task pinned to its owner."""
        plan: dict[str, dict[str, str]] = {}
        by_key: dict[str, Artifact] = {}
        for job in task.work.jobs:
            artifact = self.artifacts[job.backend][job.workload_id]
            by_key[artifact.sha256] = artifact
            if artifact.sha256 not in self.descs:
                self.descs[artifact.sha256] = describe_artifact(artifact, self.shared_cache)
            plan.setdefault(job.backend, {})[job.workload_id] = artifact.sha256
        keys, owner = sorted(by_key), task.owner
        if not self.shared_cache:
            missing = [k for k in keys if (owner, k) not in self.shipped]
            have: set[str] = set()
            if missing:
                with contextlib.suppress(Exception):  # an unanswered query just means: ship everything
                    have = set(self.client.run(cached_keys, [self.descs[k] for k in missing], workers=[owner])[owner])
            for art_key in missing:
                if art_key not in have:
                    self.shipped[(owner, art_key)] = self.client.scatter(
                        [artifact_payload(by_key[art_key])], workers=[owner], hash=False)[0]
        payloads = [self.shipped[(owner, k)] for k in keys if (owner, k) in self.shipped]
        task.future = self.client.submit(
            run_device_task, task.work.device, task.work.jobs, plan, {k: self.descs[k] for k in keys}, payloads,
            self.policy, self.queue.name, self.stop_event.name, key=f"convbench-{name}-{self.token}",
            resources={resource_name(name): 1}, workers=[owner], allow_other_workers=False, pure=False, retries=0)
        self.on_state(name, f"queued on {owner}")

    def check_members(self, now: float, deadline: float) -> None:
        """Launch devices whose owner has joined; fail those whose owner never came or left."""
        alive, owners = ask(_members, self.client)
        for name, task in self.tasks.items():
            if task.closed:
                continue
            if task.owner is None:  # not launched yet
                if self.stop.is_set():
                    self.close(task, "stopped")
                elif owners.get(name):
                    # One owner per device, the lowest address, so that concurrent runs queue on the same worker.
                    task.owner = sorted(owners[name])[0]
                    try:
                        self.launch(name, task)
                    except Exception as exc:  # e.g. the owner left between the listing and the launch
                        self.fail_rest(task, f"cannot start device {name} on worker {task.owner}: "
                                             f"{type(exc).__name__}: {exc}", "failed")
                elif now >= deadline:
                    self.fail_rest(task, no_owner_reason(self.scheduler, name), "failed: no worker owns it")
                else:
                    self.on_state(name, f"waiting for a worker owning {resource_name(name)}")
            elif task.ended_at is None and task.owner not in alive:
                self.receive(0)  # what it reported before it went is in the queue
                lost = task.worker or task.owner
                with contextlib.suppress(Exception):
                    task.future.cancel()
                self.fail_rest(task, lost_reason(lost, name), f"failed: worker {lost} lost")

    def check_finished(self, now: float) -> None:
        for name, task in self.tasks.items():
            if task.closed or task.future is None or not task.future.done():
                continue
            if task.ended_at is None:
                task.ended_at = now
                if task.future.status != "finished":
                    self.receive(0)
                    exc = task.future.exception() if task.future.status == "error" else None
                    where = task.worker or task.owner
                    if type(exc).__name__ == "KilledWorker" or where not in ask(_members, self.client)[0]:
                        self.fail_rest(task, lost_reason(where, name), f"failed: worker {where} lost")
                    else:
                        self.fail_rest(task, f"device {name} failed on worker {where}: "
                                             f"{type(exc).__name__ if exc else task.future.status}: {exc}", "failed")
                    continue
                task.result = task.future.result()
            # The task's records were queued before it returned; give stragglers DRAIN_S.
            if not set(task.result.get("reported", [])) <= task.work.done and now - task.ended_at <= DRAIN_S:
                continue
            if task.work.done >= set(task.jobs_by_id):
                self.close(task, "stopped" if self.stop.is_set() else "done")
            elif self.stop.is_set():
                self.close(task, "stopped")  # stopped between batches, as in-process: the rest stays unmeasured
            else:
                self.fail_rest(task, f"worker {task.worker} ended device {name}'s task without reporting these "
                                     "jobs", "failed")

    def run(self, owner_wait: float) -> None:
        for task in self.tasks.values():
            if not task.work.jobs:
                self.close(task, "nothing to run")
        deadline = time.monotonic() + owner_wait
        last_check, stop_sent = 0.0, False
        try:
            while not all(t.closed for t in self.tasks.values()):
                if self.stop.is_set() and not stop_sent:
                    ask(self.stop_event.set)
                    stop_sent = True
                if time.monotonic() - last_check >= POLL_S:
                    last_check = time.monotonic()
                    self.check_members(last_check, deadline)
                self.receive(POLL_S)
                self.check_finished(time.monotonic())
        except _SchedulerLost as lost:
            for name, task in self.tasks.items():
                if not task.closed:
                    self.fail_rest(task, f"lost the Dask scheduler at {self.scheduler} mid-run ({lost}); device "
                                         f"{name} may still finish its current batch, unrecorded",
                                   "failed: scheduler lost")

    def abort(self) -> None:
        """Ctrl-C or a bug: tell the devices to stop between batches and drop the tasks."""
        with contextlib.suppress(Exception):
            self.stop_event.set()
        for task in self.tasks.values():
            if task.future is not None:
                with contextlib.suppress(Exception):
                    task.future.cancel()

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self.queue.close()


def _default_owner_wait() -> float:
    """``harness.cluster.OWNER_WAIT_S``, read from the package at each run so that setting it there takes effect."""
    from harness import cluster

    return cluster.OWNER_WAIT_S


def cluster_dispatch(work: list[Any], artifacts: Mapping[str, Mapping[str, Artifact]], policy: TimingPolicy,
                     on_record: RecordCallback, on_state: StateCallback, stop: threading.Event | None = None,
                     *, scheduler: str, security: Any = None, shared_cache: bool | None = None,
                     owner_wait: float | None = None, on_notice: NoticeCallback | None = None) -> None:
    """``harness.dispatch.dispatch`` on a Dask cluster; returns when every device is done or failed.

    ``scheduler`` is ``tcp://HOST:PORT`` or ``tls://HOST:PORT``; ``security`` a Dask ``Security``
    (see ``make_security``) or None for Dask's configuration; ``shared_cache`` ships artifact
    paths instead of bytes (default: ``$CONVBENCH_SHARED_CACHE``); ``owner_wait`` is how long a
    device may wait for a worker owning it to join (default ``harness.cluster.OWNER_WAIT_S``).
    """
    require_distributed()
    from distributed import Client

    stop = stop or threading.Event()
    scheduler = check_address(scheduler, security)
    if shared_cache is None:
        shared_cache = os.environ.get("CONVBENCH_SHARED_CACHE", "").lower() in ("1", "true", "yes")
    if not any(w.jobs for w in work):
        for w in work:
            on_state(w.device.name, "nothing to run")
        return
    try:
        client = Client(scheduler, security=security, timeout=CONNECT_TIMEOUT_S, set_as_default=False,
                        name="convbench-controller")
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    controller = None
    try:
        controller = _Controller(client, scheduler, work, artifacts, policy, on_record, on_state, stop, shared_cache,
                                 on_notice)
        controller.run(_default_owner_wait() if owner_wait is None else owner_wait)
    except BaseException:
        if controller is not None:
            controller.abort()
        raise
    finally:
        if controller is not None:
            controller.release()
        client_log = logging.getLogger("distributed.client")
        level = client_log.level
        client_log.setLevel(logging.CRITICAL)  # a lost scheduler makes close() log its cancelled reconnect
        try:
            with contextlib.suppress(Exception):
                client.close(timeout=5)
        finally:
            client_log.setLevel(level)
