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
from .options import LoopOptions  # noqa: F401 - declared with the option sections, re-exported

Batch = dict[str, torch.Tensor]


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
