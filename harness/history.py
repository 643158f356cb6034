"""``harness history``: one workload's median latency over every run in results/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import UserError


def history(results_dir: Path, workload_id: str, device: str | None = None, backend: str | None = None,
            threads: int | None = None) -> tuple[Any, Any]:
    """(valid rows, invalid rows) oldest first: one row per run x device x backend x threads."""
    from harness.store import list_runs, load_frame

    runs = list_runs(results_dir)
    if not runs:
        raise UserError(f"no runs in {results_dir}/; run `harness run` first")
    frame = load_frame(runs)
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
    rows = rows.sort_values(["run_started_at", "run_id", "device", "backend", "threads"])
    ok = rows[(rows["status"] == "ok") & rows["latency_median"].notna()] if "latency_median" in rows \
        else rows.iloc[0:0]
    bad = rows[~rows.index.isin(ok.index)]
    return ok.reset_index(drop=True), bad.reset_index(drop=True)


def trend_figure(ok: Any, workload_id: str, path: Path) -> Path:
    """Median latency per run (bars: 95% CI of the median), one line per device/backend/threads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, ax = plt.subplots(figsize=(9, 4.8))
    times = pd.to_datetime(ok["run_started_at"], utc=True, errors="coerce")
    ok = ok.assign(when=times)
    for (device, backend, threads), group in ok.groupby(["device", "backend", "threads"]):
        median = group["latency_median"] * 1e3
        lower = (median - group["latency_ci_low"] * 1e3).clip(lower=0)
        upper = (group["latency_ci_high"] * 1e3 - median).clip(lower=0)
        ax.errorbar(group["when"], median, yerr=[lower, upper], marker="o", capsize=3, linewidth=1.2,
                    label=f"{device}/{backend}/t{threads}")
    ax.set_title(f"{workload_id}: median latency per run")
    ax.set_xlabel("run start (UTC)")
    ax.set_ylabel("median latency (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(title="device/backend/threads", loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
              borderaxespad=0)
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def table_rows(ok: Any) -> list[dict[str, Any]]:
    """JSON-ready rows; change is relative to the previous run of the same device/backend/threads."""
    rows, previous = [], {}
    for _, row in ok.iterrows():
        key = (row["device"], row["backend"], int(row["threads"]))
        median = float(row["latency_median"])
        before = previous.get(key)
        previous[key] = median
        rows.append({"run_id": row["run_id"], "started_at": row["run_started_at"], "device": row["device"],
                     "backend": row["backend"], "threads": int(row["threads"]),
                     "runtime_version": row.get("runtime_version"), "median_s": median,
                     "ci_low_s": float(row["latency_ci_low"]), "ci_high_s": float(row["latency_ci_high"]),
                     "n": int(row["latency_n"]), "change_vs_previous": (median / before - 1) if before else None})
    return rows
