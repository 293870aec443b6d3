"""Errors raised when a model cannot be built or loaded as asked (defined in :mod:`dist_peakd.errors`)."""

from __future__ import annotations

from ..errors import ModelConfigError

__all__ = ["ModelConfigError"]
