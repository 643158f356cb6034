"""The regression gate's machinery: invocations in randomized interleaved rounds, the reference
probe, invocation-level statistics, `harness ab` and `harness selftest --gate`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from backends.base import Job
from harness.cli import main
from harness.dispatch import schedule
from harness.measure.invocations import collapse, paired_ratio_ci, ratio_ci

SMALL = "conv-separable-M8-N8-k3-x16-s1"
SMALL_STD = "conv-standard-M8-N8-k3-x16-s1"
FAST = ["--backends", "onnxruntime", "--min-time", "0.05", "--max-time", "0.2", "--warmup-runs", "1"]


def jobs(devices: tuple[str, ...], workloads: tuple[str, ...], repeats: int) -> list[Job]:
    return [Job(f"{d}/onnxruntime/t1/{w}#{r + 1}", w, d, "onnxruntime", 1, repeat=r, repeats=repeats)
            for d in devices for w in workloads for r in range(repeats)]


def test_schedule_runs_rounds_in_order_and_shuffles_within_them():
    planned = jobs(("A", "B"), ("w1", "w2", "w3"), 4)
    batches = schedule(planned, seed=7)
    order = [job for batch in batches for job in batch]
    assert sorted(j.job_id for j in order) == sorted(j.job_id for j in planned)  # each invocation once
    rounds = [job.repeat for job in order]
    assert rounds == sorted(rounds)  # round r finishes before round r+1 starts
    per_round = [[(j.device, j.workload_id) for j in order if j.repeat == r] for r in range(4)]
    assert len({tuple(r) for r in per_round}) > 1  # randomized: not the same order every round
    assert schedule(planned, seed=7) == batches  # reproducible from the seed stored in run.json
    for batch in batches:  # a batch is one (device, backend, threads, delegate): one runner process
        assert len({j.batch_key for j in batch}) == 1
    single = jobs(("A",), ("w1", "w2", "w3"), 1)
    assert [j for b in schedule(single, seed=7) for j in b] == single  # one invocation: declared order


def test_welch_and_paired_intervals_cover_at_their_level():
    """Simulated lognormal invocation medians: the 98% intervals cover the true ratio ~98% of the time."""
    rng = np.random.default_rng(1)
    welch = paired = 0
    trials = 2000
    for _ in range(trials):
        base = np.exp(rng.normal(0, 0.03, 5))
        shared = rng.normal(0, 0.03, 5)  # what a round's interference adds to both candidates
        cur = 1.1 * np.exp(rng.normal(0, 0.03, 5))
        estimate = ratio_ci(base.tolist(), cur.tolist(), 0.98)
        welch += estimate.ci_low <= 1.1 <= estimate.ci_high
        a = np.exp(shared + rng.normal(0, 0.01, 5))
        b = 1.1 * np.exp(shared + rng.normal(0, 0.01, 5))
        estimate = paired_ratio_ci(a.tolist(), b.tolist(), 0.98)
        paired += estimate.ci_low <= 1.1 <= estimate.ci_high
    assert 0.96 <= welch / trials <= 0.995
    assert 0.96 <= paired / trials <= 0.995
    one = ratio_ci([1.0], [1.1, 1.2])
    assert one.ratio == pytest.approx(math.sqrt(1.1 * 1.2)) and not one.estimable


@pytest.mark.slow
def test_repeats_measure_every_job_in_fresh_invocations_with_one_block_size(tmp_path):
    results = tmp_path / "results"
    run = CliRunner().invoke(main, ["run", "--workloads", f"{SMALL},{SMALL_STD}", *FAST, "--repeats", "3",
                                    "--out", str(results)])
    assert run.exit_code == 0, run.output
    assert "2 jobs x 3 invocations" in run.output
    [path] = [p for p in results.iterdir() if p.is_dir()]
    info = json.loads((path / "run.json").read_text())
    assert info["repeats"] == 3 and isinstance(info["order_seed"], int)
    records = [json.loads(line) for line in (path / "measurements.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["status"] == "ok" for r in records)
    assert [r["repeat"] for r in records] == [0, 0, 1, 1, 2, 2]  # interleaved rounds
    for workload in (SMALL, SMALL_STD):
        mine = [r for r in records if r["workload_id"] == workload]
        assert {r["repeats"] for r in mine} == {3}
        assert len({r["block_size"] for r in mine}) == 1  # later invocations reuse the first's block size
        assert [r["block_size_source"] for r in mine][1:] == ["fixed by the plan"] * 2
        probes = [r["reference_probe"] for r in mine]
        assert all(p["median_s"] > 0 and p["identity"].startswith("numpy sgemm") for p in probes)
        assert not any("op_profile" in r for r in mine)  # the per-op profiler runs only when asked for
    # analysis sees one row per job, summarising its three invocations
    from harness.store import load_frame

    frame = collapse(load_frame([path]))
    assert len(frame) == 2 and set(frame["invocations"]) == {3}
    row = frame[frame["workload_id"] == SMALL].iloc[0]
    assert row["latency_median"] == pytest.approx(float(np.median(row["invocation_medians"])))
    assert row["latency_ci_low"] <= row["latency_median"] <= row["latency_ci_high"] or \
        row["invocation_spread"] > 0.02  # the interval is of the geometric mean
    from harness.export import to_pytest_benchmark

    names = [b["name"] for b in to_pytest_benchmark(path)[0]["benchmarks"]]
    assert len(names) == len(set(names)) == 6  # one benchmark per invocation, each named apart


@pytest.mark.slow
def test_ab_interleaves_two_pythons_in_one_run_and_pairs_them_by_round(tmp_path):
    results = tmp_path / "results"
    result = CliRunner().invoke(main, ["ab", "local", f"python={sys.executable}", "--workloads", SMALL, *FAST,
                                       "--repeats", "4", "--out", str(results), "--json"])
    assert result.exit_code in (0, 1), result.output
    data = json.loads(result.output[result.output.index("{\n"):])
    [row] = data["rows"]
    assert row["n_baseline"] == row["n_current"] == 4 and row["workload_id"] == SMALL
    assert row["ci_low"] <= row["ratio"] <= row["ci_high"]
    assert row["verdict"] != "regressed" and data["exit_code"] == 0  # the same interpreter: an A/A
    [path] = [p for p in results.iterdir() if p.is_dir()]
    records = [json.loads(line) for line in (path / "measurements.jsonl").read_text().splitlines()]
    devices_by_round = [[r["device"] for r in records if r["repeat"] == k] for k in range(4)]
    assert all(sorted(d) == ["A", "B"] for d in devices_by_round)  # each round measures both, in turn
    other = CliRunner().invoke(main, ["ab", "local", "python=/no/such/python", "--workloads", SMALL])
    assert other.exit_code == 2 and "does not exist" in other.output
    too_few = CliRunner().invoke(main, ["ab", "local", f"python={sys.executable}", "--repeats", "1"])
    assert too_few.exit_code == 2 and "at least 2 rounds" in too_few.output


def test_minimum_detectable_slowdown_follows_the_spread():
    from harness.selftest_gate import minimum_detectable

    quiet = minimum_detectable([0.005] * 10, 5, 0.05, 0.01)
    noisy = minimum_detectable([0.03] * 10, 5, 0.05, 0.01)
    assert 0.05 < quiet < 0.06  # the threshold dominates on a quiet machine
    assert noisy > 0.08 and noisy > quiet
    assert minimum_detectable([0.03] * 10, 10, 0.05, 0.01) < noisy  # more invocations, finer detection
    assert math.isnan(minimum_detectable([], 5, 0.05, 0.01))


@pytest.mark.slow
def test_selftest_gate_runs_real_a_a_and_slowed_runs(tmp_path):
    report = tmp_path / "gate.json"
    result = CliRunner().invoke(main, ["selftest", "--gate", "--gate-comparisons", "4", "--gate-slowdown-runs",
                                       "1", "--gate-repeats", "2", "--json", str(report),
                                       "--gate-results", str(tmp_path / "runs")])
    assert "A/A: 4 comparisons" in result.output, result.output
    assert "slowdown 2%: detected" in result.output and "smallest slowdown detected with 90% power" in result.output
    data = json.loads(report.read_text())
    assert len(data["aa"]) == 4 and len(data["slowed"]) == 4
    assert {r["slowdown"] for r in data["slowed"]} == {0.02}
    assert 0.0 < data["summary"]["invocation_spread_median"] < 0.5
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert len(runs) == 3  # A, S, A
    policies = [json.loads((p / "run.json").read_text())["policy"]["slowdown_fraction"] for p in runs]
    assert sorted(policies) == [0.0, 0.0, 0.02]
    assert result.exit_code in (0, 1)  # 4 comparisons cannot meet the goals' sample sizes; the mechanics can


def test_runner_probe_times_the_fixed_kernel():
    from backends.runner.probe import PROBE_KERNEL, run_probe

    probe = run_probe(0.05)
    assert probe["kernel"] == PROBE_KERNEL and probe["rounds"] >= 5
    assert probe["median_s"] == pytest.approx(probe["matmul_median_s"] + probe["copy_median_s"], rel=0.5)
    assert Path(sys.executable).exists()
