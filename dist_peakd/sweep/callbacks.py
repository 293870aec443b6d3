"""Tune callbacks of the sweep driver (a module of its own: importing it imports Ray Tune)."""

from __future__ import annotations

import os
import signal
from typing import Any

from ray.tune import Callback

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
            print("[dist-peakd] stop_after_trials: Tune's interrupt handler is not active; not stopping", flush=True)
            return
        print(f"[dist-peakd] {limit} trial(s) ended: stopping the sweep (resume with --resume)", flush=True)
        os.kill(os.getpid(), signal.SIGINT)
