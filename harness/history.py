"""``harness history``: a workload's latency over every run in results/, its change points and a trend figure.

A *series* is one workload on one device x backend x threads x delegate.  Each run gives it one
value: the median over the run's invocations (``harness.measure.invocations.collapse``), or,
with ``normalize="reference"``, that median divided by the run's reference-probe time (the fixed
kernel every invocation also times on the device), which cancels a device that got slower as a
whole (thermal paste, a kernel update, a noisy neighbour) and leaves what changed in the workload.
The change points of each series (``harness.measure.changepoints``) mark its rows, its JSON and
the trend figure, whose lower panel shows how the probe itself drifted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.measure.changepoints import DEFAULT_ALPHA, DEFAULT_MIN_CHANGE, ChangePoint, detect

NORMALIZE_CHOICES = ("reference",)
SERIES_KEYS = ["workload_id", "device", "backend", "threads", "delegate"]


@dataclass
class Series:
    """One workload on one device/backend/threads/delegate: one value per run, oldest first."""

    workload_id: str
    device: str
    backend: str
    threads: int
    delegate: str
    run_ids: list[str]
    started_at: list[str | None]
    medians_s: list[float]
    probes_s: list[float]  # NaN for a run that measured no reference probe
    values: list[float]  # medians_s, or medians_s / probes_s when normalised
    normalize: str | None = None
    change_points: list[ChangePoint] = field(default_factory=list)
    show_delegate: bool = False  # several delegates share device/backend/threads: name it

    @property
    def where(self) -> str:
        label = f"{self.device}/{self.backend}/t{self.threads}"
        return f"{label}/{self.delegate}" if self.show_delegate and self.delegate else label

    @property
    def has_probe(self) -> bool:
        return any(math.isfinite(p) for p in self.probes_s)

    def change_at(self, run_id: str) -> ChangePoint | None:
        return next((c for c in self.change_points if c.run_id == run_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {"workload_id": self.workload_id, "device": self.device, "backend": self.backend,
                "threads": self.threads, "delegate": self.delegate or None, "where": self.where,
                "normalize": self.normalize, "runs": len(self.run_ids),
                "change_points": [change_point_dict(self, c) for c in self.change_points]}


def change_point_dict(series: Series, point: ChangePoint) -> dict[str, Any]:
    """A change point with the series it belongs to, JSON-ready."""
    return {"workload_id": series.workload_id, "where": series.where, "device": series.device,
            "backend": series.backend, "threads": series.threads, "delegate": series.delegate or None,
            "normalize": series.normalize, **point.to_dict(), "description": point.describe()}


def collapsed_frame(results_dir: Path) -> Any:
    """Every run of the store, one row per job and run (invocations collapsed)."""
    from harness.measure.invocations import collapse
    from harness.store import list_runs, load_frame

    runs = list_runs(results_dir)
    if not runs:
        raise UserError(f"no runs in {results_dir}/; run `harness run` first")
    return collapse(load_frame(runs))


def split_valid(rows: Any) -> tuple[Any, Any]:
    """(valid rows, invalid rows), oldest first."""
    rows = rows.sort_values(["run_started_at", "run_id", "device", "backend", "threads"], kind="stable")
    ok = rows[(rows["status"] == "ok") & rows["latency_median"].notna()] if "latency_median" in rows \
        else rows.iloc[0:0]
    bad = rows[~rows.index.isin(ok.index)]
    return ok.reset_index(drop=True), bad.reset_index(drop=True)


def history(results_dir: Path, workload_id: str, device: str | None = None, backend: str | None = None,
            threads: int | None = None) -> tuple[Any, Any]:
    """(valid rows, invalid rows) oldest first: one row per run x device x backend x threads x delegate."""
    frame = collapsed_frame(results_dir)
    if frame.empty or workload_id not in set(frame["workload_id"]):
        known = sorted(set(frame["workload_id"])) if not frame.empty else []
        hint = f" (measured: {', '.join(known[:8])}{', ...' if len(known) > 8 else ''})" if known else ""
        raise UserError(f"workload {workload_id!r} was never measured in {results_dir}/{hint}")
    rows = frame[frame["workload_id"] == workload_id]
    for column, value, option in (("device", device, "--device"), ("backend", backend, "--backend"),
                                  ("threads", threads, "--threads")):
        if value is None:
            continue
        if value not in set(rows[column]):
            raise UserError(f"{option} {value}: no measurement of {workload_id} with it "
                            f"(have: {', '.join(sorted(map(str, set(rows[column]))))})")
        rows = rows[rows[column] == value]
    return split_valid(rows)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def build_series(ok: Any, normalize: str | None = None, min_change: float = DEFAULT_MIN_CHANGE,
                 alpha: float = DEFAULT_ALPHA) -> list[Series]:
    """The series of valid (collapsed) rows, in order of first appearance, with their change points."""
    if normalize not in (None, *NORMALIZE_CHOICES):
        raise UserError(f"normalize must be one of {', '.join(NORMALIZE_CHOICES)}, got {normalize!r}")
    if ok.empty:
        return []
    ok = ok.assign(delegate=ok["delegate"].fillna("") if "delegate" in ok else "")
    out: list[Series] = []
    for key, group in ok.groupby(SERIES_KEYS, sort=False, dropna=False):
        workload_id, device, backend, threads, delegate = key
        medians = [_number(v) for v in group["latency_median"]]
        probes = [_number(v) for v in group["probe_s"]] if "probe_s" in group else [math.nan] * len(group)
        values = [m / p if normalize == "reference" and p > 0 else (m if normalize is None else math.nan)
                  for m, p in zip(medians, probes, strict=True)]
        run_ids = [str(r) for r in group["run_id"]]
        started = [None if not isinstance(s, str) else s for s in group["run_started_at"]]
        noise = _run_noise(group)
        points = detect(values, run_ids=run_ids, noise=noise, started_at=started, min_change=min_change,
                        alpha=alpha)
        out.append(Series(workload_id, device, backend, int(threads), str(delegate or ""), run_ids, started,
                          medians, probes, values, normalize, points))
    delegates: dict[tuple, set[str]] = {}
    for series in out:
        delegates.setdefault((series.workload_id, series.device, series.backend, series.threads), set()).add(
            series.delegate)
    for series in out:
        series.show_delegate = len(delegates[(series.workload_id, series.device, series.backend,
                                              series.threads)]) > 1
    return out


def _run_noise(group: Any) -> list[float] | None:
    """Each run's noise as a relative standard error: the spread of its invocations / sqrt(their count)."""
    if "invocation_spread" not in group or "invocations" not in group:
        return None
    noise = [_number(s) / math.sqrt(_number(k)) if _number(k) >= 2 else math.nan
             for s, k in zip(group["invocation_spread"], group["invocations"], strict=True)]
    return noise if any(math.isfinite(v) and v > 0 for v in noise) else None


def scan_all(results_dir: Path, normalize: str | None = None, min_change: float = DEFAULT_MIN_CHANGE,
             alpha: float = DEFAULT_ALPHA) -> list[Series]:
    """Every series in the store (with ``normalize``, only those with reference probes)."""
    ok, _ = split_valid(collapsed_frame(results_dir))
    series = build_series(ok, normalize, min_change, alpha)
    return [s for s in series if normalize is None or s.has_probe]


def require_probes(series: list[Series], workload_id: str) -> None:
    if series and not any(s.has_probe for s in series):
        raise UserError(f"--normalize reference: no run of {workload_id} measured the reference probe (runs "
                        "made before probes were recorded); leave out --normalize")


def table_rows(ok: Any, series: list[Series] | None = None) -> list[dict[str, Any]]:
    """JSON-ready rows; change is relative to the previous run of the same series."""
    series = build_series(ok) if series is None else series
    by_key = {(s.workload_id, s.device, s.backend, s.threads, s.delegate): s for s in series}
    rows, previous = [], {}
    for _, row in ok.iterrows():
        delegate = row.get("delegate")
        delegate = "" if delegate is None or (isinstance(delegate, float) and math.isnan(delegate)) else delegate
        key = (row["workload_id"], row["device"], row["backend"], int(row["threads"]), str(delegate))
        one = by_key.get(key)
        median = float(row["latency_median"])
        probe = _number(row.get("probe_s"))
        value = median / probe if one is not None and one.normalize == "reference" and probe > 0 else (
            median if one is None or one.normalize is None else math.nan)
        before = previous.get(key)
        previous[key] = value
        point = one.change_at(row["run_id"]) if one is not None else None
        invocations = _number(row.get("invocations"))
        rows.append({"run_id": row["run_id"], "started_at": row["run_started_at"], "device": row["device"],
                     "backend": row["backend"], "threads": int(row["threads"]), "delegate": delegate or None,
                     "where": one.where if one is not None else f"{row['device']}/{row['backend']}/t{row['threads']}",
                     "runtime_version": row.get("runtime_version"), "median_s": median,
                     "ci_low_s": _json_number(row.get("latency_ci_low")),
                     "ci_high_s": _json_number(row.get("latency_ci_high")),
                     "n": int(row["latency_n"]) if math.isfinite(_number(row.get("latency_n"))) else None,
                     "invocations": int(invocations) if math.isfinite(invocations) else 1,
                     "probe_s": _json_number(probe),
                     "value": _json_number(value),
                     "change_vs_previous": (value / before - 1) if before and math.isfinite(value) else None,
                     "change_point": _marker(point) if point else None})
    return rows


def _json_number(value: Any) -> float | None:
    number = _number(value)
    return None if math.isnan(number) else number


def _marker(point: ChangePoint) -> str:
    """Short text for a table cell: 'step +10.2%' or 'creep +2.1%/run'."""
    if point.kind == "step":
        return f"step {point.relative_change:+.1%}"
    return f"creep {point.slope_per_run:+.1%}/run"


def trend_figure(ok: Any, workload_id: str, path: Path, series: list[Series] | None = None) -> Path:
    """Value per run, one line per series, change points as labelled vertical lines; probe drift below.

    Without normalisation: median latency with 95% CI bars; with it, latency / probe time.  When
    any run measured the reference probe, a lower panel shows each device's probe time relative
    to its first run: a device that drifted as a whole shows there, not only in every workload.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import pandas as pd

    series = build_series(ok) if series is None else series
    normalized = any(s.normalize for s in series)
    probes = _probe_drift(ok)
    if probes:
        fig, (ax, probe_ax) = plt.subplots(2, 1, figsize=(9, 6.4), sharex=True,
                                           gridspec_kw={"height_ratios": [3, 1.2]})
    else:
        fig, ax = plt.subplots(figsize=(9, 4.8))
        probe_ax = None
    times = pd.to_datetime(ok["run_started_at"], utc=True, errors="coerce")
    when_of = dict(zip(ok["run_id"], times, strict=True))
    for one in series:
        rows = ok[(ok["workload_id"] == one.workload_id) & (ok["device"] == one.device)
                  & (ok["backend"] == one.backend) & (ok["threads"] == one.threads)
                  & (ok["delegate"].fillna("") == one.delegate if "delegate" in ok else True)]
        when = [when_of[r] for r in one.run_ids]
        scale = 1.0 if normalized else 1e3
        values = [v * scale for v in one.values]
        if normalized:
            line, = ax.plot(when, values, marker="o", linewidth=1.2, label=one.where)
        else:
            median = rows["latency_median"] * 1e3
            lower = (median - rows["latency_ci_low"] * 1e3).clip(lower=0).fillna(0)
            upper = (rows["latency_ci_high"] * 1e3 - median).clip(lower=0).fillna(0)
            line = ax.errorbar(when, values, yerr=[lower, upper], marker="o", capsize=3, linewidth=1.2,
                               label=one.where).lines[0]
        for point in one.change_points:
            at = when_of.get(point.run_id)
            if at is None or pd.isna(at):
                continue
            ax.axvline(at, color=line.get_color(), linestyle="--", linewidth=1, alpha=0.8)
            ax.annotate(f"{_marker(point)}", xy=(at, 0.98), xycoords=("data", "axes fraction"), rotation=90,
                        va="top", ha="right", fontsize=8, color=line.get_color(),
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
            if probe_ax is not None:
                probe_ax.axvline(at, color=line.get_color(), linestyle="--", linewidth=1, alpha=0.5)
    title = "median latency / reference probe per run" if normalized else "median latency per run"
    ax.set_title(f"{workload_id}: {title}")
    ax.set_ylabel("latency / probe time" if normalized else "median latency (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(title="device/backend/threads", loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
              borderaxespad=0)
    bottom = ax
    if probe_ax is not None:
        for device, (when, relative) in probes.items():
            probe_ax.plot(when, [r * 100 for r in relative], marker=".", linewidth=1, label=device)
        probe_ax.axhline(0, color="grey", linewidth=0.8)
        probe_ax.set_ylabel("probe vs first run (%)")
        probe_ax.grid(True, alpha=0.3)
        probe_ax.legend(title="reference probe", loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                        borderaxespad=0)
        bottom = probe_ax
    bottom.set_xlabel("run start (UTC)")
    locator = mdates.AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _probe_drift(ok: Any) -> dict[str, tuple[list[Any], list[float]]]:
    """Per device: (run start times, probe time / the device's first probe time - 1), oldest first."""
    import pandas as pd

    if "probe_s" not in ok or ok.empty:
        return {}
    probes = ok[pd.to_numeric(ok["probe_s"], errors="coerce") > 0]
    out = {}
    for device, group in probes.groupby("device", sort=True):
        per_run = group.groupby(["run_started_at", "run_id"], sort=True)["probe_s"].median()
        if per_run.empty:
            continue
        first = float(per_run.iloc[0])
        when = list(pd.to_datetime([started for started, _ in per_run.index], utc=True, errors="coerce"))
        out[str(device)] = (when, [float(v) / first - 1 for v in per_run])
    return out
