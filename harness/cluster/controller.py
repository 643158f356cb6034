"""Scale-out dispatch on Dask distributed: devices are worker resources of capacity 1.

``harness worker`` (harness/worker.py) runs a Dask worker on a host that reaches some
devices (phones on its USB ports, boards on its lab network) and advertises one resource
``device-<name>=1`` per usable device.  ``harness run --cluster tcp://HOST:PORT`` then calls
``cluster_dispatch`` instead of ``harness.dispatch.dispatch``: same arguments, same callbacks,
same job and record types.  Per device it submits one task holding the device's whole job
list, restricted to the device's resource and pinned to the worker that owns it, so a job
runs only where its device is attached and never two at once on one device.

On the worker the task runs ``harness.dispatch._run_device``, exactly the in-process device
loop, with the worker's own definition of the device (its devices.yaml says how to reach it
from that host).  Artifacts are exported once on the controller; each worker is asked which
it already caches (keyed by sha256) and is sent only the missing ones as bytes, or only
their paths when the cache is on a shared file system (``CONVBENCH_SHARED_CACHE=1``).  The
output check against the PyTorch reference happens on the worker (it has the reference), so
only small JSON-like raw records travel back, through a ``distributed.Queue``, as each job
finishes; the controller adds the executing worker's address as ``worker`` and finalizes and
stores them as in-process.

A worker that leaves the cluster mid-run (killed, host down, network cut: the scheduler
drops it at once when its connection closes, after ``distributed.scheduler.worker-ttl``
when it silently vanishes) fails the jobs of its devices not yet reported, with that
reason; the other devices' tasks go on.  Ctrl-C on the controller sets a distributed
``Event`` the tasks poll, so devices stop between batches as they do in-process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.base import Artifact, Job, TimingPolicy, error_record
from harness.artifacts import file_sha256
from harness.errors import UserError

RESOURCE_PREFIX = "device-"
DEVICES_PLUGIN = "convbench-devices"  # the WorkerPlugin harness worker installs (see harness/worker.py)
INSTALL_HINT = "pip install 'convbench[cluster]'"
OWNER_WAIT_S = 10.0  # how long to wait for a worker owning each device to join
CONNECT_TIMEOUT_S = 30.0
POLL_S = 0.5  # queue poll; also how often worker liveness is checked
DRAIN_S = 10.0  # after a task ends, how long to wait for its last records

RecordCallback = Callable[[Job, dict[str, Any]], None]
StateCallback = Callable[[str, str], None]


class ClusterError(UserError):
    """The cluster cannot be used at all (no distributed, bad address, scheduler unreachable)."""


def resource_name(device: str) -> str:
    return f"{RESOURCE_PREFIX}{device}"


def require_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ClusterError(f"--cluster needs Dask distributed: {INSTALL_HINT}") from None


# ---------------------------------------------------------------- security


def make_security(ca: str | os.PathLike | None, cert: str | os.PathLike | None,
                  key: str | os.PathLike | None, role: str = "client") -> Any:
    """Dask ``Security`` for mutual TLS from --tls-ca/--tls-cert/--tls-key, or None.

    With none of the three, None lets Dask read its own configuration
    (``distributed.comm.tls.*``, e.g. ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``).
    """
    given = [v for v in (ca, cert, key) if v]
    if not given:
        return None
    if len(given) != 3:
        raise ClusterError("--tls-ca, --tls-cert and --tls-key go together (mutual TLS: the CA that signed "
                           "every member's certificate, this member's certificate and its private key)")
    for option, value in (("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key)):
        if not Path(value).is_file():  # type: ignore[arg-type]
            raise ClusterError(f"{option} {value}: no such file")
    require_distributed()
    from distributed.security import Security

    if role == "worker":
        return Security(tls_ca_file=str(ca), tls_worker_cert=str(cert), tls_worker_key=str(key),
                        require_encryption=True)
    return Security(tls_ca_file=str(ca), tls_client_cert=str(cert), tls_client_key=str(key),
                    require_encryption=True)


def check_address(address: str, security: Any, role: str = "client") -> str:
    """``tcp://HOST:PORT`` or ``tls://HOST:PORT`` (a bare ``HOST:PORT`` means tcp); TLS consistent."""
    address = address.strip()
    if "://" not in address:
        address = "tcp://" + address
    scheme, _, rest = address.partition("://")
    if scheme not in ("tcp", "tls") or ":" not in rest:
        raise ClusterError(f"scheduler address {address!r}: expected tcp://HOST:PORT or tls://HOST:PORT")
    if scheme == "tcp" and security is not None:
        raise ClusterError(f"{address}: TLS options were given; use the tls:// address of the scheduler")
    if scheme == "tls" and security is None:
        require_distributed()
        from distributed.security import Security

        configured = Security()
        cert = configured.tls_worker_cert if role == "worker" else configured.tls_client_cert
        if not (configured.tls_ca_file and cert):
            raise ClusterError(f"{address} is a TLS scheduler: pass --tls-ca, --tls-cert and --tls-key "
                               "(or configure distributed.comm.tls in Dask's configuration)")
    return address


def _addresses(host: str, port: int, what: str) -> list[tuple[int, tuple]]:
    """(family, sockaddr) of every address ``host`` resolves to."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ClusterError(f"{what} {host!r} does not resolve: {exc}") from None
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def _is_loopback(ip: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_unspecified
    except ValueError:
        return False


def worker_listen_host(scheduler: str, host: str | None, insecure: bool = False) -> str:
    """The one address ``harness worker`` listens on: ``host``, or the interface facing the scheduler.

    Never every interface.  A Dask worker runs whatever code reaches it (through it or its
    scheduler), so without TLS anything beyond loopback is refused unless ``insecure``.
    """
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port

    scheme, location = parse_address(scheduler)  # check_address made it tcp:// or tls://
    try:
        scheduler_host, scheduler_port = parse_host_port(location)
    except ValueError:
        raise ClusterError(f"scheduler address {scheduler!r}: expected {scheme}://HOST:PORT") from None
    scheduler_ips = _addresses(scheduler_host, scheduler_port, "the scheduler host")
    _refuse_exposed(scheduler, [sockaddr[0] for _, sockaddr in scheduler_ips], insecure)
    if host is not None:
        host = host.strip().removeprefix("[").removesuffix("]")
        listen_ips = [sockaddr[0] for _, sockaddr in _addresses(host, 0, "--host")] if host not in ("", "*") else []
        if not listen_ips or any(_is_wildcard(ip) for ip in listen_ips):
            raise ClusterError(f"--host {host or repr(host)} would listen on every interface of this host: give the "
                               "address of the one interface facing the scheduler, or leave --host out to use it")
        listen = host
    else:
        listen = ""
        for family, sockaddr in scheduler_ips:
            try:  # connecting a UDP socket sends nothing; it picks the route to the scheduler
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.connect(sockaddr)
                    listen = probe.getsockname()[0]
                    break
            except OSError:
                continue
        if not listen:
            raise ClusterError(f"no interface of this host has a route to the scheduler at {scheduler}; give one "
                               "with --host")
        listen_ips = [listen]
    _refuse_exposed(scheduler, listen_ips, insecure)
    return listen


def _refuse_exposed(scheduler: str, ips: list[str], insecure: bool) -> None:
    exposed = sorted({ip for ip in ips if not _is_loopback(ip)})
    if exposed and not scheduler.startswith("tls://") and not insecure:
        raise ClusterError(
            f"refusing to join {scheduler} without TLS: a Dask worker runs any code sent by whoever reaches it or "
            f"its scheduler, so anyone who can reach {', '.join(exposed)} could run commands on this host and its "
            "devices. Use a TLS scheduler (tls://HOST:PORT with --tls-ca, --tls-cert and --tls-key), or pass "
            "--insecure if only trusted machines are on that network")


# ---------------------------------------------------------------- artifacts (controller side)


def describe_artifact(artifact: Artifact, shared: bool) -> dict[str, Any]:
    """What a worker needs to find or rebuild an artifact: names, sha256s (and paths if shared)."""
    files = {}
    for role, path in (("model", artifact.path), ("input", artifact.input_path),
                       ("reference", artifact.reference_output_path)):
        entry = {"name": path.name, "sha256": artifact.sha256 if role == "model" else file_sha256(path)}
        if shared:
            entry["path"] = str(path)
        files[role] = entry
    return {"key": artifact.sha256, "workload_id": artifact.workload_id, "format": artifact.format,
            "layout": artifact.layout, "sha256": artifact.sha256, "shared": shared, "files": files}


def artifact_payload(artifact: Artifact) -> dict[str, Any]:
    return {"key": artifact.sha256, "data": {"model": artifact.path.read_bytes(),
                                             "input": artifact.input_path.read_bytes(),
                                             "reference": artifact.reference_output_path.read_bytes()}}


# ---------------------------------------------------------------- artifacts (worker side)


def worker_cache_dir() -> Path:
    explicit = os.environ.get("CONVBENCH_WORKER_CACHE")
    if explicit:
        return Path(explicit)
    from harness.artifacts import cache_root

    return cache_root() / "worker-artifacts"


class ArtifactUnavailable(RuntimeError):
    pass


def _cached_folder(desc: Mapping[str, Any]) -> Path | None:
    folder = worker_cache_dir() / desc["key"]
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    want = {role: (entry["name"], entry["sha256"]) for role, entry in desc["files"].items()}
    have = {role: tuple(value) for role, value in (meta.get("files") or {}).items()}
    return folder if have == want else None


def cached_keys(descs: list[dict[str, Any]]) -> list[str]:
    """Run on a worker (``client.run``): which of these artifacts its cache already holds."""
    return [d["key"] for d in descs if _cached_folder(d) is not None]


def _as_artifact(desc: Mapping[str, Any], paths: Mapping[str, Path]) -> Artifact:
    return Artifact(desc["workload_id"], desc["format"], paths["model"], paths["input"], paths["reference"],
                    desc["layout"], desc["sha256"])


def materialize(desc: Mapping[str, Any], payload: Mapping[str, Any] | None) -> Artifact:
    """The artifact as local files on this worker: shared path, cache hit, or written from bytes."""
    if desc.get("shared"):
        paths = {role: Path(entry["path"]) for role, entry in desc["files"].items()}
        for role, path in paths.items():
            if not path.is_file():
                raise ArtifactUnavailable(f"{path} is not on this worker: the shared cache "
                                          "(CONVBENCH_SHARED_CACHE) must be mounted at the same path on every host")
            if role == "model" and file_sha256(path) != desc["sha256"]:
                raise ArtifactUnavailable(f"{path} on this worker differs from the controller's (sha256)")
        return _as_artifact(desc, paths)
    folder = _cached_folder(desc)
    if folder is None:
        if payload is None:
            raise ArtifactUnavailable(f"artifact {desc['workload_id']} ({desc['format']}, sha256 "
                                      f"{desc['sha256'][:12]}) is neither cached on this worker nor shipped")
        root = worker_cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{desc['key'][:16]}-", dir=root))
        try:
            for role, entry in desc["files"].items():
                data = payload["data"][role]
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise ArtifactUnavailable(f"{entry['name']} of {desc['workload_id']} arrived corrupted")
                (scratch / entry["name"]).write_bytes(data)
            meta = {"workload_id": desc["workload_id"], "format": desc["format"],
                    "files": {role: [e["name"], e["sha256"]] for role, e in desc["files"].items()}}
            (scratch / "meta.json").write_text(json.dumps(meta))
            folder = root / desc["key"]
            if folder.exists():  # a stale or concurrent copy: replace it
                shutil.rmtree(folder, ignore_errors=True)
            try:
                scratch.rename(folder)
            except OSError:  # another task won the race with the same bytes
                shutil.rmtree(scratch, ignore_errors=True)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return _as_artifact(desc, {role: folder / entry["name"] for role, entry in desc["files"].items()})


# ---------------------------------------------------------------- the task (runs on a worker)


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

    from harness.dispatch import DeviceWork, _run_device
    from harness.records import check_output

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
            record = error_record(job, device.transport, f"on worker {address}: {unavailable[art_key]}")
            send({"kind": "record", "job_id": job.job_id, "record": record})
        else:
            runnable.append(job)

    def on_record(job: Job, raw: dict[str, Any]) -> None:
        raw = dict(raw)
        output = raw.pop("output_path", None)  # exists only until this callback returns
        artifact = artifacts.get(job.backend, {}).get(job.workload_id)
        if output and artifact is not None and not raw.get("error"):
            try:
                raw["output_check"] = check_output(Path(output), artifact)
            except Exception as exc:  # a broken reference must not lose the measurement
                raw["output_check"] = {"status": "not_checked", "reason": f"on worker {address}: {exc}"}
        send({"kind": "record", "job_id": job.job_id, "record": _jsonable(raw)})

    def on_state(_device: str, state: str) -> None:
        send({"kind": "state", "state": state})

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
                _run_device(work, artifacts, policy, on_record, on_state, stop)
    finally:
        finished.set()
        with contextlib.suppress(Exception):
            queue.close()
    reported = sorted(work.done | {j.job_id for j in jobs if j not in runnable})
    return {"worker": address, "reported": reported}


# ---------------------------------------------------------------- the controller


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
                 shared_cache: bool) -> None:
        from distributed import Event, Queue

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
                self.emit(task, job.job_id, error_record(job, task.work.device.transport, reason),
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


def cluster_dispatch(work: list[Any], artifacts: Mapping[str, Mapping[str, Artifact]], policy: TimingPolicy,
                     on_record: RecordCallback, on_state: StateCallback, stop: threading.Event | None = None,
                     *, scheduler: str, security: Any = None, shared_cache: bool | None = None,
                     owner_wait: float | None = None) -> None:
    """``harness.dispatch.dispatch`` on a Dask cluster; returns when every device is done or failed.

    ``scheduler`` is ``tcp://HOST:PORT`` or ``tls://HOST:PORT``; ``security`` a Dask ``Security``
    (see ``make_security``) or None for Dask's configuration; ``shared_cache`` ships artifact
    paths instead of bytes (default: ``$CONVBENCH_SHARED_CACHE``); ``owner_wait`` is how long a
    device may wait for a worker owning it to join (default ``OWNER_WAIT_S``).
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
        controller = _Controller(client, scheduler, work, artifacts, policy, on_record, on_state, stop, shared_cache)
        controller.run(OWNER_WAIT_S if owner_wait is None else owner_wait)
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
