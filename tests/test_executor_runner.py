"""ExecuTorch's executor_runner: its command line, and its output parsed from published copies.

The files in tests/data/executor_runner/ are verbatim excerpts of output people published
(SOURCES.md says where); the failing outputs are built from the format strings of
executor_runner.cpp, ET_CHECK and the PALs, as that file cites them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.executor_runner import (
    BASE_FLAGS,
    diagnose,
    executions_for,
    latency_fields,
    log_message,
    parse_help,
    parse_output,
    per_run_estimate,
    runner_argv,
    timing_event,
)

DATA = Path(__file__).parent / "data" / "executor_runner"
BINARY = "/data/local/tmp/convbench/executor_runner"


def published(name: str) -> str:
    return (DATA / name).read_text()


def test_every_published_file_is_cited() -> None:
    sources = published("SOURCES.md")
    files = sorted(p.name for p in DATA.glob("*.txt"))
    assert len(files) >= 6 and all(f"`{name}`" in sources for name in files)


def test_docs_output_total_only() -> None:
    """ExecuTorch's own docs: one execution of MobileNetV2, the total line and no per-iteration lines."""
    result = parse_output(published("docs_building_from_source_mv2.txt"))
    assert result.executions == 1 and result.total_ms == pytest.approx(15.013292)
    assert result.iterations_ms == [] and result.timed and result.mean_ms == pytest.approx(15.013292)
    assert result.outputs == 1 and result.tensor_lines == 1 and result.log_lines == 2 and result.errors == []
    assert diagnose(result, 0, "", BINARY) is None
    fields = latency_fields(result, warmup=3)
    latency = fields["latency"]
    assert latency["n"] == 1 and latency["median"] == pytest.approx(0.015013292) and latency["median_is_mean"]
    assert latency["statistic"] == "mean of 1 executions (executor_runner prints only their total)"
    assert "samples_s" not in fields and fields["warmup_left_out"] == 0
    assert "no per-run samples" in fields["timing"] and "method->execute() alone" in fields["timing"]
    assert per_run_estimate(result, 3) == pytest.approx(0.015013292)


def test_arm_learning_path_threadpool_buffers_and_etdump() -> None:
    """A Debug AArch64 build: D lines, the thread pool reset to --cpu_threads 1, an ETDump written."""
    result = parse_output(published("arm_learning_path_linear_etdump.txt"))
    assert result.threadpool_threads == 1 and result.method == "forward"
    assert result.model_path == "model/linear_model_f32.pte" and result.planned_buffers == [2112]
    assert result.executions == 1 and result.total_ms == pytest.approx(2.904883) and result.outputs == 1
    assert result.etdump_path == "model/linear_model_f32.etdump"
    assert result.errors == [] and result.fatal is None and result.log_lines == 13
    assert diagnose(result, 0, "", BINARY) is None


@pytest.mark.parametrize("name", ["issue_15547_android_release_build.txt",
                                  "issue_4005_android_xnn_executor_runner.txt"])
def test_phone_builds_without_logging_print_no_time(name: str) -> None:
    """Published from phones: Release builds print the output tensor and nothing else."""
    result = parse_output(published(name))
    assert result.log_lines == 0 and result.tensor_lines == 1 and not result.timed
    message = diagnose(result, 0, "", BINARY)
    assert message is not None and message.startswith(f"{BINARY} printed no time: it printed the output tensors")
    assert "-DEXECUTORCH_ENABLE_LOGGING=ON" in message and "logcat (tag ExecuTorch)" in message
    assert "-DEXECUTORCH_PAL_DEFAULT=posix" in message


def test_runner_older_than_0_6_has_no_time() -> None:
    result = parse_output(published("issue_1231_v0_1_no_timing.txt"))
    assert result.untimed_success and not result.timed and result.planned_buffers == [64346944]
    assert result.outputs == 1 and result.model_path == "./resnet18.pte"
    message = diagnose(result, 0, "", BINARY)
    assert message is not None and "older than ExecuTorch 0.6" in message and "EXECUTOR_RUNNER=ON" in message


def test_output_cut_short() -> None:
    result = parse_output(published("issue_3919_stopped_after_inputs_prepared.txt"))
    assert result.log_lines == 5 and not result.timed
    assert diagnose(result, None, "", BINARY) == (
        "executor_runner's output stops before `Model executed successfully N time(s) in X ms` "
        "(cut short: killed, or still executing)")


# -- per-iteration lines (ExecuTorch >= 1.3), from their format strings -----------------------

PER_ITERATION = """\
I 00:00:00.001201 executorch:executor_runner.cpp:340] Resetting threadpool with num threads = 4
I 00:00:00.001520 executorch:threadpool.cpp:66] Resetting threadpool to 4 threads.
I 00:00:00.002002 executorch:executor_runner.cpp:476] Model file /data/local/tmp/convbench/models/m.pte is loaded.
I 00:00:00.002031 executorch:executor_runner.cpp:486] Using method forward
I 00:00:00.002045 executorch:executor_runner.cpp:556] Setting up CPU planned buffer 0, size 37632.
I 00:00:00.013372 executorch:executor_runner.cpp:624] Model loaded in 11.370000 ms.
I 00:00:00.015372 executorch:executor_runner.cpp:779] Iteration 1 of 5: 2.000000 ms
I 00:00:00.016372 executorch:executor_runner.cpp:779] Iteration 2 of 5: 1.000000 ms
I 00:00:00.017572 executorch:executor_runner.cpp:779] Iteration 3 of 5: 1.200000 ms
I 00:00:00.018672 executorch:executor_runner.cpp:779] Iteration 4 of 5: 1.100000 ms
I 00:00:00.019972 executorch:executor_runner.cpp:779] Iteration 5 of 5: 1.300000 ms
I 00:00:00.019990 executorch:executor_runner.cpp:789] Model executed successfully 5 time(s) in 6.600000 ms.
I 00:00:00.020001 executorch:executor_runner.cpp:798] 1 outputs:
"""


def test_per_iteration_lines_give_samples_without_the_warmup() -> None:
    result = parse_output(PER_ITERATION)
    assert result.iterations_ms == [2.0, 1.0, 1.2, 1.1, 1.3] and result.executions == 5
    assert result.load_ms == pytest.approx(11.37) and result.threadpool_threads == 4
    assert result.planned_buffers == [37632] and result.outputs == 1
    fields = latency_fields(result, warmup=1)
    assert fields["samples_s"] == pytest.approx([1.0e-3, 1.2e-3, 1.1e-3, 1.3e-3]) and fields["warmup_left_out"] == 1
    assert "the first 1 of the 5 executions are the warm-up, left out" in fields["timing"]
    assert per_run_estimate(result, 1) == pytest.approx(1.2e-3)  # the median of the measured ones
    # Fewer executions than the warm-up asked for: every sample is kept.
    assert latency_fields(result, warmup=9)["warmup_left_out"] == 0
    assert [timing_event(line) for line in PER_ITERATION.splitlines()].count("iteration") == 5
    assert timing_event(PER_ITERATION.splitlines()[-2]) == "total" and timing_event("OutputX 0: tensor(") is None


def test_missing_iteration_lines_fall_back_to_the_total() -> None:
    """A copy that lost some iteration lines (a log ring buffer that wrapped) is read by its total."""
    cut = "\n".join(line for line in PER_ITERATION.splitlines() if "Iteration 2 of" not in line)
    fields = latency_fields(parse_output(cut), warmup=1)
    assert "samples_s" not in fields and fields["latency"]["mean"] == pytest.approx(6.6e-3 / 5)


def test_logcat_lines_of_the_android_pal() -> None:
    """The android preset's PAL: the bare message, tag ExecuTorch, read with `logcat -v threadtime` or brief."""
    logcat = "\n".join([
        "05-21 10:01:02.100  4321  4321 I ExecuTorch: Model file /data/local/tmp/m.pte is loaded.",
        "05-21 10:01:02.101  4321  4321 I ExecuTorch: Model loaded in 3.500000 ms.",
        "05-21 10:01:02.110  4321  4321 I ExecuTorch: Iteration 1 of 2: 4.000000 ms",
        "05-21 10:01:02.114  4321  4321 I ExecuTorch: Iteration 2 of 2: 3.000000 ms",
        "05-21 10:01:02.114  4321  4321 I ExecuTorch: Model executed successfully 2 time(s) in 7.000000 ms.",
        "05-21 10:01:02.115  1000  1000 I ActivityManager: something else",
        "I/ExecuTorch( 4321): 1 outputs: ",  # "%zu outputs: " ends in a space
    ])
    result = parse_output(logcat)
    assert result.log_lines == 6 and result.iterations_ms == [4.0, 3.0] and result.total_ms == 7.0
    assert result.load_ms == 3.5 and result.outputs == 1
    assert log_message("05-21 10:01:02.115  1000  1000 I ActivityManager: x") is None
    raw = parse_output("Model executed successfully 3 time(s) in 3.300000 ms.\n", bare=True)
    assert raw.executions == 3 and raw.mean_ms == pytest.approx(1.1)


# -- failures, from executor_runner.cpp's messages ------------------------------------------------

def test_execution_failure_aborts() -> None:
    text = (
        "I 00:00:00.000811 executorch:executor_runner.cpp:486] Using method forward\n"
        "E 00:00:00.009120 executorch:method.cpp:1320] Overriding output data pointer allocated by memory plan "
        "is not allowed.\n"
        "F 00:00:00.009130 executorch:executor_runner.cpp:773] In function main(), assert failed (status == "
        "Error::Ok): Execution of method forward failed with status 0x12\n")
    result = parse_output(text)
    assert result.fatal == ("In function main(), assert failed (status == Error::Ok): Execution of method forward "
                            "failed with status 0x12")
    assert len(result.errors) == 2 and result.errors[0].startswith("method.cpp:1320: Overriding")
    assert diagnose(result, 134, text, BINARY) == f"executor_runner aborted: {result.fatal}"


def test_model_that_is_not_a_program() -> None:
    text = ("E 00:00:00.003120 executorch:program.cpp:168] Program identifier 's is ' != expected 'ET12'\n"
            "E 00:00:00.003140 executorch:executor_runner.cpp:473] Failed to parse model file /data/m.pte\n")
    message = diagnose(parse_output(text), 1, text, BINARY)
    assert message == ("executor_runner failed: program.cpp:168: Program identifier 's is ' != expected 'ET12'; "
                       "executor_runner.cpp:473: Failed to parse model file /data/m.pte")


def test_missing_model_file() -> None:
    text = ("E 00:00:00.000210 executorch:file_data_loader.cpp:110] Failed to open /data/m.pte: No such file or "
            "directory (2)\n"
            "F 00:00:00.000230 executorch:executor_runner.cpp:461] In function main(), assert failed "
            "(file_loader.ok()): FileDataLoader::from() failed: 0x22\n")
    result = parse_output(text)
    assert "FileDataLoader::from() failed: 0x22" in str(diagnose(result, 134, text, BINARY))
    assert result.errors[0] == "file_data_loader.cpp:110: Failed to open /data/m.pte: No such file or directory (2)"


def test_refused_flag_and_silent_abort() -> None:
    refused = parse_output("ERROR: unknown command line flag 'print_output'\n")
    assert diagnose(refused, 1, "", BINARY) == \
        "executor_runner refused its command line (unknown command line flag 'print_output')"
    silent = diagnose(parse_output(""), 134, "", BINARY)
    assert silent is not None and silent.startswith("executor_runner aborted (SIGABRT, exit 134) without a log line")
    assert "could not be started (exit 126)" in str(diagnose(parse_output(""), 126, "", BINARY))
    assert diagnose(parse_output("Segmentation fault\n"), 139, "", BINARY) == "executor_runner exited with code 139"
    # Timed, then crashed (writing its outputs): the exit code wins.
    assert diagnose(parse_output(PER_ITERATION), 139, "", BINARY) == \
        "executor_runner exited with code 139 after printing its time"


# -- the command line ------------------------------------------------------------------------------

GFLAGS_HELP = """\
executor_runner: Warning: SetUsageMessage() never called

  Flags from /executorch/examples/portable/executor_runner/executor_runner.cpp:
    -cpu_threads (Number of CPU threads for inference. Defaults to -1, which
      implies we'll use a heuristic to derive the # of performant cores for a
      specific device.) type: int32 default: -1
    -model_path (Model serialized in flatbuffer format.) type: string
      default: "model.pte"
    -num_executions (Number of times to run the model.) type: uint32
      default: 1



  Flags from /executorch/third-party/gflags/src/gflags.cc:
    -flagfile (load flags from file) type: string default: ""
"""


def test_help_lists_the_flags_and_the_command_line_uses_only_those() -> None:
    flags = parse_help(GFLAGS_HELP)
    assert flags == {"cpu_threads", "model_path", "num_executions", "flagfile"}
    assert parse_help("Segmentation fault\n") is None
    argv = runner_argv(BINARY, "/data/local/tmp/convbench/models/m it's.pte", 25, 4, flags, cpu_mask="f0")
    assert argv == ["taskset", "f0", BINARY, "--model_path=/data/local/tmp/convbench/models/m it's.pte",
                    "--num_executions=25", "--cpu_threads=4"]
    newer = runner_argv(BINARY, "m.pte", 3, 1, flags | {"print_output", "method_name"})
    assert newer == [BINARY, "--model_path=m.pte", "--num_executions=3", "--cpu_threads=1", "--print_output=none"]
    assert runner_argv(BINARY, "m.pte", 3, 1, None)[1:] == ["--model_path=m.pte", "--num_executions=3",
                                                            "--cpu_threads=1"]
    assert "cpu_threads" in BASE_FLAGS
    assert runner_argv(BINARY, "m.pte", 3, 2, frozenset({"model_path", "num_executions"})) == \
        [BINARY, "--model_path=m.pte", "--num_executions=3"]


def test_execution_count_follows_benchmark_models_rule() -> None:
    # 1 ms a run: --min-time 0.5 s needs 500 runs, more than the 50 asked for, fewer than 1 s allows.
    assert executions_for(1e-3, 50, 0.5, 1.0) == 500
    # 100 ms a run: 50 runs would take 5 s; --max-time 1 stops at 10.
    assert executions_for(0.1, 50, 0.5, 1.0) == 10
    assert executions_for(5.0, 50, 0.5, 1.0) == 1  # one run longer than --max-time: still one
    assert executions_for(0.0, 7, 0.0, 1.0) == 7
