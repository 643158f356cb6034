"""``harness worker`` and the ``--cluster``/``--tls-*`` options of ``harness run``.

``register(main)`` adds the worker command; ``cluster_run_options`` decorates ``run``.
Dask is imported inside the commands only, so ``harness --help`` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from harness.errors import UserError

SECURITY_NOTE = ("Never expose the scheduler beyond the lab network: whoever reaches it can run code on every "
                 "worker. Use --tls-* (mutual TLS) when the lab network is shared. A worker listens on one "
                 "interface only, and without TLS refuses a scheduler (or --host) beyond loopback unless --insecure.")

_file = click.Path(path_type=Path, dir_okay=False)


def _tls_options(who: str) -> list[Any]:
    return [
        click.option("--tls-ca", type=_file, default=None, help="CA certificate (PEM) that signed every member's."),
        click.option("--tls-cert", type=_file, default=None, help=f"This {who}'s TLS certificate (PEM)."),
        click.option("--tls-key", type=_file, default=None, help=f"This {who}'s TLS private key (PEM)."),
    ]


def cluster_run_options(command: Any) -> Any:
    """--cluster and --tls-ca/--tls-cert/--tls-key for ``harness run``."""
    for option in reversed([
        click.option("--cluster", default=None, metavar="tcp://HOST:PORT",
                     help="Dispatch on this Dask scheduler's `harness worker`s instead of in-process."),
        *_tls_options("controller"),
    ]):
        command = option(command)
    return command


def resolve_cluster(cluster: str | None, tls_ca: Path | None, tls_cert: Path | None,
                    tls_key: Path | None) -> tuple[str | None, Any]:
    """(scheduler address, Dask Security) for ``harness run``; checks the scheduler answers."""
    if not cluster:
        if tls_ca or tls_cert or tls_key:
            raise UserError("--tls-ca/--tls-cert/--tls-key need --cluster")
        return None, None
    from harness.cluster import CONNECT_TIMEOUT_S, ClusterError, check_address, make_security, require_distributed

    require_distributed()
    security = make_security(tls_ca, tls_cert, tls_key, role="client")
    address = check_address(cluster, security)
    from distributed import Client

    try:
        Client(address, security=security, timeout=CONNECT_TIMEOUT_S, set_as_default=False).close()
    except Exception as exc:  # any failure to connect is the user's to fix
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {type(exc).__name__}: {exc}") from None
    return address, security


def register(main: click.Group) -> None:
    def echo(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    @main.command("worker", epilog=SECURITY_NOTE)
    @click.option("--scheduler", required=True, metavar="tcp://HOST:PORT", help="The Dask scheduler's address.")
    @click.option("--devices-file", type=click.Path(path_type=Path), default=None,
                  help="Devices this host reaches (default: $CONVBENCH_DEVICES or ./devices.yaml).")
    @click.option("--devices", "device_names", default=None,
                  help="Comma-separated subset of the file's devices to own (default: all of them).")
    @click.option("--host", default=None,
                  help="Address of the one interface to listen on (default: the interface facing the scheduler; "
                       "never all of them).")
    @click.option("--port", type=int, default=None, help="Port to listen on (default: a random free port).")
    @click.option("--name", default=None, help="Worker name shown by the scheduler.")
    @_tls_options("worker")[0]
    @_tls_options("worker")[1]
    @_tls_options("worker")[2]
    @click.option("--insecure", is_flag=True,
                  help="Allow a scheduler (or --host) beyond loopback without TLS: whoever reaches this worker "
                       "or the scheduler can then run code on this host. Only on a network of trusted machines.")
    def worker_command(scheduler: str, devices_file: Path | None, device_names: str | None, host: str | None,
                       port: int | None, name: str | None, tls_ca: Path | None, tls_cert: Path | None,
                       tls_key: Path | None, insecure: bool) -> None:
        """Run a Dask worker owning the usable devices of this host (one resource `device-<name>=1` each).

        Each device is checked as `harness devices check` does; unusable ones are skipped with
        the reason.  `harness run --cluster ...` then runs each device's jobs here.  Ctrl-C stops.
        """
        from harness.cluster import make_security
        from harness.plan import parse_list
        from harness.worker import serve

        security = make_security(tls_ca, tls_cert, tls_key, role="worker")
        serve(scheduler, devices_file, parse_list(device_names), security, host, port, name, echo,
              insecure=insecure)
