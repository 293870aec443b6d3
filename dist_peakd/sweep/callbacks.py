"""Tune callbacks of the sweep driver (a module of its own: importing it imports Ray Tune)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from .. import console
from ..artifacts import atomic_write_json
from .naming import find_trial_dir
from .results import progress_line
from .trainable import STOP_RECORD, read_stop_record, stopped_early

#: Set by the sweep before ``fit`` (read at run time: a restored sweep gets the current value, not a pickled one).
RUNTIME: dict[str, Any] = {"stop_after_trials": None}


class StopAfterTrials(Callback):
    """Interrupt the sweep like Ctrl+C (Tune saves its state) once ``stop_after_trials`` trials ended in this run.

    The remaining trials stay pending and ``--resume`` runs them.
    """

    def __init__(self) -> None:
        self.ended = 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended += 1
        limit = RUNTIME["stop_after_trials"]
        if limit is None or self.ended != limit:
            return
        if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, signal.SIG_DFL, signal.SIG_IGN):
            console.info("stop_after_trials: Tune's interrupt handler is not active; not stopping")
            return
        console.info(f"{limit} trial(s) ended: stopping the sweep (resume with --resume)")
        os.kill(os.getpid(), signal.SIGINT)


def _run_dir(sweep_dir: str, trial: Any) -> Path:
    return find_trial_dir(Path(sweep_dir), trial.trial_id)


class RecordingASHA(ASHAScheduler):
    """ASHA that writes its stop decisions into the trial's folder (``stopped.json``) before Tune acts on
    them, so the trial knows the ``SystemExit`` it then gets is an early stop (see :mod:`.trainable`)."""

    def __init__(self, sweep_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sweep_dir = str(sweep_dir)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            record = {"step": result.get("step"), "by": "asha", "total_steps": result.get("total_steps"),
                      "evaluation": result.get("training_iteration")}
            run_dir = _run_dir(self.sweep_dir, trial)
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / STOP_RECORD, record)
        return decision


class TrialProgress(Callback):
    """``[dist-peakd] trial 3/4 trial-...: stopped at step 22 (ASHA), f1 0.8211`` as each trial ends."""

    def __init__(self, sweep_dir: str, metric: str, total: int, swept: tuple[str, ...] = ()) -> None:
        self.sweep_dir, self.metric, self.total, self.swept = str(sweep_dir), metric, total, tuple(swept)

    def _print(self, trials: list, trial: Any, status: str) -> None:
        ended = sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial) + 1
        last = trial.last_result or {}
        values = {k: v for k, v in trial.config.items() if k in self.swept}
        console.echo(progress_line(ended, self.total, _run_dir(self.sweep_dir, trial).name, values, status,
                                   self.metric, last.get(self.metric), last.get("step")))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = read_stop_record(_run_dir(self.sweep_dir, trial))
        status = "completed"
        if stopped_early(record):
            status = f"stopped at step {record.get('step')} ({str(record.get('by')).upper()})"
        self._print(trials, trial, status)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._print(trials, trial, "errored")
