"""The trainer every stage uses: epochs of exact-resume steps, dev evaluation, best/final export.

A stage supplies its data (:class:`~.loop_spec.TrainData`), what it trains for
(:class:`~.loop_spec.Objective`: loss, predict, metric) and an export function; the trainer owns the
order of events::

    fit:         resume -> train_epoch ... -> finish
    train_epoch: for each step: train_step -> [evaluate] -> hooks.on_step_end -> maybe_checkpoint
                 at its end: evaluate -> checkpoint
    finish:      [evaluate] -> export final/ -> summary.json

Everything needed to resume exactly (model, optimizer, scheduler, epoch and position in it, RNG
states, best metric, history) lives in ``<output_dir>/checkpoints/<tag>`` (:mod:`.checkpoints`).
Checkpoints are written at the end of every epoch, every ``save_every_steps`` steps and on a stop
request (``stop_after_steps``, or SIGTERM on any rank: :mod:`.preemption`); the newest
``keep_checkpoints`` complete ones are kept, and all of them are removed once the run has ended and
``summary.json`` is written (``keep_checkpoints_after_success`` keeps them). ``final/`` shares the
files it has in common with ``best/`` (hard links: the last evaluation is often the best). A hook may
end the run early (:class:`~dist_peakd.errors.EarlyStopped`, a sweep's ASHA): ``best/`` and a
``summary.json`` marked ``"stopped"`` are kept, no ``final/``.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..artifacts import atomic_write_text
from ..errors import CheckpointCorruptError, EarlyStopped, Preempted, StopRequested, TooManySkippedSteps
from ..integrity import link_identical_files
from ..layout import BEST, CHECKPOINTS, FINAL, SUMMARY, TRAIN_LOG
from .checkpoints import prune_checkpoints, select_checkpoint
from .distributed import barrier, broadcast_object
from .engine import Engine
from .hooks import plugin_hooks
from .loop_spec import Batch, LoopOptions, Objective, TrainData
from .preemption import SigtermFlag, any_rank
from .prefetch import Prefetcher
from .tracking import Tracker
from .train_log import TrainLog

CHECKPOINT_DIR = CHECKPOINTS


def _on_terminal() -> bool:
    """Progress bars redraw on a terminal; in a log file (or a Ray worker's output) the training bar writes
    a line a minute and the evaluation bar none (each evaluation prints its metrics anyway)."""
    return sys.stderr.isatty()


class Trainer:
    """Train ``engine`` on ``data`` for ``objective``; :meth:`fit` returns the summary.

    ``export_fn(folder, info)`` writes ``best/`` and ``final/``; ``hooks`` (and those of
    ``DIST_PEAKD_PLUGINS``, see :mod:`.hooks`) are called on every rank.
    """

    def __init__(self, engine: Engine, data: TrainData, objective: Objective, output_dir: str | Path,
                 tracker: Tracker, options: LoopOptions, export_fn: Callable[[Path, dict[str, Any]], None],
                 extra_summary: dict[str, Any] | None = None, hooks: Iterable[Any] = ()) -> None:
        self.engine, self.data, self.objective = engine, data, objective
        self.output_dir = Path(output_dir)
        self.ckpt_root = self.output_dir / CHECKPOINT_DIR
        self.tracker, self.options, self.export_fn = tracker, options, export_fn
        self.extra_summary = dict(extra_summary or {})
        self.hooks = [*hooks, *plugin_hooks()]
        self.is_main = engine.dist.is_main
        self.steps_per_epoch = len(data.train_sampler)
        self.total_steps = engine.total_steps
        self.train_batch, self.eval_batch = data.batches_of(data.train_rows), data.batches_of(data.eval_rows)
        self.dummy = self.train_batch([0])  # the zero-weight batch of an empty share
        self.state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "best": None, "best_step": None,
                                      "history": [], "finished": False, "nonfinite_skipped": 0}
        self.stop_signal = SigtermFlag()
        self.log = TrainLog(self.output_dir / TRAIN_LOG, tracker, self.is_main)
        self.label = options.label or self.output_dir.name
        self._bar: Any = None
        self.start_step = 0

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Resume (if a checkpoint exists), train the remaining steps, finish; returns the summary."""
        self.resume()
        self.start_step = self.engine.global_step  # stop_after_steps counts the steps of this run
        self.log.resume_at(self.engine.global_step)  # rows an interrupted run logged after its checkpoint
        self.log.restart()
        self._bar = tqdm(total=self.total_steps, initial=self.engine.global_step, desc=f"{self.label} train",
                         disable=not self.is_main, dynamic_ncols=True, mininterval=0.1 if _on_terminal() else 60)
        try:
            with self.stop_signal:
                while self._steps_left() and self.train_epoch():
                    pass
        except EarlyStopped as stop:
            if self.engine.global_step < self.total_steps:
                return self.stopped_early(stop)
        finally:
            self._bar.close()
        return self.finish()

    def _steps_left(self) -> bool:
        return not self.state["finished"] and self.engine.global_step < self.total_steps

    def train_epoch(self) -> bool:
        """Train the rest of the current epoch; True when it ran to its end (evaluated and checkpointed),
        False when the run's last step came first (a fractional epoch)."""
        epoch = self.state["epoch"]
        sampler = self.data.train_sampler
        sampler.set_epoch(epoch)
        shares = list(sampler)
        global_sizes = [len(b) for b in sampler.global_batches(epoch)]
        first = self.state["step_in_epoch"]
        prefetch = Prefetcher(lambda i: self._prepare(shares[i]), first, self.steps_per_epoch)
        try:
            for step in range(first, self.steps_per_epoch):
                if self.engine.global_step >= self.total_steps:
                    return False
                micro, tokens = prefetch.get(step)
                self.train_step(micro, tokens, global_sizes[step])
                if self.engine.options.compile and self.engine.global_step == 1 and self.is_main:
                    print(f"[dist-peakd] --compile: first step compiled in {self.engine.compile_seconds():.1f} s",
                          flush=True)
                self.state["step_in_epoch"] = step + 1
                self._after_step(epoch)
        finally:
            prefetch.close()
        self.state["epoch"], self.state["step_in_epoch"] = epoch + 1, 0
        with self.log.paused():
            self._record_eval(self.evaluate(), epoch + 1)
            self.checkpoint()
        return True

    def train_step(self, micro: list[Batch], tokens: float, global_count: int) -> None:
        """One optimizer step over this rank's micro-batches of a global batch of ``global_count``; log.

        Only logging steps (and the last) read values from the device; in between a non-finite loss is
        caught on the device and raised at the next logging step, evaluation, checkpoint or export
        (:class:`~dist_peakd.engine.nonfinite.DeferredCheck`), naming the step it happened at."""
        step = self.engine.global_step + 1
        log_now = step % self.options.log_every_steps == 0 or step == self.total_steps
        sums = self.engine.train_step(micro, global_count, self.objective.loss_fn, dummy_batch=self.dummy,
                                      sync=log_now)
        self.state["nonfinite_skipped"] = self.state.get("nonfinite_skipped", 0) + int(sums.get("skipped", 0))
        sums["tokens"] = tokens
        grad_norm = sums.pop("grad_norm")
        self.log.add(sums)
        self._bar.update(1)
        step = self.engine.global_step
        if log_now:
            scalars = self.log.write(step, self.engine.lr(), grad_norm, self.engine.skipped_steps)
            if self.is_main:
                self._bar.set_postfix(loss=f"{scalars.get('train/loss', float('nan')):.4f}")

    def _after_step(self, epoch: int) -> None:
        opts, step = self.options, self.engine.global_step
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

    def _prepare(self, share: list[int]) -> tuple[list[Batch], float]:
        """This rank's micro-batches for one step (collated, hooked, pinned) and its token count."""
        parts = np.array_split(np.asarray(share, dtype=np.int64), self.engine.gradient_accumulation_steps)
        micro = [self.train_batch(chunk) for chunk in parts]
        tokens = float(sum(int(m["attention_mask"].sum()) for m in micro))
        hook = self.objective.batch_hook
        if hook is not None:
            micro = [hook(m) if m["input_ids"].shape[0] else m for m in micro]
        if self.engine.device.type == "cuda":
            micro = [{k: v.pin_memory() if torch.is_tensor(v) else v for k, v in m.items()} for m in micro]
        return micro, tokens

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """The dev metrics of the current weights (every rank predicts its share; gathered by id)."""
        self.engine.raise_if_nonfinite()  # never evaluate (nor export) weights after a non-finite loss
        sampler = self.data.eval_sampler
        sampler.set_epoch(0)
        batches = (self.eval_batch(share) for share in
                   tqdm(sampler, desc=f"{self.label} dev", disable=not (self.is_main and _on_terminal()), leave=False))
        return self.objective.metric_fn(self.engine.predict(batches, self.objective.predict_fn))

    def _record_eval(self, metrics: dict[str, float], epoch: float) -> None:
        """History, TensorBoard, a new ``best/`` when the main metric improved, then the hooks."""
        step = self.engine.global_step
        self.state["history"].append({"step": step, "epoch": round(epoch, 4), **metrics})
        improved = self._is_better(metrics[self.objective.main_metric])
        if improved:
            self.state["best"], self.state["best_step"] = metrics[self.objective.main_metric], step
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
        return value > best if self.objective.higher_is_better else value < best

    # ------------------------------------------------------------------ checkpoints
    def resume(self) -> None:
        """Load the newest intact checkpoint, if any (rank 0 chooses, every rank loads the same tag)."""
        choice: Any = None
        if self.is_main:
            try:
                tag, warnings = select_checkpoint(self.ckpt_root, quarantine=True,
                                                  trust_unverified=self.options.trust_unverified)
                for w in warnings:
                    print(f"[dist-peakd] warning: {w}", flush=True)
                choice = ("ok", tag)
            except CheckpointCorruptError as e:
                choice = ("corrupt", e)
        status, tag = broadcast_object(choice)
        if status == "corrupt":
            raise tag
        if tag is not None:
            self.state.update(self.engine.load_state(self.ckpt_root, tag)["loop"])
            if self.is_main:
                print(f"[dist-peakd] resumed from {self.ckpt_root / tag} at step {self.engine.global_step}",
                      flush=True)

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
        finished: :class:`TooManySkippedSteps` (exit 3), no ``final/``, no summary.
        """
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
        if self.is_main:
            print(f"[dist-peakd] {self.label}: stopped by {stop.by} after step {stop.step} of {self.total_steps}",
                  flush=True)
        self._write_summary(summary)
        if not self.options.keep_checkpoints_after_success:
            self.remove_checkpoints()
        return summary

    def summary(self, stopped: dict[str, Any] | None = None) -> dict[str, Any]:
        """``summary.json``: main metric, the last (``final``) and the best evaluation, history, steps."""
        history = self.state["history"]
        last = history[-1]
        summary = {
            "main_metric": self.objective.main_metric,
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
