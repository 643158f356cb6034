"""``harness compare``'s statistics: match two runs' measurements, judge each pair, gate on the result.

Measurements are matched by workload, device fingerprint (the device name when a
record has none), backend, threads and delegate, and by runtime version only when asked
(``same_runtime``): by default a runtime upgrade is compared, and flagged in the row.

The unit of replication is the invocation (one fresh runner process; ``harness run --repeats``):
each invocation is reduced to its median latency and a pair is judged on those, never on pooled
raw samples, whose thousands of autocorrelated values make any two processes "significantly"
different.  The estimate is the ratio of the geometric means of the invocation medians with a
(1 - 2 alpha) Student-t interval on their logs (Welch), so that

- ``regressed``: the interval lies above 1 (a one-sided test at alpha) *and* the estimate
  exceeds 1 + threshold (a change that matters);
- ``improved``: the mirror image;
- ``unchanged``: the whole interval lies within 1 -/+ threshold (an equivalence test at alpha:
  a change as large as the threshold is ruled out);
- ``inconclusive``: anything else (the interval reaches beyond the threshold without excluding
  "no change"), or too few invocations to estimate.

A phone's invocation is one ``benchmark_model`` process (it prints only summary statistics, so
its printed median is the invocation's value; it times no reference probe, so its rows are
judged on raw medians, with a note, under ``"auto"``).

With ``normalize="reference"`` (and by default, ``"auto"``, whenever both runs carry comparable
probes) each invocation's median is first divided by the reference probe timed in that same
invocation (its compute part, ``records.probe_time``), which removes the machine's own drift in
clock and CPU share; the probe's own noise then lies inside the invocation's value, so the
interval carries it.  That drift is always reported apart (``Comparison.drift``), with the
probe's memory part beside it.

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
from harness.measure.invocations import RatioEstimate, ratio_ci
from harness.records import BUSY_CORES, probe_time

# Calibrated on a 2-core VM by `harness selftest --gate` (README, "Nightly regression gate").
DEFAULT_THRESHOLD = 0.06
DEFAULT_ALPHA = 0.01
VERDICTS = ("regressed", "improved", "inconclusive", "unchanged")
NORMALIZE = ("auto", "reference", "none")
# Below this a benchmark_model median (printed in whole microseconds) moves in steps of more than 1%.
COARSE_MEDIAN_S = 100e-6


@dataclass
class Options:
    threshold: float = DEFAULT_THRESHOLD
    alpha: float = DEFAULT_ALPHA
    same_runtime: bool = False
    allow_unmatched: bool = False  # pass the gate although nothing, or less than was left out, was compared
    # "reference": divide each invocation by the reference probe timed in it (its compute part);
    # "auto": that whenever both runs carry comparable probes; "none": raw latencies.
    normalize: str = "auto"

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 1:
            raise UserError(f"--threshold must be a fraction in [0, 1), e.g. 0.05 for 5%, got {self.threshold}")
        if not 0 < self.alpha < 0.5:
            raise UserError(f"--alpha must be in (0, 0.5), got {self.alpha}")
        if self.normalize not in NORMALIZE:
            raise UserError(f"--normalize must be one of {', '.join(NORMALIZE)}, got {self.normalize!r}")

    @property
    def level(self) -> float:
        """Confidence level of the interval: one-sided tests at alpha read off a (1 - 2 alpha) interval."""
        return 1 - 2 * self.alpha


@dataclass
class Comparison:
    baseline: dict[str, Any]
    current: dict[str, Any]
    options: Options
    matched_on: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    unmatched: list[dict[str, Any]] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)  # the machines' own change (reference probe)

    def count(self, verdict: str) -> int:
        return sum(1 for r in self.rows if r["verdict"] == verdict)

    def warnings(self) -> list[str]:
        out = [f"the {side} run is {info.get('status')}, not complete: only part of it was measured"
               for side, info in (("baseline", self.baseline), ("current", self.current))
               if info.get("status") not in (None, "complete")]
        few = [r for r in self.rows if min(r["n_baseline"], r["n_current"]) < 2]
        if few:
            out.append(f"{len(few)} comparison(s) have a single invocation on a side: no verdict is possible; "
                       "measure both runs with `harness run --repeats 5` (or more)")
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
            "confidence_level": self.options.level, "normalize": self.options.normalize,
            "unit": "invocation (each reduced to its median latency)",
            "drift": [_jsonable(d) for d in self.drift],
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


def judge(estimate: RatioEstimate, options: Options) -> tuple[str, str]:
    """(verdict, why) of one ratio estimate; see the module docstring for the rule."""
    t = options.threshold
    if not estimate.estimable:
        fewest = min(estimate.n_baseline, estimate.n_current)
        return "inconclusive", (f"{estimate.n_baseline} + {estimate.n_current} invocations: a verdict needs at "
                                "least 2 a side (harness run --repeats 5)" if fewest < 2 else "not estimable")
    low, high, ratio = estimate.ci_low, estimate.ci_high, estimate.ratio
    if low > 1 and ratio > 1 + t:
        return "regressed", ""
    if high < 1 and ratio < 1 - t:
        return "improved", ""
    if low >= 1 - t and high <= 1 + t:
        return "unchanged", ""
    return "inconclusive", f"CI reaches beyond -/+{t:.0%}: more --repeats or a quieter machine would decide"


def invocation_values(records: list[dict[str, Any]], normalized: bool = False) -> list[float]:
    """Each invocation's median latency; divided by its own reference probe's time when ``normalized``.

    Each invocation is divided by the probe timed in the same process, not by a smoothed probe
    of its neighbours: the quotient's spread then includes the probe's noise, so the t interval
    over invocations stays honest (a smoothed divisor is shared between invocations, and its
    error between two runs escaped the interval: an A/A comparison on CI came out "+10%,
    regressed" when the probe alone had moved by -9%).
    """
    values = []
    for record in records:
        median = (record.get("latency") or {}).get("median")
        if median is None:
            continue
        probe = probe_time(record) if normalized else 1.0
        if probe:
            values.append(float(median) / probe)
    return values


def _normalisation(base: list[dict[str, Any]], cur: list[dict[str, Any]], options: Options) -> tuple[bool, str]:
    """(normalise this row?, why not when it was asked for)."""
    if options.normalize == "none":
        return False, ""
    missing = [side for side, records in (("baseline", base), ("current", cur))
               if any(probe_time(r) is None for r in records)]
    if missing and all(_probeless_tool(r) for r in (*base, *cur)):
        why = (f"{_probeless_tool(cur[0])} times no reference probe, so the verdict is on raw invocation medians "
               "(the phone's own drift between the runs is not divided out)")
    elif missing:
        why = f"no reference probe in the {' and '.join(missing)} run (runner older than version 3)"
    elif probe_identities(base) != probe_identities(cur):
        why = "the reference probe differs between the runs (another probe kernel, numpy or Python)"
    else:
        return True, ""
    return False, why


def _probeless_tool(record: dict[str, Any]) -> str | None:
    """The measuring tool when it is one that never times the reference probe (a phone's benchmark_model)."""
    return "benchmark_model" if record.get("timer") == "benchmark_model" or record.get("transport") == "adb" \
        else None


def probe_identities(records: list[dict[str, Any]]) -> set[str]:
    return {(r.get("reference_probe") or {}).get("identity") or "" for r in records}


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
    base_valid, base_invalid = _index(base_records, options.same_runtime)
    cur_valid, cur_invalid = _index(cur_records, options.same_runtime)
    for key in sorted(set(base_valid) | set(cur_valid), key=lambda k: tuple(map(str, k))):
        base, cur = base_valid.get(key), cur_valid.get(key)
        if base and cur:
            result.rows.append(_row(base, cur, options))
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
    result.drift = machine_drift(base_records, cur_records, options)
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


def _row(base: list[dict[str, Any]], cur: list[dict[str, Any]], options: Options) -> dict[str, Any]:
    normalized, why_not = _normalisation(base, cur, options)
    estimate = ratio_ci(invocation_values(base, normalized), invocation_values(cur, normalized), options.level)
    result, note = judge(estimate, options)
    if why_not and options.normalize == "reference":  # asked for explicitly: no raw verdict instead
        result, note = "inconclusive", f"cannot normalise: {why_not}"
    elif why_not:
        note = "; ".join(filter(None, [f"not normalised: {why_not}", note]))
    first = cur[0]
    others = [r.get("other_cpu_cores") for r in (*base, *cur) if r.get("other_cpu_cores") is not None]
    busiest = max(others) if others else None
    if busiest is not None and busiest > BUSY_CORES:
        note = "; ".join(filter(None, [note, f"machine busy: other processes used up to {busiest:.2f} cores"]))
    blocks = _block_sizes(base), _block_sizes(cur)
    if blocks[0] != blocks[1]:
        # A sample is the per-call mean of a block: medians over different block sizes are different
        # statistics (between the median and the mean of single calls), so their ratio is no verdict.
        note = (f"block sizes differ ({'/'.join(map(str, blocks[0]))} in the baseline, "
                f"{'/'.join(map(str, blocks[1]))} now): the medians are different statistics; measure both "
                "into one results directory, which fixes each job's block size (results/block_sizes.json)")
        result = "inconclusive"
    fastest = min(median_latency(base), median_latency(cur))
    if _probeless_tool(first) and fastest < COARSE_MEDIAN_S:
        # benchmark_model prints whole microseconds: tiny medians move in steps the threshold cannot see through.
        note = "; ".join(filter(None, [note, f"benchmark_model prints whole microseconds: a {fastest * 1e6:.0f} us "
                                             f"median moves in {1e-6 / fastest:.1%} steps"]))
    means = _statistics(base), _statistics(cur)
    if means[0] != means[1]:
        # benchmark_model builds without percentiles print only the mean, which stands in for the median.
        note = "; ".join(filter(None, [
            f"the baseline's invocations summarise {' and '.join(sorted(means[0]))}, the current's "
            f"{' and '.join(sorted(means[1]))} (a benchmark_model build without percentiles prints only the "
            "mean): different statistics, no verdict", *[n for n in note.split("; ") if "whole microseconds" in n]]))
        result = "inconclusive"
    base_version, cur_version = base[0].get("runtime_version"), first.get("runtime_version")
    runtime = str(cur_version) if base_version == cur_version else f"{base_version} -> {cur_version}"
    return {
        "workload_id": first.get("workload_id"), "where": _label(first), "device": first.get("device"),
        "fingerprint": _device_key(first), "backend": first.get("backend"), "threads": first.get("threads"),
        "delegate": first.get("delegate"), "runtime": runtime,
        "baseline_median_s": median_latency(base), "current_median_s": median_latency(cur),
        "n_baseline": estimate.n_baseline, "n_current": estimate.n_current,
        "ratio": estimate.ratio, "change": estimate.ratio - 1, "ci_low": estimate.ci_low,
        "ci_high": estimate.ci_high, "p_value": estimate.p_value, "normalized": normalized,
        "verdict": result, "other_cpu_cores": busiest, "note": note,
    }


def machine_drift(base_records: list[dict[str, Any]], cur_records: list[dict[str, Any]],
                  options: Options) -> list[dict[str, Any]]:
    """Per device: how much slower the machine itself was in the current run (its reference probe).

    Every invocation of every job on a device timed the probe; the ratio compares all of them,
    the interval treats each invocation's probe as one replicate.  ``ratio`` is the part rows are
    divided by (``probe_time``); ``memory`` is the runner probe's copy, reported beside it.
    """
    out = []
    devices = sorted({_device_key(r) for r in cur_records} & {_device_key(r) for r in base_records})
    for key in devices:
        sides = [[r for r in records if _device_key(r) == key and probe_time(r) is not None]
                 for records in (base_records, cur_records)]
        if not sides[0] or not sides[1]:
            continue
        identities = {r["reference_probe"].get("identity") for side in sides for r in side}
        estimate = ratio_ci([probe_time(r) for r in sides[0]], [probe_time(r) for r in sides[1]], options.level)
        copies = [[r["reference_probe"].get("copy_median_s") for r in side] for side in sides]
        memory = ratio_ci(*copies, options.level) if all(all(c) for c in copies) else None
        name = next(r.get("device") for r in cur_records if _device_key(r) == key)
        out.append({"device": name, "fingerprint": key, "ratio": estimate.ratio, "change": estimate.ratio - 1,
                    "ci_low": estimate.ci_low, "ci_high": estimate.ci_high, "n_baseline": estimate.n_baseline,
                    "n_current": estimate.n_current, "comparable": len(identities) == 1,
                    "probe": sorted(filter(None, identities)),
                    "memory": None if memory is None else {"change": memory.ratio - 1, "ci_low": memory.ci_low,
                                                           "ci_high": memory.ci_high}})
    return out


def _statistics(records: list[dict[str, Any]]) -> set[str]:
    return {"means" if (r.get("latency") or {}).get("median_is_mean") else "medians" for r in records}


def _block_sizes(records: list[dict[str, Any]]) -> list[int]:
    return sorted({int(r.get("block_size") or 1) for r in records})


def median_latency(records: list[dict[str, Any]]) -> float:
    """The median of the records' (invocations') median latencies, raw; NaN when none has one."""
    import numpy as np

    values = [m for m in ((r.get("latency") or {}).get("median") for r in records) if m is not None]
    return float(np.median(values)) if values else math.nan
