"""Writes the hand-made results sets under tests/data/runs/ (run once; outputs are committed).

Every latency sample is chosen by hand so tests can assert exact answers:

* ``20260101T000000Z-aaaaaa`` (analysis): 7 samples per job, ``median * SHAPE``; the
  median of SHAPE is exactly 1.  local/onnxruntime: N64 pair 4.0 / 1.0 ms, N32 pair
  6.0 / 1.0 ms, v1-0.25-128 2.0 ms (4 mJ), its twin 10.0 ms, v2-0.35-96 1.5 ms.
  local/tflite: N64 standard 3.0 ms with the separable one invalid (output mismatch), N32
  pair 2.0 / 0.5 ms, v1 2.5 ms, twin not exported (error), v2 1.0 ms.
* ``20260102T000000Z-bbbbbb`` (baseline) and ``20260103T000000Z-cccccc`` (current): each
  job measured in 5 invocations (``repeat`` 0-4), invocation i with 40 samples
  ``median * (1 + 0.01 v_i) * (1 + 0.02 u)``, v = -1, -0.5, 0, 0.5, 1 and u a permutation of
  -1.00 ... 0.95; the current invocations are the baseline's scaled by a known factor (see
  CURRENT_SCALE).  Every invocation carries a reference probe of 5 ms (equal in both runs).

Usage: python tests/data/runs/make_runs.py
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.catalog import workload_row
from harness.measure.stats import summarize
from harness.records import fingerprint_id

HERE = Path(__file__).parent
SHAPE = [0.97, 0.99, 1.0, 1.0, 1.01, 1.02, 1.05]
FINGERPRINT = {"hostname": "bench1", "machine": "x86_64", "cpu_model": "Test CPU 3000", "board_model": None,
               "cores": 4, "memory_bytes": 8 * 2**30, "os": "Debian GNU/Linux 12 (bookworm)",
               "kernel": "6.1.0", "python": "3.11.7", "emulated": None, "runner_version": 1}
VERSIONS = {"onnxruntime": "1.20.0", "tflite": "2.3.0"}
DELEGATES = {"onnxruntime": "CPUExecutionProvider", "tflite": "xnnpack"}


def record(run_id: str, workload_id: str, backend: str, samples_ms: list[float] | None, threads: int = 1,
           **extra) -> dict:
    job_id = f"local/{backend}/t{threads}/{workload_id}"
    rec = {"job_id": job_id, "workload_id": workload_id, "device": "local", "transport": "local",
           "backend": backend, "threads": threads, "delegate": DELEGATES[backend], "runtime": backend,
           "runtime_version": VERSIONS[backend], "workload": workload_row(workload_id),
           "device_fingerprint": dict(FINGERPRINT, id=fingerprint_id(FINGERPRINT)), "run_id": run_id}
    if samples_ms is None:
        rec.update(status="error", error=extra.pop("error"), delegate=None)
        rec.pop("device_fingerprint")
        return rec
    samples = [round(s / 1e3, 12) for s in samples_ms]
    rec.update(samples_s=samples, latency=summarize(samples).to_dict(),
               memory={"peak_rss_bytes": 200_000_000, "rss_increase_bytes": 20_000_000},
               energy={"status": "unavailable", "reason": "no sensor"},
               output_check={"status": "match", "max_abs_diff": 1e-6}, problems=[], status="ok")
    rec.update(extra)
    return rec


def write_run(run_id: str, records: list[dict], suite: str | None, backends: list[str]) -> None:
    path = HERE / run_id
    path.mkdir(exist_ok=True)
    started = f"{run_id[0:4]}-{run_id[4:6]}-{run_id[6:8]}T00:00:00+00:00"
    info = {"convbench_version": "0.1.0", "git": {"commit": "0123456789abcdef0123456789abcdef01234567",
                                                  "dirty": False},
            "command": ["harness", "run"], "host": FINGERPRINT,
            "host_versions": {"onnxruntime": VERSIONS["onnxruntime"], "ai-edge-litert": VERSIONS["tflite"]},
            "suite": suite, "workloads": sorted({r["workload_id"] for r in records}),
            "devices": [{"name": "local", "transport": "local", "backends": backends, "threads": [1],
                         "source": "devices.yaml:3"}],
            "policy": {"min_runs": 10, "max_seconds": 1.0, "min_seconds": 0.5, "warmup_runs": 3},
            "run_id": run_id, "status": "complete", "started_at": started,
            "finished_at": started.replace("T00:00:00", "T00:05:00"), "counts": {}}
    for rec in records:
        info["counts"][rec["status"]] = info["counts"].get(rec["status"], 0) + 1
    (path / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    (path / "measurements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def analysis_run() -> None:
    run_id = "20260101T000000Z-aaaaaa"

    def shaped(median: float) -> list[float]:
        return [median * s for s in SHAPE]

    ort = {"conv-standard-M32-N64-k3-x28-s1": 4.0, "conv-separable-M32-N64-k3-x28-s1": 1.0,
           "conv-standard-M32-N32-k3-x56-s1": 6.0, "conv-separable-M32-N32-k3-x56-s1": 1.0,
           "mobilenet_v1-0.25-128": 2.0, "mobilenet_v1_conv-0.25-128": 10.0, "mobilenet_v2-0.35-96": 1.5}
    tfl = {"conv-standard-M32-N64-k3-x28-s1": 3.0, "conv-standard-M32-N32-k3-x56-s1": 2.0,
           "conv-separable-M32-N32-k3-x56-s1": 0.5, "mobilenet_v1-0.25-128": 2.5, "mobilenet_v2-0.35-96": 1.0}
    records = []
    for workload_id, median in ort.items():
        extra = {}
        if workload_id == "mobilenet_v1-0.25-128":
            extra["energy"] = {"status": "ok", "sensor": "rapl:package-0", "resolution": "1 uJ counter",
                               "joules_per_inference": 0.004}
        records.append(record(run_id, workload_id, "onnxruntime", shaped(median), **extra))
    for workload_id, median in tfl.items():
        records.append(record(run_id, workload_id, "tflite", shaped(median)))
    records.append(record(run_id, "conv-separable-M32-N64-k3-x28-s1", "tflite", shaped(0.25),
                          status="invalid", output_check={"status": "mismatch", "max_abs_diff": 0.5},
                          problems=["output differs from the PyTorch reference"]))
    records.append(record(run_id, "mobilenet_v1_conv-0.25-128", "tflite", None,
                          error="litert-torch conversion failed: unsupported op"))
    write_run(run_id, records, None, ["onnxruntime", "tflite"])


BASE_MEDIAN_MS = {"conv-standard-M32-N64-k3-x28-s1": 4.0, "conv-separable-M32-N64-k3-x28-s1": 1.0,
                  "mobilenet_v1-0.25-128": 2.0, "mobilenet_v2-0.35-96": 1.5,
                  "conv-standard-M32-N32-k3-x56-s1": 6.0}
# current = baseline * scale, sample by sample; None: not measured in the current run.
CURRENT_SCALE = {"conv-standard-M32-N64-k3-x28-s1": 1.20,  # regressed
                 "conv-separable-M32-N64-k3-x28-s1": 1.0,  # unchanged (identical samples)
                 "mobilenet_v1-0.25-128": 0.80,  # improved
                 "mobilenet_v2-0.35-96": 1.03,  # significant but under the 5% threshold
                 "conv-standard-M32-N32-k3-x56-s1": None}  # error in the current run


INVOCATION_SPREAD = [-1.0, -0.5, 0.0, 0.5, 1.0]
PROBE = {"kernel": "numpy sgemm 320x320x320 + 16 MiB float32 copy (v1)", "median_s": 0.005,
         "identity": "numpy sgemm 320x320x320 + 16 MiB float32 copy (v1) | numpy 2.4.6 | python 3.11.7"}


def invocations(run_id: str, workload_id: str, invocation_medians_ms: list[float], threads: int = 1) -> list[dict]:
    """One record per invocation of a job, each with 40 samples around its median."""
    u = [((i * 7919) % 40) / 20 - 1 for i in range(40)]
    out = []
    for repeat, median in enumerate(invocation_medians_ms):
        rec = record(run_id, workload_id, "onnxruntime", [median * (1 + 0.02 * x) for x in u], threads=threads,
                     repeat=repeat, repeats=len(invocation_medians_ms), reference_probe=dict(PROBE))
        rec["job_id"] += f"#{repeat + 1}"
        out.append(rec)
    return out


def compare_runs() -> None:
    base_id, cur_id = "20260102T000000Z-bbbbbb", "20260103T000000Z-cccccc"
    base, cur = [], []
    for workload_id, median in BASE_MEDIAN_MS.items():
        medians = [median * (1 + 0.01 * v) for v in INVOCATION_SPREAD]
        base += invocations(base_id, workload_id, medians)
        scale = CURRENT_SCALE[workload_id]
        if scale is None:
            cur.append(record(cur_id, workload_id, "onnxruntime", None, error="runner crashed while running this job"))
        else:
            cur += invocations(cur_id, workload_id, [m * scale for m in medians])
    # A large change that is not significant: invocations widely spread, median 3.0 -> 3.3 ms.
    base += invocations(base_id, "mobilenet_v1_conv-0.25-128", [1.0, 2.0, 3.0, 4.0, 5.0])
    cur += invocations(cur_id, "mobilenet_v1_conv-0.25-128", [1.3, 2.3, 3.3, 4.3, 5.3])
    # Only in the current run: a new workload, and a new thread count.
    cur += invocations(cur_id, "conv-separable-M32-N32-k3-x56-s1", [1.0] * 5)
    cur += invocations(cur_id, "conv-standard-M32-N64-k3-x28-s1", [2.5] * 5, threads=2)
    write_run(base_id, base, "handmade", ["onnxruntime"])
    write_run(cur_id, cur, "handmade", ["onnxruntime"])


if __name__ == "__main__":
    analysis_run()
    compare_runs()
