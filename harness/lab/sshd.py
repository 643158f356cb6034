"""A real OpenSSH server on 127.0.0.1 for tests (no pytest needed).

    server = SshdServer(workdir)      # generates a host key and a user key
    server.start()                    # random free port, waits for the SSH banner
    server.port, server.user, server.user_key, server.known_hosts_line
    server.kill()                     # SIGKILL sshd and every session: the board died
    server.regenerate_host_key(); server.start()   # same port, new identity

Needs Debian's ``openssh-server`` (``/usr/sbin/sshd``) and ``ssh-keygen``.  It
never installs anything: ``sshd_available()`` says whether it can run.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
INSTALL_HINT = "install it with: apt-get update && apt-get install -y openssh-server"


def sshd_available() -> str | None:
    """None if an sshd can be started here, else why not."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing; {INSTALL_HINT}"
    if shutil.which("ssh-keygen") is None:
        return f"ssh-keygen is missing; {INSTALL_HINT}"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(tree.get(p, []))
    return found


class SshdServer:
    """One sshd process with its own config, keys and authorized_keys in ``workdir``."""

    def __init__(self, workdir: str | os.PathLike, user: str | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.user = user or getpass.getuser()
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        self.user_key = self.workdir / "id_ed25519"
        self.authorized_keys = self.workdir / "authorized_keys"
        self.config_path = self.workdir / "sshd_config"
        self.pid_file = self.workdir / "sshd.pid"
        self.log_path = self.workdir / "sshd.log"
        self.proc: subprocess.Popen | None = None
        self._stopped: list[int] = []
        self._keygen(self.user_key)
        self.authorized_keys.write_text(Path(f"{self.user_key}.pub").read_text())
        self._keygen(self.host_key)

    # -- keys

    @staticmethod
    def _keygen(path: Path) -> None:
        for p in (path, Path(f"{path}.pub")):
            p.unlink(missing_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "convbench-test", "-f", str(path)],
            check=True,
            capture_output=True,
        )
        path.chmod(0o600)

    def regenerate_host_key(self) -> None:
        """A new host identity (takes effect at the next start())."""
        self._keygen(self.host_key)

    @property
    def host_key_line(self) -> str:
        """``ssh-ed25519 AAAA...`` of the host key."""
        kind, b64 = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"{kind} {b64}"

    @property
    def host_key_fingerprint(self) -> str:
        """``SHA256:...`` as OpenSSH prints it."""
        out = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{self.host_key}.pub"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return out.split()[1]

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        return f"{self.known_hosts_name} {self.host_key_line}\n"

    # -- lifecycle

    def _write_config(self) -> None:
        root = os.geteuid() == 0
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password" if root else "PermitRootLogin no",
            "AllowTcpForwarding yes",
            "Subsystem sftp internal-sftp",
            "UseDNS no",
            "PrintMotd no",
            "MaxStartups 50",
            "MaxSessions 50",
            "LogLevel VERBOSE",
            "SetEnv SHLVL=1",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> SshdServer:
        """Start sshd (on a new random port the first time, the same port after)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("sshd is already running")
        if reason := sshd_available():
            raise RuntimeError(reason)
        if os.geteuid() == 0:  # privilege separation directory, created by the Debian init script normally
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        fixed_port = self.port is not None
        for _attempt in range(1 if fixed_port else 5):
            if not fixed_port:
                self.port = free_port()
            self._write_config()
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
            try:
                self.proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            finally:
                log.close()
            if self._wait_ready(timeout):
                return self
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None
        raise RuntimeError(f"sshd did not start on port {self.port}; its log:\n{self.log_text()[-3000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    s.settimeout(2)
                    if s.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal_tree(self, sig: int) -> None:
        """Freeze sshd and all its sessions, then send ``sig`` to every one of them."""
        if self.proc is None:
            return
        frozen: set[int] = set()
        while True:  # stopped processes cannot fork: repeat until the tree is stable
            pids = [p for p in process_tree(self.proc.pid) if p not in frozen]
            if not pids:
                break
            for p in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGSTOP)
                frozen.add(p)
        for p in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
            if sig != signal.SIGKILL:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGCONT)

    def session_processes(self) -> list[int]:
        """Processes started through this server, even orphaned ones (by their SSH_CONNECTION)."""
        if self.port is None:
            return []
        suffix = f" {self.host} {self.port}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(v.startswith(b"SSH_CONNECTION=") and v.endswith(suffix) for v in env):
                found.append(int(entry))
        return found

    def _kill_sessions(self) -> None:
        for p in self.session_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL sshd and every session it started, as if the board lost power."""
        self._signal_tree(signal.SIGKILL)
        self._kill_sessions()
        self._reap()

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate sshd and its sessions (open connections are closed)."""
        if self.proc is None:
            return
        self.thaw()
        self._signal_tree(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal_tree(signal.SIGKILL)
        self._kill_sessions()  # commands whose connection already ended live on without a parent sshd
        self._reap()

    def freeze(self) -> None:
        """SIGSTOP sshd and its sessions: the board hangs, TCP stays open, nothing answers."""
        if self.proc is not None:
            self._stopped = process_tree(self.proc.pid)
            for p in self._stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGSTOP)

    def thaw(self) -> None:
        for p in self._stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)
        self._stopped = []

    def _reap(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            self.proc = None
        self.pid_file.unlink(missing_ok=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> SshdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
