"""Provenance of the runs and a short generated summary in plain sentences."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from harness.analysis import multi_delegate

NOISY_CI = 0.05  # a 95% CI of the median wider than 5% of it is called noisy


def _label(row: Any, multi_threads: bool, multi_delegate: bool = False) -> str:
    text = f"{row['device']}/{row['backend']}"
    if multi_delegate and isinstance(row.get("delegate"), str) and row.get("delegate"):
        text += f"/{row['delegate']}"
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
    """Why energy was not measured, in one or two short lines."""
    reasons = []
    for record in records:
        energy = record.get("energy") or {}
        reason = energy.get("reason")
        if isinstance(reason, str):
            short = reason.split(";")[0].strip()
            if short not in reasons:
                reasons.append(short)
    return "\n".join(r[:80] for r in reasons[:2])


def summary_lines(tables: dict[str, pd.DataFrame], frame: pd.DataFrame) -> list[str]:
    """A few sentences a person reads first."""
    lines: list[str] = []
    valid = tables["valid"]
    multi_threads = not valid.empty and valid["threads"].nunique() > 1
    multi_runs = not valid.empty and "run_id" in valid and valid["run_id"].nunique() > 1
    delegates = multi_delegate(valid)

    def who(row: Any, with_backend: bool = True) -> str:
        text = _label(row, multi_threads, delegates) if with_backend else str(row["device"])
        if multi_runs and isinstance(row.get("run_id"), str):
            text += f" (run {row['run_id']})"
        return text

    efficiency = tables["efficiency"]
    for _, row in efficiency.iterrows():
        if row["pairs"] == 1:
            lines.append(f"On {who(row)}, the one separable layer measured reaches {row['mean_efficiency']:.0%} of "
                         f"its theoretical speedup (N={row['lowest_n']}, Dx={row['lowest_x']}: "
                         f"{row['mean_measured_speedup']:.2f}x measured vs {row['mean_theoretical_speedup']:.2f}x).")
            continue
        lines.append(f"On {who(row)}, separable layers reach {row['mean_efficiency']:.0%} of the theoretical speedup "
                     f"on average ({row['pairs']} pairs); lowest for N={row['lowest_n']}, Dx={row['lowest_x']} "
                     f"({row['lowest_efficiency']:.0%}), highest for N={row['highest_n']}, Dx={row['highest_x']} "
                     f"({row['highest_efficiency']:.0%}).")
    run_key = ["run_id"] if multi_runs and "run_id" in efficiency else []
    if not efficiency.empty and efficiency["backend"].nunique() > 1:
        for _, group in efficiency.groupby([*run_key, "device"]):
            if group["backend"].nunique() < 2:
                continue
            best = group.loc[group["mean_efficiency"].idxmax()]
            worst = group.loc[group["mean_efficiency"].idxmin()]
            lines.append(f"On {who(best, with_backend=False)}, {best['backend']} comes closest to the theory for "
                         f"separable layers ({best['mean_efficiency']:.0%} on average), {worst['backend']} is "
                         f"furthest ({worst['mean_efficiency']:.0%}).")
    for _, row in tables["v1_vs_twin"].iterrows():
        lines.append(f"On {who(row)}, {row['workload_id']} runs {row['measured_speedup']:.1f}x "
                     f"faster than its standard-conv twin (theory {row['theoretical_speedup']:.1f}x, "
                     f"{row['efficiency']:.0%} of it).")
    networks = tables["networks"]
    if not networks.empty:
        keys = [k for k in [*run_key, "device", "threads", "workload_id"] if k in networks]
        for _, group in networks.groupby(keys):
            if len(group) < 2:
                continue
            ordered = group.sort_values("latency_median")
            first, others = ordered.iloc[0], ordered.iloc[1:]
            rest = ", ".join(f"{r['backend']} {r['latency_median'] * 1e3:.2f} ms" for _, r in others.iterrows())
            lines.append(f"{first['workload_id']} on {who(first, with_backend=False)}: fastest with "
                         f"{first['backend']} at {first['latency_median'] * 1e3:.2f} ms ({rest}).")
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
