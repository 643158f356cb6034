"""The memory-aware theory: roofline times from the cost model's MACs and bytes and a device's ceilings."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import roofline, workloads
from harness.cost import network_cost

PAIR = ("conv-standard-M32-N64-k3-x112-s1", "conv-separable-M32-N64-k3-x112-s1")


@dataclass(frozen=True)
class Ceilings:
    peak_macs_per_s: float
    stream_bytes_per_s: float
    cache_bytes_per_s: float | None = None


def macs(workload_id: str) -> int:
    return network_cost(workloads.get(workload_id)).macs


def test_each_layer_is_bound_by_the_slower_of_compute_and_memory():
    ceilings = Ceilings(peak_macs_per_s=50e9, stream_bytes_per_s=10e9)
    bounds = roofline.layer_bounds(PAIR[1], ceilings)
    assert [b.op for b in bounds] == ["depthwise", "pointwise"]
    depthwise, pointwise = bounds
    # 3x3 depthwise: 9 MACs per output element but ~8 bytes moved per element: memory-bound.
    assert depthwise.bound == "memory" and depthwise.seconds == pytest.approx(depthwise.bytes / 10e9)
    # 1x1 conv with 32 inputs and 64 outputs: 2048 MACs per pixel over 384 bytes: compute-bound here.
    assert pointwise.bound == "compute" and pointwise.seconds == pytest.approx(pointwise.macs / 50e9)
    assert roofline.roofline_seconds(PAIR[1], ceilings) == pytest.approx(depthwise.seconds + pointwise.seconds)


def test_with_unlimited_bandwidth_the_roofline_is_the_op_ratio():
    ceilings = Ceilings(peak_macs_per_s=50e9, stream_bytes_per_s=math.inf)
    for standard in ("conv-standard-M32-N64-k3-x112-s1", "conv-standard-M1024-N1024-k3-x7-s1"):
        separable = workloads.pair_of(standard)[1]
        assert roofline.predicted_speedup(standard, separable, ceilings) == pytest.approx(
            macs(standard) / macs(separable))


def test_slower_memory_lowers_the_predicted_separable_speedup():
    """The mission's point: memory-bound depthwise layers make the separable saving smaller than the MACs say."""
    fast = Ceilings(peak_macs_per_s=50e9, stream_bytes_per_s=40e9)
    slow = Ceilings(peak_macs_per_s=50e9, stream_bytes_per_s=2e9)
    op_ratio = macs(PAIR[0]) / macs(PAIR[1])
    assert roofline.predicted_speedup(*PAIR, slow) < roofline.predicted_speedup(*PAIR, fast) <= op_ratio
    assert roofline.memory_bound_share(PAIR[1], slow) > roofline.memory_bound_share(PAIR[1], fast)


def test_a_layer_that_fits_in_the_cache_gets_the_cache_bandwidth():
    ceilings = Ceilings(peak_macs_per_s=1e15, stream_bytes_per_s=5e9, cache_bytes_per_s=50e9)
    (depthwise, _pointwise) = roofline.layer_bounds(PAIR[1], ceilings, cache_bytes=64 << 20)
    assert depthwise.resident and depthwise.seconds == pytest.approx(depthwise.bytes / 50e9)
    (depthwise, _pointwise) = roofline.layer_bounds(PAIR[1], ceilings, cache_bytes=1 << 10)
    assert not depthwise.resident and depthwise.seconds == pytest.approx(depthwise.bytes / 5e9)


def test_theory_error_is_symmetric_on_a_ratio_scale():
    assert roofline.theory_error(2.0, 1.0) == pytest.approx(roofline.theory_error(0.5, 1.0)) == pytest.approx(
        math.log(2))
    assert roofline.error_percent(math.log(2)) == pytest.approx(100.0)
    assert math.isnan(roofline.theory_error(0.0, 1.0))


# -- the theories against measurements (hand-made run tests/data/runs/...-aaaaaa, known answers) ----------

def stored_ceilings(tmp_path, peak=20e9, stream=5e9, cache=None, llc=None):
    """A ceiling for the hand-made run's local/onnxruntime/t1, stored as `harness calibrate` stores it."""
    from harness.calibration import Ceiling, load_ceilings, save_ceiling

    save_ceiling(tmp_path, Ceiling(device="local", fingerprint_id="b2b4d4658d55", backend="onnxruntime", threads=1,
                                   delegate=None, runtime_version="1.17.0", peak_macs_per_s=peak,
                                   stream_bytes_per_s=stream, cache_bytes_per_s=cache, llc_bytes=llc))
    return load_ceilings(tmp_path)


RUN = Path(__file__).parent / "data" / "runs" / "20260101T000000Z-aaaaaa"


def test_theory_comparison_scores_both_theories_against_each_measured_speedup(tmp_path):
    from harness import analysis
    from harness.store import load_frame

    frame = load_frame([RUN])
    ceilings = stored_ceilings(tmp_path)
    theories = analysis.theory_comparison(frame, ceilings)
    # Only local/onnxruntime has a ceiling: its two pairs and v1 vs its twin, nothing of tflite.
    assert set(theories["backend"]) == {"onnxruntime"}
    assert sorted(theories["comparison"]) == ["network", "pair", "pair"]
    pairs = analysis.pair_speedups(frame, bootstrap=0)
    for _, row in theories[theories["comparison"] == "pair"].iterrows():
        pair = pairs[(pairs["backend"] == "onnxruntime") & (pairs["pair_id"] == row["fast_id"])].iloc[0]
        assert row["measured_speedup"] == pytest.approx(pair["measured_speedup"])
        assert row["op_ratio_speedup"] == pytest.approx(pair["theoretical_speedup"])
        expected = roofline.predicted_speedup(row["slow_id"], row["fast_id"], Ceilings(20e9, 5e9))
        assert row["roofline_speedup"] == pytest.approx(expected)
        op_off = abs(math.log(row["op_ratio_speedup"] / row["measured_speedup"]))
        roof_off = abs(math.log(row["roofline_speedup"] / row["measured_speedup"]))
        assert row["closer"] == ("tie" if abs(roof_off - op_off) < 0.005 else
                                 "roofline" if roof_off < op_off else "op ratio")
        assert row["op_ratio_error_pct"] == pytest.approx((math.exp(op_off) - 1) * 100)
    assert analysis.theory_comparison(frame, {}).empty  # no calibration: no roofline claims


def test_workloads_are_placed_against_the_roof_and_the_report_shows_both_theories(tmp_path):
    from harness import analysis
    from harness.report import build_report
    from harness.store import load_frame

    frame = load_frame([RUN])
    ceilings = stored_ceilings(tmp_path, peak=20e9, stream=5e9)
    placed = analysis.roofline_positions(analysis.workload_summary(frame), ceilings)
    onnx = placed[placed["backend"] == "onnxruntime"]
    for _, row in onnx.iterrows():
        roof = min(20e9, row["intensity"] * 5e9) / 1e9
        assert row["attainable_gmacs_per_s"] == pytest.approx(roof)
        assert row["pct_of_attainable"] == pytest.approx(row["gmacs_per_s"] / roof)
        assert row["bound"] == ("compute" if row["intensity"] * 5e9 >= 20e9 else "memory")
    assert placed[placed["backend"] == "tflite"]["attainable_gmacs_per_s"].isna().all()

    # The report reads the ceilings stored beside the run (results/calibrations/...).
    results = tmp_path / "results"
    shutil.copytree(RUN, results / RUN.name)
    stored_ceilings(results)
    report = build_report([results / RUN.name], tmp_path / "report")
    markdown = report.markdown.read_text()
    assert "Which theory predicts the measured speedup: op ratio or roofline" in markdown
    assert (tmp_path / "report" / "theories.csv").exists()
    assert any(line.startswith("On local/onnxruntime, the roofline (measured ceilings: 20.0 GMAC/s, 5.0 GB/s) "
                               "predicts") for line in report.summary), report.summary
    assert any("share of the roof reached" in line and "bound:" in line for line in report.summary)
