"""Skip one optimizer step inside DeepSpeed, through its engine's overflow path (not a public API).

This is one of the few places that lean on DeepSpeed beyond its public calls; the others are
:mod:`.safe_checkpoint` (replaces the engine's ``checkpoint_engine`` for safe loads and durable saves),
:mod:`.engine` (sets ``enable_backward_allreduce`` off in a world of one) and :mod:`.ds_config` (validates
a config with ``deepspeed.runtime.config.DeepSpeedConfig``).

DeepSpeed has no public "skip this step" call. What it does have is the overflow path of fp16 loss
scaling: after ``optimizer.step()`` its engine reads ``optimizer.overflow`` and, when set, skips the
LR scheduler and counts a skipped step (``DeepSpeedEngine._take_model_step``). :func:`step_without_update`
drives that path on purpose for one ``engine.step()``: the client optimizer's ``step`` becomes a no-op
and the optimizer DeepSpeed drives reports ``overflow=True``. Everything else DeepSpeed's step does
still happens (micro/global step counters, gradient zeroing, ZeRO partition bookkeeping and its
collectives), so every rank stays in step. The patch is undone before returning.

DeepSpeed's engine has read ``optimizer.overflow`` this way since long before 0.17.2, the oldest release
the project declares (pyproject ``deepspeed>=0.17.2``); Accelerate's ``DeepSpeedOptimizerWrapper.step_was_skipped``
reads the same flag. :func:`check_supported` refuses a release where that contract is gone (rather than
silently updating the weights of a skipped step), and ``tests/engine/test_skip_step.py`` checks the installed
release against the declared range and the behaviour (weights, optimizer state and schedule unchanged,
counters advanced; ZeRO 0/1/2, bf16).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.cache
def check_supported() -> None:
    """Raise RuntimeError when DeepSpeed's engine no longer skips a step whose optimizer reports overflow."""
    import deepspeed
    from deepspeed.runtime.engine import DeepSpeedEngine

    try:
        source = inspect.getsource(DeepSpeedEngine._take_model_step)
    except (OSError, TypeError, AttributeError):  # no source to read: trust the declared version range
        return
    if "overflow" not in source or "skipped_steps" not in source:
        raise RuntimeError(f"DeepSpeed {deepspeed.__version__} no longer skips a step on optimizer.overflow "
                           "(DeepSpeedEngine._take_model_step); nan_policy=skip cannot work with it: use "
                           "nan_policy=stop or a DeepSpeed release the project declares")


def step_without_update(ds_engine: Any, client_optimizer: Any) -> None:
    """Run ``ds_engine.step()`` for an accumulation boundary without changing weights, optimizer state
    or the LR schedule (DeepSpeed counts it in ``skipped_steps``). Every rank must call it for the
    same step."""
    check_supported()
    driver = ds_engine.optimizer
    patched = [client_optimizer]
    if driver is client_optimizer or driver is None:
        def flagged(*args: Any, **kwargs: Any) -> None:
            client_optimizer.overflow = True
        client_optimizer.step = flagged
    else:
        real_step = driver.step

        def driver_step(*args: Any, **kwargs: Any) -> Any:
            result = real_step(*args, **kwargs)
            driver.overflow = True
            return result
        client_optimizer.step = lambda *args, **kwargs: None
        driver.step = driver_step
        patched.append(driver)
    try:
        ds_engine.step()
    finally:
        for obj in patched:
            obj.__dict__.pop("step", None)
        client_optimizer.__dict__.pop("overflow", None)
