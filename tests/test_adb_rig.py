"""AdbClient and the loopback device against the real adb server (and the real ``adb`` client).

The device (harness/lab/adb_device.py) speaks the device side of the ADB protocol on
127.0.0.1 and runs commands in a bubblewrap sandbox; an isolated adb server (its own port
and HOME) connects to it with ``adb connect``.  AdbClient talks to that server through
adbutils (no adb process per call); the real ``adb`` client checks the rig itself
(directory push/pull, ``ls``, stdin, the legacy services).
"""
# ruff: noqa: F811 - the fixtures are imported here, pytest passes them back as arguments

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from backends.adb import (
    AdbClient,
    AdbCommandFailed,
    AdbDeviceNotFound,
    AdbError,
    AdbNotInstalled,
    AdbOffline,
    AdbTimeout,
    AdbUnauthorized,
    integrate_energy,
    power_supply_units,
    quote_args,
)
from backends.base import DeviceError
from backends.benchmark_model import parse_benchmark_output
from tests.rigs.adb_fixtures import (  # noqa: F401
    STANDIN,
    AdbServer,
    ConnectedDevice,
    adb_device,
    adb_device_factory,
    adb_processes,
    adb_server,
    free_port,
    make_tiny_tflite,
)

rig = pytest.mark.rig


# -- pure helpers -------------------------------------------------------------------------


def test_power_supply_units_from_magnitudes() -> None:
    s = power_supply_units("-350000", "3850000")  # kernel ABI: microamps, microvolts
    assert (s.current_unit, s.voltage_unit) == ("uA", "uV")
    assert s.current_a == pytest.approx(-0.35) and s.voltage_v == pytest.approx(3.85)
    assert s.watts == pytest.approx(1.3475)
    s = power_supply_units(420, 3912)  # vendors that report milliamps and millivolts
    assert (s.current_unit, s.voltage_unit) == ("mA", "mV")
    assert s.watts == pytest.approx(0.42 * 3.912)
    s = power_supply_units(1200000, 4.1)
    assert (s.current_unit, s.voltage_unit) == ("uA", "V") and s.watts == pytest.approx(1.2 * 4.1)
    assert power_supply_units(0, 3850000).watts == 0.0


def test_integrate_energy_trapezoid() -> None:
    assert integrate_energy([]) == 0.0
    assert integrate_energy([(0.0, 5.0)]) == 0.0
    assert integrate_energy([(0.0, 2.0), (1.0, 2.0), (3.0, 2.0)]) == pytest.approx(6.0)
    assert integrate_energy([(0.0, 0.0), (2.0, 4.0)]) == pytest.approx(4.0)  # a ramp
    with pytest.raises(ValueError):
        integrate_energy([(1.0, 1.0), (0.5, 1.0)])


def test_quote_args() -> None:
    assert quote_args(["printf", "%s|", "a b", "it's"]) == "printf '%s|' 'a b' 'it'\"'\"'s'"


def test_missing_adb_executable() -> None:
    with pytest.raises(AdbNotInstalled, match="not found"):
        AdbClient(adb_path="/nonexistent/bin/adb")


# -- against the real adb -----------------------------------------------------------------


@rig
def test_connect_and_list(adb_device: ConnectedDevice, adb_server: AdbServer) -> None:
    client = adb_device.client()
    assert (adb_device.serial, "device") in client.devices()
    assert client.get_state() == "device"
    assert client.connect(adb_device.serial) == "device"  # "already connected to ..."
    assert "shell_v2" in client.features()
    listing = adb_server.run("devices", "-l").stdout
    assert "model:LoopbackPhone" in listing and "device:loopback" in listing


@rig
def test_one_shot_calls_start_no_adb_process(adb_device: ConnectedDevice, tmp_path) -> None:
    client = adb_device.client()
    local = tmp_path / "blob.bin"
    local.write_bytes(b"x" * 1000)
    with adb_processes() as started:
        assert client.get_state() == "device" and (adb_device.serial, "device") in client.devices()
        assert client.shell("echo hi; echo err >&2; exit 3", timeout=30) == (3, "hi\n", "err\n")
        client.push(local, "/data/local/tmp/blob.bin")
        assert client.stat("/data/local/tmp/blob.bin")[0] == 1000  # type: ignore[index]
        assert client.pull("/data/local/tmp/blob.bin", tmp_path / "back.bin").read_bytes() == b"x" * 1000
        assert client.getprop("ro.product.model") == "LoopbackPhone"
        assert client.connect(adb_device.serial) == "device"
    assert started == []
    assert [s for s in adb_device.device.opened_services if s.startswith("shell")] == [
        "shell,v2,raw:echo hi; echo err >&2; exit 3", "shell,v2,raw:getprop ro.product.model"]


@rig
def test_the_server_is_started_once_on_the_configured_port(adb_server: AdbServer, tmp_path) -> None:
    port = free_port()
    env = {"ANDROID_ADB_SERVER_PORT": str(port), "HOME": str(tmp_path), "ANDROID_USER_HOME": str(tmp_path / ".a")}
    client = AdbClient(adb_server.adb, env=env)
    try:
        with adb_processes() as started:
            assert client.devices() == []
            assert client.devices() == []
        assert started == [[adb_server.adb, "start-server"]]  # the one use of the adb executable
        assert AdbServer(adb_server.adb, port, tmp_path, env).run("devices").returncode == 0
    finally:
        AdbServer(adb_server.adb, port, tmp_path, env).run("kill-server")


@rig
def test_shell_stream_lines_arrive_as_printed(adb_device: ConnectedDevice) -> None:
    client = adb_device.client()
    arrivals: list[tuple[float, str, str]] = []
    code, out, err = client.shell_stream("echo one; sleep 1; echo two >&2; sleep 0.3; printf three",
                                         lambda stream, line: arrivals.append((time.monotonic(), stream, line)),
                                         timeout=30)
    assert (code, out, err) == (0, "one\nthree", "two\n")
    assert [(stream, line) for _t, stream, line in arrivals] == [("stdout", "one\n"), ("stderr", "two\n"),
                                                                ("stdout", "three")]
    assert arrivals[1][0] - arrivals[0][0] >= 0.9  # the first line came while the command ran


@rig
def test_closing_a_shell_session_ends_the_remote_command(adb_device: ConnectedDevice) -> None:
    client = adb_device.client()
    ticks = adb_device.root / "data/local/tmp/ticks"
    session = client.open_shell("while :; do echo tick; echo tick >> /data/local/tmp/ticks; sleep 0.05; done")
    lines = session.lines(time.monotonic() + 30)
    assert [next(lines) for _ in range(3)] == [("stdout", "tick\n")] * 3
    session.close()
    assert session.exit_code is None
    time.sleep(0.5)
    count = len(ticks.read_text().splitlines())
    time.sleep(0.5)
    assert len(ticks.read_text().splitlines()) == count  # the loop on the device is gone
    assert adb_device.device.running_commands == 0
    assert client.shell("echo next", timeout=30) == (0, "next\n", "")


@rig
def test_shell_exit_codes_and_streams(adb_device: ConnectedDevice) -> None:
    client = adb_device.client()
    assert client.shell("echo out; echo err >&2; exit 7", timeout=30) == (7, "out\n", "err\n")
    assert client.shell("true", timeout=30) == (0, "", "")
    assert client.shell("kill -9 $$", timeout=30)[0] == 128 + 9
    with pytest.raises(AdbCommandFailed) as info:
        client.shell("ls /data/local/tmp/does-not-exist", timeout=30, check=True)
    assert info.value.exit_code != 0 and "does-not-exist" in info.value.stderr


@rig
def test_remote_arguments_are_quoted(adb_device: ConnectedDevice) -> None:
    client = adb_device.client()
    args = ["printf", "%s|", "a b", "it's", "$HOME", "`id`", "; rm -rf /data"]
    code, out, _err = client.shell(quote_args(args), timeout=30)
    assert code == 0 and out == "a b|it's|$HOME|`id`|; rm -rf /data|"
    (adb_device.root / "data/local/tmp/odd name; x").write_text("quoted\n")
    assert client.read_file("/data/local/tmp/odd name; x") == "quoted\n"


@rig
def test_stdin_and_legacy_services(adb_device: ConnectedDevice, adb_server: AdbServer) -> None:
    env = {**os.environ, **adb_device.env}
    piped = subprocess.run(
        [adb_server.adb, "-s", adb_device.serial, "shell", "cat; echo done"],
        input=b"hello through shell v2 stdin\n",
        capture_output=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert piped.returncode == 0 and piped.stdout == b"hello through shell v2 stdin\ndone\n"
    legacy = adb_server.run("-s", adb_device.serial, "shell", "-x", "echo a; echo b >&2; exit 3")
    assert legacy.returncode == 0 and legacy.stdout == "a\nb\n"  # no exit code without shell v2
    raw = adb_server.run("-s", adb_device.serial, "exec-out", "printf 'x\\001y'")
    assert raw.stdout == "x\x01y"


@rig
def test_push_pull_3mb_byte_exact(adb_device: ConnectedDevice, tmp_path) -> None:
    client = adb_device.client()
    payload = os.urandom(3 * 1024 * 1024 + 4321)
    local = tmp_path / "blob.bin"
    local.write_bytes(payload)
    os.utime(local, (1_700_000_000, 1_700_000_000))
    client.push(local, "/data/local/tmp/new/dir/blob.bin", timeout=60)  # parents are created
    on_device = adb_device.root / "data/local/tmp/new/dir/blob.bin"
    assert on_device.read_bytes() == payload
    size, mode, mtime = client.stat("/data/local/tmp/new/dir/blob.bin")  # type: ignore[misc]
    assert size == len(payload) and mode & 0o170000 == 0o100000 and mtime == 1_700_000_000
    code, out, _ = client.shell("sha256sum /data/local/tmp/new/dir/blob.bin", timeout=30)
    assert code == 0 and out.split()[0] == hashlib.sha256(payload).hexdigest()
    back = client.pull("/data/local/tmp/new/dir/blob.bin", tmp_path / "back.bin", timeout=60)
    assert back.read_bytes() == payload
    client.push(local, "/data/local/tmp/odd dir/it's $HOME.bin")  # sync paths are literal, never a shell's
    assert (adb_device.root / "data/local/tmp/odd dir/it's $HOME.bin").read_bytes() == payload
    assert client.stat("/data/local/tmp/odd dir/it's $HOME.bin")[0] == len(payload)  # type: ignore[index]
    assert client.stat("/data/local/tmp/nothing-here") is None
    with pytest.raises(AdbCommandFailed, match="nothing-here"):
        client.pull("/data/local/tmp/nothing-here", tmp_path / "x")
    with pytest.raises(AdbCommandFailed, match="Read-only file system"):
        client.push(local, "/system/bin/readonly.bin")
    assert not (tmp_path / "x").exists()


@rig
def test_sync_stat_and_list(adb_device: ConnectedDevice, adb_server: AdbServer, tmp_path) -> None:
    client = adb_device.client()
    local = tmp_path / "model.tflite"
    local.write_bytes(b"\0" * 1000)
    client.push(local, "/data/local/tmp/")  # into a directory
    client.push(local, "/data/local/tmp/new")  # a new name
    (adb_device.root / "data/local/tmp/sub").mkdir()
    client.push(local, "/data/local/tmp/sub")  # STAT says it is a directory: into it
    for name in ("model.tflite", "new", "sub/model.tflite"):
        assert (adb_device.root / "data/local/tmp" / name).stat().st_size == 1000
    listing = adb_server.run("-s", adb_device.serial, "ls", "/data/local/tmp").stdout
    entries = {line.split()[-1]: line.split() for line in listing.splitlines()}
    assert int(entries["model.tflite"][1], 16) == 1000 and "." in entries and ".." in entries
    with pytest.raises(IsADirectoryError):
        client.push(tmp_path, "/data/local/tmp/")  # one file at a time

    # Directories, symlinks and several DATA chunks, through the real adb client.
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "weights.bin").write_bytes(b"w" * 70_000)  # more than one 64 KiB DATA chunk
    (tree / "link").symlink_to("sub/weights.bin")
    assert adb_server.run("-s", adb_device.serial, "push", str(tree), "/data/local/tmp/").returncode == 0
    pushed = adb_device.root / "data/local/tmp/tree"
    assert os.readlink(pushed / "link") == "sub/weights.bin"
    assert (pushed / "sub" / "weights.bin").read_bytes() == b"w" * 70_000
    back = tmp_path / "back"
    assert adb_server.run("-s", adb_device.serial, "pull", "/data/local/tmp/tree", str(back)).returncode == 0
    assert (back / "sub" / "weights.bin").read_bytes() == b"w" * 70_000  # LIST + RECV per file
    assert client.pull("/data/local/tmp/tree/sub/weights.bin", tmp_path / "w.bin").read_bytes() == b"w" * 70_000


@rig
def test_getprop_and_sysfs(adb_device: ConnectedDevice) -> None:
    client = adb_device.client()
    assert client.getprop("ro.product.model") == "LoopbackPhone"
    adb_device.set_prop("ro.product.model", "Pixel Loopback Pro")
    adb_device.set_prop("ro.soc.model", "SM8650")
    assert client.getprop("ro.product.model") == "Pixel Loopback Pro"
    assert client.getprop("ro.soc.model") == "SM8650"
    assert client.getprop("ro.does.not.exist") == ""
    adb_device.write_sys("class/thermal/thermal_zone0/temp", "48250\n")
    assert client.read_file("/sys/class/thermal/thermal_zone0/temp").strip() == "48250"
    adb_device.write_sys("class/power_supply/battery/current_now", "-512000\n")
    current = client.read_file("/sys/class/power_supply/battery/current_now")
    voltage = client.read_file("/sys/class/power_supply/battery/voltage_now")
    assert power_supply_units(current, voltage).watts == pytest.approx(0.512 * 3.85)
    with pytest.raises(AdbCommandFailed):
        client.read_file("/sys/class/thermal/thermal_zone9/temp")


@rig
def test_unauthorized_device(adb_device_factory: Callable[..., ConnectedDevice]) -> None:
    handle = adb_device_factory(authorized=False)
    client = handle.client()
    with adb_processes() as started:
        assert (handle.serial, "unauthorized") in client.devices()
        with pytest.raises(AdbUnauthorized, match="Allow USB debugging") as info:
            client.shell("echo hi", timeout=30)
        assert isinstance(info.value, DeviceError)
        with pytest.raises(AdbUnauthorized, match="RSA"):
            client.get_state()
        with pytest.raises(AdbUnauthorized):
            client.push(__file__, "/data/local/tmp/x")
        with pytest.raises(AdbUnauthorized):
            client.connect(handle.serial, timeout=30)
    assert started == []  # the server's own list says why, no adb output is read
    assert handle.device.offered_public_keys  # the client offered its key; nobody accepted it


@rig
def test_device_vanishes_mid_command(adb_device: ConnectedDevice) -> None:
    client = adb_device.client()
    assert client.shell("echo warm", timeout=30)[0] == 0
    timer = threading.Timer(1.0, adb_device.vanish)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises((AdbOffline, AdbDeviceNotFound), match="went away") as info:
            client.shell("echo start; sleep 30; echo end", timeout=25)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 15
    assert isinstance(info.value, DeviceError) and "end" not in info.value.stdout
    with pytest.raises((AdbOffline, AdbDeviceNotFound)):
        client.get_state(timeout=15)


@rig
def test_slow_device_times_out(adb_device: ConnectedDevice) -> None:
    client = adb_device.client()
    client.features()
    adb_device.device.response_delay = 5.0
    started = time.monotonic()
    with pytest.raises(AdbTimeout, match="timed out after 1 s"):
        client.shell("echo slow", timeout=1)
    assert time.monotonic() - started < 4
    adb_device.device.response_delay = 0.0
    assert client.shell("echo fine", timeout=30) == (0, "fine\n", "")


@rig
def test_unknown_serial_and_nothing_listening(adb_server: AdbServer) -> None:
    ghost = AdbClient(adb_server.adb, serial="127.0.0.1:1", env=adb_server.env)
    with pytest.raises(AdbDeviceNotFound):
        ghost.shell("echo hi", timeout=30)
    with pytest.raises(AdbDeviceNotFound, match="not found by the adb server"):
        ghost.push(__file__, "/data/local/tmp/x")
    with pytest.raises(AdbDeviceNotFound, match="not found by the adb server"):
        ghost.get_state()
    with pytest.raises(AdbDeviceNotFound, match="failed to connect"):
        AdbClient(adb_server.adb, env=adb_server.env).connect(f"127.0.0.1:{free_port()}", timeout=30)
    with pytest.raises(AdbError, match=r"adb start-server \(port \d+\) failed"):
        AdbClient("/bin/false", env={"ANDROID_ADB_SERVER_PORT": str(free_port())}).devices()


@rig
@pytest.mark.slow
def test_benchmark_standin_output_parses(adb_device: ConnectedDevice, tmp_path) -> None:
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI needs ai_edge_litert (the tflite extra) for the benchmark stand-in", pytrace=False)
        pytest.skip("ai_edge_litert is not installed")
    client = adb_device.client()
    model = make_tiny_tflite(tmp_path / "separable.tflite")
    client.push(model, "/data/local/tmp/separable.tflite")
    client.push(STANDIN, "/data/local/tmp/benchmark_model")
    client.shell("chmod 755 /data/local/tmp/benchmark_model", timeout=30, check=True)
    flags = [
        "/data/local/tmp/benchmark_model",
        "--graph=/data/local/tmp/separable.tflite",
        "--num_threads=1",
        "--num_runs=30",
        "--warmup_runs=3",
        "--min_secs=0",
        "--warmup_min_secs=0",
        "--report_peak_memory_footprint=true",
        "--enable_op_profiling=true",
    ]
    code, out, err = client.shell(quote_args(flags), timeout=120)
    assert code == 0, err
    r = parse_benchmark_output(out + err)
    assert r.complete and r.usable and r.errors == [], (r.errors, err)
    assert r.warmup is not None and r.warmup.count >= 3 and r.warmup.min_iterations == 3
    assert r.inference is not None and r.inference.count >= 30 and r.inference.min_iterations == 30
    assert r.inference.median is not None and r.inference.p95 is not None
    assert r.inference.min <= r.inference.median <= r.inference.p95 <= r.inference.max  # type: ignore[operator]
    assert len(r.timing_blocks) == 2
    assert r.inference_avg_us == pytest.approx(r.inference.avg)
    assert r.peak_memory_mb is not None and r.peak_memory_mb > 0 and r.memory_overall_mb is not None
    assert r.params["Graph"] == "/data/local/tmp/separable.tflite"
    assert r.delegate_name == "xnnpack" and (r.delegated_nodes, r.total_nodes) == (2, 2)
    assert not r.delegate_ran_nothing

    gpu = quote_args(
        [*flags[:2], "--num_runs=5", "--warmup_runs=1", "--min_secs=0", "--warmup_min_secs=0", "--use_gpu=true"]
    )
    code, out, err = client.shell(gpu, timeout=120)
    assert code == 0
    r = parse_benchmark_output(out + err)
    assert r.complete and r.delegate_name == "gpu" and r.delegated_nodes == 0
    assert r.delegate_ran_nothing and not r.usable

    code, out, err = client.shell(quote_args([flags[0], "--graph=/data/local/tmp/missing.tflite"]), timeout=120)
    assert code == 1
    r = parse_benchmark_output(out + err)
    assert "Failed to mmap model /data/local/tmp/missing.tflite" in r.errors and not r.complete


@rig
def test_device_without_shell_v2_still_reports_exit_codes(adb_device_factory: Callable[..., ConnectedDevice]) -> None:
    handle = adb_device_factory(features=("stat_v2", "ls_v2", "fixed_push_mkdir"))
    client = handle.client()
    assert "shell_v2" not in client.features()
    assert client.shell("printf 'no newline'; exit 3", timeout=30) == (3, "no newline", "")
    assert client.shell("echo out; echo err >&2", timeout=30) == (0, "out\nerr\n", "")  # one stream in v1
    assert handle.device.opened_services[-1].startswith("shell:")
