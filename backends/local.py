"""Local transport: the runner in a fresh subprocess of this machine's Python.

One subprocess per (backend, threads) batch, so runtimes never share a process.  If the
runner dies mid-batch (a segfault in a runtime), the job it was running is recorded as
failed with the runner's last stderr lines and a fresh runner takes the remaining jobs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backends.base import Artifact, Job, ResultCallback, StatusCallback, TimingPolicy, Transport
from backends.protocol import PlanItem, RunnerSession, make_plan, parse_check
from backends.runner import zipapp_path
from harness.records import ErrorKind
from harness.registry import BACKENDS, TransportInfo

STDERR_TAIL = 2000


# Seconds a runtime may spend before its first timed call beyond the usual minute: torch.compile
# compiles MobileNet v2 in 40-70 s on a 2-core x86 VM, far longer on a board.
LOAD_ALLOWANCE_S = {"torch-compile": 600.0}


def batch_timeout(policy: TimingPolicy, items: int, backend: str | None = None) -> float:
    """Generous wall-clock limit: load, warm-up, timing and idle window per item (cool-down waits apart)."""
    runtime = BACKENDS[backend].runtime if backend in BACKENDS else None
    per_item = (60 + LOAD_ALLOWANCE_S.get(runtime or "", 0.0) + policy.max_seconds * 1.5 + policy.warmup_seconds
                + policy.energy_idle_seconds)
    return 30 + per_item * items


def cooldown_plan(thermal: Any) -> dict[str, Any] | None:
    """The runner plan's ``cooldown`` from devices.yaml's ``thermal`` (None: no waiting)."""
    if thermal is None or thermal.cooldown_c is None:
        return None
    return {"target_c": thermal.cooldown_c, "max_wait_s": thermal.max_wait_s, "zones": list(thermal.zones)}


def cooldown_wait(cooldown: dict[str, Any] | None) -> float:
    """The longest a runner may wait for the device to cool before one item (added to the batch's limit)."""
    return float(cooldown["max_wait_s"]) if cooldown else 0.0


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a runner started in its own process group, with whatever it started.

    The group is signalled even when the runner itself has exited: the process it started
    for the current item may still be running.
    """
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        if process.poll() is None:
            process.kill()


class LocalTransport(Transport):
    name = "local"

    def __init__(self, python: str | None = None, sysfs_root: str = "/sys",
                 energy: Mapping[str, Any] | None = None, cpu_mask: str | None = None,
                 output_dir: Path | None = None, thermal: Any = None) -> None:
        self.python = python or sys.executable
        self.sysfs_root = sysfs_root
        self.energy = energy
        self.cooldown = cooldown_plan(thermal)  # devices.yaml's thermal: the runner waits for a hot device
        self.cpu_mask = cpu_mask
        self.output_dir = output_dir
        # abort() (an interrupted run) kills the running runner; run_batch then returns at once,
        # so its ``finally`` removes the temporary directory before the harness exits.
        self._aborted = threading.Event()
        self._process: subprocess.Popen | None = None
        self._process_lock = threading.Lock()

    def abort(self) -> None:
        """Stop now: kill the running runner, start no other (called from another thread)."""
        self._aborted.set()
        with self._process_lock:
            if self._process is not None:
                _kill_group(self._process)

    def _command(self, plan_path: Path) -> list[str]:
        command = [self.python, str(zipapp_path()), str(plan_path)]
        if self.cpu_mask:
            command = ["taskset", self.cpu_mask, *command]
        return command

    def run_batch(self, jobs: list[Job], artifacts: Mapping[str, Artifact], policy: TimingPolicy,
                  on_result: ResultCallback, on_status: StatusCallback | None = None) -> None:
        if self._aborted.is_set():
            return
        workdir = Path(tempfile.mkdtemp(prefix="convbench-local-"))
        try:
            outputs = self.output_dir or workdir
            outputs.mkdir(parents=True, exist_ok=True)
            items = []
            for index, job in enumerate(jobs):
                artifact = artifacts[job.workload_id]
                out = outputs / f"item{index}.out.npy"
                items.append(PlanItem(job, artifact, str(artifact.path), str(artifact.input_path), str(out), out))
            session = RunnerSession(self.name, items, on_result, on_status=on_status)
            while session.remaining() and not self._aborted.is_set():
                self._run_once(session, session.remaining(), jobs[0].backend, jobs[0].threads, policy, workdir)
        finally:
            # on_result has checked the outputs by now; nothing else needs them.
            shutil.rmtree(workdir, ignore_errors=True)

    def _run_once(self, session: RunnerSession, items: list[PlanItem], backend: str, threads: int,
                  policy: TimingPolicy, workdir: Path) -> None:
        plan = make_plan(backend, threads, items, policy, self.sysfs_root, self.energy, self.cooldown)
        plan_path = workdir / "plan.json"
        plan_path.write_text(json.dumps(plan))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # Runtimes honour these too; the plan's thread count must win.
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        with self._process_lock:
            if self._aborted.is_set():
                return
            # Its own process group: abort() kills the runner and the per-item process it starts.
            process = subprocess.Popen(self._command(plan_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=env, process_group=0)
            self._process = process
        stderr_chunks: list[str] = []
        reader = threading.Thread(target=lambda: stderr_chunks.append(process.stderr.read()), daemon=True)
        reader.start()
        timed_out = threading.Event()

        def kill_on_timeout() -> None:
            timed_out.set()
            _kill_group(process)

        limit = batch_timeout(policy, len(items), backend) + len(items) * cooldown_wait(self.cooldown)
        timer = threading.Timer(limit, kill_on_timeout)
        timer.start()
        try:
            for line in process.stdout:
                session.feed(line)
            process.wait()
        except BaseException:
            _kill_group(process)
            process.wait()
            raise
        finally:
            timer.cancel()
            reader.join(timeout=5)
            with self._process_lock:
                self._process = None
        if not session.remaining() or self._aborted.is_set():
            return  # aborted: the unfinished jobs were cut off, not failed
        stderr = "".join(stderr_chunks).strip()[-STDERR_TAIL:]
        reason, kind = f"runner exited with code {process.returncode}", ErrorKind.CRASH
        if timed_out.is_set():
            reason, kind = f"runner timed out after {limit:.0f}s", ErrorKind.TIMEOUT
        if stderr:
            reason += f": {stderr.splitlines()[-1]}"
        if session.hello.get("error") or not session.hello:
            session.fail_remaining(reason, kind)  # the runtime itself is unusable: no point retrying
            return
        # The runner crashed on the first job it had not reported; skip that one and go on.
        crashed = session.remaining()[0]
        crashed_session = RunnerSession(session.transport, [crashed], session.on_result)
        crashed_session.hello = session.hello
        crashed_session.fail_remaining(f"runner crashed while running this job ({reason})", kind)
        session.done.add(crashed.job.job_id)

    def check(self) -> dict[str, Any]:
        command = [self.python, str(zipapp_path()), "--check", json.dumps({"sysfs_root": self.sysfs_root,
                                                                        "energy": self.energy})]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return {"usable": False, "problems": ["runner --check timed out after 120s"]}
        return parse_check(done.returncode, done.stdout, done.stderr)


def _open(device: Any) -> LocalTransport:
    return LocalTransport(python=device.option("python"), sysfs_root=device.sysfs_root, energy=device.energy,
                          cpu_mask=device.cpu_mask, thermal=device.thermal)


TRANSPORT = TransportInfo(
    "local",
    fields={"python": "the Python interpreter that runs the runner (default: the harness's own)"},
    open=_open,
    runs_on_host=True,
)
