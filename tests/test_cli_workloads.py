"""`harness workloads` and CLI behaviour (valid and invalid input, start-up imports)."""

import json
import subprocess
import sys

from click.testing import CliRunner

from harness.cli import main


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_help_does_not_import_heavy_packages():
    code = ("import sys\nfrom harness.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'onnxruntime', 'pandas', 'matplotlib', 'numpy', 'paramiko') "
            "if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_workloads_table_lists_quick_suite():
    result = invoke("workloads", "--suite", "quick")
    assert result.exit_code == 0, result.output
    assert "mobilenet_v1-1.0-224" in result.output and "conv-separable-M32-N64-k3-x112-s1" in result.output


def test_workloads_json_has_costs_and_ratios():
    result = invoke("workloads", "--suite", "paper", "--json")
    rows = {row["workload_id"]: row for row in json.loads(result.output)}
    assert rows["mobilenet_v1-1.0-224"]["macs"] == 568_740_352
    separable = rows["conv-separable-M512-N512-k3-x14-s1"]
    assert separable["ratio"] == separable["theoretical_ratio"]


def test_workloads_show_totals():
    result = invoke("workloads", "show", "mobilenet_v1-1.0-224", "--json")
    data = json.loads(result.output)
    assert data["totals"]["macs"] == 568_740_352 and len(data["layers"]) == 29
    table = invoke("workloads", "show", "conv-separable-M3-N5-k3-x6-s1-valid-nobn")
    assert "672 MACs" in table.output


def test_unknown_suite_is_one_line_exit_2():
    result = subprocess.run([sys.executable, "-m", "harness.cli", "workloads", "--suite", "nightly"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "quick, int8, layers, mobilenets, paper" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_workload_is_one_line_exit_2():
    result = subprocess.run([sys.executable, "-m", "harness.cli", "workloads", "show", "resnet50"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "resnet50" in result.stderr
