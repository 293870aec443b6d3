"""Process-group setup that works under the deepspeed launcher, torchrun, Ray Train and plain python."""

from __future__ import annotations

import atexit
import datetime
import os
import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .. import console
from ..env import default_ds_accelerator, env_int, env_seconds
from . import watchdog as _watchdog


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device_for(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(timeout_s: float | None = None) -> DistInfo:
    """Initialise (once) the default process group through DeepSpeed and return this rank's place.

    - Under ``deepspeed``/``torchrun``/Ray Train the rendezvous variables (RANK, WORLD_SIZE,
      LOCAL_RANK, MASTER_ADDR, MASTER_PORT) are already set, or the group already exists.
    - In a plain single process they are filled in for a world of one on 127.0.0.1.
    Backend: NCCL on GPU, gloo on CPU. The shared-memory all-reduce op that DeepSpeed would JIT-compile
    on CPU (~60 s) is disabled. ``timeout_s`` bounds every collective (default
    ``DIST_PEAKD_COLLECTIVE_TIMEOUT`` or 600 s), so a dead peer makes the others fail instead of hang;
    it is also made the default of every group created later (DeepSpeed's data-parallel groups would
    otherwise wait 30 min). With more than one rank, a heartbeat watchdog (``engine/watchdog.py``,
    ``DIST_PEAKD_HEARTBEAT_TIMEOUT``, default 60 s) ends this rank with exit 5 naming a stopped peer.
    """
    default_ds_accelerator()  # before deepspeed is imported: no "Setting accelerator to CPU" warning
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # malformed launcher variables: one line, exit 2
        env_int(name, 0, minimum=0)
    env_int("MASTER_PORT", 29500, minimum=1, maximum=65535)
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if timeout_s is None:
        timeout_s = collective_timeout_from_env()
    heartbeat_timeout_s = _watchdog.timeout_from_env()
    _set_default_group_timeout(timeout_s)
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, verbose=False,
                                   timeout=datetime.timedelta(seconds=timeout_s))
    rank = dist.get_rank()
    world = dist.get_world_size()
    local_rank = env_int("LOCAL_RANK", rank % max(1, torch.cuda.device_count() or 1), minimum=0)
    _register_peers(rank, world, heartbeat_timeout_s)
    console.configure(rank)  # library output once, on rank 0
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=_device_for(local_rank))


COLLECTIVE_TIMEOUT_ENV = "DIST_PEAKD_COLLECTIVE_TIMEOUT"


def collective_timeout_from_env() -> float:
    """``DIST_PEAKD_COLLECTIVE_TIMEOUT`` in seconds (default 600)."""
    return env_seconds(COLLECTIVE_TIMEOUT_ENV, 600.0, lambda v: 0 < v < float("inf"), "a number of seconds > 0")


def _set_default_group_timeout(timeout_s: float) -> None:
    """Make ``timeout_s`` the timeout of every process group created without one.

    ``torch.distributed.new_group`` falls back to c10d's module defaults (30 min for gloo, 10 min for
    NCCL), not to the world group's timeout; DeepSpeed creates its data-parallel groups that way.
    """
    from torch.distributed import distributed_c10d as c10d

    delta = datetime.timedelta(seconds=timeout_s)
    c10d.default_pg_timeout = delta
    if isinstance(getattr(c10d, "default_pg_nccl_timeout", None), datetime.timedelta):
        c10d.default_pg_nccl_timeout = delta


# rank -> (hostname, pid, process start time); filled once per process group by init_distributed.
_PEERS: dict[int, tuple[str, int, float]] = {}
_PEERS_GROUP: weakref.ref | None = None  # the process group _PEERS (and the watchdog) belong to
_WATCHDOG: _watchdog.Watchdog | None = None


def _is_current_group(ref: weakref.ref) -> bool:
    return dist.is_initialized() and ref() is not None and ref() is dist.group.WORLD


def _register_peers(rank: int, world: int, heartbeat_timeout_s: float) -> None:
    """Once per process group: exchange every rank's (host, pid) and start the heartbeat watchdog.

    Collective (every rank of the group calls it, from ``init_distributed``); a no-op for a group
    already registered, so stages that call ``init_distributed`` again cost nothing.
    """
    global _PEERS_GROUP, _WATCHDOG
    if _PEERS_GROUP is not None and _is_current_group(_PEERS_GROUP) and len(_PEERS) == world:
        return
    stop_watchdog()  # a previous group's (Ray reuses processes)
    group_ref = weakref.ref(dist.group.WORLD)
    dog = None
    if world > 1 and heartbeat_timeout_s > 0:
        dog = _watchdog.Watchdog(rank, heartbeat_timeout_s, is_current=lambda: _is_current_group(group_ref),
                                 explain=lambda peer: peer_state(peer.rank))
    me = (socket.gethostname(), os.getpid(), _start_time(os.getpid()), dog.endpoint() if dog else None)
    peers = [me] if world == 1 else all_gather_objects(me)
    _PEERS.clear()
    _PEERS.update({r: tuple(p[:3]) for r, p in enumerate(peers)})  # type: ignore[misc]
    _PEERS_GROUP = group_ref
    if dog is not None:
        dog.start({r: _watchdog.Peer(r, p[0], p[1], *p[3]) for r, p in enumerate(peers) if p[3] is not None})
        _WATCHDOG = dog


def stop_watchdog() -> None:
    """Stop this process's heartbeat watchdog (telling the peers it leaves on purpose); idempotent."""
    global _WATCHDOG
    if _WATCHDOG is not None:
        _WATCHDOG.stop()
        _WATCHDOG = None


atexit.register(stop_watchdog)


def _start_time(pid: int) -> float:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:
        return 0.0


def lost_peers() -> tuple[list[int], list[int]]:
    """(ranks on this host whose process has exited, ranks on other hosts that cannot be checked)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - deepspeed depends on psutil
        psutil = None
    host = socket.gethostname()
    gone, unknown = [], []
    for rank, (peer_host, pid, started) in sorted(_PEERS.items()):
        if pid == os.getpid():
            continue
        if peer_host != host or psutil is None:
            unknown.append(rank)
            continue
        try:
            proc = psutil.Process(pid)
            alive = proc.status() != psutil.STATUS_ZOMBIE and (not started or abs(proc.create_time() - started) < 1)
        except psutil.Error:
            alive = False
        if not alive:
            gone.append(rank)
    return gone, unknown


_STATES = {"stopped": "its process is stopped: SIGSTOP or a debugger", "tracing-stop": "its process is stopped "
           "by a debugger", "disk-sleep": "its process is stuck in uninterruptible I/O, D state",
           "zombie": "its process has exited"}


def peer_state(rank: int) -> str:
    """What can be seen of a silent peer: its process state when it runs on this host."""
    host, pid, started = _PEERS.get(rank, ("?", 0, 0.0))
    if host != socket.gethostname():
        return f"on another host: stopped, frozen or cut off from {socket.gethostname()}"
    try:
        import psutil

        proc = psutil.Process(pid)
        if started and abs(proc.create_time() - started) >= 1:
            return "its process has exited"
        status = proc.status()
    except Exception:  # psutil missing, or the process is gone
        return "its process has exited"
    return _STATES.get(status, f"its process is {status} but its heartbeat thread does not run")


def describe_lost_peers() -> str:
    """A sentence naming the ranks that are gone (used in the exit message after a failed collective)."""
    if not _PEERS:
        return "the peer ranks are unknown (process group never initialised)"
    gone, unknown = lost_peers()
    silent = [(r, age) for r, age in _silent_peers() if r not in gone]
    parts = []
    if gone:
        parts.append("rank(s) " + ", ".join(f"{r} (pid {_PEERS[r][1]})" for r in gone)
                     + " on this host are no longer running")
    if silent:
        parts.append("rank(s) " + ", ".join(f"{r} (host {_PEERS[r][0]}, pid {_PEERS[r][1]}, silent {age:.0f} s)"
                                            for r, age in silent) + " stopped sending heartbeats")
    parts += [f"rank {r} (pid {_PEERS[r][1]}): {state}" for r, state in _stuck_local_peers(gone + [r for r, _ in silent])]
    unknown = [r for r in unknown if r not in dict(silent)]
    if unknown:
        parts.append(f"rank(s) {unknown} on other hosts could not be checked")
    if not parts:
        return "every peer process on this host is still running (a timeout or a network failure?)"
    return "; ".join(parts)


def _stuck_local_peers(skip: list[int]) -> list[tuple[int, str]]:
    """(rank, state) of peers on this host whose process is stopped or in D state."""
    here, out = socket.gethostname(), []
    for r, (host, pid, _) in sorted(_PEERS.items()):
        if host == here and pid != os.getpid() and r not in skip:
            state = peer_state(r)
            if state.startswith(("its process is stopped", "its process is stuck")):
                out.append((r, state))
    return out


def _silent_peers() -> list[tuple[int, float]]:
    """(rank, seconds) of peers whose heartbeats stopped for more than a few periods."""
    dog = _WATCHDOG
    if dog is None:
        return []
    return [(r, age) for r, age in sorted(dog.silence().items()) if age > 3 * dog.interval_s + 1]


_COLLECTIVE_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out",
                     "timed out", "gloo", "NCCL", "ProcessGroup")


def is_collective_failure(exc: BaseException) -> bool:
    """True when ``exc`` is a broken collective (a peer died, a timeout): exit 5, never a write failure."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    if not isinstance(exc, RuntimeError) or not (dist.is_available() and dist.is_initialized()):
        return False
    return any(s in str(exc) for s in _COLLECTIVE_SIGNS)


def barrier() -> None:
    """Barrier when a process group exists; no-op otherwise."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_gather_objects(obj: object) -> list[object]:
    """Gather one picklable object from every rank (a list of one in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, src: int = 0) -> object:
    """Broadcast one picklable object from ``src`` to all ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


T = TypeVar("T")


def decide_on_rank0(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Rank 0 decides, every rank raises: run ``fn(*args, **kwargs)`` on rank 0 only (every process outside a
    process group), share its result, or the exception it raised, with every rank; return that result on
    every rank, or raise that exception on every rank (so no rank waits for a rank 0 that gave up).

    The one home of the pattern (a stage folder's claim, lock and input check, the data record check,
    the teacher cache's skip/build decision); ``fn``'s result and exceptions must be picklable.
    """
    outcome: tuple[bool, Any] | None = None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        try:
            outcome = (True, fn(*args, **kwargs))
        except Exception as e:  # every rank raises the same error instead of waiting for rank 0
            outcome = (False, e)
    ok, value = broadcast_object(outcome)  # type: ignore[misc]
    if not ok:
        raise value
    return value
