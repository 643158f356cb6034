"""``harness compare``'s statistics: match two runs' measurements, judge each pair, gate on the result.

Measurements are matched by workload, device fingerprint (the device name when a
record has none), backend, threads and delegate, and by runtime version only when asked
(``same_runtime``): by default a runtime upgrade is compared, and flagged in the row.

For each matched pair: ratio of medians current/baseline with a percentile-bootstrap
95% CI (on at most 5000 samples a side, evenly spaced in time: wider, never narrower),
and a two-sided Mann-Whitney U p-value on all raw samples.  A verdict other
than ``unchanged`` needs both: p < alpha *and* a change beyond the threshold.  With
thousands of samples a Mann-Whitney test flags shifts far below anything that matters
(and below the run-to-run drift of a shared machine); the threshold is the guard.

Exit codes (the gate, ``Comparison.exit_code``): 1 when anything regressed, or when the comparison
compared nothing, fewer measurements than it left unmatched, or skipped damaged records (unless
``allow_unmatched``); 0 otherwise (2 for usage errors, from the CLI).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.records import BUSY_CORES

# See tests/test_compare.py for the A/A and injected-slowdown calibration.
DEFAULT_THRESHOLD = 0.05
DEFAULT_ALPHA = 0.01
VERDICTS = ("regressed", "improved", "inconclusive", "unchanged")


@dataclass
class Options:
    threshold: float = DEFAULT_THRESHOLD
    alpha: float = DEFAULT_ALPHA
    same_runtime: bool = False
    bootstrap: int = 1000
    allow_busy: bool = False  # give verdicts even when the machine was busy while measuring
    allow_unmatched: bool = False  # pass the gate although nothing, or less than was left out, was compared

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 1:
            raise UserError(f"--threshold must be a fraction in [0, 1), e.g. 0.05 for 5%, got {self.threshold}")
        if not 0 < self.alpha < 1:
            raise UserError(f"--alpha must be in (0, 1), got {self.alpha}")


@dataclass
class Comparison:
    baseline: dict[str, Any]
    current: dict[str, Any]
    options: Options
    matched_on: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    unmatched: list[dict[str, Any]] = field(default_factory=list)

    def count(self, verdict: str) -> int:
        return sum(1 for r in self.rows if r["verdict"] == verdict)

    def warnings(self) -> list[str]:
        out = [f"the {side} run is {info.get('status')}, not complete: only part of it was measured"
               for side, info in (("baseline", self.baseline), ("current", self.current))
               if info.get("status") not in (None, "complete")]
        busy = [r for r in self.rows if r["verdict"] == "inconclusive" and r.get("note", "").startswith("would be")]
        if busy:
            out.append(f"{len(busy)} change(s) beyond the threshold were measured while other processes used the "
                       "CPU; rerun on a quiet machine (or pass --allow-busy to judge them anyway)")
        return out + ([self.gate_failure()] if self.gate_failure() else [])

    def gate_failure(self) -> str:
        """Why the gate fails although nothing regressed: it compared nothing, or less than it left out."""
        matched, unmatched = len(self.rows), len(self.unmatched)
        damaged = sum(1 for u in self.unmatched if u.get("damaged"))  # added by the CLI from the store
        if damaged and not self.options.allow_unmatched:
            return (f"gate failed: {damaged} damaged record(s) were skipped and could hide a regression "
                    "(pass --allow-unmatched to accept it)")
        if self.options.allow_unmatched or (matched and unmatched <= matched):
            return ""
        what = "nothing was compared" if not matched else f"fewer measurements compared ({matched}) than unmatched"
        return f"gate failed: {what} ({unmatched} unmatched); pass --allow-unmatched to accept it"

    @property
    def exit_code(self) -> int:
        return 1 if self.count("regressed") or self.gate_failure() else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline, "current": self.current,
            "matched_on": self.matched_on,
            "runtime_version": "must match" if self.options.same_runtime else "not required (changes are shown)",
            "threshold": self.options.threshold, "alpha": self.options.alpha,
            "busy_machine": "verdicts given anyway" if self.options.allow_busy else
            f"inconclusive when other processes used more than {BUSY_CORES:g} cores",
            "counts": {**{v: self.count(v) for v in VERDICTS}, "unmatched": len(self.unmatched)},
            "exit_code": self.exit_code, "warnings": self.warnings(),
            "rows": [_jsonable(r) for r in self.rows],
            "unmatched": [_jsonable(r) for r in self.unmatched],
        }


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if isinstance(value, float) and math.isnan(value):
            value = None
        elif hasattr(value, "item"):  # numpy scalars
            value = value.item()
        out[key] = value
    return out


def _device_key(record: dict[str, Any]) -> str:
    fingerprint = (record.get("device_fingerprint") or {}).get("id")
    return fingerprint or f"name:{record.get('device')}"


def _key(record: dict[str, Any], same_runtime: bool) -> tuple:
    key = (record.get("workload_id"), _device_key(record), record.get("backend"), int(record.get("threads") or 0),
           record.get("delegate") or "")
    return (*key, record.get("runtime_version") or "") if same_runtime else key


def _loose_key(record: dict[str, Any]) -> tuple:
    """How an error record (often without fingerprint or provider) is tied to a missing measurement."""
    return (record.get("workload_id"), record.get("device"), record.get("backend"), int(record.get("threads") or 0))


def _label(record: dict[str, Any]) -> str:
    return f"{record.get('device')}/{record.get('backend')}/t{record.get('threads')}"


def _why_invalid(record: dict[str, Any]) -> str:
    text = record.get("error") or "; ".join(record.get("problems") or []) or record.get("status") or "?"
    return f"{record.get('status')}: {text}"


def _index(records: list[dict[str, Any]], same_runtime: bool) -> tuple[dict[tuple, list[dict]], dict[tuple, list]]:
    valid: dict[tuple, list[dict[str, Any]]] = {}
    invalid: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        if record.get("status") == "ok" and (record.get("samples_s") or (record.get("latency") or {}).get("median")):
            valid.setdefault(_key(record, same_runtime), []).append(record)
        else:
            invalid.setdefault(_loose_key(record), []).append(record)
    return valid, invalid


def verdict(ratio: float, p_value: float, options: Options) -> str:
    if math.isnan(p_value):
        return "inconclusive"
    if p_value < options.alpha and ratio > 1 + options.threshold:
        return "regressed"
    if p_value < options.alpha and ratio < 1 - options.threshold:
        return "improved"
    return "unchanged"


def compare_pair(base: list[float], cur: list[float], options: Options) -> dict[str, float]:
    import numpy as np

    from harness.analysis import thin
    from harness.measure.stats import bootstrap_ratio_ci, mann_whitney_p

    ratio = float(np.median(cur) / np.median(base))
    lo = hi = float("nan")
    if options.bootstrap:
        _, lo, hi = bootstrap_ratio_ci(thin(cur), thin(base), n_boot=options.bootstrap)
    p_value = mann_whitney_p(cur, base) if len(base) >= 2 and len(cur) >= 2 else float("nan")
    return {"ratio": ratio, "ci_low": lo, "ci_high": hi, "p_value": p_value}


def _run_summary(path: Path, info: dict[str, Any], why: str = "") -> dict[str, Any]:
    git = info.get("git") or {}
    return {"run_id": info.get("run_id", path.name), "path": str(path), "started_at": info.get("started_at"),
            "status": info.get("status"), "commit": git.get("commit"), "dirty": git.get("dirty"),
            **({"chosen": why} if why else {})}


def compare_runs(baseline: Path, current: Path, options: Options | None = None, baseline_why: str = "") \
        -> Comparison:
    from harness.store import read_run

    options = options or Options()
    if baseline.resolve() == current.resolve():
        raise UserError(f"the baseline and the current run are the same run ({current.name})")
    base_info, base_records = read_run(baseline)
    cur_info, cur_records = read_run(current)
    matched_on = ["workload", "device fingerprint", "backend", "threads", "delegate"]
    if options.same_runtime:
        matched_on.append("runtime version")
    result = Comparison(_run_summary(baseline, base_info, baseline_why), _run_summary(current, cur_info),
                        options, matched_on)
    busy_runs = [f"the {side} run ({why})" for side, why in (("baseline", _busy_run(base_records)),
                                                              ("current", _busy_run(cur_records))) if why]
    base_valid, base_invalid = _index(base_records, options.same_runtime)
    cur_valid, cur_invalid = _index(cur_records, options.same_runtime)
    for key in sorted(set(base_valid) | set(cur_valid), key=lambda k: tuple(map(str, k))):
        base, cur = base_valid.get(key), cur_valid.get(key)
        if base and cur:
            result.rows.append(_row(base, cur, options, busy_runs))
            continue
        present, side, other_invalid = (base, "baseline", cur_invalid) if base else (cur, "current", base_invalid)
        record = present[0]
        other = "current" if side == "baseline" else "baseline"
        reasons = [_why_invalid(r) for r in other_invalid.get(_loose_key(record), [])]
        reason = f"{other} run: " + "; ".join(reasons) if reasons else f"not measured in the {other} run"
        if not reasons:
            others = [r for rs in (cur_valid if side == "baseline" else base_valid).values() for r in rs
                      if _loose_key(r) == _loose_key(record)]
            if others:
                reason = _difference(record, others[0], side, other)
        result.unmatched.append({"workload_id": record.get("workload_id"), "where": _label(record),
                                 "fingerprint": _device_key(record), "only_in": side, "reason": reason})
    # Invalid on both sides: nothing to compare, but say so.
    seen = {(u["workload_id"], u["where"]) for u in result.unmatched}
    for key, records in {**base_invalid, **cur_invalid}.items():
        record = records[0]
        if (record.get("workload_id"), _label(record)) in seen:
            continue
        valid_elsewhere = any(_loose_key(r[0]) == key for r in (*base_valid.values(), *cur_valid.values()))
        if valid_elsewhere:
            continue
        reasons = [f"baseline {_why_invalid(r)}" for r in base_invalid.get(key, [])] + \
                  [f"current {_why_invalid(r)}" for r in cur_invalid.get(key, [])]
        result.unmatched.append({"workload_id": record.get("workload_id"), "where": _label(record),
                                 "fingerprint": _device_key(record), "only_in": "neither (invalid)",
                                 "reason": "; ".join(reasons)})
    return result


def _difference(record: dict[str, Any], counterpart: dict[str, Any], side: str, other: str) -> str:
    """Why two measurements of the same job name were not matched."""
    if _device_key(record) != _device_key(counterpart):
        return (f"device {record.get('device')} is different hardware or OS in the {other} run (fingerprint "
                f"{_device_key(record)} in the {side} run, {_device_key(counterpart)} in the {other})")
    if (record.get("delegate") or "") != (counterpart.get("delegate") or ""):
        return f"delegate {record.get('delegate')} in the {side} run, {counterpart.get('delegate')} in the {other}"
    return (f"runtime version differs ({record.get('runtime_version')} in the {side} run, "
            f"{counterpart.get('runtime_version')} in the {other}); drop --same-runtime to compare them")


def _busy_run(records: list[dict[str, Any]]) -> str:
    """Why a whole run counts as measured on a busy machine ("" if it does not).

    The CPU other processes used is measured per job; a job measured in a quiet moment of
    a busy run is still suspect (shared caches, memory bandwidth, the hypervisor), so a run
    in which most jobs saw a busy machine makes all of its comparisons inconclusive.
    """
    others = [r["other_cpu_cores"] for r in records if r.get("other_cpu_cores") is not None]
    busy = [o for o in others if o > BUSY_CORES]
    if others and len(busy) * 2 >= len(others):
        return f"{len(busy)} of {len(others)} jobs saw other processes use more than {BUSY_CORES:g} cores"
    return ""


def _row(base: list[dict[str, Any]], cur: list[dict[str, Any]], options: Options,
         busy_runs: list[str] | None = None) -> dict[str, Any]:
    base_samples = [s for r in base for s in (r.get("samples_s") or [])]
    cur_samples = [s for r in cur for s in (r.get("samples_s") or [])]
    if base_samples and cur_samples:
        stats = compare_pair(base_samples, cur_samples, options)
        base_median, cur_median = _median(base_samples), _median(cur_samples)
    else:  # summaries only (e.g. a phone's benchmark_model): a ratio, but no test
        base_median, cur_median = (_median([(r.get("latency") or {}).get("median") for r in side])
                                   for side in (base, cur))
        nan = float("nan")
        stats = {"ratio": cur_median / base_median, "ci_low": nan, "ci_high": nan, "p_value": nan}
    first = cur[0]
    result = verdict(stats["ratio"], stats["p_value"], options)
    others = [r.get("other_cpu_cores") for r in (*base, *cur) if r.get("other_cpu_cores") is not None]
    busiest = max(others) if others else None
    note = ""
    if busiest is not None and busiest > BUSY_CORES:
        note = f"machine busy: other processes used {busiest:.2f} cores"
    elif busy_runs:
        note = f"machine busy during {' and '.join(busy_runs)}"
    if note and result in ("regressed", "improved") and not options.allow_busy:
        note = f"would be {result}; {note}"
        result = "inconclusive"
    elif result == "inconclusive":
        note = "no raw samples to test"
    blocks = _block_sizes(base), _block_sizes(cur)
    if blocks[0] != blocks[1]:
        # A sample is the per-call mean of a block: medians over different block sizes are different
        # statistics (between the median and the mean of single calls), so their ratio is no verdict.
        note = (f"block sizes differ ({'/'.join(map(str, blocks[0]))} in the baseline, "
                f"{'/'.join(map(str, blocks[1]))} now): the medians are different statistics; measure both "
                "into one results directory, which fixes each job's block size (results/block_sizes.json)")
        result = "inconclusive"
    base_version, cur_version = base[0].get("runtime_version"), first.get("runtime_version")
    runtime = str(cur_version) if base_version == cur_version else f"{base_version} -> {cur_version}"
    return {
        "workload_id": first.get("workload_id"), "where": _label(first), "device": first.get("device"),
        "fingerprint": _device_key(first), "backend": first.get("backend"), "threads": first.get("threads"),
        "delegate": first.get("delegate"), "runtime": runtime,
        "baseline_median_s": base_median, "current_median_s": cur_median,
        "n_baseline": len(base_samples), "n_current": len(cur_samples),
        "ratio": stats["ratio"], "change": stats["ratio"] - 1, "ci_low": stats["ci_low"],
        "ci_high": stats["ci_high"], "p_value": stats["p_value"],
        "verdict": result, "other_cpu_cores": busiest, "note": note,
    }


def _block_sizes(records: list[dict[str, Any]]) -> list[int]:
    return sorted({int(r.get("block_size") or 1) for r in records})


def _median(values: list[float]) -> float:
    import numpy as np

    return float(np.median(values))
