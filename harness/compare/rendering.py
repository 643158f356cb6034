"""A comparison as text: terminal table cells, Markdown (a CI comment) and JSON."""

from __future__ import annotations

import json
import math
from typing import Any

from harness.compare.verdicts import VERDICTS, Comparison


def _pct(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * 100:+.1f}%"


def _p(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return "<1e-4" if value < 1e-4 else f"{value:.4f}"


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def row_cells(row: dict[str, Any]) -> list[str]:
    ci = "" if _nan(row["ci_low"]) else f"[{_pct(row['ci_low'] - 1)}, {_pct(row['ci_high'] - 1)}]"
    change = _pct(row["change"]) + (" (norm.)" if row.get("normalized") else "")
    return [row["workload_id"], row["where"], row["runtime"], f"{row['baseline_median_s'] * 1e3:.4g}",
            f"{row['current_median_s'] * 1e3:.4g}", f"{row['n_baseline']}+{row['n_current']}", change, ci,
            _p(row["p_value"]), row["verdict"], row.get("note") or ""]


COLUMNS = ["workload", "device/backend/threads", "runtime", "baseline ms", "current ms", "invocations", "change",
           "CI", "p (t)", "verdict", "note"]


def headline(result: Comparison) -> str:
    counts = {v: result.count(v) for v in VERDICTS}
    text = (f"{counts['regressed']} regressed, {counts['improved']} improved, {counts['unchanged']} unchanged"
            + (f", {counts['inconclusive']} inconclusive" if counts["inconclusive"] else "")
            + f", {len(result.unmatched)} unmatched")
    return text


def criteria(result: Comparison) -> str:
    options = result.options
    runtime = "runtime version must match" if options.same_runtime else "runtime version not required"
    normalized = {"none": "",
                  "reference": ", divided by the reference probe timed in the same invocation (its compute part)",
                  "auto": ", divided by the reference probe timed in the same invocation (its compute part) where "
                          "both runs carry comparable probes"}[options.normalize]
    return (f"matched on {', '.join(result.matched_on)} ({runtime}); unit: the invocation's median{normalized}; "
            f"change = ratio of geometric means with a {options.level:.0%} t interval (CI); regressed/improved: "
            f"the CI excludes no change and the change is beyond {options.threshold:.0%}; unchanged: the CI lies "
            f"within -/+{options.threshold:.0%}; otherwise inconclusive")


def drift_lines(result: Comparison) -> list[str]:
    """The machines' own change between the runs, from the reference probe (always reported)."""
    lines = []
    for drift in result.drift:
        memory = drift.get("memory")
        speed = "slower" if drift["change"] > 0 else "faster"
        probe = "the reference probe's compute part" if memory else "the reference probe"
        line = (f"machine {drift['device']}: {probe} took "
                f"{_pct(drift['change'])} ({abs(drift['change']):.1%} {speed}{_ci(drift, result)}; "
                f"{drift['n_baseline']}+{drift['n_current']} invocations)")
        if not drift["comparable"]:
            line += "; the probe differs between the runs (numpy/Python/kernel), so this is not the machine alone"
        elif any(row.get("normalized") and row.get("device") == drift["device"] for row in result.rows):
            line += "; the changes above are relative to it"
        else:
            line += "; `--normalize reference` divides it out"
        if memory:
            line += f"; its memory copy took {_pct(memory['change'])}{_ci(memory, result)}, not divided out"
        lines.append(line)
    return lines


def _ci(estimate: dict[str, Any], result: Comparison) -> str:
    if _nan(estimate["ci_low"]):
        return ""
    return f", {result.options.level:.0%} CI {_pct(estimate['ci_low'] - 1)} .. {_pct(estimate['ci_high'] - 1)}"


def row_order(row: dict[str, Any]) -> tuple:
    """Regressions first, then improvements, inconclusive, unchanged; the largest changes first."""
    return (VERDICTS.index(row["verdict"]), -abs(row["change"]), row["workload_id"], row["where"])


def markdown(result: Comparison) -> str:
    from harness.report.markdown import table_markdown

    icon = ":x:" if result.exit_code else ":white_check_mark:"
    lines = [f"### {icon} convbench: {headline(result)}", "",
             f"Baseline `{result.baseline['run_id']}` ({result.baseline.get('chosen') or 'given'}) vs current "
             f"`{result.current['run_id']}`; {criteria(result)}.", ""]
    lines += [f"> :warning: {warning}" for warning in result.warnings()] + ([""] if result.warnings() else [])
    lines += [f"- {line}" for line in drift_lines(result)] + ([""] if result.drift else [])
    rows = sorted(result.rows, key=row_order)
    changed = [r for r in rows if r["verdict"] != "unchanged"]
    rest = [r for r in rows if r["verdict"] == "unchanged"]
    if changed:
        lines += [table_markdown(COLUMNS, [row_cells(r) for r in changed]), ""]
    if rest:
        lines += [f"<details><summary>{len(rest)} unchanged</summary>", "",
                  table_markdown(COLUMNS, [row_cells(r) for r in rest]), "", "</details>", ""]
    if result.unmatched:
        lines += [f"<details><summary>{len(result.unmatched)} unmatched measurements</summary>", "",
                  table_markdown(["workload", "device/backend/threads", "only in", "reason"],
                                 [[u["workload_id"], u["where"], u["only_in"], u["reason"]]
                                  for u in result.unmatched]), "", "</details>", ""]
    return "\n".join(lines)


def to_json(result: Comparison) -> str:
    return json.dumps(result.to_dict(), indent=2, default=str)
