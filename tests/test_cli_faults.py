"""Faults and hostile input through the CLI (issue 11, items 4-9), as a user would type them.

Runs are cheap: one small conv layer on ONNX Runtime with a short timing policy; stored
results are copies of the hand-made runs in tests/data/runs (see make_runs.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.store import read_run

DATA = Path(__file__).parent / "data" / "runs"
A, B, C = "20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb", "20260103T000000Z-cccccc"
SMALL = "conv-separable-M16-N32-k3-x14-s1"
SMALL_STD = "conv-standard-M16-N32-k3-x14-s1"
FAST = ["--backends", "onnxruntime", "--max-time", "0.2", "--min-time", "0.05"]

sys.path.insert(0, str(DATA))
from make_runs import record  # noqa: E402


def invoke(*args: str, results: Path | None = None):
    env = {"CONVBENCH_RESULTS": str(results)} if results else {}
    return CliRunner().invoke(main, list(args), env=env)


def no_traceback(result) -> None:
    """A clean exit: a code and a message, never an exception escaping the command."""
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        "".join(__import__("traceback").format_exception(result.exception))
    assert "Traceback" not in result.output


def only_run(results_dir: Path) -> Path:
    (run,) = [p for p in results_dir.iterdir() if p.is_dir()]
    return run


@pytest.fixture
def store(tmp_path) -> Path:
    root = tmp_path / "results"
    root.mkdir()
    for name in (A, B, C):
        shutil.copytree(DATA / name, root / name)
    return root


def write_run(root: Path, run_id: str, records: list[dict], status: str = "complete") -> Path:
    path = root / run_id
    path.mkdir(parents=True)
    info = {"run_id": run_id, "status": status, "suite": "handmade", "started_at": "2026-01-01T00:00:00+00:00",
            "devices": [{"name": "local"}], "workloads": sorted({r["workload_id"] for r in records}), "counts": {}}
    (path / "run.json").write_text(json.dumps(info))
    (path / "measurements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A small tmpfs at ``path`` (needs root with mount rights; skips otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def wait_for_first_record(results_dir: Path, process: subprocess.Popen, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(results_dir.glob("*/measurements.jsonl")) if results_dir.exists() else []
        if found and found[0].read_text().count("\n") >= 1:
            return found[0]
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("no measurement arrived")


def _default_signals() -> None:  # a background shell starts children with SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def runner_processes(tmpdir: Path) -> list[str]:
    """Processes started with TMPDIR=tmpdir (a runner or the per-item process it starts), still alive."""
    marker = f"TMPDIR={tmpdir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return found


# ---------------------------------------------------------------- 4. the gate must not pass on nothing
@pytest.mark.slow
def test_run_in_which_every_job_fails_exits_nonzero_and_is_failed(tmp_path, results_dir):
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  - name: local\n    transport: local\n    python: /bin/false\n"
                       "    backends: [onnxruntime]\n    threads: [1]\n")
    result = invoke("run", "--repeats", "1", "--workloads", SMALL, "--devices-file", str(devices), *FAST)
    no_traceback(result)
    assert result.exit_code == 1, result.output
    assert "run failed: no job succeeded (1 error)" in result.stderr
    info, records = read_run(only_run(results_dir))
    assert info["status"] == "failed" and info["reason"] == "no job succeeded (1 error)"
    assert [r["status"] for r in records] == ["error"]


def _ok(run_id: str, workload_id: str) -> dict:
    return record(run_id, workload_id, "onnxruntime", [1.0 + 0.01 * i for i in range(20)])


def _failed(run_id: str, workload_id: str) -> dict:
    return record(run_id, workload_id, "onnxruntime", None, error="runner crashed while running this job")


W1, W2, W3 = "conv-standard-M32-N64-k3-x28-s1", "conv-separable-M32-N64-k3-x28-s1", "mobilenet_v2-0.35-96"


@pytest.mark.parametrize(("case", "baseline", "current", "matched", "unmatched"), [
    ("nothing matched", [W1], [W2], 0, 2),
    ("current run all failed", [W1, W2], [], 0, 2),
    ("more unmatched than matched", [W1, W2, W3], [W1], 1, 2),
])
def test_compare_fails_the_gate_on_nothing_unless_allowed(tmp_path, case, baseline, current, matched, unmatched):
    root = tmp_path / "results"
    write_run(root, A, [_ok(A, w) for w in baseline])
    write_run(root, B, [_ok(B, w) for w in current] or [_failed(B, w) for w in baseline])
    result = invoke("compare", A, B, results=root)
    no_traceback(result)
    assert result.exit_code == 1, result.output
    assert "gate failed" in result.output and f"{unmatched} unmatched; exit code 1" in result.output
    as_json = json.loads(invoke("compare", A, B, "--json", results=root).output)
    assert as_json["exit_code"] == 1 and any("gate failed" in w for w in as_json["warnings"])
    assert len(as_json["rows"]) == matched and len(as_json["unmatched"]) == unmatched
    assert invoke("compare", A, B, "--markdown", results=root).output.startswith("### :x:")
    allowed = invoke("compare", A, B, "--allow-unmatched", results=root)
    assert allowed.exit_code == 0, allowed.output
    assert "gate failed" not in allowed.output


def test_compare_gate_still_passes_when_most_measurements_match(store):
    # B -> C: 5 matched, 3 unmatched, one regression: exit 1 for the regression only.
    result = invoke("compare", B, C, "--threshold", "25%", results=store)
    assert result.exit_code == 0, result.output
    assert "gate failed" not in result.output


# ---------------------------------------------------------------- 5. SIGTERM, SIGHUP, SIGINT to harness alone
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signal_to_harness_alone_interrupts_keeps_records_and_cleans_up(tmp_path, sig):
    results_dir, scratch = tmp_path / "results", tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))  # the local runner's temporary directories land here
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", "--repeats", "1", "--workloads", f"{SMALL_STD},{SMALL}",
         "--backends",
         "onnxruntime", "--threads", "1,2", "--max-time", "2", "--min-time", "2", "--target-ci", "0",
         "--out", str(results_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
        preexec_fn=_default_signals)
    try:
        measurements = wait_for_first_record(results_dir, process)
        time.sleep(0.5)  # the next job is under way, in its own measuring process
        assert list(scratch.glob("convbench-local-*")), "the runner's directory should exist mid-run"
        os.kill(process.pid, sig)  # the harness process only, not its group: the runner does not see it
        out, err = process.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + sig, out + err
    assert f"interrupted ({sig.name})" in out and "Traceback" not in err and "Exception in thread" not in err
    info, records = read_run(measurements.parent)
    assert info["status"] == "interrupted" and info["reason"] == f"stopped by {sig.name}"
    assert 1 <= len(records) < 4 and all(r["status"] == "ok" for r in records)
    assert sum(info["counts"].values()) == len(records)
    assert all(json.loads(line) for line in measurements.read_text().splitlines())
    assert not list(scratch.glob("convbench-local-*")), "the runner's temporary directory leaked"
    assert not runner_processes(scratch), "a runner outlived the harness"


# ---------------------------------------------------------------- 6. disk full
@pytest.mark.slow
def test_disk_full_fails_the_run_once_and_keeps_what_was_written(tmp_path):
    with tmpfs(tmp_path / "small", "2m") as mount:
        results_dir = mount / "results"
        process = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "run", "--repeats", "1", "--workloads", f"{SMALL_STD},{SMALL}",
         "--backends",
             "onnxruntime", "--threads", "1,2", "--max-time", "1", "--min-time", "1", "--target-ci", "0",
             "--out", str(results_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            measurements = wait_for_first_record(results_dir, process)
            with contextlib.suppress(OSError), (mount / "filler").open("wb") as filler:
                while True:  # fill the disk to the last byte
                    filler.write(b"\0" * 4096)
                    filler.flush()
            out, err = process.communicate(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 1, out + err
        assert "Traceback" not in err and "Exception in thread" not in err, err
        assert (out + err).lower().count("disk full") == 1, out + err
        assert err.startswith("error: run failed: disk full: cannot write"), err
        info = json.loads((measurements.parent / "run.json").read_text())
        assert info["status"] == "failed" and info["reason"].startswith("disk full")
        lines = measurements.read_text().splitlines()
        assert lines and all(json.loads(line)["status"] == "ok" for line in lines)  # no torn record
        assert sum(info["counts"].values()) == len(lines) < 4
        assert not (measurements.parent / ".reserve").exists()


# ---------------------------------------------------------------- 7. a damaged results store
HISTORY = ("history", "--workload", "conv-standard-M32-N64-k3-x28-s1", "--no-figure")


def _damage_run_json(root: Path, run: str, text: str) -> Path:
    path = root / run / "run.json"
    path.write_text(text)
    return path


def _append(root: Path, run: str, text: str) -> Path:
    path = root / run / "measurements.jsonl"
    with path.open("a") as handle:
        handle.write(text)
    return path


def _wrong_types(root: Path, run: str) -> Path:
    path = root / run / "measurements.jsonl"
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    first.update(threads="one", latency="fast")
    lines[0] = json.dumps(first)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_truncated_run_json_of_an_old_run_does_not_break_history_or_compare(store):
    damaged = store / A / "run.json"
    damaged.write_text(damaged.read_text()[:100])
    history = invoke(*HISTORY, results=store)
    no_traceback(history)
    assert history.exit_code == 0, history.output
    assert f"warning: {damaged}: damaged, not valid JSON" in history.stderr and "run skipped" in history.stderr
    assert "3 valid measurements" in history.stdout
    compare = invoke("compare", B, C, results=store)  # unrelated to A: its usual verdicts
    no_traceback(compare)
    assert compare.exit_code == 1 and "1 regressed" in compare.output
    latest = invoke("compare", "--baseline", "auto", results=store)  # looks at every earlier run
    no_traceback(latest)
    assert latest.exit_code == 1 and B in latest.output


@pytest.mark.parametrize("command", ["history", "report", "compare", "export"])
@pytest.mark.parametrize("damage", ["run.json is []", "record 42", "wrong field types", "torn last line"])
def test_damaged_run_is_skipped_or_refused_with_one_line(store, tmp_path, command, damage):
    if damage == "run.json is []":
        damaged = _damage_run_json(store, C, "[]")
    elif damage == "record 42":
        damaged = _append(store, C, "42\n")
    elif damage == "wrong field types":
        damaged = _wrong_types(store, C)
    else:
        damaged = _append(store, C, '{"job_id": "local/onnxruntime/t1/x", "trunc')
    args = {"history": HISTORY, "report": ("report", C, "--out", str(tmp_path / "report")),
            "compare": ("compare", B, C), "export": ("export", C, "--format", "csv", "-o", "-")}[command]
    result = invoke(*args, results=store)
    no_traceback(result)
    if damage == "run.json is []" and command != "history":
        # The run asked for is unusable: one clear line, usage-error exit code.
        assert result.exit_code == 2, result.output
        assert result.stderr == f"error: {damaged}: damaged, a JSON list instead of an object\n"
        return
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(damaged) in warnings[0], result.stderr
    if damage == "run.json is []":  # history over every run: C is skipped, the others used
        assert "run skipped" in warnings[0] and result.exit_code == 0
        return
    # C holds 36 records: 5 invocations of each of 7 jobs and one error (tests/data/runs/make_runs.py)
    kept = {"record 42": "kept 36 of 37", "wrong field types": "kept 35 of 36", "torn last line": "kept 36 of 37"}[
        damage]
    assert kept in warnings[0], warnings[0]
    assert {"record 42": "line 37 (not a record but int 42)", "wrong field types": "line 1 (field 'threads' is str",
            "torn last line": "line 37 (torn: cut off mid-write although the run is complete)"}[damage] in warnings[0]
    if command == "compare":  # a skipped record could hide a regression: the gate fails, saying why
        assert result.exit_code == 1 and "damaged record(s) were skipped" in result.output
    else:
        assert result.exit_code == 0, result.output


def test_torn_last_line_of_a_crashed_run_is_dropped_quietly(store):
    info = json.loads((store / C / "run.json").read_text())
    (store / C / "run.json").write_text(json.dumps(dict(info, status="running")))
    _append(store, C, '{"job_id": "local/onnxruntime/t1/x", "trunc')
    result = invoke("export", C, "--format", "csv", "-o", "-", results=store)
    assert result.exit_code == 0 and result.stderr == ""
    assert len(result.stdout.strip().splitlines()) == 1 + 36


def test_run_dir_without_run_json_is_reported(store):
    (store / A / "run.json").unlink()
    result = invoke("history", "--workload", "mobilenet_v1-0.25-128", "--no-figure", results=store)
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"warning: {store / A / 'run.json'}: missing; run skipped (its measurements.jsonl "
                             "holds 14 record(s), not used without the run's provenance)\n")
    named = invoke("report", A, results=store)
    no_traceback(named)
    assert named.exit_code == 2 and "run.json: missing" in named.stderr and "14 record(s)" in named.stderr


# ---------------------------------------------------------------- 8. clear errors instead of tracebacks
@pytest.mark.parametrize("kind", ["directory", "binary", "non-UTF-8"])
@pytest.mark.parametrize("command", [("run",), ("devices", "list"), ("devices", "check")])
def test_unreadable_devices_file_is_one_line(tmp_path, results_dir, kind, command):
    path = {"directory": tmp_path, "binary": tmp_path / "devices.bin", "non-UTF-8": tmp_path / "latin1.yaml"}[kind]
    if kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "non-UTF-8":
        path.write_bytes("devices:\n  - name: caf\xe9\n    transport: local\n".encode("latin-1"))
    result = invoke(*command, "--devices-file", str(path))
    no_traceback(result)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {path}") and ("directory" in line or "UTF-8" in line), line
    assert not results_dir.exists()


def test_run_out_pointing_at_a_file_is_one_line(tmp_path):
    target = tmp_path / "afile"
    target.write_text("not a directory")
    for out, needle in ((target, "is a file, not a directory"), (target / "results", "Not a directory")):
        result = invoke("run", "--repeats", "1", "--workloads", SMALL, *FAST, "--out", str(out))
        no_traceback(result)
        assert result.exit_code == 2, result.output
        (line,) = result.stderr.splitlines()
        assert line.startswith("error:") and needle in line and str(out) in line, line
    assert target.read_text() == "not a directory"


def test_export_output_pointing_at_a_directory_is_one_line(store, tmp_path):
    result = invoke("export", C, "--format", "csv", "-o", str(tmp_path), results=store)
    no_traceback(result)
    assert result.exit_code == 2
    assert result.stderr == (f"error: -o {tmp_path}: is a directory; give a file name, e.g. -o "
                             f"{tmp_path / (C + '.csv')}\n")


def test_read_only_results_directory_for_run_and_baseline_set(tmp_path):
    with tmpfs(tmp_path / "ro", "4m") as mount:
        results = mount / "results"
        shutil.copytree(DATA / B, results / B)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        run = invoke("run", "--repeats", "1", "--workloads", SMALL, *FAST, "--out", str(results))
        no_traceback(run)
        assert run.exit_code == 2
        assert run.stderr == f"error: cannot write results to {results}: Read-only file system\n"
        baseline = invoke("baseline", "set", B, "--results", str(results))
        no_traceback(baseline)
        assert baseline.exit_code == 2
        assert baseline.stderr == (f"error: cannot store the baseline in {results / 'baseline.json'}: "
                                   "Read-only file system\n")


def test_baseline_that_cannot_be_written_is_one_line_without_mount(store):
    (store / "baseline.json").mkdir()  # fails for root too: a rename cannot replace a directory
    result = invoke("baseline", "set", B, results=store)
    no_traceback(result)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot store the baseline in {store / 'baseline.json'}: ")


# ---------------------------------------------------------------- 9. silently wrong
@pytest.mark.parametrize("option", ["--workloads", "--backends", "--threads", "--devices"])
@pytest.mark.parametrize("value", ["", ",,,"])
def test_an_option_naming_nothing_is_an_error_not_the_default(tmp_path, results_dir, option, value):
    # Each with a tripwire the run reaches only when the empty option was taken for its default
    # (the whole quick suite, every backend, ...), so that the unfixed harness fails fast.
    blocker = tmp_path / "afile"
    blocker.write_text("")
    tripwire = {"--workloads": ["--backends", "nosuch"], "--backends": ["--workloads", SMALL, "--threads", "0"],
                "--threads": ["--workloads", SMALL, "--devices", "nosuch"],
                "--devices": ["--workloads", SMALL, "--backends", "onnxruntime", "--out", str(blocker)]}[option]
    result = invoke("run", "--repeats", "1", option, value, *tripwire)
    no_traceback(result)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {option} {value!r} names nothing; give a comma-separated list such as ")
    assert line.endswith("or leave the option out for the default")
    assert not results_dir.exists()


@pytest.mark.slow
def test_duplicate_threads_and_devices_plan_and_record_one_job(results_dir):
    result = invoke("run", "--repeats", "1", "--workloads", f"{SMALL},{SMALL}", "--threads", "1,1,01",
                    "--devices", "local,local",
                    *FAST)
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert "1 jobs: 1 workloads on local with onnxruntime" in result.stdout
    info, records = read_run(only_run(results_dir))
    assert info["jobs"] == 1 and len(records) == 1 and records[0]["threads"] == 1
    assert [d["name"] for d in info["devices"]] == ["local"]


@pytest.mark.slow
def test_non_canonical_workload_id_is_measured_under_the_canonical_id(results_dir):
    padded = "conv-separable-M016-N032-k03-x014-s01"
    result = invoke("run", "--repeats", "1", "--workloads", f"{padded},{SMALL}", *FAST)
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert f"note: workload {padded} is spelled {SMALL}" in result.stdout
    assert "1 jobs: 1 workloads" in result.stdout
    info, records = read_run(only_run(results_dir))
    assert info["workloads"] == [SMALL] and [r["workload_id"] for r in records] == [SMALL]


@pytest.mark.slow
def test_max_time_alone_below_the_default_min_time_clamps_it(results_dir):
    result = invoke("run", "--repeats", "1", "--workloads", SMALL, "--backends", "onnxruntime", "--max-time", "0.3")
    no_traceback(result)
    assert result.exit_code == 0, result.output
    info, records = read_run(only_run(results_dir))
    assert info["policy"]["min_seconds"] == info["policy"]["max_seconds"] == 0.3
    assert records[0]["status"] == "ok"


def test_explicit_min_time_above_max_time_says_which_is_which(results_dir):
    result = invoke("run", "--repeats", "1", "--workloads", SMALL, "--min-time", "0.5", "--max-time", "0.3")
    assert result.exit_code == 2
    assert result.stderr == ("error: --min-time 0.5 exceeds --max-time 0.3; the minimum timed seconds per job "
                             "must not exceed the maximum\n")
    assert not results_dir.exists()
