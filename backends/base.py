"""The one small interface every transport implements.

Vocabulary used throughout convbench:

* a *backend* is a runtime that executes an artifact: ``torch``, ``torch-cuda``,
  ``onnxruntime``, ``onnxruntime-cuda`` or ``tflite`` (what users pass to ``--backends``;
  declared in ``harness/registry.py``);
* a *transport* moves the runner and the artifact to a device and the result back:
  ``local`` (a subprocess), ``ssh`` (paramiko) or ``adb`` (an Android phone).

A transport knows how to run artifacts on its device and nothing about reports.
It receives a batch of jobs for one device and one (backend, threads) pair, and
calls ``on_result`` once per job, as each finishes, with the raw record that
``harness.records.raw_record`` or ``error_record`` builds (``finalize`` types and checks
it).  A failure of one job is reported as a record with ``status="error"`` and an error
kind; only a failure of the whole device raises ``DeviceError``.  Meanwhile it may tell
``on_status`` what takes long without a result yet (``DeviceStatus``: a cool-down wait), so
the console never sits silent for minutes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATUS_OK = "ok"  # measured, output matches the PyTorch reference (or cannot be checked)
STATUS_INVALID = "invalid"  # measured, but the number must not be trusted (mismatch, fallback)
STATUS_ERROR = "error"  # not measured

class DeviceError(RuntimeError):
    """The device as a whole cannot be used (unreachable, unauthorized, vanished)."""


@dataclass(frozen=True)
class Artifact:
    """One exported workload in one format, with its reference input and output."""

    workload_id: str
    format: str  # "torch" (.pt2), "onnx" or "tflite"
    path: Path
    input_path: Path  # .npy, already in the artifact's layout
    reference_output_path: Path  # .npy, PyTorch's output, in the artifact's layout
    layout: str  # "NCHW" or "NHWC"
    sha256: str


@dataclass(frozen=True)
class TimingPolicy:
    """How long the runner measures one job (adaptive stopping)."""

    warmup_runs: int = 3
    warmup_seconds: float = 0.2
    min_runs: int = 10
    max_runs: int = 100_000
    min_seconds: float = 0.5
    max_seconds: float = 5.0
    target_ci_rel_width: float = 0.01  # stop once the 95% CI of the median is this narrow
    energy_idle_seconds: float = 0.0  # idle power window before each job; 0 disables
    energy_min_window_s: float = 1.0  # shorter timed windows give "unavailable" energy
    block_min_ns: int = 100_000  # calls faster than this are timed in blocks (per-call mean per sample)
    # Real extra work inside each timed iteration: spin this fraction of the iteration's own time
    # (``selftest --gate`` and tests inject slowdowns with it; never set for a real measurement).
    slowdown_fraction: float = 0.0
    reference_probe_seconds: float = 0.2  # the machine's reference kernel, timed in every invocation; 0: off
    # After timing, run the runtime's own per-op profiler for a short loop (harness/layers.py's
    # cross-check); off unless asked for (`run --profile-ops`, or a layers-of: suite): it costs a
    # second session and a few inferences per invocation.
    op_profile: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Job:
    """One measurement to make: a workload on a device with a backend and thread count."""

    job_id: str
    workload_id: str
    device: str
    backend: str
    threads: int
    delegate: str | None = None  # Android: cpu | xnnpack | gpu | nnapi
    options: Mapping[str, Any] = field(default_factory=dict)
    repeat: int = 0  # which invocation of the job this is (0-based), of ``repeats``
    repeats: int = 1

    @property
    def batch_key(self) -> tuple[str, str, int, str | None]:
        return (self.device, self.backend, self.threads, self.delegate)

    @property
    def series_key(self) -> tuple[str, str, int, str | None, str]:
        """The job across its invocations: every repeat of it shares this key."""
        return (self.device, self.backend, self.threads, self.delegate, self.workload_id)


ResultCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class DeviceStatus:
    """What a device is doing between two results, for the progress display (never stored).

    A transport reports one while something takes long without a result to show for it, e.g.
    a cool-down wait: ``DeviceStatus("cooling down: cpu-thermal 41.2 °C > 40 °C target (35 s of
    at most 300 s)")``, each report replacing the last.  ``done`` means the wait is over: the
    display shows the batch again; ``notice`` asks for the text to stay as a line of its own in
    the console's log (what a user should still see after the run: a cool-down that timed out).
    """

    text: str
    done: bool = False
    notice: bool = False


StatusCallback = Callable[[DeviceStatus], None]


def cooldown_status(progress: Mapping[str, Any]) -> DeviceStatus:
    """The status of a cool-down wait from its progress report (``backends.runner.cooldown``)."""
    from backends.runner.cooldown import status_text

    over = bool(progress.get("timed_out") or progress.get("cooled"))
    return DeviceStatus(status_text(progress), done=over, notice=bool(progress.get("timed_out")))


class Transport(ABC):
    """Moves the runner and artifacts to one device, runs them, returns records."""

    name: str = "abstract"

    @abstractmethod
    def run_batch(
        self,
        jobs: list[Job],
        artifacts: Mapping[str, Artifact],
        policy: TimingPolicy,
        on_result: ResultCallback,
        on_status: StatusCallback | None = None,
    ) -> None:
        """Run jobs of one (backend, threads, delegate) batch, calling on_result per job.

        ``artifacts`` maps workload id to the artifact of the backend's format.
        Must call ``on_result`` exactly once per job unless it raises DeviceError.  A record's
        ``output_path`` (the runtime's output on this host) exists only until on_result returns.
        ``on_status`` (optional) hears what the device is doing meanwhile (a cool-down wait), as
        it happens; it must not raise, and a transport may call it from any thread.
        """

    @abstractmethod
    def check(self) -> dict[str, Any]:
        """Reachability, runtimes with versions, sensors, temperatures, fingerprint.

        Returns a dict with at least ``usable`` (bool) and ``problems`` (list of str).
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
