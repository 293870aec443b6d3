"""Test-only fault injection, installed as a trainer plugin (never imported by the package).

Enable it in a run with ``DIST_PEAKD_PLUGINS=fault_plugin`` and this folder on ``PYTHONPATH`` (every
rank a launcher starts inherits both), then ``DIST_PEAKD_FAULT_INJECT="<action>:rank=<r>:step=<n>[,...]"``
makes rank ``r`` act right after optimizer step ``n`` (the trainer's ``on_step_end`` hook). Actions:
``sigkill`` (the rank SIGKILLs itself: a crashed rank), ``sigterm`` (SIGTERM to itself: a preempted
rank), ``sigterm-parent`` (SIGTERM to its parent, i.e. the deepspeed launcher's per-node ``launch.py``;
the rank then waits up to 10 s for the launcher's SIGTERM so the stop step is deterministic).
A malformed value is refused with an error naming the variable.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAULT_ENV = "DIST_PEAKD_FAULT_INJECT"
FAULT_ACTIONS = ("sigkill", "sigterm", "sigterm-parent")


@dataclass(frozen=True)
class Fault:
    action: str
    rank: int
    step: int


def parse_faults(value: str | None) -> list[Fault]:
    """Parse ``DIST_PEAKD_FAULT_INJECT``; raises ValueError naming the variable when malformed."""
    if not value:
        return []
    faults = []
    for item in value.split(","):
        parts = item.strip().split(":")
        try:
            fields = dict(p.split("=", 1) for p in parts[1:])
            fault = Fault(parts[0], int(fields["rank"]), int(fields["step"]))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{FAULT_ENV}={value!r}: expected '<action>:rank=<r>:step=<n>' ({e})") from None
        if fault.action not in FAULT_ACTIONS:
            raise ValueError(f"{FAULT_ENV}={value!r}: action {fault.action!r} is not one of {list(FAULT_ACTIONS)}")
        faults.append(fault)
    return faults


class FaultInjector:
    """The trainer hook: after each step, apply the faults meant for this rank and step."""

    def __init__(self, faults: list[Fault]) -> None:
        self.faults = faults

    def on_step_end(self, trainer: Any) -> None:
        rank, step = trainer.engine.dist.rank, trainer.engine.global_step
        for fault in self.faults:
            if fault.rank == rank and fault.step == step:
                _apply(fault, trainer)


def _apply(fault: Fault, trainer: Any) -> None:
    print(f"[dist-peakd] fault injection: {fault.action} on rank {fault.rank} after step {fault.step}", flush=True)
    sys.stderr.flush()
    if fault.action == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault.action == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    elif fault.action == "sigterm-parent":
        os.kill(os.getppid(), signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        while not trainer.stop_signal.requested and time.monotonic() < deadline:
            time.sleep(0.02)


def trainer_hooks() -> list[FaultInjector]:
    """The plugin entry point (``DIST_PEAKD_PLUGINS=fault_plugin``)."""
    return [FaultInjector(parse_faults(os.environ.get(FAULT_ENV)))]


def plugin_env(fault: str) -> dict[str, str]:
    """Environment entries that install this plugin with ``fault`` in a launched run."""
    path = os.environ.get("PYTHONPATH", "")
    here = str(Path(__file__).resolve().parent)
    return {"DIST_PEAKD_PLUGINS": "fault_plugin", FAULT_ENV: fault,
            "PYTHONPATH": os.pathsep.join(p for p in (here, path) if p)}
