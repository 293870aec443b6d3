"""Environment variables read by dist-peakd: :func:`env_number` and the DeepSpeed accelerator default.

Every numeric variable is read with :func:`env_number` (:func:`env_int`; :func:`env_seconds` for the
timeouts, with their own wording); a value that is not a number, or is out of
its range, raises :class:`~dist_peakd.errors.ConfigError` (exit 2) naming the variable, the value and
what was expected, before any work starts.
``RANK`` is read by :func:`dist_peakd.console.process_rank` (the bottom layer cannot import this module), and
path variables (``DIST_PEAKD_GLUE_DIR``, ``DIST_PEAKD_MINILM_PATH``, ``DIST_PEAKD_PLUGINS``) by the modules
they configure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from .errors import ConfigError


def _read_float(name: str) -> tuple[str, float]:
    """``name``'s stripped text and its value (NaN when it is not a number; ``""`` when unset or blank)."""
    raw = os.environ.get(name, "").strip()
    try:
        return raw, float(raw) if raw else math.nan
    except ValueError:
        return raw, math.nan


def env_number(name: str, default: float, *, minimum: float | None = None, integer: bool = False,
               allow_zero: bool = False, maximum: float | None = None) -> float:
    """``float(os.environ[name])`` (``default`` when unset or blank), checked.

    ``minimum``/``maximum`` bound the value (inclusive); ``allow_zero`` also accepts 0 below the
    minimum (a variable where 0 turns something off); ``integer`` requires a whole number.
    """
    raw, value = _read_float(name)
    if not raw:
        return default
    ok = math.isfinite(value) and (not integer or value.is_integer())
    if ok and not (allow_zero and value == 0):
        ok = (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        kind = "a whole number" if integer else "a number"
        bounds = [f">= {minimum:g}" if minimum is not None else "", f"<= {maximum:g}" if maximum is not None else ""]
        where = " and ".join(b for b in bounds if b)
        raise ConfigError(f"environment variable {name}={raw!r}: expected {kind}{' ' + where if where else ''}"
                          f"{' (or 0 to turn it off)' if allow_zero else ''}")
    return int(value) if integer else value


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """:func:`env_number` for a whole number."""
    return int(env_number(name, default, minimum=minimum, maximum=maximum, integer=True))


def env_seconds(name: str, default: float, ok: Callable[[float], bool], expected: str) -> float:
    """A duration in seconds from ``name`` (``default`` when unset or blank); a value that is not a number
    or that ``ok`` refuses raises :class:`ConfigError` ``NAME='raw': expected <expected>``."""
    raw, value = _read_float(name)
    if not raw:
        return default
    if not ok(value):
        raise ConfigError(f"{name}={raw!r}: expected {expected}")
    return value


DS_ACCELERATOR = "DS_ACCELERATOR"
#: Variables this process set itself (name -> value), as opposed to the user's environment.
_DEFAULTED: dict[str, str] = {}


def default_ds_accelerator() -> str:
    """Name DeepSpeed's accelerator before DeepSpeed is imported, unless the user named one.

    DeepSpeed picks its accelerator on import; on a machine without one it logs "Setting accelerator to
    CPU. If you have GPU or other accelerator, we were unable to detect it." (once per process, and
    before every command). What this process runs on is known: ``cuda`` when torch sees a CUDA device,
    else ``cpu`` (the backend :func:`~dist_peakd.engine.distributed.init_distributed` picks). A value the
    user set (``DS_ACCELERATOR=...``) is left exactly as it is. Returns the value in effect.
    """
    if DS_ACCELERATOR not in os.environ:
        import torch

        value = "cuda" if torch.cuda.is_available() else "cpu"
        os.environ[DS_ACCELERATOR] = value
        _DEFAULTED[DS_ACCELERATOR] = value
    return os.environ[DS_ACCELERATOR]


def set_by_user(name: str) -> bool:
    """Whether ``name`` is in the environment with a value the user gave (not one this process defaulted)."""
    return name in os.environ and _DEFAULTED.get(name) != os.environ[name]


#: DeepSpeed's accelerator names (``deepspeed.accelerator.real_accelerator.SUPPORTED_ACCELERATOR_LIST``;
#: tests/reliability/test_reliability_config.py keeps the two equal).
DS_ACCELERATORS = ("cuda", "cpu", "xpu", "npu", "mps", "hpu", "mlu", "sdaa", "supa", "klxpu")


def check_accelerator() -> None:
    """Refuse (ConfigError, exit 2) a ``DS_ACCELERATOR`` that DeepSpeed cannot use, before it is imported:
    an unknown name (DeepSpeed would raise on its first import, a traceback), or a known one whose
    package is missing (DeepSpeed's own reason is kept). Unset: DeepSpeed detects the accelerator."""
    raw = os.environ.get("DS_ACCELERATOR")
    if raw is None or not set_by_user("DS_ACCELERATOR"):  # unset, or named by default_ds_accelerator
        return
    if raw not in DS_ACCELERATORS:
        raise ConfigError(f"environment variable DS_ACCELERATOR={raw!r}: expected one of {', '.join(DS_ACCELERATORS)}"
                          " (or unset it: DeepSpeed then detects the accelerator)")
    try:
        from deepspeed.accelerator import get_accelerator

        get_accelerator()
    except ValueError as e:  # e.g. "XPU_Accelerator requires intel_extension_for_pytorch ..."
        raise ConfigError(f"environment variable DS_ACCELERATOR={raw!r}: {e}") from None
