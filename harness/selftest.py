"""`harness selftest`: benchmarks of the instrument itself.

1. agreement: convbench's median vs ``torch.utils.benchmark.Timer.blocked_autorange`` (torch)
   and vs a bare ``perf_counter_ns`` loop around ``session.run`` (ONNX Runtime) and
   ``interpreter.invoke`` (TFLite), on the same artifact, threads and machine;
2. overhead: per-iteration time the runner's loop adds over a bare loop on a trivial model;
3. quick-suite wall time with a warm artifact cache;
4. samples needed by adaptive stopping vs a fixed 1000-sample run, with both CI widths;
5. block: a block-timed layer's median vs ``timeit`` on the same loaded model, interleaved;
6. memory: a job's peak RSS (measured right after a large model, as in a real batch) vs a
   fresh process that loads the same model alone;
7. energy: J/inference under a constant-power sysfs sensor vs that power x per-call latency.

Each reference measurement runs in its own fresh subprocess, as the runner does, and the
two sides alternate (A B A B) so slow drift of a shared machine hits both alike.
These are measurements, not pass/fail tests: goals are printed beside the figures.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from backends import runner
from backends.base import Job, TimingPolicy

AGREEMENT_WORKLOADS = {
    "torch": ["mobilenet_v2-1.0-224", "conv-standard-M128-N128-k3-x56-s1"],
    "onnxruntime": ["mobilenet_v2-1.0-224", "conv-standard-M128-N128-k3-x56-s1"],
    "tflite": ["mobilenet_v2-1.0-224", "conv-standard-M128-N128-k3-x56-s1"],
}
TRIVIAL = "conv-pointwise-M1-N1-k1-x1-s1-nobn"
PARTS = ("agreement", "block", "memory", "energy", "overhead", "adaptive", "quick")  # in the order they run
BLOCK_TIMED = "conv-depthwise-M32-N32-k3-x28-s1"  # ~10-30 us per call: timed in blocks
MEMORY_WORKLOAD = "mobilenet_v2-1.0-224"
MEMORY_BEFORE = "mobilenet_v1_conv-1.0-224"  # the large model measured just before, in the same batch
CONSTANT_WATTS = 10.0


# ---------------------------------------------------------------- reference loops (subprocess side)
def _bare_call(backend: str, model: str, array: Any) -> Any:
    """``session.run`` or ``interpreter.invoke`` with no convbench code around it."""
    if backend == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
        feeds = {session.get_inputs()[0].name: array}
        run = session.run
        return lambda: run(None, feeds)

    interpreter = runner._import_tflite()[0](model_path=model, num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], array)
    return interpreter.invoke


def _reference(backend: str, model: str, input_path: str, seconds: float) -> dict[str, Any]:
    import numpy as np


    array = np.load(input_path)
    if backend == "torch":
        import torch.utils.benchmark as tb

        call = runner.TorchRuntime({"threads": 1}).load(model, array)
        timer = tb.Timer(stmt="call()", globals={"call": call}, num_threads=1)
        measurement = timer.blocked_autorange(min_run_time=seconds)
        return {"median_s": measurement.median, "n": len(measurement.times), "method": "blocked_autorange"}
    call = _bare_call(backend, model, array)
    for _ in range(5):
        call()
    median_s, n = _bare_loop(call, seconds)
    return {"median_s": median_s, "n": n, "method": "perf_counter_ns loop"}


def _bare_loop(call: Any, seconds: float) -> tuple[float, int]:
    """Median seconds per call of a bare perf_counter_ns loop, and the sample count."""
    now = time.perf_counter_ns
    samples = []
    end = now() + int(seconds * 1e9)
    while now() < end:
        t0 = now()
        call()
        samples.append(now() - t0)
    return statistics.median(samples) / 1e9, len(samples)


def _interleaved(backend: str, model: str, input_path: str, rounds: int, slice_s: float) -> dict[str, Any]:
    """convbench's timed loop and the reference, alternating in one process on one loaded model.

    Separate processes on a shared VM differ by up to +-25% from run to run (hypervisor
    noise), which would swamp a 3% comparison; alternating short slices in one process
    exposes both loops to the same drift, so only the timing method differs.
    """
    import numpy as np


    array = np.load(input_path)
    runtime = runner.RUNTIMES[backend]({"threads": 1})
    call = runtime.load(model, array)
    if backend == "torch":
        import torch.utils.benchmark as tb

        timer = tb.Timer(stmt="call()", globals={"call": call}, num_threads=1)

        def reference() -> float:
            return timer.blocked_autorange(min_run_time=slice_s).median
    else:
        bare = _bare_call(backend, model, array) if backend == "onnxruntime" else call  # invoke itself

        def reference() -> float:
            return _bare_loop(bare, slice_s)[0]

    policy = {"warmup_runs": 3, "warmup_seconds": 0.1, "min_runs": 5, "min_seconds": slice_s,
              "max_seconds": slice_s, "target_ci_rel_width": 0.0}
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(statistics.median(runner.measure(call, policy)["samples_s"]))
        theirs.append(reference())
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return {"convbench_median_s": statistics.median(ours), "reference_median_s": statistics.median(theirs),
            "ratio": statistics.median(ratios), "ratios": ratios}


def _overhead(model: str, input_path: str, iterations: int) -> dict[str, Any]:
    """Per-iteration wall time of the runner's timed loop vs a bare loop, same call."""
    import numpy as np


    array = np.load(input_path)
    interpreter = runner._import_tflite()[0](model_path=model, num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], array)
    call = interpreter.invoke
    policy = {"warmup_runs": 100, "warmup_seconds": 0, "min_runs": iterations, "max_runs": iterations,
              "min_seconds": 0, "max_seconds": 1000, "target_ci_rel_width": 0.0}
    bare, ours = [], []
    for _ in range(5):  # alternate, keep the best of each (least disturbed by the machine)
        now = time.perf_counter_ns
        for _ in range(100):
            call()
        start = now()
        for _ in range(iterations):
            call()
        bare.append((now() - start) / iterations)
        result = runner.measure(call, policy)
        ours.append(result["loop_wall_s"] * 1e9 / (len(result["samples_s"]) * result["block_size"]))
    return {"bare_ns": min(bare), "runner_ns": min(ours), "overhead_ns": min(ours) - min(bare),
            "iterations": iterations}


def _block_vs_timeit(backend: str, model: str, input_path: str, rounds: int, slice_s: float) -> dict[str, Any]:
    """The runner's block-timed median and ``timeit`` on one loaded model, alternating."""
    import timeit

    import numpy as np


    call = runner.RUNTIMES[backend]({"threads": 1}).load(model, np.load(input_path))
    policy = {"warmup_runs": 3, "warmup_seconds": 0.1, "min_runs": 5, "min_seconds": slice_s,
              "max_seconds": slice_s, "target_ci_rel_width": 0.0}
    timer = timeit.Timer(call)
    number, _ = timer.autorange()  # calls per timeit repetition lasting >= 0.2 s
    number = max(1, number // 4)  # ~50 ms repetitions: enough of them in a slice for a median
    ours, theirs, blocks = [], [], set()
    for _ in range(rounds):
        result = runner.measure(call, policy)
        blocks.add(result["block_size"])
        ours.append(statistics.median(result["samples_s"]))
        repeats = max(5, int(slice_s / max(1e-9, ours[-1] * number)))
        theirs.append(statistics.median(timer.repeat(repeat=repeats, number=number)) / number)
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return {"convbench_median_s": statistics.median(ours), "timeit_median_s": statistics.median(theirs),
            "ratio": statistics.median(ratios), "ratios": ratios, "block_sizes": sorted(blocks),
            "timeit_number": number}


def _fresh_peak(backend: str, model: str, input_path: str, inferences: int) -> dict[str, Any]:
    """Peak RSS of a process that imports one runtime, loads one model and runs it; nothing else."""
    import numpy as np

    array = np.load(input_path)
    if backend == "torch":
        import torch

        torch.set_num_threads(1)
        module = torch.export.load(model).module()
        tensor = torch.from_numpy(array)
        with torch.inference_mode():
            for _ in range(inferences):
                module(tensor)
    else:
        call = _bare_call(backend, model, array)
        for _ in range(inferences):
            call()
    with open("/proc/self/status") as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    return {"peak_rss_bytes": int(fields["VmHWM"].split()[0]) * 1024, "inferences": inferences}


def _subprocess_json(args: list[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "harness.selftest", *args], capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"selftest worker failed: {done.stderr.strip()[-500:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------- host side
def _convbench_median(backend: str, workload_id: str, policy: TimingPolicy) -> dict[str, Any]:
    (record,) = measure_locally(backend, [workload_id], policy)
    return {"median_s": record["latency"]["median"], "n": record["latency"]["n"],
            "ci_rel_width": record["latency"]["ci_rel_width"], "stop_reason": record.get("stop_reason")}


def agreement(seconds: float, rounds: int, log: Any) -> list[dict[str, Any]]:
    """Both comparisons: interleaved in one process (the figure), and separate processes."""
    from harness.artifacts import artifact_for

    policy = TimingPolicy(min_seconds=seconds, max_seconds=seconds, target_ci_rel_width=0.0)
    rows = []
    for backend, workload_ids in AGREEMENT_WORKLOADS.items():
        for workload_id in workload_ids:
            artifact = artifact_for(workload_id, backend)
            method = "blocked_autorange" if backend == "torch" else "bare perf_counter_ns loop"
            inter = _subprocess_json(["--interleaved", backend, str(artifact.path), str(artifact.input_path),
                                      str(max(4, rounds * 4)), str(max(0.2, seconds / 4))])
            separate = []
            for _ in range(rounds):
                mine = _convbench_median(backend, workload_id, policy)
                ref = _subprocess_json(["--reference", backend, str(artifact.path), str(artifact.input_path),
                                        str(seconds)])
                separate.append(mine["median_s"] / ref["median_s"])
            row = {"backend": backend, "workload_id": workload_id, "reference": method,
                   "convbench_median_ms": inter["convbench_median_s"] * 1e3,
                   "reference_median_ms": inter["reference_median_s"] * 1e3,
                   "ratio_interleaved": inter["ratio"], "ratios_interleaved": inter["ratios"],
                   "ratio_separate_processes": statistics.median(separate), "ratios_separate": separate}
            log(f"agreement {backend:12s} {workload_id:34s} convbench {row['convbench_median_ms']:7.3f} ms  "
                f"{method} {row['reference_median_ms']:7.3f} ms  ratio {inter['ratio']:.3f} interleaved "
                f"(goal within 3%); separate processes {row['ratio_separate_processes']:.3f} "
                f"(rounds {', '.join(f'{r:.2f}' for r in separate)})")
            rows.append(row)
    return rows


def overhead(log: Any) -> dict[str, Any]:
    from harness.artifacts import get_artifact

    artifact = get_artifact(TRIVIAL, "tflite")[0]
    result = _subprocess_json(["--overhead", str(artifact.path), str(artifact.input_path), "20000"])
    log(f"overhead: bare loop {result['bare_ns']:.0f} ns/iter, runner loop {result['runner_ns']:.0f} ns/iter, "
        f"added {result['overhead_ns']:.0f} ns (goal < 1000 ns)")
    return result


def quick_suite_wall(log: Any, results_dir: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "harness.cli", "run", "--suite", "quick", "--out", str(results_dir)]
    # Warm the artifact cache first, so the timed run measures measuring only.
    from harness import workloads as registry
    from harness.artifacts import get_artifact
    from harness.registry import FORMATS

    for workload_id in registry.suite("quick"):
        for fmt in FORMATS:
            get_artifact(workload_id, fmt)
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"quick suite failed: {done.stderr.strip()[-500:]}")
    log(f"quick suite, warm cache, 3 backends, --repeats 5 (compare-grade): {wall:.1f} s wall (goal < 600 s)")
    return {"wall_s": wall, "command": " ".join(command[1:])}


ADAPTIVE_WORKLOADS = ("conv-separable-M128-N128-k3-x56-s1", "conv-standard-M512-N512-k3-x14-s1",
                     "mobilenet_v3_large-224")


def adaptive_vs_fixed(log: Any) -> list[dict[str, Any]]:
    """Samples adaptive stopping (1% CI target) takes vs a fixed 1000-sample run, with both widths."""
    rows = []
    for workload_id in ADAPTIVE_WORKLOADS:
        adaptive = _convbench_median("onnxruntime", workload_id,
                                     TimingPolicy(min_runs=10, min_seconds=0.2, max_seconds=30,
                                                  target_ci_rel_width=0.01))
        fixed = _convbench_median("onnxruntime", workload_id,
                                  TimingPolicy(min_runs=1000, max_runs=1000, min_seconds=0, max_seconds=600,
                                               target_ci_rel_width=0.0))
        saving = 1 - adaptive["n"] / fixed["n"]
        log(f"adaptive stopping, {workload_id} (onnxruntime): {adaptive['n']} samples to a "
            f"{adaptive['ci_rel_width']:.2%} CI ({adaptive['stop_reason']}); fixed run: {fixed['n']} samples, "
            f"{fixed['ci_rel_width']:.2%} CI; {saving:.0%} fewer samples (goal >= 50%)")
        rows.append({"workload_id": workload_id, "adaptive": adaptive, "fixed": fixed, "saving": saving})
    return rows


def block_timing(rounds: int, log: Any) -> list[dict[str, Any]]:
    """A layer fast enough to be timed in blocks: convbench's median vs timeit, same process."""
    from harness.artifacts import artifact_for

    rows = []
    for backend in ("onnxruntime", "tflite"):
        artifact = artifact_for(BLOCK_TIMED, backend)
        row = _subprocess_json(["--block", backend, str(artifact.path), str(artifact.input_path),
                                str(max(4, rounds * 4)), "0.5"])
        row.update(backend=backend, workload_id=BLOCK_TIMED)
        log(f"block timing {backend:12s} {BLOCK_TIMED}: convbench {row['convbench_median_s'] * 1e6:.2f} us "
            f"(blocks of {', '.join(map(str, row['block_sizes']))}), timeit {row['timeit_median_s'] * 1e6:.2f} us "
            f"(number={row['timeit_number']}), ratio {row['ratio']:.3f} (goal within 5%)")
        rows.append(row)
    return rows


def measure_locally(backend: str, workload_ids: list[str], policy: TimingPolicy,
                    options: dict[str, Any] | None = None, **transport: Any) -> list[dict[str, Any]]:
    """Jobs of one batch, measured by the local transport exactly as ``harness run`` does.

    ``options`` go to every job (e.g. a fixed ``block_size``); any record not ``ok`` raises.
    """
    from backends.local import LocalTransport
    from harness.artifacts import artifact_for
    from harness.records import finalize

    artifacts = {w: artifact_for(w, backend) for w in workload_ids}
    jobs = [Job(f"selftest/{backend}/{i}/{w}", w, "local", backend, 1, options=options or {})
            for i, w in enumerate(workload_ids)]
    records: list[dict[str, Any]] = []
    LocalTransport(**transport).run_batch(jobs, artifacts, policy,
                                          lambda r: records.append(finalize(r)))
    for record in records:
        if record["status"] != "ok":
            raise RuntimeError(f"{record['job_id']}: {record.get('error') or record.get('problems')}")
    return records


def memory(log: Any) -> list[dict[str, Any]]:
    """A job's peak RSS, measured right after a large model, vs a fresh process with the model alone."""
    from harness.artifacts import artifact_for

    policy = TimingPolicy(min_runs=20, min_seconds=0.2, max_seconds=1.0, target_ci_rel_width=0.0)
    rows = []
    for backend in ("onnxruntime", "tflite", "torch"):
        records = measure_locally(backend, [MEMORY_BEFORE, MEMORY_WORKLOAD], policy)
        mem = records[-1]["memory"]
        artifact = artifact_for(MEMORY_WORKLOAD, backend)
        inferences = records[-1].get("inferences") or 50
        fresh = _subprocess_json(["--fresh-peak", backend, str(artifact.path), str(artifact.input_path),
                                  str(min(inferences, 200))])
        ratio = mem["peak_rss_bytes"] / fresh["peak_rss_bytes"]
        log(f"memory {backend:12s} {MEMORY_WORKLOAD}: job peak {mem['peak_rss_bytes'] / 2**20:.1f} MiB "
            f"(runtime baseline {mem['baseline_rss_bytes'] / 2**20:.1f} MiB + model "
            f"{mem['rss_increase_bytes'] / 2**20:.1f} MiB; measured after {MEMORY_BEFORE} in the same batch), "
            f"fresh process alone {fresh['peak_rss_bytes'] / 2**20:.1f} MiB, ratio {ratio:.3f} (goal within 10%)")
        rows.append({"backend": backend, "workload_id": MEMORY_WORKLOAD, "after": MEMORY_BEFORE, "job": mem,
                     "fresh_process_peak_rss_bytes": fresh["peak_rss_bytes"], "ratio": ratio})
    return rows


def energy(log: Any) -> list[dict[str, Any]]:
    """J/inference under a sysfs hwmon sensor held at a constant power vs that power x latency."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory(prefix="convbench-sysfs-") as root:
        sensor = Path(root, "class/hwmon/hwmon0/power1_input")
        sensor.parent.mkdir(parents=True)
        sensor.write_text(f"{int(CONSTANT_WATTS * 1e6)}\n")  # microwatts, as hwmon reports
        policy = TimingPolicy(min_seconds=1.5, max_seconds=2.0, target_ci_rel_width=0.0)
        for backend in ("onnxruntime", "tflite"):
            (record,) = measure_locally(backend, [BLOCK_TIMED], policy, sysfs_root=root,
                                       energy={"sensor": "hwmon"})
            measured = record["energy"].get("joules_per_inference")
            if measured is None:
                raise RuntimeError(f"energy unavailable: {record['energy'].get('reason')}")
            expected = CONSTANT_WATTS * record["latency"]["median"]
            # What the sensor integrates: the loop's wall time per call (median + any interference).
            loop_mean_s = record["loop_wall_s"] / (len(record["samples_s"]) * record["block_size"])
            log(f"energy {backend:12s} {BLOCK_TIMED} (blocks of {record['block_size']}): "
                f"{measured * 1e6:.2f} uJ/inference; {CONSTANT_WATTS:g} W x median "
                f"{record['latency']['median'] * 1e6:.2f} us = {expected * 1e6:.2f} uJ, "
                f"ratio {measured / expected:.3f}; x loop mean "
                f"{loop_mean_s * 1e6:.2f} us, ratio {measured / (CONSTANT_WATTS * loop_mean_s):.3f} (goal within 10%)")
            rows.append({"backend": backend, "workload_id": BLOCK_TIMED, "block_size": record["block_size"],
                         "joules_per_inference": measured, "expected_from_median": expected,
                         "ratio": measured / expected,
                         "ratio_to_loop_mean": measured / (CONSTANT_WATTS * loop_mean_s),
                         "other_cpu_cores": record.get("other_cpu_cores")})
    return rows


def run_selftest(parts: list[str], seconds: float, rounds: int, results_dir: Path, log: Any) -> dict[str, Any]:
    checks = {
        "agreement": lambda: agreement(seconds, rounds, log),
        "overhead": lambda: overhead(log),
        "adaptive": lambda: adaptive_vs_fixed(log),
        "block": lambda: block_timing(rounds, log),
        "memory": lambda: memory(log),
        "energy": lambda: energy(log),
        "quick": lambda: quick_suite_wall(log, results_dir),
    }
    return {part: checks[part]() for part in PARTS if part in parts}


if __name__ == "__main__":
    if sys.argv[1] == "--reference":
        print(json.dumps(_reference(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))))
    elif sys.argv[1] == "--interleaved":
        print(json.dumps(_interleaved(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]))))
    elif sys.argv[1] == "--block":
        print(json.dumps(_block_vs_timeit(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]),
                                          float(sys.argv[6]))))
    elif sys.argv[1] == "--fresh-peak":
        print(json.dumps(_fresh_peak(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))))
    elif sys.argv[1] == "--overhead":
        print(json.dumps(_overhead(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
