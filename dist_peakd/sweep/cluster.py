"""Starting or joining Ray for a sweep.

* ``address=None``: start a private local Ray instance (``ray.init(address="local", num_cpus=...,
  include_dashboard=False)``), shut down when the sweep ends. If this process already has Ray
  running (``ray.is_initialized()``), that instance is used and left running.
* ``address="auto"``: join the cluster started on this machine with ``ray start --head``;
  ``address="HOST:6379"``: join a remote head node (see ``launchers/ray_cluster.sh``);
  ``address="ray://HOST:10001"``: Ray Client. Every node must have dist-peakd installed and see
  ``output_dir`` (and the GLUE folder) at the same path: trials read the teacher cache and PTP
  encoders from it and write their run folders into it.

Ray's settings:

* a local instance (the one the sweep starts itself) runs with ``RAY_AUTH_MODE=disabled`` (Ray 2.60 would
  otherwise enable token auth and write a token under ``~/.ray``), ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
  (it binds 127.0.0.1) and ``RAY_worker_niceness=0``: its workers run at the caller's priority (Ray's
  default, nice 15, let any other busy process on the machine starve the trials: measured 3x slower per
  step beside one other job on 2 cores). Each is set only if the user has not set it, and only while the
  instance starts: ``os.environ`` is as it was when :func:`init_ray` returns.
* joining a cluster (``address`` given): nothing is set or changed. The user's Ray settings apply as
  they are: ``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` / ``~/.ray/auth_token``
  (token auth, e.g. ``RAY_AUTH_MODE=token`` for a head started with it), ``RAY_ADDRESS``.

The rendezvous variables of any process group of this process (RANK, WORLD_SIZE, MASTER_PORT, ...)
are hidden from a local instance, so that its workers never inherit them.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

from ..env import set_by_user
from ..errors import ConfigError

RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                   "GROUP_RANK", "NODE_RANK")
#: Variables forwarded to trials on a joined cluster (their workers do not inherit this process's env); only
#: values the user set: a ``DS_ACCELERATOR`` this process defaulted from its own hardware is not theirs.
FORWARDED_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DS_ACCELERATOR",
                  "TOKENIZERS_PARALLELISM", "DIST_PEAKD_GLUE_DIR", "TORCH_EXTENSIONS_DIR",
                  "DIST_PEAKD_COLLECTIVE_TIMEOUT")
#: Ray's setting for the niceness of the worker processes of an instance it starts (Ray's default: 15).
WORKER_NICENESS_VAR = "RAY_worker_niceness"
#: Object store size of a local instance: trials exchange only small metrics.
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2


#: Seconds :func:`probe_address` waits for a TCP answer (Ray itself retries for minutes, printing warnings).
PROBE_TIMEOUT_S = 5.0


#: What a local instance starts with, unless the user set these variables.
LOCAL_INSTANCE_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                      WORKER_NICENESS_VAR: "0"}


@contextlib.contextmanager
def local_instance_env() -> Iterator[None]:
    """Temporarily set :data:`LOCAL_INSTANCE_ENV` (where unset): read by the processes a local instance starts."""
    added = [k for k in LOCAL_INSTANCE_ENV if k not in os.environ]
    os.environ.update({k: LOCAL_INSTANCE_ENV[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def without_rendezvous_env() -> Iterator[None]:
    """Temporarily remove the process-group variables from ``os.environ``."""
    saved = {k: os.environ.pop(k) for k in RENDEZVOUS_VARS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Start (``address=None``) or join Ray; returns True when this call started it (caller shuts it down).

    Only a local start sets Ray variables (:func:`local_instance_env`, undone on return); joining uses
    the environment as it is.
    """
    import ray

    if ray.is_initialized():
        return False
    with without_rendezvous_env():
        if address is None:
            with local_instance_env():
                ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus,
                         include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
        else:  # the cluster's workers do not inherit this process's environment
            probe_address(address)
            env = {k: os.environ[k] for k in FORWARDED_VARS if set_by_user(k)}  # not a default of this machine
            try:
                ray.init(address=address, runtime_env={"env_vars": env} if env else None)
            except ConnectionError as e:  # e.g. address="auto" and no cluster on this machine
                raise ConfigError(f"option address: no Ray cluster at {address!r}: {e}") from None
    return True


def probe_address(address: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Refuse (ConfigError, exit 2) a ``HOST:PORT`` / ``ray://HOST:PORT`` address where nothing accepts a TCP
    connection within ``timeout_s``: ``ray.init`` would retry for minutes. ``auto``/``local`` and
    addresses without a port are left to Ray."""
    if address is None:
        return
    host, sep, port = str(address).split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except ConnectionRefusedError:
        reason = "connection refused: nothing listens on that port"
    except TimeoutError:
        reason = f"no answer within {timeout_s:g} s"
    except OSError as e:
        reason = e.strerror or str(e)
    raise ConfigError(f"option address: no Ray cluster at {address!r} ({reason}); start the head there "
                      f"(ray start --head --port {port}) or leave --address out to start a local Ray instance")


def shutdown_ray(started: bool) -> None:
    if started:
        import ray

        ray.shutdown()
