"""``harness report``: figures, a self-contained HTML page, Markdown and CSV tables.

``build_report(run_paths, out_dir)`` writes into ``out_dir``:

* ``index.html`` — everything embedded (figures as data URIs), opens offline;
* ``report.md`` with ``<figure>.png`` beside it, for a repository or wiki;
* ``<table>.csv`` — the analysis tables at full precision (seconds, ratios).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError

CSV_FILES = {"pairs": "pairs.csv", "efficiency": "efficiency.csv", "workloads": "workloads.csv",
             "networks": "networks.csv", "v1_vs_twin": "v1_vs_twin.csv", "theories": "theories.csv",
             "layer_types": "layer_types.csv", "fusion": "fusion.csv", "int8": "int8.csv",
             "excluded": "excluded.csv"}


@dataclass
class ReportResult:
    out_dir: Path
    html: Path
    markdown: Path
    figures: list[str] = field(default_factory=list)  # drawn
    missing_figures: dict[str, str] = field(default_factory=dict)  # name -> why not drawn
    csv: list[Path] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)


def analyse(frame: Any, bootstrap: int = 1000, ceilings: dict[Any, Any] | None = None) -> dict[str, Any]:
    """Every analysis table of a tidy frame, by name, and the backends whose labels name the delegate.

    ``ceilings`` (``harness.calibration.load_ceilings``) add the roofline theory and the measured roofs.
    """
    from harness import analysis, layers

    pairs = analysis.pair_speedups(frame, bootstrap=bootstrap)
    fusion, layer_types = _complete_networks(layers.fusion_gap(frame), layers.layer_breakdown(frame, ceilings or {}))
    return {
        "ceilings": ceilings or {},
        "layer_types": layer_types,
        "fusion": fusion,
        "theories": analysis.theory_comparison(frame, ceilings or {}),
        "delegate_backends": analysis.delegate_backends(frame),
        "valid": analysis.valid(frame),
        "pairs": pairs,
        "efficiency": analysis.efficiency_summary(pairs),
        "workloads": analysis.roofline_positions(analysis.workload_summary(frame), ceilings or {}),
        "networks": analysis.network_summary(frame),
        "network_comparison": analysis.network_comparison(frame),
        "v1_vs_twin": analysis.v1_vs_twin(frame),
        "int8": analysis.int8_speedups(frame),
        "excluded": analysis.excluded(frame),
    }


def _complete_networks(fusion: Any, layer_types: Any) -> tuple[Any, Any]:
    """Only networks whose every measurable layer was measured: a run that happens to contain some of
    a network's layers (the quick suite holds a few of the v1 twin's convs) says nothing about its time."""
    if fusion.empty:
        return fusion, layer_types
    complete = fusion[fusion["layers_missing"] == 0].reset_index(drop=True)
    if layer_types.empty:
        return complete, layer_types
    keys = [k for k in ("device", "backend", "threads", "delegate", "network") if k in complete and k in layer_types]
    wanted = {tuple(row[k] for k in keys) for _, row in complete.iterrows()}
    mask = layer_types.apply(lambda row: tuple(row[k] for k in keys) in wanted, axis=1)
    return complete, layer_types[mask].reset_index(drop=True)


def _ceilings_beside(run_paths: list[Path]) -> dict[Any, Any]:
    """The calibrations stored in the results directories holding these runs (``harness calibrate``)."""
    from harness.calibration import load_ceilings

    ceilings: dict[Any, Any] = {}
    for results_dir in dict.fromkeys(Path(path).resolve().parent for path in run_paths):
        ceilings.update(load_ceilings(results_dir))
    return ceilings


def default_title(infos: list[dict[str, Any]]) -> str:
    if len(infos) == 1:
        return f"convbench report: run {infos[0].get('run_id', '?')}"
    return f"convbench report: {len(infos)} runs ({infos[0].get('run_id', '?')} to {infos[-1].get('run_id', '?')})"


def build_report(run_paths: list[Path], out_dir: Path, title: str | None = None,
                 bootstrap: int = 1000) -> ReportResult:
    from harness.report import figures as figures_mod
    from harness.report import html, markdown, summary, tables
    from harness.store import load_frame, read_run

    if not run_paths:
        raise UserError("no runs to report on")
    runs = [read_run(path) for path in run_paths]
    frame = load_frame(run_paths)
    if frame.empty:
        raise UserError(f"no measurements in {', '.join(str(p) for p in run_paths)}")
    analysed = analyse(frame, bootstrap, _ceilings_beside(run_paths))
    infos = [info for info, _ in runs]
    title = title or default_title(infos)
    generated = (f"generated {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} from "
                 f"{', '.join(str(p) for p in run_paths)}")
    lines = summary.summary_lines(analysed, frame)
    all_records = [record for _, records in runs for record in records]
    figs = figures_mod.make_figures(analysed, summary.energy_note(all_records))
    delegates = analysed["delegate_backends"]
    display = [
        tables.efficiency_table(analysed["efficiency"], delegates),
        tables.pairs_table(analysed["pairs"], delegates),
        tables.twin_table(analysed["v1_vs_twin"], delegates),
        tables.theory_table(analysed["theories"], delegates),
        tables.layer_type_table(analysed["layer_types"], delegates),
        tables.fusion_table(analysed["fusion"], delegates),
        tables.networks_table(analysed["network_comparison"], delegates),
        tables.int8_table(analysed["int8"], delegates),
        tables.workloads_table(analysed["workloads"], delegates),
        tables.backends_table(frame),
        tables.excluded_table(analysed["excluded"]),
    ]
    display = [t for t in display if t.rows or t.name in ("pairs", "workloads", "excluded")]
    provenance = tables.provenance_tables(summary.provenance(runs))

    out_dir.mkdir(parents=True, exist_ok=True)
    result = ReportResult(out_dir, out_dir / "index.html", out_dir / "report.md", summary=lines)
    csv_names = {}
    csv_frames = {"pairs": analysed["pairs"], "efficiency": analysed["efficiency"],
                  "workloads": analysed["workloads"], "networks": analysed["network_comparison"],
                  "v1_vs_twin": analysed["v1_vs_twin"], "theories": analysed["theories"],
                  "layer_types": analysed["layer_types"], "fusion": analysed["fusion"],
                  "int8": analysed["int8"], "excluded": analysed["excluded"]}
    for name, table in csv_frames.items():
        path = out_dir / CSV_FILES[name]
        table.to_csv(path, index=False)
        result.csv.append(path)
        csv_names[name] = CSV_FILES[name]
    pngs, png_names = {}, {}
    try:
        for figure in figs:
            if figure.figure is None:
                result.missing_figures[figure.name] = figure.note
                (out_dir / f"{figure.name}.png").unlink(missing_ok=True)  # from an earlier report here
                continue
            pngs[figure.name] = figure.png()
            (out_dir / f"{figure.name}.png").write_bytes(pngs[figure.name])
            png_names[figure.name] = f"{figure.name}.png"
            result.figures.append(figure.name)
    finally:
        for figure in figs:
            figure.close()
    result.html.write_text(html.render(title, generated, lines, provenance, figs, pngs, display, csv_names))
    result.markdown.write_text(markdown.render(title, generated, lines, provenance, figs, png_names, display,
                                               csv_names))
    return result
