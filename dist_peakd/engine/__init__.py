"""Engine facade over DeepSpeed shared by every stage."""

from .distributed import DistInfo, all_gather_objects, barrier, broadcast_object, init_distributed
from .ds_config import ConfigError, build_ds_config, load_ds_config, resolve_ds_config_path
from .engine import Engine, EngineOptions, LossOutput, NonFiniteLossError, seed_everything
from .tracking import Tracker

__all__ = [
    "ConfigError", "DistInfo", "Engine", "EngineOptions", "LossOutput", "NonFiniteLossError", "Tracker",
    "all_gather_objects", "barrier", "broadcast_object", "build_ds_config", "init_distributed",
    "load_ds_config", "resolve_ds_config_path", "seed_everything",
]
