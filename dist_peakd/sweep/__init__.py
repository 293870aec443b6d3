"""Ray Tune sweeps of distillation trials: search-space syntax, Ray start-up, trainables, results.

The command is ``dist-peakd sweep`` (:mod:`dist_peakd.stages.sweep`); Ray is imported only when used.
"""

from .space import Dimension, load_space, parse_space

__all__ = ["Dimension", "load_space", "parse_space"]
