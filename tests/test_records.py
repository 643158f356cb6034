"""The typed measurement record: one builder, error kinds, delegate vs provider, schema versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from backends.base import Job
from harness.cli import main
from harness.records import SCHEMA_VERSION, ErrorKind, Measurement, error_record, finalize, raw_record
from harness.store import DamagedRun, read_run

RUNS = Path(__file__).parent / "data" / "runs"
V1_RUN = RUNS / "20260102T000000Z-bbbbbb"  # written before schema versions existed
JOB = Job("local/onnxruntime/t1/conv-standard-M32-N64-k3-x28-s1", "conv-standard-M32-N64-k3-x28-s1", "local",
          "onnxruntime", 1)


def test_a_measurement_round_trips_with_nested_types():
    raw = raw_record(JOB, "local", samples_s=[1e-3, 1.1e-3, 0.9e-3] * 4, block_size=4, provider="CPUExecutionProvider",
                     memory={"peak_rss_bytes": 100, "baseline_rss_bytes": 60, "rss_increase_bytes": 40,
                             "isolation": "fresh process"},
                     energy={"status": "unavailable", "reason": "no sensor"},
                     output_check={"status": "match", "max_abs_diff": 0.0, "scale": 1.0, "tolerance": 1e-4},
                     other_cpu_cores=0.5)
    stored = finalize(raw)
    m = Measurement.from_dict(stored)
    assert m.status == "ok" and m.latency.block_size == 4 and m.latency.n == 12
    assert m.memory.rss_increase_bytes == 40 and m.memory.extra == {"isolation": "fresh process"}
    assert m.energy.status == "unavailable" and m.output_check.status == "match"
    assert m.requested_delegate is None and m.provider == "CPUExecutionProvider"
    assert stored["delegate"] == "CPUExecutionProvider"  # the one column: request, else what ran
    assert m.machine_busy and stored["machine_busy"] is True  # 0.5 cores > the 0.25 limit: a flag, not words
    assert Measurement.from_dict(m.to_dict()).to_dict() == m.to_dict()


def test_an_android_request_and_what_ran_are_kept_apart():
    job = Job("pixel/tflite-gpu/t1/x", "conv-standard-M32-N64-k3-x28-s1", "pixel", "tflite", 1, "gpu")
    stored = finalize(raw_record(job, "adb", provider="xnnpack", latency={"n": 50, "median": 2e-3},
                                 output_check={"status": "not_checked", "reason": "random inputs"}))
    assert stored["requested_delegate"] == "gpu" and stored["provider"] == "xnnpack"
    assert stored["delegate"] == "gpu"


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_failures_carry_an_error_kind(kind):
    stored = finalize(error_record(JOB, "local", "it broke", kind))
    assert stored["status"] == "error" and stored["error_kind"] == str(kind) and stored["error"] == "it broke"


def test_a_record_without_samples_is_a_no_samples_error():
    stored = finalize(raw_record(JOB, "local", samples_s=[]))
    assert stored["error_kind"] == "no_samples"


def test_runs_are_written_with_the_schema_version(tmp_path):
    from harness.store import RunWriter

    writer = RunWriter(tmp_path, {})
    writer.finish("complete")
    assert json.loads((writer.path / "run.json").read_text())["schema_version"] == SCHEMA_VERSION


def test_version_1_runs_are_migrated_on_read():
    info, records = read_run(V1_RUN)
    assert "schema_version" not in info
    local = [r for r in records if r["transport"] == "local"]
    assert local and all(r["requested_delegate"] is None and r["provider"] == r["delegate"] for r in local)


def test_a_run_from_a_newer_convbench_is_refused_in_one_line(tmp_path):
    newer = tmp_path / V1_RUN.name
    shutil.copytree(V1_RUN, newer)
    info = json.loads((newer / "run.json").read_text())
    (newer / "run.json").write_text(json.dumps({**info, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(DamagedRun, match=f"schema {SCHEMA_VERSION + 1}, newer than this convbench reads"):
        read_run(newer)
    result = CliRunner().invoke(main, ["export", str(newer), "--format", "csv", "-o", str(tmp_path / "x.csv")])
    assert result.exit_code == 2 and "upgrade convbench" in result.output
    assert "Traceback" not in result.output
