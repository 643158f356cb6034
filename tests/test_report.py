"""`harness report`: files, content, and the HTML opened in a real headless Chromium.

The browser check drives Chromium over the DevTools protocol (a minimal stdlib
websocket client below): it records every request and every load failure, reads the
decoded size of each figure from the DOM, and takes a screenshot.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.report import build_report

DATA = Path(__file__).parent / "data" / "runs"
ANALYSIS_RUN = DATA / "20260101T000000Z-aaaaaa"
FIGURES = ["speedup", "latency_vs_macs", "roofline", "network_latency", "energy_memory"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return build_report([ANALYSIS_RUN], tmp_path_factory.mktemp("report") / "out", bootstrap=200)


def test_report_writes_html_markdown_pngs_and_csv(report):
    out = report.out_dir
    assert report.figures == FIGURES and not report.missing_figures
    for name in FIGURES:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("pairs", "efficiency", "workloads", "networks", "v1_vs_twin", "excluded"):
        assert (out / f"{name}.csv").stat().st_size > 0
    markdown = (out / "report.md").read_text()
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (out / target).is_file(), target
    assert "| local/onnxruntime/t1 | 32, 64, 3, 28, 1 |" in markdown


def test_report_html_is_self_contained(report):
    html = report.html.read_text()
    assert html.count('src="data:image/png;base64,') == len(FIGURES)
    # Nothing fetched from anywhere: no external src/href, no CSS imports or url(), no script.
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "@import" not in html and "url(" not in html and "<script" not in html


def test_report_summary_and_provenance(report):
    summary = report.summary
    assert summary[0] == ("On local/onnxruntime, separable layers reach 66% of the theoretical speedup (geometric "
                          "mean of 2 pairs, range 51% to 85%): lowest for N=64, Dx=28, highest for N=32, Dx=56.")
    assert any("mobilenet_v1-0.25-128 runs 5.0x faster than its standard-conv twin (theory 7.4x" in s
               for s in summary)
    assert summary[-1] == "2 measurement(s) excluded from the analysis (1 invalid, 1 error); they are listed below."
    html = report.html.read_text()
    # provenance: run, commit, device fingerprint, runtime versions
    for text in ("20260101T000000Z-aaaaaa", "0.1.0 @ 0123456789ab", "Test CPU 3000, x86_64, 4 cores", "1.20.0",
                 "2.3.0", "litert-torch conversion failed: unsupported op"):
        assert text in html, text


def test_report_command_defaults_to_latest_run(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    for run in ("20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb"):
        shutil.copytree(DATA / run, results / run)
    monkeypatch.setenv("CONVBENCH_RESULTS", str(results))
    monkeypatch.setenv("CONVBENCH_REPORTS", str(tmp_path / "reports"))
    result = CliRunner().invoke(main, ["report"])
    assert result.exit_code == 0, result.output
    expected = tmp_path / "reports" / "20260102T000000Z-bbbbbb" / "index.html"
    assert result.output.strip().splitlines()[-1].startswith(f"report: {expected} ")
    assert expected.is_file()
    missing = CliRunner().invoke(main, ["report", "nosuchrun"])
    assert missing.exit_code == 2 and "no run 'nosuchrun'" in missing.output


# ---------------------------------------------------------------- a three-device run, as the lab makes
LAB_RUN_ID = "20260201T000000Z-1ab001"
QUICK_PAIRS = ["M32-N64-k3-x112-s1", "M128-N128-k3-x56-s1", "M512-N512-k3-x14-s1", "M1024-N1024-k3-x7-s1"]
# Median latencies in ms, (standard, separable) per quick pair.  torch's M1024 standard conv runs at
# 10.6 GMAC/s against ~24 for its other standard convs (issue 16: 43.5 ms where onnxruntime takes 11.6),
# so its pair reaches 286% of the theory while the first pair reaches 27%.
LOCAL_PAIRS_MS = {
    "torch": [(9.5, 4.46), (19.0, 3.76), (18.5, 2.62), (43.5, 1.706)],
    "onnxruntime": [(6.0, 1.2), (11.8, 1.75), (11.5, 1.45), (11.6, 1.4)],
}
LOCAL_V2_MS = {"torch": 20.0, "onnxruntime": 12.0}
# The phone: first pair (standard, separable) and MobileNet v2, per delegate; summary statistics only.
PHONE_MS = {"xnnpack": (30.0, 5.0, 25.0), "gpu": (8.0, 4.0, 9.0), "nnapi": (40.0, 12.0, None)}
PI_MS = {"tflite": (60.0, 12.0, 80.0), "onnxruntime": (55.0, 11.0, 70.0)}
ENERGY_TOO_SHORT = ("measured window 0.501 s is shorter than the 1 s minimum; raise --min-time or set "
                    "energy_min_window_s")


def _lab_fingerprint(machine: str, model: str, cores: int, os_name: str, emulated: str | None) -> dict:
    from harness.records import fingerprint_id

    fingerprint = {"machine": machine, "cpu_model": model, "board_model": None, "cores": cores,
                   "memory_bytes": 8 * 2**30, "os": os_name, "kernel": "6.1.0", "emulated": emulated}
    return dict(fingerprint, id=fingerprint_id(fingerprint))


def _lab_record(device: str, transport: str, backend: str, workload_id: str, median_ms: float,
                fingerprint: dict, delegate: str | None = None, samples: bool = True, **extra) -> dict:
    from backends.base import Job
    from harness.records import finalize, raw_record

    tag = f"{backend}-{delegate}" if delegate else backend
    job = Job(f"{device}/{tag}/t1/{workload_id}", workload_id, device, backend, 1, delegate)
    fields: dict = {"runtime": backend, "runtime_version": "2.16.1" if backend == "tflite" else "1.20.0",
                    "provider": delegate or ("xnnpack" if backend == "tflite" else "cpu"),
                    "device_fingerprint": fingerprint, "problems": [], "warnings": [],
                    "memory": {"peak_rss_bytes": int(150e6 + median_ms * 2e6)},
                    "output_check": {"status": "match", "max_abs_diff": 1e-6},
                    "energy": {"status": "unavailable", "reason": "no sensor on this device"}}
    if samples:
        spread = [1 + 0.001 * (i - 12) for i in range(24)] + [1.06]  # median exactly 1; one slow call
        fields["samples_s"] = [median_ms * s / 1e3 for s in spread]
    else:  # benchmark_model: summary statistics of its loop, no per-inference samples
        seconds = median_ms / 1e3
        fields["latency"] = {"n": 50, "mean": seconds * 1.01, "median": seconds, "std": seconds * 0.03,
                             "min": seconds * 0.95, "max": seconds * 1.2, "cv": 0.03}
        fields["output_check"] = {"status": "not_checked", "reason": "benchmark_model runs random inputs"}
        fields["energy"] = {"status": "unavailable", "reason": ENERGY_TOO_SHORT}
    fields.update(extra)
    return finalize(raw_record(job, transport, **fields))


def write_lab_run(root: Path) -> Path:
    """local (torch, onnxruntime), an emulated pi4 and a pixel7 with three tflite delegates."""
    local = _lab_fingerprint("x86_64", "Test CPU 3000", 4, "Debian GNU/Linux 12 (bookworm)", None)
    pi4 = _lab_fingerprint("aarch64", "Cortex-A72", 4, "Debian GNU/Linux 12 (bookworm)", "qemu-system-aarch64")
    pixel7 = _lab_fingerprint("aarch64", "Tensor G2", 8, "Android 14", None)
    records = []
    for backend, pairs in LOCAL_PAIRS_MS.items():
        for pair, (standard, separable) in zip(QUICK_PAIRS, pairs, strict=True):
            records.append(_lab_record("local", "local", backend, f"conv-standard-{pair}", standard, local))
            records.append(_lab_record("local", "local", backend, f"conv-separable-{pair}", separable, local))
        records.append(_lab_record("local", "local", backend, "mobilenet_v2-1.0-224", LOCAL_V2_MS[backend], local))
    for backend, (standard, separable, v2) in PI_MS.items():
        records.append(_lab_record("pi4", "ssh", backend, f"conv-standard-{QUICK_PAIRS[0]}", standard, pi4))
        records.append(_lab_record("pi4", "ssh", backend, f"conv-separable-{QUICK_PAIRS[0]}", separable, pi4))
        records.append(_lab_record("pi4", "ssh", backend, "mobilenet_v2-1.0-224", v2, pi4))
    for delegate, (standard, separable, v2) in PHONE_MS.items():
        for workload_id, median in ((f"conv-standard-{QUICK_PAIRS[0]}", standard),
                                    (f"conv-separable-{QUICK_PAIRS[0]}", separable)):
            records.append(_lab_record("pixel7", "adb", "tflite", workload_id, median, pixel7, delegate, False))
        if v2 is None:
            records.append(_lab_record("pixel7", "adb", "tflite", "mobilenet_v2-1.0-224", 30.0, pixel7, delegate,
                                       False, problems=[f"{delegate} delegate executed 0 of 65 nodes: CPU "
                                                        "fallback, not a NNAPI number"]))
        else:
            records.append(_lab_record("pixel7", "adb", "tflite", "mobilenet_v2-1.0-224", v2, pixel7, delegate,
                                       False))
    run = root / LAB_RUN_ID
    run.mkdir(parents=True)
    info = json.loads((ANALYSIS_RUN / "run.json").read_text())
    info.update(run_id=LAB_RUN_ID, schema_version=2, suite="quick", command=["harness", "run", "--devices",
                                                                              "local,pi4,pixel7"],
                counts={"ok": sum(r["status"] == "ok" for r in records),
                        "invalid": sum(r["status"] == "invalid" for r in records)})
    (run / "run.json").write_text(json.dumps(info, indent=2))
    (run / "measurements.jsonl").write_text("".join(json.dumps(dict(r, run_id=LAB_RUN_ID)) + "\n" for r in records))
    return run


@pytest.fixture(scope="module")
def lab_report(tmp_path_factory):
    run = write_lab_run(tmp_path_factory.mktemp("runs"))
    return build_report([run], tmp_path_factory.mktemp("lab-report") / "out", bootstrap=200)


# ---------------------------------------------------------------- figure layout, as saved
def _labelled_texts(fig):
    """Every text a reader must read in full: titles, axis and tick labels, legends, notes."""
    from matplotlib.legend import Legend

    texts = [("figure text", t) for t in fig.texts]  # the suptitle is one of them
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [("title", ax.title), ("xlabel", ax.xaxis.label), ("ylabel", ax.yaxis.label)]
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            texts += [("tick", tick.label1) for tick in axis.get_major_ticks()
                      if low - 1e-9 * abs(low) <= tick.get_loc() <= high + 1e-9 * abs(high)]
        texts += [("axes note", t) for t in ax.texts if t.get_transform() == ax.transAxes]
    for legend in fig.findobj(Legend):
        texts += [("legend", t) for t in [legend.get_title(), *legend.get_texts()]]
    return [(kind, t) for kind, t in texts if t.get_visible() and t.get_text().strip()]


def layout_problems(figure) -> list[str]:
    """Texts cut by the saved image's edge or lying on top of each other, on the figure as saved."""
    from matplotlib.transforms import Bbox

    figure.png()  # lays the figure out as the report saves it
    fig = figure.figure
    fig.canvas.draw()  # and again at the canvas's own dpi, so every extent below is current
    renderer = fig.canvas.get_renderer()
    saved = fig.get_tightbbox(renderer)  # inches: what bbox_inches="tight" keeps
    boxes = []
    problems = []
    for kind, text in _labelled_texts(fig):
        box = Bbox(text.get_window_extent(renderer).get_points() / fig.dpi)
        if not (saved.x0 - 1e-3 <= box.x0 and box.x1 <= saved.x1 + 1e-3 and saved.y0 - 1e-3 <= box.y0
                and box.y1 <= saved.y1 + 1e-3):
            problems.append(f"{figure.name}: {kind} {text.get_text()!r} cut by the image edge")
        boxes.append((kind, text, box))
    for i, (kind_a, a, box_a) in enumerate(boxes):
        for kind_b, b, box_b in boxes[i + 1:]:
            if kind_a == kind_b == "tick":
                continue
            overlap = Bbox.intersection(box_a, box_b)
            if overlap is not None and overlap.width > 0.01 and overlap.height > 0.01:
                problems.append(f"{figure.name}: {kind_a} {a.get_text()!r} overlaps {kind_b} {b.get_text()!r}")
    return problems


LONG_ENERGY_REASON = ("local: the RAPL counters under /sys/class/powercap are not readable by this user "
                      "(run as root or grant read access)")


@pytest.mark.parametrize("run", ["lab", ANALYSIS_RUN.name])
def test_figure_texts_are_neither_cut_nor_on_top_of_each_other(run, tmp_path):
    from harness.report import analyse
    from harness.report.figures import make_figures
    from harness.report.summary import energy_note
    from harness.store import load_frame, read_run

    path = write_lab_run(tmp_path) if run == "lab" else ANALYSIS_RUN
    tables = analyse(load_frame([path]), bootstrap=0)
    # The longest reasons energy_note gives, so the energy panel's note must wrap inside its panel.
    note = energy_note(read_run(path)[1]) + "\n" + LONG_ENERGY_REASON
    figures = make_figures(tables, note)
    try:
        assert [f.name for f in figures if f.figure is not None] == FIGURES
        problems = [problem for figure in figures for problem in layout_problems(figure)]
        assert problems == []
    finally:
        for figure in figures:
            figure.close()


def test_row_labels_and_legends_name_the_delegate(lab_report):
    markdown = (lab_report.out_dir / "report.md").read_text()
    for delegate in ("xnnpack", "gpu", "nnapi"):
        # pairs, efficiency and workloads tables: one row each per delegate, told apart
        assert f"| pixel7/tflite[{delegate}]/t1 | 32, 64, 3, 112, 1 |" in markdown
        assert f"| pixel7/tflite[{delegate}]/t1 | 1 |" in markdown
        assert f"| pixel7/tflite[{delegate}]/t1 | conv-standard-M32-N64-k3-x112-s1 | standard |" in markdown
    assert "| pixel7/tflite[gpu]/t1 | mobilenet_v2-1.0-224 |" in markdown  # networks table
    assert "pixel7/tflite/t1" not in markdown
    assert "| device/backend[delegate]/threads |" in markdown
    # a backend without a delegate to choose keeps its short label
    assert "| local/onnxruntime/t1 | 32, 64, 3, 112, 1 |" in markdown
    assert ("mobilenet_v2-1.0-224 on pixel7: fastest with tflite[gpu] at 9.00 ms (tflite[xnnpack] 25.00 ms)."
            in lab_report.summary)


def test_figure_legends_name_the_delegate(tmp_path):
    from matplotlib.legend import Legend

    from harness.report import analyse
    from harness.report.figures import make_figures
    from harness.store import load_frame

    figures = make_figures(analyse(load_frame([write_lab_run(tmp_path)]), bootstrap=0))
    try:
        legends = {figure.name: {t.get_text() for legend in figure.figure.findobj(Legend)
                                 for t in legend.get_texts()} for figure in figures if figure.figure is not None}
        for name in ("speedup", "latency_vs_macs", "roofline"):
            assert {"tflite[gpu]", "tflite[nnapi]", "tflite[xnnpack]", "onnxruntime", "torch"} <= legends[name]
        assert {"pixel7/tflite[gpu]", "pixel7/tflite[xnnpack]", "pi4/tflite[xnnpack]"} <= legends["energy_memory"]
    finally:
        for figure in figures:
            figure.close()


def test_latency_distribution_names_what_it_leaves_out(lab_report, tmp_path):
    from harness.report import analyse
    from harness.report.figures import Style, network_latency_figure
    from harness.store import load_frame

    expected = ("Not shown: pixel7/tflite[gpu], pixel7/tflite[xnnpack] (no raw samples: only summary "
                "statistics were recorded).")
    assert expected in lab_report.html.read_text()
    assert expected in (lab_report.out_dir / "report.md").read_text()
    # Keyed on the data, not on the device: give the phone's rows samples and nothing is left out.
    tables = analyse(load_frame([write_lab_run(tmp_path)]), bootstrap=0)
    valid = tables["valid"]
    style = Style(valid, tables["delegate_backends"])
    figure = network_latency_figure(valid, style)
    assert figure.omitted == expected
    assert any(expected[:40] in text.get_text() for text in figure.figure.texts)  # the PNG says it too
    figure.close()
    phone = valid["device"] == "pixel7"
    valid.loc[phone, "samples_s"] = valid.loc[phone, "latency_median"].apply(lambda m: [m * 0.99, m, m * 1.01])
    figure = network_latency_figure(valid, style)
    assert figure.omitted == "" and figure.figure is not None
    labels = [t.get_text() for ax in figure.figure.axes for t in ax.get_yticklabels()]
    assert "pixel7/tflite[gpu]" in labels
    figure.close()


def test_summary_averages_ratios_geometrically_and_flags_slow_standard_convs(lab_report):
    summary = lab_report.summary
    # torch: 27%, 60%, 80% and 286% of the theory; arithmetic mean 113%, geometric 78%
    torch = next(line for line in summary if line.startswith("On local/torch, separable layers reach"))
    assert torch == ("On local/torch, separable layers reach 78% of the theoretical speedup (geometric mean of 4 "
                     "pairs, range 27% to 286%): lowest for N=64, Dx=112, highest for N=1024, Dx=7.")
    flagged = summary[summary.index(torch) + 1]
    assert flagged == ("On local/torch, the pair N=1024, Dx=7 (286% of the theory) is flagged: its standard conv "
                       "runs at 10.6 GMAC/s, under 50% of the 24.3 GMAC/s typical of torch's other standard convs "
                       "there, so its ratio measures the standard conv's inefficiency, not the separable layer's gain.")
    assert summary[summary.index(torch) + 2] == ("Without the flagged pair, local/torch reaches 51% of the "
                                                 "theoretical speedup (geometric mean).")
    assert sum("is flagged" in line for line in summary) == 1  # onnxruntime's even convs are not
    markdown = (lab_report.out_dir / "report.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| local/torch/t1 | 1024, 1024, 3, 7, 1 |"))
    assert row.endswith("| 286% flagged | 10.6 [24.3] | standard conv under 50% of torch's typical GMAC/s: its "
                        "ratio measures the standard conv's inefficiency, not the separable layer's gain |")
    assert sum("flagged |" in line for line in markdown.splitlines() if line.startswith("| local/")) == 1
    assert "| local/torch/t1 | 4 | 78% | 27% (64, 112) | 286% (1024, 7) | 70% | 1 | 51% |" in markdown


def _ids_and_local_links(html: str) -> tuple[list[str], list[str]]:
    from html.parser import HTMLParser

    class Collect(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.ids: list[str] = []
            self.links: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            values = dict(attrs)
            if values.get("id"):
                self.ids.append(values["id"])
            if tag == "a" and (values.get("href") or "").startswith("#"):
                self.links.append(values["href"][1:])

    parser = Collect()
    parser.feed(html)
    return parser.ids, parser.links


def test_contents_link_every_section_figure_and_table(lab_report):
    html = lab_report.html.read_text()
    ids, links = _ids_and_local_links(html)
    assert len(ids) == len(set(ids))
    assert set(links) <= set(ids), set(links) - set(ids)
    contents = html[html.index('<nav class="toc"'):html.index("</nav>")]
    _, toc_links = _ids_and_local_links(contents)
    tables = re.findall(r'<h3 id="(table-[^"]+)"', html)
    figures = re.findall(r'<figure id="(figure-[^"]+)"', html)
    assert len(figures) == len(FIGURES) and len(tables) >= 8  # 5 analysis tables and 3 of provenance
    assert toc_links == ["summary", "figures", *figures, "tables", *tables[:-3], "provenance", *tables[-3:]]
    assert html.index('<nav class="toc"') < html.index('<h2 id="summary"')  # at the top of the page

    from harness.report.markdown import heading_anchor

    markdown = (lab_report.out_dir / "report.md").read_text()
    anchors, seen = set(), {}
    for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE):
        base = heading_anchor(heading)
        anchors.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    md_links = re.findall(r"\]\(#([^)]+)\)", markdown)
    assert len(md_links) == len(toc_links) and set(md_links) <= anchors, set(md_links) - anchors


# ---------------------------------------------------------------- the browser check
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class WebSocket:
    """Just enough RFC 6455 for the DevTools protocol: text frames, client masking, ping."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        parsed = urlparse(url)
        self.sock = socket.create_connection((parsed.hostname, parsed.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {parsed.path} HTTP/1.1\r\nHost: {parsed.hostname}:{parsed.port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            response += chunk
        head, self.buffer = response.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        size = len(payload)
        if size < 126:
            header += bytes([0x80 | size])
        elif size < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", size)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", size)
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str:
        message = b""
        while True:
            first, second = self._read(2)
            opcode, size = first & 0x0F, second & 0x7F
            if size == 126:
                size = struct.unpack(">H", self._read(2))[0]
            elif size == 127:
                size = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if second & 0x80 else None
            payload = self._read(size)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            message += payload
            if first & 0x80:
                return message.decode()

    def close(self) -> None:
        self.sock.close()


class DevTools:
    """One page target over the browser's websocket (flattened sessions)."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws, self.next_id, self.events = ws, 0, []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def call(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(method)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = json.loads(self.ws.recv())
            self.events.append(event)
            if event.get("method") == method:
                return event
        raise TimeoutError(method)


@pytest.fixture
def browser(tmp_path):
    binary = _chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install -y chromium); the report's browser check "
                        "must run in CI")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    profile = tmp_path / "profile"
    process = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if process.poll() is not None:
                pytest.fail(f"chromium exited with {process.returncode}: {process.stderr.read().decode()[-500:]}")
            if time.monotonic() > deadline:
                pytest.fail("chromium did not open its DevTools port within 60 s")
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        ws = WebSocket(f"ws://127.0.0.1:{port}{path}")
        try:
            yield DevTools(ws)
        finally:
            ws.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_report_renders_in_headless_chromium(report, browser, tmp_path):
    # Open the page from a copy with nothing beside it: it must not need any other file.
    alone = tmp_path / "alone" / "index.html"
    alone.parent.mkdir()
    shutil.copy(report.html, alone)
    for domain in ("Page", "Network", "Runtime", "Log"):
        browser.call(f"{domain}.enable", session=True)
    browser.call("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 1600, "deviceScaleFactor": 1,
                                                        "mobile": False}, session=True)
    browser.call("Page.navigate", {"url": alone.as_uri()}, session=True)
    browser.wait_for("Page.loadEventFired")
    state = json.loads(browser.call("Runtime.evaluate", {"returnByValue": True, "expression": """JSON.stringify({
        title: document.title,
        images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth,
                                                 h: i.naturalHeight, shown: i.getBoundingClientRect().width})),
        tables: document.querySelectorAll('table').length,
        summary: [...document.querySelectorAll('ul.summary li')].map(li => li.textContent)})"""},
        session=True)["result"]["value"])
    shot = _keep_screenshot(browser, tmp_path / "analysis-top.png")

    failures = [e["params"] for e in browser.events if e.get("method") == "Network.loadingFailed"]
    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") ==
                "Network.requestWillBeSent"]
    errors = [e["params"] for e in browser.events if e.get("method") in ("Runtime.exceptionThrown",)
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert failures == [], failures
    assert errors == [], errors
    assert all(url.startswith(("file://", "data:")) for url in requests), requests
    assert state["title"] == "convbench report: run 20260101T000000Z-aaaaaa"
    assert len(state["images"]) == len(FIGURES)
    for image in state["images"]:  # decoded and laid out, not a broken-image icon
        assert image["complete"] and image["w"] > 400 and image["h"] > 200 and image["shown"] > 300, image
    assert state["tables"] >= 6 and state["summary"][0].startswith("On local/onnxruntime, separable layers reach 66%")

    import matplotlib.image as mpimg

    pixels = mpimg.imread(io.BytesIO(shot), format="png")
    assert pixels.shape[:2] == (1600, 1280)
    assert float(pixels[..., :3].std()) > 0.05  # text and figures, not a blank page


def test_report_on_a_run_without_valid_measurements_says_why(tmp_path):
    run = tmp_path / "20260105T000000Z-eeeeee"
    run.mkdir()
    info = json.loads((ANALYSIS_RUN / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(dict(info, run_id=run.name, status="failed")))
    failed = [json.loads(line) for line in (ANALYSIS_RUN / "measurements.jsonl").read_text().splitlines()
              if json.loads(line)["status"] != "ok"]
    (run / "measurements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in failed))
    result = build_report([run], tmp_path / "out", bootstrap=0)
    assert result.figures == [] and set(result.missing_figures) == set(FIGURES)
    assert result.missing_figures["speedup"].startswith("no standard/separable pair")
    assert "No valid measurement: nothing to analyse." in result.summary
    html = result.html.read_text()
    assert html.count('class="missing"') == len(FIGURES) and "litert-torch conversion failed" in html


def _evaluate(browser: DevTools, expression: str):
    reply = browser.call("Runtime.evaluate", {"returnByValue": True, "awaitPromise": True,
                                              "expression": expression}, session=True)
    if "exceptionDetails" in reply:
        raise AssertionError(reply["exceptionDetails"])
    return reply["result"].get("value")


def _keep_screenshot(browser: DevTools, path: Path) -> bytes:
    """A screenshot of the viewport, also under $CONVBENCH_REPORT_SHOTS when set (to look at them)."""
    shot = base64.b64decode(browser.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"])
    path.write_bytes(shot)
    if os.environ.get("CONVBENCH_REPORT_SHOTS"):
        keep = Path(os.environ["CONVBENCH_REPORT_SHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        (keep / path.name).write_bytes(shot)
    return shot


def test_contents_reach_the_tables_in_chromium(lab_report, browser, tmp_path):
    for domain in ("Page", "Runtime"):
        browser.call(f"{domain}.enable", session=True)
    browser.call("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 1000, "deviceScaleFactor": 1,
                                                        "mobile": False}, session=True)
    browser.call("Page.navigate", {"url": lab_report.html.as_uri()}, session=True)
    browser.wait_for("Page.loadEventFired")
    top = json.loads(_evaluate(browser, """JSON.stringify({
        toc: document.querySelector('nav.toc').getBoundingClientRect().bottom,
        pairs: document.getElementById('table-pairs').getBoundingClientRect().top,
        dangling: [...document.querySelectorAll('a[href^="#"]')].map(a => a.hash.slice(1))
                  .filter(id => !document.getElementById(id))})"""))
    _keep_screenshot(browser, tmp_path / "lab-top.png")
    assert top["dangling"] == []
    assert top["toc"] < 1000  # the whole table of contents on the first screen
    assert top["pairs"] > 3000  # while the tables start far below it

    for anchor in ("figure-speedup", "figure-network_latency", "figure-energy_memory", "table-pairs"):
        landed = json.loads(_evaluate(browser, f"""new Promise(resolve => {{
            document.querySelector('nav.toc a[href="#{anchor}"]').click();
            requestAnimationFrame(() => requestAnimationFrame(() => resolve(JSON.stringify({{
                hash: location.hash, scrolled: window.scrollY,
                top: document.getElementById('{anchor}').getBoundingClientRect().top}}))));
        }})"""))
        _keep_screenshot(browser, tmp_path / f"lab-{anchor}.png")
        assert landed["hash"] == f"#{anchor}" and landed["scrolled"] > 1000 and abs(landed["top"]) < 2, landed
    back = json.loads(_evaluate(browser, """new Promise(resolve => {
        document.querySelector('#tables a.top').click();
        requestAnimationFrame(() => requestAnimationFrame(() => resolve(JSON.stringify({scrolled: window.scrollY}))));
    })"""))
    assert back["scrolled"] < 300  # "contents" beside each section heading leads back up


def test_theory_sentences_keep_fp32_and_int8_apart():
    """Each precision sits under its own compute roof: one sentence each, naming the int8 one."""
    import pandas as pd

    from harness.report.summary import _theory_lines

    def row(precision, peak, closer):
        return {"device": "local", "backend": "tflite", "threads": 1, "delegate": "", "precision": precision,
                "closer": closer, "peak_gmacs_per_s": peak, "stream_gb_per_s": 40.0, "op_ratio_error_pct": 20.0,
                "roofline_error_pct": 15.0}

    theories = pd.DataFrame([row("fp32", 120.0, "roofline"), row("fp32", 120.0, "tie"),
                             row("int8", 480.0, "op ratio")])
    lines = _theory_lines(theories, lambda r: f"local/tflite{' (int8)' if r['precision'] == 'int8' else ''}")
    assert len(lines) == 2
    assert lines[0].startswith("On local/tflite, the roofline (measured ceilings: 120.0 GMAC/s")
    assert "predicts 1 of 2" in lines[0] and "the same as it for 1" in lines[0]
    assert lines[1].startswith("On local/tflite (int8), the roofline (measured ceilings: 480.0 GMAC/s")
    assert "predicts 0 of 1" in lines[1]
