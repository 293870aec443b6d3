"""The training loop every stage shares: epochs of exact-resume steps, dev evaluation, best/final export.

A stage supplies its data, a loss function (summed loss per micro-batch), a predict function and a
metric function; the loop owns the order of events:

    for epoch: for step: train_step -> log -> [evaluate -> export best] -> [checkpoint] -> [stop?]
    end: export final, write summary.json

Everything needed to resume exactly (model, optimizer, scheduler, sampler epoch/position, RNG
states, best metric, history) lives in ``<output_dir>/checkpoints/<tag>``. Checkpoints are written at
the end of every epoch, every ``save_every_steps`` steps, and on a stop request; the newest
``keep_checkpoints`` complete ones are kept, and a resume takes the newest intact one (a corrupted
one is reported, set aside as ``.corrupt-<tag>``, and the previous one is used).

SIGTERM on any rank (the deepspeed launcher forwards it to every rank, one after the other) becomes
"checkpoint at the next step boundary, then raise :class:`Preempted`": the ranks agree on the
request with an all-reduce MAX after every step, so all of them take part in the checkpoint even
when the signal reached only one.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .distributed import broadcast_object
from .engine import Engine, LossOutput, atomic_write_text
from .faults import CheckpointCorruptError, Preempted, StopRequested, inject_faults
from .tracking import Tracker

__all__ = ["CHECKPOINT_DIR", "LoopOptions", "Preempted", "StopRequested", "total_train_steps", "train_loop"]

CHECKPOINT_DIR = "checkpoints"


@dataclass
class LoopOptions:
    """Options of the shared training loop (every stage has them, with these names)."""

    epochs: float = 3.0
    seed: int = 0
    eval_batch_size: int = 128
    eval_every_steps: int = 0          # 0: evaluate at the end of each epoch only
    log_every_steps: int = 10
    stop_after_steps: int | None = None  # checkpoint and stop after this many steps (resume later)
    save_every_steps: int = 0          # 0: checkpoint at epoch ends (and on stop requests) only
    keep_checkpoints: int = 2          # newest complete checkpoints kept (a corrupted one falls back)


def fetch_rows(dataset: Any, indices: Sequence[int]) -> list[dict[str, Any]]:
    """Rows of an HF ``Dataset`` (or a list of dicts) as a list of dicts, in the given order."""
    if len(indices) == 0:
        return []
    if isinstance(dataset, list):
        return [dataset[i] for i in indices]
    cols = dataset[list(map(int, indices))]
    keys = list(cols.keys())
    return [dict(zip(keys, vals, strict=True)) for vals in zip(*(cols[k] for k in keys), strict=True)]


def _any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is set on at least one (all-reduce MAX)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    vec = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(vec, op=dist.ReduceOp.MAX)
    return bool(int(vec.item()))


def _allreduce_sums(values: dict[str, float], keys: list[str]) -> dict[str, float]:
    vec = torch.tensor([values.get(k, 0.0) for k in keys], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":  # NCCL reduces device tensors only
            vec = vec.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(vec)
        vec = vec.cpu()
    return dict(zip(keys, vec.tolist(), strict=True))


class _Prefetcher:
    """Prepares the next steps' batches in one background thread while the current step runs.

    Batch preparation (Arrow reads, collation, teacher-cache lookups, pinning) is pure data work with
    no randomness, so doing it ahead changes nothing but the wall time.
    """

    DEPTH = 2

    def __init__(self, make: Callable[[int], Any], start: int, stop: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._make, self._stop = make, stop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dist-peakd-prefetch")
        self._futures: dict[int, Any] = {}
        for i in range(start, min(stop, start + self.DEPTH)):
            self._futures[i] = self._pool.submit(make, i)

    def get(self, i: int) -> Any:
        future = self._futures.pop(i, None) or self._pool.submit(self._make, i)
        nxt = i + self.DEPTH
        if nxt < self._stop and nxt not in self._futures:
            self._futures[nxt] = self._pool.submit(self._make, nxt)
        return future.result()

    def close(self) -> None:
        for f in self._futures.values():
            f.cancel()
        self._pool.shutdown(wait=True)


class _SigtermFlag:
    """Turns SIGTERM into a 'checkpoint at the next step boundary, then stop' request."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _SigtermFlag:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. inside some Ray workers)
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train_loop(
    *,
    engine: Engine,
    train_rows: Any,
    train_sampler: Any,
    eval_rows: Any,
    eval_sampler: Any,
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], LossOutput],
    predict_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    metric_fn: Callable[[dict[str, np.ndarray]], dict[str, float]],
    main_metric: str,
    output_dir: str | Path,
    tracker: Tracker,
    options: LoopOptions,
    export_fn: Callable[[Path, dict[str, Any]], None],
    higher_is_better: bool = True,
    extra_summary: dict[str, Any] | None = None,
    batch_hook: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train with exact resume, evaluate on dev, export ``best/`` and ``final/``; return the summary.

    ``on_eval(step, metrics)``, when given, is called on every rank after each evaluation (after the
    ``best/`` export), e.g. to report metrics to a hyperparameter tuner.
    """
    output_dir = Path(output_dir)
    ckpt_root = output_dir / CHECKPOINT_DIR
    is_main = engine.dist.is_main
    steps_per_epoch = len(train_sampler)
    total_steps = engine.total_steps
    ga = engine.gradient_accumulation_steps
    dummy = collate(fetch_rows(train_rows, [0]))

    state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "best": None, "best_step": None,
                             "history": [], "finished": False}
    choice: Any = None
    if is_main:
        try:
            tag, warnings = Engine.select_checkpoint(ckpt_root, quarantine=True)
            for w in warnings:
                print(f"[dist-peakd] warning: {w}", flush=True)
            choice = ("ok", tag)
        except CheckpointCorruptError as e:
            choice = ("corrupt", e)
    status, value = broadcast_object(choice)
    if status == "corrupt":
        raise value
    tag = value
    if tag is not None:
        state.update(engine.load_state(ckpt_root, tag)["loop"])
        if is_main:
            print(f"[dist-peakd] resumed from {ckpt_root / tag} at step {engine.global_step}", flush=True)

    def evaluate() -> dict[str, float]:
        eval_sampler.set_epoch(0)
        batches = (collate(fetch_rows(eval_rows, share)) for share in
                   tqdm(eval_sampler, desc="eval", disable=not is_main, leave=False))
        preds = engine.predict(batches, predict_fn)
        return metric_fn(preds)

    def checkpoint() -> Path:
        tag_name = f"step-{engine.global_step:08d}"
        path = engine.save_state(ckpt_root, tag_name, {"loop": state})
        engine.prune_checkpoints(ckpt_root, keep=max(1, options.keep_checkpoints))
        return path

    def is_better(value: float) -> bool:
        if state["best"] is None:
            return True
        return value > state["best"] if higher_is_better else value < state["best"]

    def after_eval(metrics: dict[str, float], epoch_float: float) -> None:
        record = {"step": engine.global_step, "epoch": round(epoch_float, 4), **metrics}
        state["history"].append(record)
        tracker.scalars({f"eval/{k}": v for k, v in metrics.items()}, engine.global_step)
        if is_main:
            print(f"[dist-peakd] eval step {engine.global_step}: {json.dumps(metrics)}", flush=True)
        value = metrics[main_metric]
        if is_better(value):
            state["best"], state["best_step"] = value, engine.global_step
            export_fn(output_dir / "best", {"step": engine.global_step, "metrics": metrics})
        if on_eval is not None:
            on_eval(engine.global_step, metrics)

    pin = engine.device.type == "cuda"

    def prepare(share: Sequence[int]) -> tuple[list[dict[str, torch.Tensor]], float]:
        """This rank's micro-batches for one step (collated, hooked, pinned) and its token count."""
        micro = [collate(fetch_rows(train_rows, list(chunk)))
                 for chunk in np.array_split(np.asarray(share, dtype=np.int64), ga)]
        tokens = float(sum(int(m["attention_mask"].sum()) for m in micro))
        if batch_hook is not None:
            micro = [batch_hook(m) if m["input_ids"].shape[0] else m for m in micro]
        if pin:
            micro = [{k: v.pin_memory() if torch.is_tensor(v) else v for k, v in m.items()} for m in micro]
        return micro, tokens

    log_keys: list[str] | None = None
    window: dict[str, float] = {}
    window_start = time.perf_counter()
    paused = [0.0]  # seconds of evaluation/checkpointing inside the current logging window

    def timed(fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            paused[0] += time.perf_counter() - t0
    bar = tqdm(total=total_steps, initial=engine.global_step, desc="train", disable=not is_main,
               dynamic_ncols=True)
    with _SigtermFlag() as sigterm:
        while not state["finished"] and engine.global_step < total_steps:
            epoch = state["epoch"]
            train_sampler.set_epoch(epoch)
            shares = list(train_sampler)
            global_sizes = [len(b) for b in train_sampler.global_batches(epoch)]
            first_step = state["step_in_epoch"]
            prefetch = _Prefetcher(lambda i, shares=shares: prepare(shares[i]), first_step, steps_per_epoch)
            try:
                for step_in_epoch in range(first_step, steps_per_epoch):
                    if engine.global_step >= total_steps:
                        break
                    global_count = global_sizes[step_in_epoch]
                    micro, tokens = prefetch.get(step_in_epoch)
                    sums = engine.train_step(micro, global_count, loss_fn, dummy_batch=dummy)
                    sums["tokens"] = tokens
                    grad_norm = sums.pop("grad_norm")
                    for k, v in sums.items():
                        window[k] = window.get(k, 0.0) + v
                    window["steps"] = window.get("steps", 0.0) + 1
                    state["step_in_epoch"] = step_in_epoch + 1
                    bar.update(1)
                    if engine.global_step % options.log_every_steps == 0 or engine.global_step == total_steps:
                        log_keys = log_keys or sorted(window)
                        red = _allreduce_sums(window, log_keys)
                        elapsed = max(1e-9, time.perf_counter() - window_start - paused[0])
                        count = max(1.0, red["count"])
                        scalars = {f"train/{k}": red[k] / count for k in log_keys
                                   if k not in ("count", "tokens", "steps", "skipped")}
                        scalars.update({"train/lr": engine.lr(), "train/grad_norm": float(grad_norm),
                                        "train/samples_per_s": red["count"] / elapsed,
                                        "train/tokens_per_s": red["tokens"] / elapsed,
                                        "train/skipped_steps": float(engine.skipped_steps)})
                        tracker.scalars(scalars, engine.global_step)
                        if is_main:
                            bar.set_postfix(loss=f"{scalars.get('train/loss', float('nan')):.4f}")
                            with open(output_dir / "train_log.jsonl", "a") as f:
                                f.write(json.dumps({"step": engine.global_step, **scalars}) + "\n")
                        window, window_start, paused[0] = {}, time.perf_counter(), 0.0
                    if options.eval_every_steps and engine.global_step % options.eval_every_steps == 0 \
                            and state["step_in_epoch"] < steps_per_epoch:
                        timed(lambda: after_eval(evaluate(), epoch + state["step_in_epoch"] / steps_per_epoch))  # noqa: B023
                    inject_faults(engine.dist.rank, engine.global_step, lambda: sigterm.requested)
                    preempted = _any_rank(sigterm.requested)
                    stop_now = preempted or (
                        options.stop_after_steps is not None and engine.global_step >= options.stop_after_steps)
                    if stop_now:
                        path = checkpoint()
                        tracker.flush()
                        if preempted:
                            raise Preempted(f"preempted (SIGTERM) after step {engine.global_step}; checkpoint at {path}",
                                            path)
                        raise StopRequested(f"stopped after step {engine.global_step}; checkpoint at {path}", path)
                    if options.save_every_steps and engine.global_step % options.save_every_steps == 0 \
                            and state["step_in_epoch"] < steps_per_epoch and engine.global_step < total_steps:
                        timed(checkpoint)
                else:
                    state["epoch"], state["step_in_epoch"] = epoch + 1, 0
                    timed(lambda: after_eval(evaluate(), epoch + 1))  # noqa: B023
                    timed(checkpoint)
                    continue
            finally:
                prefetch.close()
            break  # total_steps reached inside an epoch (fractional epochs)
    bar.close()
    if not state["history"] or state["history"][-1]["step"] != engine.global_step:
        after_eval(evaluate(), state["epoch"] + state["step_in_epoch"] / max(1, steps_per_epoch))
    final_metrics = {k: v for k, v in state["history"][-1].items() if k not in ("step", "epoch")}
    export_fn(output_dir / "final", {"step": engine.global_step, "metrics": final_metrics})
    best_record = next(h for h in state["history"] if h["step"] == state["best_step"])
    summary = {
        "main_metric": main_metric,
        "final": {"step": engine.global_step, **final_metrics},
        "best": {k: v for k, v in best_record.items()},
        "history": state["history"],
        "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "skipped_steps": engine.skipped_steps,
        **(extra_summary or {}),
    }
    if not state["finished"]:
        state["finished"] = True
        checkpoint()
    if is_main:
        atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2))
    tracker.flush()
    return summary


def total_train_steps(steps_per_epoch: int, epochs: float) -> int:
    """Optimizer steps for ``epochs`` (fractional epochs round up to a whole step)."""
    return max(1, math.ceil(steps_per_epoch * epochs))
