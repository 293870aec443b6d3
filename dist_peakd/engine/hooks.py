"""Trainer hooks: the points where code outside the loop may act, and the plugins that install them.

A hook is any object with (some of) these methods; the trainer calls them on every rank:

* ``on_eval(step, metrics)`` after each dev evaluation (after a new best was exported), e.g. to
  report metrics to a hyperparameter tuner;
* ``on_step_end(trainer)`` after each optimizer step (after a mid-epoch evaluation, before the
  stop / checkpoint decision), e.g. to inject faults in tests.

A stage passes its hooks to :class:`~dist_peakd.engine.trainer.Trainer`. Plugins add more without
touching a stage: ``DIST_PEAKD_PLUGINS=module[,module...]`` names importable modules, each with a
``trainer_hooks() -> list`` function (the tests' fault injection is one: ``tests/fault_plugin.py``).
The variable is inherited by every rank a launcher starts, so a plugin reaches multi-process runs too.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError

PLUGINS_ENV = "DIST_PEAKD_PLUGINS"


class TrainerHook:
    """No-op base: subclass and override the points you need."""

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        return None

    def on_step_end(self, trainer: Any) -> None:
        return None


class EvalCallback(TrainerHook):
    """``fn(step, metrics)`` after each evaluation."""

    def __init__(self, fn: Callable[[int, dict[str, float]], None]) -> None:
        self.fn = fn

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.fn(step, metrics)


def plugin_hooks(value: str | None = None) -> list[Any]:
    """The hooks of every plugin module named in ``DIST_PEAKD_PLUGINS`` (none when unset)."""
    value = os.environ.get(PLUGINS_ENV, "") if value is None else value
    hooks: list[Any] = []
    for name in (n.strip() for n in value.split(",")):
        if not name:
            continue
        try:
            factory = importlib.import_module(name).trainer_hooks
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"{PLUGINS_ENV}={value!r}: {name!r} is not an importable module with a "
                              f"trainer_hooks() function ({e})") from e
        hooks.extend(factory())
    return hooks
