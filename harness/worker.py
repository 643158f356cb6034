"""``harness worker``: a Dask worker that owns the devices this host reaches.

It loads a devices file, checks each device the way ``harness devices check`` does and
advertises one Dask resource ``device-<name>=1`` per usable device (unusable ones are
printed with the reason and left out), with one thread per device so devices run in
parallel and each runs one job at a time.  Tasks submitted by ``harness run --cluster``
then find the device's definition here (how *this* host reaches it) through the
``convbench-devices`` worker plugin.  Runs until Ctrl-C or SIGTERM.

A Dask worker runs whatever code reaches it, so it listens on one interface only (``--host``,
or the one facing the scheduler), never on all of them, and without TLS it refuses a scheduler
or ``--host`` beyond loopback unless ``--insecure`` (see ``harness.cluster.worker_listen_host``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness.cluster import DEVICES_PLUGIN, check_address, require_distributed, resource_name, worker_listen_host
from harness.devices import Device

Echo = Callable[[str], None]


def check_device(device: Device) -> dict[str, Any]:
    """``transport.check()`` as ``harness devices check`` runs it; a crash is a finding."""
    from harness.dispatch import make_transport

    try:
        transport = make_transport(device)
        try:
            return transport.check()
        finally:
            transport.close()
    except Exception as exc:  # unreachable devices are a finding, not a crash
        return {"usable": False, "problems": [f"{type(exc).__name__}: {exc}"]}


def usable_devices(devices: list[Device], echo: Echo) -> dict[str, Device]:
    """Check devices in parallel; print each verdict; the usable ones by name."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(devices)))) as pool:
        results = list(pool.map(check_device, devices))
    usable = {}
    for device, result in zip(devices, results, strict=True):
        if result.get("usable"):
            usable[device.name] = device
            echo(f"device {device.name} ({device.transport}): usable, advertising {resource_name(device.name)}=1")
        else:
            problems = "; ".join(str(p) for p in result.get("problems") or []) or "not usable"
            echo(f"skipping device {device.name} ({device.transport}): {problems}")
    return usable


def _plugin(devices: dict[str, Device]) -> Any:
    from distributed.diagnostics.plugin import WorkerPlugin

    class DevicesPlugin(WorkerPlugin):
        name = DEVICES_PLUGIN

        def __init__(self, devices: dict[str, Device]) -> None:
            self.devices = devices

    return DevicesPlugin(devices)


async def _serve(scheduler: str, devices: dict[str, Device], security: Any, host: str,
                 port: int | None, name: str | None, echo: Echo) -> None:
    """Serve until a signal; when the scheduler goes away (Dask workers then close), join it again."""
    from distributed import Worker

    resources = {resource_name(n): 1 for n in devices}
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    main = asyncio.current_task()

    def on_signal() -> None:  # also while waiting for a scheduler that is not there
        stopping.set()
        if main is not None:
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    while not stopping.is_set():
        # `host` is one interface (see worker_listen_host); its HTTP server (/health, /metrics) listens there too.
        worker = Worker(scheduler, nthreads=len(devices), resources=resources, security=security, host=host,
                        port=port, protocol=scheduler.partition("://")[0], dashboard_address=[(host, 0)],
                        name=name or f"convbench-{socket.gethostname()}-{'+'.join(devices)}",
                        plugins=(_plugin(devices),), memory_limit=0, dashboard=False)
        try:
            await worker  # waits for the scheduler to answer
            await _warn_shared(worker, resources, echo)
            echo(f"worker {worker.address} ready on {scheduler}: devices {', '.join(devices)}")
            await worker.finished()
        finally:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(worker.close(reason="harness worker exiting")), 10)
        if not stopping.is_set():
            echo(f"lost the scheduler at {scheduler}; joining it again when it is back (Ctrl-C stops)")
            await asyncio.sleep(1.0)


async def _warn_shared(worker: Any, resources: dict[str, int], echo: Echo) -> None:
    """Say so when another worker advertises one of our devices: two runs could then use it at once."""
    with contextlib.suppress(Exception):
        identity = await worker.scheduler.identity(n_workers=-1)
        for address, info in (identity.get("workers") or {}).items():
            shared = sorted(set(info.get("resources") or {}) & set(resources)) if address != worker.address else []
            if shared:
                echo(f"warning: worker {address} also advertises {', '.join(shared)}: advertise each device from "
                     "one worker only, or two runs may use it at once")


def serve(scheduler: str, devices_file: Path | None, names: list[str] | None, security: Any = None,
          host: str | None = None, port: int | None = None, name: str | None = None,
          echo: Echo = print, *, insecure: bool = False) -> None:
    """Check the devices, then run a Dask worker owning the usable ones until Ctrl-C/SIGTERM.

    It listens on ``host`` or else the interface facing the scheduler, never on every interface;
    without TLS, a scheduler or ``host`` beyond loopback is refused unless ``insecure``.
    """
    from harness import devices as devices_mod
    from harness.errors import UserError

    require_distributed()
    scheduler = check_address(scheduler, security, role="worker")
    host = worker_listen_host(scheduler, host, insecure)
    path = devices_file or devices_mod.default_devices_path()
    if not path.exists():
        raise UserError(f"{path}: no such devices file; a worker needs one naming the devices this host reaches "
                        "(names must be unique across the lab)")
    known = devices_mod.load_devices(path)
    selected = devices_mod.select(known, names) if names else list(known.values())
    devices = usable_devices(selected, echo)
    if not devices:
        raise UserError("no usable device on this host: nothing to advertise (see the reasons above)")
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(_serve(scheduler, devices, security, host, port, name, echo))
    echo("worker stopped")
