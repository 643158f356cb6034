"""SSH transport: push the runner and artifacts to a board, run the runner there, read JSON back.

Remote layout under the device's ``workdir`` (default ``/tmp/convbench``):

* ``runner.pyz``: the same self-contained runner (a zipapp) the local transport uses;
* ``cache/<artifact-key>/``: artifacts and reference inputs, content-addressed, so an
  upload is skipped when the remote file already has the same sha256;
* ``runs/<token>/``: the plan and outputs of one connection, removed when it closes.

Everything crosses as argv (quoted by ``SshConnection.run``) or over SFTP: names with
spaces or shell metacharacters are data, never commands.
"""

from __future__ import annotations

import json
import posixpath
import re
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backends.base import Artifact, DeviceError, Job, ResultCallback, StatusCallback, TimingPolicy, Transport
from backends.local import batch_timeout, cooldown_plan, cooldown_wait
from backends.protocol import PlanItem, RunnerSession, make_plan, parse_check
from backends.runner import zipapp_path
from harness.records import ErrorKind
from harness.registry import BACKENDS, Fail, TransportInfo

# Seconds one runner process may spend importing its runtime on a board, beyond batch_timeout's
# minute per item: the runner imports it for its hello and again in each item's fresh process.
# Measured on the emulated Raspberry Pi 4 (qemu-user): import torch 27 s, torch and
# executorch.runtime together 72 s; a real Pi 4 takes seconds.
IMPORT_ALLOWANCE_S = {"torch": 60.0, "torch-compile": 60.0, "executorch": 150.0}
CHECK_TIMEOUT_S = 300.0  # --check imports every runtime the board has, in one process


class SshTransport(Transport):
    name = "ssh"

    def __init__(self, target: Any, python: str = "python3", workdir: str = "/tmp/convbench",
                 sysfs_root: str = "/sys", energy: Mapping[str, Any] | None = None,
                 cpu_mask: str | None = None, label: str = "", thermal: Any = None) -> None:
        self.target = target
        self.python = python
        self.workdir = workdir.rstrip("/") or "/"
        self.sysfs_root = sysfs_root
        self.energy = energy
        self.cpu_mask = cpu_mask
        self.cooldown = cooldown_plan(thermal)  # devices.yaml's thermal: the runner waits for a hot board
        self.label = label or getattr(target, "host", "board")
        self._connection: Any = None
        self._run_dir = posixpath.join(self.workdir, "runs", secrets.token_hex(6))
        self._local = Path(tempfile.mkdtemp(prefix="convbench-ssh-"))
        self._runner_remote = posixpath.join(self.workdir, "runner.pyz")
        self._runner_pushed = False

    @classmethod
    def from_device(cls, device: Any) -> SshTransport:
        from backends.ssh_connection import SshTarget

        options = device.options
        key = options.get("key")
        target = SshTarget(
            host=options["host"], port=options.get("port"), user=options.get("user"),
            key=str(Path(key).expanduser()) if key else None,
            known_hosts=str(Path(options["known_hosts"]).expanduser()) if options.get("known_hosts") else None,
            trust_new_host=bool(options.get("trust_new_host", False)),
            connect_timeout=float(options.get("connect_timeout", 10)),
            ssh_config=str(Path(options["ssh_config"]).expanduser()) if options.get("ssh_config") else None,
        )
        return cls(target, python=options.get("python", "python3"), workdir=options.get("workdir", "/tmp/convbench"),
                   sysfs_root=device.sysfs_root, energy=device.energy, cpu_mask=device.cpu_mask, label=device.name,
                   thermal=device.thermal)

    # ------------------------------------------------------------ connection
    def _conn(self) -> Any:
        from backends.ssh_connection import SshConnection, SshError

        if self._connection is not None and self._connection.connected:
            return self._connection
        try:
            self._connection = SshConnection(self.target).connect()
        except SshError as exc:
            raise DeviceError(str(exc)) from exc
        return self._connection

    def _push_runner(self, conn: Any) -> None:
        if not self._runner_pushed:
            conn.put(zipapp_path(), self._runner_remote)
            self._runner_pushed = True

    def _push_artifact(self, conn: Any, artifact: Artifact) -> tuple[str, str]:
        remote_dir = posixpath.join(self.workdir, "cache", f"{artifact.workload_id}-{artifact.sha256[:16]}")
        model = posixpath.join(remote_dir, artifact.path.name)
        data = posixpath.join(remote_dir, artifact.input_path.name)
        conn.put(artifact.path, model)
        conn.put(artifact.input_path, data)
        return model, data

    def _runner_argv(self, *args: str) -> list[str]:
        argv = [self.python, self._runner_remote, *args]
        return ["taskset", self.cpu_mask, *argv] if self.cpu_mask else argv

    # ------------------------------------------------------------ Transport
    def run_batch(self, jobs: list[Job], artifacts: Mapping[str, Artifact], policy: TimingPolicy,
                  on_result: ResultCallback, on_status: StatusCallback | None = None) -> None:
        from backends.ssh_connection import ConnectionLost, RemoteTimeout, SshError

        conn = self._conn()
        session: RunnerSession | None = None
        try:
            self._push_runner(conn)
            conn.mkdir_p(self._run_dir)
            items = []
            for index, job in enumerate(jobs):
                model, data = self._push_artifact(conn, artifacts[job.workload_id])
                remote_out = posixpath.join(self._run_dir, f"item{index}.out.npy")
                items.append(PlanItem(job, artifacts[job.workload_id], model, data, remote_out,
                                      self._local / f"item{index}.out.npy"))

            def fetch(item: PlanItem) -> None:
                conn.get(item.output, item.local_output)

            session = RunnerSession(self.name, items, on_result, fetch, on_status=on_status)
            plan = make_plan(jobs[0].backend, jobs[0].threads, items, policy, self.sysfs_root, self.energy,
                             self.cooldown)
            limit = (batch_timeout(policy, len(items), jobs[0].backend) + len(items) * cooldown_wait(self.cooldown)
                     + (len(items) + 1) * import_allowance(jobs[0].backend))
            code, _, stderr = conn.run(self._runner_argv("-"), timeout=limit,
                                       stdin=json.dumps(plan).encode(), on_stdout_line=session.feed)
            if session.remaining():
                tail = (stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
                session.fail_remaining(f"runner on {self.label} exited with code {code}: {tail}", ErrorKind.CRASH)
        except RemoteTimeout as exc:
            if session is not None:
                session.fail_remaining(f"runner on {self.label} timed out: {exc}", ErrorKind.TIMEOUT)
            else:
                raise DeviceError(str(exc)) from exc
        except ConnectionLost as exc:
            if session is not None:
                session.fail_remaining(f"connection to {self.label} lost: {exc}", ErrorKind.DEVICE)
            raise DeviceError(f"connection lost: {exc}") from exc
        except SshError as exc:
            raise DeviceError(str(exc)) from exc
        finally:
            for item in (session.items if session else []):
                item.local_output.unlink(missing_ok=True)

    def check(self) -> dict[str, Any]:
        from backends.ssh_connection import SshError

        try:
            conn = self._conn()
            self._push_runner(conn)
            options = json.dumps({"sysfs_root": self.sysfs_root, "energy": self.energy})
            code, out, err = conn.run(self._runner_argv("--check", options), timeout=CHECK_TIMEOUT_S)
        except (DeviceError, SshError) as exc:
            return {"usable": False, "problems": [str(exc)]}
        result = parse_check(code, out.decode(errors="replace"), err.decode(errors="replace"))
        result["target"] = f"{self.target.user or ''}@{self.target.host}:{self.target.port or 22}".lstrip("@")
        return result

    def close(self) -> None:
        if self._connection is not None:
            try:
                if self._connection.connected:
                    self._connection.remove_tree(self._run_dir)
            except Exception:  # the board may be gone; its /tmp will be cleaned by itself
                pass
            self._connection.close()
            self._connection = None
        shutil.rmtree(self._local, ignore_errors=True)


def import_allowance(backend: str) -> float:
    runtime = BACKENDS[backend].runtime if backend in BACKENDS else None
    return IMPORT_ALLOWANCE_S.get(runtime or "", 0.0)


_USER_RE = re.compile(r"[A-Za-z0-9_.@][A-Za-z0-9_.@-]*")


def _validate(options: Mapping[str, Any], fail: Fail) -> None:
    from backends.ssh_connection import host_problem

    if not options.get("host"):
        fail("", "ssh devices need `host` (a hostname, address or ~/.ssh/config alias)")
    elif problem := host_problem(options["host"]):
        fail("host", problem)
    user = options.get("user")
    if user is not None and not (isinstance(user, str) and _USER_RE.fullmatch(user)):
        fail("user", f"expected a user name of letters, digits, '.', '_', '-' or '@' (not starting with '-'), "
                     f"got {user!r}")
    port = options.get("port")
    if port is not None and not (isinstance(port, int) and 0 < port < 65536):
        fail("port", f"expected a port number, got {port!r}")
    if "trust_new_host" in options and not isinstance(options["trust_new_host"], bool):
        fail("trust_new_host", "expected true or false")


TRANSPORT = TransportInfo(
    "ssh",
    machine=lambda device: f"ssh:{device.option('host')}:{device.option('port') or 22}",
    fields={
        "host": "hostname, IP address or ~/.ssh/config alias",
        "port": "SSH port (default 22, or the ssh config's)",
        "user": "login user (default: the ssh config's, else yours)",
        "key": "private key file",
        "python": "the board's Python (default python3)",
        "workdir": "remote working directory (default /tmp/convbench)",
        "trust_new_host": "record an unknown host key on first contact (default false: refuse it)",
        "known_hosts": "known_hosts file (default ~/.ssh/known_hosts)",
        "ssh_config": "ssh config file (default ~/.ssh/config)",
        "connect_timeout": "seconds to wait for the connection (default 10)",
    },
    open=lambda device: SshTransport.from_device(device),
    validate=_validate,
)
