"""Who may join: mutual TLS options, scheduler addresses, and the one interface a worker listens on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness.cluster.common import ClusterError, require_distributed


def make_security(ca: str | os.PathLike | None, cert: str | os.PathLike | None,
                  key: str | os.PathLike | None, role: str = "client") -> Any:
    """Dask ``Security`` for mutual TLS from --tls-ca/--tls-cert/--tls-key, or None.

    With none of the three, None lets Dask read its own configuration
    (``distributed.comm.tls.*``, e.g. ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``).
    """
    given = [v for v in (ca, cert, key) if v]
    if not given:
        return None
    if len(given) != 3:
        raise ClusterError("--tls-ca, --tls-cert and --tls-key go together (mutual TLS: the CA that signed "
                           "every member's certificate, this member's certificate and its private key)")
    for option, value in (("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key)):
        if not Path(value).is_file():  # type: ignore[arg-type]
            raise ClusterError(f"{option} {value}: no such file")
    require_distributed()
    from distributed.security import Security

    if role == "worker":
        return Security(tls_ca_file=str(ca), tls_worker_cert=str(cert), tls_worker_key=str(key),
                        require_encryption=True)
    return Security(tls_ca_file=str(ca), tls_client_cert=str(cert), tls_client_key=str(key),
                    require_encryption=True)


def check_address(address: str, security: Any, role: str = "client") -> str:
    """``tcp://HOST:PORT`` or ``tls://HOST:PORT`` (a bare ``HOST:PORT`` means tcp); TLS consistent."""
    address = address.strip()
    if "://" not in address:
        address = "tcp://" + address
    scheme, _, rest = address.partition("://")
    if scheme not in ("tcp", "tls") or ":" not in rest:
        raise ClusterError(f"scheduler address {address!r}: expected tcp://HOST:PORT or tls://HOST:PORT")
    if scheme == "tcp" and security is not None:
        raise ClusterError(f"{address}: TLS options were given; use the tls:// address of the scheduler")
    if scheme == "tls" and security is None:
        require_distributed()
        from distributed.security import Security

        configured = Security()
        cert = configured.tls_worker_cert if role == "worker" else configured.tls_client_cert
        if not (configured.tls_ca_file and cert):
            raise ClusterError(f"{address} is a TLS scheduler: pass --tls-ca, --tls-cert and --tls-key "
                               "(or configure distributed.comm.tls in Dask's configuration)")
    return address


def _addresses(host: str, port: int, what: str) -> list[tuple[int, tuple]]:
    """(family, sockaddr) of every address ``host`` resolves to."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ClusterError(f"{what} {host!r} does not resolve: {exc}") from None
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def _is_loopback(ip: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_unspecified
    except ValueError:
        return False


def worker_listen_host(scheduler: str, host: str | None, insecure: bool = False) -> str:
    """The one address ``harness worker`` listens on: ``host``, or the interface facing the scheduler.

    Never every interface.  A Dask worker runs whatever code reaches it (through it or its
    scheduler), so without TLS anything beyond loopback is refused unless ``insecure``.
    """
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port

    scheme, location = parse_address(scheduler)  # check_address made it tcp:// or tls://
    try:
        scheduler_host, scheduler_port = parse_host_port(location)
    except ValueError:
        raise ClusterError(f"scheduler address {scheduler!r}: expected {scheme}://HOST:PORT") from None
    scheduler_ips = _addresses(scheduler_host, scheduler_port, "the scheduler host")
    _refuse_exposed(scheduler, [sockaddr[0] for _, sockaddr in scheduler_ips], insecure)
    if host is not None:
        host = host.strip().removeprefix("[").removesuffix("]")
        listen_ips = [sockaddr[0] for _, sockaddr in _addresses(host, 0, "--host")] if host not in ("", "*") else []
        if not listen_ips or any(_is_wildcard(ip) for ip in listen_ips):
            raise ClusterError(f"--host {host or repr(host)} would listen on every interface of this host: give the "
                               "address of the one interface facing the scheduler, or leave --host out to use it")
        listen = host
    else:
        listen = ""
        for family, sockaddr in scheduler_ips:
            try:  # connecting a UDP socket sends nothing; it picks the route to the scheduler
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.connect(sockaddr)
                    listen = probe.getsockname()[0]
                    break
            except OSError:
                continue
        if not listen:
            raise ClusterError(f"no interface of this host has a route to the scheduler at {scheduler}; give one "
                               "with --host")
        listen_ips = [listen]
    _refuse_exposed(scheduler, listen_ips, insecure)
    return listen


def _refuse_exposed(scheduler: str, ips: list[str], insecure: bool) -> None:
    exposed = sorted({ip for ip in ips if not _is_loopback(ip)})
    if exposed and not scheduler.startswith("tls://") and not insecure:
        raise ClusterError(
            f"refusing to join {scheduler} without TLS: a Dask worker runs any code sent by whoever reaches it or "
            f"its scheduler, so anyone who can reach {', '.join(exposed)} could run commands on this host and its "
            "devices. Use a TLS scheduler (tls://HOST:PORT with --tls-ca, --tls-cert and --tls-key), or pass "
            "--insecure if only trusted machines are on that network")
