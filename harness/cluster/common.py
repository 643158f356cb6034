"""What the parts of the cluster package share: its error, the check for Dask distributed, and how
a device is advertised as a worker resource."""

from __future__ import annotations

from harness.errors import UserError

RESOURCE_PREFIX = "device-"
DEVICES_PLUGIN = "convbench-devices"  # the WorkerPlugin harness worker installs (see harness/worker.py)
INSTALL_HINT = "pip install 'convbench[cluster]'"


class ClusterError(UserError):
    """The cluster cannot be used at all (no distributed, bad address, scheduler unreachable)."""


def resource_name(device: str) -> str:
    return f"{RESOURCE_PREFIX}{device}"


def require_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ClusterError(f"--cluster needs Dask distributed: {INSTALL_HINT}") from None
