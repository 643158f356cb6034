"""Deployment runtimes with real components: torch.compile, LiteRT's CompiledModel, ExecuTorch (XNNPACK).

Each exports real small convs and runs them through the local transport (the runner zipapp in
a subprocess, one fresh process per item), checking outputs against PyTorch's like any backend.
"""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import Job, TimingPolicy
from backends.local import LocalTransport
from backends.runner import RUNTIMES
from harness.artifacts import artifact_for
from harness.records import finalize
from harness.registry import BACKENDS

SEP = "conv-separable-M32-N64-k3-x28-s1"  # depthwise 3x3 + pointwise 1x1, each with BN and ReLU
STD = "conv-standard-M32-N32-k3-x28-s1"
FAST = TimingPolicy(warmup_runs=2, warmup_seconds=0.0, min_runs=5, min_seconds=0.05, max_seconds=0.3,
                    reference_probe_seconds=0.0)


def run_local(backend, workloads, threads=1, output_dir=None):
    artifacts = {w: artifact_for(w, backend) for w in workloads}
    jobs = [Job(f"local/{backend}/t{threads}/{w}", w, "local", backend, threads) for w in workloads]
    records = []
    # Finalize inside the callback: the output file is checked while it exists.
    LocalTransport(output_dir=output_dir).run_batch(jobs, artifacts, FAST, lambda r: records.append(finalize(r)))
    assert [r["workload_id"] for r in records] == workloads
    return records


def assert_matches(record):
    assert record["status"] == "ok", record.get("error") or record.get("problems")
    assert record["output_check"]["status"] == "match", record["output_check"]
    assert record["latency"]["n"] >= FAST.min_runs
    assert not runtime_warnings(record)


def runtime_warnings(record):
    """What the runtime said about its setup (e.g. threads not honoured); other load on this machine apart."""
    return [w for w in record.get("warnings", []) if not w.startswith("machine was busy")]


def test_every_registered_runtime_exists_in_the_runner():
    assert {b.runtime for b in BACKENDS.values()} <= set(RUNTIMES)


@pytest.mark.slow
def test_torch_compile_matches_and_keeps_compile_time_apart_from_latency():
    (record,) = run_local("torch-compile", [SEP])
    assert_matches(record)
    assert record["runtime"] == "torch-compile" and record["provider"] == "cpu"
    compile_s = record["compile_s"]
    assert 0 < compile_s <= record["load_s"]
    # the timed calls never include the compile: a compile takes seconds, a call of this conv < 50 ms
    assert max(record["samples_s"]) < compile_s / 10


@pytest.mark.slow
def test_litert_compiled_model_runs_the_tflite_file_and_matches():
    records = run_local("litert", [SEP, STD], threads=2)
    for record in records:
        assert_matches(record)
        assert record["runtime"] == "litert" and record["provider"] == "cpu" and record["threads"] == 2
        assert "compile_s" not in record  # only a compiling runtime reports one
        # the very file the tflite (Interpreter) backend runs
        assert artifact_for(record["workload_id"], "litert") == artifact_for(record["workload_id"], "tflite")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["litert-gpu", "litert-npu"])
def test_litert_on_an_accelerator_runs_the_whole_model_there_or_fails_saying_so(backend):
    """No GPU or NPU here: the job must fail naming the accelerator, never time LiteRT's CPU instead.
    Where the accelerator exists, the same test requires a checked output computed on it."""
    pytest.importorskip("ai_edge_litert")
    (record,) = run_local(backend, [SEP])
    accelerator = BACKENDS[backend].device
    assert record["backend"] == backend and record["runtime"] == "litert"
    if record["status"] == "ok":
        assert record["provider"] == accelerator and record["output_check"]["status"] == "match"
        assert any("threads apply to LiteRT's CPU accelerator only" in w for w in record["warnings"])
    else:
        assert record["error_kind"] == "runtime_error", record
        assert f"{accelerator} accelerator" in record["error"], record["error"]
        assert "latency" not in record and "samples_s" not in record


@pytest.fixture(scope="module")
def executorch_run(tmp_path_factory):
    """fp32 and int8 workloads in one runner batch (each ExecuTorch process imports for ~10 s)."""
    outputs = tmp_path_factory.mktemp("executorch")
    workloads = [SEP, STD, SEP + "-int8"]
    records = run_local("executorch", workloads, threads=2, output_dir=outputs)
    return {r["workload_id"]: (r, outputs / f"item{i}.out.npy") for i, r in enumerate(records)}


@pytest.mark.slow
@pytest.mark.parametrize("workload, convs", [(SEP, 2), (STD, 1)])
def test_executorch_matches_and_every_conv_is_delegated_to_xnnpack(executorch_run, workload, convs):
    record, _ = executorch_run[workload]
    assert_matches(record)
    assert record["runtime"] == "executorch" and record["provider"] == "xnnpack" and record["threads"] == 2
    delegation = record["delegation"]
    assert delegation["ops_delegated"]["aten_convolution_default"] == convs
    assert delegation["not_delegated"] == 0 and delegation["ops_not_delegated"] == {}
    assert delegation["delegated"] >= 2 * convs  # the convs and their BatchNorm and ReLU
    assert delegation["delegated_subgraphs"] == 1


@pytest.mark.slow
def test_executorch_int8_exports_runs_and_stays_close_to_fp32(executorch_run):
    workload = SEP + "-int8"
    record, output_path = executorch_run[workload]
    assert_matches(record)  # harness/records.py's int8 rule: cosine against the fp32 reference
    assert record["output_check"]["rule"] == "int8"
    delegation = record["delegation"]
    assert delegation["ops_not_delegated"] == {}
    # quantized: the convs come with quantize/dequantize pairs, all inside the XNNPACK delegate
    assert delegation["ops_delegated"]["aten_convolution_default"] == 2
    assert any("quantize_per_tensor" in op for op in delegation["ops_delegated"])
    artifact = artifact_for(workload, "executorch")
    reference = np.load(artifact.reference_output_path).ravel().astype(np.float64)  # PyTorch fp32
    output = np.load(output_path).ravel().astype(np.float64)
    cosine = float(output @ reference / (np.linalg.norm(output) * np.linalg.norm(reference)))
    assert 0.99 < cosine <= 1.0 + 1e-9
    assert not np.allclose(output, reference, rtol=0, atol=1e-6)  # int8 arithmetic really ran
