"""int8 workloads end to end with real components: the ONNX and TFLite int8 exports hold int8
ops and tensors, onnxruntime and TFLite (XNNPACK) run them, and the int8 output check passes
their outputs and fails wrong ones.  No mocks: exports, runtimes and the runner are the real ones.

Exports are cached like every artifact (``harness.artifacts``); a fresh cache spends a few
minutes on the networks (about 30-45 s each per format).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from backends.base import Job, TimingPolicy
from backends.local import LocalTransport
from harness.artifacts import artifact_for, get_artifact
from harness.records import (
    INT8_MIN_COSINE_LAYER,
    INT8_MIN_COSINE_NETWORK,
    INT8_TOP1_MAX_GAP,
    OUTPUT_RTOL,
    check_int8_output,
    check_output,
    finalize,
)

LAYER = "conv-separable-M32-N64-k3-x112-s1"  # depthwise 3x3 + pointwise, the quick suite's first pair
OTHER_LAYER = "conv-standard-M32-N64-k3-x112-s1"  # its twin: the same output shape, another output
NETWORKS = ["mobilenet_v1-1.0-224", "mobilenet_v1_conv-1.0-224", "mobilenet_v2-1.0-224", "mobilenet_v3_large-224"]
BACKEND_FORMAT = {"onnxruntime": "onnx", "tflite": "tflite"}
FAST = TimingPolicy(warmup_runs=1, warmup_seconds=0.0, min_runs=3, min_seconds=0.02, max_seconds=0.2)


def int8(workload_id: str) -> str:
    return workload_id + "-int8"


def run_local(backend: str, workload_id: str) -> dict:
    """One job through the real runner subprocess; the record as the store would write it."""
    artifacts = {workload_id: artifact_for(workload_id, backend)}
    records: list[dict] = []
    job = Job(f"local/{backend}/t1/{workload_id}", workload_id, "local", backend, 1)
    LocalTransport().run_batch([job], artifacts, FAST, lambda r: records.append(finalize(r)))
    (record,) = records
    return record


def fp32_output(workload_id: str, layout: str) -> np.ndarray:
    """PyTorch's output of a workload (its fp32 reference), in an artifact's layout."""
    import torch

    from harness import workloads
    from harness.workloads.build import build

    built = build(workloads.get(workload_id))
    with torch.inference_mode():
        out = built.module(built.example_input)
    if out.dim() == 4 and layout == "NHWC":
        out = out.permute(0, 2, 3, 1)
    return out.contiguous().numpy()


def check_array(tmp_path, artifact, output: np.ndarray) -> dict:
    path = tmp_path / "output.npy"
    np.save(path, output.astype(np.float32))
    return check_output(path, artifact)


# -- what the exported files hold ---------------------------------------------------------


def onnx_contents(path) -> tuple[collections.Counter, collections.Counter, set]:
    """(ops in the file, ops onnxruntime runs after its graph optimisation, int8 initializer names)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, value.name
    int8_weights = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.optimized_model_filepath = f"{folder}/optimized.onnx"
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    return (collections.Counter(n.op_type for n in model.graph.node),
            collections.Counter(n.op_type for n in optimized.graph.node), int8_weights)


def tflite_contents(path) -> tuple[collections.Counter, dict, dict]:
    """((op, first input dtype, output dtype) counts, input details, output details)."""
    from ai_edge_litert import interpreter as litert

    model = litert.Interpreter(model_path=str(path),
                               experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    model.allocate_tensors()
    tensors = {t["index"]: t for t in model.get_tensor_details()}
    ops = collections.Counter()
    for op in model._get_ops_details():
        ops[(op["op_name"], tensors[op["inputs"][0]]["dtype"].__name__,
             tensors[op["outputs"][0]]["dtype"].__name__)] += 1
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            weights = tensors[op["inputs"][1]]
            assert weights["dtype"] == np.int8, weights["name"]
            channels = weights["shape"][3 if op["op_name"] == "DEPTHWISE_CONV_2D" else 0]
            assert len(weights["quantization_parameters"]["scales"]) == channels  # per output channel
    return ops, model.get_input_details()[0], model.get_output_details()[0]


def assert_onnx_int8(path, convs: int) -> None:
    ops, runs, int8_weights = onnx_contents(path)
    assert ops["QuantizeLinear"] and ops["DequantizeLinear"] and ops["Conv"] == convs
    assert len(int8_weights) >= convs  # every conv's weights are stored as int8
    assert runs["QLinearConv"] == convs and runs["Conv"] == 0  # all fused into int8 kernels


def assert_tflite_int8(path, convs: int) -> None:
    ops, inp, out = tflite_contents(path)
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32
    assert ops[("QUANTIZE", "float32", "int8")] == 1 and ops[("DEQUANTIZE", "int8", "float32")] == 1
    conv_ops = {k: v for k, v in ops.items() if k[0] in ("CONV_2D", "DEPTHWISE_CONV_2D")}
    assert sum(conv_ops.values()) == convs and all(k[1:] == ("int8", "int8") for k in conv_ops)
    float_ops = [k for k in ops if k[0] not in ("QUANTIZE", "DEQUANTIZE") and "float32" in k[1:]]
    assert not float_ops, float_ops  # fully int8 between the input's QUANTIZE and the output's DEQUANTIZE
    assert xnnpack_takes_the_whole_graph(path)  # so the int8 ops run on XNNPACK's QS8 kernels


def xnnpack_takes_the_whole_graph(path) -> bool:
    """One XNNPACK partition (the tflite backend's default delegate) from the model's input to its output."""
    from ai_edge_litert.interpreter import Interpreter

    model = Interpreter(model_path=str(path), num_threads=1)
    model.allocate_tensors()
    partitions = [op for op in model._get_ops_details() if op["op_name"] == "DELEGATE"]
    return (len(partitions) == 1 and model.get_input_details()[0]["index"] in partitions[0]["inputs"]
            and model.get_output_details()[0]["index"] in partitions[0]["outputs"])


# -- a single layer ---------------------------------------------------------------------


def test_int8_layer_onnx_is_a_qdq_graph_that_onnxruntime_runs_on_int8_kernels():
    artifact, _ = get_artifact(int8(LAYER), "onnx")
    assert_onnx_int8(artifact.path, convs=2)
    assert artifact.layout == "NCHW" and np.load(artifact.input_path).dtype == np.float32


def test_int8_layer_tflite_is_fully_int8_with_float_io_in_nhwc():
    artifact, _ = get_artifact(int8(LAYER), "tflite")
    assert_tflite_int8(artifact.path, convs=2)
    assert artifact.layout == "NHWC" and np.load(artifact.input_path).shape == (1, 112, 112, 32)
    fp32, _ = get_artifact(LAYER, "tflite")  # same input and fp32 reference as the fp32 workload
    assert np.array_equal(np.load(fp32.input_path), np.load(artifact.input_path))
    assert np.array_equal(np.load(fp32.reference_output_path), np.load(artifact.reference_output_path))


@pytest.mark.parametrize("backend", ["onnxruntime", "tflite"])
def test_int8_layer_runs_in_the_runner_and_passes_the_int8_check(backend):
    record = run_local(backend, int8(LAYER))
    assert record["status"] == "ok", record.get("error") or record.get("problems")
    check = record["output_check"]
    assert check["status"] == "match" and check["rule"] == "int8"
    assert check["min_cosine"] == INT8_MIN_COSINE_LAYER <= check["cosine"] <= 1.0 + 1e-9
    assert "top1_agrees" not in check  # a feature map, not a classifier
    assert check["max_abs_diff"] > OUTPUT_RTOL * check["scale"]  # int8 error: the fp32 rule would fail it


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_int8_check_fails_wrong_layer_outputs(tmp_path, fmt):
    artifact, _ = get_artifact(int8(LAYER), fmt)
    reference = np.load(artifact.reference_output_path)
    assert check_array(tmp_path, artifact, reference)["status"] == "match"
    other = fp32_output(OTHER_LAYER, artifact.layout)  # another workload's output, same shape
    assert other.shape == reference.shape
    rng = np.random.default_rng(0)
    wrong = {
        "another workload's output": other,
        "permuted": rng.permutation(reference.ravel()).reshape(reference.shape),
        "channels shuffled": reference[..., rng.permutation(reference.shape[-1])]
        if artifact.layout == "NHWC" else reference[:, rng.permutation(reference.shape[1])],
        "zeros": np.zeros_like(reference),
        "NaN": np.where(reference > 0, np.nan, reference),
    }
    for name, output in wrong.items():
        check = check_array(tmp_path, artifact, output)
        assert check["status"] == "mismatch" and check["rule"] == "int8", name
        assert check["reason"], name


def test_fp32_workloads_keep_the_max_abs_rule(tmp_path):
    artifact, _ = get_artifact(LAYER, "onnx")
    reference = np.load(artifact.reference_output_path)
    check = check_array(tmp_path, artifact, reference)
    assert check["status"] == "match" and "rule" not in check and check["tolerance"] > 0
    # an error int8 would be allowed (cosine 0.9999) fails fp32's 1e-4 rule
    noisy = reference + 0.01 * np.abs(reference).max() * np.random.default_rng(0).standard_normal(reference.shape)
    assert check_array(tmp_path, artifact, noisy)["status"] == "mismatch"


# -- the top-1 rule on arrays -------------------------------------------------------------


def test_top1_rule_passes_near_ties_and_fails_a_class_pushed_up_alone():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((1, 1000))
    top = int(reference.argmax())
    noisy = reference + 0.1 * rng.standard_normal(reference.shape)  # int8-like error, cosine ~0.995
    noisy[0, top] = noisy.max() + 0.01  # still on top
    check = check_int8_output(noisy, reference, network=True)
    assert check["status"] == "match" and check["top1_agrees"] and check["top1_gap"] == 0
    assert check["max_top1_gap"] == INT8_TOP1_MAX_GAP

    near_tie = noisy.copy()
    runner_up = int(np.argsort(reference[0])[-2])
    near_tie[0, runner_up] = near_tie[0, top] + 0.05  # the reference's runner-up just ahead: half an rms error
    check = check_int8_output(near_tie, reference, network=True)
    assert check["status"] == "match" and not check["top1_agrees"] and 0 < check["top1_gap"] < 1
    assert "near-tied" in check["reason"]

    spiked = noisy.copy()
    spiked[0, 7] = noisy.max() + 3.0  # one logit corrupted: the cosine hardly moves, top-1 does
    check = check_int8_output(spiked, reference, network=True)
    assert check["cosine"] > INT8_MIN_COSINE_NETWORK
    assert check["status"] == "mismatch" and not check["top1_agrees"] and check["top1_gap"] > INT8_TOP1_MAX_GAP
    assert "top-1" in check["reason"]
    layer = check_int8_output(spiked, reference, network=False)  # a layer: no top-1, the stricter cosine
    assert "top1_agrees" not in layer and layer["min_cosine"] == INT8_MIN_COSINE_LAYER


# -- whole networks: the goal, int8 agrees with fp32 on top-1 for every network ----


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "tflite"])
@pytest.mark.parametrize("network", NETWORKS)
def test_int8_network_agrees_with_fp32_on_top1(network, backend, tmp_path):
    artifact, _ = get_artifact(int8(network), BACKEND_FORMAT[backend])
    record = run_local(backend, int8(network))
    assert record["status"] == "ok", record.get("error") or record.get("problems")
    check = record["output_check"]
    assert check["status"] == "match" and check["rule"] == "int8"
    assert check["cosine"] >= check["min_cosine"] == INT8_MIN_COSINE_NETWORK
    assert check["top1_agrees"] is True and check["top1_gap"] == 0  # the goal: strict top-1
    # A wrong output fails: another network's output, and this one's logits permuted.
    reference = np.load(artifact.reference_output_path)
    other = fp32_output(NETWORKS[NETWORKS.index(network) - 1], artifact.layout)
    permuted = np.random.default_rng(1).permutation(reference.ravel()).reshape(reference.shape)
    for wrong in (other, permuted):
        assert check_array(tmp_path, artifact, wrong)["status"] == "mismatch"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_int8_network_export_holds_int8_ops(fmt):
    network = "mobilenet_v2-1.0-224"  # 52 convolutions (35 full and pointwise, 17 depthwise)
    artifact, _ = get_artifact(int8(network), fmt)
    if fmt == "onnx":
        assert_onnx_int8(artifact.path, convs=52)
        assert onnx_contents(artifact.path)[1]["QGemm"] == 1  # the classifier too
    else:
        assert_tflite_int8(artifact.path, convs=52)
        ops, _, _ = tflite_contents(artifact.path)
        assert ops[("FULLY_CONNECTED", "int8", "int8")] == 1 and ops[("ADD", "int8", "int8")] == 10
