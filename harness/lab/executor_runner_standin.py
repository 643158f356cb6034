#!/usr/bin/env python3
"""A stand-in for ExecuTorch's ``executor_runner`` (XNNPACK build) that really runs the program.

It takes the flags of ``examples/portable/executor_runner/executor_runner.cpp`` at
pytorch/executorch main (cff6f4dd32e6) that convbench can use: ``--model_path``,
``--num_executions``, ``--cpu_threads``, ``--method_name``, ``--print_output`` (gflags
syntax: ``--name=value``, ``--name value``, one dash or two; ``--help`` lists them as gflags
does and exits 1; an unknown flag is refused as gflags refuses it).  It loads the ``.pte`` with
ExecuTorch's Python bindings (the same C++ runtime and XNNPACK delegate), sets the thread pool,
and runs the method ``--num_executions`` times on all-ones inputs, timing ``execute()`` alone
as the binary does.  It prints what a build with the posix PAL and logging on prints, line for
line in its format (``I 00:00:00.043703 executorch:executor_runner.cpp:789] ...`` on stderr,
``OutputX 0: tensor(...)`` on stdout): the threadpool lines, ``Model file .. is loaded.``,
``Using method ..``, ``Model loaded in X ms.``, ``Iteration i of N: X ms``, ``Model executed
successfully N time(s) in X ms.``, ``N outputs:``; and its failures: ``Failed to open`` then an
``ET_CHECK`` and ``abort()`` for a missing file, ``Program identifier`` then ``Failed to parse
model file`` (exit 1) for a file that is not a program.

``CONVBENCH_EXECUTOR_RUNNER_LOGGING=off`` makes it a Release build without logging: no log line,
only the output tensors (what ExecuTorch issue 15547 shows on a phone).
``CONVBENCH_EXECUTOR_RUNNER_PAL=android`` makes it a build of ExecuTorch's ``android`` preset,
whose PAL sends the bare message to logcat (tag ``ExecuTorch``): on the loopback phone, lines
appended to /data/misc/logcat in logcat's ``threadtime`` format, which its ``logcat`` prints.
"""

from __future__ import annotations

import os
import re
import sys
import time

START = time.monotonic()
FILE = "executor_runner.cpp"
LOGGING = os.environ.get("CONVBENCH_EXECUTOR_RUNNER_LOGGING", "on") != "off"
ANDROID_PAL = os.environ.get("CONVBENCH_EXECUTOR_RUNNER_PAL", "posix") == "android"
LOGCAT_FILE = "/data/misc/logcat"

# name -> (gflags type, default, description): the flags of executor_runner.cpp this stand-in has.
FLAGS: dict[str, tuple[str, object, str]] = {
    "model_path": ("string", "model.pte", "Model serialized in flatbuffer format."),
    "print_output": ("string", "summary", "Output printing mode: 'none' to suppress, 'summary' for first/last 100 "
                                          "elements, 'all' for everything."),
    "num_executions": ("uint32", 1, "Number of times to run the model."),
    "method_name": ("string", "", "Name of the method to run. If empty, uses the first method in the program."),
    "cpu_threads": ("int32", -1, "Number of CPU threads for inference. Defaults to -1, which implies we'll use a "
                                 "heuristic to derive the # of performant cores for a specific device."),
}

_ERR = sys.stderr


def log(level: str, line: int, message: str, source: str = FILE) -> None:
    """ET_LOG through the posix PAL: ``%c %02u:%02u:%02u.%06lu executorch:%s:%zu] %s`` on stderr."""
    if not LOGGING:
        return
    if ANDROID_PAL:  # __android_log_print(level, "ExecuTorch", "%s", message)
        now = time.time()
        stamp = time.strftime("%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        os.makedirs(os.path.dirname(LOGCAT_FILE), exist_ok=True)
        with open(LOGCAT_FILE, "a") as logd:
            logd.write(f"{stamp} {os.getpid():5d} {os.getpid():5d} {level} ExecuTorch: {message}\n")
        return
    us = int((time.monotonic() - START) * 1e6)
    seconds, micro = divmod(us, 1_000_000)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    _ERR.write(f"{level} {hours:02d}:{minute:02d}:{sec:02d}.{micro:06d} executorch:{source}:{line}] {message}\n")
    _ERR.flush()


def check_failed(line: int, condition: str, message: str) -> None:
    """ET_CHECK_MSG: a Fatal line, then abort() (SIGABRT)."""
    log("F", line, f"In function main(), assert failed ({condition}): {message}")
    _ERR.flush()
    sys.stdout.flush()
    os.abort()


def gflags_help(program: str) -> str:
    lines = [f"{program}: Warning: SetUsageMessage() never called", "",
             "  Flags from examples/portable/executor_runner/executor_runner.cpp:"]
    for name in sorted(FLAGS):
        kind, default, description = FLAGS[name]
        shown = f'"{default}"' if kind == "string" else str(default)
        lines.append(f"    -{name} ({description}) type: {kind} default: {shown}")
    return "\n".join(lines) + "\n"


def parse_flags(argv: list[str]) -> tuple[dict[str, object], list[str]] | int:
    """gflags' parse: the values, the arguments left over; or the exit code after --help or an error."""
    values = {name: default for name, (_kind, default, _d) in FLAGS.items()}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            rest.append(arg)
            continue
        name, eq, text = arg.lstrip("-").partition("=")
        if name in ("help", "helpfull", "helpshort"):
            sys.stdout.write(gflags_help(os.path.basename(sys.argv[0])))
            return 1
        if name not in FLAGS:
            _ERR.write(f"ERROR: unknown command line flag '{name}'\n")
            return 1
        if not eq:
            if i >= len(argv):
                _ERR.write(f"ERROR: flag '{arg}' is missing its argument; flag description: {FLAGS[name][2]}\n")
                return 1
            text = argv[i]
            i += 1
        kind = FLAGS[name][0]
        if kind == "string":
            values[name] = text
            continue
        try:
            number = int(text, 0)
            if kind == "uint32" and number < 0:
                raise ValueError(text)
        except ValueError:
            _ERR.write(f"ERROR: illegal value '{text}' specified for {kind} flag '{name}'\n")
            return 1
        values[name] = number
    return values, rest


def fmt_value(value: float, integral: bool) -> str:
    """An element as ExecuTorch's evalue printer shows it (``3.`` for a whole float)."""
    if integral:
        return str(int(value))
    text = format(float(value), ".6g")
    return text + "." if re.fullmatch(r"-?\d+", text) else text


def print_tensor(index: int, tensor: object, edge_items: int | None) -> None:
    values = tensor.reshape(-1).tolist()  # type: ignore[attr-defined]
    integral = not tensor.is_floating_point()  # type: ignore[attr-defined]
    sizes = ", ".join(str(s) for s in tensor.shape)  # type: ignore[attr-defined]
    shown = [fmt_value(v, integral) for v in values]
    if len(shown) <= 10:
        body = ", ".join(shown)
        sys.stdout.write(f"OutputX {index}: tensor(sizes=[{sizes}], [{body}])\n")
        return
    rows: list[str] = []
    if edge_items is not None and len(shown) > 2 * edge_items:
        head, tail = shown[:edge_items], shown[-edge_items:]
        rows += [", ".join(head[r:r + 10]) + "," for r in range(0, len(head), 10)]
        rows.append("...,")
        rows += [", ".join(tail[r:r + 10]) + "," for r in range(0, len(tail), 10)]
    else:
        rows += [", ".join(shown[r:r + 10]) + "," for r in range(0, len(shown), 10)]
    sys.stdout.write(f"OutputX {index}: tensor(sizes=[{sizes}], [\n" + "".join(f"  {r}\n" for r in rows) + "])\n")


def main(argv: list[str]) -> int:
    parsed = parse_flags(argv)
    if isinstance(parsed, int):
        return parsed
    flags, rest = parsed
    if rest:
        log("E", 312, "Extra commandline args: " + " ".join(rest))
        return 1
    mode = str(flags["print_output"])
    if mode not in ("none", "summary", "all"):
        log("E", 324, f"Unknown --print_output mode '{mode}'. Expected 'none', 'summary', or 'all'.")
        return 1

    # The runtime's own chatter (cpuinfo, its logger) goes to fd 2 in another format: the real
    # binary's lines are written to a copy of stderr, the bindings' to /dev/null.
    global _ERR
    _ERR = os.fdopen(os.dup(2), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    import torch
    from executorch.extension.pybindings import _C

    requested = int(flags["cpu_threads"])  # type: ignore[arg-type]
    threads = requested if requested != -1 else max(1, (os.cpu_count() or 2) // 2)
    log("I", 340, f"Resetting threadpool with num threads = {threads}")
    if threads > 0:
        log("I", 66, f"Resetting threadpool to {threads} threads.", source="threadpool.cpp")
        _C._unsafe_reset_threadpool(threads)

    path = str(flags["model_path"])
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        log("E", 110, f"Failed to open {path}: {exc.strerror} ({exc.errno})", source="file_data_loader.cpp")
        check_failed(461, "file_loader.ok()", "FileDataLoader::from() failed: 0x22")
        return 1
    before_load = time.perf_counter()
    if len(data) < 8 or data[4:8] != b"ET12":
        found = data[4:8].decode("latin-1") if len(data) >= 8 else ""
        log("E", 168, f"Program identifier '{found}' != expected 'ET12'", source="program.cpp")
        log("E", 473, f"Failed to parse model file {path}")
        return 1
    try:
        program = _C._load_program_from_buffer(data, False, 0, _C.Verification.Minimal)
    except RuntimeError:
        log("E", 473, f"Failed to parse model file {path}")
        return 1
    log("I", 476, f"Model file {path} is loaded.")
    method_name = str(flags["method_name"]) or program.get_method_name(0)
    log("I", 486, f"Using method {method_name}")
    try:
        method = program.load_method(method_name)
    except RuntimeError as exc:
        code = re.search(r"0x[0-9a-fA-F]+", str(exc))
        check_failed(617, "method.ok()",
                     f"Loading of method {method_name} failed with status {code.group(0) if code else '0x1'}")
        return 1
    after_load = time.perf_counter()
    log("I", 624, f"Model loaded in {(after_load - before_load) * 1e3:f} ms.")

    meta = method.method_meta()
    dtypes = {6: torch.float32, 1: torch.int8, 0: torch.uint8, 3: torch.int32, 4: torch.int64, 5: torch.float16,
              11: torch.bool}
    inputs_meta = [meta.input_tensor_meta(i) for i in range(meta.num_inputs())]
    executions = int(flags["num_executions"])  # type: ignore[arg-type]
    spent = 0.0
    for i in range(executions):
        inputs = [torch.ones(tuple(m.sizes()), dtype=dtypes.get(int(m.dtype()), torch.float32)) for m in inputs_meta]
        method.set_inputs(inputs)
        before = time.perf_counter()
        try:
            method.execute()
            status = None
        except RuntimeError as exc:
            found = re.search(r"0x[0-9a-fA-F]+", str(exc))
            status = found.group(0) if found else "0x1"
        elapsed = time.perf_counter() - before
        spent += elapsed
        if status is not None:
            check_failed(773, "status == Error::Ok", f"Execution of method {method_name} failed with status {status}")
        log("I", 779, f"Iteration {i + 1} of {executions}: {elapsed * 1e3:f} ms")
    log("I", 789, f"Model executed successfully {executions} time(s) in {spent * 1e3:f} ms.")
    outputs = method.get_outputs() if executions else []
    log("I", 798, f"{len(outputs)} outputs: ")
    if mode != "none":
        for index, output in enumerate(outputs):
            if isinstance(output, torch.Tensor):
                print_tensor(index, output, 100 if mode == "summary" else None)
            else:
                sys.stdout.write(f"OutputX {index}: {output}\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
