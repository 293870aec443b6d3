"""The engine layer: the DeepSpeed engine and its step calls, checkpoints and exports, and the loop every stage drives."""

from ..errors import ConfigError, NonFiniteLossError
from ..loss_output import LossOutput
from .distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    broadcast_object,
    decide_on_rank0,
    init_distributed,
)
from .ds_config import build_ds_config, load_ds_config, resolve_ds_config_path
from .engine import Engine, EngineOptions
from .rng import seed_everything
from .tracking import Tracker

__all__ = [
    "ConfigError", "DistInfo", "Engine", "EngineOptions", "LossOutput", "NonFiniteLossError", "Tracker",
    "all_gather_objects", "barrier", "broadcast_object", "build_ds_config", "decide_on_rank0", "init_distributed",
    "load_ds_config", "resolve_ds_config_path", "seed_everything",
]
