"""The trainer's inputs that the options and sweeps also use: its loop options, the train/dev data (rows,
samplers, collator), and the step arithmetic (steps of a run, the steps it evaluates at)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..data.collate import TokenColumns
from ..data.rows import fetch_rows

Batch = dict[str, torch.Tensor]


@dataclass
class LoopOptions:
    """Options of the trainer (every stage has them, with these names)."""

    epochs: float = 3.0
    seed: int = 0
    eval_batch_size: int = 128
    eval_every_steps: int = 0          # 0: evaluate at the end of each epoch only
    log_every_steps: int = 10
    stop_after_steps: int | None = None  # checkpoint and stop after this many steps of this run (rerun: N more)
    save_every_steps: int = 0          # 0: checkpoint at epoch ends (and on stop requests) only
    keep_checkpoints: int = 2          # newest complete checkpoints kept (a corrupted one falls back)
    trust_unverified: bool = False     # resume from a checkpoint whose COMPLETE lists no files
    max_skipped_fraction: float = 0.1  # more skipped steps than this fraction: the run is not finished
    keep_checkpoints_after_success: bool = False  # keep checkpoints/ once summary.json is written
    label: str = ""                    # progress bars and eval lines (default: the output folder's name)


@dataclass
class TrainData:
    """The rows and samplers of the train and dev splits, and the collator that makes batches of rows."""

    train_rows: Any
    train_sampler: Any
    eval_rows: Any
    eval_sampler: Any
    collate: Callable[[list[dict[str, Any]]], Batch]

    def batches_of(self, rows: Any) -> Callable[[Any], Batch]:
        """``indices -> batch`` of ``rows``: the collator's columnar ``gather`` when it has one (the same
        tensors as collating the fetched rows, without a Python dict per row), else fetch + collate."""
        gather = getattr(self.collate, "gather", None)
        if gather is None:
            return lambda indices: self.collate(fetch_rows(rows, list(indices)))
        columns = TokenColumns.from_dataset(rows)
        return lambda indices: gather(columns, indices)


def total_train_steps(steps_per_epoch: int, epochs: float) -> int:
    """Optimizer steps for ``epochs`` (fractional epochs round up to a whole step)."""
    return max(1, math.ceil(steps_per_epoch * epochs))


def evaluation_steps(steps_per_epoch: int, total_steps: int, eval_every_steps: int = 0) -> list[int]:
    """The global steps after which :class:`Trainer` evaluates: every ``eval_every_steps`` inside an
    epoch, at each epoch's end, and at the last step (a run of N such evaluations reports N times)."""
    steps = [step for step in range(1, total_steps + 1)
             if step % steps_per_epoch == 0 or (eval_every_steps and step % eval_every_steps == 0)]
    if not steps or steps[-1] != total_steps:
        steps.append(total_steps)
    return steps
