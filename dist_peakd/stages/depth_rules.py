"""The depth values of ``--k`` and ``--depth``: ``auto`` or an integer >= 1, and what ``auto`` resolves to
(the rules; :mod:`.depth` resolves them against the run's teacher)."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError

AUTO = "auto"


def auto_k(teacher_layers: int, variant: str) -> int:
    """The ``--k auto`` depth for an ``teacher_layers``-layer teacher (see the module docstring)."""
    if teacher_layers < 1:
        raise ConfigError(f"option k: auto needs a teacher with >= 1 layer, got {teacher_layers}")
    per_layer = 1 if variant == "none" else 2
    return max(1, math.ceil(teacher_layers / (2 * per_layer)))


def normalise_k(value: Any, option: str = "k") -> int | str:
    """``"auto"`` or an integer >= 1 (``"3"`` from a config file becomes 3); anything else is refused
    (``option``: the option named in the refusal, ``k`` or a plain student's ``depth``)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if text.isdigit():
            value = int(text)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"option {option}: student depth must be 'auto' or an integer >= 1, got {value!r}")
    return value
