"""Parse the output of TensorFlow Lite / LiteRT's ``benchmark_model`` tool.

Every published variant is accepted:

* timing lines ``count=50 first=1234 curr=1200 min=1100 max=1500 avg=1250.5 std=40``,
  with or without `` p5=.. median=.. p95=..`` (LiteRT's ``StatWithPercentiles``),
  ``count=N curr=X(all same)`` (with or without a space), ``count=0`` and numbers in
  C++ stream notation such as ``1.24027e+06``;
* ``Inference timings in us: Init: .., First inference: .., Warmup (avg): ..,
  Inference (avg): ..`` and the older ``Average inference timings in us: Warmup: ..,
  Init: .., Inference: ..`` (or ``no stats: ..`` in builds from 2018);
* memory lines ``Memory footprint delta from the start of the tool (MB): init=..
  overall=..`` (older: ``Peak memory footprint (MB): init=.. overall=..``) and
  ``Overall peak memory footprint (MB) via periodic monitoring: ..``;
* lines prefixed by logcat (``threadtime``, ``brief``, Android Studio), by TFLite's
  logger (``INFO:``, ``WARNING:``, ``ERROR:``, ``VERBOSE:``) or by glog, and ``\\r\\n``.

benchmark_model prints ``Running benchmark for at least N iterations ...`` before each
timed loop: the first block is the warm-up, the second the measured run.  Op-profiling
tables repeat the ``count=..`` statistics behind a label (``Timings (microseconds):
count=..``); those are not timing blocks and are ignored.

Delegation is read from every message the tool and the runtime print ("Explicitly
applied X delegate ..", "Though X delegate is explicitly applied, the model graph will
not be executed by the delegate.", "Replacing N out of M node(s) with delegate (..)
node, yielding K partitions ..", "Created TensorFlow Lite XNNPACK delegate for CPU.",
"Use gpu: [1]" ...).  ``delegate_ran_nothing`` is true when a delegate that was asked for
took no node of the graph, so the timing measures the CPU fallback instead.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"

# -- line prefixes ----------------------------------------------------------------------
_LOGCAT_THREADTIME = re.compile(
    r"^(?:\d{4}-)?\d\d-\d\d\s+\d\d:\d\d:\d\d(?:\.\d+)?\s+\d+\s+\d+\s+(?P<level>[VDIWEFA])\s+(?P<tag>[^:]*?)\s*:\s?"
)
_LOGCAT_STUDIO = re.compile(
    r"^\d{4}-\d\d-\d\d\s+\d\d:\d\d:\d\d(?:\.\d+)?\s+\d+-\d+\s+(?P<tag>\S+)\s+\S+\s+(?P<level>[VDIWEFA])\s+"
)
_LOGCAT_BRIEF = re.compile(r"^(?P<level>[VDIWEFA])/(?P<tag>[^(:]+?)\s*(?:\(\s*\d+\))?:\s?")
_GLOG = re.compile(r"^(?P<level>[IWEF])\d{4}\s+\d\d:\d\d:\d+\.\d+\s+\d+\s+[^\]\s]+:\d+\]\s?")
_TFLITE_LEVEL = re.compile(r"^(?P<level>INFO|WARNING|WARN|ERROR|VERBOSE|DEBUG|FATAL):\s?")

_LEVELS = {"V": "VERBOSE", "D": "DEBUG", "I": "INFO", "W": "WARNING", "E": "ERROR", "F": "FATAL", "A": "FATAL"}

# -- messages -----------------------------------------------------------------------------
_STAT = re.compile(r"^count=(?P<count>\d+)(?P<rest>(?:\s*\S.*)?)$")
_STAT_FIELD = re.compile(rf"(?P<key>first|curr|min|max|avg|std|p5|median|p95)=(?P<value>{NUMBER})")
_RUN_HEADER = re.compile(
    rf"^Running benchmark for (?:at least )?(?P<iters>\d+) iterations?"
    rf"(?: and at least (?P<min_secs>{NUMBER}) seconds?)?"
    rf"(?: but terminate if exceeding (?P<max_secs>{NUMBER}) seconds?)?"
)
_SUMMARY = re.compile(r"^(?:Average )?[Ii]nference timings in us:\s*(?P<body>.*)$")
_MEM_DELTA = re.compile(
    rf"^(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\):\s*"
    rf"init=(?P<init>{NUMBER})\s+overall=(?P<overall>{NUMBER})"
)
_MEM_PEAK = re.compile(rf"^Overall peak memory footprint \(MB\) via periodic monitoring:\s*(?P<peak>{NUMBER})")
_MODEL_SIZE = re.compile(rf"^The input model file size \(MB\):\s*(?P<mb>{NUMBER})")
_INIT_SESSION = re.compile(rf"^Initialized session in (?P<ms>{NUMBER})\s*ms")
_PARAM = re.compile(r"^(?P<name>[#A-Za-z][^:\[\]]*?)\s*:\s*\[(?P<value>[^\]]*)\]\s*$")

_CREATED = re.compile(r"Created TensorFlow Lite (?:(?P<name1>\w+) )?delegate for (?P<name2>[\w-]+)")
_CREATED_SHORT = re.compile(r"^(?P<name>\w+) delegate created\.?$")
_APPLIED_FULL = re.compile(
    r"Explicitly applied (?P<name>\S+) delegate, and the model graph will be completely executed by the delegate"
)
_APPLIED_PARTIAL = re.compile(
    r"Explicitly applied (?P<name>\S+) delegate, and the model graph will be part?ially executed by the "
    r"delegate w/ (?P<kernels>\d+) delegate kernels"
)
_APPLIED_NONE = re.compile(
    r"Though (?P<name>\S+) delegate is (?:explicitly )?applied, the model(?: graph)? will not be executed"
    r" by the delegate"
)
_REPLACING = re.compile(
    r"Replacing (?P<n>\d+)(?: out of (?P<total>\d+))? node\(s\) with delegate \((?P<delegate>[^)]*)\) node,"
    r" yielding (?P<parts>\d+) partitions(?P<scope>[^.]*)"
)
_GPU_KERNELS = re.compile(r"Created (?P<n>\d+) GPU delegate kernels")
_QNN_SUMMARY = re.compile(
    r"(?P<delegate>\w+) delegate: (?P<n>\d+) nodes delegated out of (?P<total>\d+) nodes with (?P<parts>\d+) partitions"
)
_UNSUPPORTED_PLATFORM = re.compile(
    r"(?P<name>GPU|NNAPI|Hexagon|CoreML|XNNPACK) acceleration is unsupported on this platform"
)
_FAILED_DELEGATE = re.compile(r"Failed to (?:apply|create) (?:the )?(?P<name>\S+) delegate", re.I)
_GPU_SPLIT = re.compile(
    r"(?P<first>First )?(?P<gpu>\d+) operations will run on the GPU, and the remaining (?P<cpu>\d+)(?: operations)? "
    r"(?:will run )?on the CPU",
    re.I,
)
_UNSUPPORTED_HEADER = re.compile(r"(?:Following|Next) operations are not supported by (?P<name>\w+) delegate")
_UNSUPPORTED_OP = re.compile(r"^(?P<op>[A-Z][A-Z0-9_]+)\s*:\s*(?P<why>.+)$")

_ERROR_START = re.compile(r"^(?:Failed to|Error|error:|ERROR|Aborted|Segmentation fault|FATAL|Fatal)", re.I)
_BENIGN = (
    "Failed to get the input model file size",  # logged at WARN, timing is unaffected
)
_WARN_START = re.compile(r"^(?:WARNING|Warning|WARN|Unconsumed cmdline flags)")

# delegate custom names (TfLiteRegistration::custom_name) and tool names -> short names
_DELEGATE_ALIASES = {
    "tflitexnnpackdelegate": "xnnpack",
    "xnnpack": "xnnpack",
    "cpu": "xnnpack",  # "Created TensorFlow Lite XNNPACK delegate for CPU." handled separately
    "tflitegpudelegatev2": "gpu",
    "tflitegpudelegate": "gpu",
    "tflitemetaldelegate": "gpu",
    "gpudelegate": "gpu",
    "gpu": "gpu",
    "opencl": "gpu",
    "tflitennapidelegate": "nnapi",
    "nnapi": "nnapi",
    "tflitehexagondelegate": "hexagon",
    "hexagon": "hexagon",
    "tfliteqnndelegate": "qnn",
    "qnn": "qnn",
    "tflitecoremldelegate": "coreml",
    "coreml": "coreml",
    "external": "external",
}

_REQUEST_PARAMS = {
    "use gpu": "gpu",
    "use nnapi": "nnapi",
    "use xnnpack": "xnnpack",
    "use hexagon": "hexagon",
    "use coreml": "coreml",
    "use qnn": "qnn",
}


def delegate_key(name: str) -> str:
    """Short name ('gpu', 'xnnpack', 'nnapi', ...) for a delegate as the tool names it."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return _DELEGATE_ALIASES.get(key, key)


def _num(text: str) -> float:
    return float(text)


@dataclass
class TimingStats:
    """One ``count=..`` block, in microseconds."""

    count: int
    first: float | None = None
    curr: float | None = None
    min: float | None = None
    max: float | None = None
    avg: float | None = None
    std: float | None = None
    p5: float | None = None
    median: float | None = None
    p95: float | None = None
    all_same: bool = False
    min_iterations: int | None = None  # from the "Running benchmark for at least N ..." header
    min_seconds: float | None = None
    max_seconds: float | None = None
    raw: str = ""

    @property
    def mean_us(self) -> float | None:
        return self.avg


@dataclass
class DelegateReport:
    """What the output says about one delegate."""

    name: str
    requested: bool = False  # the user asked for it (``Use gpu: [1]``, ``Explicitly applied``, ...)
    created: bool = False
    status: str | None = None  # "complete" | "partial" | "none" | "unsupported" | "failed"
    delegate_kernels: int | None = None
    nodes_delegated: int | None = None
    nodes_total: int | None = None
    partitions: int | None = None
    unsupported_ops: list[str] = field(default_factory=list)

    @property
    def ran_nothing(self) -> bool:
        if self.status in ("none", "unsupported", "failed"):
            return True
        if self.nodes_delegated == 0:
            return True
        return self.delegate_kernels == 0


@dataclass
class BenchmarkModelResult:
    """Everything ``parse_benchmark_output`` found; times in microseconds, memory in MB."""

    warmup: TimingStats | None = None
    inference: TimingStats | None = None
    timing_blocks: list[TimingStats] = field(default_factory=list)
    init_us: float | None = None
    first_inference_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None
    init_session_ms: float | None = None
    model_size_mb: float | None = None
    memory_init_mb: float | None = None
    memory_overall_mb: float | None = None
    peak_memory_mb: float | None = None
    params: dict[str, str] = field(default_factory=dict)
    delegates: dict[str, DelegateReport] = field(default_factory=dict)
    delegate_name: str | None = None
    delegated_nodes: int | None = None
    total_nodes: int | None = None
    delegate_ran_nothing: bool = False
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def latency_us(self) -> float | None:
        """The measured run's mean: the inference block, else the summary line."""
        if self.inference is not None and self.inference.avg is not None:
            return self.inference.avg
        if self.inference is not None and self.inference.all_same:
            return self.inference.curr
        return self.inference_avg_us

    @property
    def complete(self) -> bool:
        """Both timed loops ran and the summary line was printed."""
        return self.inference is not None and self.inference.count > 0 and self.inference_avg_us is not None

    @property
    def usable(self) -> bool:
        """A latency to report that measures what was asked for (no silent CPU fallback)."""
        return self.latency_us is not None and not self.delegate_ran_nothing and not _is_nan(self.latency_us)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["latency_us"] = self.latency_us
        out["complete"] = self.complete
        out["usable"] = self.usable
        return out


def _is_nan(value: float | None) -> bool:
    return value is not None and isinstance(value, float) and math.isnan(value)


def strip_prefix(line: str) -> tuple[str | None, str]:
    """``(level, message)`` with logcat/glog/TFLite-logger prefixes removed."""
    line = line.rstrip("\r\n").replace("\r", "")
    text = line.strip()
    level: str | None = None
    for pattern in (_LOGCAT_STUDIO, _LOGCAT_THREADTIME, _LOGCAT_BRIEF, _GLOG):
        match = pattern.match(text)
        if match:
            level = _LEVELS.get(match.group("level"), level)
            text = text[match.end() :]
            break
    match = _TFLITE_LEVEL.match(text)
    if match:
        level = {"WARN": "WARNING"}.get(match.group("level"), match.group("level"))
        text = text[match.end() :]
    return level, text.strip()


def _parse_stat(message: str) -> TimingStats | None:
    match = _STAT.match(message)
    if match is None:
        return None
    rest = match.group("rest") or ""
    stats = TimingStats(count=int(match.group("count")), raw=message)
    fields = {m.group("key"): _num(m.group("value")) for m in _STAT_FIELD.finditer(rest)}
    unknown = _STAT_FIELD.sub("", rest).replace("(all same)", "").strip()
    if unknown:
        return None  # "count=3 apples": not a benchmark statistic
    for key, value in fields.items():
        setattr(stats, key, value)
    if "(all same)" in rest or (stats.count >= 1 and "first" not in fields and "curr" in fields):
        stats.all_same = True
        value = stats.curr
        for key in ("first", "min", "max", "avg"):
            if getattr(stats, key) is None:
                setattr(stats, key, value)
        if stats.std is None:
            stats.std = 0.0
    return stats


def _parse_summary(body: str, result: BenchmarkModelResult) -> None:
    for part in body.split(","):
        key, sep, value = part.partition(":")
        if not sep:
            continue
        try:
            number = _num(value.strip().split()[0])
        except (ValueError, IndexError):
            continue
        label = key.strip().lower()
        if label == "init":
            result.init_us = number
        elif label == "first inference":
            result.first_inference_us = number
        elif label in ("warmup (avg)", "warmup"):
            result.warmup_avg_us = number
        elif label in ("inference (avg)", "inference", "no stats"):
            result.inference_avg_us = number


class _Parser:
    def __init__(self) -> None:
        self.result = BenchmarkModelResult()
        self.pending_header: re.Match[str] | None = None
        self.unsupported_for: str | None = None
        self.saw_benchmark_output = False

    def delegate(self, name: str) -> DelegateReport:
        key = delegate_key(name)
        report = self.result.delegates.get(key)
        if report is None:
            report = DelegateReport(name=key)
            self.result.delegates[key] = report
        return report

    def feed(self, raw_line: str) -> None:
        level, message = strip_prefix(raw_line)
        if not message:
            return
        res = self.result

        # op-profiling tables: a CSV-ish or column line, lines after an unsupported-ops header
        if self.unsupported_for is not None:
            op = _UNSUPPORTED_OP.match(message)
            if op:
                self.delegate(self.unsupported_for).unsupported_ops.append(f"{op.group('op')}: {op.group('why')}")
                return
            self.unsupported_for = None

        header = _RUN_HEADER.match(message)
        if header:
            self.pending_header = header
            self.saw_benchmark_output = True
            return
        stat = _parse_stat(message)
        if stat is not None:
            if self.pending_header is not None:
                h = self.pending_header
                stat.min_iterations = int(h.group("iters"))
                stat.min_seconds = _num(h.group("min_secs")) if h.group("min_secs") else None
                stat.max_seconds = _num(h.group("max_secs")) if h.group("max_secs") else None
                self.pending_header = None
            res.timing_blocks.append(stat)
            self.saw_benchmark_output = True
            return
        summary = _SUMMARY.match(message)
        if summary:
            _parse_summary(summary.group("body"), res)
            self.saw_benchmark_output = True
            return
        for pattern, attr in ((_MEM_PEAK, "peak"),):
            m = pattern.match(message)
            if m:
                res.peak_memory_mb = _num(m.group(attr))
                return
        m = _MEM_DELTA.match(message)
        if m:
            res.memory_init_mb = _num(m.group("init"))
            res.memory_overall_mb = _num(m.group("overall"))
            return
        m = _MODEL_SIZE.match(message)
        if m:
            res.model_size_mb = _num(m.group("mb"))
            return
        m = _INIT_SESSION.match(message)
        if m:
            res.init_session_ms = _num(m.group("ms"))
            return
        if self._delegate_message(message):
            return
        m = _PARAM.match(message)
        if m and not message.startswith(("Profiling", "=")):
            name, value = m.group("name").strip(), m.group("value").strip()
            res.params[name] = value
            requested = _REQUEST_PARAMS.get(re.sub(r"\s+", " ", name.lower()))
            if requested and value in ("1", "true"):
                self.delegate(requested).requested = True
            if name.lower().startswith("external delegate path") and value:
                self.delegate("external").requested = True
            return
        self._classify(level, message)

    def _delegate_message(self, message: str) -> bool:
        m = _APPLIED_FULL.search(message)
        if m:
            rep = self.delegate(m.group("name"))
            rep.requested = True
            rep.status = "complete"
            rep.delegate_kernels = 1
            return True
        m = _APPLIED_PARTIAL.search(message)
        if m:
            rep = self.delegate(m.group("name"))
            rep.requested = True
            kernels = int(m.group("kernels"))
            rep.status = "partial" if kernels > 0 else "none"
            rep.delegate_kernels = kernels
            return True
        m = _APPLIED_NONE.search(message)
        if m:
            rep = self.delegate(m.group("name"))
            rep.requested = True
            rep.status = "none"
            rep.delegate_kernels = 0
            return True
        m = _REPLACING.search(message)
        if m:
            rep = self.delegate(m.group("delegate"))
            n, parts = int(m.group("n")), int(m.group("parts"))
            total = int(m.group("total")) if m.group("total") else None
            whole = "whole graph" in (m.group("scope") or "") or "subgraph" not in (m.group("scope") or "")
            if whole or rep.nodes_delegated is None:
                rep.nodes_delegated, rep.nodes_total, rep.partitions = n, total, parts
            else:  # one line per subgraph: add them up
                rep.nodes_delegated += n
                rep.nodes_total = (rep.nodes_total or 0) + (total or 0) if total is not None else rep.nodes_total
                rep.partitions = (rep.partitions or 0) + parts
            return True
        m = _QNN_SUMMARY.search(message)
        if m:
            rep = self.delegate(m.group("delegate"))
            rep.nodes_delegated, rep.nodes_total = int(m.group("n")), int(m.group("total"))
            rep.partitions = int(m.group("parts"))
            return True
        m = _CREATED.search(message)
        if m:
            name = m.group("name1") or m.group("name2")
            self.delegate(name).created = True
            return True
        m = _CREATED_SHORT.match(message)
        if m and delegate_key(m.group("name")) in set(_DELEGATE_ALIASES.values()):
            self.delegate(m.group("name")).created = True
            return True
        m = _GPU_KERNELS.search(message)
        if m:
            rep = self.delegate("gpu")
            rep.created = True
            if rep.delegate_kernels is None:
                rep.delegate_kernels = int(m.group("n"))
            return True
        m = _UNSUPPORTED_PLATFORM.search(message)
        if m:
            rep = self.delegate(m.group("name"))
            rep.requested = True
            rep.status = "unsupported"
            self.result.warnings.append(message)
            return True
        m = _UNSUPPORTED_HEADER.search(message)
        if m:
            self.unsupported_for = m.group("name")
            self.result.warnings.append(message)
            return True
        m = _GPU_SPLIT.search(message)
        if m:
            rep = self.delegate("gpu")
            gpu, cpu = int(m.group("gpu")), int(m.group("cpu"))
            if rep.nodes_delegated is None:
                rep.nodes_delegated, rep.nodes_total = gpu, gpu + cpu
            self.result.warnings.append(message)
            return True
        m = _FAILED_DELEGATE.search(message)
        if m:
            rep = self.delegate(m.group("name"))
            rep.requested = True
            rep.status = "failed"
            self.result.errors.append(message)
            return True
        return False

    def _classify(self, level: str | None, message: str) -> None:
        if any(message.startswith(b) for b in _BENIGN):
            self.result.warnings.append(message)
            return
        if level in ("ERROR", "FATAL") or _ERROR_START.match(message) or "error:" in message.lower():
            self.result.errors.append(message)
        elif level == "WARNING" or _WARN_START.match(message):
            self.result.warnings.append(message)

    def finish(self) -> BenchmarkModelResult:
        res = self.result
        blocks = res.timing_blocks
        if len(blocks) >= 2:
            res.warmup, res.inference = blocks[0], blocks[1]
        elif len(blocks) == 1:
            only = blocks[0]
            # One block: the warm-up unless the summary says it was the measured run.
            if res.inference_avg_us is not None and only.avg is not None and res.warmup_avg_us != only.avg:
                res.inference = only
            else:
                res.warmup = only
        self._summarise_delegates()
        if not self.saw_benchmark_output:
            res.errors.append("no benchmark timing output found")
        elif res.inference is None:
            res.errors.append("the measured run did not finish (no second timing block)")
        return res

    def _summarise_delegates(self) -> None:
        res = self.result
        reports = list(res.delegates.values())
        requested = [r for r in reports if r.requested]
        ran_nothing = [r for r in requested if r.ran_nothing]
        # A requested delegate that was created but never reported taking a node, while
        # another delegate (XNNPACK, applied lazily) did: it ran nothing.
        others_took_nodes = any(r.nodes_delegated for r in reports)
        for rep in requested:
            if (
                rep not in ran_nothing
                and rep.status is None
                and rep.nodes_delegated is None
                and rep.delegate_kernels is None
                and others_took_nodes
                and rep.name != "xnnpack"
            ):
                ran_nothing.append(rep)
        res.delegate_ran_nothing = bool(ran_nothing)
        primary: DelegateReport | None = None
        non_cpu = [r for r in requested if r.name != "xnnpack"]
        if non_cpu:
            primary = non_cpu[0]
        elif requested:
            primary = requested[0]
        else:
            # nothing asked for: the default delegate the runtime applied, if any
            applied = [r for r in reports if r.nodes_delegated or r.delegate_kernels]
            created = [r for r in reports if r.created]
            primary = (applied or created or [None])[0]
        if primary is not None:
            res.delegate_name = primary.name
            res.delegated_nodes = primary.nodes_delegated
            if primary.nodes_delegated is None and primary.ran_nothing:
                res.delegated_nodes = 0
            res.total_nodes = primary.nodes_total
            if res.total_nodes is None:
                totals = [r.nodes_total for r in reports if r.nodes_total is not None]
                res.total_nodes = max(totals) if totals else None


def parse_benchmark_output(text: str) -> BenchmarkModelResult:
    """Parse the combined stdout/stderr (or logcat) of one benchmark_model run."""
    parser = _Parser()
    for line in text.splitlines():
        parser.feed(line)
    return parser.finish()


def timing_event(line: str) -> str | None:
    """What one output line marks in benchmark_model's timing loops, as it is printed.

    ``"header"`` for ``Running benchmark for at least N iterations ...`` (a timed loop
    starts), ``"stats"`` for a ``count=..`` block (that loop ended), else None.  The second
    header/stats pair brackets the measured run: a transport timestamps them to know the
    window an energy reading must cover.
    """
    _level, message = strip_prefix(line)
    if not message:
        return None
    if _RUN_HEADER.match(message):
        return "header"
    if _parse_stat(message) is not None:
        return "stats"
    return None


# -- op profiling (--enable_op_profiling) ---------------------------------------------------------
_PROFILE_REGULAR = re.compile(r"^Operator-wise Profiling Info for Regular Benchmark Runs:?\s*$")
_PROFILE_SECTION = re.compile(r"^=+\s*(?P<title>[^=]+?)\s*=+$")
_PROFILE_ROW = re.compile(
    rf"^(?P<type>[A-Za-z_][\w:.-]*)\s+(?P<first>{NUMBER})\s+(?P<avg_ms>{NUMBER})\s+(?P<pct>{NUMBER})%"
    rf"\s+(?P<cdf>{NUMBER})%\s+(?P<mem_kb>{NUMBER})\s+(?P<called>\d+)\s+(?P<name>\S.*)?$"
)
# TFLite builtin ops -> the layer types of harness/workloads/layers.py.  CONV_2D is a 1x1
# (pointwise) or a k x k (standard) conv; the table does not say which.  Activations are fused
# into the convs by the converter, so a separate activation op is rare and counts as other.
_NODE_LAYER_TYPES = {
    "DEPTHWISE_CONV_2D": "depthwise",
    "CONV_2D": "standard or pointwise",
    "FULLY_CONNECTED": "fully connected",
}


def parse_op_profile(text: str) -> dict[str, Any] | None:
    """benchmark_model's per-op profile of the measured runs (its "Run Order" table), or None.

    Returns {"source", "total_s" (the per-inference sum of the ops' average times), "by_type",
    "by_op" (seconds per node type), "nodes"}.  A delegate that runs the whole graph is one node
    (``TfLiteXNNPackDelegate``, ``TfLiteGpuDelegateV2`` ...): its time is "delegated", with no
    split by layer.  Rows of the initialization profile and of the other tables are ignored.
    """
    in_regular = in_run_order = False
    by_op: dict[str, float] = {}
    by_type: dict[str, float] = {}
    nodes = 0
    for line in text.splitlines():
        _level, message = strip_prefix(line)
        message = message.strip()
        if _PROFILE_REGULAR.match(message):
            in_regular, in_run_order = True, False
            continue
        section = _PROFILE_SECTION.match(message)
        if section:
            in_run_order = in_regular and section.group("title") == "Run Order"
            continue
        if message.startswith("Profiling Info for Benchmark Initialization"):
            in_regular = in_run_order = False
            continue
        if not in_run_order:
            continue
        row = _PROFILE_ROW.match(message)
        if row is None:
            if message and not message.startswith("["):
                in_run_order = False  # the table ended
            continue
        node_type = row.group("type")
        seconds = _num(row.group("avg_ms")) / 1e3
        if "Delegate" in node_type or node_type == "DELEGATE":
            layer_type = "delegated"
        else:
            layer_type = _NODE_LAYER_TYPES.get(node_type, "other")
        by_op[node_type] = by_op.get(node_type, 0.0) + seconds
        by_type[layer_type] = by_type.get(layer_type, 0.0) + seconds
        nodes += 1
    if not nodes:
        return None
    return {"source": "benchmark_model --enable_op_profiling", "total_s": sum(by_op.values()), "by_type": by_type,
            "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])), "nodes": nodes,
            "covers": "the measured runs themselves (benchmark_model profiles while it times); per inference"}
