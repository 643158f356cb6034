"""Workload ids, suites and the built PyTorch modules."""

import pytest

from harness import workloads as registry
from harness.cost import network_cost
from harness.errors import UserError
from harness.workloads import ConvSpec, WorkloadIdError

torch = pytest.importorskip("torch")
from harness.workloads.build import _sequential, build, build_module, count_module  # noqa: E402


def test_ids_round_trip():
    for suite in registry.suite_names():
        for workload_id in registry.suite(suite):
            assert registry.get(workload_id).workload_id == workload_id


def test_suites_are_unique_and_nonempty():
    for suite in registry.suite_names():
        ids = registry.suite(suite)
        assert ids and len(ids) == len(set(ids)), suite


def test_every_standard_layer_has_its_separable_twin():
    for suite in registry.suite_names():
        ids = set(registry.suite(suite))
        for workload_id in ids:
            pair = registry.pair_of(workload_id)
            if pair:
                assert set(pair) <= ids, workload_id
                a, b = (ConvSpec.from_id(registry.split_precision(i)[0]) for i in pair)
                assert (a.m, a.n, a.k, a.x, a.stride) == (b.m, b.n, b.k, b.x, b.stride)


def test_quick_suite_content():
    ids = registry.suite("quick")
    assert {"mobilenet_v1-1.0-224", "mobilenet_v1_conv-1.0-224", "mobilenet_v2-1.0-224",
            "mobilenet_v3_large-224"} <= set(ids)
    ns = {ConvSpec.from_id(i).n for i in ids if i.startswith("conv-")}
    xs = {ConvSpec.from_id(i).x for i in ids if i.startswith("conv-")}
    assert min(ns) <= 64 and max(ns) >= 512 and min(xs) <= 7 and max(xs) >= 112


@pytest.mark.parametrize("bad", [
    "conv-standard-M64-N128-k3-x56", "conv-diagonal-M1-N1-k3-x8-s1", "conv-standard-M0-N1-k3-x8-s1",
    "conv-standard-M4-N4-k4-x8-s1", "mobilenet_v1-1.0-225", "mobilenet_v1-1-224", "mobilenet_v3_large-1.0-224",
    "resnet50", "",
])
def test_bad_ids_are_user_errors(bad):
    with pytest.raises(WorkloadIdError) as info:
        registry.get(bad)
    assert isinstance(info.value, UserError) and str(info.value)


def test_unknown_suite_lists_valid_names():
    with pytest.raises(UserError, match="quick, int8, layers, mobilenets, paper"):
        registry.suite("nightly")


def _all_workload_ids():
    ids = []
    for suite in registry.suite_names():
        ids += [i for i in registry.suite(suite) if i not in ids]
    return ids


@pytest.mark.parametrize("workload_id", _all_workload_ids())
def test_analytic_cost_equals_module_walk(workload_id):
    network = registry.get(workload_id)
    analytic = network_cost(network)
    # Structure alone decides the counts: skip the (slow) weight calibration here.
    module = _sequential(network.ops).eval()
    example = torch.zeros(network.input_shape)
    counted, params = count_module(module, example)
    assert params == analytic.params
    macs_layers = [row for row in analytic.layers if row.op in ("conv", "depthwise", "pointwise", "linear")]
    # SE rows hold two 1x1 convs each; compare per counted layer after expanding them.
    expected = []
    for row in analytic.layers:
        if row.op == "se":
            expected += [row.macs // 2, row.macs // 2]
        elif row in macs_layers:
            expected.append(row.macs)
    assert [layer.macs for layer in counted] == expected
    assert sum(layer.macs for layer in counted) == analytic.macs


def test_weights_are_deterministic_and_activations_healthy():
    network = registry.get("mobilenet_v2-1.0-224")
    first, second = build(network), build(network)
    with torch.inference_mode():
        out1, out2 = first.module(first.example_input), second.module(second.example_input)
    assert torch.equal(out1, out2)
    assert 0.1 <= float(out1.std()) <= 10.0


@pytest.mark.parametrize("workload_id", ["mobilenet_v1-1.0-224", "mobilenet_v1_conv-0.25-128",
                                         "mobilenet_v3_large-224", "mobilenet_v3_small-224",
                                         "conv-separable-M32-N64-k3-x112-s1"])
def test_outputs_are_not_degenerate(workload_id):
    built = build(registry.get(workload_id))
    with torch.inference_mode():
        out = built.module(built.example_input)
    assert 0.1 <= float(out.std()) <= 10.0, float(out.std())


def test_separable_module_is_depthwise_then_pointwise():
    module = build_module(registry.get("conv-separable-M16-N32-k5-x14-s2"))
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.groups, c.kernel_size, c.stride) for c in convs] == [(16, (5, 5), (2, 2)), (1, (1, 1), (1, 1))]
