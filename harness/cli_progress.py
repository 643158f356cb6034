"""What `harness run` draws while it measures: the run's events, shown with rich.

The run itself (harness/run.py) knows nothing of the terminal; it emits events and this
view draws them. Redraws are capped at one a second: on a 2-core machine a faster refresh
shows up as "other CPU" in local jobs' busy-machine figure.
"""

from __future__ import annotations

from typing import Any

from harness.run import (
    DeviceNotice,
    DeviceState,
    Event,
    ExportProgress,
    Interrupted,
    JobRecorded,
    MeasuringStarted,
    Problem,
)

REFRESHES_PER_SECOND = 1


class RunProgress:
    """A spinner while artifacts are prepared, then one bar for all jobs and one per device."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self._status: Any = None
        self._progress: Any = None
        self._overall: Any = None
        self._devices: dict[str, Any] = {}

    def __enter__(self) -> RunProgress:
        self._status = self.console.status("preparing artifacts", refresh_per_second=REFRESHES_PER_SECOND)
        self._status.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop_status()
        if self._progress is not None:
            self._progress.stop()

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _print(self, text: str, style: str | None = None) -> None:
        target = self._progress.console if self._progress is not None else self.console
        target.print(text, style=style, markup=False, soft_wrap=True)

    def on_event(self, event: Event) -> None:
        from rich.markup import escape

        if isinstance(event, ExportProgress):
            if self._status is not None:
                self._status.update(escape(event.message))
            if event.ok is not None:
                self._print("  " + event.message, None if event.ok else "red")
        elif isinstance(event, MeasuringStarted):
            self._start_bars(event)
        elif isinstance(event, JobRecorded):
            if self._progress is not None:
                self._progress.advance(self._overall)
                self._progress.advance(self._devices[event.job.device])
            record = event.record
            if record["status"] != "ok":
                detail = record.get("error") or "; ".join(record.get("problems", []))
                self._print(f"  {record['status']}: {event.job.job_id}: {detail}", "yellow")
        elif isinstance(event, DeviceState):
            if self._progress is not None:
                # A device's progress line is its state now, e.g. "cooling down: cpu-thermal 41.2 °C > ..."
                self._progress.update(self._devices[event.device], description=f"  {event.device}: {event.state}")
        elif isinstance(event, DeviceNotice):
            self._print(f"  {event.device}: {event.message}", "yellow")
        elif isinstance(event, Interrupted):
            self._print(f"interrupted ({event.signal_name}): keeping the measurements made so far", "yellow")
        elif isinstance(event, Problem):
            self._print(event.message, "red")

    def _start_bars(self, event: MeasuringStarted) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._stop_status()
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=self.console, transient=False,
                                  refresh_per_second=REFRESHES_PER_SECOND)
        self._progress.start()
        self._overall = self._progress.add_task("all jobs", total=sum(event.jobs_per_device.values()),
                                                completed=event.already_recorded)
        self._devices = {name: self._progress.add_task(f"  {name}: queued", total=count)
                         for name, count in event.jobs_per_device.items()}
