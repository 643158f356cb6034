"""Build the site: read the store once, then write index.html and one page (and figure) per workload."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.measure.changepoints import DEFAULT_ALPHA, DEFAULT_MIN_CHANGE
from harness.publish.html import Html, link, page, table

WORKLOADS_DIR = "workloads"


@dataclass
class SiteResult:
    out_dir: Path
    index: Path
    pages: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    change_points: list[dict[str, Any]] = field(default_factory=list)


def slug(workload_id: str) -> str:
    """A file name for a workload id (ids are already file-safe; anything else becomes '_')."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", workload_id).lstrip(".") or "_"


def build_site(results_dir: Path, out_dir: Path, progress: Callable[[str], None] = lambda line: None,
               min_change: float = DEFAULT_MIN_CHANGE, alpha: float = DEFAULT_ALPHA) -> SiteResult:
    """Write ``out_dir/index.html`` and ``out_dir/workloads/<workload>.html|.png`` over every run."""
    from harness.history import build_series, change_point_dict, split_valid
    from harness.measure.invocations import collapse
    from harness.store import list_runs, load_frame, read_info

    runs = list_runs(results_dir)
    if not runs:
        raise UserError(f"no runs in {results_dir}/: nothing to publish; run `harness run` first "
                        "(or give --results DIR)")
    try:
        (out_dir / WORKLOADS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the site folder {out_dir}: {exc.strerror or exc}") from None
    progress(f"reading {len(runs)} run(s) from {results_dir}/")
    infos = {path.name: read_info(path) for path in runs}
    frame = collapse(load_frame(runs))
    ok, _ = split_valid(frame) if not frame.empty else (frame, frame)
    series = build_series(ok, min_change=min_change, alpha=alpha)
    result = SiteResult(out_dir, out_dir / "index.html")
    result.change_points = [change_point_dict(s, c) for s in series for c in s.change_points]

    workloads = sorted(set(ok["workload_id"])) if not ok.empty else []
    for number, workload_id in enumerate(workloads, start=1):
        progress(f"workload {number}/{len(workloads)}: {workload_id}")
        page_path, figure = _workload_page(out_dir, workload_id, ok, [s for s in series
                                                                       if s.workload_id == workload_id])
        result.pages.append(page_path)
        result.figures.append(figure)
    comparisons = _latest_comparisons(runs, infos, frame, progress)
    progress("writing index.html")
    result.index.write_text(_index_page(runs, infos, frame, comparisons, workloads, series, result))
    return result


def _generated() -> str:
    return f"generated {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} by harness publish"


# ---------------------------------------------------------------- index.html
def _commit(info: dict[str, Any]) -> str:
    git = info.get("git") or {}
    commit = str(git.get("commit") or "")[:10]
    return f"{commit}{' (dirty)' if git.get('dirty') else ''}" if commit else ""


def _devices(info: dict[str, Any], rows: Any) -> list[str]:
    names = [d.get("name") for d in info.get("devices") or [] if isinstance(d, dict) and d.get("name")]
    if not names and not rows.empty:
        names = sorted(set(rows["device"]))
    return [str(n) for n in names]


def _run_rows(runs: list[Path], infos: dict[str, dict[str, Any]], frame: Any) -> list[list[Any]]:
    rows = []
    for path in reversed(runs):  # newest first
        info = infos[path.name]
        mine = frame[frame["run_id"] == path.name] if not frame.empty else frame
        jobs, invocations = 0, ""
        if not mine.empty:
            keys = [k for k in ("device", "backend", "threads", "delegate", "workload_id") if k in mine]
            jobs = len(mine.drop_duplicates(keys))
            counts = [int(c) for c in mine.get("invocations", []) if isinstance(c, int | float) and math.isfinite(c)]
            if counts:
                invocations = str(min(counts)) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
        rows.append([path.name, str(info.get("started_at") or "")[:19].replace("T", " "), _commit(info),
                     str(info.get("status") or "?"), ", ".join(_devices(info, mine)), str(jobs), invocations])
    return rows


@dataclass
class DeviceComparison:
    device: str
    baseline: str | None
    current: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


def _latest_comparisons(runs: list[Path], infos: dict[str, dict[str, Any]], frame: Any,
                        progress: Callable[[str], None]) -> list[DeviceComparison]:
    """Per device of the latest run: that run against the previous complete run that measured the device."""
    from harness import compare as cmp

    latest = runs[-1]
    mine = frame[frame["run_id"] == latest.name] if not frame.empty else frame
    devices = sorted(set(mine["device"])) if not mine.empty else _devices(infos[latest.name], mine)
    done: dict[str, Any] = {}
    out = []
    for device in devices:
        baseline = next((path for path in reversed(runs[:-1]) if infos[path.name].get("status") == "complete"
                         and not frame.empty and ((frame["run_id"] == path.name) & (frame["device"] == device)).any()),
                        None)
        if baseline is None:
            out.append(DeviceComparison(device, None, latest.name,
                                        note="no earlier complete run measured this device: nothing to compare"))
            continue
        if baseline.name not in done:
            progress(f"comparing {latest.name} with {baseline.name}")
            try:
                done[baseline.name] = cmp.compare_runs(baseline, latest, baseline_why="previous complete run")
            except UserError as exc:
                done[baseline.name] = exc
        comparison = done[baseline.name]
        if isinstance(comparison, UserError):
            out.append(DeviceComparison(device, baseline.name, latest.name, note=f"not compared: {comparison}"))
            continue
        rows = sorted((r for r in comparison.rows if r.get("device") == device), key=cmp.row_order)
        out.append(DeviceComparison(device, baseline.name, latest.name, rows, note=cmp.criteria(comparison)))
    return out


def _comparison_html(comparison: DeviceComparison) -> list[str]:
    from harness import compare as cmp

    head = f"<h3>{escape(comparison.device)}</h3>"
    if comparison.baseline is None or not comparison.rows:
        return [head, f'<p class="note">{escape(comparison.note or "no measurement matched")}</p>']
    counts = {v: sum(1 for r in comparison.rows if r["verdict"] == v) for v in cmp.VERDICTS}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    rows = []
    verdict_at = cmp.COLUMNS.index("verdict")
    for row in comparison.rows:
        cells: list[Any] = list(cmp.row_cells(row))
        cells[0] = _workload_link(row["workload_id"])
        cells[verdict_at] = Html(f'<span class="verdict-{escape(row["verdict"])}">{escape(row["verdict"])}</span>')
        rows.append(cells)
    return [head, f"<p>run {escape(comparison.current)} against {escape(comparison.baseline)} "
                  f"(the previous complete run on {escape(comparison.device)}): {escape(summary)}</p>",
            table(cmp.COLUMNS, rows, {"note": "text"}),
            f'<p class="note">{escape(comparison.note)}</p>']


def _workload_link(workload_id: str) -> Html:
    return link(f"{WORKLOADS_DIR}/{slug(workload_id)}.html", workload_id)


def _index_page(runs: list[Path], infos: dict[str, dict[str, Any]], frame: Any,
                comparisons: list[DeviceComparison], workloads: list[str], series: list[Any],
                result: SiteResult) -> str:
    body = [f"<p>{len(runs)} run(s), {len(workloads)} workload(s), {len(series)} series "
            f"(workload x device x backend x threads), {len(result.change_points)} change point(s).</p>"]
    body.append("<h2>Change points</h2>")
    if result.change_points:
        items = sorted(result.change_points, key=lambda p: (str(p.get("started_at") or ""), p["workload_id"]),
                       reverse=True)
        body.append('<ul class="changes">' + "".join(
            f"<li>{_workload_link(p['workload_id']).text} on {escape(p['where'])}: "
            f'<span class="change">{escape(p["description"])}</span></li>' for p in items) + "</ul>")
    else:
        body.append('<p class="note">None: no step or creep in any series.</p>')
    body.append(f"<h2>Latest comparison ({escape(runs[-1].name)})</h2>")
    for comparison in comparisons:
        body += _comparison_html(comparison)
    body.append("<h2>Workloads</h2>")
    per_workload = {w: [p for p in result.change_points if p["workload_id"] == w] for w in workloads}
    body.append(table(["workload", "series", "change points"],
                      [[_workload_link(w),
                        str(sum(1 for s in series if s.workload_id == w)), str(len(per_workload[w]) or "")]
                       for w in workloads]) if workloads else
                '<p class="note">No valid measurement in any run.</p>')
    body.append("<h2>Runs</h2>")
    body.append(table(["run", "started (UTC)", "commit", "status", "devices", "jobs", "invocations per job"],
                      _run_rows(runs, infos, frame), {"devices": "text"}, table_id="runs"))
    return page("convbench results", body, generated=_generated())


# ---------------------------------------------------------------- one page per workload
def _workload_page(out_dir: Path, workload_id: str, ok: Any, series: list[Any]) -> tuple[Path, Path]:
    from harness.history import table_rows, trend_figure

    rows_frame = ok[ok["workload_id"] == workload_id].reset_index(drop=True)
    name = slug(workload_id)
    figure = trend_figure(rows_frame, workload_id, out_dir / WORKLOADS_DIR / f"{name}.png", series)
    rows = table_rows(rows_frame, series)
    points = [(s, c) for s in series for c in s.change_points]
    body = []
    body.append("<h2>Change points</h2>")
    if points:
        body.append('<ul class="changes">' + "".join(
            f'<li>{escape(s.where)}: <span class="change">change point: {escape(c.describe())}</span></li>'
            for s, c in points) + "</ul>")
    else:
        body.append('<p class="note">None: no step or creep in any series of this workload.</p>')
    probe_note = (" The lower panel shows each device's reference-probe time relative to its first run: a "
                  "device that drifted as a whole moves there too." if any(s.has_probe for s in series) else "")
    body.append(f'<figure><img alt="{escape(workload_id)}: median latency per run" src="{escape(figure.name)}">'
                "<figcaption>Median latency per run (bars: 95% interval), one line per device/backend/threads; "
                f"dashed lines mark change points.{escape(probe_note)}</figcaption></figure>")
    body.append("<h2>Runs</h2>")
    columns = ["run", "started (UTC)", "device/backend/threads", "runtime", "median ms", "95% CI ms",
               "invocations", "probe ms", "vs previous", "change point"]
    cells = []
    for row in reversed(rows):  # newest first
        ci = (f"{row['ci_low_s'] * 1e3:.4g} - {row['ci_high_s'] * 1e3:.4g}"
              if row["ci_low_s"] is not None and row["ci_high_s"] is not None else "")
        cells.append([row["run_id"], str(row["started_at"] or "")[:19].replace("T", " "), row["where"],
                      str(row["runtime_version"] or ""), f"{row['median_s'] * 1e3:.4g}", ci, str(row["invocations"]),
                      f"{row['probe_s'] * 1e3:.4g}" if row["probe_s"] is not None else "",
                      f"{row['change_vs_previous'] * 100:+.1f}%" if row["change_vs_previous"] is not None else "",
                      row["change_point"] or ""])
    body.append(table(columns, cells, {"change point": "change-point"}))
    path = out_dir / WORKLOADS_DIR / f"{name}.html"
    path.write_text(page(f"{workload_id}: history", body, home="../index.html", generated=_generated()))
    return path, figure
