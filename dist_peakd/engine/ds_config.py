"""DeepSpeed JSON configs: find, load, validate, and apply run-time overrides."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from ..env import default_ds_accelerator
from ..errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16", "bf16-autocast")
ZERO_STAGES = (0, 1, 2, 3)


def ds_configs_dir() -> Path:
    """The shipped ``ds_configs/`` folder: package data of ``dist_peakd`` (found with
    ``importlib.resources``, so a regular install has it; the repository's top-level ``ds_configs/``
    is a symlink to it)."""
    from importlib.resources import files

    return Path(str(files("dist_peakd") / "ds_configs"))


def resolve_ds_config_path(name_or_path: str | Path) -> Path:
    """Accept a path to a JSON file or the stem of a file in ``ds_configs/`` (e.g. ``bf16_zero1``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    candidate = ds_configs_dir() / (p.name if p.suffix == ".json" else f"{p.name}.json")
    if candidate.is_file():
        return candidate
    available = sorted(f.stem for f in ds_configs_dir().glob("*.json"))
    raise ConfigError(f"option ds_config: file {str(name_or_path)!r} not found "
                      f"(give a JSON path or one of {available})")


def load_ds_config(name_or_path: str | Path) -> dict[str, Any]:
    """Read a DeepSpeed JSON config, with a clear error for a missing or invalid file."""
    path = resolve_ds_config_path(name_or_path)
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"option ds_config: {path} is not valid JSON (line {e.lineno}, column {e.colno}: "
                          f"{e.msg})") from e
    if not isinstance(cfg, dict):
        raise ConfigError(f"option ds_config: {path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def config_precision(cfg: dict[str, Any]) -> str:
    """The precision a DeepSpeed config enables: 'fp16', 'bf16', 'bf16-autocast' or 'fp32'.

    'bf16-autocast' is DeepSpeed's ``torch_autocast`` section: fp32 weights and optimizer, bf16 matmuls
    (like ``torch.autocast`` in a plain loop), without DeepSpeed's bf16 optimizer wrapper.
    """
    if cfg.get("fp16", {}).get("enabled", False):
        return "fp16"
    if cfg.get("bf16", {}).get("enabled", False):
        return "bf16"
    autocast = cfg.get("torch_autocast", {})
    if autocast.get("enabled", False) and str(autocast.get("dtype", "bfloat16")) in ("bfloat16", "bf16", "torch.bfloat16"):
        return "bf16-autocast"
    return "fp32"


def build_ds_config(
    base: dict[str, Any],
    *,
    micro_batch_size: int,
    global_batch_size: int,
    world_size: int,
    precision: str | None = None,
    zero_stage: int | None = None,
    gradient_clipping: float | None = None,
    on_gpu: bool | None = None,
) -> dict[str, Any]:
    """Return a copy of ``base`` with batch sizes, precision, ZeRO stage and clipping filled in.

    ``global_batch_size`` must equal ``micro_batch_size * gradient_accumulation * world_size``
    for a whole number of accumulation steps; anything else is refused, naming the options.
    """
    if on_gpu is None:
        on_gpu = torch.cuda.is_available()
    if micro_batch_size < 1:
        raise ConfigError(f"option micro_batch_size: must be >= 1, got {micro_batch_size}")
    if global_batch_size < 1:
        raise ConfigError(f"option batch_size: must be >= 1, got {global_batch_size}")
    per_step = micro_batch_size * world_size
    if global_batch_size % per_step != 0:
        raise ConfigError(
            f"option batch_size: global batch {global_batch_size} is not divisible by "
            f"micro_batch_size x ranks = {micro_batch_size} x {world_size} = {per_step}")
    cfg = copy.deepcopy(base)
    cfg["train_micro_batch_size_per_gpu"] = micro_batch_size
    cfg["gradient_accumulation_steps"] = global_batch_size // per_step
    cfg["train_batch_size"] = global_batch_size
    if precision is not None:
        if precision not in PRECISIONS:
            raise ConfigError(f"option precision: {precision!r} is not one of {list(PRECISIONS)}")
        cfg.pop("fp16", None)
        cfg.pop("bf16", None)
        cfg.pop("torch_autocast", None)
        if precision == "bf16-autocast":
            cfg["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
        elif precision == "bf16":
            cfg["bf16"] = {"enabled": True}
        elif precision == "fp16":
            cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                           "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}
    if config_precision(cfg) == "fp16" and not on_gpu:
        raise ConfigError("option precision: fp16 needs a CUDA GPU (DeepSpeed refuses fp16 on CPU); "
                          "use precision=bf16 or precision=fp32 on CPU")
    if zero_stage is not None:
        if zero_stage not in ZERO_STAGES:
            raise ConfigError(f"option zero_stage: {zero_stage!r} is not one of {list(ZERO_STAGES)}")
        cfg.setdefault("zero_optimization", {})["stage"] = zero_stage
    if gradient_clipping is not None:
        if gradient_clipping < 0:
            raise ConfigError(f"option gradient_clipping: must be >= 0, got {gradient_clipping}")
        cfg["gradient_clipping"] = float(gradient_clipping)
    zero = cfg.get("zero_optimization", {})
    if zero.get("offload_optimizer") or zero.get("offload_param"):
        cfg.setdefault("zero_force_ds_cpu_optimizer", False)
    cfg.setdefault("steps_per_print", 10**9)
    return cfg


#: Sections DeepSpeed reads as JSON objects (a scalar or list there fails deep inside DeepSpeed).
_OBJECT_SECTIONS = ("fp16", "bf16", "torch_autocast", "zero_optimization", "checkpoint", "activation_checkpointing",
                    "flops_profiler", "comms_logger", "tensorboard", "wandb", "csv_monitor", "aio", "amp",
                    "data_efficiency", "compression_training", "elasticity", "autotuning", "pipeline")
#: Sections dist-peakd owns: its client AdamW and warmup/decay schedule come from the options.
_OWNED_SECTIONS = {"optimizer": "--lr, --weight_decay", "scheduler": "--warmup_ratio (linear warmup then decay)"}


def check_ds_config(cfg: dict[str, Any], path: str | Path, *, precision: str | None = None,
                    zero_stage: int | None = None, gradient_clipping: float | None = None) -> None:
    """Refuse (ConfigError naming the file and the setting) a DeepSpeed config DeepSpeed would reject
    deep inside the engine build, or whose settings dist-peakd would silently override.

    The contents are run through DeepSpeed's own parser (``DeepSpeedConfig``) with this run's
    overrides and placeholder batch sizes (the batch fields are always set from the options)."""
    where = f"option ds_config: {path}"
    for name, options in _OWNED_SECTIONS.items():
        if name in cfg:
            raise ConfigError(f"{where}: remove the {name!r} section (dist-peakd builds the AdamW optimizer and "
                              f"its schedule itself, from {options})")
    for name in _OBJECT_SECTIONS:
        if name in cfg and not isinstance(cfg[name], dict):
            raise ConfigError(f"{where}: section {name!r} must be a JSON object, got {cfg[name]!r}")
    clip = cfg.get("gradient_clipping", 0.0)
    if isinstance(clip, bool) or not isinstance(clip, int | float) or clip < 0:
        raise ConfigError(f"{where}: gradient_clipping must be a number >= 0, got {clip!r}")
    built = build_ds_config(cfg, micro_batch_size=1, global_batch_size=1, world_size=1, precision=precision,
                            zero_stage=zero_stage, gradient_clipping=gradient_clipping, on_gpu=True)
    default_ds_accelerator()  # before deepspeed is imported (it logs its accelerator guess otherwise)
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig(built)
    except Exception as e:  # pydantic ValidationError, DeepSpeedConfigError, or a crash on a bad type
        raise ConfigError(f"{where}: DeepSpeed rejects it: {_first_problem(e)}") from None


def _first_problem(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            loc = ".".join(str(x) for x in first.get("loc", ()))
            return f"{getattr(e, 'title', '')} {loc}: {first.get('msg')} (got {first.get('input')!r})".strip()
        except Exception:  # noqa: BLE001 - fall back to the text
            pass
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"
