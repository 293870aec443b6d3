"""Checkpoint files are read without running code from the output folder, and written durably.

A ``.pt`` file is a pickle: ``torch.load(..., weights_only=False)`` (what DeepSpeed 0.19.8's
``TorchCheckpointEngine.load`` does for model and optimizer states) runs whatever a planted file
asks for. Every checkpoint file dist-peakd reads goes through :func:`safe_load` instead:
``weights_only=True`` (tensors, containers, numbers, strings) plus the few plain-data DeepSpeed
classes its ZeRO optimizer states hold (:data:`ALLOWED_GLOBALS`: loss-scaler state, an enum and a
dataclass, constructed without calling their code). Anything else is refused naming the file
(:class:`~dist_peakd.errors.ArtifactCorruptError`, exit 4) before a single object is built.

:func:`install` puts :class:`SafeCheckpointEngine` in front of a DeepSpeed engine's checkpoint engine,
so every load DeepSpeed issues (model states, optimizer partitions) takes that path; its saves open
the file themselves, so a full disk surfaces as ``ENOSPC`` (torch's own file writer reports only
``file write failed``) and each file is fsynced before the checkpoint is published.
"""

from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import ArtifactCorruptError, ConfigError

#: Plain-data classes of DeepSpeed's optimizer states that a checkpoint may construct (nothing else).
ALLOWED_GLOBALS = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                   "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                   "deepspeed.runtime.zero.config.ZeroStageEnum",
                   "deepspeed.utils.tensor_fragment.fragment_address")


def allowed_globals() -> list[Any]:
    """The classes of :data:`ALLOWED_GLOBALS` this DeepSpeed release has."""
    found = []
    for name in ALLOWED_GLOBALS:
        module, _, attr = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            continue
    return found


def safe_load(path: str | Path, map_location: Any = None) -> Any:
    """``torch.load`` that only builds tensors, plain values and :data:`ALLOWED_GLOBALS`."""
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first else "")
        raise ArtifactCorruptError(path, "holds Python objects other than tensors and plain values "
                                   f"({detail.strip()[:200]}); it was not loaded, since unpickling it could run "
                                   "code (a planted file, or one written by an older dist-peakd); delete the "
                                   "checkpoint folder to start over") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise ArtifactCorruptError(path, f"unreadable ({type(e).__name__}: {str(e)[:200]})") from e


def durable_save(obj: Any, path: str | Path, **kwargs: Any) -> None:
    """``torch.save`` into a file this opens itself (a full disk raises OSError ENOSPC), then fsync."""
    with open(path, "wb") as f:
        torch.save(obj, f, **kwargs)
        f.flush()
        os.fsync(f.fileno())


class SafeCheckpointEngine:
    """DeepSpeed's checkpoint engine with :func:`safe_load` loads and :func:`durable_save` saves."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:  # create, commit, makedirs, is_decoupled, ...
        return getattr(self._inner, name)

    def load(self, path: str, map_location: Any = None) -> Any:
        return safe_load(path, map_location=map_location)

    def save(self, state_dict: Any, path: str) -> None:
        durable_save(state_dict, path,
                     _use_new_zipfile_serialization=bool(getattr(self._inner, "zipfile_serialization", True)))


def install(ds_engine: Any) -> None:
    """Route every checkpoint load and save of ``ds_engine`` through :class:`SafeCheckpointEngine`."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    current = ds_engine.checkpoint_engine
    if isinstance(current, SafeCheckpointEngine):
        return
    if type(current) is not TorchCheckpointEngine:
        raise ConfigError(f"option ds_config: checkpoint engine {type(current).__name__} is not supported "
                          "(dist-peakd loads checkpoints with weights_only=True through DeepSpeed's torch "
                          "checkpoint engine); remove the checkpoint engine settings from the ds_config")
    ds_engine.checkpoint_engine = SafeCheckpointEngine(current)
