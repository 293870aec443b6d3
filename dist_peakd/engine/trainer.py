"""The loop a stage's recipe drives: epochs of exact-resume steps, dev evaluation, best/final export.

The stage's own file holds the training step (the batch, forward, loss, ``engine.backward``,
``engine.step``); the trainer hands it the steps and does everything between them::

    for step in trainer.steps():            # resume; epochs; this rank's micro-batches, prefetched
        for micro in step.micro_batches:    # a weight-0 stand-in where this rank's share is empty
            ...forward, loss, engine.backward(loss, micro.weight), result = engine.step(sync=step.sync)
        trainer.end_step(step, result)      # log (read from the device on logging steps only)
    return trainer.finish()                 # [evaluate] -> export final/ -> summary.json

Between two steps (when ``steps()`` resumes): [evaluate] -> hooks.on_step_end -> checkpoint cadence and
stop requests (preemption); at an epoch's end: evaluate -> checkpoint.

Everything needed to resume exactly (model, optimizer, scheduler, epoch and position in it, RNG
states, best metric, history) lives in ``<output_dir>/checkpoints/<tag>`` (:mod:`.checkpoints`).
Checkpoints are written at the end of every epoch, every ``save_every_steps`` steps and on a stop
request (``stop_after_steps``, or SIGTERM on any rank: :mod:`.preemption`); the newest
``keep_checkpoints`` complete ones are kept, and all of them are removed once the run has ended and
``summary.json`` is written (``keep_checkpoints_after_success`` keeps them). ``final/`` shares the
files it has in common with ``best/`` (hard links: the last evaluation is often the best). A hook may
end the run early (:class:`~dist_peakd.errors.EarlyStopped`, a sweep's ASHA): ``steps()`` ends, and
``finish()`` returns the ``summary.json`` marked ``"stopped"`` (``best/`` kept, no ``final/``).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import console
from ..artifacts import atomic_write_text
from ..errors import EarlyStopped, Preempted, StopRequested, TooManySkippedSteps
from ..integrity import link_identical_files
from ..layout import BEST, CHECKPOINTS, FINAL, SUMMARY, TRAIN_LOG
from .checkpoints import prune_checkpoints, select_checkpoint
from .distributed import barrier, decide_on_rank0
from .engine import Engine
from .hooks import plugin_hooks
from .loop_spec import Batch, LoopOptions, TrainData
from .preemption import SigtermFlag, any_rank
from .prefetch import Prefetcher
from .tracking import Tracker
from .train_log import TrainLog

CHECKPOINT_DIR = CHECKPOINTS


def _on_terminal() -> bool:
    """Progress bars redraw on a terminal; in a log file (or a Ray worker's output) the training bar writes
    a line a minute and the evaluation bar none (each evaluation prints its metrics anyway)."""
    return sys.stderr.isatty()


@dataclass
class Evaluation:
    """How a stage scores its dev split: ``predict_fn(model, batch)`` per-example outputs, ``metric_fn(gathered
    outputs)`` the metrics, of which ``main_metric`` picks ``best/``."""

    predict_fn: Callable[[Any, Batch], Batch]
    metric_fn: Callable[[dict[str, np.ndarray]], dict[str, float]]
    main_metric: str
    higher_is_better: bool = True


@dataclass
class MicroBatch:
    """One micro-batch of this rank's share of a step: collated rows (with what the stage's ``batch_hook``
    added, e.g. cached teacher outputs), on the host; ``weight`` = :meth:`Engine.micro_weight` of the
    global batch, 0 for the stand-in batch of an empty share."""

    batch: Batch
    weight: float


@dataclass
class Step:
    """One optimizer step: its number (1-based), this rank's micro-batches (exactly the engine's
    accumulation steps), their token count, and ``sync`` (a logging step: read its values from the device)."""

    number: int
    micro_batches: list[MicroBatch]
    tokens: float
    sync: bool


class Trainer:
    """The loop around a stage's training step (see the module docstring); :meth:`finish` returns the summary.

    ``evaluation`` scores the dev split; ``export_fn(folder, info)`` writes ``best/`` and ``final/``;
    ``batch_hook(batch)`` (optional) adds to each train micro-batch in the prefetch thread; ``hooks``
    (and those of ``DIST_PEAKD_PLUGINS``, see :mod:`.hooks`) are called on every rank.
    """

    def __init__(self, engine: Engine, data: TrainData, evaluation: Evaluation, output_dir: str | Path,
                 tracker: Tracker, options: LoopOptions, export_fn: Callable[[Path, dict[str, Any]], None],
                 extra_summary: dict[str, Any] | None = None, hooks: Iterable[Any] = (),
                 batch_hook: Callable[[Batch], Batch] | None = None) -> None:
        self.engine, self.data, self.evaluation = engine, data, evaluation
        self.output_dir = Path(output_dir)
        self.ckpt_root = self.output_dir / CHECKPOINT_DIR
        self.tracker, self.options, self.export_fn = tracker, options, export_fn
        self.extra_summary = dict(extra_summary or {})
        self.hooks = [*hooks, *plugin_hooks()]
        self.batch_hook = batch_hook
        self.is_main = engine.dist.is_main
        self.steps_per_epoch = len(data.train_sampler)
        self.total_steps = engine.total_steps
        self.train_batch, self.eval_batch = data.batches_of(data.train_rows), data.batches_of(data.eval_rows)
        self.dummy = self.train_batch([0])  # the zero-weight stand-in of an empty share
        self._hooked_dummy: Batch | None = None
        self.state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "best": None, "best_step": None,
                                      "history": [], "finished": False, "nonfinite_skipped": 0}
        self.stop_signal = SigtermFlag()
        self.log = TrainLog(self.output_dir / TRAIN_LOG, tracker, self.is_main)
        self.label = options.label or self.output_dir.name
        self._bar: Any = None
        self._stopped: dict[str, Any] | None = None  # the summary of a run a hook ended early
        self.start_step = 0

    # ------------------------------------------------------------------ the loop
    def steps(self) -> Iterator[Step]:
        """Resume (if a checkpoint exists), then yield each remaining step of the run; the stage trains it
        and calls :meth:`end_step`. A hook's :class:`EarlyStopped` ends the iteration (see :meth:`finish`)."""
        self.resume()
        self.start_step = self.engine.global_step  # stop_after_steps counts the steps of this run
        self.log.resume_at(self.engine.global_step)  # rows an interrupted run logged after its checkpoint
        self.log.restart()
        self._bar = tqdm(total=self.total_steps, initial=self.engine.global_step, desc=f"{self.label} train",
                         disable=not self.is_main, dynamic_ncols=True, mininterval=0.1 if _on_terminal() else 60)
        try:
            with self.stop_signal:
                while self._steps_left():
                    yield from self.epoch_steps()
        except EarlyStopped as stop:
            if self.engine.global_step < self.total_steps:
                self._stopped = self.stopped_early(stop)
        finally:
            self._bar.close()

    def _steps_left(self) -> bool:
        return not self.state["finished"] and self.engine.global_step < self.total_steps

    def epoch_steps(self) -> Iterator[Step]:
        """The rest of the current epoch's steps (up to the run's last one); after each: :meth:`_after_step`;
        at the epoch's end: evaluate and checkpoint."""
        epoch = self.state["epoch"]
        sampler = self.data.train_sampler
        sampler.set_epoch(epoch)
        shares = list(sampler)
        global_sizes = [len(b) for b in sampler.global_batches(epoch)]
        first = self.state["step_in_epoch"]
        prefetch = Prefetcher(lambda i: self._prepare(shares[i], global_sizes[i]), first, self.steps_per_epoch)
        try:
            for i in range(first, self.steps_per_epoch):
                if self.engine.global_step >= self.total_steps:
                    return  # a fractional epoch: the run's last step came first
                micro, tokens = prefetch.get(i)
                number = self.engine.global_step + 1
                self.engine.train()
                yield Step(number, micro, tokens, number % self.options.log_every_steps == 0 or number == self.total_steps)
                if self.engine.global_step != number:
                    raise RuntimeError(f"step {number} was not trained (engine.step at its last micro-batch)")
                self.state["step_in_epoch"] = i + 1
                self._after_step(epoch)
        finally:
            prefetch.close()
        self.state["epoch"], self.state["step_in_epoch"] = epoch + 1, 0
        with self.log.paused():
            self._record_eval(self.evaluate(), epoch + 1)
            self.checkpoint()

    def end_step(self, step: Step, result: dict[str, Any]) -> None:
        """Log a trained step (``result``: what :meth:`Engine.step` returned at its last micro-batch).

        Only logging steps (and the last) read values from the device; in between a non-finite loss is
        caught on the device and raised at the next logging step, evaluation, checkpoint or export
        (:class:`~dist_peakd.engine.nonfinite.DeferredCheck`), naming the step it happened at."""
        self.state["nonfinite_skipped"] = self.state.get("nonfinite_skipped", 0) + int(result.get("skipped", 0))
        result["tokens"] = step.tokens
        grad_norm = result.pop("grad_norm")
        self.log.add(result)
        self._bar.update(1)
        if step.sync:
            scalars = self.log.write(step.number, self.engine.lr(), grad_norm, self.engine.skipped_steps)
            if self.is_main:
                self._bar.set_postfix(loss=f"{scalars.get('train/loss', float('nan')):.4f}")

    def _after_step(self, epoch: int) -> None:
        opts, step = self.options, self.engine.global_step
        if self.engine.options.compile and step == 1:
            console.info(f"--compile: first step compiled in {self.engine.compile_seconds():.1f} s")
        mid_epoch = self.state["step_in_epoch"] < self.steps_per_epoch
        if opts.eval_every_steps and step % opts.eval_every_steps == 0 and mid_epoch:
            with self.log.paused():
                self._record_eval(self.evaluate(), epoch + self.state["step_in_epoch"] / self.steps_per_epoch)
        for hook in self.hooks:
            if hasattr(hook, "on_step_end"):
                hook.on_step_end(self)
        self.maybe_checkpoint()

    def maybe_checkpoint(self) -> None:
        """After a step: on a stop request checkpoint and raise (:class:`Preempted` for SIGTERM on any
        rank, :class:`StopRequested` for ``stop_after_steps``); every ``save_every_steps`` checkpoint."""
        opts, step = self.options, self.engine.global_step
        preempted = any_rank(self.stop_signal.requested)
        if preempted or self._stop_requested(step):
            path = self.checkpoint()
            self.tracker.flush()
            if preempted:
                raise Preempted(f"preempted (SIGTERM) after step {step}; checkpoint at {path}", path)
            raise StopRequested(f"stopped after step {step} of {self.total_steps} ({step - self.start_step} steps "
                                f"this run, --stop_after_steps {opts.stop_after_steps}); checkpoint at {path}", path)
        mid_epoch = self.state["step_in_epoch"] < self.steps_per_epoch
        if opts.save_every_steps and step % opts.save_every_steps == 0 and mid_epoch and step < self.total_steps:
            with self.log.paused():
                self.checkpoint()

    def _stop_requested(self, step: int) -> bool:
        """``stop_after_steps`` steps ran in this invocation (counted from where it resumed), and the run
        has steps left: a rerun of the same command advances that many steps again; the last step finishes."""
        n = self.options.stop_after_steps
        return n is not None and step - self.start_step >= n and step < self.total_steps

    def _prepare(self, share: list[int], global_count: int) -> tuple[list[MicroBatch], float]:
        """This rank's micro-batches for one step (collated, hooked, pinned; an empty one replaced by the
        stand-in with weight 0) and its token count. Runs in the prefetch thread."""
        parts = np.array_split(np.asarray(share, dtype=np.int64), self.engine.gradient_accumulation_steps)
        micro = [self.train_batch(chunk) for chunk in parts]
        tokens = float(sum(int(m["attention_mask"].sum()) for m in micro))
        hook = self.batch_hook
        if hook is not None:
            micro = [hook(m) if m["input_ids"].shape[0] else m for m in micro]
        if self.engine.device.type == "cuda":
            micro = [{k: v.pin_memory() if torch.is_tensor(v) else v for k, v in m.items()} for m in micro]
        weight = self.engine.micro_weight(global_count)
        return [MicroBatch(m, weight) if m["input_ids"].shape[0] else MicroBatch(self._stand_in(), 0.0)
                for m in micro], tokens

    def _stand_in(self) -> Batch:
        """The batch an empty share trains with weight 0 (so every rank takes part in every collective):
        the first train row, with what the batch hook adds (computed once)."""
        if self._hooked_dummy is None:
            self._hooked_dummy = self.dummy if self.batch_hook is None else self.batch_hook(self.dummy)
        return self._hooked_dummy


    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """The dev metrics of the current weights (every rank predicts its share; gathered by id)."""
        self.engine.raise_if_nonfinite()  # never evaluate (nor export) weights after a non-finite loss
        sampler = self.data.eval_sampler
        sampler.set_epoch(0)
        batches = (self.eval_batch(share) for share in
                   tqdm(sampler, desc=f"{self.label} dev", disable=not (self.is_main and _on_terminal()), leave=False))
        return self.evaluation.metric_fn(self.engine.predict(batches, self.evaluation.predict_fn))

    def _record_eval(self, metrics: dict[str, float], epoch: float) -> None:
        """History, TensorBoard, a new ``best/`` when the main metric improved, then the hooks."""
        step = self.engine.global_step
        self.state["history"].append({"step": step, "epoch": round(epoch, 4), **metrics})
        improved = self._is_better(metrics[self.evaluation.main_metric])
        if improved:
            self.state["best"], self.state["best_step"] = metrics[self.evaluation.main_metric], step
        self.tracker.evaluation(step, metrics, best=self.state["best"])
        if self.is_main:
            values = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            tqdm.write(f"[dist-peakd] {self.label} dev, step {step}/{self.total_steps}: {values}"
                       + (" (best so far)" if improved else ""))
        if improved:
            self.export_fn(self.output_dir / BEST, {"step": step, "metrics": metrics})
        for hook in self.hooks:
            if hasattr(hook, "on_eval"):
                hook.on_eval(step, metrics)

    def _is_better(self, value: float) -> bool:
        best = self.state["best"]
        if best is None:
            return True
        return value > best if self.evaluation.higher_is_better else value < best

    # ------------------------------------------------------------------ checkpoints
    def resume(self) -> None:
        """Load the newest intact checkpoint, if any (rank 0 chooses, every rank loads the same tag)."""
        tag, warnings = decide_on_rank0(select_checkpoint, self.ckpt_root, quarantine=True,
                                        trust_unverified=self.options.trust_unverified)
        for w in warnings:
            console.info(f"warning: {w}")
        if tag is not None:
            self.state.update(self.engine.load_state(self.ckpt_root, tag)["loop"])
            console.info(f"resumed from {self.ckpt_root / tag} at step {self.engine.global_step}")

    def checkpoint(self) -> Path:
        """Save the engine and the loop state as ``step-<global step>``; keep the newest ones."""
        self.engine.raise_if_nonfinite()  # never save weights after a non-finite loss
        tag = f"step-{self.engine.global_step:08d}"
        path = self.engine.save_state(self.ckpt_root, tag, {"loop": self.state})
        prune_checkpoints(self.ckpt_root, keep=max(1, self.options.keep_checkpoints), is_main=self.is_main)
        return path

    # ------------------------------------------------------------------ the end
    def _refuse_if_mostly_skipped(self) -> None:
        skipped, total = int(self.state.get("nonfinite_skipped", 0)), max(1, self.engine.global_step)
        limit = self.options.max_skipped_fraction
        if skipped / total > limit:
            raise TooManySkippedSteps(
                f"nan_policy=skip skipped {skipped} of {total} optimizer steps ({skipped / total:.0%} > "
                f"max_skipped_fraction {limit:g}): the run is not finished, so no final/ export or summary.json "
                f"was written ({self.output_dir}); lower the learning rate or check the data, or raise "
                "--max_skipped_fraction")

    def finish(self) -> dict[str, Any]:
        """Evaluate the last weights (unless just done), export ``final/``, write ``summary.json``, remove
        the checkpoints (unless kept).

        A run that skipped more than ``max_skipped_fraction`` of its steps (``nan_policy=skip``) is not
        finished: :class:`TooManySkippedSteps` (exit 3), no ``final/``, no summary. A run a hook ended early
        returns the summary :meth:`stopped_early` wrote.
        """
        if self._stopped is not None:
            return self._stopped
        self.engine.raise_if_nonfinite()
        self._refuse_if_mostly_skipped()
        step = self.engine.global_step
        if not self.state["history"] or self.state["history"][-1]["step"] != step:
            try:
                self._record_eval(self.evaluate(),
                                  self.state["epoch"] + self.state["step_in_epoch"] / max(1, self.steps_per_epoch))
            except EarlyStopped:  # a scheduler's stop at the last evaluation: the run is complete anyway
                pass
        final_metrics = {k: v for k, v in self.state["history"][-1].items() if k not in ("step", "epoch")}
        self.export_fn(self.output_dir / FINAL, {"step": step, "metrics": final_metrics})
        if self.is_main and (self.output_dir / BEST).is_dir():
            link_identical_files(self.output_dir / FINAL, self.output_dir / BEST)
        summary = self.summary()
        keep = self.options.keep_checkpoints_after_success
        if keep and not self.state["finished"]:
            self.state["finished"] = True
            self.checkpoint()
        self._write_summary(summary)
        if not keep:
            self.remove_checkpoints()
        return summary

    def stopped_early(self, stop: EarlyStopped) -> dict[str, Any]:
        """A hook ended the run after an evaluation: ``summary.json`` marked ``stopped``, ``best/`` kept,
        no ``final/``; the checkpoints are removed (unless kept)."""
        summary = self.summary(stopped={"step": stop.step, "by": stop.by})
        console.info(f"{self.label}: stopped by {stop.by} after step {stop.step} of {self.total_steps}")
        self._write_summary(summary)
        if not self.options.keep_checkpoints_after_success:
            self.remove_checkpoints()
        return summary

    def summary(self, stopped: dict[str, Any] | None = None) -> dict[str, Any]:
        """``summary.json``: main metric, the last (``final``) and the best evaluation, history, steps."""
        history = self.state["history"]
        last = history[-1]
        summary = {
            "main_metric": self.evaluation.main_metric,
            "final": {"step": last["step"], **{k: v for k, v in last.items() if k not in ("step", "epoch")}},
            "best": dict(next(h for h in history if h["step"] == self.state["best_step"])),
            "history": history,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "skipped_steps": self.engine.skipped_steps,
            **({"compile_s": round(self.engine.compile_seconds(), 1)} if self.engine.options.compile else {}),
            **self.extra_summary,
        }
        if stopped is not None:
            summary["stopped"] = stopped
        return summary

    def _write_summary(self, summary: dict[str, Any]) -> None:
        if self.is_main:
            atomic_write_text(self.output_dir / SUMMARY, json.dumps(summary, indent=2))
        self.tracker.flush()

    def remove_checkpoints(self) -> None:
        """Delete ``checkpoints/`` (after ``summary.json``: the run is complete and is never resumed)."""
        barrier()
        if self.engine.dist.local_rank == 0:  # one process per node (a node-local checkpoint folder too)
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
        barrier()
