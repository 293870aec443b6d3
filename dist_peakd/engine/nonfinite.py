"""Non-finite losses: every rank agrees on a NaN/inf seen by any rank, then stops or skips the step.

``nan_policy="stop"`` raises :class:`~dist_peakd.errors.NonFiniteLossError` on every rank (naming the
step, the rank(s) and the term(s)); ``"skip"`` discards the step's gradients on every rank and leaves
weights, optimizer state and LR schedule unchanged (:mod:`dist_peakd.engine.skip_step`).
"""

from __future__ import annotations

import math

import torch

from ..errors import NonFiniteLossError

NAN_POLICIES = ("stop", "skip")


def nonfinite_terms(values: dict[str, float]) -> dict[str, float]:
    """The entries of ``values`` (summed loss terms of one step) that are NaN or inf."""
    return {k: v for k, v in values.items() if not math.isfinite(v)}


def ranks_flagging(flag: bool, rank: int, world: int, device: torch.device) -> list[int]:
    """Ranks whose ``flag`` is set (one all-reduce of a one-hot vector; every rank gets the same list)."""
    import torch.distributed as dist

    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return [rank] if flag else []
    vec = torch.zeros(world, dtype=torch.float32, device=device)
    vec[rank] = 1.0 if flag else 0.0
    dist.all_reduce(vec)
    return [r for r, v in enumerate(vec.tolist()) if v > 0]


def nonfinite_message(step: int, rank: int, bad_ranks: list[int], bad_terms: dict[str, float]) -> str:
    """What went wrong at ``step``: this rank's bad terms, or the ranks that reported one."""
    if bad_terms:
        terms = ", ".join(f"{k}={v}" for k, v in bad_terms.items() if k != "total") or f"total={bad_terms['total']}"
        here = f"on rank {rank}: term(s) {terms}"
    else:
        here = f"reported by rank(s) {bad_ranks}"
    return (f"non-finite loss at step {step} {here} (ranks with a non-finite loss: {bad_ranks}); "
            f"set nan_policy=skip to skip such steps, or lower the learning rate")


class DeferredCheck:
    """``nan_policy=stop`` without a host sync per step (the engine's path with a fused optimizer).

    Each step's summed terms are checked on the device (:meth:`record`; with several ranks one
    all-reduce of a one-hot vector per step, a collective but no host read). From the first
    non-finite step on, ``optimizer.found_inf`` is 1 on every rank, so the fused AdamW kernel leaves
    the weights and its state (moments, step counts) unchanged, exactly as if those steps had not
    been taken. :meth:`raise_if_found` reads the flag (one sync) and raises, on every rank, the error
    the per-step check raises: it names the first non-finite step, the ranks that saw it and this
    rank's bad terms. The trainer calls it at every logging step and before any evaluation,
    checkpoint or export, so nothing computed after the bad step is ever kept.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, rank: int, world: int, device: torch.device) -> None:
        self.rank, self.world, self.device = rank, world, device
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
        optimizer.found_inf = self.found_inf  # read (by reference) by the fused kernel at every step
        self.first_step = torch.zeros((), dtype=torch.int64, device=device)
        self.first_ranks = torch.zeros(world, dtype=torch.float32, device=device)
        self.first_values: torch.Tensor | None = None
        self.keys: list[str] = []
        self.pending = False

    def record(self, step: int, keys: list[str], values: torch.Tensor) -> None:
        """Check step ``step``'s ``values`` (``[total, *keys]`` on the device) without reading them."""
        flag = (~torch.isfinite(values)).any().float()
        if self.world > 1:  # every rank learns which ranks saw one (no host value enters the device)
            import torch.distributed as dist

            ranks = torch.zeros(self.world, dtype=torch.float32, device=self.device)
            ranks.select(0, self.rank).copy_(flag)
            dist.all_reduce(ranks)
        else:
            ranks = flag.reshape(1)
        bad = ranks.amax()
        new = (bad > 0) & (self.found_inf == 0)
        if self.first_values is None:
            self.keys, self.first_values = list(keys), torch.zeros_like(values)
        self.first_step = torch.where(new, step, self.first_step)  # a scalar argument, not a copy
        self.first_values = torch.where(new, values, self.first_values)
        self.first_ranks = torch.where(new, ranks, self.first_ranks)
        self.found_inf.copy_(torch.maximum(self.found_inf, bad))
        self.pending = True

    def raise_if_found(self) -> None:
        """Raise :class:`NonFiniteLossError` when a recorded step was non-finite on any rank (one sync)."""
        if not self.pending:
            return
        self.pending = False
        if not bool(self.found_inf.item()):
            return
        values = dict(zip(["total", *self.keys], self.first_values.tolist(), strict=True))
        bad_ranks = [r for r, v in enumerate(self.first_ranks.tolist()) if v > 0]
        raise NonFiniteLossError(nonfinite_message(int(self.first_step.item()), self.rank, bad_ranks,
                                                   nonfinite_terms(values)))
