"""`harness compare`, baselines and `harness history`.

Exact verdicts on the hand-made runs B (baseline) and C (current) of tests/data/runs
(see make_runs.py), then calibration with the real runner: two runs of the same
configuration (A/A) must not regress, a run with an injected slowdown (the runner
busy-waits a fixed fraction of every timed iteration) must.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness import compare as cmp
from harness.cli import main
from harness.errors import UserError

DATA = Path(__file__).parent / "data" / "runs"
A, B, C = (DATA / name for name in ("20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb",
                                     "20260103T000000Z-cccccc"))


def invoke(*args: str, results: Path | None = None):
    env = {"CONVBENCH_RESULTS": str(results)} if results else {}
    return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "results"
    root.mkdir()
    for run in (A, B, C):
        shutil.copytree(run, root / run.name)
    return root


def rows_by_workload(result: cmp.Comparison, threads: int = 1) -> dict[str, dict]:
    return {r["workload_id"]: r for r in result.rows if r["threads"] == threads}


def test_verdicts_on_hand_made_runs():
    result = cmp.compare_runs(B, C)
    rows = rows_by_workload(result)
    assert rows["conv-standard-M32-N64-k3-x28-s1"]["ratio"] == pytest.approx(1.20)
    assert rows["conv-standard-M32-N64-k3-x28-s1"]["verdict"] == "regressed"
    assert rows["mobilenet_v1-0.25-128"]["ratio"] == pytest.approx(0.80)
    assert rows["mobilenet_v1-0.25-128"]["verdict"] == "improved"
    same = rows["conv-separable-M32-N64-k3-x28-s1"]
    assert same["ratio"] == 1.0 and same["p_value"] == pytest.approx(1.0) and same["verdict"] == "unchanged"
    # +3%: highly significant with 200 samples a side, but under the 5% threshold
    small = rows["mobilenet_v2-0.35-96"]
    assert small["ratio"] == pytest.approx(1.03) and small["p_value"] < 1e-10 and small["verdict"] == "unchanged"
    # +10% on 7 widely spread samples: above the threshold, but not significant
    noisy = rows["mobilenet_v1_conv-0.25-128"]
    assert noisy["ratio"] == pytest.approx(1.10) and noisy["p_value"] > 0.5 and noisy["verdict"] == "unchanged"
    for row in result.rows:
        assert row["ci_low"] <= row["ratio"] <= row["ci_high"]
    assert result.exit_code == 1
    # A lower threshold turns the significant +3% into a regression; the noisy +10% stays unchanged.
    strict = rows_by_workload(cmp.compare_runs(B, C, cmp.Options(threshold=0.02)))
    assert strict["mobilenet_v2-0.35-96"]["verdict"] == "regressed"
    assert strict["mobilenet_v1_conv-0.25-128"]["verdict"] == "unchanged"


def test_unmatched_measurements_are_listed_with_reasons():
    unmatched = {(u["workload_id"], u["where"]): u for u in cmp.compare_runs(B, C).unmatched}
    assert set(unmatched) == {("conv-standard-M32-N32-k3-x56-s1", "local/onnxruntime/t1"),
                              ("conv-separable-M32-N32-k3-x56-s1", "local/onnxruntime/t1"),
                              ("conv-standard-M32-N64-k3-x28-s1", "local/onnxruntime/t2")}
    crashed = unmatched[("conv-standard-M32-N32-k3-x56-s1", "local/onnxruntime/t1")]
    assert crashed["only_in"] == "baseline"
    assert crashed["reason"] == "current run: error: runner crashed while running this job"
    assert unmatched[("conv-separable-M32-N32-k3-x56-s1", "local/onnxruntime/t1")]["only_in"] == "current"


def test_runtime_version_matching(tmp_path):
    upgraded = tmp_path / C.name
    shutil.copytree(C, upgraded)
    lines = [json.loads(line) for line in (upgraded / "measurements.jsonl").read_text().splitlines()]
    for record in lines:
        record["runtime_version"] = "1.21.0"
    (upgraded / "measurements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    across = cmp.compare_runs(B, upgraded)
    assert "runtime version" not in across.matched_on and len(across.rows) == 5
    assert {r["runtime"] for r in across.rows} == {"1.20.0 -> 1.21.0"}
    same = cmp.compare_runs(B, upgraded, cmp.Options(same_runtime=True))
    assert "runtime version" in same.matched_on and same.rows == []
    reasons = [u["reason"] for u in same.unmatched if u["only_in"] == "baseline"]
    assert any(r.startswith("runtime version differs (1.20.0 in the baseline run, 1.21.0 in the current)")
               for r in reasons)


def test_other_hardware_is_not_matched(tmp_path):
    moved = tmp_path / C.name
    shutil.copytree(C, moved)
    records = [json.loads(line) for line in (moved / "measurements.jsonl").read_text().splitlines()]
    for record in records:
        if record.get("device_fingerprint"):
            record["device_fingerprint"]["id"] = "0ther0ther00"
    (moved / "measurements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = cmp.compare_runs(B, moved)
    assert result.rows == [] and result.exit_code == 1  # nothing compared: the gate does not pass (issue 11)
    reasons = {u["reason"] for u in result.unmatched if u["only_in"] == "baseline"}
    assert "device local is different hardware or OS in the current run (fingerprint b2b4d4658d55 in the " \
           "baseline run, 0ther0ther00 in the current)" in reasons


def test_cli_exit_codes_json_and_markdown(results):
    table = invoke("compare", B.name, C.name, results=results)
    assert table.exit_code == 1, table.output
    assert "regressed" in table.output and "1 regressed, 1 improved, 3 unchanged, 3 unmatched" in table.output
    as_json = invoke("compare", B.name, C.name, "--json", results=results)
    data = json.loads(as_json.output)
    assert as_json.exit_code == 1 and data["exit_code"] == 1
    assert data["counts"] == {"regressed": 1, "improved": 1, "unchanged": 3, "inconclusive": 0, "unmatched": 3}
    assert data["runtime_version"].startswith("not required")
    assert "device fingerprint" in data["matched_on"] and "threads" in data["matched_on"]
    as_markdown = invoke("compare", B.name, C.name, "--markdown", results=results)
    assert as_markdown.output.startswith("### :x: convbench: 1 regressed, 1 improved")
    assert "| conv-standard-M32-N64-k3-x28-s1 | local/onnxruntime/t1 |" in as_markdown.output
    relaxed = invoke("compare", B.name, C.name, "--threshold", "25%", results=results)
    assert relaxed.exit_code == 0, relaxed.output
    improved_only = invoke("compare", C.name, B.name, "--threshold", "0.19", "--json", results=results)
    assert json.loads(improved_only.output)["counts"]["regressed"] == 1  # v1: 1.6 -> 2.0 ms is +25%


@pytest.mark.parametrize("args, message", [
    (["compare", "a", "b", "c"], "at most two runs"),
    (["compare", "--json", "--markdown"], "exclude each other"),
    (["compare", "--threshold", "1.5"], "below 100%"),
    (["compare", "--threshold", "five"], "not a fraction"),
    (["compare", "nosuchrun"], "no run 'nosuchrun'"),
    (["compare", "20260102T000000Z-bbbbbb", "20260102T000000Z-bbbbbb"], "same run"),
])
def test_cli_usage_errors_exit_2(results, args, message):
    result = invoke(*args, results=results)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_baselines_auto_and_stored(results):
    # auto: the newest earlier complete run with the same suite and devices (A has another suite)
    assert cmp.auto_baseline(results / C.name, results) == results / B.name
    with pytest.raises(UserError, match="no earlier complete run"):
        cmp.auto_baseline(results / B.name, results)
    default = json.loads(invoke("compare", "--json", results=results).output)  # latest = C, nothing stored
    assert default["baseline"]["run_id"] == B.name and default["baseline"]["chosen"].startswith("auto")
    assert invoke("baseline", "set", A.name, results=results).exit_code == 0
    assert A.name in invoke("baseline", "show", results=results).output
    stored = json.loads(invoke("compare", "--json", results=results).output)
    assert stored["baseline"]["run_id"] == A.name and "baseline set" in stored["baseline"]["chosen"]
    assert json.loads(invoke("compare", "--baseline", "auto", "--json", results=results).output)[
        "baseline"]["run_id"] == B.name
    # No baseline for B: an error (exit 2), unless the nightly's first run says that is fine.
    missing = invoke("compare", B.name, "--baseline", "auto", results=results)
    assert missing.exit_code == 2 and "no earlier complete run" in missing.output
    first_night = invoke("compare", B.name, "--baseline", "auto", "--allow-missing-baseline", results=results)
    assert first_night.exit_code == 0 and "nothing to gate on" in first_night.output


def test_history_table_json_and_figure(results, tmp_path):
    figure = tmp_path / "trend.png"
    result = invoke("history", "--workload", "conv-standard-M32-N64-k3-x28-s1", "--backend", "onnxruntime",
                    "--threads", "1", "--figure", str(figure), "--json", results=results)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [r["run_id"] for r in data["runs"]] == [A.name, B.name, C.name]
    medians = [r["median_s"] for r in data["runs"]]
    assert medians[0] == pytest.approx(0.004) and medians[2] == pytest.approx(medians[1] * 1.2)
    assert data["runs"][2]["change_vs_previous"] == pytest.approx(0.2)
    assert figure.read_bytes()[:4] == b"\x89PNG"
    table = invoke("history", "--workload", "conv-standard-M32-N32-k3-x56-s1", "--no-figure", results=results)
    assert table.exit_code == 0 and "1 invalid measurement(s) not shown" in table.output
    unknown = invoke("history", "--workload", "resnet50", results=results)
    assert unknown.exit_code == 2 and "never measured" in unknown.output


def test_busy_machine_makes_a_verdict_inconclusive(tmp_path):
    busy = tmp_path / C.name
    shutil.copytree(C, busy)
    records = [json.loads(line) for line in (busy / "measurements.jsonl").read_text().splitlines()]
    for record in records:
        record["other_cpu_cores"] = 1.2 if record["workload_id"] == "conv-standard-M32-N64-k3-x28-s1" else 0.01
    (busy / "measurements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    row = rows_by_workload(cmp.compare_runs(B, busy))["conv-standard-M32-N64-k3-x28-s1"]
    assert row["verdict"] == "inconclusive" and row["ratio"] == pytest.approx(1.2)
    assert row["note"] == "would be regressed; machine busy: other processes used 1.20 cores"
    assert cmp.compare_runs(B, busy).exit_code == 0
    forced = rows_by_workload(cmp.compare_runs(B, busy, cmp.Options(allow_busy=True)))
    assert forced["conv-standard-M32-N64-k3-x28-s1"]["verdict"] == "regressed"
    assert forced["mobilenet_v1-0.25-128"]["verdict"] == "improved"  # 0.01 cores: quiet
    # A job measured in a quiet moment of a mostly busy run is suspect too.
    for record in records:
        record["other_cpu_cores"] = 0.1 if record["workload_id"] == "conv-standard-M32-N64-k3-x28-s1" else 0.8
    (busy / "measurements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    row = rows_by_workload(cmp.compare_runs(B, busy))["conv-standard-M32-N64-k3-x28-s1"]
    assert row["verdict"] == "inconclusive"
    assert row["note"] == ("would be regressed; machine busy during the current run (6 of 8 jobs saw other "
                           "processes use more than 0.25 cores)")


# ---------------------------------------------------------------- calibration with the real runner
# Two layers of about 0.3 and 0.08 ms with onnxruntime, 0.25 s each, measured as four short
# real runs back to back: A1, A2, S (the runner busy-waits SLOWDOWN of every timed
# iteration) and A3.
#
# A/A (A1 vs A2) is the gate exactly as shipped: never a regression.  On a quiet machine
# every verdict must be "unchanged"; on a busy one (the runner measures the CPU other
# processes use) "inconclusive" is the right answer too.
#
# The slowdown must be flagged by the statistics (A2 vs S).  A shared or virtual machine
# can change speed by tens of percent from one second to the next without any process
# to blame (the hypervisor), so a try counts only when A1, A2 and A3 (which bracket S)
# agree pairwise and S agrees with a repeat S', all within STABLE; without such a quadruple in ATTEMPTS tries both tests
# skip with the measured drifts (machine noise is not a missing component).  How small
# a slowdown is caught is measured separately (see the
# issue-5 notes); this test proves the mechanism end to end.
CALIBRATION_WORKLOADS = ["conv-standard-M32-N64-k3-x28-s1", "conv-separable-M32-N64-k3-x28-s1"]
SLOWDOWN = 0.50
STABLE = 0.05
ATTEMPTS = 8


def measure(results_dir: Path, slowdown: float) -> Path:
    from backends.base import TimingPolicy
    from harness import plan
    from harness.devices import local_device
    from harness.registry import BACKENDS
    from harness.run import execute

    if BACKENDS["onnxruntime"].missing_modules(runs_on_host=True):
        pytest.skip("onnxruntime is not installed (pip install 'convbench[onnx]')")
    device = local_device()
    jobs = plan.make_jobs([device], plan.Selection(CALIBRATION_WORKLOADS, ["onnxruntime"], [1]))
    policy = TimingPolicy(warmup_seconds=0.1, min_seconds=0.25, max_seconds=0.25, slowdown_fraction=slowdown)
    outcome = execute(plan.RunRequest([device], jobs, policy, results_dir, CALIBRATION_WORKLOADS))
    assert outcome.status == "complete" and all(r["status"] == "ok" for r in outcome.records), outcome.records
    return outcome.path


def drift(first: Path, last: Path) -> float:
    """Largest relative change of a job's median between two runs of one configuration."""
    from harness.store import read_run

    medians = [{r["workload_id"]: r["latency"]["median"] for r in read_run(run)[1]} for run in (first, last)]
    return max(abs(medians[1][w] / medians[0][w] - 1) for w in medians[0])


def busiest(*runs: Path) -> float:
    from harness.store import read_run

    return max((r.get("other_cpu_cores") or 0.0) for run in runs for r in read_run(run)[1])


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """(results dir, A1, A2, S, A3, drifts of every try) ending with the first stable try.

    Each try runs A1, A2, S, S', A3; S' only checks that S was measured on a steady machine.
    """
    drifts = []
    for _ in range(ATTEMPTS):
        root = tmp_path_factory.mktemp("calibration")
        a1, a2, slowed, slowed_again, a3 = (measure(root, slowdown)
                                            for slowdown in (0.0, 0.0, SLOWDOWN, SLOWDOWN, 0.0))
        # Stable means the three unslowed runs agree pairwise, so A1 vs A2 is a true A/A,
        # and the two slowed runs agree, so S did not land in a burst of hypervisor noise.
        drifts.append(max(drift(a1, a2), drift(a1, a3), drift(a2, a3), drift(slowed, slowed_again)))
        if drifts[-1] <= STABLE:
            break
    return root, a1, a2, slowed, a3, drifts


def require_stable(drifts: list[float]) -> None:
    # Not a missing component but a machine that cannot hold still (hypervisor): neither
    # verdict would mean anything, so the test cannot decide and says so, in CI too.
    if drifts[-1] > STABLE:
        pytest.skip(f"this machine's speed does not hold still: identical runs 3 s apart differed by "
                    f"{', '.join(f'{d:.0%}' for d in drifts)} in {len(drifts)} tries (limit {STABLE:.0%})")


@pytest.mark.slow
def test_a_a_same_configuration_does_not_regress(real_runs):
    from harness.records import BUSY_CORES

    root, first, second, _, _, drifts = real_runs
    require_stable(drifts)
    result = cmp.compare_runs(first, second)
    assert len(result.rows) == 2 and not result.unmatched
    assert all(r["n_baseline"] > 100 and r["n_current"] > 100 for r in result.rows)
    assert result.count("regressed") == 0 and result.exit_code == 0, cmp.markdown(result)
    if busiest(first, second) <= BUSY_CORES:
        assert [r["verdict"] for r in result.rows] == ["unchanged", "unchanged"], cmp.markdown(result)
    else:
        assert all(r["verdict"] == "unchanged" or r["note"].startswith("would be") for r in result.rows)
    gate = invoke("compare", first.name, second.name, results=root)
    assert gate.exit_code == 0, gate.output


@pytest.mark.slow
def test_injected_slowdown_is_flagged(real_runs):
    from harness.records import BUSY_CORES

    root, _, second, slowed, _, drifts = real_runs
    require_stable(drifts)
    # The statistics alone (--allow-busy).
    result = cmp.compare_runs(second, slowed, cmp.Options(allow_busy=True))
    assert [r["verdict"] for r in result.rows] == ["regressed", "regressed"], cmp.markdown(result)
    for row in result.rows:  # the runner's 50% shows up as 50%, give or take the drift
        assert 1 + SLOWDOWN - 0.25 < row["ratio"] < 1 + SLOWDOWN + 0.25, row
        assert row["p_value"] < 1e-6 and row["ci_low"] > 1.0
    # The gate as a nightly runs it: exit 1, unless other processes made the runs unreliable.
    gate = invoke("compare", second.name, slowed.name, "--markdown", results=root)
    if busiest(second, slowed) <= BUSY_CORES:
        assert gate.exit_code == 1 and gate.output.startswith("### :x: convbench: 2 regressed"), gate.output
    else:
        assert gate.exit_code == 0 and "2 inconclusive" in gate.output, gate.output
    assert invoke("compare", second.name, slowed.name, "--allow-busy", results=root).exit_code == 1
    # The other way round it is an improvement, which never fails the gate.
    back = invoke("compare", slowed.name, second.name, "--allow-busy", "--json", results=root)
    assert back.exit_code == 0 and json.loads(back.output)["counts"]["improved"] == 2, back.output
