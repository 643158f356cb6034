"""The reference probe: a fixed kernel timed in every invocation, independent of the runtime under test.

A nightly comparison cannot tell a slower runtime from a slower machine (another tenant on the
host, a lower clock, a throttled board) unless something that did not change is measured beside
it.  The probe is that something: the same numpy work every night, a single-threaded float32
matrix product (compute) plus a copy of an array larger than the last-level cache (memory
bandwidth), the two resources a convolution spends its time on.  Its time drifts with the
machine, not with the runtimes; ``compare --normalize reference`` divides by it.

The probe's identity (kernel, numpy and Python versions) is recorded: a comparison normalises
only by probes of the same identity.
"""

import platform
import time

PROBE_KERNEL = "numpy sgemm 320x320x320 + 16 MiB float32 copy (v1)"
MATMUL_N = 320
COPY_BYTES = 16 * 1024 * 1024


def _median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def run_probe(seconds):
    """Time the reference kernel for about ``seconds``; returns the probe dict stored with the record.

    ``median_s`` is the median time of one round (one matrix product and one copy); the
    parts are given too, so a drift can be told apart as compute or memory.
    """
    import numpy as np

    now = time.perf_counter_ns
    a = np.full((MATMUL_N, MATMUL_N), 0.5, dtype=np.float32)
    product = np.empty_like(a)
    source = np.ones(COPY_BYTES // 4, dtype=np.float32)
    target = np.empty_like(source)
    np.matmul(a, a, out=product)  # first touch: page faults and BLAS set-up stay off the clock
    np.copyto(target, source)
    matmul_ns, copy_ns = [], []
    deadline = now() + int(seconds * 1e9)
    while len(matmul_ns) < 5 or now() < deadline:
        t0 = now()
        np.matmul(a, a, out=product)
        t1 = now()
        np.copyto(target, source)
        t2 = now()
        matmul_ns.append(t1 - t0)
        copy_ns.append(t2 - t1)
        if len(matmul_ns) >= 10000:
            break
    rounds = [m + c for m, c in zip(matmul_ns, copy_ns)]
    return {
        "kernel": PROBE_KERNEL,
        "identity": "%s | numpy %s | python %s" % (PROBE_KERNEL, np.__version__, platform.python_version()),
        "median_s": _median(rounds) / 1e9,
        "matmul_median_s": _median(matmul_ns) / 1e9,
        "copy_median_s": _median(copy_ns) / 1e9,
        "rounds": len(rounds),
    }
