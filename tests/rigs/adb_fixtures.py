"""pytest fixtures around the real ``adb`` client and a loopback device (import them from
tests/conftest.py).

* ``adb_server`` (session): an adb server of its own - a random ``ANDROID_ADB_SERVER_PORT``
  and a private ``HOME`` (so its RSA key and ``~/.android`` never touch the user's) -
  killed with ``adb kill-server`` at the end of the session.
* ``adb_device_factory``: makes ``LoopbackAdbDevice``s (``authorized=False`` for the
  RSA-prompt case) and connects the server to them; all are dropped after the test.
* ``adb_device``: one authorized, connected device: ``.serial`` ("127.0.0.1:PORT"),
  ``.root`` (the sandbox directory), ``.set_prop(k, v)``, ``.write_sys(relpath, text)``,
  ``.vanish()``, ``.env`` (pass to ``AdbClient``) and ``.client()``.
* ``adb_processes()``: the adb processes this test process starts inside a ``with`` block
  (seen by an audit hook on every ``subprocess.Popen``).

Without ``adb``, ``adbutils`` or ``bwrap`` the tests are skipped, or fail when ``CI`` is set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import harness.lab as lab
from backends.adb import AdbClient
from harness.lab.adb_device import LoopbackAdbDevice, sandbox_available
from harness.lab.sshd import free_port

STANDIN = Path(lab.__file__).with_name("benchmark_model_standin.py")


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI needs this: {reason}", pytrace=False)
    pytest.skip(reason)


def require_adb() -> str:
    exe = shutil.which("adb")
    if exe is None:
        _missing("the adb client is not installed: apt-get install -y adb")
    return exe  # type: ignore[return-value]


def require_sandbox() -> None:
    reason = sandbox_available()
    if reason is not None:
        _missing(reason)


_WATCHED: list[list[list[str]]] = []  # the lists of the open adb_processes() blocks


def _audit(event: str, args: tuple) -> None:
    if event != "subprocess.Popen" or not _WATCHED:
        return
    argv = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
    argv = [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in argv]
    if argv and os.path.basename(argv[0]) == "adb":
        for seen in _WATCHED:
            seen.append(argv)


sys.addaudithook(_audit)


@contextlib.contextmanager
def adb_processes() -> Iterator[list[list[str]]]:
    """The argv of every adb process started (by this Python process) inside the block."""
    seen: list[list[str]] = []
    _WATCHED.append(seen)
    try:
        yield seen
    finally:
        _WATCHED.remove(seen)


@dataclass
class AdbServer:
    adb: str
    port: int
    home: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.adb, *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def state(self, serial: str) -> str:
        out = self.run("devices").stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == serial:
                return parts[1]
        return "absent"


def require_adbutils() -> None:
    try:
        import adbutils  # noqa: F401
    except ImportError:
        _missing("adbutils (the android extra) is not installed: pip install 'convbench[android]'")


@pytest.fixture(scope="session")
def adb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdbServer]:
    adb = require_adb()
    require_adbutils()
    home = tmp_path_factory.mktemp("adb_home")
    last_error = ""
    for _attempt in range(3):
        port = free_port()
        env = {
            "ANDROID_ADB_SERVER_PORT": str(port),
            "HOME": str(home),
            "ANDROID_USER_HOME": str(home / ".android"),
            "ANDROID_SDK_HOME": str(home),
        }
        server = AdbServer(adb, port, home, env)
        started = server.run("start-server", timeout=60)
        if started.returncode == 0:
            break
        last_error = started.stderr or started.stdout
    else:
        pytest.fail(f"cannot start an adb server: {last_error}", pytrace=False)
    try:
        yield server
    finally:
        server.run("kill-server", timeout=30)


@dataclass
class ConnectedDevice:
    """A loopback device the isolated adb server is connected to."""

    device: LoopbackAdbDevice
    server: AdbServer
    env: dict[str, str] = field(default_factory=dict)

    @property
    def serial(self) -> str:
        return self.device.serial

    @property
    def root(self) -> Path:
        return self.device.root

    def set_prop(self, key: str, value: str) -> None:
        self.device.set_prop(key, value)

    def write_sys(self, relpath: str, text: str) -> Path:
        return self.device.write_sys(relpath, text)

    def vanish(self) -> None:
        self.device.vanish()

    def client(self, **kwargs: object) -> AdbClient:
        return AdbClient(self.server.adb, serial=self.serial, env=self.env, **kwargs)  # type: ignore[arg-type]

    def state(self) -> str:
        return self.server.state(self.serial)


def connect(server: AdbServer, device: LoopbackAdbDevice, want: str = "device", timeout: float = 15) -> str:
    """``adb connect`` to the device and wait until it shows as ``want``."""
    server.run("connect", device.serial)
    deadline = time.monotonic() + timeout
    state = server.state(device.serial)
    while state != want and time.monotonic() < deadline:
        time.sleep(0.1)
        state = server.state(device.serial)
    return state


@pytest.fixture
def adb_device_factory(
    adb_server: AdbServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ConnectedDevice]]:
    require_sandbox()
    made: list[ConnectedDevice] = []

    def make(*, authorized: bool = True, **kwargs: object) -> ConnectedDevice:
        device = LoopbackAdbDevice(tmp_path_factory.mktemp("android"), authorized=authorized, **kwargs).start()  # type: ignore[arg-type]
        handle = ConnectedDevice(device, adb_server, dict(adb_server.env))
        made.append(handle)
        want = "device" if authorized else "unauthorized"
        state = connect(adb_server, device, want)
        if state != want:
            pytest.fail(f"loopback device {device.serial} is {state!r}, expected {want!r}", pytrace=False)
        return handle

    try:
        yield make
    finally:
        for handle in made:
            handle.device.stop()
            adb_server.run("disconnect", handle.serial)


@pytest.fixture
def adb_device(adb_device_factory: Callable[..., ConnectedDevice]) -> ConnectedDevice:
    return adb_device_factory()


def make_tiny_tflite(path: str | os.PathLike[str], channels: int = 4, size: int = 8, out_channels: int = 8) -> Path:
    """A real .tflite: NHWC input -> depthwise 3x3 conv -> pointwise 1x1 conv (float32).

    Built with the flatbuffer schema that ai_edge_litert ships, so no converter is needed.
    """
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    rng = np.random.default_rng(0)
    buffers = [schema.BufferT()]
    tensors: list[object] = []

    def tensor(name: str, shape: list[int], data: np.ndarray | None = None) -> int:
        t = schema.TensorT()
        t.name = name.encode()
        t.shape = shape
        t.type = schema.TensorType.FLOAT32
        t.buffer = 0
        if data is not None:
            b = schema.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data, dtype=np.float32).tobytes(), dtype=np.uint8).tolist()
            buffers.append(b)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    x = tensor("input", [1, size, size, channels])
    dw_w = tensor("depthwise/weights", [1, 3, 3, channels], rng.standard_normal((1, 3, 3, channels)))
    dw_b = tensor("depthwise/bias", [channels], np.zeros(channels))
    mid = tensor("depthwise/out", [1, size, size, channels])
    pw_shape = [out_channels, 1, 1, channels]
    pw_w = tensor("pointwise/weights", pw_shape, rng.standard_normal(pw_shape))
    pw_b = tensor("pointwise/bias", [out_channels], np.zeros(out_channels))
    y = tensor("output", [1, size, size, out_channels])

    codes = []
    for op in (schema.BuiltinOperator.DEPTHWISE_CONV_2D, schema.BuiltinOperator.CONV_2D):
        code = schema.OperatorCodeT()
        code.builtinCode = op
        code.deprecatedBuiltinCode = op
        code.version = 1
        codes.append(code)

    dw = schema.OperatorT()
    dw.opcodeIndex, dw.inputs, dw.outputs = 0, [x, dw_w, dw_b], [mid]
    dw.builtinOptionsType = schema.BuiltinOptions.DepthwiseConv2DOptions
    dw_opts = schema.DepthwiseConv2DOptionsT()
    dw_opts.padding = schema.Padding.SAME
    dw_opts.strideW = dw_opts.strideH = dw_opts.depthMultiplier = 1
    dw_opts.dilationWFactor = dw_opts.dilationHFactor = 1
    dw.builtinOptions = dw_opts

    pw = schema.OperatorT()
    pw.opcodeIndex, pw.inputs, pw.outputs = 1, [mid, pw_w, pw_b], [y]
    pw.builtinOptionsType = schema.BuiltinOptions.Conv2DOptions
    pw_opts = schema.Conv2DOptionsT()
    pw_opts.padding = schema.Padding.VALID
    pw_opts.strideW = pw_opts.strideH = 1
    pw_opts.dilationWFactor = pw_opts.dilationHFactor = 1
    pw.builtinOptions = pw_opts

    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [x], [y], [dw, pw]
    graph.name = b"main"
    model = schema.ModelT()
    model.version = 3
    model.description = b"convbench tiny separable conv"
    model.subgraphs, model.operatorCodes, model.buffers = [graph], codes, buffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = Path(path)
    out.write_bytes(bytes(builder.Output()))
    return out
