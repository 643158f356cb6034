"""GPU paths: CUDA events with synchronisation, allocator peak, ORT's CUDA provider.

No GPU exists on CI; these run wherever CUDA does and skip cleanly elsewhere.
"""

import pytest

from backends.base import Job, TimingPolicy
from backends.local import LocalTransport
from harness.artifacts import get_artifact
from harness.records import finalize

torch = pytest.importorskip("torch")
WORKLOAD = "conv-separable-M32-N64-k3-x56-s1"
POLICY = TimingPolicy(warmup_runs=3, min_runs=10, min_seconds=0.1, max_seconds=0.5)


def _run(backend, fmt):
    artifact = get_artifact(WORKLOAD, fmt)[0]
    records = []
    LocalTransport().run_batch([Job("gpu", WORKLOAD, "local", backend, 1)], {WORKLOAD: artifact}, POLICY,
                               lambda r: records.append(finalize(r)))
    return records[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_torch_cuda_times_with_events_and_reports_allocator_peak():
    record = _run("torch-cuda", "torch")
    assert record["status"] == "ok", record.get("error")
    assert record["timer"] == "cuda_events" and record["provider"] == "cuda"
    assert record["memory"]["gpu_peak_bytes"] > 0
    assert record["output_check"]["status"] == "match"


def test_onnxruntime_cuda_without_provider_is_a_clear_error():
    ort = pytest.importorskip("onnxruntime")
    record = _run("onnxruntime-cuda", "onnx")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert record["status"] == "ok" and record["provider"] == "CUDAExecutionProvider"
    else:
        assert record["status"] == "error" and "CUDAExecutionProvider" in record["error"]


def test_torch_cuda_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by the test above")
    record = _run("torch-cuda", "torch")
    assert record["status"] == "error" and "CUDA" in record["error"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_torch_compile_cuda_times_with_events_and_keeps_compile_time_apart():
    record = _run("torch-compile-cuda", "torch")
    assert record["status"] == "ok", record.get("error")
    assert record["timer"] == "cuda_events" and record["provider"] == "cuda"
    assert record["runtime"] == "torch-compile" and 0 < record["compile_s"] <= record["load_s"]
    assert max(record["samples_s"]) < record["compile_s"]
    assert record["memory"]["gpu_peak_bytes"] > 0
    assert record["output_check"]["status"] == "match"


def test_torch_compile_cuda_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by the test above")
    record = _run("torch-compile-cuda", "torch")
    assert record["status"] == "error" and "CUDA" in record["error"]
    assert "compile_s" not in record  # nothing was compiled
