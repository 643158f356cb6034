"""devices.yaml parsing and validation, and `harness devices` commands."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from harness import plan
from harness.cli import main
from harness.devices import DevicesFileError, load_devices

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text):
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    return path


def test_shipped_devices_file_is_valid_and_examples_parse(tmp_path, monkeypatch):
    devices = load_devices(ROOT / "devices.yaml")
    assert list(devices) == ["local"]
    # The commented examples must be valid once uncommented.
    lines = []
    for line in (ROOT / "devices.yaml").read_text().splitlines():
        example = line.startswith("  # - ") or line.startswith("  #   ")
        stripped = line.replace("  # ", "  ", 1) if example else line
        lines.append(stripped)
    monkeypatch.setenv("PIXEL7_SERIAL", "28031FDH2000AB")
    examples = load_devices(write(tmp_path, "\n".join(lines)))
    assert set(examples) == {"local", "pi4", "pixel7"}
    assert examples["pixel7"].option("serial") == "28031FDH2000AB"
    assert examples["pi4"].thermal.cooldown_c == 55 and examples["pi4"].cpu_mask == "f"
    assert examples["pixel7"].delegates == ("xnnpack", "gpu", "nnapi")


def test_errors_name_file_line_and_field(tmp_path):
    path = write(tmp_path, """devices:
  - name: local
    transport: local
  - name: pi4
    transport: ssh
    host: pi4.lab
    port: ssh
    threads: [1, four]
    colour: red
  - name: phone
    transport: adb
  - name: local
    transport: carrier-pigeon
""")
    with pytest.raises(DevicesFileError) as info:
        load_devices(path)
    message = str(info.value)
    assert f"{path}:7: port: expected a port number" in message
    assert f"{path}:8: threads: expected a list of positive integers" in message
    assert f"{path}:9: colour: unknown field for a ssh device" in message
    assert f"{path}:10: adb devices need `serial`" in message
    assert f"{path}:13: transport: expected one of local, ssh, adb" in message


def test_env_expansion_and_missing_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("BOARD_HOST", "10.1.2.3")
    devices = load_devices(write(tmp_path, "devices:\n  - {name: b, transport: ssh, host: '${BOARD_HOST}'}\n"))
    assert devices["b"].option("host") == "10.1.2.3"
    with pytest.raises(DevicesFileError, match=r"devices.yaml:2: .*BOARD_USER is not set"):
        load_devices(write(tmp_path, "devices:\n  - {name: b, transport: ssh, host: h, user: '${BOARD_USER}'}\n"))


def test_bad_yaml_and_shape(tmp_path):
    with pytest.raises(DevicesFileError, match=r"devices.yaml:\d+: not valid YAML"):
        load_devices(write(tmp_path, "devices:\n  - name: [unclosed\n"))
    with pytest.raises(DevicesFileError, match="top-level `devices:` list"):
        load_devices(write(tmp_path, "- name: x\n"))
    with pytest.raises(DevicesFileError, match="duplicate device name 'a'"):
        load_devices(write(tmp_path, "devices:\n  - {name: a, transport: local}\n  - {name: a, transport: local}\n"))
    with pytest.raises(DevicesFileError, match="no such devices file"):
        load_devices(tmp_path / "missing.yaml")


def test_adb_devices_run_tflite_and_executorch_only(tmp_path):
    with pytest.raises(DevicesFileError, match=r"run only tflite \(benchmark_model\) and executorch"):
        load_devices(write(tmp_path, "devices:\n  - {name: p, transport: adb, serial: x, backends: [torch]}\n"))


def test_devices_cli(tmp_path):
    path = write(tmp_path, "devices:\n  - {name: here, transport: local, backends: [onnxruntime]}\n")
    listing = CliRunner().invoke(main, ["devices", "list", "--devices-file", str(path)])
    assert listing.exit_code == 0 and "here" in listing.output
    check = CliRunner().invoke(main, ["devices", "check", "--devices-file", str(path)])
    assert check.exit_code == 0, check.output
    assert "here (local): usable" in check.output and "onnxruntime" in check.output
    bad = CliRunner().invoke(main, ["devices", "check", "nope", "--devices-file", str(path)])
    assert bad.exit_code == 2 and "unknown device 'nope'" in bad.output
    broken = write(tmp_path, "devices:\n  - {name: b, transport: local, python: /nonexistent/python3}\n")
    failed = CliRunner().invoke(main, ["devices", "check", "--devices-file", str(broken)])
    assert failed.exit_code == 1 and "NOT USABLE" in failed.output


def test_each_device_says_what_it_runs_and_what_it_skips(tmp_path):
    from harness import plan

    path = write(tmp_path, "devices:\n"
                           "  - {name: here, transport: local, backends: [onnxruntime]}\n"
                           "  - {name: phone, transport: adb, serial: x}\n")
    devices = load_devices(path)
    here, phone = plan.device_lines([devices["here"], devices["phone"]], ["onnxruntime", "tflite"])
    assert here.startswith("here: onnxruntime; skips tflite (not among its backends in ")
    assert phone == ("phone: tflite; skips onnxruntime (adb devices run only tflite (benchmark_model) and "
                     "executorch (ExecuTorch's executor_runner))")


def test_tables_are_not_cut_when_stdout_is_not_a_terminal(tmp_path):
    long_name = "a-device-with-a-long-name-" + "x" * 60
    path = write(tmp_path, f"devices:\n  - {{name: {long_name}, transport: local, backends: [onnxruntime]}}\n")
    listing = CliRunner().invoke(main, ["devices", "list", "--devices-file", str(path)], env={"COLUMNS": "80"})
    assert listing.exit_code == 0 and long_name in listing.output, listing.output


def test_machine_field_groups_devices_and_thermal_typos_are_errors(tmp_path):
    from harness.dispatch import machine_of

    devices = load_devices(write(tmp_path, """devices:
  - name: local
    transport: local
  - name: emulator
    transport: adb
    serial: emulator-5554
    machine: this host
  - name: phone
    transport: adb
    serial: 28031FDH2000AB
"""))
    # An emulator on this host takes turns with local jobs; a real phone measures beside them.
    assert machine_of(devices["emulator"]) == machine_of(devices["local"]) == "this host"
    assert machine_of(devices["phone"]) == "adb:28031FDH2000AB"
    with pytest.raises(DevicesFileError) as err:
        load_devices(write(tmp_path, """devices:
  - name: local
    transport: local
    machine: ""
    thermal: {cooldown: 40}
"""))
    message = str(err.value)
    assert "devices.yaml:4" in message and "machine" in message
    assert "devices.yaml:5" in message and "thermal.cooldown" in message and "cooldown_c" in message


def test_executorch_jobs_only_for_the_delegate_it_was_lowered_to(tmp_path):
    devices = load_devices(write(tmp_path, "devices:\n  - {name: p, transport: adb, serial: x, "
                                           "backends: [tflite, executorch], delegates: [xnnpack, gpu]}\n"))
    jobs = plan.make_jobs([devices["p"]], plan.Selection(["conv-standard-M8-N8-k3-x8-s1"], None, [1]))
    assert sorted((j.backend, j.delegate) for j in jobs) == [
        ("executorch", "xnnpack"), ("tflite", "gpu"), ("tflite", "xnnpack")]
