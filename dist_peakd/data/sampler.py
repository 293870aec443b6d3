"""Distributed, length-grouped, resumable batch sampler."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np


class LengthGroupedBatchSampler:
    """Batch sampler for training and evaluation on ``num_replicas`` data-parallel ranks.

    Semantics:

    * **Global batches** depend only on ``(lengths, global_batch_size, seed, epoch, shuffle,
      group_by_length, mega_batch_factor, longest_first)``, never on ``num_replicas``/``rank``: a
      1-rank and a 2-rank run see the same global batches (:meth:`global_batches`).
    * ``shuffle=True``: a permutation from ``numpy.random.default_rng([seed, epoch])``. With
      ``group_by_length`` it is cut into mega-batches of ``mega_batch_factor * global_batch_size``
      rows, each sorted by length (descending, stable), the result is cut into global batches and the
      order of the *full* global batches is shuffled with the same generator; the partial batch (if
      any) stays last. ``longest_first=True`` then moves the batch holding the longest row to the
      front (out-of-memory shows up at step 0; the partial batch may then come first).
      Without ``group_by_length`` the permutation is simply cut into batches.
    * ``shuffle=False``: sequential order, or, with ``group_by_length``, all rows sorted by length
      descending (stable) -- the least padding, meant for evaluation.
    * **Remainder**: nothing is dropped or duplicated. The last global batch has
      ``len(lengths) % global_batch_size`` rows when that is non-zero.
    * **Rank shares**: each global batch is split into ``num_replicas`` contiguous parts whose sizes
      differ by at most one (as ``numpy.array_split``: the first ``len % num_replicas`` ranks get
      one more); rank ``r`` yields part ``r``. Every row is seen exactly once per epoch across ranks.
      A batch with fewer rows than ranks gives some ranks an **empty list** for that step; every
      rank still takes the step (``len(sampler)`` is the same everywhere), so the training loop
      must run an empty share as a zero-weight step (and should weight each rank's loss by its
      share size over the global batch size).
    * **Resume**: ``state_dict()`` is ``{"epoch", "start_step"}``; after ``load_state_dict`` the
      next ``__iter__`` starts at ``start_step`` of that epoch (later iterations are full epochs).
      ``set_epoch`` with the epoch already set keeps a pending resume offset. ``start_step`` is
      the number of steps handed out by the current iterator, which exceeds the steps actually
      trained when a ``DataLoader`` prefetches: pass ``consumed_steps`` to ``state_dict`` then.
    """

    def __init__(self, lengths: Sequence[int], global_batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True, group_by_length: bool = True, mega_batch_factor: int = 50,
                 longest_first: bool = False) -> None:
        arr = np.asarray(lengths)
        if arr.ndim != 1:
            raise ValueError(f"lengths must be a 1-D sequence of ints, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"lengths must be integers, got dtype {arr.dtype}")
        if arr.size and arr.min() < 0:
            raise ValueError("lengths must be non-negative")
        for name, value, low in (("global_batch_size", global_batch_size, 1), ("num_replicas", num_replicas, 1),
                                 ("mega_batch_factor", mega_batch_factor, 1)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be an int with 0 <= rank < num_replicas={num_replicas}, got {rank!r}")
        self.lengths = arr.astype(np.int64)
        self.global_batch_size = int(global_batch_size)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.group_by_length = bool(group_by_length)
        self.mega_batch_factor = int(mega_batch_factor)
        self.longest_first = bool(longest_first)
        self.epoch = 0
        self._start_step = 0  # pending resume offset for the next __iter__
        self._yielded = 0  # steps handed out in self.epoch (incl. a resume offset)

    def __len__(self) -> int:
        """Number of global batches (optimizer steps) per epoch; the same on every rank."""
        return -(-len(self.lengths) // self.global_batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (reshuffles); switching to another epoch drops a pending resume offset."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self._start_step = 0
            self._yielded = 0

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        b = self.global_batch_size
        return [order[i:i + b] for i in range(0, len(order), b)]

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All global batches of ``epoch`` (default: the current one) as lists of row indices."""
        epoch = self.epoch if epoch is None else int(epoch)
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable") if self.group_by_length else np.arange(n)
            return [b.tolist() for b in self._cut(order)]
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(n)
        if not self.group_by_length:
            return [b.tolist() for b in self._cut(perm)]
        mega = self.mega_batch_factor * self.global_batch_size
        chunks = [perm[i:i + mega] for i in range(0, n, mega)]
        order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks]) if chunks else perm
        batches = self._cut(order)
        tail = [batches.pop()] if batches and len(batches[-1]) < self.global_batch_size else []
        batches = [batches[i] for i in rng.permutation(len(batches))] + tail
        if self.longest_first and batches:
            j = int(np.argmax([self.lengths[b].max() for b in batches]))
            batches.insert(0, batches.pop(j))
        return [b.tolist() for b in batches]

    def rank_share(self, global_batch: Sequence[int]) -> list[int]:
        """This rank's contiguous part of a global batch (``numpy.array_split`` sizes; may be empty)."""
        return rank_share(global_batch, self.num_replicas, self.rank)

    def iter_from(self, start_step: int = 0) -> Iterator[list[int]]:
        """Yield this rank's share of each global batch of the current epoch from ``start_step`` on."""
        if not 0 <= start_step <= len(self):
            raise ValueError(f"start_step must be in [0, {len(self)}], got {start_step}")
        batches = self.global_batches(self.epoch)
        self._yielded = start_step

        def gen() -> Iterator[list[int]]:
            for step in range(start_step, len(batches)):
                self._yielded = step + 1
                yield self.rank_share(batches[step])

        return gen()

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start_step = self._start_step, 0
        return self.iter_from(start)

    def state_dict(self, consumed_steps: int | None = None) -> dict[str, int]:
        """``{"epoch", "start_step"}``; ``start_step`` defaults to the steps handed out so far this epoch."""
        start = self._yielded if consumed_steps is None else int(consumed_steps)
        return {"epoch": self.epoch, "start_step": start}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume: the next ``__iter__`` continues epoch ``state["epoch"]`` at ``state["start_step"]``."""
        start = int(state["start_step"])
        if not 0 <= start <= len(self):
            raise ValueError(f"start_step must be in [0, {len(self)}], got {start}")
        self.epoch = int(state["epoch"])
        self._start_step = start
        self._yielded = start


def rank_share(global_batch: Sequence[int], num_replicas: int, rank: int) -> list[int]:
    """Part ``rank`` of ``num_replicas`` contiguous parts of a global batch (``numpy.array_split`` sizes)."""
    q, rem = divmod(len(global_batch), num_replicas)
    start = rank * q + min(rank, rem)
    return list(global_batch[start:start + q + (1 if rank < rem else 0)])


def length_run_batches(lengths: Sequence[int], max_rows: int | Callable[[int], int],
                       min_fill: float = 0.5) -> list[list[int]]:
    """Inference batches with little or no padding: every row once, sorted by length (descending, stable).

    Each batch takes up to ``max_rows`` rows (or ``max_rows(L)`` for a batch whose longest row has
    length ``L``: a memory budget); where that would mix lengths it ends instead at the first change of
    length that still leaves it at least ``ceil(min_fill * cap)`` rows, so the next batch starts on a new
    length. A length with enough rows thus gets batches of that length alone: no padding, so no
    attention mask (Hugging Face drops an all-ones mask); the rare lengths of a long tail are still
    batched together. The batches depend only on the lengths and the arguments (not on ranks).
    """
    arr = np.asarray(lengths, dtype=np.int64)
    if not callable(max_rows) and (not isinstance(max_rows, (int, np.integer)) or isinstance(max_rows, bool)
                                   or max_rows < 1):
        raise ValueError(f"max_rows must be an int >= 1 or a function of the length, got {max_rows!r}")
    cap_of = max_rows if callable(max_rows) else (lambda _length: int(max_rows))
    if not 0.0 <= min_fill <= 1.0:
        raise ValueError(f"min_fill must be in [0, 1], got {min_fill!r}")
    order = np.argsort(-arr, kind="stable")
    sorted_len = arr[order]
    # where a new length begins (in sorted order): a batch ends early only there
    starts = np.flatnonzero(np.r_[True, sorted_len[1:] != sorted_len[:-1]])
    batches, i, n = [], 0, len(order)
    while i < n:
        cap = int(cap_of(int(sorted_len[i])))
        if cap < 1:
            raise ValueError(f"max_rows({int(sorted_len[i])}) must be >= 1, got {cap}")
        end = min(i + cap, n)
        floor = max(1, int(np.ceil(min_fill * cap)))
        k = int(np.searchsorted(starts, i + floor, side="left"))  # first length change at or after i + floor
        if k < len(starts) and starts[k] < end:
            end = int(starts[k])
        batches.append(order[i:end].tolist())
        i = end
    return batches
