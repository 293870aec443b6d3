"""Starting or joining Ray for a sweep.

* ``address=None``: start a private local Ray instance (``ray.init(address="local", num_cpus=...,
  include_dashboard=False)``), shut down when the sweep ends. If this process already has Ray
  running (``ray.is_initialized()``), that instance is used and left running.
* ``address="auto"``: join the cluster started on this machine with ``ray start --head``;
  ``address="HOST:6379"``: join a remote head node (see ``launchers/ray_cluster.sh``);
  ``address="ray://HOST:10001"``: Ray Client. Every node must have dist-peakd installed and see
  ``output_dir`` (and the GLUE folder) at the same path: trials read the teacher cache and PTP
  encoders from it and write their run folders into it.

``RAY_AUTH_MODE=disabled`` and ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` are set unless already set (no
auth token written under ``~/.ray``; a local instance binds 127.0.0.1). A local instance runs its workers
at the caller's priority (``RAY_worker_niceness=0`` unless set; Ray's default, nice 15, let any other busy
process on the machine starve the trials: measured 3x slower per step beside one other job on 2 cores).
The rendezvous variables of
any process group of this process (RANK, WORLD_SIZE, MASTER_PORT, ...) are hidden from a local
instance, so that its workers never inherit them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                   "GROUP_RANK", "NODE_RANK")
#: Variables forwarded to trials on a joined cluster (their workers do not inherit this process's env).
FORWARDED_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DS_ACCELERATOR",
                  "TOKENIZERS_PARALLELISM", "DIST_PEAKD_GLUE_DIR", "TORCH_EXTENSIONS_DIR",
                  "DIST_PEAKD_COLLECTIVE_TIMEOUT")
#: Ray's setting for the niceness of the worker processes of an instance it starts (Ray's default: 15).
WORKER_NICENESS_VAR = "RAY_worker_niceness"
#: Object store size of a local instance: trials exchange only small metrics.
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2


def ray_env_defaults() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@contextlib.contextmanager
def without_rendezvous_env() -> Iterator[None]:
    """Temporarily remove the process-group variables from ``os.environ``."""
    saved = {k: os.environ.pop(k) for k in RENDEZVOUS_VARS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Start (``address=None``) or join Ray; returns True when this call started it (caller shuts it down)."""
    ray_env_defaults()
    import ray

    if ray.is_initialized():
        return False
    with without_rendezvous_env():
        if address is None:
            os.environ.setdefault(WORKER_NICENESS_VAR, "0")  # read by the raylet this call starts
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus,
                     include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
        else:  # the cluster's workers do not inherit this process's environment
            env = {k: os.environ[k] for k in FORWARDED_VARS if k in os.environ}
            ray.init(address=address, runtime_env={"env_vars": env} if env else None)
    return True


def shutdown_ray(started: bool) -> None:
    if started:
        import ray

        ray.shutdown()
