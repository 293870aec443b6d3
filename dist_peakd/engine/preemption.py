"""Stop requests: SIGTERM becomes "checkpoint at the next step boundary, then stop", agreed by all ranks.

The deepspeed launcher forwards SIGTERM to every rank, one after the other; the ranks agree on the
request with an all-reduce MAX after every step, so all of them take part in the checkpoint even
when the signal reached only one.
"""

from __future__ import annotations

import signal
from typing import Any

import torch
import torch.distributed as dist


class SigtermFlag:
    """While entered, SIGTERM sets :attr:`requested` instead of ending the process."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> SigtermFlag:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. inside some Ray workers)
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is set on at least one (all-reduce MAX)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    vec = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(vec, op=dist.ReduceOp.MAX)
    return bool(int(vec.item()))
