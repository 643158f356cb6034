"""Scale-out dispatch on Dask distributed: devices are worker resources of capacity 1.

``harness worker`` (harness/worker.py) runs a Dask worker on a host that reaches some
devices (phones on its USB ports, boards on its lab network) and advertises one resource
``device-<name>=1`` per usable device.  ``harness run --cluster tcp://HOST:PORT`` then calls
``cluster_dispatch`` instead of ``harness.dispatch.dispatch``: same arguments, same callbacks,
same job and record types.  Per device it submits one task holding the device's whole job
list, restricted to the device's resource and pinned to the worker that owns it, so a job
runs only where its device is attached and never two at once on one device.

On the worker the task runs ``harness.dispatch.run_device``, exactly the in-process device
loop, with the worker's own definition of the device (its devices.yaml says how to reach it
from that host).  Artifacts are exported once on the controller; each worker is asked which
it already caches (keyed by sha256) and is sent only the missing ones as bytes, or only
their paths when the cache is on a shared file system (``CONVBENCH_SHARED_CACHE=1``).  The
output check against the PyTorch reference happens on the worker (it has the reference), so
only small JSON-like raw records travel back, through a ``distributed.Queue``, as each job
finishes; the controller adds the executing worker's address as ``worker`` and finalizes and
stores them as in-process.

A worker that leaves the cluster mid-run (killed, host down, network cut: the scheduler
drops it at once when its connection closes, after ``distributed.scheduler.worker-ttl``
when it silently vanishes) fails the jobs of its devices not yet reported, with that
reason; the other devices' tasks go on.  Ctrl-C on the controller sets a distributed
``Event`` the tasks poll, so devices stop between batches as they do in-process.

- ``common``: ``ClusterError``, the check for distributed, device resource names;
- ``security``: mutual TLS, scheduler addresses, the interface a worker listens on;
- ``shipping``: artifacts described and sent by the controller, cached by sha256 on workers;
- ``task``: ``run_device_task``, one device's jobs on the worker that owns it;
- ``controller``: ``cluster_dispatch``, launching the tasks and streaming their records back.
"""

from harness.cluster.common import (
    DEVICES_PLUGIN,
    INSTALL_HINT,
    RESOURCE_PREFIX,
    ClusterError,
    require_distributed,
    resource_name,
)
from harness.cluster.controller import (
    CONNECT_TIMEOUT_S,
    DRAIN_S,
    POLL_S,
    ask,
    cluster_dispatch,
    lost_reason,
    no_owner_reason,
)
from harness.cluster.security import check_address, make_security, worker_listen_host
from harness.cluster.shipping import (
    ArtifactUnavailable,
    artifact_payload,
    cached_keys,
    describe_artifact,
    materialize,
    worker_cache_dir,
)
from harness.cluster.task import run_device_task

# How long a device waits for a worker owning it to join.  Read by cluster_dispatch at each
# run from here, the package, so setting harness.cluster.OWNER_WAIT_S takes effect.
OWNER_WAIT_S = 10.0

__all__ = [
    "CONNECT_TIMEOUT_S", "DEVICES_PLUGIN", "DRAIN_S", "INSTALL_HINT", "OWNER_WAIT_S", "POLL_S", "RESOURCE_PREFIX",
    "ArtifactUnavailable", "ClusterError", "artifact_payload", "ask", "cached_keys", "check_address",
    "cluster_dispatch", "describe_artifact", "lost_reason", "make_security", "materialize", "no_owner_reason",
    "require_distributed", "resource_name", "run_device_task", "worker_cache_dir", "worker_listen_host",
]
