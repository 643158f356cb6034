"""pytest fixtures around a real sshd (import them from tests/conftest.py).

* ``sshd_server``: a fresh, started ``SshdServer`` per test (tests may kill or
  restart it); stopped afterwards.
* ``ssh_target``: an ``SshTarget`` for it with its host key already in a private
  known_hosts file and an empty ssh config, so ``~/.ssh`` never leaks into tests.

Without ``/usr/sbin/sshd`` the tests are skipped, or fail when ``CI`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.ssh_connection import SshTarget
from harness.lab.sshd import SshdServer, sshd_available


def require_sshd() -> None:
    """Skip without a usable sshd (and paramiko); fail instead when CI is set."""
    reason = sshd_available()
    try:
        import paramiko  # noqa: F401
    except ImportError:
        reason = reason or "paramiko is missing; install the ssh extra: pip install -e '.[ssh]'"
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI needs a real sshd: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    require_sshd()
    server = SshdServer(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_target(server: SshdServer, workdir: Path, **overrides: object) -> SshTarget:
    """A target for ``server`` that trusts its current host key and ignores ~/.ssh."""
    known_hosts = workdir / "known_hosts"
    if not known_hosts.exists():
        known_hosts.write_text(server.known_hosts_line)
    config = workdir / "ssh_config"
    if not config.exists():
        config.write_text("")
    fields: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "key": str(server.user_key),
        "known_hosts": str(known_hosts),
        "ssh_config": str(config),
        "connect_timeout": 10,
    }
    fields.update(overrides)
    return SshTarget(**fields)  # type: ignore[arg-type]


@pytest.fixture
def ssh_target(sshd_server: SshdServer, tmp_path_factory: pytest.TempPathFactory) -> SshTarget:
    return make_target(sshd_server, tmp_path_factory.mktemp("ssh_client"))
