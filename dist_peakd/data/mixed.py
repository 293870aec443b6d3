"""Batches that mix labelled train rows with unlabeled (teacher-labelled) rows: ``distill`` on both.

One index space: ``0..n_labelled-1`` are the train rows, ``n_labelled + j`` is row ``j`` of the
unlabeled pool (its position in the tokenized pool, not its example id). A batch made from such
indices carries ``from_unlabeled`` (bool, one per row): the cache split each row's teacher outputs
come from (``"unlabeled"`` or ``"train"``; example ids of the two splits overlap) and whether the row
has a hard label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .sampler import rank_share

#: stream ids of the two row sources in the generator seeds
LABELLED, UNLABELED = 0, 1


def unlabeled_per_batch(global_batch_size: int, ratio: float) -> int:
    """Unlabeled rows in each global batch: ``round(ratio * B)``, at least 1 when ``ratio > 0`` and at most
    ``B - 1`` (every batch keeps a labelled row, so the CE of every step is defined)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"unlabeled ratio must be in [0, 1), got {ratio!r}")
    if ratio == 0.0 or global_batch_size < 2:
        return 0
    return min(max(1, int(np.floor(ratio * global_batch_size + 0.5))), global_batch_size - 1)


def stream_rows(seed: int, stream: int, epoch: int, n: int, count: int) -> np.ndarray:
    """The first ``count`` rows of an epoch's stream over ``n`` rows: permutations
    ``default_rng([seed, stream, epoch, c]).permutation(n)`` for ``c = 0, 1, ..`` one after another (every row
    once per cycle; with ``count >= n`` every row at least once in the epoch)."""
    if n <= 0 or count <= 0:
        return np.zeros(0, dtype=np.int64)
    cycles = -(-count // n)
    return np.concatenate([np.random.default_rng([seed, stream, epoch, c]).permutation(n)
                           for c in range(cycles)])[:count].astype(np.int64)


class MixedBatchSampler:
    """Global batches of ``B - u`` labelled and ``u`` unlabeled rows (``u = unlabeled_per_batch(B, ratio)``).

    * An **epoch** is ``max(ceil(n_l / (B-u)), ceil(n_u / u))`` steps: one pass over the longer source. Each
      source gives the epoch a stream of seeded permutations (:func:`stream_rows`, seeded by ``(seed, source,
      epoch)``); step ``s`` takes its positions ``s*(B-u) ..`` (labelled) and ``s*u ..`` (unlabeled). Every row
      of the longer source is seen at least once per epoch (the tail of its last batch starts a new
      permutation), the shorter source repeats. Every global batch is full (``B`` rows), so every batch has
      exactly ``B - u`` labelled rows.
    * Inside a global batch rows are ordered by length, longest first (stable): less padding per rank.
    * Global batches depend only on ``(lengths, B, u, seed, epoch)``, never on ranks; rank ``r`` takes part
      ``r`` of ``num_replicas`` contiguous parts (as :class:`~.sampler.LengthGroupedBatchSampler`).
    * Resume: the batches are a pure function of ``(epoch, step)``, so the trainer's ``epoch`` and
      ``step_in_epoch`` (its checkpoint) restore them exactly; ``state_dict`` / ``load_state_dict`` have the
      same meaning as the length-grouped sampler's.
    """

    def __init__(self, labelled_lengths: Sequence[int], unlabeled_lengths: Sequence[int], global_batch_size: int,
                 unlabeled_count: int, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.lengths = np.concatenate([np.asarray(labelled_lengths, dtype=np.int64),
                                       np.asarray(unlabeled_lengths, dtype=np.int64)])
        self.n_labelled, self.n_unlabeled = len(labelled_lengths), len(unlabeled_lengths)
        self.global_batch_size, self.unlabeled_count = int(global_batch_size), int(unlabeled_count)
        self.labelled_count = self.global_batch_size - self.unlabeled_count
        if self.n_labelled < 1 or self.n_unlabeled < 1:
            raise ValueError("a mixed sampler needs labelled and unlabeled rows")
        if not 1 <= self.unlabeled_count < self.global_batch_size:
            raise ValueError(f"unlabeled rows per batch must be in [1, {self.global_batch_size - 1}], "
                             f"got {unlabeled_count}")
        self.num_replicas, self.rank, self.seed = int(num_replicas), int(rank), int(seed)
        self.epoch, self._start_step, self._yielded = 0, 0, 0

    def __len__(self) -> int:
        return max(-(-self.n_labelled // self.labelled_count), -(-self.n_unlabeled // self.unlabeled_count))

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.epoch, self._start_step, self._yielded = int(epoch), 0, 0

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All global batches of ``epoch`` (default: the current one) as lists of row indices."""
        epoch = self.epoch if epoch is None else int(epoch)
        steps, nl, nu = len(self), self.labelled_count, self.unlabeled_count
        lab = stream_rows(self.seed, LABELLED, epoch, self.n_labelled, steps * nl).reshape(steps, nl)
        unl = stream_rows(self.seed, UNLABELED, epoch, self.n_unlabeled, steps * nu).reshape(steps, nu)
        both = np.concatenate([lab, unl + self.n_labelled], axis=1)
        order = np.argsort(-self.lengths[both], axis=1, kind="stable")
        return np.take_along_axis(both, order, axis=1).tolist()

    def iter_from(self, start_step: int = 0) -> Iterator[list[int]]:
        if not 0 <= start_step <= len(self):
            raise ValueError(f"start_step must be in [0, {len(self)}], got {start_step}")
        batches = self.global_batches(self.epoch)
        self._yielded = start_step

        def gen() -> Iterator[list[int]]:
            for step in range(start_step, len(batches)):
                self._yielded = step + 1
                yield rank_share(batches[step], self.num_replicas, self.rank)

        return gen()

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start_step = self._start_step, 0
        return self.iter_from(start)

    def state_dict(self, consumed_steps: int | None = None) -> dict[str, int]:
        return {"epoch": self.epoch, "start_step": self._yielded if consumed_steps is None else int(consumed_steps)}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        start = int(state["start_step"])
        if not 0 <= start <= len(self):
            raise ValueError(f"start_step must be in [0, {len(self)}], got {start}")
        self.epoch, self._start_step, self._yielded = int(state["epoch"]), start, start


def _pad_to(t: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    if t.shape[1] == length:
        return t
    return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=fill)


def mixed_batches(labelled: Callable[[Any], dict[str, torch.Tensor]],
                  unlabeled: Callable[[Any], dict[str, torch.Tensor]], n_labelled: int,
                  pad_token_id: int) -> Callable[[Any], dict[str, torch.Tensor]]:
    """``indices -> batch`` over the mixed index space, from the two sources' own ``indices -> batch``.

    The rows keep the order of ``indices``; both parts are padded to the longer one (the collator's target
    length is monotone in the longest row, so this equals collating all rows at once); ``from_unlabeled``
    marks the pool's rows. Unlabeled rows' ``labels`` are whatever the pool holds (-1 / NaN): the loss
    masks them."""

    def batch(indices: Any) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        is_u = idx >= n_labelled
        parts = [labelled(idx[~is_u]), unlabeled(idx[is_u] - n_labelled)]
        length = max(p["input_ids"].shape[1] for p in parts)
        fills = {"input_ids": pad_token_id, "token_type_ids": 0, "attention_mask": 0}
        ref = parts[0] if len(parts[0]["input_ids"]) else parts[1]  # dtypes of a part with rows
        out = {}
        for key in ref:
            if key in fills:
                out[key] = torch.cat([_pad_to(p[key], length, fills[key]) for p in parts])
            else:
                out[key] = torch.cat([p[key].to(ref[key].dtype) for p in parts])
        # rows were stacked labelled first: put them back in the order of ``indices``
        where = np.concatenate([np.flatnonzero(~is_u), np.flatnonzero(is_u)])
        back = torch.from_numpy(np.argsort(where, kind="stable"))
        out = {k: v[back] for k, v in out.items()}
        out["from_unlabeled"] = torch.from_numpy(is_u.copy())
        return out

    return batch
