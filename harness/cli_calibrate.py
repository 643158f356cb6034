"""``harness calibrate``, and the quick calibration ``harness run`` makes first when a ceiling is missing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

# CONVBENCH_CALIBRATE=off: `harness run` never calibrates by itself (as --no-calibrate); the
# test suite sets it, so that its many short runs do not each spend seconds calibrating.
CALIBRATE_ENV = "CONVBENCH_CALIBRATE"


def auto_calibration_disabled() -> bool:
    return os.environ.get(CALIBRATE_ENV, "").strip().lower() in {"off", "0", "no", "false"}


def _gb(value: float | None) -> str:
    return f"{value / 1e9:.1f}" if value else "-"


def _int8(ceiling: Any) -> str:
    if ceiling.int8_peak_macs_per_s:
        return f"{ceiling.int8_peak_macs_per_s / 1e9:.1f}"
    failed = (ceiling.sources or {}).get("compute_int8", {}).get("error")
    return "failed" if failed else "-"


def print_ceilings(ceilings: list[Any], reused: list[Any], title: str) -> None:
    from harness.cli import _print_table

    rows = []
    for ceiling, how in [(c, "measured") for c in ceilings] + [(c, "stored") for c in reused]:
        tag = f"{ceiling.backend} ({ceiling.delegate})" if ceiling.delegate else ceiling.backend
        rows.append([f"{ceiling.device}/{tag}/t{ceiling.threads}", ceiling.fingerprint_id,
                     ceiling.runtime_version or "?", f"{ceiling.peak_macs_per_s / 1e9:.1f}", _int8(ceiling),
                     _gb(ceiling.stream_bytes_per_s), _gb(ceiling.cache_bytes_per_s),
                     f"{ceiling.ridge_intensity:.1f}", how])
    _print_table(title, ["device/backend/threads", "fingerprint", "runtime", "GMAC/s", "int8 GMAC/s", "GB/s stream",
                         "GB/s cache", "ridge MAC/B", "ceiling"], rows,
                 footer="GMAC/s: a 3x3 conv of 462 MMACs (int8: the same conv quantized, where the backend runs int8; "
                        "'failed': see the calibration run); GB/s: fp32 matrix-vector products streaming 64 MiB "
                        "(stream) and 4 MiB (cache) of weights; ridge = peak / stream bandwidth")


def calibrate_before_run(selected: list[Any], chosen: list[str], threads: list[int] | None, results_dir: Path,
                         recalibrate: bool, console: Any) -> None:
    """The quick calibration `harness run` makes for whatever in its plan has no ceiling yet."""
    from harness import calibration
    from harness.cli_progress import RunProgress

    wanted = calibration.targets(selected, chosen, threads)
    stored = calibration.load_ceilings(results_dir)
    missing = wanted if recalibrate else calibration.uncalibrated(wanted, stored)[0]
    if not missing:
        return
    why = "--recalibrate" if recalibrate else "no ceilings stored for this device yet; --no-calibrate skips this"
    console.print(f"calibrating {', '.join(t.label for t in missing)} first ({why})", markup=False,
                  soft_wrap=True)
    with RunProgress(console) as progress:
        outcome = calibration.run_calibration(missing, results_dir, recalibrate=True, max_seconds=0.5,
                                              on_event=progress.on_event)
    for ceiling in outcome.ceilings:
        console.print(f"  {ceiling.device}/{ceiling.backend}/t{ceiling.threads}: "
                      f"{ceiling.peak_macs_per_s / 1e9:.1f} GMAC/s ({_int8(ceiling)} int8), "
                      f"{_gb(ceiling.stream_bytes_per_s)} GB/s stream, "
                      f"{_gb(ceiling.cache_bytes_per_s)} GB/s cache", markup=False, soft_wrap=True)
    for failure in outcome.failures:
        console.print(f"  calibration failed on {failure.device}/{failure.backend}/t{failure.threads}: "
                      f"{failure.reason}", style="yellow", markup=False, soft_wrap=True)
    console.print(f"  calibrated in {outcome.seconds:.0f} s", markup=False)


def register(main: click.Group) -> None:
    @main.command("calibrate", short_help="Measure each device x backend x threads' compute and memory ceilings.")
    @click.option("--devices", "device_names", default=None, help="Comma-separated device names from devices.yaml.")
    @click.option("--devices-file", type=click.Path(path_type=Path), default=None,
                  help="Devices file (default: $CONVBENCH_DEVICES or ./devices.yaml).")
    @click.option("--backends", default=None, help="Comma-separated backends (default: every one a device declares).")
    @click.option("--threads", default=None, help="Comma-separated thread counts, e.g. 1,2 (default: per device).")
    @click.option("--recalibrate", is_flag=True, help="Measure again even where ceilings are stored.")
    @click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
                  help="Invocations per kernel; the fastest one counts (interference only lowers a ceiling).")
    @click.option("--max-time", type=float, default=1.0, show_default=True,
                  help="Maximum timed seconds per kernel invocation.")
    @click.option("--out", "results_dir", type=click.Path(path_type=Path), default=None,
                  help="Results directory (default: $CONVBENCH_RESULTS or ./results).")
    @click.option("--json", "as_json", is_flag=True, help="Print the ceilings as JSON.")
    def calibrate_command(device_names: str | None, devices_file: Path | None, backends: str | None,
                          threads: str | None, recalibrate: bool, repeats: int, max_time: float,
                          results_dir: Path | None, as_json: bool) -> None:
        """Measure what each runtime itself reaches on each device: peak MAC/s of a large compute-bound
        conv, and the bandwidth of a kernel streaming a working set far beyond the last-level cache
        and of one inside it.

        Ceilings are stored per device fingerprint in <results>/calibrations/ and reused by later
        runs (`harness run` calibrates first when one is missing); --recalibrate measures again.
        """
        import json

        from rich.console import Console

        from harness import calibration, plan
        from harness.cli import _writable_results_dir, select_devices
        from harness.cli_progress import RunProgress
        from harness.errors import UserError
        from harness.store import default_results_dir

        if max_time <= 0:
            raise UserError(f"--max-time must be > 0 seconds, got {max_time:g}")
        selected, backend_list, thread_list = select_devices(devices_file, device_names, backends, threads)
        console = Console(stderr=as_json)  # --json: stdout holds the JSON alone
        chosen, skipped = plan.available_backends(selected, backend_list)
        for message in skipped:
            console.print(message, style="yellow", markup=False, soft_wrap=True)
        wanted = calibration.targets(selected, chosen, thread_list)
        if not wanted:
            raise UserError("nothing to calibrate: no selected device offers the selected backends "
                            f"({', '.join(backend_list or []) or 'none installed'})")
        root = _writable_results_dir(results_dir or default_results_dir())
        with RunProgress(console) as progress:
            outcome = calibration.run_calibration(wanted, root, recalibrate=recalibrate, repeats=repeats,
                                                  max_seconds=max_time, on_event=progress.on_event)
        if as_json:
            click.echo(json.dumps({"measured": [c.to_dict() for c in outcome.ceilings],
                                   "stored": [c.to_dict() for c in outcome.reused],
                                   "failed": [vars(f) for f in outcome.failures],
                                   "run": str(outcome.run_path) if outcome.run_path else None,
                                   "seconds": outcome.seconds}, indent=2))
        else:
            print_ceilings(outcome.ceilings, outcome.reused, "ceilings (per device fingerprint)")
            for failure in outcome.failures:
                click.echo(f"calibration failed on {failure.device}/{failure.backend}/t{failure.threads}: "
                           f"{failure.reason}", err=True)
            if outcome.run_path:
                click.echo(f"measured in {outcome.seconds:.0f} s; stored in {calibration.calibrations_dir(root)} "
                           f"(run: {outcome.run_path})")
        if outcome.failures:
            raise SystemExit(1)


def uncovered_note(records: list[dict], results_dir: Path) -> str | None:
    """A line naming the measured device x backend x threads whose fingerprint has no stored ceiling.

    Before a run a remote device's fingerprint is taken from its last calibration; if the
    device has changed since (another board under the name, an OS update), its records say so.
    """
    from harness.calibration import ceiling_for, load_ceilings

    ceilings = load_ceilings(results_dir)
    missing = sorted({f"{r['device']}/{r['backend']}/t{r['threads']}" for r in records
                      if r.get("status") == "ok" and ceiling_for(r, ceilings) is None})
    if not missing:
        return None
    devices = ",".join(sorted({m.split("/")[0] for m in missing}))
    return (f"note: no calibration matches the fingerprint {', '.join(missing)} ran with (the device changed "
            f"since it was calibrated?): `harness calibrate --devices {devices}` measures its ceilings")
