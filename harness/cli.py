"""The ``harness`` command line.

Start-up must stay instant: torch, onnxruntime, pandas and matplotlib are imported only
inside the commands that need them.  User errors print one line and exit with code 2;
no traceback is shown for them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from harness.cli_calibrate import auto_calibration_disabled, calibrate_before_run, uncovered_note
from harness.cli_cluster import cluster_run_options, resolve_cluster
from harness.errors import UserError

# Invocations per job by default: enough for `compare` to give verdicts on a shared 2-core VM
# (see README, "Nightly regression gate", for the calibration behind it).
DEFAULT_REPEATS = 5


class HarnessGroup(click.Group):
    """Turns UserError into a one-line message and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        from harness.store import reset_warnings

        reset_warnings()  # each command warns about a damaged results store once
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=HarnessGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="convbench")
def main() -> None:
    """convbench: measure standard vs depthwise-separable convolutions and MobileNets
    on CPUs, GPUs, phones and boards, and compare with the theoretical savings."""


def _human(value: float, unit: str = "") -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}{unit}"
    return f"{value:.0f}{unit}"


def _print_table(title: str, columns: list[str], rows: list[list[str]], footer: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=True,
                         min_width=len(column))
    for row in rows:
        table.add_row(*row)
    console = Console(width=max(120, Console().width))
    if not console.is_terminal:  # a log or a pipe: never cut a cell, whatever the width it assumes
        natural = console.measure(table, options=console.options.update_width(100_000)).maximum
        console = Console(width=max(120, natural))
    console.print(table)
    if footer:
        console.print(footer)


@main.group(cls=HarnessGroup, invoke_without_command=True)
@click.option("--suite", "suite_name", default="quick", show_default=True, help="Named suite to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def workloads(ctx: click.Context, suite_name: str, as_json: bool) -> None:
    """List a suite's workloads with their analytic cost."""
    if ctx.invoked_subcommand is not None:
        return
    from harness import workloads as registry
    from harness.catalog import suite_rows

    rows = suite_rows(registry.suite(suite_name))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _print_table(
        f"suite {suite_name}: {len(rows)} workloads (bytes at each workload's precision; "
        "ratio = separable/standard MACs)",
        ["workload", "kind", "MACs", "params", "bytes", "MAC/B", "ratio", "1/N+1/Dk²", "speedup"],
        [[r["workload_id"], r["kind"], _human(r["macs"]), _human(r["params"]), _human(r["bytes"], "B"),
          f"{r['intensity']:.1f}",
          f"{r['ratio']:.4f}" if r.get("ratio") is not None else "",
          f"{r['theoretical_ratio']:.4f}" if r.get("theoretical_ratio") is not None else "",
          f"{1 / r['ratio']:.2f}x" if r.get("ratio") else ""]
         for r in rows],
    )


@workloads.command("show")
@click.argument("workload_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--run", "run_ref", default=None,
              help="Also show each distinct layer as measured in this run (harness run --suite layers-of:NETWORK).")
@click.option("--results", "results_dir", type=click.Path(path_type=Path), default=None,
              help="Results directory (default: $CONVBENCH_RESULTS or ./results).")
def workloads_show(workload_id: str, as_json: bool, run_ref: str | None, results_dir: Path | None) -> None:
    """Per-layer cost table of one workload, with totals (and with --run, its layers' measured times)."""
    from harness import workloads as registry
    from harness.cli_analysis import layer_measurements, print_layer_measurements
    from harness.cost import network_cost

    network = registry.get(workload_id)
    cost = network_cost(network)
    int8 = network.precision == "int8"
    measured = layer_measurements(workload_id, run_ref, results_dir) if run_ref else None
    if as_json:
        click.echo(json.dumps({"workload_id": workload_id, "layers": [layer.row() for layer in cost.layers],
                               "totals": cost.totals(), **({"measured": measured} if measured else {})},
                              indent=2, default=str))
        return
    rows = [[layer.name, layer.op, "x".join(map(str, layer.in_shape)), "x".join(map(str, layer.out_shape)),
             _human(layer.macs), _human(layer.params), _human(layer.bytes_int8 if int8 else layer.bytes_fp32, "B"),
             f"{layer.macs / layer.bytes_int8 if int8 else layer.intensity:.1f}"]
            for layer in cost.layers]
    rows.append(["total", "", "", "", _human(cost.macs), _human(cost.params),
                 _human(cost.bytes_for(network.precision), "B"), f"{cost.intensity_for(network.precision):.1f}"])
    _print_table(f"{workload_id}: {len(cost.layers)} layers ({network.precision} bytes)",
                 ["layer", "op", "in", "out", "MACs", "params", "bytes", "MAC/B"], rows,
                 footer=f"total: {cost.macs:,} MACs, {cost.params:,} parameters, "
                        f"{cost.bytes_fp32:,} bytes fp32, {cost.bytes_int8:,} bytes int8")
    if measured:
        print_layer_measurements(workload_id, measured)


def timing_options(command: Any) -> Any:
    """How each job is measured: the options `run` and `ab` share."""
    options = [
        click.option("--repeats", type=int, default=DEFAULT_REPEATS, show_default=True,
                     help="Fresh runner invocations per job, interleaved in randomized rounds: the unit `compare` "
                          "tests on (at least 2 per side for a verdict; 5 or more for a gate)."),
        click.option("--max-time", type=float, default=1.0, show_default=True,
                     help="Maximum timed seconds per job invocation (a job's --repeats invocations share the "
                          "work that one long invocation used to do; the spread between them is what counts)."),
        click.option("--min-time", type=float, default=0.5, show_default=True,
                     help="Minimum timed seconds per job invocation."),
        click.option("--min-runs", type=click.IntRange(min=1), default=10, show_default=True,
                     help="Minimum timed iterations per job invocation."),
        click.option("--warmup-runs", type=click.IntRange(min=0), default=3, show_default=True,
                     help="Untimed iterations after the first inference (and at least 0.2 s unless 0)."),
        click.option("--target-ci", type=float, default=0.01, show_default=True,
                     help="Stop an invocation once the 95% CI of its median is this narrow (relative)."),
        click.option("--energy-idle", type=float, default=0.0, show_default=True,
                     help="Seconds of idle power measured before each job (subtracted from its energy)."),
        click.option("--profile-ops", is_flag=True,
                     help="After timing, also run the runtime's own per-op profiler (onnxruntime, torch) for a "
                          "short loop: the cross-check of a network's layers (on by default for a layers-of: "
                          "suite)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command("run")
@click.option("--suite", default=None, help="Named suite (default: quick).")
@click.option("--workloads", "workload_ids", default=None, help="Comma-separated workload ids (added to --suite).")
@click.option("--backends", default=None, help="Comma-separated backends (default: every one a device declares).")
@click.option("--threads", default=None, help="Comma-separated thread counts, e.g. 1,2 (default: per device).")
@click.option("--devices", "device_names", default=None, help="Comma-separated device names from devices.yaml.")
@click.option("--devices-file", type=click.Path(path_type=Path), default=None,
              help="Devices file (default: $CONVBENCH_DEVICES or ./devices.yaml).")
@timing_options
@click.option("--out", "results_dir", type=click.Path(path_type=Path), default=None,
              help="Results directory (default: $CONVBENCH_RESULTS or ./results).")
@cluster_run_options
@click.option("--recalibrate", is_flag=True,
              help="Measure each device x backend x threads' ceilings again before the run (see `harness calibrate`).")
@click.option("--no-calibrate", is_flag=True,
              help="Do not calibrate first, even where no ceilings are stored for a device (also: "
                   "CONVBENCH_CALIBRATE=off).")
def run_command(suite: str | None, workload_ids: str | None, backends: str | None, threads: str | None,
                device_names: str | None, devices_file: Path | None, repeats: int, max_time: float,
                min_time: float, min_runs: int, warmup_runs: int, target_ci: float, energy_idle: float,
                profile_ops: bool, results_dir: Path | None, cluster: str | None,
                tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None,
                recalibrate: bool = False, no_calibrate: bool = False) -> None:
    """Benchmark workloads on devices; results go to results/<run-id>/.

    Before measuring, each device x backend x threads without stored ceilings for its
    fingerprint gets a quick calibration (`harness calibrate`): a few seconds, once.
    """
    from harness import plan

    min_time = _min_time_for(min_time, max_time)
    profile_ops = profile_ops or bool(suite and suite.startswith("layers-of:"))
    policy_args = (min_time, max_time, min_runs, warmup_runs, target_ci, energy_idle, profile_ops)
    notes: list[str] = []
    workload_list = plan.resolve_workloads(suite, workload_ids, notes)
    selected, backend_list, thread_list = select_devices(devices_file, device_names, backends, threads)

    if recalibrate and no_calibrate:
        raise UserError("--recalibrate and --no-calibrate contradict each other; give one")
    # A cluster's workers reach its devices; this host may not: calibrate those with `harness calibrate` there.
    calibrate = recalibrate or not (no_calibrate or auto_calibration_disabled() or cluster)
    outcome = _measure(selected, workload_list, suite, backend_list, thread_list, repeats, policy_args, notes,
                       results_dir, cluster_run=(cluster, tls_ca, tls_cert, tls_key),
                       calibrate=calibrate, recalibrate=recalibrate)
    _print_run_summary(outcome.path)
    if calibrate:
        note = uncovered_note(outcome.records, outcome.path.parent)
        if note:
            click.echo(note)
    _finish_run(outcome)


def select_devices(devices_file: Path | None, device_names: str | None, backends: str | None,
                   threads: str | None) -> tuple[list, list[str] | None, list[int] | None]:
    """(devices, backends, threads) from the options `run` and `calibrate` share, each validated."""
    from harness import devices as devices_mod
    from harness import plan

    backend_list = plan.parse_option(backends, "--backends", "onnxruntime,tflite")
    plan.validate_backends(backend_list)
    thread_list = plan.parse_threads(threads)
    known = _load_devices_or_local(devices_file)
    names = plan.parse_option(device_names, "--devices", "local,pi4") or (["local"] if "local" in known
                                                                         else list(known)[:1])
    return devices_mod.select(known, names), backend_list, thread_list


def _measure(selected: list, workload_list: list[str], suite: str | None, backend_list: list[str] | None,
             thread_list: list[int] | None, repeats: int, policy_args: tuple, notes: list[str],
             results_dir: Path | None, cluster_run: tuple = (None, None, None, None), calibrate: bool = False,
             recalibrate: bool = False) -> Any:
    """Plan, announce and execute a run with a live progress display; returns its RunOutcome.

    ``calibrate``: first measure the ceilings of whatever in the plan has none stored (all with
    ``recalibrate``), on the same devices, outside the run (see harness/calibration.py).
    """
    from rich.console import Console

    from harness import plan
    from harness.cli_progress import RunProgress
    from harness.run import execute
    from harness.store import default_results_dir

    console = Console(stderr=False)
    for note in notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    chosen, skipped = plan.available_backends(selected, backend_list)
    for message in skipped:
        console.print(message, style="yellow", markup=False, soft_wrap=True)
    for message in plan.precision_notes(chosen, workload_list):
        console.print(f"note: {message}", markup=False, soft_wrap=True)
    repeats = plan.parse_repeats(repeats)
    jobs = plan.make_jobs(selected, plan.Selection(workload_list, chosen, thread_list, repeats))
    if not jobs:
        raise UserError("nothing to run: no selected device offers the selected backends "
                        f"({', '.join(backend_list or []) or 'none installed'})")
    policy = plan.timing_policy(*policy_args)
    per_job = f" x {repeats} invocations" if repeats > 1 else ""
    console.print(f"{len(jobs) // repeats} jobs{per_job}: {len(workload_list)} workloads on "
                  f"{', '.join(d.name for d in selected)} with {', '.join(chosen)}")
    lines = plan.device_lines(selected, chosen)
    if len(selected) > 1 or any("; skips " in line for line in lines):
        for line in lines:
            console.print(f"  {line}", markup=False, soft_wrap=True)
    cluster_address, cluster_security = resolve_cluster(*cluster_run)
    results_root = _writable_results_dir(results_dir or default_results_dir())
    if calibrate:
        calibrate_before_run(selected, chosen, thread_list, results_root, recalibrate, console)
    request = plan.RunRequest(selected, jobs, policy, results_root, workload_list, suite, skipped,
                              cluster=cluster_address, cluster_security=cluster_security, repeats=repeats)
    with RunProgress(console) as progress:
        outcome = execute(request, progress.on_event)
    return outcome


def _finish_run(outcome: Any) -> None:
    """Exit as the run ended: 1 when it failed (the gate must not pass), 128+signal when interrupted."""
    if outcome.status == "failed":  # every job failed, or the disk filled: the gate must not pass
        click.echo(f"error: run failed: {outcome.reason}; results: {outcome.path}", err=True)
        sys.exit(1)
    click.echo(f"results: {outcome.path} ({outcome.status})")
    if outcome.status == "interrupted":
        sys.exit(outcome.exit_code or 130)


@main.command("ab", short_help="A/B: two candidates on one machine, interleaved in one run; exit 1 if B regressed.")
@click.argument("candidate_a", metavar="A")
@click.argument("candidate_b", metavar="B")
@click.option("--suite", default=None, help="Named suite (default: quick).")
@click.option("--workloads", "workload_ids", default=None, help="Comma-separated workload ids (added to --suite).")
@click.option("--backends", default=None, help="Comma-separated backends (default: every one both declare).")
@click.option("--threads", default=None, help="Comma-separated thread counts, e.g. 1,2 (default: per device).")
@click.option("--devices-file", type=click.Path(path_type=Path), default=None,
              help="Devices file (default: $CONVBENCH_DEVICES or ./devices.yaml).")
@timing_options
@click.option("--threshold", type=float, default=None, help="Smallest change that counts, e.g. 0.06 [default: 6%]")
@click.option("--alpha", type=float, default=None, help="One-sided significance level [default: 0.01]")
@click.option("--normalize", type=click.Choice(["none", "reference"]), default="none", show_default=True,
              help="reference: divide every invocation by the reference probe timed in it.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--out", "results_dir", type=click.Path(path_type=Path), default=None,
              help="Results directory (default: $CONVBENCH_RESULTS or ./results).")
def ab_command(candidate_a: str, candidate_b: str, suite: str | None, workload_ids: str | None,
               backends: str | None, threads: str | None, devices_file: Path | None, repeats: int, max_time: float,
               min_time: float, min_runs: int, warmup_runs: int, target_ci: float, energy_idle: float,
               profile_ops: bool, threshold: float | None, alpha: float | None, normalize: str, as_json: bool,
               results_dir: Path | None) -> None:
    """Measure A and B in one run, invocation by invocation in randomized rounds, and judge B against A.

    A and B are devices of the devices file, or python=PATH (this host, the runner under
    another interpreter: e.g. two virtualenvs with different onnxruntime versions).  Both
    must be the same machine.  Exit 1 when B regressed against A on any job.
    """
    from harness import ab, plan
    from harness import compare as cmp
    from harness.store import read_run

    min_time = _min_time_for(min_time, max_time)
    notes: list[str] = []
    workload_list = plan.resolve_workloads(suite, workload_ids, notes)
    backend_list = plan.parse_option(backends, "--backends", "onnxruntime,tflite")
    plan.validate_backends(backend_list)
    known = _load_devices_or_local(devices_file)
    a, b = ab.candidate(candidate_a, known, "A"), ab.candidate(candidate_b, known, "B")
    if ab.machines_differ(a, b):
        raise UserError(f"A ({candidate_a}) and B ({candidate_b}) are different machines: an A/B run compares two "
                        "candidates on one machine; compare runs of two machines with `harness compare`")
    if repeats < 2:
        raise UserError(f"--repeats {repeats}: an A/B comparison needs at least 2 rounds (5 or more to gate on)")
    options = cmp.Options(threshold=cmp.DEFAULT_THRESHOLD if threshold is None else threshold,
                          alpha=cmp.DEFAULT_ALPHA if alpha is None else alpha, normalize=normalize)
    click.echo(f"A = {candidate_a}, B = {candidate_b}: measured in one run, interleaved in {repeats} rounds")
    outcome = _measure([a, b], workload_list, suite, backend_list, plan.parse_threads(threads), repeats,
                       (min_time, max_time, min_runs, warmup_runs, target_ci, energy_idle, profile_ops), notes,
                       results_dir)
    if outcome.status != "complete":
        _finish_run(outcome)
    _, records = read_run(outcome.path)
    rows = ab.paired_rows(records, options)
    regressed = sum(1 for r in rows if r["verdict"] == "regressed")
    if as_json:
        click.echo(json.dumps({"a": candidate_a, "b": candidate_b, "run": str(outcome.path),
                               "threshold": options.threshold, "alpha": options.alpha,
                               "confidence_level": options.level, "normalize": options.normalize,
                               "unit": "rounds: B's invocation over A's in the same round",
                               "rows": rows, "exit_code": 1 if regressed else 0}, indent=2, default=str))
    else:
        columns = [c if c != "device/backend/threads" else "backend/threads" for c in cmp.COLUMNS]
        columns = [{"baseline ms": "A ms", "current ms": "B ms", "invocations": "rounds"}.get(c, c) for c in columns]
        cells = [cmp.row_cells(r) for r in sorted(rows, key=cmp.row_order)]
        for row in cells:
            row[5] = row[5].split("+")[0]  # rounds: each pairs one invocation of A with one of B
        _print_table(f"B ({candidate_b}) against A ({candidate_a}), paired by round", columns, cells,
                     footer=f"change = B/A, geometric mean over rounds of B's invocation over A's, with a "
                            f"{options.level:.0%} t interval; results: {outcome.path}")
        counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in cmp.VERDICTS}
        click.echo(", ".join(f"{n} {v}" for v, n in counts.items()) + f"; exit code {1 if regressed else 0}")
    sys.exit(1 if regressed else 0)


def _min_time_for(min_time: float, max_time: float) -> float:
    """--min-time, checked against --max-time; its default yields to a shorter --max-time."""
    if max_time <= 0:
        raise UserError(f"--max-time must be > 0 seconds, got {max_time:g}")
    if min_time < 0:
        raise UserError(f"--min-time must be >= 0 seconds, got {min_time:g}")
    if min_time > max_time:
        source = click.get_current_context().get_parameter_source("min_time")
        if source in (click.core.ParameterSource.DEFAULT, None):
            return max_time  # only --max-time was given: time at most that long
        raise UserError(f"--min-time {min_time:g} exceeds --max-time {max_time:g}; "
                        "the minimum timed seconds per job must not exceed the maximum")
    return min_time


def _writable_results_dir(path: Path) -> Path:
    """The results directory, created now: a path that cannot hold results is an error before any work."""
    import errno
    import tempfile

    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path}: is a file, not a directory; results need a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".convbench-write-check-"):
            pass
    except OSError as exc:
        why = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
        raise UserError(f"cannot write results to {path}: {why}") from None
    return path


def _print_run_summary(run_path: Path) -> None:
    from harness.analysis import delegate_backends, excluded, network_summary, pair_speedups, where_label
    from harness.store import load_frame

    frame = load_frame([run_path])
    pairs = pair_speedups(frame, bootstrap=0)
    if not pairs.empty:
        keys = ["device", "backend", "threads"] + (["delegate"] if "delegate" in pairs else [])
        for values, group in pairs.groupby(keys):
            device, backend, threads = values[:3]
            if len(values) > 3 and values[3]:
                backend = f"{backend} ({values[3]})"
            rows = [[r.pair_id.removeprefix("conv-separable-"), f"{r.theoretical_speedup:.2f}x",
                     f"{r.measured_speedup:.2f}x", f"{r.efficiency:.0%}",
                     f"{r.standard_median_s * 1e3:.3f}", f"{r.separable_median_s * 1e3:.3f}"]
                    for r in group.itertuples()]
            _print_table(f"{device} / {backend} / {threads} thread(s): standard vs separable",
                         ["pair (M,N,k,x,s)", "theoretical", "measured", "measured/theory", "std ms", "sep ms"],
                         rows)
    nets = network_summary(frame)
    if not nets.empty:
        named = delegate_backends(frame)
        rows = [[where_label(r, named), r["workload_id"], f"{r['latency_median'] * 1e3:.2f}",
                 _human(r["macs"]), f"{r['gmacs_per_s']:.1f}", r["output_check_status"]]
                for _, r in nets.iterrows()]
        _print_table("networks", ["device/backend", "network", "median ms", "MACs", "GMAC/s", "output"], rows)
    if "machine_busy" in frame:
        busy_rows = frame[frame["machine_busy"].fillna(False).astype(bool)]
        if len(busy_rows):
            where = ", ".join(f"{device}: {n}" for device, n in busy_rows["device"].value_counts().sort_index().items())
            click.echo(f"warning: {len(busy_rows)} of {len(frame)} jobs ran while other processes used their "
                       f"machine's CPU ({where}; see each record's other_cpu_cores); their timings are noisier")
    bad = excluded(frame)
    if not bad.empty:
        _print_table("not measured or invalid (excluded from the analysis)", ["job", "status", "reason"],
                     [[r.job_id, r.status, str(r.reason)[:70]] for r in bad.itertuples()])


@main.command("selftest")
@click.option("--parts", default="agreement,block,memory,energy,overhead,adaptive,quick", show_default=True,
              help="Which benchmarks of the instrument to run.")
@click.option("--seconds", type=float, default=3.0, show_default=True, help="Timed seconds per agreement side.")
@click.option("--rounds", type=int, default=2, show_default=True, help="A/B rounds per agreement pair.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write JSON here.")
@click.option("--gate", is_flag=True,
              help="Instead: calibrate the regression gate on this machine (A/A false regressions, conclusive "
                   "share, detection of real 2/5/10/20% slowdowns); exit 1 if it misses its goals.")
@click.option("--gate-comparisons", type=click.IntRange(min=4), default=100, show_default=True,
              help="A/A comparisons to make (--gate).")
@click.option("--gate-slowdown-runs", type=click.IntRange(min=0), default=12, show_default=True,
              help="Slowed runs, cycling through 2, 5, 10, 20% (--gate).")
@click.option("--gate-repeats", type=click.IntRange(min=2), default=DEFAULT_REPEATS, show_default=True,
              help="Invocations per job in each calibration run (--gate).")
@click.option("--gate-backend", default="onnxruntime", show_default=True, help="Backend measured (--gate).")
@click.option("--gate-load", is_flag=True, help="Keep a second process spinning on one core meanwhile (--gate).")
@click.option("--gate-results", type=click.Path(path_type=Path), default=None,
              help="Keep the calibration's runs in this results directory (default: a temporary one).")
@click.option("--gate-analyze", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Judge the runs an earlier --gate kept (--gate-results) again, without measuring.")
@click.option("--gate-threshold", type=float, default=None, help="compare's --threshold for the calibration.")
@click.option("--gate-normalize", type=click.Choice(["auto", "reference", "none"]), default="auto",
              show_default=True, help="compare's --normalize for the calibration.")
def selftest_command(parts: str, seconds: float, rounds: int, json_path: Path | None, gate: bool,
                     gate_comparisons: int, gate_slowdown_runs: int, gate_repeats: int, gate_backend: str,
                     gate_load: bool, gate_results: Path | None, gate_analyze: Path | None,
                     gate_threshold: float | None, gate_normalize: str) -> None:
    """Benchmark the instrument: each figure against an independent reference.

    Latency vs torch's blocked_autorange / bare loops / timeit, peak memory vs a fresh process
    that loads the model alone, energy vs a constant-power sysfs sensor; loop overhead, wall time,
    adaptive stopping.  With --gate: the regression gate's error rates on this machine.
    """
    import tempfile

    from harness.selftest import PARTS, run_selftest

    if gate or gate_analyze:
        from harness import plan
        from harness.selftest_gate import GateSettings, analyze, calibrate, report_lines

        plan.validate_backends([gate_backend])
        settings = GateSettings(backend=gate_backend, repeats=gate_repeats, comparisons=gate_comparisons,
                                slowdown_runs=gate_slowdown_runs, load=gate_load, threshold=gate_threshold,
                                normalize=gate_normalize)
        if gate_analyze:
            result = analyze(gate_analyze, settings, click.echo)
        else:
            with tempfile.TemporaryDirectory(prefix="convbench-gate-") as scratch:
                result = calibrate(settings, _writable_results_dir(gate_results) if gate_results else Path(scratch),
                                   click.echo)
        summary = result.summary()
        for line in report_lines(summary, settings):
            click.echo(line)
        if json_path:
            json_path.write_text(json.dumps({"settings": result.settings, "summary": summary, "aa": result.aa,
                                             "slowed": result.slowed}, indent=2, default=str))
        met = summary["false_regression_rate"] <= 0.01 and summary["conclusive_rate"] >= 0.8
        tenth = summary["detection"].get("10%")
        met = met and (tenth is None or tenth["rate"] >= 0.9)
        sys.exit(0 if met else 1)

    chosen = [p.strip() for p in parts.split(",") if p.strip()]
    valid = set(PARTS)
    if not chosen or set(chosen) - valid:
        raise UserError(f"--parts takes a comma-separated subset of {', '.join(sorted(valid))}")
    with tempfile.TemporaryDirectory(prefix="convbench-selftest-") as scratch:
        report = run_selftest(chosen, seconds, rounds, Path(scratch), lambda line: click.echo(line))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))


@main.group("devices", cls=HarnessGroup)
def devices_group() -> None:
    """Devices declared in devices.yaml."""


def _load_devices_or_local(devices_file: Path | None) -> dict:
    from harness import devices as devices_mod

    path = devices_file or devices_mod.default_devices_path()
    if not (path.exists() or devices_file is not None):
        return {"local": devices_mod.local_device()}
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a devices file (give the path of a devices.yaml)")
    try:
        return devices_mod.load_devices(path)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text devices file (byte {exc.start} is not UTF-8); "
                        "devices.yaml must be UTF-8 YAML") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the devices file: {exc.strerror or exc}") from None


_devices_file_option = click.option("--devices-file", type=click.Path(path_type=Path), default=None,
                                    help="Devices file (default: $CONVBENCH_DEVICES or ./devices.yaml).")


@devices_group.command("list")
@_devices_file_option
def devices_list(devices_file: Path | None) -> None:
    """List the declared devices."""
    devices = _load_devices_or_local(devices_file)
    rows = []
    for device in devices.values():
        target = (device.option("host") or device.option("serial") or "this machine")
        if device.option("port"):
            target += f":{device.option('port')}"
        rows.append([device.name, device.transport, target, ",".join(device.backends),
                     ",".join(map(str, device.threads)), ",".join(device.delegates) or "-",
                     device.energy.get("sensor", "auto"), device.source])
    _print_table("devices", ["name", "transport", "target", "backends", "threads", "delegates", "energy", "defined at"],
                 rows)


@devices_group.command("check")
@click.argument("names", nargs=-1)
@_devices_file_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def devices_check(names: tuple[str, ...], devices_file: Path | None, as_json: bool) -> None:
    """Reach each device: runtimes and versions, sensors, temperatures, fingerprint.

    Exits 1 when a device is not usable, saying why.
    """
    from harness import devices as devices_mod
    from harness.dispatch import make_transport

    devices = _load_devices_or_local(devices_file)
    selected = devices_mod.select(devices, list(names)) if names else list(devices.values())
    results = {}
    for device in selected:
        try:
            transport = make_transport(device)
            try:
                results[device.name] = transport.check()
            finally:
                transport.close()
        except Exception as exc:  # unreachable devices are a finding, not a crash
            results[device.name] = {"usable": False, "problems": [f"{type(exc).__name__}: {exc}"]}
    for name, result in results.items():
        hot = thermal_warning(devices[name], result)
        if hot:
            result.setdefault("warnings", []).append(hot)
    if as_json:
        click.echo(json.dumps(results, indent=2, default=str))
    else:
        for name, result in results.items():
            _print_check(name, devices[name].transport, result)
    unusable = [n for n, r in results.items() if not r.get("usable")]
    if unusable:
        click.echo(f"not usable: {', '.join(unusable)}", err=True)
        sys.exit(1)


def thermal_warning(device: Any, result: dict) -> str | None:
    """Why the device's cool-down target will make jobs wait (or cannot work), from its check; None if fine.

    A device at or above ``thermal.cooldown_c`` now makes every job wait up to ``max_wait_s``
    (and measure throttled if it does not cool): a warning, not a reason it is unusable.
    """
    from backends.runner.cooldown import hottest

    thermal = device.thermal
    zones = result.get("thermal_zones")
    if thermal.cooldown_c is None or not result.get("usable") or zones is None:
        return None
    zone = hottest([tuple(z) for z in zones], thermal.zones)
    if zone is None:
        wanted = ", ".join(thermal.zones) or "any"
        return (f"no thermal zone matches ({wanted}): the {thermal.cooldown_c:g} °C cool-down target cannot be "
                "checked, and jobs will not wait for the device to cool down")
    if zone[2] < thermal.cooldown_c:
        return None
    return (f"hot: {zone[1]} at {zone[2]:.1f} °C, {'above' if zone[2] > thermal.cooldown_c else 'at'} the "
            f"{thermal.cooldown_c:g} °C cool-down target: every job will wait up to {thermal.max_wait_s:g} s "
            "for it to cool down")


def _print_check(name: str, transport: str, result: dict) -> None:
    fingerprint = result.get("fingerprint") or {}
    state = result.get("state") or {}
    runtimes = result.get("runtimes") or {}
    energy = result.get("energy") or {}
    lines = [f"{name} ({transport}): {'usable' if result.get('usable') else 'NOT USABLE'}"]
    if fingerprint:
        emulated = f", emulated: {fingerprint['emulated']}" if fingerprint.get("emulated") else ""
        lines.append(f"  device:   {fingerprint.get('board_model') or fingerprint.get('cpu_model')} "
                     f"({fingerprint.get('machine')}, {fingerprint.get('cores')} cores, "
                     f"max kHz {fingerprint.get('cpu_max_khz') or 'n/a'}, governor {fingerprint.get('governor')}"
                     f"{emulated})")
        lines.append(f"  os:       {fingerprint.get('os')}, kernel {fingerprint.get('kernel')}, "
                     f"python {fingerprint.get('python')}")
    for runtime, info in sorted(runtimes.items()):
        lines.append(f"  runtime:  {runtime} {info.get('version') or 'unavailable: ' + str(info.get('error'))}")
    if energy:
        lines.append(f"  energy:   {energy.get('sensor') or 'unavailable: ' + str(energy.get('reason'))}")
    if state:
        temps = state.get("thermal_c") or {}
        lines.append("  thermal:  " + (", ".join(f"{k} {v:.1f}C" for k, v in temps.items()) or "no thermal zones"))
    for key, value in result.items():
        if key not in {"usable", "problems", "warnings", "fingerprint", "state", "runtimes", "energy", "type",
                       "thermal_zones"}:
            lines.append(f"  {key}: {value}")
    for warning in result.get("warnings") or []:
        lines.append(f"  warning:  {warning}")
    for problem in result.get("problems") or []:
        lines.append(f"  problem:  {problem}")
    click.echo("\n".join(lines))


from harness.cli_analysis import register  # noqa: E402
from harness.cli_calibrate import register as register_calibrate  # noqa: E402
from harness.cli_cluster import register as register_cluster  # noqa: E402
from harness.cli_history import register as register_history  # noqa: E402
from harness.cli_lab import register as register_lab  # noqa: E402

register(main)
register_cluster(main)
register_calibrate(main)
register_history(main)
register_lab(main)


def run() -> None:  # console-script entry point
    sys.exit(main())


if __name__ == "__main__":
    run()
