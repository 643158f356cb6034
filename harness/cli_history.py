"""``harness history | publish``: the store over time, its change points, and a static site of it.

``register(main)`` adds both commands to the ``harness`` group.  pandas, matplotlib and scipy
are imported inside the commands only, so ``harness --help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from harness.cli_analysis import RESULTS_HELP, Fraction, _print_table, _results, default_reports_dir
from harness.errors import UserError

MIN_CHANGE_HELP = "Smallest change point reported, as 0.02 or 2% of the level  [default: 2%]"
ALPHA_HELP = "Significance level of a change point's permutation test  [default: 0.01]"
NORMALIZE_HELP = ("reference: divide each run's median by its reference-probe time on the device, so a "
                  "device that got slower as a whole does not look like a change of the workload.")


def _detection(min_change: float | None, alpha: float | None) -> dict[str, float]:
    from harness.measure.changepoints import DEFAULT_ALPHA, DEFAULT_MIN_CHANGE

    alpha = DEFAULT_ALPHA if alpha is None else alpha
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be in (0, 1), e.g. 0.01, got {alpha}")
    return {"min_change": DEFAULT_MIN_CHANGE if min_change is None else min_change, "alpha": alpha}


def register(main: click.Group) -> None:
    @main.command("history", short_help="A workload's median latency over every run, with change points.")
    @click.option("--workload", "workload_id", default=None, help="Workload id, e.g. mobilenet_v2-1.0-224.")
    @click.option("--all", "scan_everything", is_flag=True,
                  help="Scan every workload x device x backend x threads series in the store and print only the "
                       "change points found (for a nightly job; exits 0 whatever it finds).")
    @click.option("--device", default=None, help="Only this device.")
    @click.option("--backend", default=None, help="Only this backend.")
    @click.option("--threads", type=int, default=None, help="Only this thread count.")
    @click.option("--normalize", type=click.Choice(["reference"]), default=None, help=NORMALIZE_HELP)
    @click.option("--min-change", type=Fraction(), default=None, help=MIN_CHANGE_HELP)
    @click.option("--alpha", type=float, default=None, help=ALPHA_HELP)
    @click.option("--figure", "figure_path", type=click.Path(path_type=Path), default=None,
                  help="Trend figure (default: reports/history/<workload>.png).")
    @click.option("--no-figure", is_flag=True, help="Only print the table.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @click.option("--results", "results_dir", type=click.Path(path_type=Path), default=None, help=RESULTS_HELP)
    def history_command(workload_id: str | None, scan_everything: bool, device: str | None, backend: str | None,
                        threads: int | None, normalize: str | None, min_change: float | None,
                        alpha: float | None, figure_path: Path | None, no_figure: bool, as_json: bool,
                        results_dir: Path | None) -> None:
        """Median latency of one workload over every run in results/: a table, its change points
        (steps and slow creeps) and a trend figure.  With --all: only the change points of every series.
        """
        detection = _detection(min_change, alpha)
        root = _results(results_dir)
        if scan_everything:
            if workload_id or device or backend or threads is not None or figure_path:
                raise UserError("--all scans every series: leave out --workload, --device, --backend, --threads "
                                "and --figure")
            _scan_all(root, normalize, detection, as_json)
            return
        if not workload_id:
            raise UserError("give --workload ID (one workload's history) or --all (change points of every series)")
        _one_workload(root, workload_id, device, backend, threads, normalize, detection, figure_path, no_figure,
                      as_json)

    @main.command("publish", short_help="Build a static site of every run: runs, comparisons, history graphs.")
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
                  help="Site folder (default: reports/site, or $CONVBENCH_REPORTS/site).")
    @click.option("--min-change", type=Fraction(), default=None, help=MIN_CHANGE_HELP)
    @click.option("--alpha", type=float, default=None, help=ALPHA_HELP)
    @click.option("--results", "results_dir", type=click.Path(path_type=Path), default=None, help=RESULTS_HELP)
    def publish_command(out_dir: Path | None, min_change: float | None, alpha: float | None,
                        results_dir: Path | None) -> None:
        """Write a static site over every run in results/ that opens offline (like `asv publish`):
        index.html lists the runs and the latest comparison per device, and each workload has a page
        with its history graphs, change points and reference-probe drift.
        """
        from harness.publish import build_site

        site = build_site(_results(results_dir), out_dir or default_reports_dir() / "site",
                          progress=lambda line: click.echo(line), **_detection(min_change, alpha))
        click.echo(f"site: {site.index} ({len(site.pages)} workload pages, {len(site.figures)} figures, "
                   f"{len(site.change_points)} change point(s)); open it in a browser, no server needed")


def _one_workload(root: Path, workload_id: str, device: str | None, backend: str | None, threads: int | None,
                  normalize: str | None, detection: dict[str, float], figure_path: Path | None, no_figure: bool,
                  as_json: bool) -> None:
    from harness.history import build_series, change_point_dict, history, require_probes, table_rows, trend_figure

    ok, bad = history(root, workload_id, device, backend, threads)
    series = build_series(ok, normalize, **detection)
    if normalize:
        require_probes(series, workload_id)
    rows = table_rows(ok, series)
    points = [change_point_dict(s, c) for s in series for c in s.change_points]
    figure = None
    if not no_figure and rows:
        stem = "-".join([workload_id, *(str(v) for v in (device, backend) if v),
                         *([f"t{threads}"] if threads else []), *([normalize] if normalize else [])])
        figure = trend_figure(ok, workload_id, figure_path or default_reports_dir() / "history" / f"{stem}.png",
                              series)
    if as_json:
        click.echo(json.dumps({"workload_id": workload_id, "normalize": normalize, "runs": rows,
                               "change_points": points, "figure": str(figure) if figure else None,
                               "invalid": [{"run_id": r["run_id"], "job_id": r.get("job_id"),
                                            "status": r["status"]} for _, r in bad.iterrows()]},
                              indent=2, default=str))
        return
    value_columns = ["latency / probe"] if normalize else []
    _print_table(
        f"{workload_id}: median latency per run ({len(rows)} valid measurements)",
        ["run", "device/backend/threads", "runtime", "median ms", "95% CI ms", "n", "invocations",
         *value_columns, "vs previous", "change point"],
        [[r["run_id"], r["where"], str(r["runtime_version"] or ""), f"{r['median_s'] * 1e3:.4g}", _ci_ms(r),
          str(r["n"] if r["n"] is not None else ""), str(r["invocations"]),
          *([f"{r['value']:.4g}" if r["value"] is not None else "no probe"] if normalize else []),
          f"{r['change_vs_previous'] * 100:+.1f}%" if r["change_vs_previous"] is not None else "",
          r["change_point"] or ""]
         for r in rows],
        footer=(f"{len(bad)} invalid measurement(s) not shown" if len(bad) else None))
    for point in points:
        click.echo(f"change point: {point['where']}: {point['description']}")
    if not points and rows:
        click.echo("no change point (steps or creeps of at least "
                   f"{detection['min_change']:.0%} at p < {detection['alpha']:g})")
    if figure:
        click.echo(f"trend figure: {figure}")


def _ci_ms(row: dict[str, Any]) -> str:
    if row["ci_low_s"] is None or row["ci_high_s"] is None:
        return ""
    return f"{row['ci_low_s'] * 1e3:.4g} - {row['ci_high_s'] * 1e3:.4g}"


def _scan_all(root: Path, normalize: str | None, detection: dict[str, float], as_json: bool) -> None:
    """Print every series' change points; exit 0 whatever is found, so a nightly job reports, not fails."""
    from harness.history import change_point_dict, scan_all

    try:
        series = scan_all(root, normalize, **detection)
    except UserError as exc:  # an empty store: nothing to scan is not a failure of the nightly job
        if as_json:
            click.echo(json.dumps({"series": 0, "change_points": [], "note": str(exc)}, indent=2))
        else:
            click.echo(f"no change point: {exc}")
        return
    points = [change_point_dict(s, c) for s in series for c in s.change_points]
    if as_json:
        click.echo(json.dumps({"series": len(series), "normalize": normalize, "change_points": points},
                              indent=2, default=str))
        return
    for point in points:
        click.echo(f"change point: {point['workload_id']} on {point['where']}: {point['description']}")
    click.echo(f"{len(points)} change point(s) in {len(series)} series"
               + (" (normalised by the reference probe)" if normalize else ""))
