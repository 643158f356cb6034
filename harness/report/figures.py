"""The report's figures (matplotlib, Agg backend: no display needed).

Every figure function takes analysis tables and returns a ``Figure`` record: the
matplotlib figure, or ``None`` with the reason it could not be drawn (no pairs, no
energy sensor, ...), so the report can say why instead of showing an empty plot.
Colours identify the backend (same colour in every figure), markers the device.
Legends sit outside the axes so they never cover data; they are saved with
``bbox_inches="tight"``, so every legend must count towards the figure's extent (see
``_keep_legend``).
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from harness.analysis import delegate_backends, series_label

DPI = 110
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
KIND_MARKERS = {"standard": "o", "separable": "s", "depthwise": "^", "pointwise": "v", "network": "*"}
# Characters per line of the energy panel's "not measured" reasons: its 5.5 in at 8 pt hold ~75.
ENERGY_NOTE_CHARS = 60
KIND_LABELS = {"standard": "standard conv", "separable": "depthwise-separable", "depthwise": "depthwise only",
               "pointwise": "pointwise only", "network": "network"}


@dataclass
class Figure:
    name: str  # file stem: <name>.png
    title: str
    caption: str
    figure: Any = None  # matplotlib Figure, or None
    note: str = ""  # why it is missing
    omitted: str = ""  # what the drawn figure leaves out, and why (shown with the caption)

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        return buffer.getvalue()

    def close(self) -> None:
        if self.figure is not None:
            plt.close(self.figure)


class Style:
    """Colour per series (backend[delegate][ tN]) and marker per device, stable across figures."""

    def __init__(self, frame: pd.DataFrame, named_delegates: Collection[str] | None = None) -> None:
        self.multi_threads = "threads" in frame and frame["threads"].nunique() > 1
        self.named_delegates = delegate_backends(frame) if named_delegates is None else named_delegates
        labels = sorted({self.series(row) for _, row in frame.iterrows()}) if not frame.empty else []
        cmap = plt.get_cmap("tab10")
        self.colours = {label: cmap(i % 10) for i, label in enumerate(labels)}
        devices = sorted(frame["device"].dropna().unique()) if "device" in frame else []
        self.markers = {device: MARKERS[i % len(MARKERS)] for i, device in enumerate(devices)}

    def series(self, row: Any) -> str:
        return series_label(row, self.multi_threads, self.named_delegates)

    def colour(self, label: str) -> Any:
        return self.colours.get(label, "grey")

    def marker(self, device: str) -> str:
        return self.markers.get(device, "o")

    def legends(self, ax: Any, series: list[str], devices: list[str], extra: list[Line2D] | None = None,
                extra_title: str = "") -> None:
        """Two or three legends stacked to the right of the axes, outside the data area."""
        handles = [Line2D([], [], color=self.colour(s), marker="o", linestyle="none", markersize=7, label=s)
                   for s in series]
        first = ax.legend(handles=handles, title="backend", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                          borderaxespad=0, frameon=False)
        if len(devices) > 1 or extra:
            _keep_legend(ax, first)
            device_handles = [Line2D([], [], color="0.3", marker=self.marker(d), linestyle="none", markersize=7,
                                     label=d) for d in devices]
            _legend_below(ax, first, handles=device_handles + (extra or []),
                          title="device" + (f" / {extra_title}" if extra_title else ""))


def _keep_legend(ax: Any, legend: Any) -> None:
    """Keep ``legend`` when a second one replaces ``ax.legend_``, unclipped.

    ``add_artist`` clips the legend to the axes; a legend outside them then no longer counts
    towards the saved figure's tight extent, and a label wider than the next legend's is cut
    at the image edge ("onnxrun").
    """
    ax.add_artist(legend)
    legend.set_clip_on(False)


def _legend_below(ax: Any, above: Any, **kwargs: Any) -> Any:
    """A second legend right under ``above``, outside the axes: however many entries either has,
    they never sit on top of each other (anchoring it at the axes' bottom did, with many backends)."""
    extent = above.get_window_extent(ax.figure.canvas.get_renderer()).transformed(ax.transAxes.inverted())
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, extent.y0 - 0.05), borderaxespad=0, frameon=False,
                     **kwargs)


def _times_formatter(value: float, _pos: Any) -> str:
    return f"{value:g}x"


def _log_axis(axis: Any, formatter: Any = None) -> None:
    """Readable log ticks: 1-2-5 per decade, more when the axis spans little, fewer when it spans a lot."""
    axis.axes.autoscale_view()  # limits set explicitly stay as they are
    lo, hi = sorted(axis.get_view_interval())
    span = hi / lo if lo > 0 else 1e9
    subs = (1.0, 2.0, 3.0, 5.0, 7.0) if span < 8 else (1.0, 2.0, 5.0) if span < 1000 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_minor_formatter(NullFormatter())
    if formatter is not None:
        axis.set_major_formatter(FuncFormatter(formatter))


def _plain(value: float, _pos: Any) -> str:
    return f"{value:g}"


def _annotate(ax: Any, pairs: pd.DataFrame) -> None:
    """Label points with N and Dx, skipping labels that would overlap one already placed."""
    placed: list[tuple[float, float]] = []
    for _, row in pairs.sort_values("measured_speedup", ascending=False).iterrows():
        x, y = np.log10(row["theoretical_speedup"]), np.log10(row["measured_speedup"])
        if any(abs(x - px) < 0.09 and abs(y - py) < 0.035 for px, py in placed):
            continue
        placed.append((x, y))
        ax.annotate(f"N={row['n']}, Dx={row['x']}", (row["theoretical_speedup"], row["measured_speedup"]),
                    textcoords="offset points", xytext=(6, -10), fontsize=7, color="0.35")


def speedup_figure(pairs: pd.DataFrame, style: Style) -> Figure:
    figure = Figure("speedup", "Measured vs theoretical speedup of depthwise-separable layers",
                    "One point per standard/separable layer pair and device/backend/threads. Theoretical speedup "
                    "is the MAC ratio (1 / (1/N + 1/Dk²) without bias terms); measured speedup is the ratio of "
                    "median latencies, with its bootstrap 95% confidence interval. Points on the dashed line "
                    "reach the theory; below it, the separable layer saves less time than MACs.")
    if pairs.empty:
        figure.note = "no standard/separable pair was measured validly on the same device and backend"
        return figure
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    series_seen, devices_seen = [], []
    for _, row in pairs.iterrows():
        label = style.series(row)
        series_seen.append(label)
        devices_seen.append(row["device"])
        measured = row["measured_speedup"]
        lo, hi = row.get("speedup_ci_low"), row.get("speedup_ci_high")
        yerr = None
        if pd.notna(lo) and pd.notna(hi):
            yerr = [[max(0.0, measured - lo)], [max(0.0, hi - measured)]]
        ax.errorbar([row["theoretical_speedup"]], [measured], yerr=yerr, fmt=style.marker(row["device"]),
                    color=style.colour(label), markersize=7, capsize=3, elinewidth=1, alpha=0.85,
                    markeredgecolor="black", markeredgewidth=0.5)
    _annotate(ax, pairs)
    values = pd.concat([pairs["theoretical_speedup"], pairs["measured_speedup"],
                        pairs["speedup_ci_low"].dropna(), pairs["speedup_ci_high"].dropna()])
    lo, hi = float(values.min()) / 1.3, float(values.max()) * 1.3
    ax.plot([lo, hi], [lo, hi], linestyle="--", color="0.4", linewidth=1)
    ax.text(hi / 1.05, hi / 1.05, "y = x (theory)", ha="right", va="top", fontsize=8, color="0.4", rotation=0)
    ax.axhline(1.0, color="0.75", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    _log_axis(ax.xaxis, _times_formatter)
    _log_axis(ax.yaxis, _times_formatter)
    ax.set_xlabel("theoretical speedup (standard MACs / separable MACs)")
    ax.set_ylabel("measured speedup (standard / separable median latency)")
    ax.set_title(figure.title)
    ax.grid(True, which="major", alpha=0.3)
    style.legends(ax, sorted(set(series_seen)), sorted(set(devices_seen)))
    figure.figure = fig
    return figure


def latency_figure(workloads: pd.DataFrame, style: Style) -> Figure:
    figure = Figure("latency_vs_macs", "Median latency vs multiply-accumulates",
                    "Every valid measurement: median latency (bars: 95% CI of the median) against the workload's "
                    "MACs, both on log scales. A straight line of slope 1 would mean constant throughput.")
    if workloads.empty:
        figure.note = "no valid measurement"
        return figure
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    series_seen, devices_seen = set(), set()
    for _, row in workloads.iterrows():
        label = style.series(row)
        series_seen.add(label)
        devices_seen.add(row["device"])
        median = row["latency_median"] * 1e3
        yerr = None
        if pd.notna(row.get("latency_ci_low")) and pd.notna(row.get("latency_ci_high")):
            yerr = [[max(0.0, median - row["latency_ci_low"] * 1e3)], [max(0.0, row["latency_ci_high"] * 1e3 - median)]]
        ax.errorbar([row["macs"] / 1e6], [median], yerr=yerr, fmt=style.marker(row["device"]),
                    color=style.colour(label), markersize=6, capsize=2, elinewidth=1, alpha=0.8,
                    markeredgecolor="black", markeredgewidth=0.4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_axis(ax.xaxis, _plain)
    _log_axis(ax.yaxis, _plain)
    ax.set_xlabel("workload size (million MACs, log scale)")
    ax.set_ylabel("median latency (ms, log scale)")
    ax.set_title(figure.title)
    ax.grid(True, which="major", alpha=0.3)
    style.legends(ax, sorted(series_seen), sorted(devices_seen))
    figure.figure = fig
    return figure


def _draw_roofs(ax: Any, subset: pd.DataFrame, style: Style, ceilings: Any) -> None:
    """Each series' measured roofs over the panel's intensity range: streaming (dashed) and cache (dotted)."""
    if not ceilings or subset.empty:
        return
    from harness.calibration import ceiling_for

    low, high = subset["intensity"].min() / 2, subset["intensity"].max() * 2
    xs = np.geomspace(low, high, 200)
    drawn = set()
    for _, row in subset.iterrows():
        label = style.series(row)
        ceiling = ceiling_for(row, ceilings)
        if ceiling is None or label in drawn:
            continue
        drawn.add(label)
        ax.plot(xs, [ceiling.attainable_macs_per_s(x) / 1e9 for x in xs], color=style.colour(label),
                linestyle="--", linewidth=1.2, alpha=0.8)
        if ceiling.cache_bytes_per_s:
            ax.plot(xs, [ceiling.attainable_macs_per_s(x, resident=True) / 1e9 for x in xs],
                    color=style.colour(label), linestyle=":", linewidth=1.0, alpha=0.6)


def roofline_figure(workloads: pd.DataFrame, style: Style, ceilings: Any = None) -> Figure:
    figure = Figure("roofline", "Achieved throughput vs arithmetic intensity (roofline view)",
                    "Achieved GMAC/s against MACs per fp32 byte moved (weights + one read of the input + one write "
                    "of the output per layer). Separable layers sit left of standard ones: they do little work "
                    "per byte, so memory bandwidth rather than compute limits them. Lines: each backend's measured "
                    "roofs on the device (harness calibrate): min(peak GMAC/s, intensity x streaming bandwidth), "
                    "dotted with the cache-resident bandwidth; each point is labelled with its share of the roof "
                    "at its intensity.")
    if workloads.empty:
        figure.note = "no valid measurement"
        return figure
    devices = sorted(workloads["device"].unique())
    cols = min(3, len(devices))
    rows = -(-len(devices) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.8 * cols + 2.5, 4.8 * rows), squeeze=False, sharex=True,
                             sharey=True)
    series_seen, kinds_seen = set(), set()
    for index, device in enumerate(devices):
        ax = axes[index // cols][index % cols]
        subset = workloads[workloads["device"] == device]
        for _, row in subset.iterrows():
            label = style.series(row)
            series_seen.add(label)
            kind = row.get("kind") or "network"
            kinds_seen.add(kind)
            marker = KIND_MARKERS.get(kind, "o")
            hollow = kind == "separable"
            ax.scatter([row["intensity"]], [row["gmacs_per_s"]], marker=marker, s=60 if kind != "network" else 110,
                       facecolors="none" if hollow else style.colour(label), edgecolors=style.colour(label)
                       if hollow else "black", linewidths=1.5 if hollow else 0.5, alpha=0.9)
            if row.get("pct_of_attainable") == row.get("pct_of_attainable"):  # not NaN: a roof is known
                ax.annotate(f"{row['pct_of_attainable']:.0%}", (row["intensity"], row["gmacs_per_s"]),
                            textcoords="offset points", xytext=(5, 3), fontsize=6.5, color=style.colour(label))
        _draw_roofs(ax, subset, style, ceilings)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _log_axis(ax.xaxis, _plain)
        _log_axis(ax.yaxis, _plain)
        ax.set_title(f"device: {device}" if len(devices) > 1 else f"{figure.title}\n(device: {device})")
        ax.grid(True, which="major", alpha=0.3)
        ax.set_xlabel("arithmetic intensity (MACs per fp32 byte, log scale)")
        if index % cols == 0:
            ax.set_ylabel("achieved GMAC/s (log scale)")
    for index in range(len(devices), rows * cols):
        axes[index // cols][index % cols].set_visible(False)
    last = axes[0][min(cols, len(devices)) - 1]
    kind_handles = [Line2D([], [], marker=KIND_MARKERS[k], linestyle="none", markersize=8 if k != "network" else 11,
                           markerfacecolor="none" if k == "separable" else "0.6", markeredgecolor="black",
                           label=KIND_LABELS[k]) for k in KIND_MARKERS if k in kinds_seen]
    handles = [Line2D([], [], color=style.colour(s), marker="o", linestyle="none", markersize=7, label=s)
               for s in sorted(series_seen)]
    first = last.legend(handles=handles, title="backend", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                        borderaxespad=0, frameon=False)
    _keep_legend(last, first)
    _legend_below(last, first, handles=kind_handles, title="workload kind")
    if len(devices) > 1:
        fig.suptitle(figure.title, y=1.02)
    figure.figure = fig
    return figure


def _has_samples(value: Any) -> bool:
    return isinstance(value, list) and bool(value)


def network_latency_figure(frame: pd.DataFrame, style: Style) -> Figure:
    figure = Figure("network_latency", "Latency distributions of the networks per backend",
                    "Box plots of every timed inference (box: quartiles, line: median, whiskers: 1.5 IQR, "
                    "dots: outliers), one panel per network.")
    if frame.empty or "kind" not in frame:
        figure.note = "no valid network measurement"
        return figure
    all_nets = frame[frame["kind"] == "network"]
    if all_nets.empty:
        figure.note = "no valid network measurement"
        return figure
    has_samples = all_nets["samples_s"].apply(_has_samples) if "samples_s" in all_nets \
        else pd.Series(False, all_nets.index)
    nets = all_nets[has_samples]
    # Keyed on the data, not on the device type: a tool that reports only summary statistics
    # (Android's benchmark_model) leaves nothing to draw a distribution from.
    left_out = sorted({f"{r['device']}/{style.series(r)}" for _, r in all_nets[~has_samples].iterrows()})
    if left_out:
        figure.omitted = f"Not shown: {', '.join(left_out)} (no raw samples: only summary statistics were recorded)."
    if nets.empty:
        figure.note = "no valid network measurement with raw samples" + (
            f"; {', '.join(left_out)} recorded only summary statistics" if left_out else "")
        return figure
    names = sorted(nets["workload_id"].unique(), key=lambda w: nets[nets["workload_id"] == w]["macs"].iloc[0])
    cols = min(2, len(names))
    rows = -(-len(names) // cols)
    height = max(2.2, 0.45 * nets.groupby("workload_id").size().max() + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(7.0 * cols, height * rows), squeeze=False)
    many_runs = "run_id" in nets and nets["run_id"].nunique() > 1
    for index, name in enumerate(names):
        ax = axes[index // cols][index % cols]
        subset = nets[nets["workload_id"] == name]
        subset = subset.sort_values(["device", "backend", "threads"])
        labels = [f"{r['device']}/{style.series(r)}" + (f" ({r['run_id'][:15]})" if many_runs else "")
                  for _, r in subset.iterrows()]
        data = [np.asarray(s) * 1e3 for s in subset["samples_s"]]
        boxes = ax.boxplot(data, orientation="horizontal", tick_labels=labels, patch_artist=True, widths=0.6,
                           flierprops={"markersize": 2, "alpha": 0.4}, medianprops={"color": "black"})
        for patch, (_, row) in zip(boxes["boxes"], subset.iterrows(), strict=True):
            patch.set_facecolor(style.colour(style.series(row)))
            patch.set_alpha(0.7)
        medians = [float(np.median(d)) for d in data]
        if max(medians) / max(min(medians), 1e-12) > 8:
            ax.set_xscale("log")
            _log_axis(ax.xaxis, _plain)
            ax.set_xlabel("latency per inference (ms, log scale)")
        else:
            ax.set_xlabel("latency per inference (ms)")
        ax.set_title(name, fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    for index in range(len(names), rows * cols):
        axes[index // cols][index % cols].set_visible(False)
    fig.suptitle(figure.title)
    fig.tight_layout()  # after the suptitle, so the panels' titles are laid out below it
    if left_out:
        # Below the figure's bottom edge (the x labels sit inside it); the tight save takes it in.
        fig.text(0.01, 0.0, textwrap.fill(figure.omitted, 110), ha="left", va="top", fontsize=8, color="0.3")
    figure.figure = fig
    return figure


def energy_memory_figure(networks: pd.DataFrame, energy_note: str, style: Style) -> Figure:
    figure = Figure("energy_memory", "Energy per inference and memory per network and device",
                    "Left: energy per inference (idle power subtracted when measured; only where a sensor was "
                    "available). Right: peak resident memory of the runner process while the network ran "
                    "(runtime + model + buffers).")
    if networks.empty:
        figure.note = "no valid network measurement"
        return figure
    energy = networks[networks["energy_j"].notna()] if "energy_j" in networks else networks.iloc[0:0]
    memory_col = "memory_peak_rss_bytes"
    memory = networks[networks[memory_col].notna()] if memory_col in networks else networks.iloc[0:0]
    if energy.empty and memory.empty:
        figure.note = "neither energy nor memory was measured"
        return figure
    names = sorted(networks["workload_id"].unique(), key=lambda w: networks[networks["workload_id"] == w]["macs"]
                   .iloc[0])
    combos = sorted({(r["device"], style.series(r)) for _, r in networks.iterrows()})
    height = max(3.0, 0.32 * len(names) * len(combos) + 1.5)
    fig, (ax_e, ax_m) = plt.subplots(1, 2, figsize=(13, height), sharey=True)
    bar = 0.8 / max(1, len(combos))
    ypos = np.arange(len(names))

    series_of = networks.apply(style.series, axis=1)

    def bars(ax: Any, column: str, scale: float) -> None:
        for offset, (device, label) in enumerate(combos):
            values, notes = [], []
            for name in names:
                match = networks[(networks["workload_id"] == name) & (networks["device"] == device)
                                 & (series_of == label)]
                measured = match[column].dropna()
                values.append(float(measured.median()) * scale if not measured.empty else np.nan)
                notes.append("" if not measured.empty else " not measured" if not match.empty
                             else " no valid measurement")
            centres = ypos - 0.4 + bar * (offset + 0.5)
            for centre, note in zip(centres, notes, strict=True):
                if note:
                    ax.text(0, centre, note, va="center", ha="left", fontsize=7, color="0.45")
            ax.barh(centres, values, height=bar * 0.92, color=style.colour(label),
                    hatch=["", "//", "..", "xx", "\\\\"][sorted({d for d, _ in combos}).index(device) % 5],
                    edgecolor="black", linewidth=0.4, label=f"{device}/{label}")

    if energy.empty:
        # Wrapped to the panel's width by hand: matplotlib's wrap=True wraps at the figure's edge, so
        # a long reason ran left over the workload labels beside the panel.
        reasons = [textwrap.fill(line, ENERGY_NOTE_CHARS) for line in energy_note.splitlines() if line]
        ax_e.text(0.5, 0.5, "\n".join(["energy not measured", *reasons]), ha="center", va="center",
                  transform=ax_e.transAxes, fontsize=8, color="0.3", linespacing=1.4)
        ax_e.set_xticks([])
    else:
        bars(ax_e, "energy_j", 1e3)
        ax_e.set_xlabel("energy per inference (mJ)")
        ax_e.grid(True, axis="x", alpha=0.3)
    ax_e.set_title("energy per inference")
    if memory.empty:
        ax_m.text(0.5, 0.5, "memory not measured", ha="center", va="center", transform=ax_m.transAxes)
    else:
        bars(ax_m, memory_col, 1e-6)
        ax_m.set_xlabel("peak resident memory of the runner (MB)")
        ax_m.grid(True, axis="x", alpha=0.3)
    ax_m.set_title("peak memory")
    ax_e.set_yticks(ypos, names)
    ax_e.set_ylim(len(names) - 0.5, -0.5)  # first network on top
    handles, labels = ax_m.get_legend_handles_labels()
    if not handles:
        handles, labels = ax_e.get_legend_handles_labels()
    ax_m.legend(handles, labels, title="device/backend", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                borderaxespad=0, frameon=False)
    fig.suptitle(figure.title, y=1.02)
    figure.figure = fig
    return figure


def make_figures(tables: dict[str, pd.DataFrame], energy_note: str = "") -> list[Figure]:
    """All five figures from the valid measurements and the analysis tables."""
    valid = tables["valid"]
    style = Style(valid, tables.get("delegate_backends"))
    return [
        speedup_figure(tables["pairs"], style),
        latency_figure(tables["workloads"], style),
        roofline_figure(tables["workloads"], style, tables.get("ceilings") or {}),
        network_latency_figure(valid, style),
        energy_memory_figure(tables["networks"], energy_note, style),
    ]
