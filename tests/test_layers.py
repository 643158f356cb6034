"""A network's layers as workloads of their own, measured, profiled and set against the network."""

# ruff: noqa: F811 - the adb fixtures are imported here, pytest passes them back as arguments

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness import workloads as registry
from harness.cli import main
from harness.cost import network_cost
from harness.layers import fusion_gap, layer_breakdown, layer_table
from harness.store import load_frame, read_run
from harness.workloads.conv import ConvSpec, WorkloadIdError
from harness.workloads.ir import Conv, Linear, flatten
from harness.workloads.layers import LAYER_TYPES, FcSpec, decompose
from tests.rigs.adb_fixtures import adb_device, adb_device_factory, adb_server  # noqa: F401

V1 = "mobilenet_v1-1.0-224"


def _by_type(refs):
    totals = dict.fromkeys(LAYER_TYPES, 0)
    for ref in refs:
        totals[ref.layer_type] += ref.total_macs
    return totals


def test_v1_decomposes_into_its_distinct_layers():
    refs = decompose(V1)
    measured = [r for r in refs if r.workload_id]
    # conv1, 13 depthwise and 13 pointwise layers (blocks 7-11 are one shape, five times) and the classifier
    assert len(measured) == 1 + 9 + 9 + 1
    assert sum(r.count for r in measured) == 1 + 13 + 13 + 1
    repeated = {r.workload_id: r.count for r in measured if r.count > 1}
    assert repeated == {"conv-depthwise-M512-N512-k3-x14-s1": 5, "conv-pointwise-M512-N512-k1-x14-s1": 5}
    assert measured[0].workload_id == "conv-standard-M3-N32-k3-x224-s2" and measured[0].names == ("conv1",)
    assert measured[-1].workload_id == "fc-I1024-O1000" and measured[-1].layer_type == "fully connected"
    assert sum(r.total_macs for r in refs) == network_cost(registry.get(V1)).macs == 568_740_352
    macs = _by_type(refs)
    # the v1 paper's Table 2: 1x1 convs are ~95% of the MACs, depthwise ~3%
    assert 0.94 < macs["pointwise"] / sum(macs.values()) < 0.96
    assert 0.02 < macs["depthwise"] / sum(macs.values()) < 0.04
    assert macs["other"] == 0


@pytest.mark.parametrize("network_id", [V1, "mobilenet_v2-1.0-224", "mobilenet_v3_small-224",
                                        "mobilenet_v3_large-224", "mobilenet_v1_conv-1.0-224"])
def test_layer_workloads_are_the_network_layers(network_id):
    """Each layer workload has the network layer's op (shape, stride, BN, activation) and MACs.

    Dropout aside: inference builds none (harness/workloads/build.py).
    """
    network = registry.get(network_id)
    refs = decompose(network_id)
    assert sum(r.total_macs for r in refs) == network_cost(network).macs
    leaves = {op.name: op for op in flatten(network.ops)}
    for ref in refs:
        if ref.workload_id is None:
            continue
        assert registry.canonical(ref.workload_id) == ref.workload_id
        layer = registry.get(ref.workload_id)
        (op,) = [o for o in flatten(layer.ops) if isinstance(o, Conv | Linear)]
        for name in ref.names:
            network_op = replace(leaves[name], name=op.name)
            if isinstance(network_op, Linear):
                network_op = replace(network_op, dropout=0.0)
            assert network_op == op, (ref.workload_id, name)
        assert network_cost(layer).macs == ref.macs


def test_v2_and_v3_activations_and_other_ops():
    v2 = {r.workload_id: r for r in decompose("mobilenet_v2-1.0-224")}
    assert "conv-pointwise-M32-N16-k1-x112-s1-noact" in v2  # the linear bottleneck: BN, no activation
    assert "conv-depthwise-M32-N32-k3-x112-s1-relu6" in v2
    v3 = decompose("mobilenet_v3_small-224")
    ids = {r.workload_id for r in v3}
    assert {"conv-standard-M3-N16-k3-x224-s2-hswish", "fc-I576-O1024-hswish", "fc-I1024-O1000"} <= ids
    se_macs = sum(row.macs for row in network_cost(registry.get("mobilenet_v3_small-224")).layers if row.op == "se")
    assert se_macs > 0 and _by_type(v3)["other"] == se_macs
    others = [r for r in v3 if r.workload_id is None]
    assert {r.layer_type for r in others} == {"other"} and any("block1.se" in r.names for r in others)


def test_an_int8_network_decomposes_into_int8_layers():
    """Its layers are measured at the network's precision: an fp32 layer would say nothing about int8 time."""
    fp32, int8 = decompose("mobilenet_v3_large-224"), decompose("mobilenet_v3_large-224-int8")
    assert [r.workload_id + "-int8" if r.workload_id else None for r in fp32] == [r.workload_id for r in int8]
    assert [(r.count, r.macs, r.layer_type) for r in fp32] == [(r.count, r.macs, r.layer_type) for r in int8]
    for ref in int8:
        if ref.workload_id:
            assert registry.get(ref.workload_id).precision == "int8"
    ids = registry.suite("layers-of:mobilenet_v1-1.0-224-int8")
    assert ids[0] == "mobilenet_v1-1.0-224-int8" and all(i.endswith("-int8") for i in ids)


def test_id_grammar_extensions_round_trip_and_refuse_contradictions():
    for workload_id in ("conv-pointwise-M32-N16-k1-x112-s1-noact", "conv-depthwise-M96-N96-k5-x28-s2-hswish",
                        "conv-standard-M3-N32-k3-x224-s2-b2-relu6", "fc-I576-O1024-hswish", "fc-I1024-O1000-b4"):
        assert registry.canonical(workload_id) == workload_id
    assert ConvSpec.from_id("conv-standard-M3-N32-k3-x224-s2").act == "relu"  # older ids are unchanged
    assert FcSpec.from_id("fc-I1024-O1000").network().ops[-1] == Linear("fc", 1024, 1000)
    for bad in ("conv-standard-M3-N32-k3-x224-s2-nobn-relu6", "conv-standard-M3-N32-k3-x224-s2-gelu", "fc-I0-O3"):
        with pytest.raises(WorkloadIdError):
            registry.get(bad)


def test_layers_of_suite():
    ids = registry.suite(f"layers-of:{V1},mobilenet_v1_conv-1.0-224")
    assert ids[0] == V1 and len(ids) == len(set(ids))
    assert ids[1:21] == [r.workload_id for r in decompose(V1) if r.workload_id]
    assert "mobilenet_v1_conv-1.0-224" in ids and "conv-standard-M512-N512-k3-x14-s1" in ids
    with pytest.raises(WorkloadIdError):
        registry.suite("layers-of:")
    with pytest.raises(registry.UnknownName, match="layers-of:NETWORK"):
        registry.suite("nightly")


SEPARABLE = "conv-separable-M16-N32-k3-x14-s1"
DW, PW = "conv-depthwise-M16-N16-k3-x14-s1", "conv-pointwise-M16-N32-k1-x14-s1"


def _row(workload_id, median, status="ok", **extra):
    from harness.catalog import workload_row

    cost = workload_row(workload_id)
    return {"run_id": "r", "device": "d", "backend": "b", "threads": 1, "delegate": None, "workload_id": workload_id,
            "status": status, "latency_median": median, "macs": cost["macs"], "bytes_fp32": cost["bytes_fp32"],
            "intensity": cost["intensity"], **extra}


def test_breakdown_arithmetic_on_a_hand_made_frame():
    """A separable layer is a network of two layers: shares, GMAC/s and the gap follow from the medians."""
    import pandas as pd

    frame = pd.DataFrame([_row(SEPARABLE, 2e-3, op_profile_total_s=1.8e-3), _row(DW, 0.5e-3), _row(PW, 1e-3),
                          _row(PW, 3e-3), _row(PW, 9.0, status="invalid")])  # two invocations; an invalid row
    breakdown = layer_breakdown(frame).set_index("layer_type")
    dw_macs, pw_macs = (registry.get(w) for w in (DW, PW))
    dw_macs, pw_macs = network_cost(dw_macs).macs, network_cost(pw_macs).macs
    assert breakdown.loc["pointwise", "total_s"] == pytest.approx(2e-3)  # the median of 1 and 3 ms
    assert breakdown.loc["depthwise", "time_share"] == pytest.approx(0.5e-3 / 2.5e-3)
    assert breakdown.loc["pointwise", "mac_share"] == pytest.approx(pw_macs / (dw_macs + pw_macs))
    assert breakdown.loc["depthwise", "gmacs_per_s"] == pytest.approx(dw_macs / 0.5e-3 / 1e9)
    (gap,) = fusion_gap(frame).to_dict("records")
    assert gap["network"] == SEPARABLE and gap["layers_sum_s"] == pytest.approx(2.5e-3)
    assert gap["layers_over_network"] == pytest.approx(1.25) and gap["profile_over_network"] == pytest.approx(0.9)
    # a layer without a valid measurement is reported missing, never silently left out of a smaller sum
    (gap,) = fusion_gap(frame[frame["workload_id"] != DW]).to_dict("records")
    assert gap["layers_missing"] == 1 and gap["layers_measured"] == 1
    # a runtime without a per-op profiler (TFLite's Python Interpreter) has no profile total: NaN, not 0
    (gap,) = fusion_gap(frame.assign(op_profile_total_s=None)).to_dict("records")
    assert math.isnan(gap["profile_over_network"]) and gap["layers_over_network"] == pytest.approx(1.25)


def test_tflite_interpreter_says_it_has_no_op_profiler():
    pytest.importorskip("ai_edge_litert")
    from backends.runner.runtimes import TfliteRuntime

    profile = TfliteRuntime.op_profile(None, "model.tflite", None, None)
    assert profile["source"] is None and "benchmark_model --enable_op_profiling" in profile["reason"]


# -- a real run of a network and its layers on this machine ------------------------------------------------


# The two local runtimes with a per-op profiler (TFLite's Interpreter has none: the hand-made frame and the
# test above cover that case), so the CI suite measures 42 jobs here, not 63.
RUN_BACKENDS = {"onnxruntime", "torch"}


@pytest.fixture(scope="module")
def layers_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("layers") / "results"
    result = CliRunner().invoke(main, ["run", "--devices", "local", "--threads", "1", "--repeats", "1",
                                       "--backends", ",".join(sorted(RUN_BACKENDS)), "--suite", f"layers-of:{V1}",
                                       "--min-time", "0.1", "--max-time", "0.3", "--min-runs", "5",
                                       "--warmup-runs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (run,) = [p for p in out.iterdir() if p.is_dir() and p.name != "calibrations"]
    return run


@pytest.mark.slow
def test_layers_of_run_measures_every_layer_with_profiles(layers_run):
    info, records = read_run(layers_run)
    assert info["suite"] == f"layers-of:{V1}"
    assert all(r["status"] == "ok" for r in records), [(r["job_id"], r.get("error")) for r in records]
    assert len(records) == len(RUN_BACKENDS) * 21
    by_backend = {(r["backend"], r["workload_id"]): r for r in records}
    ort = by_backend[("onnxruntime", V1)]["op_profile"]
    assert ort["source"] == "onnxruntime profiling" and ort["runs"] >= 1
    assert set(ort["by_type"]) <= set(LAYER_TYPES) and ort["by_type"]["pointwise"] > ort["by_type"]["depthwise"]
    assert math.isclose(sum(ort["by_type"].values()), ort["total_s"])
    assert by_backend[("torch", V1)]["op_profile"]["source"] == "torch.profiler"
    # a single pointwise layer's profile is all pointwise (its BN and ReLU count for it)
    pw = by_backend[("torch", "conv-pointwise-M512-N512-k1-x14-s1")]["op_profile"]["by_type"]
    assert set(pw) == {"pointwise"}


@pytest.mark.slow
def test_breakdown_and_fusion_gap_of_the_run(layers_run):
    frame = load_frame([layers_run])
    table = layer_table(frame, V1)
    assert set(table["backend"]) == RUN_BACKENDS
    assert table["measured"].sum() == len(RUN_BACKENDS) * 20
    breakdown = layer_breakdown(frame)
    for backend, part in breakdown.groupby("backend"):
        assert math.isclose(part["time_share"].sum(), 1.0), backend
        assert math.isclose(part["mac_share"].sum(), 1.0)
        pointwise = part[part["layer_type"] == "pointwise"].iloc[0]
        assert 0.94 < pointwise["mac_share"] < 0.96 and pointwise["gmacs_per_s"] > 0
    gap = fusion_gap(frame).set_index("backend")
    assert (gap["layers_missing"] == 0).all() and (gap["layers_measured"] == 20).all()
    medians = {(r["backend"], r["workload_id"]): r["latency"]["median"] for r in read_run(layers_run)[1]}
    for backend, row in gap.iterrows():
        # the sum, from the records and the decomposition directly: each distinct layer times its count
        expected = sum(medians[(backend, ref.workload_id)] * ref.count for ref in decompose(V1) if ref.workload_id)
        assert math.isclose(row["layers_sum_s"], expected) and row["network_median_s"] == medians[(backend, V1)]
        # and of the network's own order: seconds mixed with ms, or a layer counted per name, would be far off
        assert 0.2 < row["layers_over_network"] < 5.0, (backend, row.to_dict())
    assert 0.2 < gap.loc["onnxruntime", "profile_over_network"] < 5.0
    assert 0.2 < gap.loc["torch", "profile_over_network"] < 5.0


@pytest.mark.slow
def test_workloads_show_with_a_run(layers_run):
    results = str(layers_run.parent)
    result = CliRunner().invoke(main, ["workloads", "show", V1, "--run", layers_run.name, "--results", results])
    assert result.exit_code == 0, result.output
    assert "conv-pointwise-M512-N512-k1-x14-s1" in result.output and "all pointwise" in result.output
    assert result.output.count("layers/network") == len(RUN_BACKENDS) and "profile/network" in result.output
    data = json.loads(CliRunner().invoke(main, ["workloads", "show", V1, "--run", layers_run.name,
                                                "--results", results, "--json"]).output)
    assert len(data["measured"]["fusion"]) == len(RUN_BACKENDS) and data["totals"]["macs"] == 568_740_352
    missing = CliRunner().invoke(main, ["workloads", "show", "mobilenet_v2-1.0-224", "--run", layers_run.name,
                                        "--results", results])
    assert missing.exit_code == 2 and "layers-of:mobilenet_v2-1.0-224" in missing.output


@pytest.mark.slow
def test_report_shows_where_the_network_time_goes(layers_run, tmp_path):
    from harness.report import build_report

    report = build_report([layers_run], tmp_path / "report", bootstrap=0)
    markdown = report.markdown.read_text()
    assert "Where each network's time goes: share of MACs vs share of measured time" in markdown
    assert "The network against the sum of its layers" in markdown
    import pandas as pd

    types = pd.read_csv(tmp_path / "report" / "layer_types.csv")
    assert set(types["backend"]) == RUN_BACKENDS and set(types["network"]) == {V1}
    for _, group in types.groupby("backend"):
        assert group["time_share"].sum() == pytest.approx(1.0)
        assert group.set_index("layer_type")["mac_share"]["pointwise"] == pytest.approx(0.949, abs=0.001)
    fusion = pd.read_csv(tmp_path / "report" / "fusion.csv")
    assert len(fusion) == len(RUN_BACKENDS) and (fusion["layers_missing"] == 0).all()


# -- Android: layers through benchmark_model, its op profile as the cross-check ----------------------------

PROFILE_TEXT = """INFO: Profiling Info for Benchmark Initialization:
============================== Run Order ==============================
\t  [node type]\t     [first]\t  [avg ms]\t      [%]\t    [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t ModifyGraphWithDelegate\t           12.000\t    12.000\t100.000%\t100.000%\t  1200.000\t        1\tModify/0
INFO: Operator-wise Profiling Info for Regular Benchmark Runs:
INFO: ============================== Run Order ==============================
INFO: \t  [node type]\t     [first]\t  [avg ms]\t      [%]\t    [cdf%]\t  [mem KB]\t[times called]\t[Name]
INFO: \t                 CONV_2D\t            1.234\t     1.000\t 50.000%\t 50.000%\t     0.000\t        1\t[conv1]
INFO: \t       DEPTHWISE_CONV_2D\t            0.534\t     0.500\t 25.000%\t 75.000%\t     0.000\t        1\t[dw/Relu6]
INFO: \t         FULLY_CONNECTED\t            0.534\t     0.250\t 12.500%\t 87.500%\t     0.000\t        1\t[fc]
INFO: \t                    MEAN\t            0.534\t     0.250\t 12.500%\t100.000%\t     0.000\t        1\t[pool]
INFO:
INFO: ============================== Top by Computation Time ==============================
INFO: \t  [node type]\t     [first]\t  [avg ms]\t      [%]\t    [cdf%]\t  [mem KB]\t[times called]\t[Name]
INFO: \t                 CONV_2D\t            1.234\t     1.000\t 50.000%\t 50.000%\t     0.000\t        1\t[conv1]
"""


def test_benchmark_model_op_profile_is_read_from_the_measured_runs_table():
    from backends.benchmark_model import parse_op_profile

    profile = parse_op_profile(PROFILE_TEXT)
    assert profile["nodes"] == 4 and math.isclose(profile["total_s"], 0.002)  # not the init table, not "Top by"
    assert profile["by_type"] == pytest.approx({"standard or pointwise": 0.001, "depthwise": 0.0005,
                                                "fully connected": 0.00025, "other": 0.00025})
    assert parse_op_profile("count=50 first=1 curr=1 min=1 max=1 avg=1 std=0") is None


@pytest.mark.rig
@pytest.mark.slow
def test_layers_of_on_the_phone_with_op_profiling(adb_device, adb_server, tmp_path):
    import yaml

    from tests.test_android import device_entry, require_litert

    require_litert()
    separable = "conv-separable-M16-N32-k3-x14-s1"
    devices = tmp_path / "devices.yaml"
    devices.write_text(yaml.safe_dump({"devices": [device_entry(adb_device, adb_server, op_profiling=True,
                                                                energy={"sensor": "none"})]}))
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["run", "--repeats", "1", "--devices", "phone", "--devices-file", str(devices),
                                       "--suite", f"layers-of:{separable}", "--min-time", "0.05", "--max-time", "0.3",
                                       "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run,) = [p for p in out.iterdir() if p.is_dir() and p.name != "calibrations"]
    _info, records = read_run(run)
    assert sorted(r["workload_id"] for r in records) == sorted(
        [separable, "conv-depthwise-M16-N16-k3-x14-s1", "conv-pointwise-M16-N32-k1-x14-s1"])
    for record in records:
        assert record["status"] == "ok", record.get("error")
        profile = record["op_profile"]
        assert profile["source"] == "benchmark_model --enable_op_profiling" and profile["total_s"] > 0
        assert set(profile["by_type"]) == {"delegated"}  # XNNPACK runs the whole graph as one node
    gap = fusion_gap(load_frame([run]))
    (row,) = gap.to_dict("records")
    assert row["network"] == separable and row["delegate"] == "xnnpack" and row["layers_measured"] == 2
    assert row["layers_over_network"] > 0 and row["profile_over_network"] > 0
