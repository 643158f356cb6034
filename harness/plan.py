"""Suite x devices x backends x threads (x delegates) -> jobs."""

from __future__ import annotations

from dataclasses import dataclass

from backends.base import BACKENDS, Job
from harness import workloads as registry
from harness.devices import Device
from harness.errors import UserError


@dataclass(frozen=True)
class Selection:
    workload_ids: list[str]
    backends: list[str] | None  # None: every backend each device declares
    threads: list[int] | None  # None: each device's own list


def parse_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [part.strip() for part in text.split(",") if part.strip()]
    return items or None


def parse_threads(text: str | None) -> list[int] | None:
    items = parse_list(text)
    if items is None:
        return None
    try:
        threads = [int(t) for t in items]
    except ValueError:
        raise UserError(f"--threads expects comma-separated positive integers such as 1,2, got {text!r}") from None
    if any(t < 1 for t in threads):
        raise UserError(f"--threads must be positive, got {text!r}")
    return threads


def resolve_workloads(suite: str | None, workloads: str | None) -> list[str]:
    ids = registry.suite(suite) if suite else []
    for workload_id in parse_list(workloads) or []:
        registry.get(workload_id)  # raises a one-line error for a bad id
        if workload_id not in ids:
            ids.append(workload_id)
    if not ids:
        ids = registry.suite("quick")
    return ids


def validate_backends(backends: list[str] | None) -> None:
    for backend in backends or []:
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")


def make_jobs(devices: list[Device], selection: Selection) -> list[Job]:
    validate_backends(selection.backends)
    jobs: list[Job] = []
    for device in devices:
        backends = [b for b in device.backends if selection.backends is None or b in selection.backends]
        threads = selection.threads or list(device.threads)
        delegates: list[str | None] = list(device.delegates) if device.transport == "adb" else [None]
        for backend in backends:
            for thread_count in threads:
                for delegate in delegates:
                    for workload_id in selection.workload_ids:
                        tag = f"{backend}-{delegate}" if delegate else backend
                        jobs.append(Job(f"{device.name}/{tag}/t{thread_count}/{workload_id}", workload_id,
                                        device.name, backend, thread_count, delegate))
    return jobs
