"""Analysis numbers on a hand-made results set with known answers.

tests/data/runs/20260101T000000Z-aaaaaa (written by make_runs.py): every job has 7
samples ``median * SHAPE`` whose median is exactly the chosen one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import analysis
from harness.store import load_frame

RUN = Path(__file__).parent / "data" / "runs" / "20260101T000000Z-aaaaaa"


def theory(n: int, k: int = 3) -> float:
    """MobileNet's cost ratio 1/N + 1/Dk^2, as a speedup."""
    return 1 / (1 / n + 1 / k**2)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return load_frame([RUN])


@pytest.fixture(scope="module")
def pairs(frame) -> pd.DataFrame:
    return analysis.pair_speedups(frame, bootstrap=500)


def _row(table: pd.DataFrame, **where) -> pd.Series:
    mask = pd.Series(True, index=table.index)
    for key, value in where.items():
        mask &= table[key] == value
    assert mask.sum() == 1, (where, mask.sum())
    return table[mask].iloc[0]


def test_pair_speedups_theoretical_measured_efficiency(pairs):
    # onnxruntime: N64 4.0/1.0 ms, N32 6.0/1.0 ms; tflite: N32 2.0/0.5 ms (its N64 separable is invalid).
    assert len(pairs) == 3
    n64 = _row(pairs, backend="onnxruntime", n=64)
    assert n64["theoretical_speedup"] == pytest.approx(theory(64), rel=1e-12)
    assert n64["measured_speedup"] == pytest.approx(4.0, rel=1e-12)
    assert n64["efficiency"] == pytest.approx(4.0 / theory(64), rel=1e-12)
    assert (n64["m"], n64["k"], n64["x"], n64["stride"]) == (32, 3, 28, 1)
    n32 = _row(pairs, backend="onnxruntime", n=32)
    assert n32["measured_speedup"] == pytest.approx(6.0) and n32["efficiency"] == pytest.approx(6.0 / theory(32))
    tfl = _row(pairs, backend="tflite", n=32)
    assert tfl["measured_speedup"] == pytest.approx(4.0) and tfl["standard_median_s"] == pytest.approx(0.002)
    assert not ((pairs["backend"] == "tflite") & (pairs["n"] == 64)).any()  # invalid separable: no pair


def test_pair_speedup_bootstrap_interval(pairs):
    # Both sides are median * SHAPE, so every bootstrap ratio is (a/b) * SHAPE[i]/SHAPE[j]:
    # the interval contains the point and stays within the extreme ratios 0.97/1.05 .. 1.05/0.97.
    for _, row in pairs.iterrows():
        point = row["measured_speedup"]
        assert row["speedup_ci_low"] <= point <= row["speedup_ci_high"]
        assert row["speedup_ci_low"] >= point * 0.97 / 1.05 - 1e-12
        assert row["speedup_ci_high"] <= point * 1.05 / 0.97 + 1e-12
        assert row["efficiency_ci_low"] == pytest.approx(row["speedup_ci_low"] / row["theoretical_speedup"])
    again = analysis.pair_speedups(load_frame([RUN]), bootstrap=500)
    assert list(again["speedup_ci_low"]) == list(pairs["speedup_ci_low"])  # deterministic
    assert analysis.pair_speedups(load_frame([RUN]), bootstrap=0)["speedup_ci_low"].isna().all()


def test_efficiency_summary_names_lowest_pair(pairs):
    summary = analysis.efficiency_summary(pairs)
    ort = _row(summary, backend="onnxruntime")
    assert ort["pairs"] == 2
    assert ort["geomean_efficiency"] == pytest.approx(((4 / theory(64)) * (6 / theory(32))) ** 0.5)
    assert ort["lowest_efficiency"] == pytest.approx(4 / theory(64))
    assert ort["highest_efficiency"] == pytest.approx(6 / theory(32))
    assert (ort["lowest_n"], ort["lowest_x"]) == (64, 28) and (ort["highest_n"], ort["highest_x"]) == (32, 56)
    assert _row(summary, backend="tflite")["pairs"] == 1


def test_workload_summary(frame):
    summary = analysis.workload_summary(frame)
    assert len(summary) == 12  # 14 records, 2 invalid
    std = _row(summary, backend="onnxruntime", workload_id="conv-standard-M32-N64-k3-x28-s1")
    assert std["latency_median"] == pytest.approx(0.004)
    assert std["gmacs_per_s"] == pytest.approx(14_450_688 / 0.004 / 1e9)
    assert std["intensity"] == pytest.approx(14_450_688 / 375_296)
    assert std["memory_peak_rss_bytes"] == 200_000_000 and std["output_check_status"] == "match"
    v1 = _row(summary, backend="onnxruntime", workload_id="mobilenet_v1-0.25-128")
    assert v1["energy_j"] == pytest.approx(0.004) and v1["energy_sensor"] == "rapl:package-0"
    assert summary["energy_j"].notna().sum() == 1  # only where measured


def test_v1_vs_twin_and_network_comparison(frame):
    twins = analysis.v1_vs_twin(frame)
    assert len(twins) == 1  # tflite's twin failed to export
    twin = twins.iloc[0]
    assert twin["backend"] == "onnxruntime"
    assert twin["measured_speedup"] == pytest.approx(10.0 / 2.0)
    assert twin["theoretical_speedup"] == pytest.approx(100_231_168 / 13_570_048)
    networks = analysis.network_comparison(frame)
    v2_ort = _row(networks, backend="onnxruntime", workload_id="mobilenet_v2-0.35-96")
    assert v2_ort["vs_fastest_network"] == pytest.approx(1.0)  # 1.5 ms: fastest on onnxruntime
    assert v2_ort["vs_fastest_backend"] == pytest.approx(1.5)  # tflite runs it in 1.0 ms
    v1_tfl = _row(networks, backend="tflite", workload_id="mobilenet_v1-0.25-128")
    assert v1_tfl["vs_fastest_network"] == pytest.approx(2.5) and v1_tfl["vs_fastest_backend"] == pytest.approx(1.25)


def test_invalid_measurements_are_excluded_and_listed(frame):
    bad = analysis.excluded(frame)
    assert sorted(bad["status"]) == ["error", "invalid"]
    reasons = dict(zip(bad["workload_id"], bad["reason"], strict=True))
    assert reasons["conv-separable-M32-N64-k3-x28-s1"] == "output differs from the PyTorch reference"
    assert reasons["mobilenet_v1_conv-0.25-128"] == "litert-torch conversion failed: unsupported op"
    valid = analysis.valid(frame)
    assert (valid["status"] == "ok").all() and len(valid) == 12


def test_many_runs_keep_runs_apart():
    runs = [RUN, RUN.parent / "20260102T000000Z-bbbbbb", RUN.parent / "20260103T000000Z-cccccc"]
    pairs = analysis.pair_speedups(load_frame(runs), bootstrap=0)
    # B and C each hold one complete onnxruntime pair (N64), samples of the same shape on both
    # sides: 4.0 in B, and 4.0 * 1.2 in C, whose standard layer is 20% slower.
    by_run = pairs[pairs["n"] == 64].set_index("run_id")["measured_speedup"]
    assert by_run["20260101T000000Z-aaaaaa"] == pytest.approx(4.0)
    assert by_run["20260102T000000Z-bbbbbb"] == pytest.approx(4.0)
    assert by_run["20260103T000000Z-cccccc"] == pytest.approx(4.8)


def test_thin_keeps_order_and_ends():
    values = list(range(100_000))
    thinned = analysis.thin(values, 1000)
    assert len(thinned) == 1000 and thinned[0] == 0 and thinned[-1] == 99_999 and thinned == sorted(thinned)
    assert analysis.thin([1.0, 2.0], 1000) == [1.0, 2.0]


# ---------------------------------------------------------------- hand-built frames for the report's rules
QUICK_PAIRS = ["M32-N64-k3-x112-s1", "M128-N128-k3-x56-s1", "M512-N512-k3-x14-s1", "M1024-N1024-k3-x7-s1"]


def measured(workload_id: str, median_ms: float, device: str = "local", backend: str = "torch",
             delegate: str | None = None, requested: str | None = None, status: str = "ok") -> dict:
    """One row as ``load_frame`` gives it: the workload's cost columns and a median latency."""
    from harness.catalog import workload_row

    return {**workload_row(workload_id), "run_id": "r", "device": device, "backend": backend, "threads": 1,
            "delegate": requested or delegate, "requested_delegate": requested, "provider": delegate,
            "status": status, "latency_median": median_ms / 1e3, "samples_s": None}


def quick_pairs(backend: str, medians_ms: list[tuple[float, float]], **where) -> list[dict]:
    rows = []
    for pair, (standard, separable) in zip(QUICK_PAIRS, medians_ms, strict=True):
        rows += [measured(f"conv-standard-{pair}", standard, backend=backend, **where),
                 measured(f"conv-separable-{pair}", separable, backend=backend, **where)]
    return rows


def test_efficiency_average_is_geometric_with_its_range():
    # Issue 16: 27% and 286% averaged arithmetically read "157%"; as ratios they average to 88%.
    pairs = pd.DataFrame([
        {"device": "d", "backend": "torch", "threads": 1, "delegate": "", "pair_id": p, "n": n, "x": x,
         "efficiency": eff, "measured_speedup": eff * 8.0, "theoretical_speedup": 8.0, "slow_standard": False}
        for p, n, x, eff in (("a", 64, 112, 0.27), ("b", 1024, 7, 2.86))])
    row = analysis.efficiency_summary(pairs).iloc[0]
    assert row["geomean_efficiency"] == pytest.approx((0.27 * 2.86) ** 0.5) == pytest.approx(0.8788, abs=1e-4)
    assert (row["lowest_efficiency"], row["highest_efficiency"]) == (0.27, 2.86)
    assert (row["lowest_n"], row["highest_n"]) == (64, 1024)
    assert analysis.geometric_mean([0.5, 2.0]) == pytest.approx(1.0)
    assert np.isnan(analysis.geometric_mean([]))


def test_pair_flagged_when_its_standard_conv_runs_far_below_the_backends_typical_rate():
    # torch's M1024 standard conv at 43.5 ms (10.6 GMAC/s) against ~24 GMAC/s for its other standard
    # convs (issue 16); onnxruntime's run evenly; the phone has one standard conv: no "typical" to judge by.
    torch = [(9.5, 4.46), (19.0, 3.76), (18.5, 2.62), (43.5, 1.706)]
    ort = [(6.0, 1.2), (11.8, 1.75), (11.5, 1.45), (11.6, 1.4)]
    phone = [measured(f"conv-standard-{QUICK_PAIRS[0]}", 90.0, device="pixel7", backend="tflite", requested="gpu"),
             measured(f"conv-separable-{QUICK_PAIRS[0]}", 4.0, device="pixel7", backend="tflite", requested="gpu")]
    frame = pd.DataFrame(quick_pairs("torch", torch) + quick_pairs("onnxruntime", ort) + phone)
    pairs = analysis.pair_speedups(frame, bootstrap=0)
    flagged = pairs[pairs["slow_standard"]]
    assert list(zip(flagged["backend"], flagged["n"], strict=True)) == [("torch", 1024)]
    row = flagged.iloc[0]
    assert row["standard_gmacs_per_s"] == pytest.approx(462_422_016 / 0.0435 / 1e9)
    # the median of the other three standard convs' GMAC/s, not counting the slow one itself
    others = [231_211_008 / 0.0095 / 1e9, 462_422_016 / 0.019 / 1e9, 462_422_016 / 0.0185 / 1e9]
    assert row["typical_standard_gmacs_per_s"] == pytest.approx(float(np.median(others)))
    assert row["efficiency"] > 2.8  # what the flag warns about: far above the theory
    assert np.isnan(_row(pairs, device="pixel7")["typical_standard_gmacs_per_s"])

    summary = analysis.efficiency_summary(pairs)
    torch_row = _row(summary, backend="torch")
    assert torch_row["slow_standard_pairs"] == 1
    unflagged = pairs[(pairs["backend"] == "torch") & ~pairs["slow_standard"]]["efficiency"]
    assert torch_row["geomean_efficiency_unflagged"] == pytest.approx(float(np.exp(np.log(unflagged).mean())))
    assert _row(summary, backend="onnxruntime")["slow_standard_pairs"] == 0

    # The rule's edge (SLOW_STANDARD_FRACTION of the typical rate): just above it passes, just below is flagged.
    typical_ms = 462_422_016 / (row["typical_standard_gmacs_per_s"] * 1e9) * 1e3
    for factor, flagged_expected in ((0.99, False), (1.01, True)):
        slower = typical_ms / analysis.SLOW_STANDARD_FRACTION * factor
        edge = analysis.pair_speedups(pd.DataFrame(quick_pairs("torch", [*torch[:3], (slower, 1.706)])), bootstrap=0)
        assert list(edge["slow_standard"]) == [False, False, False, flagged_expected]


def test_delegate_named_when_requested_or_several():
    phone = [measured("mobilenet_v2-1.0-224", 25.0, device="pixel7", backend="tflite", requested="xnnpack",
                      delegate="xnnpack"),
             measured("mobilenet_v2-1.0-224", 30.0, device="pixel7", backend="tflite", requested="gpu",
                      delegate="xnnpack", status="invalid")]
    local = [measured("mobilenet_v2-1.0-224", 12.0, backend="onnxruntime", delegate="CPUExecutionProvider"),
             measured("mobilenet_v2-1.0-224", 20.0, backend="torch", delegate="cpu")]
    frame = pd.DataFrame(phone + local)
    # the gpu row fell back and is excluded: the xnnpack row left still says it is xnnpack
    named = analysis.delegate_backends(frame)
    assert named == {"tflite"}
    valid = analysis.valid(frame)
    labels = sorted(analysis.where_label(row, named) for _, row in valid.iterrows())
    assert labels == ["local/onnxruntime/t1", "local/torch/t1", "pixel7/tflite[xnnpack]/t1"]
    # a backend that ran with two providers names them, without any request
    two = pd.DataFrame(local + [measured("mobilenet_v2-1.0-224", 5.0, backend="torch", delegate="cuda")])
    assert analysis.delegate_backends(two) == {"torch"}
    assert analysis.series_label(two.iloc[2], False, {"torch"}) == "torch[cuda]"
    assert analysis.series_label(two.iloc[2], True, {"torch"}) == "torch[cuda] t1"


def test_int8_speedups_pair_each_int8_workload_with_its_fp32_twin():
    def row(workload_id, kind, backend, median):
        return {"status": "ok", "job_id": f"local/{backend}/t1/{workload_id}", "workload_id": workload_id,
                "kind": kind, "macs": 1e9, "device": "local", "backend": backend, "threads": 1, "delegate": "",
                "latency_median": median}

    frame = pd.DataFrame([
        row("conv-standard-M8-N8-k3-x8-s1", "standard", "onnxruntime", 0.004),
        row("conv-standard-M8-N8-k3-x8-s1-int8", "standard", "onnxruntime", 0.001),
        row("conv-separable-M8-N8-k3-x8-s1", "separable", "onnxruntime", 0.002),
        row("conv-separable-M8-N8-k3-x8-s1-int8", "separable", "onnxruntime", 0.0025),
        row("mobilenet_v2-1.0-224-int8", "network", "onnxruntime", 0.01),  # no fp32 twin measured: left out
        row("conv-standard-M8-N8-k3-x8-s1", "standard", "torch", 0.003),
    ])
    speedups = analysis.int8_speedups(frame)
    assert len(speedups) == 2 and set(speedups["backend"]) == {"onnxruntime"}
    assert _row(speedups, kind="standard")["int8_speedup"] == pytest.approx(4.0)
    assert _row(speedups, kind="separable")["int8_speedup"] == pytest.approx(0.8)  # int8 slower: said so
    by_kind = analysis.int8_by_kind(speedups)
    assert _row(by_kind, kind="standard")["geomean_int8_speedup"] == pytest.approx(4.0)
    assert analysis.int8_speedups(frame[~frame["workload_id"].str.endswith("-int8")]).empty


def test_int8_pairs_are_their_own_precision_in_the_flag_the_summary_and_the_tables():
    """int8 convs run several times faster here (VNNI): judged against them, every fp32 standard conv
    looked "slow" and was flagged, and the pairs table showed two unlabelled rows per pair."""
    from harness.report.tables import efficiency_table, pairs_table

    ort = [(6.0, 1.2), (11.8, 1.75), (11.5, 1.45), (11.6, 1.4)]
    int8 = [(ms / 4, sep / 2) for ms, sep in ort]
    rows = quick_pairs("onnxruntime", ort)
    for pair, (standard, separable) in zip(QUICK_PAIRS, int8, strict=True):
        rows += [measured(f"conv-standard-{pair}-int8", standard, backend="onnxruntime"),
                 measured(f"conv-separable-{pair}-int8", separable, backend="onnxruntime")]
    pairs = analysis.pair_speedups(pd.DataFrame(rows), bootstrap=0)
    assert len(pairs) == 8 and not pairs["slow_standard"].any()
    assert sorted(pairs["precision"].value_counts().items()) == [("fp32", 4), ("int8", 4)]
    fp32_first = _row(pairs, precision="fp32", n=64)
    assert fp32_first["typical_standard_gmacs_per_s"] == pytest.approx(
        float(np.median([462_422_016 / t / 1e6 for t, _ in ort[1:]])))
    summary = analysis.efficiency_summary(pairs)
    assert sorted(summary["precision"]) == ["fp32", "int8"]
    assert _row(summary, precision="int8")["geomean_efficiency"] == pytest.approx(
        _row(summary, precision="fp32")["geomean_efficiency"] / 2)
    labels = [row[0] for row in efficiency_table(summary).rows]
    assert labels == ["local/onnxruntime/t1", "local/onnxruntime/t1 (int8)"]
    assert sum(row[1].endswith("(int8)") for row in pairs_table(pairs).rows) == 4
