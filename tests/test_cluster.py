"""`harness run --cluster` on a real Dask scheduler and two real `harness worker` processes.

Worker A owns an SSH board (a real sshd on 127.0.0.1), worker B an Android phone (the
loopback adb device, driven by the real adb client and server); every process listens on
127.0.0.1 only.  The controller runs in this process through click's CliRunner, exactly as
`harness run` would.  Without sshd, adb, bubblewrap or distributed the tests skip, or fail
when CI is set.
"""
# ruff: noqa: F811 - the adb fixtures are imported here, pytest passes them back as arguments

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from harness.cli import main
from harness.lab.adb_device import LoopbackAdbDevice
from harness.lab.sshd import SshdServer
from harness.store import read_run
from tests.conftest import ROOT, require
from tests.rigs.adb_fixtures import STANDIN, AdbServer, adb_server, connect, require_sandbox  # noqa: F401
from tests.rigs.ssh_fixtures import require_sshd

pytestmark = [pytest.mark.rig, pytest.mark.slow]

BOARD, PHONE = "board-a", "phone-b"
PAIR = "conv-standard-M16-N32-k3-x14-s1,conv-separable-M16-N32-k3-x14-s1"
TRIO = PAIR + ",conv-depthwise-M16-N16-k3-x14-s1"
QUICK = ["--max-time", "0.3", "--min-time", "0.05"]
READY = re.compile(r"^worker (\S+) ready on ")


def require_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        require(False, "Dask distributed is missing: pip install -e '.[cluster]'")


# ------------------------------------------------------------------ processes


@dataclass
class Proc:
    """A child process whose output goes to a file (never a pipe that could fill up)."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: re.Pattern, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.text().splitlines():
                if match := pattern.search(line):
                    return match
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"{self.name} did not get ready (exit {self.popen.poll()}); its output:\n{self.text()[-4000:]}",
                    pytrace=False)

    def kill(self) -> None:
        """SIGKILL: the process dies without a word to anyone (a crash, an unplugged host)."""
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()


def start_scheduler(workdir: Path, *tls: str, host: str = "127.0.0.1") -> tuple[Proc, str]:
    scheduler_file = workdir / "scheduler.json"
    proc = Proc("scheduler", [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", host,
                              "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file), *tls],
                workdir / "scheduler.log").start()
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() and time.monotonic() < deadline and proc.popen.poll() is None:
        time.sleep(0.1)
    if not scheduler_file.exists():
        proc.stop()
        pytest.fail(f"the Dask scheduler did not start:\n{proc.text()[-3000:]}", pytrace=False)
    time.sleep(0.2)  # written before it is complete on slow disks
    return proc, json.loads(scheduler_file.read_text())["address"]


def start_worker(name: str, scheduler: str, devices_file: Path, devices: str, workdir: Path,
                 *extra: str) -> tuple[Proc, str]:
    proc = Proc(name, [sys.executable, "-m", "harness.cli", "worker", "--scheduler", scheduler, "--devices-file",
                       str(devices_file), "--devices", devices, "--host", "127.0.0.1", "--name", name, *extra],
                workdir / f"{name}.log", env={"CONVBENCH_WORKER_CACHE": str(workdir / f"{name}-cache")}).start()
    return proc, proc.wait_for(READY, timeout=120).group(1)


# ------------------------------------------------------------------ the lab


def ssh_device(name: str, server: SshdServer, workdir: Path) -> dict:
    known_hosts = workdir / f"{name}-known_hosts"
    known_hosts.write_text(server.known_hosts_line)
    (workdir / "ssh_config").write_text("")
    return {"name": name, "transport": "ssh", "host": server.host, "port": server.port, "user": server.user,
            "key": str(server.user_key), "known_hosts": str(known_hosts), "ssh_config": str(workdir / "ssh_config"),
            "python": sys.executable, "workdir": str(workdir / f"{name}-remote"), "backends": ["onnxruntime"]}


@dataclass
class Lab:
    workdir: Path
    devices_file: Path
    scheduler: str
    workers: dict[str, Proc]
    addresses: dict[str, str]  # worker name -> address


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, adb_server: AdbServer) -> Iterator[Lab]:
    require_distributed()
    require_sshd()
    require_sandbox()
    workdir = tmp_path_factory.mktemp("lab")
    board = SshdServer(workdir / "sshd").start()
    phone = LoopbackAdbDevice(workdir / "android").start()
    procs: list[Proc] = []
    try:
        state = connect(adb_server, phone)
        assert state == "device", f"loopback phone is {state!r}"
        ghost = {"name": "ghost", "transport": "ssh", "host": "127.0.0.1", "port": 1, "connect_timeout": 3,
                 "backends": ["onnxruntime"]}
        android = {"name": PHONE, "transport": "adb", "serial": phone.serial, "adb": adb_server.adb,
                   "adb_server_port": adb_server.port, "benchmark_model": str(STANDIN), "backends": ["tflite"],
                   "delegates": ["xnnpack"], "energy": "none"}
        devices_file = workdir / "devices.yaml"
        devices_file.write_text(yaml.safe_dump({"devices": [ssh_device(BOARD, board, workdir), android, ghost]}))
        scheduler, address = start_scheduler(workdir)
        procs.append(scheduler)
        worker_a, address_a = start_worker("worker-a", address, devices_file, f"{BOARD},ghost", workdir)
        procs.append(worker_a)
        worker_b, address_b = start_worker("worker-b", address, devices_file, PHONE, workdir)
        procs.append(worker_b)
        the_lab = Lab(workdir, devices_file, address, {"worker-a": worker_a, "worker-b": worker_b},
                      {"worker-a": address_a, "worker-b": address_b})
        yield the_lab
        procs.extend(p for p in the_lab.workers.values() if p not in procs)  # a restarted worker B
    finally:
        for proc in reversed(procs):
            proc.stop()
        phone.stop()
        adb_server.run("disconnect", phone.serial)
        board.stop()


def run(*args: str) -> tuple[object, float]:
    started = time.monotonic()
    result = CliRunner().invoke(main, ["run", "--repeats", "1", *args])
    return result, time.monotonic() - started


def only_run(results: Path) -> Path:
    (path,) = [p for p in results.iterdir() if p.is_dir()]
    return path


# ------------------------------------------------------------------ tests


def test_workers_advertise_only_usable_devices(lab: Lab) -> None:
    from distributed import Client

    assert "skipping device ghost (ssh): cannot reach 127.0.0.1 port 1" in lab.workers["worker-a"].text()
    with Client(lab.scheduler, set_as_default=False) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    resources = {address: info["resources"] for address, info in workers.items()}
    assert resources == {lab.addresses["worker-a"]: {f"device-{BOARD}": 1},
                         lab.addresses["worker-b"]: {f"device-{PHONE}": 1}}


def test_each_device_runs_on_the_worker_that_owns_it(lab: Lab, tmp_path: Path) -> None:
    devices = ["--devices-file", str(lab.devices_file), "--devices", f"{BOARD},{PHONE}", "--workloads", PAIR, *QUICK]
    cluster_results = tmp_path / "cluster"
    result, cluster_wall = run(*devices, "--cluster", lab.scheduler, "--out", str(cluster_results))
    assert result.exit_code == 0, result.output
    info, records = read_run(only_run(cluster_results))
    assert info["status"] == "complete" and info["cluster"] == lab.scheduler
    assert len(records) == 4 and {r["run_id"] for r in records} == {info["run_id"]}
    owner = {BOARD: lab.addresses["worker-a"], PHONE: lab.addresses["worker-b"]}
    for record in records:
        assert record["status"] == "ok", record.get("error")
        assert record["worker"] == owner[record["device"]], record
    board = [r for r in records if r["device"] == BOARD]
    assert {r["transport"] for r in board} == {"ssh"}
    assert all(r["output_check"]["status"] == "match" for r in board)  # checked on the worker, against PyTorch
    assert {r["transport"] for r in records if r["device"] == PHONE} == {"adb"}
    # Artifacts were exported here once and re-materialised in each worker's cache, keyed by sha256.
    from harness.artifacts import get_artifact

    for worker, fmt in (("worker-a", "onnx"), ("worker-b", "tflite")):
        cached = {p.name for p in (lab.workdir / f"{worker}-cache").iterdir() if not p.name.startswith(".")}
        assert cached == {get_artifact(w, fmt)[0].sha256 for w in PAIR.split(",")}, (worker, cached)

    # The same run in-process, for the wall-time comparison in the closing note.
    local_results = tmp_path / "in-process"
    result, local_wall = run(*devices, "--out", str(local_results))
    assert result.exit_code == 0, result.output
    _, local_records = read_run(only_run(local_results))
    assert len(local_records) == 4 and all(r["status"] == "ok" for r in local_records)
    assert all("worker" not in r for r in local_records)
    timing = {"cluster_s": round(cluster_wall, 2), "in_process_s": round(local_wall, 2),
              "mapping": {r["device"]: r["worker"] for r in records},
              "at": dt.datetime.now(dt.UTC).isoformat()}
    print(f"\ncluster run vs in-process: {json.dumps(timing)}")
    if os.environ.get("CONVBENCH_CLUSTER_TIMING"):
        Path(os.environ["CONVBENCH_CLUSTER_TIMING"]).write_text(json.dumps(timing, indent=2))


@pytest.fixture
def worker_b_restarted(lab: Lab) -> Iterator[None]:
    """The test kills worker B; start a new one afterwards so the lab stays whole for any test after it."""
    yield
    if lab.workers["worker-b"].popen.poll() is not None:
        proc, address = start_worker("worker-b", lab.scheduler, lab.devices_file, PHONE, lab.workdir)
        lab.workers["worker-b"], lab.addresses["worker-b"] = proc, address


def test_a_lost_worker_fails_only_its_jobs(lab: Lab, tmp_path: Path, worker_b_restarted: None) -> None:
    results = tmp_path / "results"
    killed = threading.Event()

    def kill_after_first_phone_record() -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for path in results.glob("*/measurements.jsonl"):
                if any(json.loads(line)["device"] == PHONE for line in path.read_text().splitlines()):
                    lab.workers["worker-b"].kill()
                    killed.set()
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_phone_record, daemon=True)
    killer.start()
    result, _ = run("--devices-file", str(lab.devices_file), "--devices", f"{BOARD},{PHONE}", "--workloads", TRIO,
                    "--min-time", "1", "--max-time", "1", "--target-ci", "0", "--cluster", lab.scheduler,
                    "--out", str(results))
    killer.join(timeout=5)
    assert killed.is_set(), "worker B was never killed: the phone reported nothing"
    assert result.exit_code == 0, result.output
    info, records = read_run(only_run(results))
    assert info["status"] == "complete"
    board = [r for r in records if r["device"] == BOARD]
    phone = [r for r in records if r["device"] == PHONE]
    assert len(board) == 3 and len(phone) == 3
    assert all(r["status"] == "ok" and r["worker"] == lab.addresses["worker-a"] for r in board), board
    assert phone[0]["status"] == "ok" and phone[0]["worker"] == lab.addresses["worker-b"]
    failed = [r for r in phone if r["status"] == "error"]
    assert failed, "the killed worker's remaining jobs must be reported as failed"
    for record in failed:
        assert f"worker {lab.addresses['worker-b']}" in record["error"] and "lost" in record["error"], record
        assert record["worker"] == lab.addresses["worker-b"]


# ------------------------------------------------------------------ TLS and missing owners


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and one certificate for 127.0.0.1 it signed (used by scheduler, worker and controller)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = (builder
                       .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                      critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                             ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, member_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("convbench test CA", ca_key, "convbench test CA", ca_key, True)
    member = cert("127.0.0.1", member_key, "convbench test CA", ca_key, False)
    paths = folder / "ca.pem", folder / "member.pem", folder / "member-key.pem"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(member.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(member_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    for path in paths:
        path.chmod(0o600)
    return paths


def test_tls_cluster_shared_cache_and_a_device_no_worker_owns(tmp_path: Path, monkeypatch) -> None:
    require_distributed()
    import harness.cluster

    ca, cert, key = make_tls(tmp_path)
    tls = ["--tls-ca", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]
    devices_file = tmp_path / "devices.yaml"
    devices_file.write_text(yaml.safe_dump({"devices": [
        {"name": "lab-local", "transport": "local", "backends": ["onnxruntime"]},
        {"name": "nobody", "transport": "local", "backends": ["onnxruntime"]}]}))
    scheduler, address = start_scheduler(tmp_path, "--protocol", "tls", "--tls-ca-file", str(ca), "--tls-cert",
                                         str(cert), "--tls-key", str(key))
    worker = None
    try:
        assert address.startswith("tls://127.0.0.1:")
        worker, worker_address = start_worker("worker-tls", address, devices_file, "lab-local", tmp_path, *tls)
        assert worker_address.startswith("tls://")
        results = tmp_path / "results"
        args = ["--devices-file", str(devices_file), "--workloads", "conv-separable-M16-N32-k3-x14-s1", *QUICK,
                "--out", str(results), "--cluster", address]
        refused, _ = run(*args, "--devices", "lab-local")  # no certificate: refused before anything runs
        assert refused.exit_code == 2 and "--tls-ca" in refused.output and not results.exists()
        monkeypatch.setattr(harness.cluster, "OWNER_WAIT_S", 1.0)
        monkeypatch.setenv("CONVBENCH_SHARED_CACHE", "1")  # same host: the controller's cache paths are valid there
        result, _ = run(*args, "--devices", "lab-local,nobody", *tls)
        assert result.exit_code == 0, result.output
        info, records = read_run(only_run(results))
        assert info["status"] == "complete"
        by_device = {r["device"]: r for r in records}
        assert by_device["lab-local"]["status"] == "ok" and by_device["lab-local"]["worker"] == worker_address
        assert not (tmp_path / "worker-tls-cache").exists()  # paths were shipped, not bytes
        assert by_device["nobody"]["status"] == "error"
        assert "no worker of the cluster" in by_device["nobody"]["error"] and "device-nobody" in \
            by_device["nobody"]["error"]
    finally:
        if worker is not None:
            worker.stop()
        scheduler.stop()
