"""The runtimes the runner drives: each loads one model and returns a zero-argument call."""

import sys


class Runtime:
    """Loads one model and returns a zero-argument callable that runs one inference."""

    name = "abstract"
    provider = None
    timer = "perf_counter_ns"
    # What the timed call covers: "compute" when inputs and outputs already live where the
    # runtime computes, "compute+copies" when host<->device copies happen inside it.
    timer_covers = "compute"

    def __init__(self, plan):
        self.threads = int(plan.get("threads", 1))
        self.device = plan.get("device", "cpu")

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
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        infer = torch.inference_mode()(module)

        def call():
            self._out = infer(example)

        return call

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
        session = ort.InferenceSession(model_path, sess_options=options, providers=self.providers)
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


RUNTIMES = {"torch": TorchRuntime, "onnxruntime": OnnxRuntime, "tflite": TfliteRuntime}
