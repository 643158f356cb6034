"""Suite x devices x backends x threads (x delegates) -> jobs, and the run request that carries them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.base import Job, TimingPolicy
from harness import workloads as registry
from harness.devices import Device
from harness.errors import UserError
from harness.registry import BACKENDS, transport


@dataclass(frozen=True)
class Selection:
    workload_ids: list[str]
    backends: list[str] | None  # None: every backend each device declares
    threads: list[int] | None  # None: each device's own list
    repeats: int = 1  # fresh runner invocations per job (the unit of replication)


@dataclass(frozen=True)
class RunRequest:
    """Everything one run measures, and where it stores it: what ``harness.run.execute`` takes."""

    devices: list[Device]
    jobs: list[Job]
    policy: TimingPolicy
    results_dir: Path
    workload_ids: list[str]
    suite: str | None = None
    skipped: list[str] = field(default_factory=list)  # backends left out, with install hints
    cluster: str | None = None  # a Dask scheduler address: dispatch through harness worker processes
    cluster_security: Any = None
    repeats: int = 1
    order_seed: int | None = None  # seeds the randomized interleaved order of invocations (stored in run.json)


def timing_policy(min_time: float, max_time: float, min_runs: int, warmup_runs: int, target_ci: float,
                  energy_idle: float, op_profile: bool = False) -> TimingPolicy:
    """The policy from the CLI's options (warm-up also lasts at least 0.2 s unless it is off)."""
    return TimingPolicy(min_seconds=min_time, max_seconds=max_time, min_runs=min_runs, target_ci_rel_width=target_ci,
                        warmup_runs=warmup_runs, warmup_seconds=0.2 if warmup_runs else 0.0,
                        energy_idle_seconds=energy_idle, op_profile=op_profile)


def parse_list(text: str | None) -> list[str] | None:
    """Comma-separated items, each once (first occurrence wins); None for no text or no items."""
    if text is None:
        return None
    items = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    return items or None


def parse_option(text: str | None, option: str, example: str) -> list[str] | None:
    """Like parse_list, but an option given with nothing in it is an error, not "the default"."""
    items = parse_list(text)
    if text is not None and items is None:
        raise UserError(f"{option} {text!r} names nothing; give a comma-separated list such as {example}, "
                        "or leave the option out for the default")
    return items


def parse_threads(text: str | None) -> list[int] | None:
    items = parse_option(text, "--threads", "1,2")
    if items is None:
        return None
    try:
        threads = [int(t) for t in items]
    except ValueError:
        raise UserError(f"--threads expects comma-separated positive integers such as 1,2, got {text!r}") from None
    if any(t < 1 for t in threads):
        raise UserError(f"--threads must be positive, got {text!r}")
    return list(dict.fromkeys(threads))  # "1,01" is 1 twice


def resolve_workloads(suite: str | None, workloads: str | None,
                      notes: list[str] | None = None) -> list[str]:
    """The suite's ids, then --workloads' ids (canonical spelling, each once); default: the quick suite.

    A non-canonical spelling of an id (``M016`` for ``M16``) is replaced by the canonical one,
    with a note in ``notes``: artifacts, records and layer pairs are keyed by the canonical id.
    """
    ids = registry.suite(suite) if suite else []
    for given in parse_option(workloads, "--workloads", "conv-standard-M32-N64-k3-x56-s1,mobilenet_v2-1.0-224") or []:
        workload_id = registry.canonical(given)  # raises a one-line error for a bad id
        if workload_id != given and notes is not None:
            notes.append(f"workload {given} is spelled {workload_id}; measuring it under that id")
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
        delegates: list[str | None] = (list(device.delegates) if transport(device.transport).delegates
                                       else [None])
        for backend in backends:
            allowed = BACKENDS[backend].delegates
            for thread_count in threads:
                for delegate in [d for d in delegates if d is None or allowed is None or d in allowed]:
                    for workload_id in runnable_workloads(backend, selection.workload_ids):
                        tag = f"{backend}-{delegate}" if delegate else backend
                        job_id = f"{device.name}/{tag}/t{thread_count}/{workload_id}"
                        for repeat in range(selection.repeats):
                            jobs.append(Job(job_id if selection.repeats == 1 else f"{job_id}#{repeat + 1}",
                                            workload_id, device.name, backend, thread_count, delegate,
                                            repeat=repeat, repeats=selection.repeats))
    return jobs


def runnable_workloads(backend: str, workload_ids: list[str]) -> list[str]:
    """The workloads whose precision the backend runs (torch runs no -int8 id, for one)."""
    precisions = BACKENDS[backend].precisions
    return [w for w in workload_ids if registry.split_precision(w)[1] in precisions]


def precision_notes(backends: list[str], workload_ids: list[str]) -> list[str]:
    """One line per backend that leaves some of the workloads out for their precision."""
    notes = []
    for backend in backends:
        left_out = len(workload_ids) - len(runnable_workloads(backend, workload_ids))
        if left_out:
            others = [b for b, info in BACKENDS.items() if "int8" in info.precisions and info.device == "cpu"]
            notes.append(f"{backend} skips {left_out} int8 workload(s): it runs "
                         f"{', '.join(BACKENDS[backend].precisions)} only (int8 runs on {', '.join(others)})")
    return notes


def parse_repeats(repeats: int) -> int:
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1 (fresh runner invocations per job), got {repeats}")
    return repeats


def device_lines(devices: list[Device], chosen: list[str]) -> list[str]:
    """Per device: the backends it will run and, for each chosen backend it will not, why not."""
    lines = []
    for device in devices:
        runs = [b for b in device.backends if b in chosen]
        info = transport(device.transport)
        skips = []
        for backend in chosen:
            if backend in runs:
                continue
            if info.allowed_backends is not None and backend not in info.allowed_backends:
                why = f"{device.transport} devices {info.allowed_backends_why or 'cannot run it'}"
            else:
                why = f"not among its backends in {device.source or 'devices.yaml'}"
            skips.append(f"{backend} ({why})")
        line = f"{device.name}: {', '.join(runs) or 'nothing'}"
        lines.append(line + (f"; skips {', '.join(skips)}" if skips else ""))
    return lines


def available_backends(devices: list[Device], requested: list[str] | None) -> tuple[list[str], list[str]]:
    """(backends to run, one message per requested backend this host cannot export or run).

    A backend is skipped when this host lacks what exports its artifact, or, for a device whose
    runner runs on this host, what runs it; the message carries the install hint.
    """
    usable, skipped = set(), []
    for name in sorted({b for d in devices for b in d.backends}):
        on_host = any(transport(d.transport).runs_on_host and name in d.backends for d in devices)
        missing = BACKENDS[name].missing_modules(on_host)
        if not missing:
            usable.add(name)
        elif requested is None or name in requested:
            skipped.append(f"skipping backend {name}: {', '.join(missing)} not installed; "
                           f"{BACKENDS[name].install_hint()}")
    return [b for b in (requested or sorted(usable)) if b in usable], skipped
