"""``harness report | compare | baseline | history | export``: commands on stored results.

``register(main)`` adds them to the ``harness`` group.  pandas, matplotlib and scipy are
imported inside the commands only, so ``harness --help`` stays instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from harness.errors import UserError

RESULTS_HELP = "Results directory (default: $CONVBENCH_RESULTS or ./results)."


def default_reports_dir() -> Path:
    return Path(os.environ.get("CONVBENCH_REPORTS", "reports"))


def _results(results_dir: Path | None) -> Path:
    from harness.store import default_results_dir

    return results_dir or default_results_dir()


class Fraction(click.ParamType):
    """0.05 or 5%."""

    name = "fraction"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        try:
            number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            self.fail(f"{value!r} is not a fraction (0.05) or a percentage (5%)", param, ctx)
        if not 0 <= number < 1:
            self.fail(f"{value!r} must be below 100% (0.05 or 5% for five percent)", param, ctx)
        return number


def _print_table(title: str, columns: list[str], rows: list[list[str]], footer: str | None = None,
                 markup_column: int | None = None) -> None:
    """Like harness.cli's table, but as wide as its content: a verdict must never be cut off."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=True, min_width=len(column))
    widths = [len(c) for c in columns]
    for row in rows:
        cells = [cell if index == markup_column else escape(cell) for index, cell in enumerate(row)]
        table.add_row(*cells)
        widths = [max(w, Text.from_markup(c).cell_len) for w, c in zip(widths, cells, strict=True)]
    console = Console(width=max(120, Console().width, sum(widths) + 3 * len(widths) + 1))
    console.print(table)
    if footer:
        console.print(escape(footer))


def register(main: click.Group) -> None:
    group_cls = type(main)

    @main.command("report", short_help="Write an HTML + Markdown report of runs (figures, tables, CSV).")
    @click.argument("runs", nargs=-1)
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
                  help="Output folder (default: reports/<run-id>, or $CONVBENCH_REPORTS/<run-id>).")
    @click.option("--title", default=None, help="Report title.")
    @click.option("--results", "results_dir", type=click.Path(path_type=Path), default=None, help=RESULTS_HELP)
    def report_command(runs: tuple[str, ...], out_dir: Path | None, title: str | None,
                       results_dir: Path | None) -> None:
        """Write a report of RUN(s) (default: latest): index.html, report.md + PNGs, CSV tables.

        RUN is a run id, a unique prefix of one, a path, or `latest`.
        """
        from harness.report import build_report
        from harness.store import resolve_run

        root = _results(results_dir)
        paths = [resolve_run(ref, root) for ref in (runs or ("latest",))]
        if len({p.resolve() for p in paths}) != len(paths):
            raise UserError("the same run is given twice")
        if out_dir is None:
            name = paths[0].name if len(paths) == 1 else f"{paths[-1].name}+{len(paths) - 1}"
            out_dir = default_reports_dir() / name
        result = build_report(paths, out_dir, title=title)
        for line in result.summary:
            click.echo(f"- {line}")
        for name, why in result.missing_figures.items():
            click.echo(f"figure {name} not drawn: {why}")
        click.echo(f"report: {result.html} (also {result.markdown.name} with {len(result.figures)} PNG figures, "
                   f"{len(result.csv)} CSV tables)")

    @main.command("compare", short_help="Compare a run with a baseline; exit 1 on a regression.")
    @click.argument("runs", nargs=-1)
    @click.option("--baseline", "baseline_ref", default=None,
                  help="auto (newest earlier run with the same devices and suite), stored (set by `harness "
                       "baseline set`), or a run. Default: stored if set, else auto.")
    @click.option("--threshold", type=Fraction(), default=None,
                  help="Smallest change that counts, as 0.06 or 6%  [default: 6%, calibrated by "
                       "`harness selftest --gate`]")
    @click.option("--alpha", type=float, default=None, help="One-sided significance level; the interval shown "
                  "is its (1 - 2 alpha) t interval over invocations [default: 0.01]")
    @click.option("--normalize", type=click.Choice(["auto", "reference", "none"]), default="auto", show_default=True,
                  help="reference: divide every invocation by the machine's speed when it ran (its reference probe "
                       "and its neighbours'), so a machine slower tonight does not read as a regression (its drift "
                       "is always shown); auto: that when both runs carry comparable probes; none: raw latencies.")
    @click.option("--same-runtime", is_flag=True,
                  help="Match runtime versions too (default: compare across versions and show the change).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option("--markdown", "as_markdown", is_flag=True, help="Print Markdown (for a pull-request comment).")
    @click.option("--allow-busy", is_flag=True, hidden=True,
                  help="Accepted for old scripts; verdicts no longer depend on a busy flag (the interval over "
                       "invocations carries the noise).")
    @click.option("--allow-missing-baseline", is_flag=True,
                  help="Exit 0 with a message when no baseline exists yet (first nightly run).")
    @click.option("--allow-unmatched", is_flag=True,
                  help="Pass the gate even when no measurement matched, or more were unmatched than matched "
                       "(default: exit 1, the gate does not pass on nothing).")
    @click.option("--results", "results_dir", type=click.Path(path_type=Path), default=None, help=RESULTS_HELP)
    @click.pass_context
    def compare_command(ctx: click.Context, runs: tuple[str, ...], baseline_ref: str | None,
                        threshold: float | None, alpha: float | None, normalize: str, same_runtime: bool,
                        as_json: bool,
                        as_markdown: bool, allow_busy: bool, allow_missing_baseline: bool, allow_unmatched: bool,
                        results_dir: Path | None) -> None:
        """Compare CURRENT (default: latest) with BASELINE: `harness compare [BASELINE] [CURRENT]`.

        Exit code 1 when any measurement regressed, or when nothing was compared or more
        measurements were unmatched than matched (unless --allow-unmatched); 0 otherwise;
        2 for usage errors.  The unit is the invocation (`harness run --repeats`): a regression
        needs its interval above no change and a change beyond --threshold.
        """
        from harness import compare as cmp
        from harness.store import resolve_run, skipped_records

        if as_json and as_markdown:
            raise UserError("--json and --markdown exclude each other")
        if len(runs) > 2:
            raise UserError("compare takes at most two runs: BASELINE CURRENT")
        if len(runs) == 2 and baseline_ref is not None:
            raise UserError("give the baseline either as the first argument or with --baseline, not both")
        root = _results(results_dir)
        current = resolve_run(runs[-1] if runs else "latest", root)
        try:
            if len(runs) == 2:
                baseline, why = resolve_run(runs[0], root), "given"
            else:
                baseline, why = cmp.resolve_baseline(baseline_ref, current, root)
        except UserError as exc:
            if allow_missing_baseline and len(runs) < 2 and baseline_ref in (None, "auto", "stored"):
                click.echo(f"no baseline to compare with ({exc}); nothing to gate on", err=True)
                ctx.exit(0)
            raise
        options = cmp.Options(threshold=cmp.DEFAULT_THRESHOLD if threshold is None else threshold,
                              alpha=cmp.DEFAULT_ALPHA if alpha is None else alpha, same_runtime=same_runtime,
                              allow_unmatched=allow_unmatched, normalize=normalize)
        result = cmp.compare_runs(baseline, current, options, why)
        # A damaged record could be a regression: list it, and the gate fails on it (see Comparison.gate_failure).
        for side, path in (("baseline", baseline), ("current", current)):
            for where, problem in skipped_records(path):
                result.unmatched.append({"workload_id": "(damaged record)", "where": where, "fingerprint": "",
                                         "only_in": side, "reason": f"skipped: {problem}", "damaged": True})
        if as_json:
            click.echo(cmp.to_json(result))
        elif as_markdown:
            click.echo(cmp.markdown(result))
        else:
            _print_compare(result)
        ctx.exit(result.exit_code)

    @main.group("baseline", cls=group_cls, invoke_without_command=True)
    @click.option("--results", "results_dir", type=click.Path(path_type=Path), default=None, help=RESULTS_HELP)
    @click.pass_context
    def baseline_group(ctx: click.Context, results_dir: Path | None) -> None:
        """Show or set the run `harness compare` measures against."""
        ctx.obj = {"results_dir": results_dir}
        if ctx.invoked_subcommand is None:
            _show_baseline(_results(results_dir))

    @baseline_group.command("set")
    @click.argument("run", default="latest")
    @click.option("--results", "results_dir", type=click.Path(path_type=Path), default=None, help=RESULTS_HELP)
    @click.pass_context
    def baseline_set(ctx: click.Context, run: str, results_dir: Path | None) -> None:
        """Make RUN (default: latest) the baseline of `harness compare`."""
        from harness.compare import baseline_file, set_baseline
        from harness.store import is_disk_full, resolve_run

        root = _results(results_dir or (ctx.obj or {}).get("results_dir"))
        chosen = resolve_run(run, root)
        try:
            entry = set_baseline(chosen, root)
        except OSError as exc:
            raise UserError(f"cannot store the baseline in {baseline_file(root)}: "
                            f"{exc.strerror or exc}{' (disk full)' if is_disk_full(exc) else ''}") from None
        click.echo(f"baseline: {entry['run_id']} (stored in {baseline_file(root)})")

    @baseline_group.command("show")
    @click.option("--results", "results_dir", type=click.Path(path_type=Path), default=None, help=RESULTS_HELP)
    @click.pass_context
    def baseline_show(ctx: click.Context, results_dir: Path | None) -> None:
        """Print the stored baseline."""
        _show_baseline(_results(results_dir or (ctx.obj or {}).get("results_dir")))

    @main.command("export", short_help="Export a run as pytest-benchmark JSON or CSV.")
    @click.argument("run", default="latest")
    @click.option("--format", "fmt", type=click.Choice(["pytest-benchmark", "csv"]), required=True,
                  help="pytest-benchmark JSON, or a CSV with one row per measurement.")
    @click.option("--output", "-o", "output", default=None,
                  help="File to write, or - for stdout (default: reports/<run-id>/<run-id>.<format>).")
    @click.option("--with-data", is_flag=True, help="pytest-benchmark: include every raw sample (stats.data).")
    @click.option("--results", "results_dir", type=click.Path(path_type=Path), default=None, help=RESULTS_HELP)
    def export_command(run: str, fmt: str, output: str | None, with_data: bool, results_dir: Path | None) -> None:
        """Export RUN (default: latest) for other tools, e.g. `pytest-benchmark compare`."""
        from harness import export
        from harness.store import resolve_run

        path = resolve_run(run, _results(results_dir))
        if fmt == "csv":
            text, note = export.to_csv(path), ""
            suffix = "csv"
        else:
            document, skipped = export.to_pytest_benchmark(path, with_data=with_data)
            text = json.dumps(document, indent=2, default=str)
            note = f" ({len(document['benchmarks'])} benchmarks" + (
                f", {skipped} invalid measurement(s) left out)" if skipped else ")")
            suffix = "pytest-benchmark.json"
        if output == "-":
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            return
        name = f"{path.name}.{suffix}"
        target = Path(output) if output else default_reports_dir() / path.name / name
        if target.is_dir():
            raise UserError(f"-o {target}: is a directory; give a file name, e.g. -o {target / name}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        except OSError as exc:
            raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
        click.echo(f"exported {path.name} as {fmt}: {target}{note}")


def _show_baseline(root: Path) -> None:
    from harness.compare import baseline_file, stored_baseline

    stored = stored_baseline(root)
    if stored is None:
        click.echo(f"no baseline set in {root}/ (`harness compare` uses --baseline auto until one is set)")
    else:
        entry = json.loads(baseline_file(root).read_text())
        click.echo(f"baseline: {stored.name} (set {entry.get('set_at', '?')[:19]}, {stored})")


def _print_compare(result: Any) -> None:
    from harness import compare as cmp

    colour = {"regressed": "red", "improved": "green", "inconclusive": "yellow"}
    rows = []
    for row in sorted(result.rows, key=cmp.row_order):
        cells = cmp.row_cells(row)
        if row["verdict"] in colour:
            index = cmp.COLUMNS.index("verdict")
            cells[index] = f"[{colour[row['verdict']]}]{row['verdict']}[/]"
        rows.append(cells)
    _print_table(f"baseline {result.baseline['run_id']} -> current {result.current['run_id']}", cmp.COLUMNS, rows,
                 footer="\n".join([f"baseline chosen: {result.baseline.get('chosen') or 'given'}",
                                    *cmp.drift_lines(result), cmp.criteria(result)]),
                 markup_column=cmp.COLUMNS.index("verdict"))
    if result.unmatched:
        _print_table("unmatched measurements (not compared)", ["workload", "device/backend/threads", "only in",
                                                                "reason"],
                     [[u["workload_id"], u["where"], u["only_in"], u["reason"][:120]] for u in result.unmatched])
    for warning in result.warnings():
        click.echo(f"warning: {warning}")
    click.echo(f"{cmp.headline(result)}; exit code {result.exit_code}")


def _ms(seconds: float) -> str:
    import math

    return "" if seconds is None or math.isnan(seconds) else f"{seconds * 1e3:.3f}"


def _pct(share: float) -> str:
    import math

    return "" if share is None or math.isnan(share) else f"{100 * share:.1f}%"


def _number(value: float, digits: int = 2) -> str:
    import math

    return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def layer_measurements(workload_id: str, run_ref: str, results_dir: Path | None) -> dict[str, Any]:
    """``harness workloads show NETWORK --run RUN``: the network's layers as measured in that run.

    Returns {"run": run id, "layers": layer_table rows, "types": layer_breakdown rows,
    "fusion": fusion_gap rows} (JSON-ready); UserError when the run measured none of its layers.
    """
    import math

    from harness import layers
    from harness.calibration import load_ceilings
    from harness.store import load_frame, resolve_run

    root = _results(results_dir)
    path = resolve_run(run_ref, root)
    frame = load_frame([path])
    ceilings = load_ceilings(root)
    table = layers.layer_table(frame, workload_id, ceilings)
    if table.empty:
        raise UserError(f"run {path.name} measured no layer of {workload_id} on its own; measure them with "
                        f"`harness run --suite layers-of:{workload_id}`")
    breakdown = layers.layer_breakdown(frame, ceilings)
    breakdown = breakdown[breakdown["network"] == workload_id]
    fusion = layers.fusion_gap(frame)
    fusion = fusion[fusion["network"] == workload_id]

    def records(df: Any) -> list[dict[str, Any]]:
        return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                for row in df.to_dict("records")]

    return {"run": path.name, "layers": records(table), "types": records(breakdown), "fusion": records(fusion)}


def print_layer_measurements(workload_id: str, measured: dict[str, Any]) -> None:
    """One table per device x backend x threads x delegate: each distinct layer's measured time."""
    import pandas as pd

    table, types, fusion = (pd.DataFrame(measured[k]) for k in ("layers", "types", "fusion"))
    group = ["device", "backend", "threads", "delegate"]
    for keys, part in table.groupby(group, dropna=False, sort=False):
        where = "/".join(str(k) for k in keys[:2]) + f" t{keys[2]}" + (f" {keys[3]}" if keys[3] else "")
        rows = [[row["layer"], row["layer_type"], str(row["count"]), _pct(row["mac_share"]), _ms(row["median_s"]),
                 _ms(row["total_s"]), _pct(row["time_share"]), _number(row["gmacs_per_s"]),
                 _pct(row["pct_of_attainable"])]
                for _, row in part.iterrows()]
        mine = types
        for key, value in zip(group, keys, strict=True):
            mine = mine[mine[key].fillna("") == (value if value is not None else "")]
        for _, row in mine.iterrows():
            rows.append([f"all {row['layer_type']}", "", str(row["count"]), _pct(row["mac_share"]), "",
                         _ms(row["total_s"]), _pct(row["time_share"]), _number(row["gmacs_per_s"]),
                         _pct(row["pct_of_attainable"])])
        footer = None
        gap = fusion
        for key, value in zip(group, keys, strict=True):
            gap = gap[gap[key].fillna("") == (value if value is not None else "")]
        if not gap.empty:
            g = gap.iloc[0]
            footer = (f"sum of layers x count {_ms(g['layers_sum_s'])} ms vs network median "
                      f"{_ms(g['network_median_s']) or 'not measured'} ms: "
                      f"layers/network {_number(g['layers_over_network'])}"
                      + (f"; {g['layers_missing']} layer(s) without a valid measurement" if g["layers_missing"] else "")
                      + (f"; not measured alone: {g['other_ops']}" if g["other_ops"] else "")
                      + (f"; runtime profiler total {_ms(g['profile_total_s'])} ms, "
                         f"profile/network {_number(g['profile_over_network'])}"
                         if g["profile_total_s"] is not None and not pd.isna(g["profile_total_s"]) else ""))
        _print_table(f"{workload_id} layers measured on {where} (run {measured['run']}; time share of the "
                     "summed layers)",
                     ["layer", "type", "x", "MACs", "median ms", "x count ms", "time", "GMAC/s", "of roof"],
                     rows, footer)
