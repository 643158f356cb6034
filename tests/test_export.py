"""`harness export`: pytest-benchmark JSON read by pytest-benchmark itself, and CSV."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.export import benchmark_stats, to_pytest_benchmark

pytest_benchmark_stats = pytest.importorskip("pytest_benchmark.stats")

DATA = Path(__file__).parent / "data" / "runs"
A, B, C = (DATA / name for name in ("20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb",
                                     "20260103T000000Z-cccccc"))
BENCHMARK_KEYS = {"group", "name", "fullname", "params", "param", "extra_info", "options", "stats"}


def reference_stats(samples):
    stats = pytest_benchmark_stats.Stats()
    for value in samples:
        stats.update(value)
    return stats.as_dict()


@pytest.mark.parametrize("samples", [[0.5], [2.0, 1.0], [3.0, 1.0, 2.0], [1.0, 5.0, 2.0, 2.0, 9.0],
                                     [0.001 * (1 + ((i * 37) % 23) / 50) for i in range(1, 58)],
                                     [0.002 + 0.0001 * ((i * 7) % 10) for i in range(64)]])
def test_stats_equal_pytest_benchmarks_own(samples):
    ours, theirs = benchmark_stats(samples), reference_stats(samples)
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert ours[key] == (value if isinstance(value, str | int) else pytest.approx(value, rel=1e-12, abs=0)), key


def test_document_schema_and_values():
    document, skipped = to_pytest_benchmark(A, with_data=True)
    assert set(document) == {"machine_info", "commit_info", "benchmarks", "datetime", "version"}
    assert skipped == 2 and len(document["benchmarks"]) == 12  # the invalid and the failed job are left out
    machine = document["machine_info"]
    assert machine["node"] == "bench1" and machine["machine"] == "x86_64" and machine["cpu"]["brand_raw"] == \
        "Test CPU 3000"
    assert document["commit_info"]["id"] == "0123456789abcdef0123456789abcdef01234567"
    assert document["commit_info"]["dirty"] is False and document["datetime"].startswith("2026-01-01")
    records = {json.loads(line)["job_id"]: json.loads(line) for line in (A / "measurements.jsonl").open()}
    for bench in document["benchmarks"]:
        assert set(bench) == BENCHMARK_KEYS
        assert set(bench["stats"]) == set(pytest_benchmark_stats.Stats.fields) | {"data", "iterations"}
        record = records[bench["fullname"].removeprefix("convbench::")]
        assert bench["stats"]["data"] == record["samples_s"] and bench["stats"]["iterations"] == 1
        for key, value in reference_stats(record["samples_s"]).items():
            assert bench["stats"][key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-12))
    by_name = {b["name"]: b for b in document["benchmarks"]}
    std = by_name["conv-standard-M32-N64-k3-x28-s1[local-onnxruntime-t1]"]
    assert std["stats"]["median"] == pytest.approx(0.004) and std["stats"]["rounds"] == 7
    assert std["stats"]["ops"] == pytest.approx(7 / sum(records[std["fullname"][11:]]["samples_s"]))
    assert std["extra_info"]["macs"] == 14_450_688 and std["params"]["backend"] == "onnxruntime"
    assert std["group"] == "local/onnxruntime/t1"
    assert "data" not in to_pytest_benchmark(A)[0]["benchmarks"][0]["stats"]


def test_pytest_benchmark_compare_reads_exports(tmp_path):
    runner = CliRunner()
    env = {"CONVBENCH_RESULTS": str(DATA)}
    for run, name in ((B, "0001_baseline.json"), (C, "0002_current.json")):
        result = runner.invoke(main, ["export", run.name, "--format", "pytest-benchmark", "-o",
                                      str(tmp_path / name)], env=env)
        assert result.exit_code == 0, result.output
        assert f"exported {run.name} as pytest-benchmark: {tmp_path / name}" in result.output
    done = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", "--between", "median",
                           str(tmp_path / "0001_baseline.json"), str(tmp_path / "0002_current.json")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "35 tests, 2 sources" in done.stdout  # C: 7 jobs x 5 invocations, one benchmark each
    assert "conv-standard-M32-N64-k3-x28-s1[local-onnxruntime-t1-invocation1]" in done.stdout
    assert "Failed to load" not in done.stdout + done.stderr
    table = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", "--csv",
                            str(tmp_path / "table"), str(tmp_path / "0002_current.json")],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert table.returncode == 0, table.stderr
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    medians = {r["name"]: float(r["median"]) for r in rows}
    first_invocation = "convbench::local/onnxruntime/t2/conv-standard-M32-N64-k3-x28-s1#1"
    assert medians[first_invocation] == pytest.approx(0.0025, rel=1e-3)


def test_csv_export_lists_every_measurement():
    result = CliRunner().invoke(main, ["export", A.name, "--format", "csv", "-o", "-"],
                                env={"CONVBENCH_RESULTS": str(DATA)})
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 14
    assert sorted(r["status"] for r in rows).count("ok") == 12
    error = next(r for r in rows if r["status"] == "error")
    assert error["error"] == "litert-torch conversion failed: unsupported op"
    std = next(r for r in rows if r["job_id"] == "local/onnxruntime/t1/conv-standard-M32-N64-k3-x28-s1")
    assert float(std["latency_median"]) == pytest.approx(0.004)
    assert float(std["gmacs_per_s"]) == pytest.approx(14_450_688 / 0.004 / 1e9)


def test_export_default_path_and_errors(tmp_path):
    env = {"CONVBENCH_RESULTS": str(DATA), "CONVBENCH_REPORTS": str(tmp_path)}
    result = CliRunner().invoke(main, ["export", B.name, "--format", "pytest-benchmark"], env=env)
    target = tmp_path / B.name / f"{B.name}.pytest-benchmark.json"
    assert result.exit_code == 0 and str(target) in result.output
    assert len(json.loads(target.read_text())["benchmarks"]) == 30  # B: 6 jobs x 5 invocations
    bad = CliRunner().invoke(main, ["export", B.name, "--format", "xml"], env=env)
    assert bad.exit_code == 2 and "xml" in bad.output
