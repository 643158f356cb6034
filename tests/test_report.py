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
    assert summary[0] == ("On local/onnxruntime, separable layers reach 68% of the theoretical speedup on average "
                          "(2 pairs); lowest for N=64, Dx=28 (51%), highest for N=32, Dx=56 (85%).")
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
    shot = base64.b64decode(browser.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"])
    (tmp_path / "screenshot.png").write_bytes(shot)

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
    assert state["tables"] >= 6 and state["summary"][0].startswith("On local/onnxruntime, separable layers reach 68%")

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
