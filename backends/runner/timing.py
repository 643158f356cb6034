"""The timed loop: warm-up, power-of-two blocks for fast calls, adaptive stopping."""

import gc
import time

from .stats import _median, median_ci


def _spin_until(deadline_ns):
    while time.perf_counter_ns() < deadline_ns:
        pass


MAX_BLOCK = 8192


def choose_block_size(fastest_ns, block_min_ns):
    """Calls per timed block: the largest power of two whose block lasts about block_min_ns.

    A timer read costs ~0.1-0.5 us; calls that short are timed in blocks so the timers do
    not dominate.  Powers of two keep the choice stable when the warm-up's fastest call
    varies by a few percent from run to run.
    """
    block = 1
    while block * 2 <= MAX_BLOCK and block * 2 * max(1, fastest_ns) <= block_min_ns:
        block *= 2
    return block


class _GcDisabled:
    """The garbage collector off for the timed loop, as timeit and pyperf do."""

    def __enter__(self):
        self._was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()

    def __exit__(self, *exc):
        if self._was_enabled:
            gc.enable()


def measure(call, policy, cuda_timer=None, sync=None, block_size=None, min_wall_s=0.0):
    """Warm up, then time ``call`` until the median's CI is narrow enough or time runs out.

    ``sync`` waits for the device to finish (CUDA); it runs after the untimed first call
    and warm-up calls so that queued work never spills into the timed loop.  A given
    ``block_size`` is used as is (so runs summarise the same statistic); otherwise it is
    chosen from the fastest warm-up call.  ``min_wall_s``: the sample cap (``max_runs``) does
    not end the loop before this long since the first call (up to 10x the cap), so that an
    energy window is not cut short by a fast call in small blocks; ``max_seconds`` still does.
    """
    now = time.perf_counter_ns
    slowdown = float(policy.get("slowdown_fraction", 0.0))
    sync = sync or (lambda: None)

    with _GcDisabled():
        start = now()
        call()
        sync()
        first_ns = now() - start

        warm_deadline = now() + int(float(policy.get("warmup_seconds", 0.2)) * 1e9)
        warm_runs = int(policy.get("warmup_runs", 3))
        done = 0
        warm_cap = now() + int(float(policy.get("max_seconds", 5.0)) * 0.5e9)
        fastest = first_ns
        while (done < warm_runs or now() < warm_deadline) and now() < warm_cap:
            t0 = now()
            call()
            sync()
            fastest = min(fastest, now() - t0)
            done += 1

        if cuda_timer is not None:
            block, block_source = 1, "cuda events time every call"
        elif block_size:
            block, block_source = max(1, int(block_size)), "fixed by the plan"
        else:
            block = choose_block_size(fastest, int(policy.get("block_min_ns", 100000)))
            block_source = "chosen from the warm-up"

        min_runs = int(policy.get("min_runs", 10))
        max_runs = int(policy.get("max_runs", 100000))
        hard_cap, min_wall_ns = 10 * max_runs, int(float(min_wall_s) * 1e9)
        min_ns = int(float(policy.get("min_seconds", 0.5)) * 1e9)
        max_ns = int(float(policy.get("max_seconds", 5.0)) * 1e9)
        target = float(policy.get("target_ci_rel_width", 0.01))

        samples = []
        append = samples.append
        next_check = min_runs
        loop_start = now()
        stop_reason = "max_runs"
        calls = range(block)
        while len(samples) < max_runs or (len(samples) < hard_cap and now() - start < min_wall_ns):
            if cuda_timer is not None:
                append(cuda_timer(call))
            elif block == 1:
                t0 = now()
                call()
                t1 = now()
                if slowdown:
                    t1 += int((t1 - t0) * slowdown)
                    _spin_until(t1)
                append(t1 - t0)
            else:
                t0 = now()
                for _ in calls:
                    call()
                t1 = now()
                if slowdown:
                    t1 += int((t1 - t0) * slowdown)
                    _spin_until(t1)
                append((t1 - t0) / block)
            if len(samples) >= next_check:
                elapsed = now() - loop_start
                if elapsed >= max_ns:
                    stop_reason = "max_seconds"
                    break
                if elapsed >= min_ns:
                    ordered = sorted(samples)
                    lo, hi = median_ci(ordered)
                    med = _median(ordered)
                    if med > 0 and (hi - lo) / med <= target:
                        stop_reason = "converged"
                        break
                # Check about every 10% more samples: sorting stays O(total), and off the clock.
                next_check = len(samples) + max(1, len(samples) // 10)
        wall_ns = now() - loop_start
    return {
        "first_inference_s": first_ns / 1e9,
        "warmup_runs": done,
        "samples_s": [s / 1e9 for s in samples],
        "block_size": block,
        "block_size_source": block_source,
        "sample_statistic": "per-call time" if block == 1 else "per-call mean of a block of %d calls" % block,
        # Every inference the runtime ran while measuring: the first, warm-up and timed calls.
        "inferences": 1 + done + len(samples) * block,
        "loop_wall_s": wall_ns / 1e9,
        "stop_reason": stop_reason,
        "gc_disabled": True,
    }
