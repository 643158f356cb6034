"""SshConnection against a real OpenSSH server on 127.0.0.1 (see harness/lab/sshd.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from backends.ssh_connection import (
    AuthenticationFailed,
    ConnectionLost,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
    RemoteTimeout,
    SshConnection,
    SshError,
    SshTarget,
)
from harness.lab.sshd import SshdServer, free_port
from tests.rigs.ssh_fixtures import make_target, ssh_target, sshd_server  # noqa: F401

pytestmark = pytest.mark.rig


def processes_with_arg(arg: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if arg.encode() in argv:
                found.append(int(entry))
    return found


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def write_config(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------- connecting


def test_connect_with_key_and_run(ssh_target: SshTarget, sshd_server: SshdServer) -> None:  # noqa: F811
    with SshConnection(ssh_target) as conn:
        assert conn.connected
        code, out, err = conn.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
        assert (code, out, err) == (3, b"out\n", b"err\n")
        assert conn.run(["id", "-un"], timeout=10)[1].decode().strip() == sshd_server.user
        assert conn.run(["true"], timeout=10) == (0, b"", b"")
        code, out, err = conn.run(["sh", "-c", "echo o; echo e >&2; printf tail >&2"], timeout=10)
        assert (code, out, err) == (0, b"o\n", b"e\ntail")  # the wrapper's pid line never shows
        code, _, err = conn.run(["no-such-program-convbench"], timeout=10)
        assert code == 127 and b"no-such-program-convbench" in err
        # a process killed by a signal reports 128 + signum, not a lost connection
        assert conn.run(["sh", "-c", "kill -KILL $$"], timeout=10)[0] == 128 + 9
        # stdin is passed through, larger than one SSH window
        data = os.urandom(3 * 1024 * 1024)
        code, out, _ = conn.run(["cat"], timeout=30, stdin=data)
        assert code == 0 and out == data
    assert not conn.connected


def test_ssh_config_alias_resolution(sshd_server: SshdServer, tmp_path: Path) -> None:  # noqa: F811
    known = tmp_path / "known_hosts"
    known.write_text(sshd_server.known_hosts_line)
    config = write_config(
        tmp_path / "config",
        f"Host pi4\n  HostName {sshd_server.host}\n  Port {sshd_server.port}\n  User {sshd_server.user}\n"
        f"  IdentityFile {sshd_server.user_key}\n"
        f"Host wrongport\n  HostName {sshd_server.host}\n  Port 1\n  User nobody-here\n"
        f"  IdentityFile {sshd_server.user_key}\n",
    )
    with SshConnection(SshTarget("pi4", ssh_config=config, known_hosts=str(known))) as conn:
        hop = conn.resolved.target
        assert (hop.hostname, hop.port, hop.user) == (sshd_server.host, sshd_server.port, sshd_server.user)
        assert hop.keys == (str(sshd_server.user_key),)
        assert conn.run(["echo", "via alias"], timeout=10)[1] == b"via alias\n"
    # explicit fields override the config
    target = SshTarget("wrongport", port=sshd_server.port, user=sshd_server.user, ssh_config=config,
                       known_hosts=str(known))
    with SshConnection(target) as conn:
        assert conn.run(["id", "-un"], timeout=10)[1].decode().strip() == sshd_server.user


def test_unknown_host_is_refused(sshd_server: SshdServer, tmp_path: Path) -> None:  # noqa: F811
    known = tmp_path / "known_hosts"
    known.write_text("")
    target = make_target(sshd_server, tmp_path)
    with pytest.raises(HostKeyUnknown) as info:
        SshConnection(target).connect()
    message = str(info.value)
    assert sshd_server.host_key_fingerprint in message
    assert str(sshd_server.port) in message and sshd_server.host in message
    assert "trust_new_host: true" in message and "devices.yaml" in message
    assert known.read_text() == ""


def test_trust_new_host_records_the_key(sshd_server: SshdServer, tmp_path: Path) -> None:  # noqa: F811
    known = tmp_path / "fresh" / "dir" / "known_hosts"  # neither the file nor its directory exists
    target = make_target(sshd_server, tmp_path, known_hosts=str(known), trust_new_host=True)
    with SshConnection(target) as conn:
        assert conn.run(["true"], timeout=10)[0] == 0
    assert known.read_text() == sshd_server.known_hosts_line
    assert known.read_text().startswith(f"[127.0.0.1]:{sshd_server.port} ssh-ed25519 ")
    # the second connection works without trust_new_host, and records nothing more
    target = make_target(sshd_server, tmp_path, known_hosts=str(known), trust_new_host=False)
    with SshConnection(target) as conn:
        assert conn.run(["true"], timeout=10)[0] == 0
    assert known.read_text() == sshd_server.known_hosts_line


def test_changed_host_key_is_always_refused(sshd_server: SshdServer, tmp_path: Path) -> None:  # noqa: F811
    target = make_target(sshd_server, tmp_path)
    with SshConnection(target) as conn:
        conn.run(["true"], timeout=10)
    old = sshd_server.host_key_fingerprint
    known_before = Path(target.known_hosts).read_text()
    sshd_server.stop()
    sshd_server.regenerate_host_key()
    sshd_server.start()
    new = sshd_server.host_key_fingerprint
    assert old != new
    for trust in (False, True):
        with pytest.raises(HostKeyChanged) as info:
            SshConnection(make_target(sshd_server, tmp_path, trust_new_host=trust)).connect()
        assert (info.value.old_fingerprint, info.value.new_fingerprint) == (old, new)
        assert old in str(info.value) and new in str(info.value) and "ssh-keygen -R" in str(info.value)
    assert Path(target.known_hosts).read_text() == known_before


def test_wrong_key_and_closed_port_have_clear_errors(sshd_server: SshdServer, tmp_path: Path) -> None:  # noqa: F811
    stranger = SshdServer(tmp_path / "stranger")  # only used for its (unauthorized) user key
    with pytest.raises(AuthenticationFailed, match=r"refused key authentication.*ssh-copy-id"):
        SshConnection(make_target(sshd_server, tmp_path, key=str(stranger.user_key))).connect()
    with pytest.raises(HostUnreachable, match=r"cannot reach 127\.0\.0\.1 port"):
        SshConnection(make_target(sshd_server, tmp_path, port=free_port())).connect()
    with pytest.raises(SshError, match="does not exist"):
        SshConnection(make_target(sshd_server, tmp_path, key=str(tmp_path / "missing_key")))


# --------------------------------------------------------------------------- commands and files


def test_hostile_names_are_never_executed(ssh_target: SshTarget, tmp_path: Path) -> None:  # noqa: F811
    markers = [tmp_path / f"pwned{i}" for i in range(4)]
    hostile = (
        f"sp ace 'single' \"double\" $(touch {markers[0]}) ; touch {markers[1]} ; "
        f"`touch {markers[2]}` && touch {markers[3]} | > < * ~ $HOME \\ ä"
    )
    remote = str(tmp_path / "remote" / hostile / "file name's.txt")
    local = tmp_path / "payload.txt"
    local.write_text("payload\n")
    with SshConnection(ssh_target) as conn:
        assert conn.put(local, remote) is True
        assert Path(remote).read_text() == "payload\n"  # sshd runs on this machine: check the real path
        code, out, err = conn.run(["cat", remote], timeout=10)
        assert (code, out, err) == (0, b"payload\n", b"")
        assert conn.run(["echo", hostile], timeout=10)[1] == (hostile + "\n").encode()
        assert conn.put(local, remote) is False  # the hash check quotes the name too
        conn.get(remote, tmp_path / "back" / "sp ace 'q' $(x)" / "f;g")
        assert (tmp_path / "back" / "sp ace 'q' $(x)" / "f;g").read_text() == "payload\n"
        conn.remove_tree(str(tmp_path / "remote"))
        assert not (tmp_path / "remote").exists()
    assert [m for m in markers if m.exists()] == []


def test_stdout_lines_arrive_as_they_are_printed(ssh_target: SshTarget) -> None:  # noqa: F811
    seen: list[tuple[str, float]] = []
    start = time.monotonic()
    with SshConnection(ssh_target) as conn:
        code, out, _ = conn.run(
            ["sh", "-c", "echo first; sleep 2; printf 'second\\nno-newline'"],
            timeout=20,
            on_stdout_line=lambda line: seen.append((line, time.monotonic() - start)),
        )
    assert code == 0 and out == b"first\nsecond\nno-newline"
    assert [line for line, _ in seen] == ["first", "second", "no-newline"]
    assert seen[0][1] < seen[1][1] - 1.0  # the first line came before the command slept


@pytest.mark.parametrize("remote_timeout", [True, False], ids=["coreutils-timeout", "no-timeout-binary"])
def test_timeout_kills_the_remote_command(ssh_target: SshTarget, remote_timeout: bool) -> None:  # noqa: F811
    marker = "30.4242"  # a unique argument to find the remote process by
    with SshConnection(ssh_target) as conn:
        if not remote_timeout:  # a board without coreutils `timeout`: the process-group kill alone
            conn._has_timeout = False
        start = time.monotonic()
        with pytest.raises(RemoteTimeout) as info:
            conn.run(["sleep", marker], timeout=1)
        assert time.monotonic() - start < 5
        assert info.value.killed
        assert wait_until(lambda: not processes_with_arg(marker), 5), "the remote sleep survived"
        # the connection is still usable afterwards
        assert conn.run(["echo", "ok"], timeout=10)[1] == b"ok\n"


@pytest.mark.parametrize("remote_timeout", [True, False], ids=["coreutils-timeout", "no-timeout-binary"])
def test_a_command_killed_by_a_signal_exits_128_plus_signum(ssh_target: SshTarget,  # noqa: F811
                                                            remote_timeout: bool) -> None:
    """SSH reports such a command with exit-signal, which paramiko ignores: the wrapper turns it into a status."""
    with SshConnection(ssh_target) as conn:
        conn._has_timeout = remote_timeout
        assert conn.run(["sh", "-c", "kill -KILL $$"], timeout=10)[0] == 128 + 9
        assert conn.run(["sh", "-c", "kill -TERM $$"], timeout=10)[0] == 128 + 15
        code, out, err = conn.run(["sh", "-c", "cat; echo err >&2; exit 7"], timeout=10, stdin=b"in")
        assert (code, out, err) == (7, b"in", b"err\n")


def test_timeout_kills_children_of_the_remote_command(ssh_target: SshTarget) -> None:  # noqa: F811
    marker = "31.4242"
    with SshConnection(ssh_target) as conn, pytest.raises(RemoteTimeout):
        conn.run(["sh", "-c", f"sleep {marker} & sleep {marker}; wait"], timeout=1)
    assert wait_until(lambda: not processes_with_arg(marker), 5), "a child of the remote command survived"


def test_sshd_killed_mid_command_raises_connection_lost(sshd_server: SshdServer, ssh_target: SshTarget) -> None:  # noqa: F811
    conn = SshConnection(ssh_target)

    def on_line(line: str) -> None:
        if line == "started":
            sshd_server.kill()

    start = time.monotonic()
    with pytest.raises(ConnectionLost, match=r"connection to .* lost while running sh"):
        conn.run(["sh", "-c", "echo started; sleep 32.4242"], timeout=60, on_stdout_line=on_line)
    assert time.monotonic() - start < 10
    assert not conn.connected
    # the board comes back: the next call reconnects by itself
    sshd_server.start()
    assert conn.run(["echo", "back"], timeout=10)[1] == b"back\n"
    conn.close()


def test_hung_board_raises_connection_lost(sshd_server: SshdServer, tmp_path: Path) -> None:  # noqa: F811
    target = make_target(sshd_server, tmp_path, alive_interval=0.5, alive_count_max=3)
    conn = SshConnection(target).connect()
    timer = threading.Timer(0.5, sshd_server.freeze)  # TCP stays open, nothing answers
    timer.start()
    try:
        start = time.monotonic()
        with pytest.raises(ConnectionLost, match="no answer to keepalive"):
            conn.run(["sleep", "33.4242"], timeout=60)
        assert time.monotonic() - start < 10
    finally:
        timer.join()
        sshd_server.thaw()
        conn.close()


def test_upload_is_skipped_when_the_hash_matches(ssh_target: SshTarget, tmp_path: Path) -> None:  # noqa: F811
    local = tmp_path / "model.onnx"
    local.write_bytes(os.urandom(200_000))
    local.chmod(0o755)
    remote = str(tmp_path / "board" / "a" / "b" / "model.onnx")
    with SshConnection(ssh_target) as conn:
        assert conn.put(local, remote) is True
        assert Path(remote).read_bytes() == local.read_bytes()
        assert os.stat(remote).st_mode & 0o777 == 0o755
        mtime = os.stat(remote).st_mtime_ns
        assert conn.put(local, remote) is False
        assert os.stat(remote).st_mtime_ns == mtime
        local.write_bytes(os.urandom(200_000))  # same size, new content
        assert conn.put(local, remote) is True
        assert Path(remote).read_bytes() == local.read_bytes()
        assert [p.name for p in Path(remote).parent.iterdir()] == ["model.onnx"]  # no .part leftovers
        with pytest.raises(SshError, match="refusing"):
            conn.remove_tree("/")


# --------------------------------------------------------------------------- ProxyJump


@pytest.mark.parametrize("hops", [1, 2])
def test_proxyjump_through_the_same_sshd(sshd_server: SshdServer, tmp_path: Path, hops: int) -> None:  # noqa: F811
    known = tmp_path / "known_hosts"
    known.write_text(sshd_server.known_hosts_line)
    host = f"  HostName {sshd_server.host}\n  Port {sshd_server.port}\n  User {sshd_server.user}\n" \
           f"  IdentityFile {sshd_server.user_key}\n"
    jumps = ",".join(["jumpbox"] * hops)
    config = write_config(tmp_path / "config", f"Host jumpbox\n{host}Host board\n{host}  ProxyJump {jumps}\n")
    accepted_before = sshd_server.log_text().count("Accepted publickey")
    with SshConnection(SshTarget("board", ssh_config=config, known_hosts=str(known))) as conn:
        assert [j.alias for j in conn.resolved.jumps] == ["jumpbox"] * hops
        assert conn.run(["echo", "jumped"], timeout=10)[1] == b"jumped\n"
    assert wait_until(lambda: sshd_server.log_text().count("Accepted publickey") - accepted_before == hops + 1, 5)


# --------------------------------------------------------------------------- Include


def board_block(server: SshdServer, name: str = "pi4") -> str:
    return (f"Host {name}\n  HostName {server.host}\n  Port {server.port}\n  User {server.user}\n"
            f"  IdentityFile {server.user_key}\n")


def test_alias_defined_only_in_an_included_file(sshd_server: SshdServer, tmp_path: Path,  # noqa: F811
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`Include config.d/*.conf` is relative to ~/.ssh, globbed, and may include further files."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    dot_ssh = tmp_path / "home" / ".ssh"
    (dot_ssh / "config.d").mkdir(parents=True)
    (dot_ssh / "config.d" / "10-lab.conf").write_text(f"Include {tmp_path / 'boards' / '*'}\n")
    (dot_ssh / "config.d" / "not-matched.txt").write_text("Host pi4\n  Port 1\n")
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards" / "pi4").write_text(board_block(sshd_server))
    known = tmp_path / "known_hosts"
    known.write_text(sshd_server.known_hosts_line)
    config = write_config(tmp_path / "config", "Include config.d/*.conf ~/.ssh/missing-is-fine\n"
                                               "Host *\n  User somebody-else\n  Port 2\n")
    with SshConnection(SshTarget("pi4", ssh_config=config, known_hosts=str(known))) as conn:
        hop = conn.resolved.target
        assert (hop.hostname, hop.port, hop.user) == (sshd_server.host, sshd_server.port, sshd_server.user)
        assert hop.keys == (str(sshd_server.user_key),)
        assert conn.run(["echo", "included"], timeout=10)[1] == b"included\n"


def test_include_inside_a_host_block_is_conditional(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in OpenSSH: an Include in a Host/Match block applies only when that block matches, and the
    lines after it still belong to that block."""
    from backends.ssh_connection import resolve_target

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "lab.conf").write_text(
        "Port 2301\n"  # before any Host line: belongs to the including block
        "Host lab-pi\n  HostName 10.0.0.9\n"
        "Match originalhost other\n  User never\n"
    )
    config = write_config(tmp_path / "config", "Host lab-*\n  Include lab.conf\n  User after-include\n"
                                               "Host *\n  Port 2200\n  User fallback\n")
    lab = resolve_target(SshTarget("lab-pi", ssh_config=config)).target
    assert (lab.hostname, lab.port, lab.user) == ("10.0.0.9", 2301, "after-include")
    other = resolve_target(SshTarget("other", ssh_config=config)).target
    assert (other.hostname, other.port, other.user) == ("other", 2200, "fallback")


def test_include_loops_and_unsafe_files_are_refused(tmp_path: Path) -> None:
    from backends.ssh_connection import SshConfigError, resolve_target

    loop = write_config(tmp_path / "loop", f"Include {tmp_path / 'loop'}\n")
    with pytest.raises(SshConfigError, match=r"loop:1: .*Include"):
        resolve_target(SshTarget("pi4", ssh_config=loop))
    writable = tmp_path / "writable.conf"
    writable.write_text("Host pi4\n  Port 2222\n")
    writable.chmod(0o666)
    config = write_config(tmp_path / "config", f"Include {writable}\n")
    with pytest.raises(SshConfigError, match=r"writable\.conf.*permissions"):
        resolve_target(SshTarget("pi4", ssh_config=config))
    broken = write_config(tmp_path / "broken", f"Include {tmp_path / 'bad.conf'}\n")
    (tmp_path / "bad.conf").write_text("Host pi4\n  Port 22\nthis-line-has-no-value\n")
    with pytest.raises(SshConfigError, match=r"bad\.conf:3"):
        resolve_target(SshTarget("pi4", ssh_config=broken))


# --------------------------------------------------------------------------- ProxyCommand

RELAY = """\
import os, socket, sys, threading
with open(sys.argv[1], "a") as log:
    log.write(" ".join([str(os.getpid()), *sys.argv[2:]]) + "\\n")
sock = socket.create_connection((sys.argv[2], int(sys.argv[3])))
def upstream():
    while data := os.read(0, 65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
threading.Thread(target=upstream, daemon=True).start()
while data := sock.recv(65536):
    os.write(1, data)
"""


def relay_command(tmp_path: Path) -> tuple[str, Path]:
    """A ProxyCommand (a Python TCP relay, logging its pid and arguments) and its log file."""
    import shlex
    import sys

    script = tmp_path / "relay dir" / "relay.py"  # a space: the command is quoted as in a shell
    script.parent.mkdir(exist_ok=True)
    script.write_text(RELAY)
    log = tmp_path / "relay.log"
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {log}", log


def relay_calls(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("shape", ["direct", "shell-syntax", "jump-host-proxied"])
def test_proxycommand_reaches_the_sshd(sshd_server: SshdServer, tmp_path: Path, shape: str) -> None:  # noqa: F811
    relay, log = relay_command(tmp_path)
    known = tmp_path / "known_hosts"
    known.write_text(sshd_server.known_hosts_line)
    user_key = f"  User {sshd_server.user}\n  IdentityFile {sshd_server.user_key}\n"
    if shape == "jump-host-proxied":  # the first hop of a ProxyJump chain uses its own ProxyCommand
        config = (f"Host jumpbox\n  HostName {sshd_server.host}\n  Port {sshd_server.port}\n{user_key}"
                  f"  ProxyCommand {relay} %h %p %r %n\n"
                  f"Host board\n  HostName {sshd_server.host}\n  Port {sshd_server.port}\n{user_key}"
                  f"  ProxyJump jumpbox\n")
        target = SshTarget("board", ssh_config=write_config(tmp_path / "config", config), known_hosts=str(known))
        expected_args = [sshd_server.host, str(sshd_server.port), sshd_server.user, "jumpbox"]
    else:
        tail = " 2>/dev/null" if shape == "shell-syntax" else ""  # run by a shell, as OpenSSH does
        config = (f"Host board\n  HostName {sshd_server.host}\n  Port 1\n{user_key}"
                  f"  ProxyCommand {relay} %h %p %r %n{tail}\n")
        # the explicit port wins over the config's, and %p is the port really used
        target = SshTarget("board", port=sshd_server.port, ssh_config=write_config(tmp_path / "config", config),
                           known_hosts=str(known))
        expected_args = [sshd_server.host, str(sshd_server.port), sshd_server.user, "board"]
    with SshConnection(target) as conn:
        assert conn.run(["echo", "proxied"], timeout=10)[1] == b"proxied\n"
        local = tmp_path / "payload"
        local.write_bytes(os.urandom(300_000))
        assert conn.put(local, str(tmp_path / "remote" / "payload")) is True
    ((pid, *args),) = relay_calls(log)
    assert args == expected_args
    assert wait_until(lambda: not alive(int(pid)), 5), "the ProxyCommand outlived the connection"


def test_sshd_killed_behind_a_proxycommand_raises_connection_lost(sshd_server: SshdServer,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    relay, log = relay_command(tmp_path)
    config = write_config(tmp_path / "config", f"Host *\n  ProxyCommand {relay} %h %p\n")
    conn = SshConnection(make_target(sshd_server, tmp_path, ssh_config=config))

    def on_line(line: str) -> None:
        if line == "started":
            sshd_server.kill()

    start = time.monotonic()
    with pytest.raises(ConnectionLost, match=r"lost while running sh"):
        conn.run(["sh", "-c", "echo started; sleep 34.4242"], timeout=60, on_stdout_line=on_line)
    assert time.monotonic() - start < 10
    sshd_server.start()
    assert conn.run(["echo", "back"], timeout=10)[1] == b"back\n"  # a new relay for the new connection
    conn.close()
    assert len(relay_calls(log)) == 2
    assert wait_until(lambda: not any(alive(int(pid)) for pid, *_ in relay_calls(log)), 5)


def test_proxycommand_tokens_and_precedence(tmp_path: Path) -> None:
    """Tokens are OpenSSH's (%h %p %r %n %%); a value a shell would interpret is refused, never run."""
    from backends.ssh_connection import SshConfigError, resolve_target

    def resolve(config: str, **fields: object):
        return resolve_target(SshTarget(ssh_config=write_config(tmp_path / "config", config), **fields))

    hop = resolve("Host pi4\n  HostName 10.1.2.3\n  ProxyCommand ssh -W %h:%p%%x bastion -l %r # %n\n",
                  host="pi4", user="pi", port=2222).target
    assert hop.proxy_command == "ssh -W 10.1.2.3:2222%x bastion -l pi # pi4"
    marker = tmp_path / "PWNED"
    with pytest.raises(SshConfigError, match=r"ProxyCommand.*user 'pi;touch"):
        resolve("Host pi4\n  ProxyCommand nc %h %p -u %r\n", host="pi4", user=f"pi;touch {marker}")
    with pytest.raises(SshConfigError, match=r"ProxyCommand.*%x"):
        resolve("Host pi4\n  ProxyCommand nc %x\n", host="pi4")
    assert not marker.exists()
    # ProxyCommand none, and the first of ProxyJump/ProxyCommand wins, as in OpenSSH
    disabled = resolve("Host pi4\n  ProxyCommand none\nHost *\n  ProxyCommand nc %h %p\n", host="pi4")
    assert disabled.target.proxy_command is None
    first_jump = resolve("Host pi4\n  ProxyJump jumpbox\n  ProxyCommand nc %h %p\n", host="pi4")
    assert [j.alias for j in first_jump.jumps] == ["jumpbox"] and first_jump.target.proxy_command is None
    first_command = resolve("Host pi4\n  ProxyCommand nc %h %p\nHost *\n  ProxyJump jumpbox\n", host="pi4")
    assert first_command.jumps == () and first_command.target.proxy_command == "nc pi4 22"
