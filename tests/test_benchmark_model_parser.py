"""The benchmark_model output parser on published outputs (tests/data/benchmark_model, see
SOURCES.md there) and on the edge cases of the tool's output format."""
# ruff: noqa: E501 - sample outputs keep the tool's long lines

from __future__ import annotations

import math
from pathlib import Path

import pytest

from backends.benchmark_model import delegate_key, parse_benchmark_output, strip_prefix

DATA = Path(__file__).parent / "data" / "benchmark_model"


def published(name: str) -> str:
    return (DATA / name).read_text()


def test_every_fixture_names_its_source() -> None:
    sources = (DATA / "SOURCES.md").read_text()
    fixtures = sorted(p.name for p in DATA.glob("*.txt"))
    assert len(fixtures) >= 6
    for name in fixtures:
        assert f"`{name}`" in sources, name
    assert sources.count("https://") >= len(fixtures)


# -- published outputs ------------------------------------------------------------------


def test_gpu_fully_delegated_android() -> None:
    r = parse_benchmark_output(published("tf43541_gpu_complete.txt"))
    assert r.warmup is not None and r.inference is not None
    assert (r.warmup.count, r.warmup.first, r.warmup.avg, r.warmup.std) == (4, 130565, 122373, 4930)
    assert r.warmup.min_iterations == 1 and r.warmup.min_seconds == 0.5 and r.warmup.max_seconds == 150
    inf = r.inference
    assert (inf.count, inf.first, inf.curr, inf.min, inf.max, inf.avg, inf.std) == (
        50,
        119212,
        118055,
        113737,
        124776,
        119375,
        1948,
    )
    assert inf.min_iterations == 50 and inf.min_seconds == 1
    assert inf.p5 is None and inf.median is None
    assert r.init_us == 870557 and r.first_inference_us == 130565
    assert r.warmup_avg_us == 122373 and r.inference_avg_us == 119375
    assert r.latency_us == 119375
    assert r.model_size_mb == pytest.approx(7.07479) and r.init_session_ms == pytest.approx(870.557)
    assert r.params["Num threads"] == "4" and r.params["Use gpu"] == "1"
    gpu = r.delegates["gpu"]
    assert gpu.requested and gpu.created and gpu.status == "complete" and gpu.delegate_kernels == 1
    assert r.delegate_name == "gpu" and not r.delegate_ran_nothing
    assert r.errors == [] and r.complete and r.usable


def test_logcat_prefixed_nnapi_partial() -> None:
    r = parse_benchmark_output(published("tf56301_nnapi_partial_logcat.txt"))
    assert r.warmup is not None and r.warmup.count == 40 and r.warmup.avg == pytest.approx(12581.9)
    assert r.inference is not None and r.inference.count == 75 and r.inference.avg == pytest.approx(12167.6)
    assert r.inference.min_iterations == 50
    assert r.init_us == 126059 and r.inference_avg_us == pytest.approx(12167.6)
    nnapi = r.delegates["nnapi"]
    assert nnapi.status == "partial" and nnapi.delegate_kernels == 44
    assert r.delegate_name == "nnapi" and not r.delegate_ran_nothing
    assert r.errors == [] and r.usable


def test_nnapi_requested_but_graph_not_executed_by_it() -> None:
    r = parse_benchmark_output(published("tf56301_nnapi_not_executed_logcat.txt"))
    assert r.params["Use NNAPI"] == "1"
    assert r.params["NNAPI accelerators available"] == "ipuadaptor,nnapi-reference"
    nnapi = r.delegates["nnapi"]
    assert nnapi.requested and nnapi.created and nnapi.status == "none"
    assert r.delegate_name == "nnapi" and r.delegated_nodes == 0
    assert r.delegate_ran_nothing
    assert r.warmup is None and r.inference is None
    assert "no benchmark timing output found" in r.errors
    assert not r.usable


def test_gpu_unsupported_op_lines_are_collected() -> None:
    r = parse_benchmark_output(published("tf56301_gpu_unsupported_op_logcat.txt"))
    gpu = r.delegates["gpu"]
    assert gpu.requested and gpu.created
    assert gpu.unsupported_ops == ["UNPACK: Operation is not supported."]
    assert r.params["Use xnnpack"] == "0"
    assert not r.complete


def test_raspberry_pi_xnnpack_with_memory_footprint() -> None:
    r = parse_benchmark_output(published("xnnpack999_rpi4_xnnpack_memory.txt"))
    assert r.warmup is not None and r.warmup.count == 9
    assert r.inference is not None and r.inference.count == 50 and r.inference.avg == pytest.approx(55043.2)
    assert r.memory_init_mb == pytest.approx(8.97656) and r.memory_overall_mb == pytest.approx(18.7227)
    assert r.peak_memory_mb is None
    # the runtime applied XNNPACK by default; nobody asked for it, so nothing "ran nothing"
    assert r.delegates["xnnpack"].created and not r.delegates["xnnpack"].requested
    assert r.delegate_name == "xnnpack" and not r.delegate_ran_nothing
    assert r.errors == [] and r.usable


def test_2018_average_timings_line() -> None:
    r = parse_benchmark_output(published("yuenshome77_2018_average_timings.txt"))
    assert r.warmup is not None and r.warmup.count == 7 and r.warmup.min_iterations == 4
    assert r.warmup.max_seconds is None  # that build printed no time limit
    assert r.inference is not None and r.inference.count == 15 and r.inference.avg == pytest.approx(66767.6)
    assert r.warmup_avg_us == pytest.approx(76605.9) and r.init_us == 9933
    assert r.inference_avg_us == pytest.approx(66767.6)  # printed as "no stats: " then
    assert r.first_inference_us is None
    assert r.init_session_ms == pytest.approx(9.933)
    assert r.complete and r.errors == []


def test_cpu_run_with_1000_iterations() -> None:
    r = parse_benchmark_output(published("google_research802_cpu_1000_runs.txt"))
    assert r.inference is not None and r.inference.count == 1000 and r.inference.std == 22
    assert r.latency_us == pytest.approx(1039.66)
    assert r.delegates == {} and r.delegate_name is None and not r.delegate_ran_nothing


def test_output_cut_before_the_measured_run_finished() -> None:
    r = parse_benchmark_output(published("tf58379_gpu_windows_cut_short.txt"))
    assert r.warmup is not None and r.warmup.count == 20 and r.warmup.min_iterations == 20
    assert r.inference is None and r.inference_avg_us is None
    assert r.latency_us is None and not r.complete and not r.usable
    assert any("did not finish" in e for e in r.errors)
    assert r.init_session_ms == pytest.approx(10115.4)


def test_gpu_requested_on_a_platform_without_gpu_support() -> None:
    r = parse_benchmark_output(published("kingjimin_rpi4_gpu_unsupported_xnnpack_partial.txt"))
    assert r.delegates["gpu"].status == "unsupported"
    assert r.delegates["xnnpack"].status == "partial" and r.delegates["xnnpack"].delegate_kernels == 22
    assert r.delegate_name == "gpu" and r.delegated_nodes == 0
    assert r.delegate_ran_nothing  # the number is XNNPACK on the CPU, not the GPU
    assert r.memory_init_mb == pytest.approx(6.44141) and r.memory_overall_mb == pytest.approx(64.8633)
    assert r.inference is not None and r.inference.max_seconds == 180
    assert "Unconsumed cmdline flags: --allow_fp16" in r.warnings
    assert r.complete and not r.usable


# -- format edge cases --------------------------------------------------------------------

CURRENT = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [4]
INFO: Graph: [/data/local/tmp/mobilenet_v1.tflite]
INFO: Use xnnpack: [1]
INFO: Loaded model /data/local/tmp/mobilenet_v1.tflite
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: XNNPACK delegate created.
VERBOSE: Replacing 31 out of 31 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions for the whole graph.
INFO: Explicitly applied XNNPACK delegate, and the model graph will be completely executed by the delegate.
INFO: The input model file size (MB): 16.9008
INFO: Initialized session in 65.123ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=23 first=24011 curr=21870 min=21590 max=24011 avg=21976.6 std=469 p5=21590 median=21870 p95=22523

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=50 first=1.24027e+06 curr=1.2e+06 min=1.1e+06 max=1.5e+06 avg=1.25e+06 std=40000 p5=1.1e+06 median=1.2e+06 p95=1.4e+06

INFO: Inference timings in us: Init: 65123, First inference: 24011, Warmup (avg): 21976.6, Inference (avg): 1.25e+06
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=40.5 overall=48.9023
INFO: Overall peak memory footprint (MB) via periodic monitoring: 57.3477
INFO: Memory status at the end of exeution:
INFO: - VmRSS              : 57 MB
INFO: + RssAnnon           : 41 MB
INFO: + RssFile + RssShmem : 16 MB
INFO: Operator-wise Profiling Info for Regular Benchmark Runs:
INFO: Timings (microseconds): count=50 first=20000 curr=20000 min=20000 max=20000 avg=20000 std=0
INFO: Memory (bytes): count=0
INFO: 31 nodes observed
"""


def test_current_litert_format_with_percentiles_and_scientific_notation() -> None:
    r = parse_benchmark_output(CURRENT)
    assert len(r.timing_blocks) == 2  # the op-profiling "Timings (microseconds): count=" is not a block
    w, i = r.warmup, r.inference
    assert w is not None and (w.p5, w.median, w.p95) == (21590, 21870, 22523)
    assert i is not None and i.first == pytest.approx(1.24027e6) and i.avg == pytest.approx(1.25e6)
    assert (i.p5, i.median, i.p95) == (1.1e6, 1.2e6, 1.4e6)
    assert r.inference_avg_us == pytest.approx(1.25e6)
    assert r.peak_memory_mb == pytest.approx(57.3477) and r.memory_overall_mb == pytest.approx(48.9023)
    x = r.delegates["xnnpack"]
    assert x.requested and x.status == "complete" and x.nodes_delegated == 31 and x.nodes_total == 31
    assert x.partitions == 1
    assert r.delegate_name == "xnnpack" and r.delegated_nodes == 31 and r.total_nodes == 31
    assert not r.delegate_ran_nothing and r.errors == [] and r.usable


@pytest.mark.parametrize(
    "line",
    [
        "count=50 curr=1000(all same)",
        "count=50 curr=1000 (all same)",
        "count=50 curr=1000(all same) p5=1000 median=1000 p95=1000",
    ],
)
def test_all_same_statistics(line: str) -> None:
    text = f"Running benchmark for at least 1 iterations\ncount=1 curr=900\n\nRunning benchmark for at least 50 iterations\n{line}\n"
    r = parse_benchmark_output(text)
    assert r.warmup is not None and r.warmup.count == 1 and r.warmup.all_same and r.warmup.avg == 900
    i = r.inference
    assert i is not None and i.all_same and i.count == 50
    assert (i.first, i.curr, i.min, i.max, i.avg, i.std) == (1000, 1000, 1000, 1000, 1000, 0)
    assert r.latency_us == 1000


def test_dry_run_gives_empty_blocks() -> None:
    text = (
        "Running benchmark for at least 0 iterations and at least -1 seconds but terminate if exceeding 150 seconds.\n"
        "count=0 p5=0 median=0 p95=0\n\n"
        "Running benchmark for at least 0 iterations and at least -1 seconds but terminate if exceeding 150 seconds.\n"
        "count=0\n\n"
        "Inference timings in us: Init: 1234, First inference: 0, Warmup (avg): nan, Inference (avg): -nan\n"
    )
    r = parse_benchmark_output(text)
    assert r.warmup is not None and r.warmup.count == 0 and r.warmup.min_seconds == -1
    assert r.inference is not None and r.inference.count == 0 and r.inference.avg is None
    assert math.isnan(r.warmup_avg_us or 0.0) and math.isnan(r.inference_avg_us or 0.0)
    assert not r.complete and not r.usable


def test_prefixes_and_crlf_are_stripped() -> None:
    lines = [
        "11-22 01:02:03.456  1234  1234 I tflite  : Running benchmark for at least 1 iterations and at least 0.5 seconds",
        "I/tflite  ( 1234): count=3 first=10 curr=8 min=8 max=10 avg=9 std=1",
        "2026-03-10 17:01:31.105 22716-23089 tflite                  com.example.bench            I  "
        "Running benchmark for at least 50 iterations and at least 1 seconds",
        "I0000 00:00:1773133291.106272   23090 benchmark_model.cc:312] count=50 first=7 curr=6 min=5 max=7 avg=6 std=1",
        "INFO: Inference timings in us: Init: 10, First inference: 10, Warmup (avg): 9, Inference (avg): 6",
    ]
    r = parse_benchmark_output("\r\n".join(lines) + "\r\n")
    assert r.warmup is not None and r.warmup.count == 3 and r.warmup.min_seconds == 0.5
    assert r.inference is not None and r.inference.count == 50 and r.inference.avg == 6
    assert r.inference.min_iterations == 50
    assert r.complete and r.errors == []


def test_strip_prefix_reports_levels() -> None:
    assert strip_prefix("05-31 10:38:42.607 22206 22206 E tflite  : UNPACK: x") == ("ERROR", "UNPACK: x")
    assert strip_prefix("W/tflite: careful") == ("WARNING", "careful")
    assert strip_prefix("ERROR: Failed to allocate tensors!") == ("ERROR", "Failed to allocate tensors!")
    assert strip_prefix("   plain text\r") == (None, "plain text")


def test_zero_nodes_replaced_for_the_requested_delegate() -> None:
    text = (
        "Use gpu: [1]\n"
        "INFO: Created TensorFlow Lite delegate for GPU.\n"
        "VERBOSE: Replacing 0 out of 64 node(s) with delegate (TfLiteGpuDelegateV2) node, yielding 0 partitions "
        "for the whole graph.\n"
        "VERBOSE: Replacing 64 out of 64 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions "
        "for the whole graph.\n"
    )
    r = parse_benchmark_output(text)
    assert r.delegates["gpu"].nodes_delegated == 0 and r.delegates["gpu"].nodes_total == 64
    assert r.delegate_name == "gpu" and r.delegated_nodes == 0 and r.total_nodes == 64
    assert r.delegate_ran_nothing


def test_requested_delegate_silent_while_xnnpack_took_the_graph() -> None:
    text = (
        "Use gpu: [1]\n"
        "INFO: Created TensorFlow Lite delegate for GPU.\n"
        "VERBOSE: Replacing 64 out of 64 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions "
        "for the whole graph.\n"
    )
    assert parse_benchmark_output(text).delegate_ran_nothing


def test_partial_gpu_delegation_counts() -> None:
    text = (
        "Use gpu: [1]\n"
        "INFO: Replacing 54 out of 559 node(s) with delegate (TfLiteGpuDelegateV2) node, yielding 3 partitions.\n"
        "Explicitly applied GPU delegate, and the model graph will be partially executed by the delegate w/ 3 "
        "delegate kernels.\n"
    )
    r = parse_benchmark_output(text)
    gpu = r.delegates["gpu"]
    assert (gpu.nodes_delegated, gpu.nodes_total, gpu.partitions, gpu.delegate_kernels) == (54, 559, 3, 3)
    assert gpu.status == "partial" and not r.delegate_ran_nothing
    assert (r.delegated_nodes, r.total_nodes) == (54, 559)


def test_old_replacing_line_and_gpu_operation_split() -> None:
    text = (
        "INFO: Replacing 12 node(s) with delegate (TfLiteGpuDelegate) node, yielding 2 partitions.\n"
        "First 2 operations will run on the GPU, and the remaining 249 on the CPU.\n"
    )
    r = parse_benchmark_output(text)
    gpu = r.delegates["gpu"]
    assert gpu.nodes_delegated == 12 and gpu.nodes_total is None and gpu.partitions == 2
    text2 = "E tflite  : 294 operations will run on the GPU, and the remaining 3 operations will run on the CPU.\n"
    gpu2 = parse_benchmark_output(text2).delegates["gpu"]
    assert (gpu2.nodes_delegated, gpu2.nodes_total) == (294, 297)


def test_vendor_delegate_summary_line() -> None:
    text = (
        "TfLiteQnnDelegate delegate: 357 nodes delegated out of 357 nodes with 1 partitions.\n"
        "Replacing 357 out of 357 node(s) with delegate (TfLiteQnnDelegate) node, yielding 1 partitions for the "
        "whole graph.\n"
    )
    r = parse_benchmark_output(text)
    assert r.delegates["qnn"].nodes_delegated == 357 and r.delegate_name == "qnn"


def test_errors_and_non_benchmark_output() -> None:
    r = parse_benchmark_output("/system/bin/sh: /data/local/tmp/benchmark_model: not found\n")
    assert r.errors == ["no benchmark timing output found"]
    r = parse_benchmark_output(
        "STARTING!\n"
        "ERROR: Could not open '/data/local/tmp/x.tflite'.\n"
        "Failed to mmap model /data/local/tmp/x.tflite\n"
        "WARN: Failed to get the input model file size.\n"
        "Error in invoke: tensor 0 has no data\n"
    )
    assert "Could not open '/data/local/tmp/x.tflite'." in r.errors
    assert "Failed to mmap model /data/local/tmp/x.tflite" in r.errors
    assert "Error in invoke: tensor 0 has no data" in r.errors
    assert "Failed to get the input model file size." in r.warnings  # benign
    assert not r.complete


def test_failed_delegate_is_an_error_and_ran_nothing() -> None:
    r = parse_benchmark_output("Use gpu: [1]\nERROR: Failed to apply GPU delegate.\n")
    assert r.delegates["gpu"].status == "failed" and r.delegate_ran_nothing
    assert r.errors[0] == "Failed to apply GPU delegate."


def test_only_the_first_run_pair_is_warmup_and_inference() -> None:
    block = (
        "Running benchmark for at least 1 iterations and at least 0.5 seconds\n"
        "count=2 first=20 curr=10 min=10 max=20 avg=15 std=5\n"
        "Running benchmark for at least 5 iterations and at least 1 seconds\n"
        "count=5 first=9 curr=9 min=8 max=10 avg=9 std=1\n"
    )
    r = parse_benchmark_output(block + block.replace("avg=9", "avg=7"))
    assert len(r.timing_blocks) == 4
    assert r.inference is not None and r.inference.avg == 9


def test_delegate_key_names() -> None:
    assert delegate_key("TfLiteXNNPackDelegate") == "xnnpack"
    assert delegate_key("TfLiteGpuDelegateV2") == "gpu"
    assert delegate_key("NNAPI") == "nnapi"
    assert delegate_key("EXTERNAL") == "external"


def test_to_dict_is_plain_data() -> None:
    d = parse_benchmark_output(published("tf43541_gpu_complete.txt")).to_dict()
    assert d["latency_us"] == 119375 and d["usable"] is True
    assert d["inference"]["count"] == 50 and d["delegates"]["gpu"]["status"] == "complete"
