"""Scale-out dispatch on Dask distributed (see ``harness.cluster.controller``)."""

from harness.cluster.controller import (
    CONNECT_TIMEOUT_S,
    DEVICES_PLUGIN,
    INSTALL_HINT,
    OWNER_WAIT_S,
    RESOURCE_PREFIX,
    ClusterError,
    check_address,
    cluster_dispatch,
    make_security,
    require_distributed,
    resource_name,
    worker_listen_host,
)

__all__ = [
    "CONNECT_TIMEOUT_S", "DEVICES_PLUGIN", "INSTALL_HINT", "OWNER_WAIT_S", "RESOURCE_PREFIX", "ClusterError",
    "check_address", "cluster_dispatch", "make_security", "require_distributed", "resource_name",
    "worker_listen_host",
]
