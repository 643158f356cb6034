"""One SSH connection to a board: resolve, verify, authenticate, run, copy.

``SshConnection`` wraps paramiko (imported lazily: it is the ``ssh`` extra) and
behaves like OpenSSH where it matters:

* ``host`` is resolved through the user's ssh config (HostName, User, Port,
  IdentityFile, ProxyJump, ProxyCommand, ServerAliveInterval, UserKnownHostsFile),
  with its ``Include`` files; explicit ``SshTarget`` fields win over the config.
  A ProxyCommand runs as in OpenSSH, through the local shell, with %h %n %p %r
  values that cannot contain shell characters.
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
import glob
import math
import os
import posixpath
import re
import select
import shlex
import signal
import socket
import subprocess
import tempfile
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
    proxy_command: str | None = None  # ProxyCommand, tokens expanded; only for the first hop of the chain

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


# --------------------------------------------------------------------------- ssh config

_INCLUDE_MAX_DEPTH = 16  # OpenSSH's READCONF_MAX_DEPTH
_SETTING_RE = re.compile(r"(\w+)(?:\s*=\s*|\s+)(.+)")  # paramiko's SSHConfig.SETTINGS_REGEX
_RAW = "\ue000"  # stands for a ProxyCommand/ProxyJump value, kept away from paramiko's token expansion
_INERT_RE = re.compile(r"[A-Za-z0-9_.:@+-]*")  # token values no shell interprets


@dataclass(frozen=True)
class _Config:
    """paramiko's parsed config, plus the ProxyCommand/ProxyJump values as written, in file order."""

    parsed: Any
    raw: tuple[str, ...]

    def lookup(self, alias: str) -> dict:
        return self.parsed.lookup(alias)

    def proxy(self, entry: dict) -> tuple[str, str] | None:
        """The first of ProxyJump and ProxyCommand that applies (OpenSSH ignores the later one)."""
        found = sorted((int(entry[k][1:]), k) for k in ("proxyjump", "proxycommand")
                       if str(entry.get(k, "")).startswith(_RAW))
        return (found[0][1], self.raw[found[0][0]]) if found else None


def _load_config(path: str | None) -> _Config:
    import paramiko

    cfg_path = Path(path).expanduser() if path else Path("~/.ssh/config").expanduser()
    if not cfg_path.exists():
        if path:
            raise SshConfigError(f"ssh config {cfg_path} does not exist")
        return _Config(paramiko.SSHConfig(), ())
    lines: list[str] = []
    raw: list[str] = []
    _inline(cfg_path, None, "Host *", 0, lines, raw)
    try:
        return _Config(paramiko.SSHConfig.from_text("\n".join(lines)), tuple(raw))
    except Exception as exc:  # a parse error must name the file
        raise SshConfigError(f"cannot parse ssh config {cfg_path}: {exc}") from exc


def _inline(path: Path, guard: list[tuple[str, ...]] | None, header: str, depth: int, out: list[str],
            raw: list[str]) -> bool:
    """Append the settings of ``path`` to ``out``, with its Includes expanded in place.

    paramiko has no ``Include``.  As in OpenSSH, an Include inside a Host/Match block is
    conditional: ``guard`` is that block's condition (None at top level) and ``header`` its
    opening line.  A Host/Match line of an included file becomes a Match on both conditions,
    and ``header`` is written again after the file, so the lines after the Include stay in
    their block.  Returns whether a Host/Match line was written.
    """
    import paramiko

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SshConfigError(f"cannot read ssh config {path}: {exc}") from exc
    current, wrote = guard, False
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        m = _SETTING_RE.fullmatch(line)
        if not m:
            raise SshConfigError(f"{where}: cannot parse {line!r} in the ssh config")
        key, value = m.group(1).lower(), m.group(2)
        if key in ("host", "match"):
            criteria = _criteria(key, value, where)
            if guard is None:
                current, header = criteria, line
            else:
                current = [c for c in guard + criteria if c[0] != "all"] or [("all",)]
                header = "Match " + shlex.join([word for c in current for word in c])
            try:
                paramiko.SSHConfig.from_text(header)
            except Exception as exc:
                raise SshConfigError(f"{where}: cannot parse {line!r} in the ssh config: {exc}") from exc
            out.append(header)
            wrote = True
        elif key == "include":
            for included in _include_paths(value, depth, where):
                if _inline(included, current, header, depth + 1, out, raw):
                    out.append(header)
                    wrote = True
        elif key in ("proxycommand", "proxyjump"):
            out.append(f"{key} {_RAW}{len(raw)}")
            raw.append(value)
        else:
            out.append(line)
    return wrote


def _criteria(key: str, value: str, where: str) -> list[tuple[str, ...]]:
    """A Host or Match line as Match criteria: ``[("originalhost", "a,!b"), ("exec", "cmd"), ("all",)]``."""
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise SshConfigError(f"{where}: cannot parse {key} {value!r} in the ssh config: {exc}") from exc
    if key == "host":  # paramiko matches Host patterns and `Match originalhost` patterns alike
        return [("originalhost", ",".join(words))]
    criteria: list[tuple[str, ...]] = []
    while words:
        kind = words.pop(0)
        no_param = kind.lstrip("!") in ("all", "canonical", "final") or not words
        criteria.append((kind,) if no_param else (kind, words.pop(0)))
    return criteria


def _include_paths(value: str, depth: int, where: str) -> list[Path]:
    """The files of an ``Include`` line: globs, relative to ~/.ssh, sorted; no match is no error."""
    if depth >= _INCLUDE_MAX_DEPTH:
        raise SshConfigError(f"{where}: Include nested more than {_INCLUDE_MAX_DEPTH} levels deep "
                             f"(does a file include itself?)")
    try:
        patterns = shlex.split(value)
    except ValueError as exc:
        raise SshConfigError(f"{where}: cannot parse Include {value!r}: {exc}") from exc
    found = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if not os.path.isabs(pattern):
            pattern = os.path.join(os.path.expanduser("~/.ssh"), pattern)
        for name in sorted(glob.glob(pattern)):
            path = Path(name)
            if path.is_dir():
                continue
            st = path.stat()
            if st.st_uid not in (0, os.getuid()) or st.st_mode & 0o022:
                raise SshConfigError(f"{where}: Include {path}: bad owner or permissions (OpenSSH requires it to "
                                     f"belong to you or root and not be writable by group or others)")
            found.append(path)
    return found


def _expand_tokens(option: str, value: str, alias: str, hostname: str, port: int, user: str) -> str:
    """OpenSSH's ProxyCommand/ProxyJump tokens (%% %h %n %p %r), each value checked to be inert in a shell."""
    values = {"h": ("host name", hostname), "n": ("host", alias), "p": ("port", str(port)), "r": ("user", user)}

    def replace(m: re.Match) -> str:
        if m.group(1) == "%":
            return "%"
        if m.group(1) not in values:
            raise SshConfigError(f"{option} for {alias}: unknown token %{m.group(1)} in {value!r} "
                                 f"(known: %%, %h, %n, %p, %r)")
        name, text = values[m.group(1)]
        if not _INERT_RE.fullmatch(text) or text.startswith("-"):
            raise SshConfigError(f"{option} for {alias}: the {name} {text!r} has characters a shell would "
                                 f"interpret; refusing to put it into {value!r}")
        return text

    return re.sub(r"%(.?)", replace, value, flags=re.DOTALL)


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


def _resolve_hop(cfg: _Config, alias: str, user: str | None, port: int | None, key: str | None,
                 proxy: bool = True) -> tuple[ResolvedHop, dict, str | None]:
    """The hop, its config entry and its ProxyJump (tokens expanded); ``proxy`` False ignores both proxies."""
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
    command = jump = None
    chosen = cfg.proxy(entry) if proxy else None
    if chosen and chosen[1].strip().lower() != "none":
        option = "ProxyCommand" if chosen[0] == "proxycommand" else "ProxyJump"
        value = chosen[1] if option == "ProxyCommand" else chosen[1].strip().strip('"')
        expanded = _expand_tokens(option, value, alias, hostname, resolved_port, resolved_user)
        command, jump = (expanded, None) if option == "ProxyCommand" else (None, expanded)
    return ResolvedHop(alias, hostname, resolved_port, resolved_user, keys, command), entry, jump


def resolve_target(target: SshTarget) -> Resolved:
    """Apply the ssh config to a target, explicit fields first."""
    problem = host_problem(target.host)
    if problem:  # checked before the ssh config sees it: its Match exec would put it in a shell command
        raise SshConfigError(f"ssh host: {problem}")
    cfg = _load_config(target.ssh_config)
    hop, entry, proxyjump = _resolve_hop(cfg, target.host, target.user, target.port, target.key)
    jumps: list[ResolvedHop] = []
    for spec in proxyjump.split(",") if proxyjump else []:
        juser, jhost, jport = _parse_jump(spec)
        # Only the first hop opens a socket itself, so only its ProxyCommand counts.
        jumps.append(_resolve_hop(cfg, jhost, juser, jport, None, proxy=not jumps)[0])
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
        self._proxy: _ProxyProcess | None = None  # the first hop's ProxyCommand
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
        if self._proxy is not None:
            self._proxy.close()
            self._proxy = None
        self._has_timeout = None

    def _via(self) -> str:
        return f" via {', '.join(h.label for h in self.resolved.jumps)}" if self.resolved.jumps else ""

    def _open_sock(self, hop: ResolvedHop, prev: ResolvedHop | None) -> Any:
        import paramiko

        timeout = self.target.connect_timeout
        if prev is None and hop.proxy_command:
            try:
                self._proxy = _ProxyProcess(hop.proxy_command)
            except OSError as exc:
                raise HostUnreachable(f"cannot start the ProxyCommand of {hop.alias!r} "
                                      f"({hop.proxy_command}): {exc}") from exc
            return self._proxy.sock
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
                f"SSH handshake with {hop.label}{self._via()} failed: {exc or type(exc).__name__}"
                f"{'' if self._clients else self._proxy_state()}. Is an SSH server listening there?"
            ) from exc
        client.get_transport().set_keepalive(max(1, int(self.resolved.alive_interval)))
        return client

    def _transport(self, required: bool = True) -> Any:
        t = self._clients[-1].get_transport() if self._clients else None
        if required and (t is None or not t.is_active()):
            self.connect()
            t = self._clients[-1].get_transport()
        return t

    def _proxy_state(self) -> str:
        return f"; {self._proxy.state()}" if self._proxy is not None else ""

    def _lost(self, what: str, exc: BaseException | None = None) -> ConnectionLost:
        hop = self.resolved.target
        detail = (f": {exc}" if exc and str(exc) else "") + self._proxy_state()
        self.close()
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
        # The outer sh waits for the command and exits with its status, which a shell gives as
        # 128 + signum for a command killed by a signal: SSH's exit-signal (unknown to paramiko)
        # never has to be read.  The pid printed leads the process group that a timeout kills:
        # `timeout`, which makes its own group (the inner sh execs it), or else the outer sh,
        # which leads the session's group when the login shell execs it (bash, dash, zsh do).
        if self._remote_has_timeout():
            backstop = math.ceil(timeout) + _KILL_MARGIN_S
            inner = f'echo "{_PID_MARK} $$" >&2; exec timeout -s KILL {backstop} "$@"'
            script = f'sh -c {shlex.quote(inner)} sh "$@"; exit $?'
        else:
            script = f'echo "{_PID_MARK} $$" >&2; "$@"; exit $?'
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


# --------------------------------------------------------------------------- helpers


class _ProxyProcess:
    """A ProxyCommand, run as OpenSSH runs it (``$SHELL -c "exec COMMAND"``), over a socketpair.

    Not paramiko's ``ProxyCommand``: it reads a pipe and never sees its end (``recv`` loops on
    empty reads until the socket timeout), so a dead proxy or board would only be noticed by
    keepalives, and its unread stderr pipe can fill up and stall the proxy.  A socket gives
    paramiko the end of the stream at once; stderr goes to a file, for error messages.
    """

    def __init__(self, command: str):
        self.command = command
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.sock, theirs = socket.socketpair()
        try:
            shell = os.environ.get("SHELL") or "/bin/sh"
            self.proc = subprocess.Popen([shell, "-c", f"exec {command}"], stdin=theirs, stdout=theirs,
                                         stderr=self.stderr)
        except OSError:
            self.sock.close()
            self.stderr.close()
            raise
        finally:
            theirs.close()

    def state(self) -> str:
        """``ProxyCommand `...` exited with code 1: <its last stderr line>``, or still runs."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(0.5)  # a proxy that ended the stream is usually exiting
        code = self.proc.poll()
        size = os.fstat(self.stderr.fileno()).st_size
        err = os.pread(self.stderr.fileno(), 2000, max(0, size - 2000)).decode(errors="replace").strip()
        tail = err.splitlines()[-1] if err else ""
        return (f"ProxyCommand `{self.command}` " + ("still runs" if code is None else f"exited with code {code}")
                + (f": {tail}" if tail else ""))

    def close(self) -> None:
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)  # what OpenSSH sends it
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


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
