"""Errors raised when a model cannot be built or loaded as asked."""

from __future__ import annotations


class ModelConfigError(ValueError):
    """An invalid model request: bad ``k``, unknown SPS variant, or a checkpoint of the wrong family."""
