"""The report's tables: the analysis frames as formatted rows of strings.

The same ``Table`` renders to HTML and Markdown; the CSV files keep the full-precision
frames.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.analysis import (
    SLOW_STANDARD_FRACTION,
    SLOW_STANDARD_REASON,
    backend_label,
    precision_tag,
    where_label,
)


@dataclass
class Table:
    name: str  # CSV stem
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def ms(value: Any) -> str:
    number = _num(value)
    if number is None:
        return ""
    number *= 1e3
    if number < 1:
        return f"{number:.4f}"
    if number < 100:
        return f"{number:.3f}"
    return f"{number:.1f}"


def times(value: Any, digits: int = 2) -> str:
    number = _num(value)
    return "" if number is None else f"{number:.{digits}f}x"


def percent(value: Any) -> str:
    number = _num(value)
    return "" if number is None else f"{number:.0%}"


def human(value: Any, unit: str = "") -> str:
    number = _num(value)
    if number is None:
        return ""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= scale:
            return f"{number / scale:.2f}{suffix}{unit}"
    return f"{number:.0f}{unit}"


def fixed(value: Any, digits: int = 1) -> str:
    number = _num(value)
    return "" if number is None else f"{number:.{digits}f}"


def where_column(named_delegates: Collection[str]) -> str:
    return "device/backend[delegate]/threads" if named_delegates else "device/backend/threads"


def slow_standard_note(row: Any, named_delegates: Collection[str] = ()) -> str:
    """Why a pair is flagged, or "" when it is not."""
    if not bool(row.get("slow_standard")):
        return ""
    return (f"standard conv under {SLOW_STANDARD_FRACTION:.0%} of {backend_label(row, named_delegates)}'s typical "
            f"GMAC/s: {SLOW_STANDARD_REASON}")


def pairs_table(pairs: pd.DataFrame, named_delegates: Collection[str] = ()) -> Table:
    table = Table("pairs", "Standard vs depthwise-separable layer pairs",
                  [where_column(named_delegates), "pair (M, N, Dk, Dx, stride)", "standard ms", "separable ms",
                   "theoretical", "measured [95% CI]", "measured / theoretical", "standard GMAC/s [typical]",
                   "flag"],
                  note="theoretical = standard MACs / separable MACs; measured = ratio of median latencies. "
                       "typical = median GMAC/s of the same backend's other standard convs on the device; a pair "
                       f"whose standard conv runs under {SLOW_STANDARD_FRACTION:.0%} of it is flagged: "
                       f"{SLOW_STANDARD_REASON}.")
    for _, row in pairs.iterrows():
        ci = f" [{times(row['speedup_ci_low'])}, {times(row['speedup_ci_high'])}]" \
            if _num(row.get("speedup_ci_low")) is not None else ""
        typical = fixed(row.get("typical_standard_gmacs_per_s"), 1)
        table.rows.append([where_label(row, named_delegates),
                           f"{row['m']}, {row['n']}, {row['k']}, {row['x']}, {row['stride']}{precision_tag(row)}",
                           ms(row["standard_median_s"]), ms(row["separable_median_s"]),
                           times(row["theoretical_speedup"]), times(row["measured_speedup"]) + ci,
                           percent(row["efficiency"]) + (" flagged" if bool(row.get("slow_standard")) else ""),
                           fixed(row.get("standard_gmacs_per_s"), 1) + (f" [{typical}]" if typical else ""),
                           slow_standard_note(row, named_delegates)])
    return table


def workloads_table(workloads: pd.DataFrame, named_delegates: Collection[str] = ()) -> Table:
    table = Table("workloads", "Every valid measurement",
                  [where_column(named_delegates), "workload", "kind", "median ms [95% CI]", "MACs", "GMAC/s",
                   "MAC/byte", "peak RSS", "energy mJ", "output"],
                  note="peak RSS is the runner process's (runtime included); energy only where a sensor was read.")
    for _, row in workloads.iterrows():
        ci = f" [{ms(row.get('latency_ci_low'))}, {ms(row.get('latency_ci_high'))}]" \
            if _num(row.get("latency_ci_low")) is not None else ""
        energy = _num(row.get("energy_j"))
        table.rows.append([where_label(row, named_delegates), row["workload_id"], str(row.get("kind") or ""),
                           ms(row["latency_median"]) + ci, human(row["macs"]), fixed(row["gmacs_per_s"], 2),
                           fixed(row.get("intensity"), 1), human(row.get("memory_peak_rss_bytes"), "B"),
                           f"{energy * 1e3:.3f}" if energy is not None else "",
                           str(row.get("output_check_status") or "")])
    return table


def networks_table(comparison: pd.DataFrame, named_delegates: Collection[str] = ()) -> Table:
    table = Table("networks", "The networks against each other",
                  [where_column(named_delegates), "network", "median ms", "MACs", "params", "GMAC/s",
                   "x fastest network", "x fastest backend"],
                  note="x fastest network: latency over the fastest network on the same device/backend/threads; "
                       "x fastest backend: over the same network's fastest backend on the device.")
    for _, row in comparison.iterrows():
        table.rows.append([where_label(row, named_delegates), row["workload_id"], ms(row["latency_median"]),
                           human(row["macs"]), human(row["params"]), fixed(row["gmacs_per_s"], 2),
                           times(row["vs_fastest_network"]), times(row["vs_fastest_backend"])])
    return table


def twin_table(twins: pd.DataFrame, named_delegates: Collection[str] = ()) -> Table:
    table = Table("v1_vs_twin", "MobileNet v1 vs its standard-convolution twin",
                  [where_column(named_delegates), "network", "v1 ms", "twin ms", "theoretical", "measured",
                   "measured / theoretical"])
    for _, row in twins.iterrows():
        table.rows.append([where_label(row, named_delegates), row["workload_id"], ms(row["v1_median_s"]),
                           ms(row["twin_median_s"]), times(row["theoretical_speedup"]),
                           times(row["measured_speedup"]), percent(row["efficiency"])])
    return table


def theory_table(theories: pd.DataFrame, named_delegates: Collection[str] = ()) -> Table:
    table = Table("theories", "Which theory predicts the measured speedup: op ratio or roofline",
                  [where_column(named_delegates), "comparison", "measured", "op ratio", "op ratio off by",
                   "roofline", "roofline off by", "closer", "memory-bound share"],
                  note="op ratio = the MAC ratio (1/N + 1/Dk² for a pair); roofline = the ratio of the two "
                       "workloads' roofline times, each layer max(MACs / peak, bytes / bandwidth) with this "
                       "device and backend's measured ceilings (harness calibrate); off by = how far the "
                       "prediction is from the measured speedup (a factor of 2 either way is 100%); memory-bound "
                       "share = the share of the faster workload's roofline time in memory-bound layers.")
    for _, row in theories.iterrows():
        what = (f"{row['slow_id'].removeprefix('conv-standard-')} pair" if row["comparison"] == "pair"
                else f"{row['fast_id']} vs twin")
        table.rows.append([where_label(row, named_delegates), what, times(row["measured_speedup"]),
                           times(row["op_ratio_speedup"]), f"{row['op_ratio_error_pct']:.0f}%",
                           times(row["roofline_speedup"]), f"{row['roofline_error_pct']:.0f}%", row["closer"],
                           percent(row["fast_memory_bound_share"])])
    return table


def layer_type_table(breakdown: pd.DataFrame, named_delegates: Collection[str] = ()) -> Table:
    table = Table("layer_types", "Where each network's time goes: share of MACs vs share of measured time",
                  [where_column(named_delegates), "network", "layer type", "layers (distinct)", "share of MACs",
                   "share of time", "GMAC/s", "of the roof"],
                  note="Each distinct layer of the network measured alone (harness run --suite layers-of:NETWORK), "
                       "its median times the number of times the network runs it; the shares of a network sum to "
                       "1 over the measured layers. 'other' (squeeze-and-excite, pooling, residual adds) is not "
                       "measured alone: see the next table.")
    for _, row in breakdown.iterrows():
        table.rows.append([where_label(row, named_delegates), row["network"], row["layer_type"],
                           f"{row['count']} ({row['layers']})", percent(row["mac_share"]), percent(row["time_share"]),
                           "" if _num(row["gmacs_per_s"]) is None else f"{row['gmacs_per_s']:.1f}",
                           percent(row["pct_of_attainable"])])
    return table


def fusion_table(fusion: pd.DataFrame, named_delegates: Collection[str] = ()) -> Table:
    table = Table("fusion", "The network against the sum of its layers (fusion, and what no layer measures)",
                  [where_column(named_delegates), "network", "network ms", "sum of layers ms", "layers / network",
                   "profiler / network", "layers missing", "not measured alone"],
                  note="layers / network above 1: the whole network runs faster than its layers one by one "
                       "(BatchNorm and activations fused, one call instead of one per layer, caches warm); below "
                       "1: time in ops no layer workload measures. profiler / network: the runtime's own profiler "
                       "(onnxruntime session profiling, torch.profiler, benchmark_model --enable_op_profiling) as "
                       "a cross-check.")
    for _, row in fusion.iterrows():
        table.rows.append([where_label(row, named_delegates), row["network"], ms(row["network_median_s"]),
                           ms(row["layers_sum_s"]), times(row["layers_over_network"]),
                           times(row["profile_over_network"]), str(row["layers_missing"]),
                           str(row["other_ops"])[:80]])
    return table


def efficiency_table(efficiency: pd.DataFrame, named_delegates: Collection[str] = ()) -> Table:
    table = Table("efficiency", "Share of the theoretical speedup reached, per device and backend",
                  [where_column(named_delegates), "pairs", "geometric mean", "lowest (N, Dx)", "highest (N, Dx)",
                   "median", "flagged pairs", "geometric mean without them"],
                  note="share = measured / theoretical speedup of each pair; the mean of these ratios is geometric. "
                       f"A pair is flagged when its standard conv runs under {SLOW_STANDARD_FRACTION:.0%} of the "
                       f"backend's typical GMAC/s (see the pairs table): {SLOW_STANDARD_REASON}.")
    for _, row in efficiency.iterrows():
        flagged = int(row.get("slow_standard_pairs") or 0)
        table.rows.append([where_label(row, named_delegates) + precision_tag(row), str(row["pairs"]),
                           percent(row["geomean_efficiency"]),
                           f"{percent(row['lowest_efficiency'])} ({row['lowest_n']}, {row['lowest_x']})",
                           f"{percent(row['highest_efficiency'])} ({row['highest_n']}, {row['highest_x']})",
                           percent(row["median_efficiency"]), str(flagged),
                           percent(row.get("geomean_efficiency_unflagged")) if flagged else ""])
    return table


def int8_table(speedups: pd.DataFrame, named_delegates: Collection[str] = ()) -> Table:
    table = Table("int8", "int8 against fp32: the same workload, statically quantized",
                  [where_column(named_delegates), "workload", "kind", "fp32 ms", "int8 ms", "int8 speedup",
                   "int8 GMAC/s"],
                  note="int8 speedup = fp32 median / int8 median on the same device, backend and threads (above 1x: "
                       "int8 is faster). Each int8 model is the fp32 one with the same weights, quantized after "
                       "training with calibration inputs drawn like the reference input; its output is checked "
                       "against the fp32 PyTorch output within a quantization tolerance.")
    for _, row in speedups.iterrows():
        table.rows.append([where_label(row, named_delegates), row["workload_id"], str(row.get("kind") or ""),
                           ms(row["fp32_median_s"]), ms(row["int8_median_s"]), times(row["int8_speedup"]),
                           fixed(row["int8_gmacs_per_s"], 1)])
    return table


def backends_table(frame: pd.DataFrame) -> Table:
    """What each backend in the report is: a name alone (torch vs torch-compile) could mislead."""
    from harness.registry import BACKENDS, FORMATS

    table = Table("backends", "Backends in this report",
                  ["backend", "what runs", "artifact", "precisions measured", "compile s (median)",
                   "ops delegated"],
                  note="compile s: torch.compile's compilation, timed apart from the latency (it happens once "
                       "per process, before the first timed call). ops delegated: over every measured workload, "
                       "the graph's ops its delegate ran (ExecuTorch: counted when lowering to XNNPACK; phones: "
                       "the delegate's own report); the rest ran on the runtime's reference kernels.")
    if frame.empty or "backend" not in frame:
        return table
    for backend in sorted(frame["backend"].dropna().unique()):
        info = BACKENDS.get(str(backend))
        rows = frame[frame["backend"] == backend]
        precisions = sorted({"int8" if str(w).endswith("-int8") else "fp32" for w in rows["workload_id"]})
        compile_s = rows["compile_s"].dropna() if "compile_s" in rows else pd.Series(dtype=float)
        delegated = ""
        if "total_ops" in rows and rows["total_ops"].notna().any():
            counted = rows.dropna(subset=["total_ops"]).drop_duplicates("workload_id")
            delegated = f"{int(counted['delegated_ops'].sum())} of {int(counted['total_ops'].sum())}"
        table.rows.append([str(backend), (info.label or info.name) if info else "",
                           FORMATS[info.format].filename.split(".")[-1] if info else "", ", ".join(precisions),
                           f"{compile_s.median():.1f}" if len(compile_s) else "", delegated])
    return table


def excluded_table(bad: pd.DataFrame) -> Table:
    table = Table("excluded", "Excluded measurements (not in any figure or ratio)",
                  ["job", "status", "reason"])
    for _, row in bad.iterrows():
        table.rows.append([str(row.get("job_id") or ""), str(row.get("status") or ""), str(row.get("reason") or "")])
    return table


def provenance_tables(prov: dict[str, list[dict[str, Any]]]) -> list[Table]:
    out = []
    for key, title, columns in (
        ("runs", "Runs", ["run", "status", "started", "finished", "convbench", "suite", "measurements", "host",
                          "command"]),
        ("devices", "Devices", ["device", "transport", "fingerprint", "hardware", "os", "memory", "emulated"]),
        ("runtimes", "Runtimes", ["device", "backend", "runtime", "versions", "delegates"]),
    ):
        out.append(Table(f"provenance_{key}", title, columns,
                         [[str(item.get(c, "")) for c in columns] for item in prov[key]]))
    return out
