"""Pieces the student stages (PTP and distillation) share: cache identity, student building."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import RunOptions
from ..engine.ds_config import ConfigError
from ..models import VARIANTS
from .common import TaskData


def cache_dir_for(opts: RunOptions, teacher_cache_dir: str | None) -> Path:
    return Path(teacher_cache_dir) if teacher_cache_dir else opts.task_dir() / "teacher_cache"


def expected_cache_identity(opts: RunOptions, data: TaskData, teacher_dir: str | None = None) -> dict[str, Any]:
    """What a cache must match to serve this run: task, data (incl. slices), max length, row counts,
    and the teacher's weights when its folder is known."""
    from ..cache import teacher_fingerprint

    expected: dict[str, Any] = {
        "task": data.task.name,
        "data_fingerprint": data.fingerprint,
        "max_length": opts.max_length,
        "rows": {"train": len(data.train), data.dev_split: len(data.dev)},
    }
    if teacher_dir and Path(teacher_dir).is_dir():
        expected["teacher_fingerprint"] = teacher_fingerprint(teacher_dir)
    return expected


def validate_student_options(k: int, variant: str) -> None:
    if k < 1:
        raise ConfigError(f"option k: student depth must be >= 1, got {k}")
    if variant not in VARIANTS:
        raise ConfigError(f"option variant: {variant!r} is not one of {list(VARIANTS)}")


def check_k_against_backbone(k: int, backbone_path: str) -> None:
    """Refuse a depth larger than the backbone's layer count, before any work starts."""
    from transformers import AutoConfig

    layers = AutoConfig.from_pretrained(backbone_path).num_hidden_layers
    if k > layers:
        raise ConfigError(f"option k: student depth {k} exceeds the backbone's {layers} layers ({backbone_path})")
