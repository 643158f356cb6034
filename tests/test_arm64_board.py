"""The emulated aarch64 board answers over SSH like a Raspberry Pi 4 and runs both runtimes.

Plain paramiko only (no convbench code): this checks the rig itself, so the SSH backend's
own tests can rely on it.
"""
# ruff: noqa: F811 - the fixtures are imported here, pytest passes them back as arguments

from __future__ import annotations

import io
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rigs.arm64_fixtures import arm64_board, arm64_board_image  # noqa: F401

paramiko = pytest.importorskip("paramiko")

pytestmark = pytest.mark.arm64

REMOTE_DIR = "/tmp/convbench-rig-test"


class Remote:
    def __init__(self, client):
        self.client = client

    def run(self, cmd: str, timeout: float = 180) -> tuple[int, str, str]:
        _, out, err = self.client.exec_command(cmd, timeout=timeout)
        o, e = out.read().decode(), err.read().decode()
        return out.channel.recv_exit_status(), o, e

    def check(self, cmd: str, timeout: float = 180) -> str:
        rc, o, e = self.run(cmd, timeout)
        assert rc == 0, f"{cmd!r} -> rc={rc}\nstdout:\n{o}\nstderr:\n{e}"
        return o

    def put_bytes(self, data: bytes, path: str) -> None:
        with self.client.open_sftp() as sftp:
            sftp.putfo(io.BytesIO(data), path)

    def put_npy(self, arr: np.ndarray, path: str) -> None:
        buf = io.BytesIO()
        np.save(buf, arr)
        self.put_bytes(buf.getvalue(), path)

    def get_npy(self, path: str) -> np.ndarray:
        buf = io.BytesIO()
        with self.client.open_sftp() as sftp:
            sftp.getfo(path, buf)
        buf.seek(0)
        return np.load(buf)


@pytest.fixture(scope="module")
def remote(arm64_board, tmp_path_factory):
    known_hosts = tmp_path_factory.mktemp("ssh") / "known_hosts"
    known_hosts.write_text(arm64_board.known_hosts_line + "\n")
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())  # the host key must match
    client.connect(arm64_board.host, port=arm64_board.port, username=arm64_board.user,
                   key_filename=str(arm64_board.user_key_path), look_for_keys=False,
                   allow_agent=False, timeout=30, banner_timeout=60, auth_timeout=60)
    r = Remote(client)
    r.check(f"mkdir -p {REMOTE_DIR}")
    yield r
    client.close()


# ----------------------------------------------------------------------- references

def conv2d_nchw(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """Stride-1 2-D convolution (cross-correlation), NCHW x OIHW -> NCHW, in float64."""
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + oh, j:j + ow], w[:, :, i, j])
    return out + b.reshape(1, o, 1, 1)


def make_onnx_conv(w: np.ndarray, b: np.ndarray, in_shape, pad: int) -> bytes:
    """A one-node ONNX Conv (stride 1, symmetric padding), NCHW."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    n, _, h, wd = in_shape
    out_shape = [n, w.shape[0], h + 2 * pad - w.shape[2] + 1, wd + 2 * pad - w.shape[3] + 1]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(w.shape[2:]),
                            pads=[pad] * 4, strides=[1, 1])
    graph = helper.make_graph(
        [node], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by any recent onnxruntime
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_tflite_conv(w_ohwi: np.ndarray, b: np.ndarray, in_shape_nhwc) -> bytes | None:
    """A one-op CONV_2D (SAME padding, stride 1) .tflite built from the flatbuffer schema."""
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as s
    except ImportError:
        return None
    out_shape = [in_shape_nhwc[0], in_shape_nhwc[1], in_shape_nhwc[2], w_ohwi.shape[0]]

    def buffer(arr=None):
        buf = s.BufferT()
        if arr is not None:
            buf.data = np.frombuffer(np.ascontiguousarray(arr).tobytes(), dtype=np.uint8)
        return buf

    def tensor(name, shape, buf_idx):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, np.array(shape, np.int32), s.TensorType.FLOAT32, buf_idx
        return t

    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.CONV_2D
    code.version = 1
    opts = s.Conv2DOptionsT()
    opts.padding, opts.strideW, opts.strideH = s.Padding.SAME, 1, 1
    opts.dilationWFactor = opts.dilationHFactor = 1
    opts.fusedActivationFunction = s.ActivationFunctionType.NONE
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.Conv2DOptions, opts
    sub = s.SubGraphT()
    sub.tensors = [tensor("x", in_shape_nhwc, 1), tensor("w", w_ohwi.shape, 2),
                   tensor("b", b.shape, 3), tensor("y", out_shape, 4)]
    sub.inputs, sub.outputs, sub.operators, sub.name = [0], [3], [op], "main"
    model = s.ModelT()
    model.version, model.description = 3, "convbench rig conv"
    model.operatorCodes, model.subgraphs = [code], [sub]
    model.buffers = [buffer(), buffer(), buffer(w_ohwi.astype(np.float32)),
                     buffer(b.astype(np.float32)), buffer()]
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


RUN_ONNX = """
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1
sess = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
np.save(sys.argv[3], sess.run(None, {sess.get_inputs()[0].name: x})[0])
print(ort.get_device(), sess.get_providers())
"""

RUN_TFLITE = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1], num_threads=1)
it.allocate_tensors()
it.set_tensor(it.get_input_details()[0]["index"], np.load(sys.argv[2]))
it.invoke()
np.save(sys.argv[3], it.get_tensor(it.get_output_details()[0]["index"]))
"""


def run_py(remote: Remote, script: str, *args: str) -> str:
    path = f"{REMOTE_DIR}/script_{abs(hash(script))}.py"
    remote.put_bytes(script.encode(), path)
    return remote.check("python3 " + " ".join(shlex.quote(a) for a in (path, *args)))


# ----------------------------------------------------------------------- tests

def test_board_is_aarch64(remote):
    assert remote.check("uname -m").strip() == "aarch64"
    assert remote.check("hostname").strip() == "raspberrypi"
    fact = remote.check("cat /etc/convbench-board")
    assert "emulated=qemu-user" in fact and "Raspberry Pi 4" in fact
    cpuinfo = remote.check("cat /proc/cpuinfo")
    assert "CPU part\t: 0xd08" in cpuinfo  # Cortex-A72
    assert remote.check("python3 -c 'import platform; print(platform.machine())'").strip() == "aarch64"


def test_runtimes_import(remote):
    out = remote.check('python3 -c "import onnxruntime, ai_edge_litert, numpy; '
                       'print(onnxruntime.__version__)"')
    assert out.strip().split(".")[0].isdigit(), out
    remote.check('python3 -c "import ai_edge_litert.interpreter"')


def test_onnx_conv_matches_host_reference(remote):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 12, 12), dtype=np.float32)
    w = rng.standard_normal((8, 3, 3, 3), dtype=np.float32)
    b = rng.standard_normal(8, dtype=np.float32)
    model = make_onnx_conv(w, b, x.shape, pad=1)
    remote.put_bytes(model, f"{REMOTE_DIR}/conv.onnx")
    remote.put_npy(x, f"{REMOTE_DIR}/x.npy")
    out = run_py(remote, RUN_ONNX, f"{REMOTE_DIR}/conv.onnx", f"{REMOTE_DIR}/x.npy",
                 f"{REMOTE_DIR}/y_onnx.npy")
    assert "CPUExecutionProvider" in out
    y = remote.get_npy(f"{REMOTE_DIR}/y_onnx.npy")
    ref = conv2d_nchw(x, w, b, pad=1)
    assert y.shape == ref.shape == (1, 8, 12, 12)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_tflite_conv_matches_host_reference(remote):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 10, 10, 3), dtype=np.float32)  # NHWC
    w = rng.standard_normal((6, 3, 3, 3), dtype=np.float32)  # OHWI
    b = rng.standard_normal(6, dtype=np.float32)
    model = make_tflite_conv(w, b, x.shape)
    if model is None:  # no flatbuffer schema on the host: at least the runtime imports
        remote.check('python3 -c "from ai_edge_litert.interpreter import Interpreter"')
        return
    remote.put_bytes(model, f"{REMOTE_DIR}/conv.tflite")
    remote.put_npy(x, f"{REMOTE_DIR}/x_nhwc.npy")
    run_py(remote, RUN_TFLITE, f"{REMOTE_DIR}/conv.tflite", f"{REMOTE_DIR}/x_nhwc.npy",
           f"{REMOTE_DIR}/y_tflite.npy")
    y = remote.get_npy(f"{REMOTE_DIR}/y_tflite.npy")
    ref = conv2d_nchw(x.transpose(0, 3, 1, 2), w.transpose(0, 3, 1, 2), b, pad=1)
    np.testing.assert_allclose(y, ref.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)


def test_board_reads_its_own_sysfs(arm64_board, remote):
    zone = "/sys/class/thermal/thermal_zone0"
    assert remote.check(f"cat {zone}/type").strip() == "cpu-thermal"
    arm64_board.set_temperature(61.234)
    assert remote.check(f"cat {zone}/temp").strip() == "61234"
    arm64_board.set_temperature(47.0)
    py = "print(int(open('/sys/class/thermal/thermal_zone0/temp').read()) / 1000)"
    assert remote.check(f'python3 -c "{py}"').strip() == "47.0"
    arm64_board.set_frequency(1_200_000, cpu=2)
    cpu2 = "/sys/devices/system/cpu/cpu2/cpufreq"
    assert remote.check(f"cat {cpu2}/scaling_cur_freq").strip() == "1200000"
    assert remote.check(f"cat {cpu2}/cpuinfo_max_freq").strip() == "1800000"
    assert remote.check(f"cat {cpu2}/scaling_governor").strip() == "ondemand"
    assert remote.check("cat /sys/devices/system/cpu/online").strip() == "0-3"
    assert remote.check("python3 -c 'import os; print(os.cpu_count())'").strip() == "4"
    # nothing of the host's sysfs leaks in
    assert remote.run("ls /sys/class/net")[0] != 0


# ----------------------------------------------------------------------- more backends

def _build_module():
    import importlib

    return importlib.import_module("harness.lab.arm64_board.build")


def test_every_backend_runs_on_the_board_or_is_refused_with_the_reason():
    from harness.registry import BACKENDS

    build = _build_module()
    assert build.board_backends("") == []
    assert build.board_backends("onnxruntime,tflite") == []  # the default image's
    assert build.board_backends("torch executorch,torch") == ["executorch", "torch"]
    with pytest.raises(build.BuildError, match="ai-edge-litert"):
        build.board_backends("litert")
    with pytest.raises(build.BuildError, match="no CUDA"):
        build.board_backends("torch-cuda")
    with pytest.raises(build.BuildError, match="unknown backend"):
        build.board_backends("tensorrt")
    # A backend added to the registry must be decided for the board too.
    undecided = [name for name in BACKENDS if name not in
                 {*build.BASE_BACKENDS, *build.BACKEND_WHEELS, *build.NOT_ON_BOARD}]
    assert not undecided, undecided
    assert build.backends_hash(["executorch"]) != build.backends_hash(["executorch", "torch"])


STUB_CALLS = """
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
count = ctypes.c_int(7)
status = lib.cudaGetDeviceCount(ctypes.byref(count))
lib.cudaGetErrorString.restype = ctypes.c_char_p
print(status, count.value, lib.cudaGetErrorString(status).decode(), lib.cudaMalloc(None, 16))
"""


def test_cuda_stand_in_library_says_no_device_on_the_board(remote, tmp_path):
    """What build.py gives torch for each CUDA library: aarch64, versioned like NVIDIA's, no device."""
    import shutil

    build = _build_module()
    if shutil.which("aarch64-linux-gnu-as") is None:
        pytest.skip("no aarch64 binutils (Debian binutils-aarch64-linux-gnu; build.py --backends torch installs it)")
    symbols = {"cudaGetDeviceCount": ("libcudart.so.13", "FUNC", 0),
               "cudaGetErrorString": ("libcudart.so.13", "FUNC", 0),
               "cudaMalloc": ("libcudart.so.13", "FUNC", 0), "cudaSomeTable": ("", "OBJECT", 24)}
    build.write_stub_library("libcudart.so.13", symbols, tmp_path)
    lib = tmp_path / "libcudart.so.13"
    assert build.elf_needed(lib) == []
    found = {name: (version, typ, defined) for name, version, typ, _bind, defined, _size in build.elf_symbols(lib)}
    assert found["cudaGetDeviceCount"] == ("libcudart.so.13", "FUNC", True)
    assert found["cudaSomeTable"][1:] == ("OBJECT", True)
    remote.put_bytes(lib.read_bytes(), f"{REMOTE_DIR}/libcudart.so.13")
    out = run_py(remote, STUB_CALLS, f"{REMOTE_DIR}/libcudart.so.13").split()
    assert out[:2] == ["100", "0"], out  # cudaErrorNoDevice, no devices
    assert "no CUDA on this board" in " ".join(out) and out[-1] == "100", out
