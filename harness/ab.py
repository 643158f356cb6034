"""``harness ab``: two candidates on one machine, measured in one run, invocation by invocation.

A nightly job that tests a runtime upgrade should not compare tonight's run with last night's:
the machine changed too.  As ``asv continuous`` re-measures the baseline beside the candidate,
an A/B run measures both candidates in the same run, interleaved in randomized rounds
(``harness.dispatch.schedule``): round r runs every job's r-th invocation on A and on B, in a
random order, so both share each round's interference.  The comparison then pairs A's and B's
invocations of a job by round (``paired_ratio_ci``), which cancels what the round shared.

A candidate is a device of devices.yaml, or ``python=PATH``: this host running the runner under
another interpreter (e.g. a virtualenv with another onnxruntime or ai-edge-litert; the runner is
self-contained, so any Python with numpy and the runtime will do).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.compare.verdicts import Options, invocation_values, judge, median_latency
from harness.devices import Device, local_device
from harness.errors import UserError
from harness.measure.invocations import paired_ratio_ci
from harness.records import probe_time

LABELS = ("A", "B")


def candidate(spec: str, known: dict[str, Device], label: str) -> Device:
    """The device a candidate spec names, renamed to its label (A or B) so both can run in one run."""
    if spec.startswith("python="):
        python = Path(spec.removeprefix("python=")).expanduser()
        if not python.exists():
            raise UserError(f"candidate {label}: {python} does not exist; give the path of a Python interpreter, "
                            "e.g. python=.venv-new/bin/python")
        base = local_device()
        return replace(base, name=label, options={**base.options, "python": str(python)}, source=spec)
    if spec not in known:
        raise UserError(f"candidate {label}: unknown device {spec!r}; give a device of the devices file "
                        f"({', '.join(known) or 'none'}) or python=PATH")
    return replace(known[spec], name=label, source=f"{spec} ({known[spec].source})")


def machines_differ(a: Device, b: Device) -> bool:
    from harness.dispatch import machine_of

    return machine_of(a) != machine_of(b)


def paired_rows(records: list[dict[str, Any]], options: Options) -> list[dict[str, Any]]:
    """B against A per job (backend, threads, delegate, workload), invocations paired by round."""
    jobs: dict[tuple, dict[str, dict[int, dict[str, Any]]]] = {}
    for record in records:
        if record.get("status") != "ok" or record.get("device") not in LABELS:
            continue
        key = (record.get("workload_id"), record.get("backend"), int(record.get("threads") or 0),
               record.get("requested_delegate") or "")
        jobs.setdefault(key, {"A": {}, "B": {}})[record["device"]][int(record.get("repeat") or 0)] = record
    normalized = options.normalize == "reference"
    rows = []
    for (workload_id, backend, threads, delegate), sides in sorted(jobs.items(), key=lambda kv: tuple(map(str,
                                                                                                    kv[0]))):
        rounds = [r for r in sorted(set(sides["A"]) & set(sides["B"]))
                  if not normalized or (probe_time(sides["A"][r]) and probe_time(sides["B"][r]))]
        estimate = paired_ratio_ci(invocation_values([sides["A"][r] for r in rounds], normalized),
                                   invocation_values([sides["B"][r] for r in rounds], normalized), options.level)
        verdict, note = judge(estimate, options)
        first = next(iter(sides["B"].values()), None) or next(iter(sides["A"].values()))
        version_a = next(iter(sides["A"].values()), {}).get("runtime_version")
        version_b = next(iter(sides["B"].values()), {}).get("runtime_version")
        rows.append({
            "workload_id": workload_id, "where": f"{backend}{'/' + delegate if delegate else ''}/t{threads}",
            "backend": backend, "threads": threads, "delegate": delegate or None,
            "runtime": str(version_b) if version_a == version_b else f"{version_a} -> {version_b}",
            "device": first.get("device"), "fingerprint": "",
            "baseline_median_s": median_latency([sides["A"][r] for r in rounds]),
            "current_median_s": median_latency([sides["B"][r] for r in rounds]),
            "n_baseline": estimate.n_baseline, "n_current": estimate.n_current,
            "ratio": estimate.ratio, "change": estimate.ratio - 1, "ci_low": estimate.ci_low,
            "ci_high": estimate.ci_high, "p_value": estimate.p_value, "normalized": normalized,
            "verdict": verdict, "note": note or ("" if rounds else "measured on one side only"),
        })
    return rows

