"""How long a sweep trial trains and when it reports: the budget stated up front, ASHA's time axis.

A trial evaluates on dev ``rungs`` times per epoch by default (``eval_every_steps = ceil(steps per
epoch / rungs)`` when the sweep leaves ``eval_every_steps`` at 0), so a scheduler such as ASHA gets
that many decision points per epoch; every evaluation is one report (Tune's ``training_iteration``),
and ASHA's ``max_t`` is the number of evaluations of a trial that runs to its end.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..engine.loop_spec import evaluation_steps, total_train_steps

#: ASHA's time axis when trials differ in their number of evaluations and the space cannot be listed.
ASHA_MAX_T = 10_000
#: Options that change a trial's steps or evaluations (swept: the plan differs between trials).
PLAN_OPTIONS = ("batch_size", "epochs", "eval_every_steps")


@dataclass(frozen=True)
class TrialPlan:
    """One trial's steps and evaluations."""

    steps_per_epoch: int
    total_steps: int
    eval_every_steps: int
    evaluations: int


def trial_plan(values: Mapping[str, Any], train_rows: int, rungs: int) -> TrialPlan:
    """The plan of a trial with these option values over ``train_rows`` training examples."""
    steps_per_epoch = max(1, math.ceil(train_rows / int(values["batch_size"])))
    total = total_train_steps(steps_per_epoch, float(values["epochs"]))
    every = int(values.get("eval_every_steps") or 0)
    if not every and rungs > 1:
        every = math.ceil(steps_per_epoch / rungs)
    return TrialPlan(steps_per_epoch, total, every, len(evaluation_steps(steps_per_epoch, total, every)))


def max_evaluations(base: Mapping[str, Any], configs: Iterable[Mapping[str, Any]] | None, train_rows: int,
                    rungs: int) -> int:
    """ASHA's ``max_t``: the most evaluations a trial makes (``configs``: every trial's sampled values, when
    they can be listed, e.g. a grid; None: the plan options are not swept, or cannot be listed)."""
    if configs is None:
        return trial_plan(base, train_rows, rungs).evaluations
    return max((trial_plan({**base, **c}, train_rows, rungs).evaluations for c in configs), default=1)


def asha_milestones(max_t: int, grace_period: int, reduction_factor: float) -> list[float]:
    """The evaluations after which ASHA compares a trial with the others (as Ray's ASHA builds its rungs),
    the last one (``max_t``, where a trial ends anyway) left out."""
    if max_t <= grace_period:
        return []
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return sorted(m for k in range(count) if (m := grace_period * reduction_factor ** k) < max_t)


def budget_text(num_trials: int, plan: TrialPlan | None, milestones: Iterable[float] = ()) -> str:
    """``4 trials x 32 steps = 128 steps; 3 dev evaluations per trial (ASHA may stop a trial after 1 or 2)``."""
    if plan is None:
        return f"{num_trials} trials (their steps differ: {', '.join(PLAN_OPTIONS)} swept)"
    text = (f"{num_trials} trials x {plan.total_steps} steps = {num_trials * plan.total_steps} steps; "
            f"{plan.evaluations} dev evaluation(s) per trial")
    marks = [f"{m:g}" for m in milestones]
    if marks:
        text += f" (ASHA may stop a trial after evaluation {', '.join(marks[:-1]) + ' or ' if len(marks) > 1 else ''}" \
                f"{marks[-1]})"
    return text


def trial_budget(opts: Any, dims: dict[str, Any], base: dict[str, Any], train_rows: int | None
                 ) -> tuple[int, str]:
    """ASHA's ``max_t`` (evaluations of a full trial) and the budget line printed before the trials
    (``opts``: the sweep's options; ``base``: a trial's fixed values; ``train_rows``: the teacher cache's)."""
    from .space import grid_size

    trials = opts.samples() * grid_size(dims)
    varied = [n for n in PLAN_OPTIONS if n in dims and dims[n].kind != "fixed"]
    if train_rows is None:
        return ASHA_MAX_T, f"{trials} trials"
    if varied and not all(dims[n].discrete for n in varied):
        return ASHA_MAX_T, budget_text(trials, None)
    configs = _plan_configs(dims, varied)
    max_t = max_evaluations(base, configs, train_rows, opts.rungs)
    plan = None if varied else trial_plan(base, train_rows, opts.rungs)
    milestones = asha_milestones(max_t, opts.grace_period, opts.reduction_factor) if opts.scheduler == "asha" else []
    return max_t, budget_text(trials, plan, milestones)


def _plan_configs(dims: dict[str, Any], varied: list[str]) -> list[dict[str, Any]] | None:
    """Every combination of the swept plan options (None when none is swept)."""
    if not varied:
        return None
    return [dict(zip(varied, combo, strict=True))
            for combo in itertools.product(*(dims[n].candidates() for n in varied))]
