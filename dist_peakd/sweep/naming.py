"""Names of sweep trials: folder (= TensorBoard run) names that carry the trial's swept values.

``trial_dirname("e4320_00003", {"temperature": 5.0, "alpha": 0.7})`` -> ``trial-e4320_00003-temperature=5-alpha=0.7``:
the Tune trial id first (unique in the sweep, so :func:`find_trial_dir` finds a folder by id alone), then
``name=value`` per swept option in the space's order. ``tensorboard --logdir <sweep folder>`` lists the
trials under these names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PREFIX = "trial-"
#: Longest folder name made (file systems allow 255 bytes; TensorBoard's run list stays readable).
MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def format_value(value: Any) -> str:
    """A short, file-name-safe spelling of a swept value (4 significant digits for floats)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalars
        return format_value(value.item())
    return _UNSAFE.sub("_", str(value)).strip("_") or "_"


def trial_dirname(trial_id: str, values: Mapping[str, Any] | None = None) -> str:
    """``trial-<id>`` followed by ``-<name>=<value>`` per swept option (cut to :data:`MAX_NAME` characters)."""
    name = f"{PREFIX}{trial_id}"
    for option, value in (values or {}).items():
        part = f"-{format_value(option)}={format_value(value)}"
        if len(name) + len(part) > MAX_NAME:
            break
        name += part
    return name


def find_trial_dir(sweep_dir: Path, trial_id: str) -> Path:
    """The run folder of a trial: ``trial-<id>`` or ``trial-<id>-<values>``; ``trial-<id>`` if neither exists."""
    plain = sweep_dir / f"{PREFIX}{trial_id}"
    if plain.is_dir():
        return plain
    named = sorted(p for p in sweep_dir.glob(f"{PREFIX}{trial_id}-*") if p.is_dir())
    return named[0] if named else plain
