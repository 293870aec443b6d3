"""Process-group setup that works under the deepspeed launcher, torchrun, Ray Train and plain python."""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    ``DIST_PEAKD_COLLECTIVE_TIMEOUT`` or 600 s), so a dead peer makes the others fail instead of hang.
    """
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if timeout_s is None:
        timeout_s = float(os.environ.get("DIST_PEAKD_COLLECTIVE_TIMEOUT", "600"))
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
    local_rank = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count() or 1)))
    _register_peers(rank, world)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=_device_for(local_rank))


# rank -> (hostname, pid, process start time); filled once per process group by init_distributed.
_PEERS: dict[int, tuple[str, int, float]] = {}


def _register_peers(rank: int, world: int) -> None:
    """Exchange (host, pid) of every rank once, so a survivor can later say which peer is gone."""
    if _PEERS and len(_PEERS) == world:
        return
    me = (socket.gethostname(), os.getpid(), _start_time(os.getpid()))
    peers = [me] if world == 1 else all_gather_objects(me)
    _PEERS.clear()
    _PEERS.update({r: tuple(p) for r, p in enumerate(peers)})  # type: ignore[misc]


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


def describe_lost_peers() -> str:
    """A sentence naming the ranks that are gone (used in the exit message after a failed collective)."""
    if not _PEERS:
        return "the peer ranks are unknown (process group never initialised)"
    gone, unknown = lost_peers()
    parts = []
    if gone:
        parts.append("rank(s) " + ", ".join(f"{r} (pid {_PEERS[r][1]})" for r in gone)
                     + " on this host are no longer running")
    if unknown:
        parts.append(f"rank(s) {unknown} on other hosts could not be checked")
    if not parts:
        return "every peer process on this host is still running (a timeout or a network failure?)"
    return "; ".join(parts)


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
