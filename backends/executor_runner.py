"""ExecuTorch's ``executor_runner``: the command line convbench gives it, and what it prints.

Facts from ``examples/portable/executor_runner/executor_runner.cpp`` (pytorch/executorch, read
at v0.1.0, v0.6.0, v1.0.0, v1.2.0, v1.3.0 and main; the XNNPACK build of older trees is called
``xnn_executor_runner``):

* flags (gflags, ``--name=value``): ``--model_path``; ``--num_executions`` (v0.6 on, default
  1); ``--cpu_threads`` (v0.6 on, -1: a heuristic count of performant cores; it only acts in
  builds with the thread pool, which then print ``Resetting threadpool with num threads = N``);
  ``--etdump_path`` (event-tracer builds); ``--inputs``/``--output_file`` (v1.0 on);
  ``--method_name`` and ``--print_output`` (v1.3 on, with the per-iteration lines).  An unknown
  flag stops it (``ERROR: unknown command line flag 'x'``, exit 1); ``--help`` lists every flag
  (``    -cpu_threads (Number of CPU threads ...) type: int32 default: -1``) and exits 1.
* what runs: the program is loaded and its method set up (``Model loaded in X ms.`` covers
  both, v1.3 on), then ``--num_executions`` times: inputs prepared (all ones unless
  ``--inputs``) outside the timer, and ``method->execute()`` between two clock reads.  No
  execution is a warm-up: all are counted.
* what it prints (``ET_LOG``): ``Model executed successfully N time(s) in X ms.``: the sum of
  the N ``execute()`` times (v0.6 on; before, ``Model executed successfully.`` and no time);
  ``Iteration i of N: X ms`` for each execution (v1.3 on); the output tensors on stdout
  (``OutputX 0: tensor(...)``, ``Output 0:`` before v1.0).
* where ``ET_LOG`` goes: the posix PAL writes ``I 00:00:00.043703
  executorch:executor_runner.cpp:379] message`` to stderr; the Android PAL (ExecuTorch's
  ``android`` CMake preset) sends the bare message to logcat, tag ``ExecuTorch``; and a build
  without ``-DEXECUTORCH_ENABLE_LOGGING=ON`` (the default of Release builds) prints no log line
  at all: only the output tensors, and no time.
* failures: ``ET_CHECK_MSG`` logs ``F ... In function main(), assert failed (cond): ...`` and
  aborts (SIGABRT: exit 134 through a shell); an unparsable program logs ``Failed to parse model
  file X`` and exits 1.

Per-run samples exist only when the build prints the per-iteration lines; otherwise the one
number is the total, and its mean over the N executions is all there is.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
LOGCAT_TAG = "ExecuTorch"
LOGGING_HELP = (
    "rebuild it with -DEXECUTORCH_ENABLE_LOGGING=ON (Release builds leave ET_LOG out, and with it every time "
    "the runner measures)")
PAL_HELP = (
    "builds from ExecuTorch's `android` CMake preset log to logcat (tag ExecuTorch): add "
    "-DEXECUTORCH_PAL_DEFAULT=posix to print on the terminal")
BUILD_HELP = (
    "build it with -DEXECUTORCH_BUILD_EXECUTOR_RUNNER=ON -DEXECUTORCH_BUILD_XNNPACK=ON "
    "-DEXECUTORCH_ENABLE_LOGGING=ON -DEXECUTORCH_PAL_DEFAULT=posix for the phone's ABI (ExecuTorch >= 0.6; the "
    "per-run lines need >= 1.3) and set executor_runner in devices.yaml to its path on this computer (it is "
    "pushed) or on the device")
# Flags of every runner that prints a time (v0.6 on), assumed when --help lists nothing.
BASE_FLAGS = frozenset({"model_path", "num_executions", "cpu_threads"})

# -- line prefixes -------------------------------------------------------------------------------
# posix PAL: "%c %02u:%02u:%02u.%06lu executorch:%s:%zu] %s"; some PALs leave the time out.
_POSIX = re.compile(r"^(?P<level>[DIEF]) (?:(?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d\.\d+) )?"
                    r"executorch:(?P<where>[^\s\]]+)\] ?(?P<msg>.*)$")
_LOGCAT_THREADTIME = re.compile(
    r"^(?:\d{4}-)?\d\d-\d\d\s+\d\d:\d\d:\d\d(?:\.\d+)?\s+(?P<pid>\d+)\s+\d+\s+(?P<level>[VDIWEFA])\s+"
    rf"{LOGCAT_TAG}\s*: ?(?P<msg>.*)$")
_LOGCAT_BRIEF = re.compile(rf"^(?P<level>[VDIWEFA])/{LOGCAT_TAG}\s*(?:\(\s*(?P<pid>\d+)\))?: ?(?P<msg>.*)$")

# -- messages --------------------------------------------------------------------------------------
_TOTAL = re.compile(rf"^Model executed successfully (?P<n>\d+) time\(s\) in (?P<ms>{NUMBER}) ms\.?$")
_UNTIMED = re.compile(r"^Model executed successfully\.?$")
_ITERATION = re.compile(rf"^Iteration (?P<i>\d+) of (?P<n>\d+): (?P<ms>{NUMBER}) ms$")
_LOADED_IN = re.compile(rf"^Model loaded in (?P<ms>{NUMBER}) ms\.?$")
_THREADPOOL = re.compile(r"^Resetting threadpool with num threads = (?P<n>-?\d+)")
_MODEL_FILE = re.compile(r"^Model file (?P<path>.*) is loaded\.$")
_METHOD = re.compile(r"^Using method (?P<name>\S+)")
_BUFFER = re.compile(r"^Setting up (?:CPU |device )?planned buffer (?P<id>\d+), size (?P<size>\d+)")
_OUTPUTS = re.compile(r"^(?P<n>\d+) outputs:")
_ETDUMP = re.compile(r"^ETDump written to file '(?P<path>.*)'\.$")
_TENSOR = re.compile(r"^OutputX? \d+: ")
_TOOL_ERROR = re.compile(r"^ERROR: (?P<msg>.*)$")  # gflags: "ERROR: unknown command line flag 'x'"
_HELP_FLAG = re.compile(r"^\s+-(?P<name>\w+) \(")


@dataclass
class RunnerResult:
    """What one executor_runner process printed."""

    executions: int | None = None  # N of the total line
    total_ms: float | None = None  # the sum of the N execute() times
    iterations_ms: list[float] = field(default_factory=list)  # one per execution (v1.3 on)
    # When each Iteration line was logged (seconds since the runner started, the posix PAL's stamp):
    # their spacing is the loop's wall time per execution, inputs and logging included.
    iteration_stamps_s: list[float] = field(default_factory=list)
    load_ms: float | None = None  # program load + method setup (v1.3 on)
    threadpool_threads: int | None = None  # what the thread pool was reset to, when the build has one
    method: str | None = None
    model_path: str | None = None
    planned_buffers: list[int] = field(default_factory=list)  # bytes
    outputs: int | None = None
    etdump_path: str | None = None
    log_lines: int = 0  # ET_LOG lines read
    tensor_lines: int = 0  # "OutputX 0: tensor(...)" lines on stdout
    untimed_success: bool = False  # "Model executed successfully." (before v0.6): ran, no time
    errors: list[str] = field(default_factory=list)  # E and F messages, "where: message"
    fatal: str | None = None  # the first F message (an ET_CHECK that aborted)
    tool_errors: list[str] = field(default_factory=list)  # gflags' own complaints

    @property
    def mean_ms(self) -> float | None:
        if self.total_ms is None or not self.executions:
            return None
        return self.total_ms / self.executions

    @property
    def timed(self) -> bool:
        return self.total_ms is not None and bool(self.executions)


def log_message(line: str) -> tuple[str, str, str] | None:
    """(level, where, message) of one ET_LOG line, on stderr or from logcat; None for anything else."""
    line = line.rstrip("\r\n")
    match = _POSIX.match(line)
    if match:
        return match["level"], match["where"], match["msg"]
    return _logcat_message(line)


def _stamp(line: str) -> float | None:
    """Seconds since the runner started, from a posix-PAL line's ``HH:MM:SS.uuuuuu``."""
    match = _POSIX.match(line.rstrip("\r\n"))
    if match is None or match["h"] is None:
        return None
    return int(match["h"]) * 3600 + int(match["m"]) * 60 + float(match["s"])


def _logcat_message(line: str) -> tuple[str, str, str] | None:
    for pattern in (_LOGCAT_THREADTIME, _LOGCAT_BRIEF):
        match = pattern.match(line)
        if match:
            level = {"V": "D", "W": "I", "A": "F"}.get(match["level"], match["level"])
            return level, "logcat", match["msg"]
    return None


def parse_output(text: str, bare: bool = False) -> RunnerResult:
    """Everything executor_runner printed (stdout and stderr, or logcat).

    ``bare``: lines are messages without any prefix (``logcat -v raw``).
    """
    result = RunnerResult()
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        parsed = ("I", "logcat", line.strip()) if bare else log_message(line)
        if parsed is None:
            if _TENSOR.match(line):
                result.tensor_lines += 1
            elif (tool := _TOOL_ERROR.match(line.strip())) is not None:
                result.tool_errors.append(tool["msg"])
            continue
        level, where, message = parsed
        message = message.strip()
        result.log_lines += 1
        if level in ("E", "F"):
            result.errors.append(f"{where}: {message}")
            if level == "F" and result.fatal is None:
                result.fatal = message
            continue
        _read_message(message, result)
        if _ITERATION.match(message) and (stamp := _stamp(line)) is not None:
            result.iteration_stamps_s.append(stamp)
    return result


def _read_message(message: str, result: RunnerResult) -> None:
    if (m := _ITERATION.match(message)) is not None:
        result.iterations_ms.append(float(m["ms"]))
    elif (m := _TOTAL.match(message)) is not None:
        result.executions, result.total_ms = int(m["n"]), float(m["ms"])
    elif _UNTIMED.match(message):
        result.untimed_success = True
    elif (m := _LOADED_IN.match(message)) is not None:
        result.load_ms = float(m["ms"])
    elif (m := _THREADPOOL.match(message)) is not None:
        result.threadpool_threads = int(m["n"])
    elif (m := _MODEL_FILE.match(message)) is not None:
        result.model_path = m["path"]
    elif (m := _METHOD.match(message)) is not None:
        result.method = m["name"]
    elif (m := _BUFFER.match(message)) is not None:
        result.planned_buffers.append(int(m["size"]))
    elif (m := _OUTPUTS.match(message)) is not None:
        result.outputs = int(m["n"])
    elif (m := _ETDUMP.match(message)) is not None:
        result.etdump_path = m["path"]


def timing_event(line: str) -> str | None:
    """``"iteration"`` or ``"total"`` for the lines that end an execution or the loop (energy windows)."""
    parsed = log_message(line)
    if parsed is None:
        return None
    message = parsed[2].strip()
    if _ITERATION.match(message):
        return "iteration"
    if _TOTAL.match(message):
        return "total"
    return None


def parse_help(text: str) -> frozenset[str] | None:
    """The flags ``--help`` lists (gflags: ``    -name (description) type: .. default: ..``); None if none."""
    names = {m["name"] for line in text.splitlines() if (m := _HELP_FLAG.match(line)) is not None}
    return frozenset(names) if names else None


def runner_argv(binary: str, model: str, executions: int, threads: int, flags: frozenset[str] | None,
                cpu_mask: str | None = None) -> list[str]:
    """executor_runner's argument vector (quote it with ``backends.adb.quote_args``).

    ``flags`` is what its ``--help`` listed (None: unknown, the v0.6 set is assumed):
    ``--cpu_threads`` and ``--print_output=none`` only when it has them.
    """
    known = flags if flags is not None else BASE_FLAGS
    argv = [binary, f"--model_path={model}", f"--num_executions={executions}"]
    if "cpu_threads" in known:
        argv.append(f"--cpu_threads={threads}")
    if "print_output" in known:
        argv.append("--print_output=none")  # the output tensors are all-ones results: not worth the adb bytes
    if cpu_mask:
        argv = ["taskset", cpu_mask, *argv]
    return argv


def executions_for(per_run_s: float, num_runs: int, min_seconds: float, max_seconds: float,
                   max_runs: int | None = None) -> int:
    """How many measured executions match benchmark_model's rule for a runner that only takes a count.

    benchmark_model runs until it did ``num_runs`` and ``min_seconds`` passed, unless
    ``max_seconds`` passed first; with one pass of the loop lasting ``per_run_s`` that is this
    count (never more than ``max_runs``).
    """
    per_run_s = max(per_run_s, 1e-7)
    wanted = max(num_runs, math.ceil(min_seconds / per_run_s))
    count = max(1, min(wanted, math.floor(max_seconds / per_run_s) or 1))
    return min(count, max_runs) if max_runs else count


def per_run_estimate(result: RunnerResult, warmup: int) -> float | None:
    """Seconds per execution: the median of the measured iterations, else the mean of the total."""
    measured = result.iterations_ms[warmup:] or result.iterations_ms
    if measured:
        ordered = sorted(measured)
        return ordered[len(ordered) // 2] * 1e-3
    mean = result.mean_ms
    return mean * 1e-3 if mean is not None else None


def loop_seconds_per_execution(result: RunnerResult, warmup: int) -> float | None:
    """The runner's loop time per execution (inputs, execute, logging), from the stamps of its
    Iteration lines; None without at least two measured ones."""
    stamps = result.iteration_stamps_s[warmup:] if len(result.iteration_stamps_s) > warmup + 1 \
        else result.iteration_stamps_s
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
    return gaps[len(gaps) // 2] if gaps else None


def latency_fields(result: RunnerResult, warmup: int) -> dict[str, Any]:
    """The record's timing: ``samples_s`` (per-run samples) or ``latency`` (the mean only), and what it covers.

    Returns ``{"samples_s": [...]}`` or ``{"latency": {...}}``, plus ``timing`` (the words) and
    ``warmup_left_out`` (executions not in the numbers).
    """
    executions = result.executions or len(result.iterations_ms)
    timer = ("executor_runner's clock around method->execute() alone (inputs, all ones, are prepared outside "
             "it; loading is not in it)")
    if result.iterations_ms and len(result.iterations_ms) == executions:
        left_out = warmup if len(result.iterations_ms) > warmup else 0
        samples = [ms * 1e-3 for ms in result.iterations_ms[left_out:]]
        return {"samples_s": samples, "warmup_left_out": left_out,
                "timing": f"{len(samples)} per-execution times printed by executor_runner (`Iteration i of N: X "
                          f"ms`), {timer}; the first {left_out} of the {executions} executions are the warm-up, "
                          "left out"}
    mean = result.mean_ms
    assert mean is not None
    return {"latency": {"n": executions, "median": mean * 1e-3, "mean": mean * 1e-3, "median_is_mean": True,
                        "statistic": f"mean of {executions} executions (executor_runner prints only their total)"},
            "warmup_left_out": 0,
            "timing": f"the total of {executions} executions printed by executor_runner (`Model executed "
                      f"successfully {executions} time(s) in X ms`), divided by {executions}: {timer}; this "
                      "build prints no per-execution times (ExecuTorch >= 1.3 does), so there are no per-run "
                      "samples (no median, spread or confidence interval), and no execution is left out as a "
                      "warm-up: the first, cold ones are in the mean"}


def diagnose(result: RunnerResult, code: int | None, text: str, binary: str) -> str | None:
    """Why this output carries no time (a message saying what to do), or None when it does."""
    if result.timed:
        if code in (0, None):
            return None
        why = f": {result.fatal}" if result.fatal else ""
        return f"executor_runner exited with code {code} after printing its time{why}"
    if result.tool_errors:
        return f"executor_runner refused its command line ({'; '.join(result.tool_errors[:3])})"
    if result.fatal:
        return f"executor_runner aborted: {result.fatal}"
    if result.errors:
        return f"executor_runner failed: {'; '.join(result.errors[-3:])}"
    if code not in (0, None):
        if code == 134:
            return "executor_runner aborted (SIGABRT, exit 134) without a log line: " + LOGGING_HELP
        if code in (126, 127):
            return f"{binary} could not be started (exit {code}): is it built for this phone's ABI? {BUILD_HELP}"
        return f"executor_runner exited with code {code}"
    if result.untimed_success:
        return (f"{binary} is older than ExecuTorch 0.6: it prints `Model executed successfully.` without a time "
                f"(and has no --num_executions); {BUILD_HELP}")
    if result.log_lines == 0:
        where = ("it printed the output tensors but no log line" if result.tensor_lines
                 else "it printed no log line")
        return f"{binary} printed no time: {where}; {LOGGING_HELP}, or {PAL_HELP}"
    if result.executions is None:
        return "executor_runner's output stops before `Model executed successfully N time(s) in X ms` " \
               "(cut short: killed, or still executing)"
    return "executor_runner printed no time"
