"""The host side of the runner protocol, shared by every transport that runs ``runner.pyz``.

A transport decides *where* files live and *how* the runner process is started (a local
subprocess, a command over SSH); this module builds the plan the runner reads and turns
the runner's JSON lines into measurement records, so both transports behave alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.base import (
    Artifact,
    Job,
    ResultCallback,
    StatusCallback,
    TimingPolicy,
    cooldown_status,
)
from harness.records import ErrorKind, check_output, error_record, raw_record
from harness.registry import BACKENDS


@dataclass
class PlanItem:
    job: Job
    artifact: Artifact  # its reference output checks the runtime's output
    model: str  # paths as the runner sees them (local or remote)
    input: str
    output: str
    local_output: Path  # where the host finds the output once the transport fetched it


def make_plan(
    backend: str,
    threads: int,
    items: list[PlanItem],
    policy: TimingPolicy,
    sysfs_root: str = "/sys",
    energy: Mapping[str, Any] | None = None,
    cooldown: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The runner's plan; ``cooldown`` (target_c, max_wait_s, zones) makes it wait for a hot device."""
    spec = BACKENDS[backend]
    return {
        "runtime": spec.runtime,
        "device": spec.device,
        "threads": threads,
        "policy": policy.to_dict(),
        "sysfs_root": sysfs_root,
        "energy": dict(energy or {"sensor": "auto"}),
        **({"cooldown": dict(cooldown)} if cooldown else {}),
        "items": [{"job_id": i.job.job_id, "model": i.model, "input": i.input, "output": i.output,
                   # a block size fixed by an earlier run keeps the statistic comparable
                   "block_size": i.job.options.get("block_size")}
                  for i in items],
    }


@dataclass
class RunnerSession:
    """Consumes runner output lines and emits one record per job."""

    transport: str
    items: list[PlanItem]
    on_result: ResultCallback
    fetch_output: Callable[[PlanItem], None] = lambda item: None
    on_status: StatusCallback | None = None  # the runner's reports while it waits (a cool-down)
    hello: dict[str, Any] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)

    def feed(self, line: str) -> None:
        line = line.strip()
        if not line.startswith("{"):
            return  # runtimes print banners (e.g. "INFO: Created TensorFlow Lite XNNPACK delegate")
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            return
        if doc.get("type") == "hello":
            self.hello = doc
        elif doc.get("type") == "result":
            self._result(doc)
        elif doc.get("type") == "status" and self.on_status is not None and isinstance(doc.get("cooldown"), dict):
            try:
                status = cooldown_status(doc["cooldown"])
            except (KeyError, TypeError, ValueError):
                return  # a malformed report costs the display line, never the measurement
            self.on_status(status)

    def _result(self, doc: dict[str, Any]) -> None:
        item = next((i for i in self.items if i.job.job_id == doc.get("job_id")), None)
        if item is None or item.job.job_id in self.done:
            return
        record = raw_record(item.job, self.transport, **{k: v for k, v in doc.items() if k not in ("type", "job_id")})
        record["runtime"] = self.hello.get("runtime")
        record["runtime_version"] = self.hello.get("runtime_version")
        record["device_fingerprint"] = self.hello.get("fingerprint")
        record.update(artifact_facts(item.artifact))
        if not doc.get("error"):
            # Checked here, while the output file exists: records leave the transport checked.
            try:
                self.fetch_output(item)
                record["output_check"] = check_output(item.local_output, item.artifact)
            except Exception as exc:  # the measurement stands; only the check is lost
                record["output_check"] = {"status": "not_checked",
                                          "reason": f"cannot fetch the output: {type(exc).__name__}: {exc}"}
        self.done.add(item.job.job_id)
        self.on_result(record)

    def fail_remaining(self, message: str, kind: ErrorKind) -> None:
        """Report every job without a result as failed with ``message``."""
        if self.hello.get("error"):
            message, kind = f"{message}: {self.hello['error']}", ErrorKind.RUNTIME
        for item in self.items:
            if item.job.job_id not in self.done:
                record = error_record(item.job, self.transport, message, kind,
                                      runtime=self.hello.get("runtime"),
                                      runtime_version=self.hello.get("runtime_version"),
                                      device_fingerprint=self.hello.get("fingerprint"))
                self.done.add(item.job.job_id)
                self.on_result(record)

    def remaining(self) -> list[PlanItem]:
        return [i for i in self.items if i.job.job_id not in self.done]


# What an exporter found out about its artifact (harness/exporters: Exported.meta, stored in the
# artifact's meta.json) that every record of that artifact carries: ExecuTorch's ``delegation``
# (ops XNNPACK runs vs ops left to ExecuTorch's portable kernels).
ARTIFACT_FACTS = ("delegation",)


def artifact_facts(artifact: Artifact) -> dict[str, Any]:
    """The ``ARTIFACT_FACTS`` of an artifact's meta.json (on the host, beside the artifact); {} when absent."""
    try:
        meta = json.loads((Path(artifact.path).parent / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return {key: meta[key] for key in ARTIFACT_FACTS if isinstance(meta, dict) and key in meta}


def parse_check(returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    """The result of ``runner.pyz --check`` as a device check: usable, problems, facts."""
    doc = None
    for line in stdout.splitlines():
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
    if doc is None:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return {"usable": False, "problems": [f"runner --check failed (exit {returncode}): {tail}"]}
    runtimes = doc.get("runtimes", {})
    problems = []
    if not any("version" in r for r in runtimes.values()):
        problems.append("no runtime available: install onnxruntime, ai-edge-litert or torch on the device")
    doc.update(usable=not problems, problems=problems)
    return doc
