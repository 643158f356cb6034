#!/usr/bin/env python3
"""A stand-in for TensorFlow Lite's ``benchmark_model`` that really runs the model.

It accepts benchmark_model's flags (``--graph``, ``--num_threads``, ``--num_runs``,
``--warmup_runs``, ``--min_secs``, ``--warmup_min_secs``, ``--max_secs``,
``--use_xnnpack``, ``--use_gpu``, ``--use_nnapi``, ``--report_peak_memory_footprint``,
``--enable_op_profiling``), runs the ``.tflite`` with
``ai_edge_litert.interpreter.Interpreter`` on random input with the same timing loop as
``BenchmarkModel::Run`` and prints what a current LiteRT build prints (``INFO:``-prefixed
lines on stderr, statistics with ``p5``/``median``/``p95``), with the measured numbers.

There is no GPU or NNAPI here: ``--use_gpu``/``--use_nnapi`` create a delegate that takes
no node, and the output says so exactly as benchmark_model does ("Though GPU delegate is
explicitly applied, the model graph will not be executed by the delegate."), so CPU
fallback detection can be tested.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import threading
import time

LOG_LOCK = threading.Lock()


def log(level: str, message: str = "") -> None:
    with LOG_LOCK:
        sys.stderr.write(f"{level}: {message}\n")
        sys.stderr.flush()


def info(message: str) -> None:
    log("INFO", message)


def fmt(value: float) -> str:
    """``std::ostream << double`` with the default precision (6 significant digits)."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return format(float(value), "g")


class Stat:
    """tflite::Stat<int64_t> / StatWithPercentiles, printed as the C++ prints them."""

    def __init__(self) -> None:
        self.values: list[int] = []

    def update(self, value: int) -> None:
        self.values.append(int(value))

    @property
    def count(self) -> int:
        return len(self.values)

    def first(self) -> int:
        return self.values[0] if self.values else 0

    def avg(self) -> float:
        return sum(self.values) / len(self.values) if self.values else float("nan")

    def std(self) -> int:
        if not self.values or min(self.values) == max(self.values):
            return 0
        mean = self.avg()
        variance = sum(v * v for v in self.values) / len(self.values) - mean * mean
        return int(math.sqrt(max(variance, 0.0)))

    def percentile(self, p: int) -> int:
        if not self.values:
            return 0
        ordered = sorted(self.values)
        if p == 100:
            return ordered[-1]
        return ordered[len(ordered) * p // 100]

    def __str__(self) -> str:
        v = self.values
        if not v:
            text = "count=0"
        elif min(v) == max(v):
            text = f"count={len(v)} curr={v[-1]}" + ("(all same)" if len(v) > 1 else "")
        else:
            text = (
                f"count={len(v)} first={v[0]} curr={v[-1]} min={min(v)} max={max(v)} "
                f"avg={fmt(self.avg())} std={self.std()}"
            )
        return f"{text} p5={self.percentile(5)} median={self.percentile(50)} p95={self.percentile(95)}"


FLAGS: dict[str, tuple[type, object]] = {
    "graph": (str, ""),
    "num_threads": (int, -1),
    "num_runs": (int, 50),
    "warmup_runs": (int, 1),
    "min_secs": (float, 1.0),
    "warmup_min_secs": (float, 0.5),
    "max_secs": (float, 150.0),
    "run_delay": (float, -1.0),
    "use_xnnpack": (bool, False),
    "use_gpu": (bool, False),
    "use_nnapi": (bool, False),
    "report_peak_memory_footprint": (bool, False),
    "memory_footprint_check_interval_ms": (int, 50),
    "enable_op_profiling": (bool, False),
    "verbose": (bool, False),
}

LABELS = [
    ("num_runs", "Min num runs"),
    ("min_secs", "Min runs duration (seconds)"),
    ("max_secs", "Max runs duration (seconds)"),
    ("run_delay", "Inter-run delay (seconds)"),
    ("num_threads", "Num threads"),
    ("warmup_runs", "Min warmup runs"),
    ("warmup_min_secs", "Min warmup runs duration (seconds)"),
    ("report_peak_memory_footprint", "Report the peak memory footprint"),
    ("memory_footprint_check_interval_ms", "Memory footprint check interval (ms)"),
    ("graph", "Graph"),
    ("enable_op_profiling", "Enable op profiling"),
    ("use_gpu", "Use gpu"),
    ("use_nnapi", "Use NNAPI"),
    ("use_xnnpack", "Use xnnpack"),
]


def parse_flags(argv: list[str]) -> tuple[dict[str, object], set[str], list[str]]:
    values = {name: default for name, (_kind, default) in FLAGS.items()}
    given: set[str] = set()
    unconsumed: list[str] = []
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            unconsumed.append(arg)
            continue
        name, _, text = arg[2:].partition("=")
        if name not in FLAGS:
            unconsumed.append(arg)
            continue
        kind = FLAGS[name][0]
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                values[name] = text.lower() in ("true", "1")
            else:
                values[name] = kind(text)
        except ValueError:
            log("ERROR", f"Failed to parse the value of --{name}: '{text}'")
            sys.exit(1)
        given.add(name)
    return values, given, unconsumed


def show(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return fmt(value)
    return str(value)


def rss_mb() -> tuple[int, int]:
    """(rss, shared) in MB from /proc/self/statm, as GetRssStats does."""
    try:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        return (int(fields[1]) * page) >> 20, (int(fields[2]) * page) >> 20
    except (OSError, IndexError, ValueError):
        return 0, 0


def footprint_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class PeakMonitor(threading.Thread):
    def __init__(self, interval_ms: int) -> None:
        super().__init__(daemon=True)
        self.interval = max(interval_ms, 1) / 1000.0
        self.peak_mb = 0.0
        self.stop_event = threading.Event()

    def sample(self) -> None:
        try:
            with open("/proc/self/statm") as f:
                pages = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            return
        self.peak_mb = max(self.peak_mb, pages * os.sysconf("SC_PAGE_SIZE") / (1024.0 * 1024.0))

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)


def delegation(details: list[dict]) -> tuple[int, int, int, int]:
    """(delegated nodes, original nodes, delegate kernels, partitions) from the ops list."""
    originals = [d for d in details if d["op_name"] != "DELEGATE"]
    kernels = [d for d in details if d["op_name"] == "DELEGATE"]
    producer = {}
    for d in originals:
        for t in d["outputs"]:
            producer[int(t)] = d["index"]
    inside: set[int] = set()
    for k in kernels:
        boundary = {int(t) for t in k["inputs"]}
        stack = [int(t) for t in k["outputs"]]
        seen: set[int] = set()
        while stack:
            tensor = stack.pop()
            if tensor in seen or tensor in boundary or tensor not in producer:
                continue
            seen.add(tensor)
            node = producer[tensor]
            inside.add(node)
            stack.extend(int(t) for t in originals[node]["inputs"])
    runs = 0
    previous = None
    for d in originals:
        delegated = d["index"] in inside
        if d["index"] not in inside and previous is not False:
            runs += 1
        previous = delegated
    return len(inside), len(originals), len(kernels), len(kernels) + runs


def main(argv: list[str]) -> int:
    params, given, unconsumed = parse_flags(argv)
    info("STARTING!")
    if unconsumed:
        log("WARN", f"Unconsumed cmdline flags: {' '.join(unconsumed)}")
    verbose = bool(params["verbose"])
    info(f"Log parameter values verbosely: [{show(verbose)}]")
    for name, label in LABELS:
        if verbose or name in given:
            info(f"{label}: [{show(params[name])}]")
    threads = int(params["num_threads"])  # type: ignore[arg-type]
    if "num_threads" in given or verbose:
        info(f"#threads used for CPU inference: [{threads}]")

    graph = str(params["graph"])
    if not graph:
        log("ERROR", "Please specify the name of your TF Lite input file with --graph")
        return 1
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    monitor = None
    if params["report_peak_memory_footprint"]:
        monitor = PeakMonitor(int(params["memory_footprint_check_interval_ms"]))  # type: ignore[arg-type]
        monitor.start()
    try:
        model_size_mb = os.path.getsize(graph) / 1e6
    except OSError:
        model_size_mb = 0.0
    start_kb = footprint_kb()
    init_start = time.perf_counter_ns()
    if not os.path.exists(graph):
        log("ERROR", f"Could not open '{graph}'.")
        log("ERROR", f"Failed to mmap model {graph}")
        return 1
    info(f"Loaded model {graph}")
    use_xnnpack = "use_xnnpack" not in given or bool(params["use_xnnpack"])
    resolver = OpResolverType.AUTO if use_xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = Interpreter(
            model_path=graph,
            num_threads=threads if threads > 0 else None,
            experimental_op_resolver_type=resolver,
        )
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        log("ERROR", f"Failed to construct interpreter: {exc}")
        return 1

    explicit = [name for name in ("use_gpu", "use_nnapi") if params[name]]
    if params["use_xnnpack"] and "use_xnnpack" in given:
        explicit.append("use_xnnpack")
    for name in explicit:
        if name == "use_gpu":
            info("Created TensorFlow Lite delegate for GPU.")
            info("GPU delegate created.")
        elif name == "use_nnapi":
            info("Created TensorFlow Lite delegate for NNAPI.")
            info("NNAPI delegate created.")
        else:
            info("XNNPACK delegate created.")
    if explicit:
        info(f"Going to apply {len(explicit)} delegates one after another.")
    details = interpreter._get_ops_details()
    delegated, total, kernels, partitions = delegation(details)
    for name in explicit:
        if name == "use_gpu":
            info("Though GPU delegate is explicitly applied, the model graph will not be executed by the delegate.")
        elif name == "use_nnapi":
            info("Though NNAPI delegate is explicitly applied, the model graph will not be executed by the delegate.")
    if use_xnnpack and kernels:
        log(
            "VERBOSE",
            f"Replacing {delegated} out of {total} node(s) with delegate (TfLiteXNNPackDelegate) node, "
            f"yielding {partitions} partitions for the whole graph.",
        )
        if "use_xnnpack" in explicit:
            if kernels == 1 and delegated == total:
                info(
                    "Explicitly applied XNNPACK delegate, and the model graph will be completely executed by the "
                    "delegate."
                )
            else:
                info(
                    "Explicitly applied XNNPACK delegate, and the model graph will be partially executed by the "
                    f"delegate w/ {kernels} delegate kernels."
                )

    rng = np.random.default_rng(0)
    inputs = []
    for detail in interpreter.get_input_details():
        dtype = np.dtype(detail["dtype"])
        shape = [int(s) for s in detail["shape"]]
        if np.issubdtype(dtype, np.floating):
            data = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
        elif dtype == np.bool_:
            data = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            info_ = np.iinfo(dtype)
            data = rng.integers(max(info_.min, -128), min(info_.max, 127), size=shape, endpoint=True).astype(dtype)
        inputs.append((detail["index"], data))

    init_us = (time.perf_counter_ns() - init_start) // 1000
    init_kb = footprint_kb() - start_kb
    if model_size_mb > 0:
        info(f"The input model file size (MB): {fmt(model_size_mb)}")
    else:
        log("WARN", "Failed to get the input model file size.")
    info(f"Initialized session in {fmt(init_us / 1e3)}ms.")

    def run(min_runs: int, min_secs: float, max_secs: float) -> Stat:
        info(
            f"Running benchmark for at least {min_runs} iterations and at least {fmt(min_secs)} seconds but "
            f"terminate if exceeding {fmt(max_secs)} seconds."
        )
        stat = Stat()
        now = time.perf_counter_ns() // 1000
        min_finish = now + int(min_secs * 1e6)
        max_finish = now + int(max_secs * 1e6)
        delay = float(params["run_delay"])  # type: ignore[arg-type]
        runs = 0
        while (runs < min_runs or now < min_finish) and now <= max_finish:
            for index, data in inputs:
                interpreter.set_tensor(index, data)
            begin = time.perf_counter_ns()
            interpreter.invoke()
            end = time.perf_counter_ns()
            stat.update((end - begin) // 1000)
            if delay > 0:
                time.sleep(delay)
            now = time.perf_counter_ns() // 1000
            runs += 1
        info(f"{stat}\n")  # the tool logs the statistic followed by std::endl: a blank line
        return stat

    warmup = run(int(params["warmup_runs"]), float(params["warmup_min_secs"]), float(params["max_secs"]))  # type: ignore[arg-type]
    regular = run(int(params["num_runs"]), float(params["min_secs"]), float(params["max_secs"]))  # type: ignore[arg-type]
    overall_kb = footprint_kb() - start_kb
    if monitor is not None:
        monitor.stop_event.set()
        monitor.join()
        monitor.sample()

    info(
        f"Inference timings in us: Init: {init_us}, First inference: {warmup.first()}, "
        f"Warmup (avg): {fmt(warmup.avg())}, Inference (avg): {fmt(regular.avg())}"
    )
    info(
        "Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the "
        "actual memory footprint of the model at runtime. Take the information at your discretion."
    )
    init_mb, overall_mb = fmt(init_kb / 1024.0), fmt(overall_kb / 1024.0)
    info(f"Memory footprint delta from the start of the tool (MB): init={init_mb} overall={overall_mb}")
    if monitor is not None and monitor.peak_mb > 0:
        info(f"Overall peak memory footprint (MB) via periodic monitoring: {fmt(monitor.peak_mb)}")
        rss, shared = rss_mb()
        info("Memory status at the end of exeution:")
        info(f"- VmRSS              : {rss} MB")
        info(f"+ RssAnnon           : {rss - shared} MB")
        info(f"+ RssFile + RssShmem : {shared} MB")

    if params["enable_op_profiling"]:
        nodes = [d for d in interpreter._get_ops_details() if d["op_name"] == "DELEGATE"] or [
            d for d in interpreter._get_ops_details() if d["op_name"] != "DELEGATE"
        ]
        info("Operator-wise Profiling Info for Regular Benchmark Runs:")
        info("============================== Run Order ==============================")
        info(
            "\t             [node type]\t          [first]\t  [avg ms]\t      [%]\t    [cdf%]\t  [mem KB]"
            "\t[times called]\t[Name]"
        )
        if len(nodes) == 1:
            # one kernel runs the whole graph: its time is the invoke time
            kind = "TfLiteXNNPackDelegate" if nodes[0]["op_name"] == "DELEGATE" else nodes[0]["op_name"]
            info(
                f"\t{kind:>24}\t{regular.first() / 1e3:17.3f}\t{regular.avg() / 1e3:10.3f}\t{100.0:8.3f}%\t"
                f"{100.0:8.3f}%\t{0.0:10.3f}\t{1:9d}\t[{nodes[0]['index']}]"
            )
        log("INFO", "")
        info(f"Timings (microseconds): {str(regular).split(' p5=')[0]}")
        info("Memory (bytes): count=0")
        info(f"{len(nodes)} nodes observed\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
