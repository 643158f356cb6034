"""Provenance of the runs and a short generated summary in plain sentences."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import pandas as pd

from harness.analysis import (
    SLOW_STANDARD_FRACTION,
    SLOW_STANDARD_REASON,
    backend_label,
    delegate_backends,
    precision_tag,
)

NOISY_CI = 0.05  # a 95% CI of the median wider than 5% of it is called noisy


def _label(row: Any, multi_threads: bool, named_delegates: Collection[str] = ()) -> str:
    text = f"{row['device']}/{backend_label(row, named_delegates)}"
    if multi_threads:
        text += f" with {row['threads']} thread{'s' if int(row['threads']) != 1 else ''}"
    return text


def provenance(runs: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    """Runs (id, status, commit, command, host), devices (fingerprints) and runtime versions."""
    run_rows, devices, runtimes = [], {}, {}
    for info, records in runs:
        git = info.get("git") or {}
        commit = git.get("commit") or "unknown"
        host = info.get("host") or {}
        run_rows.append({
            "run": info.get("run_id", "?"), "status": info.get("status", "?"),
            "started": str(info.get("started_at", ""))[:19].replace("T", " "),
            "finished": str(info.get("finished_at", "") or "")[:19].replace("T", " "),
            "convbench": f"{info.get('convbench_version', '?')} @ {commit[:12]}"
                         + (" (uncommitted changes)" if git.get("dirty") else ""),
            "suite": info.get("suite") or "(workload list)",
            "measurements": ", ".join(f"{n} {s}" for s, n in sorted((info.get("counts") or {}).items())),
            "host": f"{host.get('hostname', '?')}: {host.get('cpu_model', '?')}, {host.get('cores', '?')} cores, "
                    f"{host.get('os', '?')}",
            "command": " ".join(str(part) for part in (info.get("command") or [])),
        })
        for record in records:
            fingerprint = record.get("device_fingerprint") or {}
            name = record.get("device", "?")
            if fingerprint:
                key = (name, fingerprint.get("id"))
                devices.setdefault(key, {
                    "device": name, "transport": record.get("transport") or "",
                    "fingerprint": fingerprint.get("id") or "",
                    "hardware": ", ".join(str(p) for p in (fingerprint.get("board_model") or fingerprint.get(
                        "cpu_model"), fingerprint.get("machine"), f"{fingerprint.get('cores')} cores") if p),
                    "os": f"{fingerprint.get('os', '')} (kernel {fingerprint.get('kernel', '?')})",
                    "memory": f"{fingerprint['memory_bytes'] / 2**30:.1f} GiB"
                              if fingerprint.get("memory_bytes") else "",
                    "emulated": fingerprint.get("emulated") or "no",
                })
            if record.get("backend"):
                key = (name, record["backend"])
                entry = runtimes.setdefault(key, {"device": name, "backend": record["backend"],
                                                  "runtime": record.get("runtime") or "", "versions": set(),
                                                  "delegates": set()})
                if record.get("runtime_version"):
                    entry["versions"].add(str(record["runtime_version"]))
                if record.get("delegate"):
                    entry["delegates"].add(str(record["delegate"]))
    runtime_rows = [dict(r, versions=", ".join(sorted(r["versions"])) or "unknown",
                         delegates=", ".join(sorted(r["delegates"]))) for r in runtimes.values()]
    return {"runs": run_rows, "devices": list(devices.values()), "runtimes": runtime_rows}


def energy_note(records: Iterable[dict[str, Any]]) -> str:
    """Why energy was not measured, one short line per reason, naming the devices it applies to."""
    devices_by_reason: dict[str, list[str]] = {}
    for record in records:
        energy = record.get("energy") or {}
        reason = energy.get("reason")
        if isinstance(reason, str) and energy.get("status") != "ok":
            devices = devices_by_reason.setdefault(reason.split(";")[0].strip(), [])
            if str(record.get("device", "?")) not in devices:
                devices.append(str(record.get("device", "?")))
    return "\n".join(f"{', '.join(devices)}: {reason}" for reason, devices in list(devices_by_reason.items())[:3])


def summary_lines(tables: dict[str, pd.DataFrame], frame: pd.DataFrame) -> list[str]:
    """A few sentences a person reads first."""
    lines: list[str] = []
    valid = tables["valid"]
    multi_threads = not valid.empty and valid["threads"].nunique() > 1
    multi_runs = not valid.empty and "run_id" in valid and valid["run_id"].nunique() > 1
    delegates = tables["delegate_backends"] if "delegate_backends" in tables else delegate_backends(valid)

    def who(row: Any, with_backend: bool = True) -> str:
        text = _label(row, multi_threads, delegates) + precision_tag(row) if with_backend else str(row["device"])
        if multi_runs and isinstance(row.get("run_id"), str):
            text += f" (run {row['run_id']})"
        return text

    efficiency = tables["efficiency"]
    for _, row in efficiency.iterrows():
        if row["pairs"] == 1:
            lines.append(f"On {who(row)}, the one separable layer measured reaches {row['geomean_efficiency']:.0%} "
                         f"of its theoretical speedup (N={row['lowest_n']}, Dx={row['lowest_x']}: "
                         f"{row['geomean_measured_speedup']:.2f}x measured vs "
                         f"{row['geomean_theoretical_speedup']:.2f}x).")
            continue
        lines.append(f"On {who(row)}, separable layers reach {row['geomean_efficiency']:.0%} of the theoretical "
                     f"speedup (geometric mean of {row['pairs']} pairs, range {row['lowest_efficiency']:.0%} to "
                     f"{row['highest_efficiency']:.0%}): lowest for N={row['lowest_n']}, Dx={row['lowest_x']}, "
                     f"highest for N={row['highest_n']}, Dx={row['highest_x']}.")
        lines += _slow_standard_lines(row, tables, who)
    run_key = ["run_id"] if multi_runs and "run_id" in efficiency else []
    if not efficiency.empty:
        series = efficiency.apply(lambda r: backend_label(r, delegates) + precision_tag(r), axis=1)
        for _, group in efficiency.assign(series=series).groupby([*run_key, "device", "threads"]):
            if group["series"].nunique() < 2:
                continue
            best = group.loc[group["geomean_efficiency"].idxmax()]
            worst = group.loc[group["geomean_efficiency"].idxmin()]
            if f"{best['geomean_efficiency']:.0%}" == f"{worst['geomean_efficiency']:.0%}":
                *others, last = sorted(group["series"])
                lines.append(f"On {who(best, with_backend=False)}, {', '.join(others)} and {last} come "
                             f"equally close to the theory for separable layers ({best['geomean_efficiency']:.0%}).")
                continue
            threads = f" with {best['threads']} thread{'s' if int(best['threads']) != 1 else ''}" \
                if multi_threads else ""
            lines.append(f"On {who(best, with_backend=False)}{threads}, {best['series']} comes closest to the theory "
                         f"for separable layers ({best['geomean_efficiency']:.0%}, geometric mean), "
                         f"{worst['series']} is furthest ({worst['geomean_efficiency']:.0%}).")
    for _, row in tables["v1_vs_twin"].iterrows():
        lines.append(f"On {who(row)}, {row['workload_id']} runs {row['measured_speedup']:.1f}x "
                     f"faster than its standard-conv twin (theory {row['theoretical_speedup']:.1f}x, "
                     f"{row['efficiency']:.0%} of it).")
    lines += _int8_lines(tables.get("int8"), who)
    lines += _theory_lines(tables.get("theories"), who)
    lines += _roof_lines(tables["workloads"], who)
    networks = tables["networks"]
    if not networks.empty:
        keys = [k for k in [*run_key, "device", "threads", "workload_id"] if k in networks]
        for _, group in networks.groupby(keys):
            if len(group) < 2:
                continue
            ordered = group.sort_values("latency_median")
            first, others = ordered.iloc[0], ordered.iloc[1:]
            rest = ", ".join(f"{backend_label(r, delegates)} {r['latency_median'] * 1e3:.2f} ms"
                             for _, r in others.iterrows())
            lines.append(f"{first['workload_id']} on {who(first, with_backend=False)}: fastest with "
                         f"{backend_label(first, delegates)} at {first['latency_median'] * 1e3:.2f} ms ({rest}).")
    if not valid.empty and "latency_ci_rel_width" in valid:
        noisy = valid[valid["latency_ci_rel_width"] > NOISY_CI]
        if len(noisy):
            lines.append(f"{len(noisy)} of {len(valid)} measurements are noisy (95% CI of the median wider than "
                         f"{NOISY_CI:.0%} of it, inside an invocation); a longer --max-time or a quieter "
                         "machine narrows them.")
    if not valid.empty and "warnings" in valid:
        busy = [w for w in valid["warnings"] if isinstance(w, list) and any("busy" in str(x) for x in w)]
        if busy:
            lines.append(f"{len(busy)} of {len(valid)} measurements ran while other processes used the CPU; "
                         "their timings are noisier (see each record's other_cpu_cores).")
    if not valid.empty and "device_emulated" in valid:
        emulated = sorted({str(d) for d, e in zip(valid["device"], valid["device_emulated"], strict=True)
                           if isinstance(e, str) and e})
        if emulated:
            lines.append(f"Emulated device(s): {', '.join(emulated)}; their timings do not reflect real hardware.")
    bad = tables["excluded"]
    if not bad.empty:
        counts = bad["status"].value_counts()
        lines.append(f"{len(bad)} measurement(s) excluded from the analysis ("
                     + ", ".join(f"{n} {s}" for s, n in counts.items()) + "); they are listed below.")
    if valid.empty:
        lines.append("No valid measurement: nothing to analyse.")
    return lines


def _int8_lines(speedups: pd.DataFrame | None, who: Any) -> list[str]:
    """Per device and backend: how much int8 gains for each kind of workload (geometric means)."""
    from harness.analysis import int8_by_kind

    if speedups is None or speedups.empty:
        return []
    by_kind = int8_by_kind(speedups)
    keys = [k for k in ["run_id", "device", "backend", "threads", "delegate"] if k in by_kind]
    lines = []
    for _, group in by_kind.groupby(keys, dropna=False, sort=True):
        parts = [f"{r['kind']} {r['geomean_int8_speedup']:.2f}x" + (
            f" ({r['lowest']:.2f}-{r['highest']:.2f}x over {r['workloads']})" if r["workloads"] > 1 else "")
                 for _, r in group.sort_values("geomean_int8_speedup", ascending=False).iterrows()]
        lines.append(f"On {who(group.iloc[0])}, int8 runs faster than fp32 by: {'; '.join(parts)} "
                     "(fp32 / int8 median latency, geometric mean).")
    return lines


def _theory_lines(theories: pd.DataFrame | None, who: Any) -> list[str]:
    """Per device and backend: which theory predicts the measured speedups better, and by how much."""
    if theories is None or theories.empty:
        return []
    lines = []
    # fp32 and int8 apart: each is placed under its own compute roof
    keys = [k for k in ("run_id", "device", "backend", "threads", "delegate", "precision") if k in theories]
    for _, group in theories.groupby(keys, dropna=False):
        first = group.iloc[0]
        closer = int((group["closer"] == "roofline").sum())
        ties = int((group["closer"] == "tie").sum())
        same = (f" and the same as it for {ties} (every layer compute-bound: the roofline is then the op ratio)"
                if ties else "")
        lines.append(f"On {who(first)}, the roofline (measured ceilings: {first['peak_gmacs_per_s']:.1f} GMAC/s, "
                     f"{first['stream_gb_per_s']:.1f} GB/s) predicts {closer} of {len(group)} measured speedups "
                     f"better than the op ratio{same}; median error: op ratio "
                     f"{group['op_ratio_error_pct'].median():.0f}%, "
                     f"roofline {group['roofline_error_pct'].median():.0f}%.")
    return lines


def _roof_lines(workloads: pd.DataFrame, who: Any) -> list[str]:
    """Per device and backend with measured roofs: which workloads are memory- and compute-bound, how close."""
    if workloads.empty or "bound" not in workloads:
        return []
    placed = workloads[workloads["bound"].isin(["memory", "compute"])]
    lines = []
    keys = [k for k in ("run_id", "device", "backend", "threads", "delegate") if k in placed]
    for _, group in placed.groupby(keys, dropna=False):
        parts = []
        for bound in ("memory", "compute"):
            some = group[group["bound"] == bound].sort_values("pct_of_attainable")
            if some.empty:
                continue
            names = ", ".join(f"{r['workload_id']} ({r['pct_of_attainable']:.0%})" for _, r in some.iterrows())
            parts.append(f"{bound}-bound: {names}")
        lines.append(f"On {who(group.iloc[0])}, share of the roof reached, {'; '.join(parts)}.")
    return lines


def _slow_standard_lines(group_row: Any, tables: dict[str, Any], who: Any) -> list[str]:
    """For one efficiency row: a sentence per flagged pair (how slow its standard conv runs), and the
    group's geometric mean without them."""
    pairs = tables["pairs"]
    if not group_row.get("slow_standard_pairs") or pairs.empty or "slow_standard" not in pairs:
        return []
    delegates = tables.get("delegate_backends", ())
    flagged = pairs[pairs["slow_standard"].astype(bool)]
    for key in ["run_id", "device", "backend", "threads", "delegate"]:
        if key in flagged and key in group_row:
            flagged = flagged[flagged[key] == group_row[key]]
    lines = []
    for _, row in flagged.iterrows():
        # The threshold, not the rounded share: 0.499 of the typical rate would print as "0.50x".
        lines.append(f"On {who(row)}, the pair N={row['n']}, Dx={row['x']} ({row['efficiency']:.0%} of the "
                     f"theory) is flagged: its standard conv runs at {row['standard_gmacs_per_s']:.1f} GMAC/s, "
                     f"under {SLOW_STANDARD_FRACTION:.0%} of the {row['typical_standard_gmacs_per_s']:.1f} GMAC/s "
                     f"typical of {backend_label(row, delegates)}'s other standard convs there, so "
                     f"{SLOW_STANDARD_REASON}.")
    if pd.notna(group_row.get("geomean_efficiency_unflagged")):
        lines.append(f"Without the flagged pair{'s' if len(flagged) > 1 else ''}, {who(group_row)} reaches "
                     f"{group_row['geomean_efficiency_unflagged']:.0%} of the theoretical speedup (geometric mean).")
    return lines
