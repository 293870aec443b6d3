"""The trainer's logging window: sums over the steps since the last log, reduced over ranks, written out.

Every ``log_every_steps`` steps the summed loss terms are all-reduced and divided by the examples
seen, then written as ``train/*`` scalars to TensorBoard and (rank 0) as one line of
``train_log.jsonl``. Throughput excludes the time spent evaluating and checkpointing (:meth:`paused`).
Steps skipped for a non-finite loss (``nan_policy=skip``) count in ``train/skipped_in_window`` and add
no examples: a window of skipped steps only has no loss (never a loss of 0.0). After a resume the rows
an interrupted run wrote after its checkpoint are dropped (:meth:`TrainLog.resume_at`): one row per step.
A step's sums may be device scalars (a step trained without a host sync): they are summed on the
device and read once, when the window is written.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..artifacts import atomic_write_text, writing
from .tracking import Tracker

#: Window entries that are counters, not loss terms (never divided into a train/<term> scalar).
COUNTERS = ("count", "tokens", "steps", "skipped")


def allreduce_sums(values: dict[str, float], keys: list[str]) -> dict[str, float]:
    """``values[k]`` summed over ranks for every ``k`` in ``keys`` (float64; missing keys count 0)."""
    vec = torch.tensor([values.get(k, 0.0) for k in keys], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":  # NCCL reduces device tensors only
            vec = vec.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(vec)
        vec = vec.cpu()
    return dict(zip(keys, vec.tolist(), strict=True))


class TrainLog:
    """Accumulates each step's sums; :meth:`write` turns the window into scalars and starts a new one."""

    def __init__(self, path: Path, tracker: Tracker, is_main: bool) -> None:
        self.path, self.tracker, self.is_main = Path(path), tracker, is_main
        self.keys: list[str] | None = None  # fixed at the first write: every rank reduces the same vector
        self.restart()

    def restart(self) -> None:
        """Start a new, empty window now."""
        self.window: dict[str, float] = {}
        self.started = time.perf_counter()
        self.paused_s = 0.0

    def resume_at(self, step: int) -> None:
        """Rank 0: keep only the rows of ``train_log.jsonl`` up to ``step`` (the step resumed from)."""
        if not self.is_main or not self.path.is_file():
            return
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                row_step = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):  # a torn last line of a killed run
                row_step = step + 1
            if row_step <= step:
                kept.append(line + "\n")
            else:
                dropped += 1
        if dropped:
            atomic_write_text(self.path, "".join(kept))

    def add(self, sums: dict[str, Any]) -> None:
        """Add one step's sums (floats, or float64 device scalars: summed without a host read)."""
        for k, v in sums.items():
            self.window[k] = self.window.get(k, 0.0) + v
        self.window["steps"] = self.window.get("steps", 0.0) + 1

    def _read_window(self) -> dict[str, float]:
        """The window as floats: its device scalars read in one go (the log step's host sync)."""
        on_device = [k for k, v in self.window.items() if torch.is_tensor(v)]
        if not on_device:
            return self.window
        values = torch.stack([self.window[k].double() for k in on_device]).tolist()
        return {**self.window, **dict(zip(on_device, values, strict=True))}

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time inside is not counted in the window's throughput (evaluation, checkpoints)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - t0

    def write(self, step: int, lr: float, grad_norm: Any, skipped_steps: int) -> dict[str, float]:
        """Reduce the window over ranks, log its scalars at ``step``, start a new window (collective)."""
        self.keys = self.keys or sorted(self.window)
        red = allreduce_sums(self._read_window(), self.keys)
        elapsed = max(1e-9, time.perf_counter() - self.started - self.paused_s)
        count = red["count"]
        scalars = {f"train/{k}": red[k] / count for k in self.keys if k not in COUNTERS} if count > 0 else {}
        scalars.update({"train/lr": lr, "train/samples_per_s": count / elapsed,
                        "train/tokens_per_s": red["tokens"] / elapsed,
                        "train/skipped_steps": float(skipped_steps)})
        if math.isfinite(float(grad_norm)):  # a skipped step has none
            scalars["train/grad_norm"] = float(grad_norm)
        if red.get("skipped", 0.0) > 0:  # every rank counted each skipped step
            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            scalars["train/skipped_in_window"] = red["skipped"] / world
        self.tracker.scalars(scalars, step)
        if self.is_main:
            with writing(self.path, "training log", "the rows written before are intact"), open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **scalars}) + "\n")
        self.restart()
        return scalars
