"""The runtimes the runner drives: each loads one model and returns a zero-argument call.

Each runtime with a profiler of its own also reports where one inference's time goes, by
op (``op_profile``): onnxruntime's session profiling and ``torch.profiler``.  That runs in a
short loop of its own after the timed measurement (and after the memory and output are
read), so profiling overhead never touches the timing.  ai_edge_litert's Python Interpreter
has no per-op profiler; on a phone, benchmark_model's ``--enable_op_profiling`` is the one.
"""

import json
import os
import sys
import tempfile
import time

# The layer types a network's time is split into (harness/workloads/layers.py names them too).
LAYER_TYPES = ("standard", "depthwise", "pointwise", "fully connected", "other")
# Ops that apply BatchNorm or an activation to what the op before them produced: their time
# counts for that op's layer type, as it does when a runtime fuses them into the conv (and as
# a layer workload, which has its BatchNorm and activation, measures it).
EPILOGUE_OPS = frozenset([
    "BatchNormalization", "Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "LeakyRelu",
    "batch_norm", "_native_batch_norm_legit_no_training", "relu", "relu_", "relu6", "hardtanh", "hardtanh_",
    "hardswish", "hardswish_", "hardsigmoid", "sigmoid", "clamp", "clamp_min",
])
DEFAULT_PROFILE = {"runs": 10, "seconds": 0.5}


def conv_layer_type(input_shape, weight_shape):
    """A conv's layer type from its NCHW input and [out, in/groups, kh, kw] weight shapes.

    A conv on a 1x1 map is squeeze-and-excite's (MobileNet v3): "other", as the layer
    decomposition counts it.
    """
    try:
        channels, height, width = input_shape[1], input_shape[2], input_shape[3]
        out, per_group, kh, kw = weight_shape[:4]
    except (IndexError, TypeError, ValueError):
        return "other"
    if height == 1 and width == 1:
        return "other"
    if per_group == 1 and out == channels and channels > 1:
        return "depthwise"
    if per_group != channels:
        return "other"  # a grouped conv that is not depthwise
    return "pointwise" if kh == 1 and kw == 1 else "standard"


def summarise_ops(ops, runs, source, **extra):
    """An ``op_profile`` from (op name, layer type or None for an epilogue op, seconds) over ``runs``.

    Times are per inference (summed over the profiled runs, divided by ``runs``); an epilogue
    op's time counts for the layer type of the op before it.
    """
    by_type = {}
    by_op = {}
    current = "other"
    for name, layer_type, seconds in ops:
        if layer_type is None:
            layer_type = current
        else:
            current = layer_type
        by_type[layer_type] = by_type.get(layer_type, 0.0) + seconds / runs
        by_op[name] = by_op.get(name, 0.0) + seconds / runs
    total = sum(by_type.values())
    doc = {"source": source, "runs": runs, "total_s": total,
           "by_type": {t: by_type[t] for t in LAYER_TYPES if t in by_type},
           "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
           "covers": "a separate profiled loop after the timed one; per inference"}
    doc.update(extra)
    return doc


def _first_two(shapes):
    return (list(shapes) + [None, None])[:2]


def _profile_budget(plan):
    budget = dict(DEFAULT_PROFILE)
    given = plan.get("op_profile")
    if isinstance(given, dict):
        budget.update(given)
    return budget


class Runtime:
    """Loads one model and returns a zero-argument callable that runs one inference."""

    name = "abstract"
    provider = None
    timer = "perf_counter_ns"
    # What the timed call covers: "compute" when inputs and outputs already live where the
    # runtime computes, "compute+copies" when host<->device copies happen inside it.
    timer_covers = "compute"
    # Seconds spent compiling the model before the first timed call (a JIT runtime's compile,
    # done inside ``load``, so also part of ``load_s``); None for runtimes that do not compile.
    compile_s = None

    def __init__(self, plan):
        self.threads = int(plan.get("threads", 1))
        self.device = plan.get("device", "cpu")
        self.plan = plan
        self.warnings = []  # what the record should say about this runtime's setup (e.g. threads not honoured)

    def sync(self):
        """Wait until the device has finished all queued work (no-op for synchronous runtimes)."""

    def version(self):
        raise NotImplementedError

    def load(self, model_path, input_array):
        raise NotImplementedError

    def output(self):
        raise NotImplementedError

    def gpu_peak_bytes(self):
        return None

    def op_profile(self, model_path, input_array, call):
        """Where one inference's time goes, by op (a dict, see ``summarise_ops``), or None."""
        return None


class TorchRuntime(Runtime):
    name = "torch"

    def __init__(self, plan):
        super().__init__(plan)
        import torch

        self.torch = torch
        torch.set_num_threads(self.threads)
        self.channels_last = plan.get("channels_last", True)
        if self.device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("torch reports no CUDA device")
            self.timer = "cuda_events"
        self.provider = self.device

    def version(self):
        return self.torch.__version__

    def load(self, model_path, input_array):
        module, example = self._prepare(model_path, input_array)
        if self.device == "cuda":
            self.torch.cuda.reset_peak_memory_stats()
        infer = self.torch.inference_mode()(module)

        def call():
            self._out = infer(example)

        return call

    def _prepare(self, model_path, input_array):
        """The exported program's module and the input, on the device, channels-last when asked."""
        torch = self.torch
        program = torch.export.load(model_path)
        module = program.module()
        example = torch.from_numpy(input_array)
        fmt = torch.channels_last if self.channels_last and example.dim() == 4 else torch.contiguous_format
        module = module.to(self.device)
        example = example.to(self.device).contiguous(memory_format=fmt)
        if example.dim() == 4 and self.channels_last:
            for param in module.parameters():
                if param.dim() == 4:
                    param.data = param.data.contiguous(memory_format=torch.channels_last)
        self._module, self._input = module, example
        return module, example

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def make_cuda_timer(self):
        torch = self.torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def timed(call):
            start.record()
            call()
            end.record()
            end.synchronize()
            return int(start.elapsed_time(end) * 1e6)  # ms -> ns

        return timed

    def output(self):
        out = self._out[0] if isinstance(self._out, (tuple, list)) else self._out
        return out.detach().float().cpu().contiguous().numpy()

    def gpu_peak_bytes(self):
        if self.device == "cuda":
            return int(self.torch.cuda.max_memory_allocated())
        return None

    def op_profile(self, model_path, input_array, call):
        """torch.profiler over a few more calls of the loaded module (CPU time of its top-level ops)."""
        if self.device != "cpu":
            return None
        from torch.profiler import ProfilerActivity, profile

        budget = _profile_budget(self.plan)
        runs = 0
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            deadline = time.perf_counter() + float(budget["seconds"])
            while runs < int(budget["runs"]) and (runs == 0 or time.perf_counter() < deadline):
                call()
                runs += 1
        ops = []
        for event in prof.events():
            if event.cpu_parent is not None:
                continue  # a callee: its time is inside its caller's
            name = event.name.split("::")[-1]
            shapes = event.input_shapes or []
            if name in ("conv2d", "convolution", "_convolution", "mkldnn_convolution"):
                layer_type = conv_layer_type(*_first_two(shapes))
            elif name in ("linear", "addmm", "matmul", "mm"):
                layer_type = "fully connected"
            elif name in EPILOGUE_OPS:
                layer_type = None
            else:
                layer_type = "other"
            ops.append((name, layer_type, event.cpu_time_total / 1e6))
        return summarise_ops(ops, runs, "torch.profiler")


class TorchCompileRuntime(TorchRuntime):
    """The same exported program as ``torch``, compiled by ``torch.compile`` (inductor) inside ``load``.

    The compile and the first call that triggers it happen in ``load`` and are reported as
    ``compile_s`` (so the timed calls never include a compile).  Inductor options, chosen on
    MobileNet v2 (one CPU thread, same outputs within the fp32 tolerance): ``freezing`` (weights
    become constants, so BatchNorm folds into the conv and the convs' weights are prepacked
    for oneDNN: 57 -> ~32 ms), channels-last input and weights (~30 ms) and ``cpp_wrapper``
    (the generated code calls its kernels from C++, not Python: ~28 ms); ``max-autotune``
    gained nothing.  Each item compiles cold, in a fresh inductor cache of its own (removed at
    exit), so ``compile_s`` is what a first deployment pays and does not depend on what ran before.
    """

    name = "torch-compile"
    INDUCTOR_OPTIONS = (("freezing", True), ("cpp_wrapper", True))

    def load(self, model_path, input_array):
        import atexit
        import shutil

        torch = self.torch
        cache = tempfile.mkdtemp(prefix="convbench-inductor-")
        atexit.register(shutil.rmtree, cache, True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        import torch._inductor.config as inductor_config

        for key, value in self.INDUCTOR_OPTIONS:
            setattr(inductor_config, key, value)
        module, example = self._prepare(model_path, input_array)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        infer = torch.inference_mode()(torch.compile(module, backend="inductor", fullgraph=True))
        self._out = infer(example)  # compiles
        self.sync()
        self.compile_s = time.perf_counter() - start
        try:  # inductor's compile-worker processes would otherwise idle beside the timed loop
            from torch._inductor.async_compile import shutdown_compile_workers

            shutdown_compile_workers()
        except Exception:
            pass

        def call():
            self._out = infer(example)

        return call

    def op_profile(self, model_path, input_array, call):
        return {"source": None, "reason": "inductor fuses ops into generated kernels: no per-op times to match "
                "the network's layers"}


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, plan):
        super().__init__(plan)
        import onnxruntime as ort

        self.ort = ort
        available = ort.get_available_providers()
        if self.device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise RuntimeError("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
            self.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            self.providers = ["CPUExecutionProvider"]
        self.optimization = plan.get("ort_optimization", "all")

    def version(self):
        return self.ort.__version__

    def load(self, model_path, input_array):
        session = self.ort.InferenceSession(model_path, sess_options=self._options(), providers=self.providers)
        self.provider = session.get_providers()[0]
        if self.device == "cuda" and self.provider != "CUDAExecutionProvider":
            raise RuntimeError("onnxruntime fell back to %s instead of CUDA" % self.provider)
        name = session.get_inputs()[0].name
        if self.device == "cuda":
            return self._bind_on_device(session, name, input_array)
        feeds = {name: input_array}
        run = session.run

        def call():
            self._out = run(None, feeds)

        self._read_output = lambda: self._out[0]
        return call

    def _options(self):
        ort = self.ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        return options

    def op_profile(self, model_path, input_array, call):
        """Session profiling in a second session built like the timed one (profiling is a session option).

        Its first run is a warm-up and is left out; node kernel times of the others are summed.
        """
        if self.device != "cpu":
            return None
        budget = _profile_budget(self.plan)
        options = self._options()
        options.enable_profiling = True
        folder = tempfile.mkdtemp(prefix="convbench-ort-profile-")
        options.profile_file_prefix = os.path.join(folder, "profile")
        session = self.ort.InferenceSession(model_path, sess_options=options, providers=self.providers)
        feeds = {session.get_inputs()[0].name: input_array}
        runs = 0
        deadline = time.perf_counter() + float(budget["seconds"])
        while runs < int(budget["runs"]) + 1 and (runs < 2 or time.perf_counter() < deadline):
            session.run(None, feeds)
            runs += 1
        path = session.end_profiling()
        try:
            with open(path) as handle:
                events = json.load(handle)
        finally:
            os.remove(path)
            os.rmdir(folder)
        return self._summarise_trace(events)

    @staticmethod
    def _summarise_trace(events):
        windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                         if e.get("cat") == "Session" and e.get("name") == "model_run")[1:]
        if not windows:
            return None

        def counted(ts):
            return any(start <= ts <= end for start, end in windows)

        ops = []
        for event in sorted((e for e in events if e.get("cat") == "Node"), key=lambda e: e["ts"]):
            if not event.get("name", "").endswith("_kernel_time") or not counted(event["ts"]):
                continue
            args = event.get("args") or {}
            name = args.get("op_name", "?")
            shapes = [next(iter(s.values())) for s in args.get("input_type_shape") or [] if s]
            if name in ("Conv", "FusedConv", "NhwcFusedConv") or name.endswith("Conv"):
                layer_type = conv_layer_type(*_first_two(shapes))
            elif name in ("Gemm", "MatMul", "FusedGemm", "FusedMatMul"):
                layer_type = "fully connected"
            elif name in EPILOGUE_OPS:
                layer_type = None
            else:
                layer_type = "other"  # pooling, reshapes, residual adds, layout reorders
            ops.append((name, layer_type, event["dur"] / 1e6))
        run_s = sum(end - start for start, end in windows) / len(windows) / 1e6
        return summarise_ops(ops, len(windows), "onnxruntime profiling", run_s=run_s)

    def _bind_on_device(self, session, name, input_array):
        """Input and output bound to device buffers, so the timer covers compute, not copies.

        ``run_with_iobinding`` synchronises the execution providers when it returns (the
        default run options), and ``synchronize_outputs`` makes that explicit.
        """
        binding = session.io_binding()
        device_input = self.ort.OrtValue.ortvalue_from_numpy(input_array, "cuda", 0)
        binding.bind_ortvalue_input(name, device_input)
        binding.bind_output(session.get_outputs()[0].name, "cuda", 0)
        run = session.run_with_iobinding
        finish = binding.synchronize_outputs
        self._device_input = device_input  # keep the device buffer alive

        def call():
            run(binding)
            finish()

        self._read_output = lambda: binding.copy_outputs_to_cpu()[0]
        return call

    def output(self):
        return self._read_output()


class TfliteRuntime(Runtime):
    name = "tflite"

    def __init__(self, plan):
        super().__init__(plan)
        self.interpreter_cls, self.package = _import_tflite()
        self.provider = "xnnpack" if plan.get("xnnpack", True) else "builtin"

    def version(self):
        try:
            from importlib import metadata

            dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
                    "tensorflow": "tensorflow"}[self.package]
            return metadata.version(dist)
        except Exception:
            return "unknown"

    def load(self, model_path, input_array):
        kwargs = {"model_path": model_path, "num_threads": self.threads}
        if self.provider == "builtin":
            kwargs["experimental_op_resolver_type"] = self._resolver("BUILTIN_WITHOUT_DEFAULT_DELEGATES")
        interpreter = self.interpreter_cls(**kwargs)
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]
        if tuple(inp["shape"]) != tuple(input_array.shape):
            raise RuntimeError("model input shape %s != reference input %s"
                               % (tuple(inp["shape"]), tuple(input_array.shape)))
        interpreter.set_tensor(inp["index"], input_array.astype(inp["dtype"]))
        self._interpreter = interpreter
        self._out_index = interpreter.get_output_details()[0]["index"]
        return interpreter.invoke

    def _resolver(self, name):
        module = sys.modules[self.interpreter_cls.__module__]
        return getattr(module.OpResolverType, name)

    def output(self):
        return self._interpreter.get_tensor(self._out_index)

    def op_profile(self, model_path, input_array, call):
        return {"source": None, "reason": "the TFLite Python Interpreter has no per-op profiler "
                "(benchmark_model --enable_op_profiling has one)"}


class LiteRtRuntime(Runtime):
    """LiteRT's CompiledModel API on the same .tflite file the ``tflite`` Interpreter runs.

    The accelerator follows the plan's device: "cpu" (LiteRT's CPU accelerator, XNNPACK
    kernels), or "gpu"/"npu" alone, without a CPU fallback, so that a run on a machine without
    that accelerator fails instead of silently timing the CPU.  Threads: ``CpuOptions.num_threads``.
    Input and output are LiteRT tensor buffers created once: the input is written before
    timing, the output read after it; the timed call is ``run_by_index`` alone.
    """

    name = "litert"
    ACCELERATORS = ("cpu", "gpu", "npu")

    def __init__(self, plan):
        super().__init__(plan)
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import CpuOptions, Options

        if self.device not in self.ACCELERATORS:
            raise RuntimeError("LiteRT CompiledModel runs on %s, not %r" % ("/".join(self.ACCELERATORS), self.device))
        self.compiled_model_cls, self.accelerators = CompiledModel, HardwareAccelerator
        self.options_cls, self.cpu_options_cls = Options, CpuOptions
        self.provider = self.device

    def version(self):
        from importlib import metadata

        return metadata.version("ai-edge-litert")

    def load(self, model_path, input_array):
        import numpy as np

        accelerator = getattr(self.accelerators, self.device.upper())
        options = self.options_cls(hardware_accelerators=accelerator,
                                   cpu_options=self.cpu_options_cls(num_threads=self.threads))
        if self.device != "cpu":
            self.warnings.append("threads apply to LiteRT's CPU accelerator only; %s ran the model" % self.device)
        try:
            model = self.compiled_model_cls.from_file(model_path, options=options)
        except RuntimeError as exc:
            hint = ("" if self.device == "cpu" else "; a machine without that accelerator (or its LiteRT plug-in) "
                    "fails here: run the litert backend for LiteRT's CPU")
            raise RuntimeError("LiteRT could not compile the model for its %s accelerator: %s%s"
                               % (self.device, str(exc).strip(), hint)) from None
        if self.device != "cpu" and not model.is_fully_accelerated():
            raise RuntimeError("LiteRT's %s accelerator does not run the whole model (convbench never lets "
                               "LiteRT fall back to the CPU inside an accelerator's timing)" % self.device)
        signature = model.get_signature_list()
        if len(signature) != 1:
            raise RuntimeError("expected one signature, the model has %d" % len(signature))
        key = next(iter(signature))
        inputs_meta = list(model.get_input_tensor_details(key).values())
        outputs_meta = list(model.get_output_tensor_details(key).values())
        shape = tuple(inputs_meta[0]["shape"])
        if shape != tuple(input_array.shape):
            raise RuntimeError("model input shape %s != reference input %s" % (shape, tuple(input_array.shape)))
        inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
        inputs[0].write(np.ascontiguousarray(input_array, dtype=np.dtype(inputs_meta[0]["dtype"])))
        out_shape, out_dtype = tuple(outputs_meta[0]["shape"]), np.dtype(outputs_meta[0]["dtype"])
        self._read_output = lambda: outputs[0].read(int(np.prod(out_shape)), out_dtype).reshape(out_shape)
        self._model = model
        run = model.run_by_index

        def call():
            run(0, inputs, outputs)

        return call

    def output(self):
        return self._read_output()

    def op_profile(self, model_path, input_array, call):
        return {"source": None, "reason": "LiteRT's Python CompiledModel API has no per-op profiler"}


class ExecuTorchRuntime(Runtime):
    """An ExecuTorch program (.pte, lowered to XNNPACK at export) run by ``executorch.runtime``.

    Threads: ExecuTorch's one CPU threadpool, which XNNPACK's delegate runs on, is resized with
    the pybindings' ``_unsafe_reset_threadpool`` before the program loads (and read back);
    torch's own intra-op pool (the pybindings copy inputs and outputs as torch tensors) gets
    the same count.  ``method.execute`` copies its output out on every call: the timed call
    covers that copy.
    """

    name = "executorch"
    provider = "xnnpack"

    def __init__(self, plan):
        super().__init__(plan)
        if self.device != "cpu":
            raise RuntimeError("the executorch backend runs on the CPU (XNNPACK), not %r" % self.device)
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime as ExecuTorch

        self.torch, self.portable_lib, self.executorch = torch, portable_lib, ExecuTorch

    def version(self):
        from importlib import metadata

        return metadata.version("executorch")

    def load(self, model_path, input_array):
        torch, lib = self.torch, self.portable_lib
        torch.set_num_threads(self.threads)
        lib._unsafe_reset_threadpool(self.threads)  # nothing executes yet: the reset is safe here
        actual = lib._threadpool_get_thread_count()
        if actual != self.threads:
            self.warnings.append("ExecuTorch's threadpool has %d threads, %d requested" % (actual, self.threads))
        runtime = self.executorch.get()
        if not runtime.backend_registry.is_available("XnnpackBackend"):
            raise RuntimeError("this ExecuTorch build has no XnnpackBackend")
        program = runtime.load_program(model_path)
        method = program.load_method("forward")
        self._program, self._method = program, method  # the program owns the method's memory
        inputs = [torch.from_numpy(input_array)]
        execute = method.execute

        def call():
            self._out = execute(inputs)

        return call

    def output(self):
        return self._out[0].detach().float().contiguous().numpy()


def _import_tflite():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime"
    except ImportError:
        pass
    try:
        from tensorflow.lite import Interpreter

        return Interpreter, "tensorflow"
    except ImportError:
        raise RuntimeError("no TFLite interpreter: pip install ai-edge-litert") from None


RUNTIMES = {"torch": TorchRuntime, "torch-compile": TorchCompileRuntime, "onnxruntime": OnnxRuntime,
            "tflite": TfliteRuntime, "litert": LiteRtRuntime, "executorch": ExecuTorchRuntime}
