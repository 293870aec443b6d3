"""Non-finite losses: every rank agrees on a NaN/inf seen by any rank, then stops or skips the step.

``nan_policy="stop"`` raises :class:`~dist_peakd.errors.NonFiniteLossError` on every rank (naming the
step, the rank(s) and the term(s)); ``"skip"`` discards the step's gradients on every rank and leaves
weights, optimizer state and LR schedule unchanged (:mod:`dist_peakd.engine.skip_step`).
"""

from __future__ import annotations

import math

import torch

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
