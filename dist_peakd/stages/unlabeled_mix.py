"""``distill`` on labelled + unlabeled rows (docs/UNLABELED.md): the plan, the mixed train data, the lookups.

The unlabeled pool (``TaskData.unlabeled``: rows from ``--unlabeled_file`` / ``--unlabeled_hub_dataset`` /
``--augment``) has its teacher outputs in the cache split ``"unlabeled"``. With rows in it and
``--unlabeled_ratio`` not 0, every global batch of ``B`` rows takes ``u = round(ratio * B)`` rows from the
pool (after ``--unlabeled_min_confidence``) and ``B - u`` train rows (:class:`~dist_peakd.data.mixed.MixedBatchSampler`);
KD and Patient-KD use every row, the hard-label CE only the labelled ones: per row
``w_i = B / (B - u)`` on labelled rows and 0 on unlabeled ones, so the engine's division by ``B`` gives the
CE's mean over the labelled rows of the global batch. Without unlabeled rows nothing here runs: the
stage is exactly the labelled-only one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import console
from ..data.mixed import MixedBatchSampler, mixed_batches, unlabeled_per_batch
from ..data.rows import column_array
from ..engine.loop_spec import TrainData
from ..errors import ConfigError
from .common import collator_for, eval_sampler

UNLABELED_SPLIT = "unlabeled"
RATIO_HELP = ("distill with unlabeled rows: share of each global batch taken from them, 0 <= R < 1 (0: not used); "
              "auto (default) = their share of all rows, n_unlabeled / (n_labelled + n_unlabeled), counted after "
              "--unlabeled_min_confidence")
MIN_CONF_HELP = ("distill with unlabeled rows: drop those whose teacher max-softmax probability is below P "
                 "(0, the default, keeps all; classification only)")


def parse_ratio(value: Any) -> float | str:
    """``"auto"`` or a float in ``[0, 1)``; anything else refused naming the option."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        ratio = float("nan")
    if isinstance(value, bool) or not 0.0 <= ratio < 1.0:
        raise ConfigError(f"option unlabeled_ratio: {value!r} is not 'auto' or a number in [0, 1)")
    return ratio


def check_unlabeled_options(opts: Any) -> None:
    """The distill-only options (before anything is read): ratio, confidence floor."""
    opts.unlabeled_ratio = parse_ratio(opts.unlabeled_ratio)
    conf = opts.unlabeled_min_confidence
    if isinstance(conf, bool) or not isinstance(conf, int | float) or not 0.0 <= conf <= 1.0:
        raise ConfigError(f"option unlabeled_min_confidence: {conf!r} is not a number in [0, 1]")
    _refuse_without_source(opts)


def _refuse_without_source(opts: Any) -> None:
    conf, ratio = opts.unlabeled_min_confidence, opts.unlabeled_ratio
    if not has_unlabeled_source(opts) and (conf or ratio not in ("auto", 0.0)):
        name, value = ("unlabeled_min_confidence", conf) if conf else ("unlabeled_ratio", ratio)
        raise ConfigError(f"option {name}: {value} is given but the run has no unlabeled rows "
                          "(--unlabeled_file, --unlabeled_hub_dataset or --augment N)")


def has_unlabeled_source(opts: Any) -> bool:
    """The run names unlabeled rows: ``--unlabeled_file``, ``--unlabeled_hub_dataset`` or ``--augment N``."""
    return bool(getattr(opts, "unlabeled_file", None) or getattr(opts, "unlabeled_hub_dataset", None)
                or getattr(opts, "augment", 0))


def check_unlabeled_task(opts: Any, task: Any) -> None:
    """Refusals that need the task (before anything is written): a confidence floor for regression, the
    distill-only options without an unlabeled source."""
    conf = opts.unlabeled_min_confidence
    if conf and task.is_regression:
        raise ConfigError(f"option unlabeled_min_confidence: {conf} needs a classification task "
                          f"(task {task.name!r} is regression: no softmax confidence)")
    _refuse_without_source(opts)


@dataclass
class UnlabeledPlan:
    """What ``distill`` takes from the pool: the kept rows and the batch composition (card + summary)."""

    rows: Any                 # the kept pool rows (tokenized, like train)
    pool_rows: int            # rows in the pool
    kept: int                 # after --unlabeled_min_confidence
    ratio: float              # resolved --unlabeled_ratio
    per_batch: int            # unlabeled rows per global batch (u)
    batch_size: int           # B
    min_confidence: float
    sources: Any = None       # the cache manifest's record of the pool's sources

    @property
    def ce_scale(self) -> float:
        """``B / (B - u)``: the labelled rows' CE weight (mean over the labelled rows of each global batch)."""
        return self.batch_size / (self.batch_size - self.per_batch)

    def describe(self) -> dict[str, Any]:
        return {"pool_rows": self.pool_rows, "rows_used": self.kept,
                "dropped_low_confidence": self.pool_rows - self.kept, "min_confidence": self.min_confidence,
                "ratio": self.ratio, "unlabeled_per_batch": self.per_batch, "batch_size": self.batch_size,
                "ce": "mean over the labelled rows of each global batch", "ptp": "not used (train rows only)",
                **({"sources": self.sources} if self.sources is not None else {})}


def confident_rows(pool: Any, cache: Any, min_confidence: float) -> np.ndarray:
    """Positions in ``pool`` whose teacher max-softmax probability (no temperature) is >= ``min_confidence``."""
    n = len(pool)
    if not min_confidence:
        return np.arange(n, dtype=np.int64)
    ids = column_array(pool, "idx").astype(np.int64)
    split = cache.split(UNLABELED_SPLIT)
    missing = split.missing(ids)
    if len(missing):
        raise KeyError(f"example id(s) {missing[:10].tolist()} of the unlabeled rows not in teacher cache split "
                       f"{UNLABELED_SPLIT!r}")
    logits = split.logits()[torch.from_numpy(np.searchsorted(split.ids, ids))]  # logits only: no [CLS] read
    conf = torch.softmax(logits.float(), dim=-1).max(dim=-1).values.numpy()
    return np.flatnonzero(conf >= min_confidence).astype(np.int64)


def plan_unlabeled(opts: Any, data: Any, cache: Any) -> UnlabeledPlan | None:
    """The pool rows to mix in and how many per batch; None when none are used (no pool, ratio 0, or the
    confidence floor keeps no row: said on rank 0's console; the summary then has no ``unlabeled`` entry)."""
    pool = getattr(data, "unlabeled", None)
    if pool is None or not len(pool) or opts.unlabeled_ratio == 0.0:
        return None
    keep = confident_rows(pool, cache, float(opts.unlabeled_min_confidence))
    if not len(keep):
        console.info(f"--unlabeled_min_confidence {opts.unlabeled_min_confidence} keeps none of the "
                     f"{len(pool)} unlabeled rows: distilling from the labelled rows only")
        return None
    rows = pool if len(keep) == len(pool) else pool.select(keep)
    n_lab = len(data.train)
    ratio = len(keep) / (len(keep) + n_lab) if opts.unlabeled_ratio == "auto" else float(opts.unlabeled_ratio)
    per_batch = unlabeled_per_batch(opts.batch_size, ratio)
    if per_batch == 0:
        return None
    return UnlabeledPlan(rows=rows, pool_rows=len(pool), kept=len(keep), ratio=round(ratio, 6), per_batch=per_batch,
                         batch_size=opts.batch_size, min_confidence=float(opts.unlabeled_min_confidence),
                         sources=cache.manifest.get("unlabeled"))


@dataclass
class MixedTrainData(TrainData):
    """:class:`TrainData` whose train rows are the mixed index space (train rows, then the pool's)."""

    unlabeled_rows: Any = None

    def batches_of(self, rows: Any) -> Any:
        if rows is not self.train_rows:
            return super().batches_of(rows)
        plain = TrainData(rows, None, None, None, self.collate)
        return mixed_batches(plain.batches_of(rows), plain.batches_of(self.unlabeled_rows), len(rows),
                             self.collate.pad_token_id)


def mixed_trainer_data(data: Any, tokenizer: Any, opts: Any, dist_info: Any, plan: UnlabeledPlan) -> MixedTrainData:
    """The train data of a run on labelled + unlabeled rows (dev as usual)."""
    sampler = MixedBatchSampler(column_array(data.train, "length").tolist(),
                                column_array(plan.rows, "length").tolist(), opts.batch_size, plan.per_batch,
                                num_replicas=dist_info.world_size, rank=dist_info.rank, seed=opts.seed)
    return MixedTrainData(train_rows=data.train, train_sampler=sampler, eval_rows=data.dev,
                          eval_sampler=eval_sampler(data.dev, opts, dist_info),
                          collate=collator_for(tokenizer, opts.padding_multiple()), unlabeled_rows=plan.rows)


def lookup_mixed(train_cache: Any, unlabeled_cache: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Teacher logits and [CLS] states of a mixed batch: each row from its own split (ids overlap)."""
    ids = batch["example_ids"].cpu().numpy()
    from_u = batch["from_unlabeled"].cpu().numpy().astype(bool)
    if not from_u.any():
        return train_cache.lookup(ids)
    if from_u.all():
        return unlabeled_cache.lookup(ids)
    lt, ct = train_cache.lookup(ids[~from_u])
    lu, cu = unlabeled_cache.lookup(ids[from_u])
    back = torch.from_numpy(np.argsort(np.concatenate([np.flatnonzero(~from_u), np.flatnonzero(from_u)]),
                                       kind="stable"))
    return torch.cat([lt, lu])[back], torch.cat([ct, cu])[back]


def ce_weights(batch: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
    """Per-row CE weight: ``scale`` on labelled rows, 0 on unlabeled ones."""
    return (~batch["from_unlabeled"]).to(torch.float32) * scale


def unlabeled_line(plan: UnlabeledPlan | None, n_labelled: int) -> str:
    """The run's data line for the loss text and card (empty without unlabeled rows)."""
    if plan is None:
        return ""
    floor = f", teacher confidence >= {plan.min_confidence:g}" if plan.min_confidence else ""
    return (f"; on {n_labelled} labelled + {plan.kept} unlabeled rows (of {plan.pool_rows}{floor}), "
            f"{plan.per_batch} of each batch of {plan.batch_size} unlabeled (ratio {plan.ratio:g}); "
            "the hard-label CE on the labelled rows only (mean over them), KD and Patient-KD on all rows")


def with_unlabeled(method: dict[str, Any], plan: UnlabeledPlan | None, n_labelled: int) -> dict[str, Any]:
    """The card's ``method`` with the unlabeled rows stated (in its distillation sentence and as a record)."""
    if plan is None:
        return method
    return {**method, "distillation": method.get("distillation", "KD + Patient-KD") + unlabeled_line(plan, n_labelled),
            "unlabeled": {"labelled_rows": n_labelled, **plan.describe()}}
