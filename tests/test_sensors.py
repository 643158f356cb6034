"""Sensors read from sysfs-shaped directories: the code path is the one used on real hardware."""

import time
from pathlib import Path

import pytest

from backends import runner


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path


def rapl_tree(root: Path, energy_uj: int, max_uj: int = 262143328850) -> Path:
    base = "class/powercap/intel-rapl:0"
    write(root, f"{base}/name", "package-0")
    write(root, f"{base}/max_energy_range_uj", str(max_uj))
    write(root, f"{base}/intel-rapl:0:0/energy_uj", "5")  # a subdomain: must not be double counted
    write(root, f"{base}/intel-rapl:0:0/name", "core")
    return write(root, f"{base}/energy_uj", str(energy_uj))


def test_rapl_counter_and_wraparound(tmp_path):
    counter = rapl_tree(tmp_path, energy_uj=999_000_000, max_uj=1_000_000_000)
    sensor = runner.open_energy_sensor({"sensor": "rapl"}, str(tmp_path))
    assert sensor.name == "rapl:package-0"
    sensor.start()
    counter.write_text("4000000\n")  # wrapped: 1 J to the top, then 4 J
    assert sensor.stop() == pytest.approx(5.0)
    sensor.start()
    counter.write_text("6000000\n")
    assert sensor.stop() == pytest.approx(2.0)


def test_auto_prefers_rapl_and_explains_absence(tmp_path):
    with pytest.raises(runner.EnergyUnavailable) as info:
        runner.open_energy_sensor({"sensor": "auto"}, str(tmp_path))
    assert "RAPL" in str(info.value) and "hwmon" in str(info.value) and "current_now" in str(info.value)
    rapl_tree(tmp_path, 10)
    assert runner.open_energy_sensor(None, str(tmp_path)).name.startswith("rapl")
    with pytest.raises(runner.EnergyUnavailable, match="disabled"):
        runner.open_energy_sensor({"sensor": "none"}, str(tmp_path))


def test_unreadable_rapl_says_why(tmp_path):
    base = tmp_path / "class/powercap/intel-rapl:0"
    base.mkdir(parents=True)
    (base / "energy_uj").mkdir()  # exists but cannot be read as a file
    with pytest.raises(runner.EnergyUnavailable, match="not readable"):
        runner.open_energy_sensor({"sensor": "rapl"}, str(tmp_path))


def test_hwmon_energy_counter_and_power_sampling(tmp_path):
    energy = write(tmp_path, "class/hwmon/hwmon3/energy1_input", "1000000")
    sensor = runner.open_energy_sensor({"sensor": "hwmon"}, str(tmp_path))
    sensor.start()
    energy.write_text("3500000\n")
    assert sensor.stop() == pytest.approx(2.5)
    energy.unlink()
    write(tmp_path, "class/hwmon/hwmon3/power1_input", "4000000")  # 4 W in microwatts
    sensor = runner.open_energy_sensor({"sensor": "hwmon"}, str(tmp_path))
    sensor.start()
    time.sleep(0.3)
    joules = sensor.stop()
    assert joules == pytest.approx(4.0 * 0.3, rel=0.25)


def test_ina3221_channels(tmp_path):
    write(tmp_path, "class/hwmon/hwmon1/in1_input", "5000")  # mV
    write(tmp_path, "class/hwmon/hwmon1/curr1_input", "400")  # mA -> 2 W
    write(tmp_path, "class/hwmon/hwmon1/in2_input", "1000")
    write(tmp_path, "class/hwmon/hwmon1/curr2_input", "1000")  # 1 W
    sensor = runner.open_energy_sensor({"sensor": "ina3221"}, str(tmp_path))
    sensor.start()
    time.sleep(0.2)
    assert sensor.stop() == pytest.approx(3.0 * 0.2, rel=0.3)


@pytest.mark.parametrize(("current", "voltage", "watts"), [
    (500_000, 4_000_000, 2.0),  # microamps, microvolts (the ABI)
    (-500_000, 4_000_000, 2.0),  # discharging shown as negative on some phones
    (500, 4000, 2.0),  # milliamps, millivolts (some vendors)
    (500, 4_000_000, 2.0),  # mixed
])
def test_power_supply_units(current, voltage, watts):
    assert runner.power_supply_watts(current, voltage) == pytest.approx(watts)


def test_power_supply_sensor_integrates(tmp_path):
    write(tmp_path, "class/power_supply/battery/current_now", "250000")
    write(tmp_path, "class/power_supply/battery/voltage_now", "4000000")
    sensor = runner.open_energy_sensor({"sensor": "battery"}, str(tmp_path))
    sensor.start()
    time.sleep(0.3)
    assert sensor.stop() == pytest.approx(0.3, rel=0.25)


def test_integrate_power_trapezoid():
    assert runner.integrate_power([(0.0, 1.0), (1.0, 3.0), (3.0, 3.0)]) == pytest.approx(2.0 + 6.0)


def test_thermal_and_cpufreq(tmp_path):
    write(tmp_path, "class/thermal/thermal_zone0/type", "x86_pkg_temp")
    write(tmp_path, "class/thermal/thermal_zone0/temp", "45500")
    write(tmp_path, "class/thermal/thermal_zone1/type", "x86_pkg_temp")
    write(tmp_path, "class/thermal/thermal_zone1/temp", "47000")
    for cpu in (0, 1, 10):
        write(tmp_path, f"devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq", "1800000")
        write(tmp_path, f"devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq", "2400000")
        write(tmp_path, f"devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor", "schedutil")
    zones = runner.read_thermal(str(tmp_path))
    assert zones == {"x86_pkg_temp": 45.5, "x86_pkg_temp/thermal_zone1": 47.0}
    freqs = runner.read_cpufreq(str(tmp_path))
    assert list(freqs) == ["cpu0", "cpu1", "cpu10"]
    assert freqs["cpu10"] == {"cur_khz": 1800000, "max_khz": 2400000, "governor": "schedutil"}
    state = runner.system_state(str(tmp_path))
    assert state["thermal_c"] == zones and len(state["loadavg"]) == 3
    fingerprint = runner.fingerprint(str(tmp_path))
    assert fingerprint["governor"] == "schedutil" and fingerprint["cpu_max_khz"] == [2400000]
