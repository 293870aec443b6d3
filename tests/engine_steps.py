"""A whole optimizer step for the engine tests, driven as a stage's recipe drives it (the product's stages
write this loop in their own files: dist_peakd/stages/distill.py ``train``)."""

from __future__ import annotations

from typing import Any


def train_step(engine: Any, micro_batches: list[dict], global_count: int, loss_fn: Any,
               dummy_batch: dict | None = None, sync: bool = True) -> dict[str, Any]:
    """One step of ``loss_fn(model, batch) -> LossOutput`` over this rank's ``micro_batches`` (exactly the
    engine's accumulation steps) of a global batch of ``global_count``; an empty one runs ``dummy_batch``
    with weight 0. Returns :meth:`Engine.step`'s result."""
    if len(micro_batches) != engine.gradient_accumulation_steps:
        raise ValueError(f"expected {engine.gradient_accumulation_steps} micro-batches, got {len(micro_batches)}")
    engine.train()
    for micro in micro_batches:
        empty = micro["input_ids"].shape[0] == 0
        out = loss_fn(engine.ds, engine.to_device(dummy_batch if empty else micro))
        engine.backward(out, 0.0 if empty else engine.micro_weight(global_count))
        result = engine.step(sync=sync)
    return result
