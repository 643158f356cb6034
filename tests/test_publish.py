"""`harness history` change points and `harness publish`, on real runs and on long synthetic histories.

Synthetic stores are written with the store's own RunWriter: 32 nights of three invocations
per job, each with a reference probe.  Night 12 the whole device gets 8% slower (every workload
and the probe alike); night 20 one workload alone gets 10% slower.  Raw history must show both
changes of that workload, history normalised by the probe only the second.  The published site
is opened in headless Chromium with networking off: nothing may fail to load, and the pages
must name the change point.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.publish import build_site, slug
from harness.store import RunWriter
from tests.test_report import browser  # noqa: F401  (the DevTools fixture)

STEPPED, FLAT = "conv-standard-M32-N64-k3-x28-s1", "conv-separable-M32-N64-k3-x28-s1"
NIGHTS, DEVICE_SLOWDOWN_NIGHT, STEP_NIGHT = 32, 12, 20
SMALL = "conv-pointwise-M8-N8-k1-x8-s1"
FINGERPRINT = {"hostname": "bench1", "machine": "x86_64", "cpu_model": "Test CPU 3000", "cores": 4,
               "id": "b2b4d4658d55"}


def invoke(*args: str, results: Path | None = None):
    env = {"CONVBENCH_RESULTS": str(results)} if results else {}
    return CliRunner().invoke(main, list(args), env=env)


def night_id(night: int) -> str:
    return f"{(dt.datetime(2026, 10, 1) + dt.timedelta(days=night)):%Y%m%d}T020000Z-{night:06x}"


def write_history(root: Path, nights: int = NIGHTS, seed: int = 0, invocations: int | None = 3) -> list[str]:
    """A nightly store: STEPPED steps +10% at STEP_NIGHT, the device (and probe) +8% at DEVICE_SLOWDOWN_NIGHT.

    ``invocations=None`` writes records as convbench did before invocations: one per job, with
    neither ``repeat`` nor a reference probe.
    """
    rng = np.random.default_rng(seed)
    ids = []
    for night in range(nights):
        started = dt.datetime(2026, 10, 1, 2, tzinfo=dt.UTC) + dt.timedelta(days=night)
        writer = RunWriter(root, {"git": {"commit": f"{night:040x}", "dirty": False}, "command": ["harness", "run"],
                                  "devices": [{"name": "local", "transport": "local"}], "suite": None},
                           run_id=night_id(night))
        device = 1.08 if night >= DEVICE_SLOWDOWN_NIGHT else 1.0
        for workload, base in ((STEPPED, 0.004), (FLAT, 0.001)):
            level = base * device * (1.10 if workload == STEPPED and night >= STEP_NIGHT else 1.0)
            for repeat in range(invocations or 1):
                median = level * float(np.exp(rng.normal(0, 0.01)))
                samples = sorted(median * float(np.exp(e)) for e in rng.normal(0, 0.005, 9))
                record = {"job_id": f"local/onnxruntime/t1/{workload}#{repeat}", "workload_id": workload,
                          "device": "local", "transport": "local", "backend": "onnxruntime", "threads": 1,
                          "delegate": "CPUExecutionProvider", "runtime_version": "1.20.0", "status": "ok",
                          "samples_s": samples, "device_fingerprint": FINGERPRINT,
                          "latency": {"n": 9, "median": median, "ci_low": samples[2], "ci_high": samples[6]}}
                if invocations:
                    record.update(repeat=repeat, repeats=invocations)
                    record["reference_probe"] = {"kernel": "test kernel",
                                                 "median_s": 0.01 * device * float(np.exp(rng.normal(0, 0.004)))}
                writer.append(record)
        writer.finish("complete", started_at=started.isoformat())
        ids.append(writer.run_id)
    return ids


@pytest.fixture(scope="module")
def nightly(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("nightly") / "results"
    root.mkdir()
    return root, write_history(root)


# ---------------------------------------------------------------- history
def test_history_json_has_the_change_points_and_marks_their_rows(nightly, tmp_path):
    root, ids = nightly
    result = invoke("history", "--workload", STEPPED, "--json", "--figure", str(tmp_path / "trend.png"), results=root)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert len(data["runs"]) == NIGHTS and all(r["invocations"] == 3 for r in data["runs"])
    points = [(p["kind"], p["run_id"]) for p in data["change_points"]]
    assert points == [("step", ids[DEVICE_SLOWDOWN_NIGHT]), ("step", ids[STEP_NIGHT])], data["change_points"]
    step = data["change_points"][1]
    assert step["relative_change"] == pytest.approx(0.10, abs=0.02) and step["p_value"] < 0.01
    assert step["where"] == "local/onnxruntime/t1" and step["description"].startswith("step +")
    marked = {r["run_id"]: r["change_point"] for r in data["runs"] if r["change_point"]}
    assert set(marked) == {ids[DEVICE_SLOWDOWN_NIGHT], ids[STEP_NIGHT]}
    assert marked[ids[STEP_NIGHT]].startswith("step +")
    assert (tmp_path / "trend.png").read_bytes()[:4] == b"\x89PNG"


def test_history_normalised_by_the_probe_keeps_only_the_workloads_own_change(nightly):
    root, ids = nightly
    result = invoke("history", "--workload", STEPPED, "--normalize", "reference", "--no-figure", "--json",
                    results=root)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [(p["kind"], p["run_id"]) for p in data["change_points"]] == [("step", ids[STEP_NIGHT])]
    assert data["runs"][0]["value"] == pytest.approx(data["runs"][0]["median_s"] / data["runs"][0]["probe_s"])
    flat = json.loads(invoke("history", "--workload", FLAT, "--normalize", "reference", "--no-figure", "--json",
                             results=root).output)
    assert flat["change_points"] == []


def test_history_table_prints_change_points_under_it(nightly):
    root, ids = nightly
    result = invoke("history", "--workload", STEPPED, "--no-figure", results=root)
    assert result.exit_code == 0, result.output
    assert "change point: local/onnxruntime/t1: step +" in result.output
    assert re.search(rf"step \+1\d\.\d% at run {ids[STEP_NIGHT]} \(2026-10-21\), p=0\.00\d", result.output), \
        result.output


def test_history_all_prints_only_change_points_and_exits_0(nightly, tmp_path):
    root, ids = nightly
    result = invoke("history", "--all", results=root)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == "3 change point(s) in 2 series"
    assert all(line.startswith("change point: ") for line in lines[:-1])
    assert any(STEPPED in line and ids[STEP_NIGHT] in line for line in lines)
    normalised = json.loads(invoke("history", "--all", "--normalize", "reference", "--json", results=root).output)
    assert [(p["workload_id"], p["run_id"]) for p in normalised["change_points"]] == [(STEPPED, ids[STEP_NIGHT])]
    empty = invoke("history", "--all", results=tmp_path / "nothing")
    assert empty.exit_code == 0 and "no runs in" in empty.output


def test_history_usage_errors(nightly, tmp_path):
    root, _ = nightly
    neither = invoke("history", results=root)
    assert neither.exit_code == 2 and "--workload ID" in neither.output and "--all" in neither.output
    both = invoke("history", "--all", "--workload", STEPPED, results=root)
    assert both.exit_code == 2 and "leave out --workload" in both.output
    old = tmp_path / "old"
    write_history(old, nights=3, invocations=None)
    no_probe = invoke("history", "--workload", STEPPED, "--normalize", "reference", "--no-figure", results=old)
    assert no_probe.exit_code == 2 and "measured the reference probe" in no_probe.output


def test_old_runs_without_invocations_keep_their_history(tmp_path):
    root = tmp_path / "old"
    write_history(root, nights=24, invocations=None)
    result = invoke("history", "--workload", STEPPED, "--backend", "onnxruntime", "--threads", "1", "--no-figure",
                    "--json", results=root)
    data = json.loads(result.output)
    assert [r["invocations"] for r in data["runs"]] == [1] * 24 and all(r["probe_s"] is None for r in data["runs"])
    assert data["runs"][1]["change_vs_previous"] == pytest.approx(data["runs"][1]["median_s"]
                                                                  / data["runs"][0]["median_s"] - 1)
    assert [p["index"] for p in data["change_points"]] == [DEVICE_SLOWDOWN_NIGHT, STEP_NIGHT]


# ---------------------------------------------------------------- publish
class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.targets.append(value)


def check_offline(site: Path) -> int:
    """Every page links only relative files that exist; no URL leaves the site. Returns the link count."""
    count = 0
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert "http://" not in text and "https://" not in text, page
        parser = Links()
        parser.feed(text)
        for target in parser.targets:
            assert not re.match(r"^[a-z]+:", target) and not target.startswith("/"), (page, target)
            assert (page.parent / target).resolve().is_file(), (page, target)
            count += 1
    return count


@pytest.fixture(scope="module")
def nightly_site(nightly, tmp_path_factory) -> Path:
    root, _ = nightly
    out = tmp_path_factory.mktemp("site") / "site"
    lines: list[str] = []
    site = build_site(root, out, progress=lines.append)
    assert lines[0] == f"reading {NIGHTS} run(s) from {root}/" and lines[-1] == "writing index.html"
    assert len(site.pages) == 2 and len(site.figures) == 2 and len(site.change_points) == 3
    return out


def test_published_site_names_the_change_point_and_is_self_contained(nightly, nightly_site):
    _, ids = nightly
    assert check_offline(nightly_site) >= 6
    index = nightly_site.joinpath("index.html").read_text()
    assert index.count("<tr>") >= NIGHTS and ids[-1] in index and ids[0] in index
    assert f"run {ids[-1]} against {ids[-2]}" in index  # the latest comparison, for device local
    page = (nightly_site / "workloads" / f"{slug(STEPPED)}.html").read_text()
    assert f"at run {ids[STEP_NIGHT]} (2026-10-21)" in page and "change point: step +" in page
    assert f'src="{slug(STEPPED)}.png"' in page and "reference-probe time" in page


def test_publish_command_and_empty_store(nightly, tmp_path):
    root, _ = nightly
    result = invoke("publish", "--out", str(tmp_path / "site"), results=root)
    assert result.exit_code == 0, result.output
    assert "workload 1/2:" in result.output and "site: " in result.output and "3 change point(s)" in result.output
    empty = invoke("publish", "--out", str(tmp_path / "empty"), results=tmp_path / "nothing")
    assert empty.exit_code == 2 and "no runs in" in empty.output and "nothing to publish" in empty.output


def _open(browser, url: str) -> dict:  # noqa: F811
    browser.events.clear()
    browser.call("Page.navigate", {"url": url}, session=True)
    browser.wait_for("Page.loadEventFired")
    return json.loads(browser.call("Runtime.evaluate", {"returnByValue": True, "expression": """JSON.stringify({
        title: document.title, text: document.body.innerText,
        images: [...document.images].map(i => ({complete: i.complete, w: i.naturalWidth, h: i.naturalHeight})),
        links: [...document.links].map(a => a.href)})"""}, session=True)["result"]["value"])


def _failures(browser) -> list:  # noqa: F811
    return [e["params"] for e in browser.events if e.get("method") in ("Network.loadingFailed",
                                                                        "Runtime.exceptionThrown")
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]


def test_published_site_in_headless_chromium_offline(nightly, nightly_site, browser):  # noqa: F811
    _, ids = nightly
    for domain in ("Page", "Network", "Runtime", "Log"):
        browser.call(f"{domain}.enable", session=True)
    browser.call("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": -1,
                                                      "uploadThroughput": -1}, session=True)
    index = _open(browser, (nightly_site / "index.html").as_uri())
    assert _failures(browser) == []
    assert index["title"] == "convbench results"
    assert "step +" in index["text"] and ids[STEP_NIGHT] in index["text"]
    assert all(link.startswith("file://") for link in index["links"]), index["links"]
    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    page_url = next(link for link in index["links"] if link.endswith(f"{slug(STEPPED)}.html"))
    page = _open(browser, page_url)
    requests += [e["params"]["request"]["url"] for e in browser.events
                 if e.get("method") == "Network.requestWillBeSent"]
    assert _failures(browser) == []
    assert all(url.startswith("file://") for url in requests), requests
    assert "change point: step +" in page["text"] and f"at run {ids[STEP_NIGHT]}" in page["text"]
    assert len(page["images"]) == 1
    image = page["images"][0]
    assert image["complete"] and image["w"] > 400 and image["h"] > 300, image  # decoded, not a broken icon


def test_publish_over_real_runs(tmp_path):
    """Two real runs of one small job: the index lists both and compares the latest with the first."""
    results = tmp_path / "results"
    for _ in range(2):
        run = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--workloads", SMALL, "--backends",
                              "onnxruntime", "--min-time", "0.05", "--max-time", "0.2", "--out", str(results)],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
    site = build_site(results, tmp_path / "site")
    check_offline(tmp_path / "site")
    index = site.index.read_text()
    runs = sorted(p.name for p in results.iterdir() if p.is_dir())
    assert all(run in index for run in runs)
    assert f"run {runs[1]} against {runs[0]}" in index
    assert re.search(r'class="verdict-(unchanged|regressed|improved|inconclusive)"', index), index
    page = (tmp_path / "site" / "workloads" / f"{SMALL}.html").read_text()
    assert page.count(runs[0]) >= 1 and page.count(runs[1]) >= 1 and "probe ms" in page
