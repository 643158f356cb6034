"""``harness selftest --gate``: the regression gate calibrated on the machine it runs on.

Real runs, stored and compared exactly as a nightly job does (``harness.run.execute``, then
``compare_runs``), in a sequence ``A S A S A ...``:

- every ``A`` run is an ordinary run of the gate's workloads; consecutive ``A`` runs are A/A
  comparisons (nothing changed, so every "regressed" is a false alarm and every
  "inconclusive" a night the gate could not answer);
- every ``S`` run makes each timed call slower by a fraction (2, 5, 10, 20%, in turn) through
  the runner's ``slowdown_fraction``: real extra work inside the timed call, measured by the same
  clock, never arithmetic on the samples; it is compared with the ``A`` run before it.

The A/A runs are separated by one S run, so they are a few minutes apart: if anything, more
drift than two back-to-back runs.  It prints the false-regression rate, the share of conclusive
verdicts, the detection rate per slowdown, and the smallest slowdown detectable with 90% power
at these settings (empirically, and from the spread of the invocations).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

GATE_WORKLOADS = ("conv-separable-M32-N64-k3-x112-s1", "conv-standard-M32-N64-k3-x112-s1",
                  "conv-separable-M512-N512-k3-x14-s1", "mobilenet_v2-1.0-224")
SLOWDOWNS = (0.02, 0.05, 0.10, 0.20)


@dataclass
class GateSettings:
    backend: str = "onnxruntime"
    workloads: tuple[str, ...] = GATE_WORKLOADS
    repeats: int = 5
    comparisons: int = 100  # A/A comparisons (each run compares every workload)
    slowdown_runs: int = 12  # S runs, cycling through SLOWDOWNS
    min_time: float = 0.5  # `harness run`'s defaults
    max_time: float = 1.0
    threshold: float | None = None  # None: compare's default
    alpha: float | None = None
    normalize: str = "auto"
    load: bool = False  # a second process spinning on one core for the whole calibration


@dataclass
class GateResult:
    settings: dict[str, Any]
    aa: list[dict[str, Any]] = field(default_factory=list)  # one row per A/A comparison of a workload
    slowed: list[dict[str, Any]] = field(default_factory=list)
    spreads: list[float] = field(default_factory=list)  # SD of log invocation medians, per job and run
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        from harness.compare import DEFAULT_ALPHA, DEFAULT_THRESHOLD

        n = len(self.aa)
        false_regressions = sum(1 for r in self.aa if r["verdict"] == "regressed")
        false_changes = sum(1 for r in self.aa if r["verdict"] in ("regressed", "improved"))
        conclusive = sum(1 for r in self.aa if r["verdict"] != "inconclusive")
        detection = {}
        for size in SLOWDOWNS:
            rows = [r for r in self.slowed if r["slowdown"] == size]
            if rows:
                detection[f"{size:.0%}"] = {"comparisons": len(rows),
                                            "detected": sum(1 for r in rows if r["verdict"] == "regressed"),
                                            "rate": sum(1 for r in rows if r["verdict"] == "regressed") / len(rows),
                                            "median_measured_change": statistics.median(r["change"] for r in rows)}
        empirical = next((float(k.rstrip("%")) / 100 for k, v in detection.items() if v["rate"] >= 0.9), None)
        threshold = self.settings.get("threshold") or DEFAULT_THRESHOLD
        alpha = self.settings.get("alpha") or DEFAULT_ALPHA
        return {
            "aa_comparisons": n,
            "false_regressions": false_regressions,
            "false_regression_rate": false_regressions / n if n else math.nan,
            "false_changes": false_changes,
            "conclusive": conclusive,
            "conclusive_rate": conclusive / n if n else math.nan,
            "detection": detection,
            "smallest_detected_90_empirical": empirical,
            "smallest_detected_90_model": minimum_detectable(self.spreads, self.settings["repeats"], threshold,
                                                            alpha),
            "invocation_spread_median": statistics.median(self.spreads) if self.spreads else math.nan,
            "wall_s": self.wall_s,
            "threshold": threshold,
        }


def invocation_spreads(records: list[dict[str, Any]]) -> list[float]:
    """Per workload of one run: the spread of its ok invocations' medians (workloads with one left out)."""
    from harness.measure.invocations import spread

    by_job: dict[str, list[float]] = {}
    for record in records:
        if record.get("status") == "ok":
            by_job.setdefault(record["workload_id"], []).append(record["latency"]["median"])
    return [s for s in (spread(v) for v in by_job.values()) if not math.isnan(s)]


def minimum_detectable(spreads: list[float], repeats: int, threshold: float, alpha: float) -> float:
    """The slowdown detected with 90% power, from the spread of invocation medians (normal model on logs).

    A regression verdict needs the interval's lower end above 1 and the estimate beyond the
    threshold; with SE = s * sqrt(2 / K), that is an estimate above max(threshold,
    t_(1-alpha) * SE), and 90% power puts the true change 1.28 SE above that.
    """
    from scipy import stats

    if not spreads or repeats < 2:
        return math.nan
    spread = statistics.median(spreads)
    se = spread * math.sqrt(2 / repeats)
    t_crit = float(stats.t.ppf(1 - alpha, 2 * repeats - 2))
    return math.exp(max(math.log1p(threshold), t_crit * se) + 1.2816 * se) - 1


@contextlib.contextmanager
def _second_process_loading_one_core(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def _run(results_dir: Path, settings: GateSettings, slowdown: float) -> Path:
    from harness import plan
    from harness.devices import local_device
    from harness.run import execute

    device = local_device()
    jobs = plan.make_jobs([device], plan.Selection(list(settings.workloads), [settings.backend], [1],
                                                   settings.repeats))
    policy = replace(plan.timing_policy(settings.min_time, settings.max_time, 10, 3, 0.01, 0.0),
                     slowdown_fraction=slowdown)
    request = plan.RunRequest([device], jobs, policy, results_dir, list(settings.workloads), None,
                              repeats=settings.repeats)
    outcome = execute(request)
    if outcome.status != "complete" or any(r.get("status") != "ok" for r in outcome.records):
        bad = [r for r in outcome.records if r.get("status") != "ok"]
        raise RuntimeError(f"gate calibration run {outcome.run_id} {outcome.status}: "
                           f"{(bad[0].get('error') or bad[0].get('problems')) if bad else outcome.reason}")
    return outcome.path


def calibrate(settings: GateSettings, results_dir: Path, log: Callable[[str], None]) -> GateResult:
    """Measure the A S A S ... A sequence into ``results_dir``, then judge it (``analyze``)."""
    from harness.artifacts import artifact_for

    for workload_id in settings.workloads:  # export first: the runs measure measuring only
        artifact_for(workload_id, settings.backend)
    aa_runs = math.ceil(settings.comparisons / len(settings.workloads)) + 1
    # A S A S ... A: the S runs sit between A runs until they are used up.
    sequence = []
    for index in range(aa_runs):
        sequence.append(0.0)
        if index < settings.slowdown_runs and index < aa_runs - 1:
            sequence.append(SLOWDOWNS[index % len(SLOWDOWNS)])
    started = time.monotonic()
    with _second_process_loading_one_core(settings.load):
        for number, slowdown in enumerate(sequence, start=1):
            path = _run(results_dir, settings, slowdown)
            log(f"[{number}/{len(sequence)}] {'A' if not slowdown else f'S{slowdown:.0%}'}: {path.name}")
    result = analyze(results_dir, settings, log)
    result.wall_s = time.monotonic() - started
    return result


def analyze(results_dir: Path, settings: GateSettings, log: Callable[[str], None] = lambda line: None) \
        -> GateResult:
    """Judge a calibration's stored runs as a nightly job would: each A run against the A run before it
    (A/A), each S run (``slowdown_fraction`` in its policy) against the A run before it."""
    from harness import compare as cmp
    from harness.store import list_runs, read_run

    options = cmp.Options(threshold=cmp.DEFAULT_THRESHOLD if settings.threshold is None else settings.threshold,
                          alpha=cmp.DEFAULT_ALPHA if settings.alpha is None else settings.alpha,
                          normalize=settings.normalize)
    result = GateResult(settings=dict(vars(settings), workloads=list(settings.workloads)))
    previous_a: Path | None = None
    for path in list_runs(results_dir):
        info, records = read_run(path)
        slowdown = float((info.get("policy") or {}).get("slowdown_fraction") or 0.0)
        result.spreads += invocation_spreads(records)
        if previous_a is not None:
            comparison = cmp.compare_runs(previous_a, path, options)
            target = result.slowed if slowdown else result.aa
            for row in comparison.rows:
                target.append({"run": path.name, "workload_id": row["workload_id"], "slowdown": slowdown,
                               "verdict": row["verdict"], "change": row["change"], "ci_low": row["ci_low"],
                               "ci_high": row["ci_high"], "normalized": row["normalized"]})
            drift = f" (machine {comparison.drift[0]['change']:+.1%})" if comparison.drift else ""
            verdicts = ", ".join(f"{row['verdict']} {row['change']:+.1%}" for row in comparison.rows)
            log(f"{'A' if not slowdown else f'S{slowdown:.0%}'} {path.name} vs A {previous_a.name}{drift}: "
                f"{verdicts}")
        if not slowdown:
            previous_a = path
    return result


def report_lines(summary: dict[str, Any], settings: GateSettings) -> list[str]:
    lines = [
        f"gate calibration: {settings.backend}, {len(settings.workloads)} workloads, --repeats {settings.repeats}, "
        f"min/max time {settings.min_time:g}/{settings.max_time:g} s, compare --threshold "
        f"{summary['threshold']:.0%} --normalize {settings.normalize}"
        f"{', a second process loading one core' if settings.load else ''}; {summary['wall_s'] / 60:.1f} min",
        f"A/A: {summary['aa_comparisons']} comparisons, {summary['false_regressions']} false regressions "
        f"({summary['false_regression_rate']:.1%}; goal <= 1%), {summary['false_changes']} regressed or improved, "
        f"{summary['conclusive']} conclusive ({summary['conclusive_rate']:.0%}; goal >= 80%)",
    ]
    for size, row in summary["detection"].items():
        lines.append(f"slowdown {size}: detected {row['detected']}/{row['comparisons']} ({row['rate']:.0%}), "
                     f"median measured change {row['median_measured_change']:+.1%}")
    empirical = summary["smallest_detected_90_empirical"]
    lines.append(f"smallest slowdown detected with 90% power: "
                 f"{f'{empirical:.0%}' if empirical is not None else f'none of {SLOWDOWNS[-1]:.0%} or less'} "
                 f"(measured); {summary['smallest_detected_90_model']:.1%} from the invocation spread "
                 f"(median SD of log invocation medians {summary['invocation_spread_median']:.2%})")
    return lines
