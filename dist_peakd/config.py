"""Run options as plain dataclasses: the CLI and config files fill them; every stage shares the names."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .engine.ds_config import ConfigError
from .engine.engine import EngineOptions
from .engine.loop import LoopOptions

DEFAULT_BACKBONE = "minilm"


@dataclass
class RunOptions:
    """Options every stage accepts (same names everywhere)."""

    task: str = "mrpc"
    output_dir: str = "runs"
    glue_dir: str | None = None
    hub_dataset: str | None = None
    backbone: str = DEFAULT_BACKBONE
    max_length: int = 128
    cache_dir: str | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    seed: int = 0
    # engine
    ds_config: str = "fp32_zero0"
    precision: str | None = None
    zero_stage: int | None = None
    batch_size: int = 32
    micro_batch_size: int | None = None
    gradient_clipping: float | None = 1.0
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    nan_policy: str = "stop"  # non-finite loss: "stop" (exit 3, naming step and term) or "skip" the step
    # loop
    epochs: float = 3.0
    eval_batch_size: int = 128
    eval_every_steps: int = 0
    log_every_steps: int = 10
    stop_after_steps: int | None = None
    save_every_steps: int = 0  # also checkpoint every N steps (0: at epoch ends and on SIGTERM only)
    keep_checkpoints: int = 2  # newest complete checkpoints kept; a corrupted newest falls back

    def engine_options(self) -> EngineOptions:
        names = {f.name for f in fields(EngineOptions)}
        return EngineOptions(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    def loop_options(self) -> LoopOptions:
        names = {f.name for f in fields(LoopOptions)}
        return LoopOptions(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    def task_dir(self) -> Path:
        from .data import get_task

        return Path(self.output_dir) / get_task(self.task).name

    def validate(self) -> None:
        """Refuse bad values before any work starts, naming the option."""
        positive = ("max_length", "batch_size", "eval_batch_size", "log_every_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"option {name}: must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(f"option micro_batch_size: must be >= 1, got {self.micro_batch_size}")
        if self.epochs <= 0:
            raise ConfigError(f"option epochs: must be > 0, got {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"option lr: must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"option warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        self._validate_engine()
        for name in ("max_train_examples", "max_eval_examples", "stop_after_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"option {name}: must be >= 1 when given, got {value}")
        if self.nan_policy not in ("stop", "skip"):
            raise ConfigError(f"option nan_policy: {self.nan_policy!r} is not one of ['stop', 'skip']")
        if self.save_every_steps < 0:
            raise ConfigError(f"option save_every_steps: must be >= 0, got {self.save_every_steps}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"option keep_checkpoints: must be >= 1, got {self.keep_checkpoints}")


    def _validate_engine(self) -> None:
        import torch

        from .engine.ds_config import PRECISIONS, ZERO_STAGES, config_precision, load_ds_config

        base = load_ds_config(self.ds_config)
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"option precision: {self.precision!r} is not one of {list(PRECISIONS)}")
        if self.zero_stage is not None and self.zero_stage not in ZERO_STAGES:
            raise ConfigError(f"option zero_stage: {self.zero_stage!r} is not one of {list(ZERO_STAGES)}")
        precision = self.precision or config_precision(base)
        if precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("option precision: fp16 needs a CUDA GPU (DeepSpeed refuses fp16 on CPU); "
                              "use precision=bf16 or precision=fp32 on CPU")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size != 0:
            raise ConfigError(f"option batch_size: global batch {self.batch_size} is not divisible by "
                              f"micro_batch_size {self.micro_batch_size}")
        # The launcher sets WORLD_SIZE before the process starts: check micro x ranks now, not at engine build.
        import os

        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        micro = self.micro_batch_size or max(1, self.batch_size // world)
        if world > 1 and self.batch_size % (micro * world) != 0:
            raise ConfigError(f"option batch_size: global batch {self.batch_size} is not divisible by "
                              f"micro_batch_size x ranks = {micro} x {world} = {micro * world}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file of options (a flat mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"option config: file {path} not found")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"option config: {path} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"option config: {path} must hold a mapping of option names to values")
    return data


def build_options(cls: type, config: str | None = None, **overrides: Any) -> Any:
    """Instantiate the dataclass ``cls`` from an optional config file, then command-line overrides.

    Unknown option names are refused with the list of valid ones.
    """
    valid = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    if config:
        values.update(load_config_file(config))
    values.update(overrides)
    presets = getattr(cls, "PRESETS", {})
    preset = values.get("preset")
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"option preset: {preset!r} is not one of {sorted(presets)}")
        values = {**presets[preset], **values}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for {cls.__name__}; valid options: {sorted(valid)}")
    opts = cls(**values)
    opts.validate()
    return opts


def save_resolved_config(opts: Any, path: Path) -> None:
    """Write the resolved options as JSON (temp file + rename)."""
    from .engine.engine import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(dataclasses.asdict(opts), indent=2, default=str))
