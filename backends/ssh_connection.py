"""One SSH connection to a board: resolve, verify, authenticate, run, copy.

``SshConnection`` wraps paramiko (imported lazily: it is the ``ssh`` extra) and
behaves like OpenSSH where it matters:

* ``host`` is resolved through the user's ssh config (HostName, User, Port,
  IdentityFile, ProxyJump, ServerAliveInterval, UserKnownHostsFile); explicit
  ``SshTarget`` fields win over the config.
* Keys only: the given key, the config's IdentityFile, the ssh-agent (and the
  default ``~/.ssh/id_*`` when nothing else is named).  Never a password.
* Host keys are checked against known_hosts.  An unknown host is refused unless
  ``trust_new_host`` is set (then its key is appended to known_hosts); a changed
  key is always refused.
* Remote commands are built with ``shlex.join`` and never re-parsed by a shell
  on the way: hostile file names stay data.  A wall-clock timeout kills the
  remote process group; a dead link raises ``ConnectionLost``.

Every error derives from ``SshError`` and says what to do about it.
"""

from __future__ import annotations

import contextlib
import getpass
import math
import os
import posixpath
import re
import select
import shlex
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.runner import file_sha256

DEFAULT_ALIVE_INTERVAL = 15.0
DEFAULT_ALIVE_COUNT_MAX = 3
_PID_MARK = "__convbench_pid__"
_KILL_MARGIN_S = 5  # the remote `timeout` backstop fires this long after the local deadline
_CHUNK = 65536


# --------------------------------------------------------------------------- errors


class SshError(RuntimeError):
    """Base of every error raised by this module."""


class SshConfigError(SshError):
    """The target or the ssh config cannot be used as written."""


class HostUnreachable(SshError):
    """No SSH server could be reached at the resolved address."""


class AuthenticationFailed(SshError):
    """The server refused every key offered."""


class HostKeyUnknown(SshError):
    """The host is not in known_hosts and trust_new_host is not set."""

    def __init__(self, host: str, port: int, key_type: str, fingerprint: str, known_hosts: str):
        self.host, self.port, self.key_type, self.fingerprint = host, port, key_type, fingerprint
        self.known_hosts = known_hosts
        super().__init__(
            f"unknown host key for {host} port {port}: {key_type} {fingerprint} is not in {known_hosts}. "
            f"If this fingerprint is the board's (check with "
            f"`ssh-keygen -lf /etc/ssh/ssh_host_{_key_file_kind(key_type)}_key.pub` on the board), "
            f"set `trust_new_host: true` for this device in devices.yaml to record it, "
            f"or connect once with `ssh -p {port} {host}` and accept it."
        )


class HostKeyChanged(SshError):
    """The host presented a key different from the one in known_hosts (always refused)."""

    def __init__(self, host: str, port: int, old_fingerprint: str, new_fingerprint: str, known_hosts: str):
        self.host, self.port = host, port
        self.old_fingerprint, self.new_fingerprint = old_fingerprint, new_fingerprint
        self.known_hosts = known_hosts
        name = host if port == 22 else f"[{host}]:{port}"
        super().__init__(
            f"HOST KEY CHANGED for {host} port {port}: known_hosts ({known_hosts}) has {old_fingerprint}, "
            f"the server presented {new_fingerprint}. This is refused, whatever trust_new_host says: it may be a "
            f"reinstalled board or someone intercepting the connection. If the board was reinstalled, remove the "
            f"old entry with `ssh-keygen -R '{name}' -f {known_hosts}` and connect again."
        )


class RemoteTimeout(SshError):
    """The remote command ran longer than its timeout; it was killed."""

    def __init__(self, argv: list[str], timeout: float, stdout: bytes, stderr: bytes, killed: bool):
        self.argv, self.timeout, self.stdout, self.stderr, self.killed = argv, timeout, stdout, stderr, killed
        how = "the remote process group was killed" if killed else "killing the remote process could not be confirmed"
        super().__init__(f"remote command timed out after {timeout:g}s and {how}: {shlex.join(argv)[:200]}")


class ConnectionLost(SshError):
    """The connection dropped (board rebooted, crashed, network gone) while in use."""


def _key_file_kind(key_type: str) -> str:
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(key_type, "ecdsa")


# --------------------------------------------------------------------------- target


@dataclass(frozen=True)
class SshTarget:
    """How to reach one board; ``None`` fields come from the ssh config, then defaults."""

    host: str
    port: int | None = None
    user: str | None = None
    key: str | None = None  # private key path
    known_hosts: str | None = None  # default: the config's UserKnownHostsFile, then ~/.ssh/known_hosts
    trust_new_host: bool = False
    connect_timeout: float = 10
    ssh_config: str | None = None  # default ~/.ssh/config
    alive_interval: float | None = None  # silence before a liveness probe; config ServerAliveInterval, then 15
    alive_count_max: int | None = None  # unanswered probe intervals before ConnectionLost


@dataclass(frozen=True)
class ResolvedHop:
    """One SSH server on the way, with everything resolved."""

    alias: str
    hostname: str
    port: int
    user: str
    keys: tuple[str, ...]  # explicit or IdentityFile paths; empty: agent and default keys

    @property
    def label(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


@dataclass(frozen=True)
class Resolved:
    target: ResolvedHop
    jumps: tuple[ResolvedHop, ...]
    known_hosts: str
    alive_interval: float
    alive_count_max: int


# A hostname (RFC 1123 labels, plus '_' which ssh_config aliases often use) or an alias of the
# same characters.  No whitespace, shell metacharacters or '%': the host is substituted into
# ssh_config tokens (``%h`` in ``Match exec`` runs a local shell, OpenSSH CVE-2023-51385).
_HOST_NAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?")


def host_problem(host: Any) -> str | None:
    """Why ``host`` is not a hostname, an IP literal or an ssh_config alias; None when it is one."""
    import ipaddress

    if not isinstance(host, str) or not host:
        return f"expected a hostname, an IP address or an ~/.ssh/config alias, got {host!r}"
    if "%" not in host:
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            return None
    if _HOST_NAME_RE.fullmatch(host) and ".." not in host:
        return None
    return (f"{host!r} is not a hostname, an IP address or an ~/.ssh/config alias: those have only letters, "
            "digits, '.', '-' and '_' (at most 253, not starting with '-' or '.'; no spaces, shell characters or "
            "'%'), or are an IPv4/IPv6 address (without brackets)")


def _load_config(path: str | None) -> Any:
    import paramiko

    cfg_path = Path(path).expanduser() if path else Path("~/.ssh/config").expanduser()
    if not cfg_path.exists():
        if path:
            raise SshConfigError(f"ssh config {cfg_path} does not exist")
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(cfg_path))
    except Exception as exc:  # a parse error must name the file
        raise SshConfigError(f"cannot parse ssh config {cfg_path}: {exc}") from exc


def _parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` or ``ssh://[user@]host[:port]``; IPv6 in brackets."""
    spec = spec.strip()
    if spec.startswith("ssh://"):
        spec = spec[len("ssh://") :].rstrip("/")
    user = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
    port = None
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", spec)
    if m:
        host, port_s = m.group(1), m.group(2)
    elif spec.count(":") == 1:
        host, port_s = spec.split(":")
    else:
        host, port_s = spec, None
    if port_s:
        port = int(port_s)
    if not host:
        raise SshConfigError(f"invalid ProxyJump entry {spec!r}: expected [user@]host[:port]")
    return user, host, port


def _resolve_hop(cfg: Any, alias: str, user: str | None, port: int | None, key: str | None) -> tuple[ResolvedHop, dict]:
    entry = cfg.lookup(alias)
    hostname = entry.get("hostname", alias)
    try:
        resolved_port = int(port if port is not None else entry.get("port", 22))
    except ValueError as exc:
        raise SshConfigError(f"invalid Port for {alias} in ssh config: {entry.get('port')!r}") from exc
    resolved_user = user or entry.get("user") or getpass.getuser()
    if key:
        key_path = os.path.expanduser(key)
        if not os.path.exists(key_path):
            raise SshConfigError(f"private key {key_path} (for {alias}) does not exist")
        keys: tuple[str, ...] = (key_path,)
    else:
        # Like OpenSSH, IdentityFiles that do not exist are skipped silently.
        keys = tuple(
            p for p in (os.path.expanduser(k) for k in entry.get("identityfile", [])) if os.path.exists(p)
        )
    return ResolvedHop(alias, hostname, resolved_port, resolved_user, keys), entry


def resolve_target(target: SshTarget) -> Resolved:
    """Apply the ssh config to a target, explicit fields first."""
    problem = host_problem(target.host)
    if problem:  # checked before the ssh config sees it: its Match exec would put it in a shell command
        raise SshConfigError(f"ssh host: {problem}")
    cfg = _load_config(target.ssh_config)
    hop, entry = _resolve_hop(cfg, target.host, target.user, target.port, target.key)
    jumps: list[ResolvedHop] = []
    proxyjump = entry.get("proxyjump")
    if proxyjump and proxyjump.lower() != "none":
        for spec in proxyjump.split(","):
            juser, jhost, jport = _parse_jump(spec)
            jhop, _ = _resolve_hop(cfg, jhost, juser, jport, None)
            jumps.append(jhop)
    if entry.get("proxycommand") and not jumps:
        raise SshConfigError(
            f"{target.host} uses ProxyCommand in the ssh config, which convbench does not run; use ProxyJump"
        )
    known = target.known_hosts
    if known is None:
        files = entry.get("userknownhostsfile", "").split()
        known = files[0] if files else "~/.ssh/known_hosts"
    alive = target.alive_interval
    count = target.alive_count_max
    try:
        if alive is None:
            alive = float(entry.get("serveraliveinterval", 0)) or DEFAULT_ALIVE_INTERVAL
        if count is None:
            count = int(entry.get("serveralivecountmax", DEFAULT_ALIVE_COUNT_MAX))
    except ValueError as exc:
        raise SshConfigError(f"invalid ServerAlive* value for {target.host} in the ssh config: {exc}") from exc
    return Resolved(hop, tuple(jumps), os.path.expanduser(known), float(alive), max(1, int(count)))


# --------------------------------------------------------------------------- host keys


def known_hosts_name(hostname: str, port: int) -> str:
    return hostname if port == 22 else f"[{hostname}]:{port}"


def _make_policy(known_hosts: str, trust_new_host: bool) -> Any:
    import paramiko

    class _Policy(paramiko.MissingHostKeyPolicy):
        """Refuse unknown hosts, or record them in known_hosts when trusted explicitly."""

        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            m = re.fullmatch(r"\[(.+)\]:(\d+)", hostname)
            host, port = (m.group(1), int(m.group(2))) if m else (hostname, 22)
            if not trust_new_host:
                raise HostKeyUnknown(host, port, key.get_name(), key.fingerprint, known_hosts)
            line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
            path = Path(known_hosts)
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                needs_newline = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(("\n" if needs_newline else "") + line)
            except OSError as exc:
                raise SshError(f"cannot record the host key of {hostname} in {known_hosts}: {exc}") from exc
            client.get_host_keys().add(hostname, key.get_name(), key)

    return _Policy()


# --------------------------------------------------------------------------- connection


class SshConnection:
    """A live connection to one target (and its jump hosts).

    Connects lazily on first use (or explicitly with ``connect()``); after a
    ``ConnectionLost`` the next call reconnects.  Not meant for concurrent use
    from several threads.
    """

    def __init__(self, target: SshTarget):
        self.target = target
        self.resolved = resolve_target(target)
        self._clients: list[Any] = []  # jump clients first, the target's last
        self._sftp: Any = None
        self._has_timeout: bool | None = None
        self._probe_lock = threading.Lock()

    # -- lifecycle

    def __enter__(self) -> SshConnection:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        t = self._transport(required=False)
        return t is not None and t.is_active()

    def connect(self) -> SshConnection:
        if self.connected:
            return self
        self.close()
        r = self.resolved
        sock: Any = None
        try:
            prev: ResolvedHop | None = None
            for hop in (*r.jumps, r.target):
                sock = self._open_sock(hop, prev)
                self._clients.append(self._handshake(hop, sock))
                sock, prev = None, hop
        except BaseException:
            if sock is not None:
                with contextlib.suppress(Exception):
                    sock.close()
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
            self._sftp = None
        for client in reversed(self._clients):
            with contextlib.suppress(Exception):
                client.close()
        self._clients = []
        self._has_timeout = None

    def _via(self) -> str:
        return f" via {', '.join(h.label for h in self.resolved.jumps)}" if self.resolved.jumps else ""

    def _open_sock(self, hop: ResolvedHop, prev: ResolvedHop | None) -> Any:
        import paramiko

        timeout = self.target.connect_timeout
        if prev is None:
            try:
                return socket.create_connection((hop.hostname, hop.port), timeout=timeout)
            except OSError as exc:
                raise HostUnreachable(
                    f"cannot reach {hop.hostname} port {hop.port} (host {hop.alias!r}): {exc}. Check that the board "
                    f"is powered and on the network, and its HostName/Port in the ssh config or devices.yaml"
                ) from exc
        transport = self._clients[-1].get_transport()
        try:
            return transport.open_channel(
                "direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0), timeout=timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostUnreachable(
                f"jump host {prev.label} could not reach {hop.hostname} port {hop.port} (host {hop.alias!r}): "
                f"{exc or type(exc).__name__}. Check the HostName/Port as seen from the jump host, and that the "
                f"jump host allows TCP forwarding"
            ) from exc

    def _handshake(self, hop: ResolvedHop, sock: Any) -> Any:
        import paramiko

        client = paramiko.SSHClient()
        known = self.resolved.known_hosts
        if os.path.exists(known):
            try:
                client.load_system_host_keys(known)
            except (OSError, paramiko.SSHException) as exc:
                raise SshConfigError(f"cannot read known_hosts file {known}: {exc}") from exc
        client.set_missing_host_key_policy(_make_policy(known, self.target.trust_new_host))
        timeout = self.target.connect_timeout
        try:
            client.connect(
                hop.hostname,
                port=hop.port,
                username=hop.user,
                sock=sock,
                key_filename=list(hop.keys) or None,
                allow_agent=True,
                look_for_keys=not hop.keys,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
            )
        except SshError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyChanged(
                hop.hostname, hop.port, exc.expected_key.fingerprint, exc.key.fingerprint, known
            ) from exc
        except paramiko.PasswordRequiredException as exc:
            client.close()
            raise AuthenticationFailed(
                f"the key for {hop.label} is passphrase-protected ({', '.join(hop.keys)}): convbench never asks "
                f"for passphrases; load it into ssh-agent with `ssh-add` first"
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            offered = ", ".join(hop.keys) if hop.keys else "ssh-agent and ~/.ssh/id_* keys"
            raise AuthenticationFailed(
                f"{hop.label} refused key authentication for user {hop.user!r} (offered: {offered}): {exc}. "
                f"Install the public key on the board (`ssh-copy-id -i KEY.pub -p {hop.port} "
                f"{hop.user}@{hop.hostname}`) or set `user`/`key` for this device"
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise HostUnreachable(
                f"SSH handshake with {hop.label}{self._via()} failed: {exc or type(exc).__name__}. "
                f"Is an SSH server listening there?"
            ) from exc
        transport = client.get_transport()
        transport.set_keepalive(max(1, int(self.resolved.alive_interval)))
        _install_exit_signal_handler(transport)
        return client

    def _transport(self, required: bool = True) -> Any:
        t = self._clients[-1].get_transport() if self._clients else None
        if required and (t is None or not t.is_active()):
            self.connect()
            t = self._clients[-1].get_transport()
        return t

    def _lost(self, what: str, exc: BaseException | None = None) -> ConnectionLost:
        hop = self.resolved.target
        self.close()
        detail = f": {exc}" if exc and str(exc) else ""
        return ConnectionLost(
            f"connection to {hop.label}{self._via()} lost while {what}{detail}. The board may have rebooted, "
            f"crashed or dropped off the network; check it is up (`ssh -p {hop.port} {hop.user}@{hop.hostname}`)"
        )

    # -- liveness

    def _start_probe(self, transport: Any) -> threading.Event:
        """Ask the server for a reply in the background; the event is set when one arrives."""
        answered = threading.Event()

        def probe() -> None:
            with self._probe_lock:
                with contextlib.suppress(Exception):
                    transport.global_request("keepalive@openssh.com", wait=True)
                if transport.is_active():
                    answered.set()

        threading.Thread(target=probe, name="ssh-alive-probe", daemon=True).start()
        return answered

    # -- commands

    def _open_session(self, what: str) -> Any:
        import paramiko

        transport = self._transport()
        try:
            return transport.open_session(timeout=self.target.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost(what, exc) from exc

    def _remote_has_timeout(self) -> bool:
        if self._has_timeout is None:
            code, out, _ = self._run_raw("command -v timeout", self.target.connect_timeout + 10)
            self._has_timeout = code == 0 and bool(out.strip())
        return self._has_timeout

    def _run_raw(self, command: str, timeout: float) -> tuple[int, bytes, bytes]:
        """Run a fixed, trusted command string (no user data), with a plain deadline."""
        chan = self._open_session("starting a helper command")
        try:
            chan.exec_command(command)
            chan.shutdown_write()
            deadline = time.monotonic() + timeout
            out, err = bytearray(), bytearray()
            while not (chan.exit_status_ready() and chan.eof_received) and not chan.closed:
                if time.monotonic() > deadline:
                    raise SshError(
                        f"helper command did not finish within {timeout:g}s on {self.resolved.target.label}: "
                        f"{command}. Is the login shell's startup (e.g. ~/.bashrc) blocking non-interactive "
                        f"sessions on the board?"
                    )
                select.select([chan], [], [], 0.2)
                while chan.recv_ready():
                    out += chan.recv(_CHUNK)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(_CHUNK)
            while chan.recv_ready():
                out += chan.recv(_CHUNK)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(_CHUNK)
            if not _has_exit_status(chan):
                if _transport_died(chan.get_transport()):
                    raise self._lost(f"running {command!r}")
                raise SshError(f"helper command ended without an exit status: {command}")
            return chan.recv_exit_status(), bytes(out), bytes(err)
        finally:
            chan.close()

    def run(
        self,
        argv: list[str],
        timeout: float,
        stdin: bytes | None = None,
        on_stdout_line: Callable[[str], None] | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run ``argv`` on the target; return ``(exit_code, stdout, stderr)``.

        Every argument is quoted; nothing in ``argv`` is interpreted by a shell.
        A process killed by a signal gives ``128 + signum``.  ``on_stdout_line``
        receives each stdout line (decoded, without its newline) as it arrives.
        Raises ``RemoteTimeout`` after ``timeout`` seconds (the remote process
        group is killed), ``ConnectionLost`` if the link dies.
        """
        import paramiko

        if not argv:
            raise ValueError("argv must not be empty")
        argv = [os.fspath(a) for a in argv]
        if self._remote_has_timeout():
            backstop = math.ceil(timeout) + _KILL_MARGIN_S
            script = f'echo "{_PID_MARK} $$" >&2; exec timeout -s KILL {backstop} "$@"'
        else:
            script = f'echo "{_PID_MARK} $$" >&2; exec "$@"'
        command = shlex.join(["sh", "-c", script, "sh", *argv])

        chan = self._open_session(f"starting {argv[0]}")
        out, err, line_buf = bytearray(), bytearray(), bytearray()
        pid: int | None = None
        pending = memoryview(stdin) if stdin else None
        alive_interval, alive_max = self.resolved.alive_interval, self.resolved.alive_count_max
        transport = chan.get_transport()
        try:
            try:
                chan.exec_command(command)
                if pending is None:
                    chan.shutdown_write()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise self._lost(f"starting {argv[0]}", exc) from exc
            start = last_heard = time.monotonic()
            deadline = start + timeout
            probe: threading.Event | None = None
            probe_started = 0.0
            while True:
                heard = False
                while chan.recv_ready():
                    data = chan.recv(_CHUNK)
                    heard = True
                    out += data
                    if on_stdout_line is not None:
                        line_buf += data
                        *lines, rest = line_buf.split(b"\n")
                        line_buf = bytearray(rest)
                        for line in lines:
                            on_stdout_line(line.decode("utf-8", "replace"))
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(_CHUNK)
                    heard = True
                if pid is None:  # the wrapper's pid line, maybe after noise from the login shell
                    pid = _take_pid_line(err)
                if pending is not None and chan.send_ready():
                    try:
                        n = chan.send(pending[:_CHUNK])
                    except OSError:  # the remote side stopped reading: drop the rest
                        n = len(pending)
                    pending = pending[n:]
                    if not pending:
                        pending = None
                        with contextlib.suppress(OSError, EOFError):
                            chan.shutdown_write()
                done = chan.closed or (chan.exit_status_ready() and chan.eof_received)
                if done and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                now = time.monotonic()
                if not transport.is_active():
                    raise self._lost(f"running {argv[0]}")
                if now >= deadline:
                    killed = self._kill_remote(pid)
                    raise RemoteTimeout(argv, timeout, bytes(out), bytes(err), killed)
                if heard or (probe is not None and probe.is_set()):
                    last_heard, probe = now, None
                elif probe is None and now - last_heard >= alive_interval:
                    probe, probe_started = self._start_probe(transport), now
                elif probe is not None and now - probe_started >= alive_interval * alive_max:
                    raise self._lost(
                        f"running {argv[0]} (no answer to keepalive probes for "
                        f"{alive_interval * alive_max:g}s)"
                    )
                wait = min(0.2, max(0.0, deadline - now))
                if pending is not None and chan.send_ready():
                    wait = 0
                select.select([chan], [], [], wait)
        finally:
            chan.close()
        if on_stdout_line is not None and line_buf:
            on_stdout_line(line_buf.decode("utf-8", "replace"))
        if pid is None and (i := err.find(_PID_MARK.encode())) >= 0:  # no newline came: strip it anyway
            del err[i:]
        if not _has_exit_status(chan):
            if _transport_died(transport):
                raise self._lost(f"running {argv[0]}")
            raise SshError(f"remote command ended without an exit status: {shlex.join(argv)[:200]}")
        return chan.recv_exit_status(), bytes(out), bytes(err)

    def _kill_remote(self, pid: int | None) -> bool:
        """SIGKILL the remote process group of a timed-out command; True if confirmed."""
        if not pid or pid <= 1:
            return False
        try:
            code, _, _ = self._run_raw(
                f"kill -KILL -- -{pid} 2>/dev/null || kill -KILL {pid} 2>/dev/null; true",
                self.target.connect_timeout,
            )
        except SshError:
            return False
        return code == 0

    # -- files

    def _sftp_client(self) -> Any:
        if self._sftp is None or not self.connected:
            import paramiko

            self._transport()
            try:
                self._sftp = self._clients[-1].open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise SshError(
                    f"cannot open SFTP on {self.resolved.target.label}: {exc}. The server needs an sftp "
                    f"Subsystem (Debian/Raspberry Pi OS have it by default)"
                ) from exc
        return self._sftp

    def _sftp_call(self, what: str, fn: Callable[[], Any]) -> Any:
        import paramiko

        try:
            return fn()
        except (EOFError, paramiko.SSHException) as exc:
            if not self.connected:
                raise self._lost(what, exc) from exc
            raise SshError(f"{what} failed: {exc}") from exc
        except OSError as exc:
            if not self.connected:
                raise self._lost(what, exc) from exc
            raise SshError(f"{what} failed on {self.resolved.target.label}: {exc}") from exc

    def remote_sha256(self, remote: str) -> str | None:
        """sha256 of a remote file, or None if it does not exist."""
        code, out, _ = self.run(["sha256sum", "--", remote], timeout=120)
        if code == 127:  # no coreutils: ask Python
            snippet = (
                "import hashlib,sys\n"
                "try: f=open(sys.argv[1],'rb')\n"
                "except OSError: sys.exit(1)\n"
                "h=hashlib.sha256()\n"
                "for b in iter(lambda: f.read(1<<20), b''): h.update(b)\n"
                "print(h.hexdigest())"
            )
            code, out, _ = self.run(["python3", "-c", snippet, remote], timeout=120)
        if code != 0:
            return None
        m = re.match(rb"\\?([0-9a-f]{64})", out)
        return m.group(1).decode() if m else None

    def _stat(self, remote: str) -> Any:
        """SFTP attributes of ``remote``, or None if it does not exist."""
        sftp = self._sftp_client()
        try:
            return self._sftp_call(f"checking remote {remote!r}", lambda: sftp.stat(remote))
        except SshError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                return None
            raise

    def mkdir_p(self, remote_dir: str) -> None:
        sftp = self._sftp_client()
        parts: list[str] = []
        path = posixpath.normpath(remote_dir)
        while path not in ("", ".", "/"):
            parts.append(path)
            path = posixpath.dirname(path)
        for p in reversed(parts):
            if self._stat(p) is None:
                self._sftp_call(f"creating remote directory {p!r}", lambda p=p: sftp.mkdir(p))

    def put(self, local: str | os.PathLike, remote: str) -> bool:
        """Upload ``local`` to ``remote`` (parents created); False if it was already there."""
        local_path = Path(local)
        st = self._stat(remote)
        same_size = st is not None and st.st_size == local_path.stat().st_size
        if same_size and self.remote_sha256(remote) == file_sha256(local_path):
            return False
        parent = posixpath.dirname(remote)
        if parent:
            self.mkdir_p(parent)
        sftp = self._sftp_client()
        tmp = posixpath.join(parent, f".convbench-upload-{uuid.uuid4().hex[:12]}.part")
        what = f"uploading {local_path} to {remote!r}"
        try:
            self._sftp_call(what, lambda: sftp.put(str(local_path), tmp))
            self._sftp_call(what, lambda: sftp.chmod(tmp, local_path.stat().st_mode & 0o777))
            try:
                sftp.posix_rename(tmp, remote)
            except OSError:  # no posix-rename extension: not atomic, but correct
                with contextlib.suppress(OSError):
                    sftp.remove(remote)
                self._sftp_call(what, lambda: sftp.rename(tmp, remote))
        except BaseException:
            if self.connected:
                with contextlib.suppress(Exception):
                    sftp.remove(tmp)
            raise
        return True

    def get(self, remote: str, local: str | os.PathLike) -> None:
        """Download ``remote`` to ``local`` (parents created, replaced atomically)."""
        local_path = Path(local)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = local_path.with_name(f".convbench-download-{uuid.uuid4().hex[:12]}.part")
        sftp = self._sftp_client()
        try:
            self._sftp_call(f"downloading {remote!r}", lambda: sftp.get(remote, str(tmp)))
            os.replace(tmp, local_path)
        finally:
            tmp.unlink(missing_ok=True)

    def remove_tree(self, remote_dir: str) -> None:
        """``rm -rf`` a remote directory; refuses ``/``, ``.``, the home directory and empty paths."""
        norm = posixpath.normpath(remote_dir) if remote_dir else ""
        if norm in ("", ".", "/", "..", "~") or norm.startswith("../") or re.fullmatch(r"/+[^/]*", norm):
            raise SshError(f"refusing to remove remote directory {remote_dir!r}: too close to the root or home")
        code, _, err = self.run(["rm", "-rf", "--", remote_dir], timeout=300)
        if code != 0:
            raise SshError(f"cannot remove remote {remote_dir!r}: {err.decode(errors='replace').strip()}")


# --------------------------------------------------------------------------- paramiko hook


def _take_pid_line(err: bytearray) -> int | None:
    """Remove the wrapper's ``__convbench_pid__ N`` line from stderr and return N."""
    i = err.find(_PID_MARK.encode())
    if i < 0 or (j := err.find(b"\n", i)) < 0:
        return None
    try:
        pid = int(err[i:j].split()[1])
    except (IndexError, ValueError):
        pid = -1
    del err[i : j + 1]
    return pid


def _transport_died(transport: Any, grace: float = 2.0) -> bool:
    """paramiko closes the channels of a dead transport just before marking it inactive."""
    deadline = time.monotonic() + grace
    while transport.is_active() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not transport.is_active()


def _has_exit_status(chan: Any) -> bool:
    """paramiko also sets the status event when a channel dies: -1 then means "no status"."""
    return chan.exit_status_ready() and chan.exit_status >= 0


def _install_exit_signal_handler(transport: Any) -> None:
    """Let channels report ``exit-signal`` (killed by SIGKILL/SIGSEGV...) as 128 + signum.

    paramiko only handles ``exit-status``; without this, a runner killed by the
    OOM killer would look like a lost connection.
    """
    from paramiko.channel import Channel
    from paramiko.common import MSG_CHANNEL_REQUEST

    table = getattr(transport, "_channel_handler_table", None)
    if not isinstance(table, dict) or MSG_CHANNEL_REQUEST not in table:
        return

    def handle_request(chan: Any, m: Any) -> None:
        pos = m.packet.tell()
        if m.get_text() == "exit-signal":
            m.get_boolean()  # want_reply (always false)
            name = m.get_text()
            try:
                num = int(signal.Signals[f"SIG{name}"])
            except KeyError:
                num = 0
            chan.exit_signal = name
            chan.exit_status = 128 + num
            chan.status_event.set()
            return
        m.packet.seek(pos)
        Channel._handle_request(chan, m)

    transport._channel_handler_table = {**table, MSG_CHANNEL_REQUEST: handle_request}
