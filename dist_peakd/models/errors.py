"""Errors raised when a model cannot be built or loaded as asked."""

from __future__ import annotations

# Defined in the self-contained configuration file (shipped inside export folders), so the SPS
# config raises the same type with or without dist-peakd.
from .configuration_sps_bert import ModelConfigError

__all__ = ["ModelConfigError"]
