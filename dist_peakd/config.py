"""The commands' options: the sections each command uses, composed by inheritance.

Every option is declared once, in its section (:func:`dist_peakd.schema.option`: default, help line,
``--help`` group, whether it changes a result, bounds and choices): the data sections in
:mod:`dist_peakd.data.options`, the engine, optimizer and loop sections in :mod:`dist_peakd.engine.options`,
the rest here. A command's options class lists the sections it reads (:class:`RunOptions`: what a
training stage reads; ``CacheTeacherOptions``, ``ModelDirOptions``: fewer), so an option a command does not
read is not one of its options and is refused naming the command (``dist_peakd.cli``).
:class:`~dist_peakd.engine.options.EngineOptions`, :class:`~dist_peakd.engine.options.LoopOptions` and
:class:`~dist_peakd.data.DataOptions` are made of the same sections: ``opts.engine_options()``,
``opts.loop_options()`` and ``opts.data_options()`` are views of a command's options, not copies.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .artifacts import atomic_write_text
from .data.options import DataOptions, DataSourceOptions, UnlabeledOptions
from .engine.ds_config import check_ds_config, config_precision, load_ds_config, resolve_ds_config_path
from .engine.options import (
    DeviceOptions,
    EngineOptions,
    EvalBatchOption,
    LoopOptions,
    LoopSection,
    OptimizerOptions,
    SeedOption,
    TrustOption,
)
from .env import check_accelerator, env_int
from .errors import ConfigError
from .layout import RunLayout
from .schema import (
    OPTION_GROUPS,
    non_result_options,
    option,
    option_meta,
    read_options_file,
    validate_values,
)

__all__ = ["DEFAULT_BACKBONE", "OPTION_GROUPS", "CommandOptions", "RunOptions", "build_options",
           "non_result_options", "option", "option_meta", "result_differences", "SECTIONS",
           "DataSourceOptions", "DeviceOptions", "EvalBatchOption", "LoopSection", "OptimizerOptions", "SeedOption",
           "TrustOption", "UnlabeledOptions"]

DEFAULT_BACKBONE = "minilm"


def result_differences(before: dict[str, Any], opts: Any, ignore: frozenset[str] = frozenset()) -> list[str]:
    """``"name: old -> new"`` for every result-relevant option whose value differs from ``before``
    (a saved ``dataclasses.asdict`` of the same command's options; an option ``before`` lacks counts as the
    same when it is at its default; one ``before`` has that the command no longer takes did not change
    its result: the command never read it)."""
    skip = non_result_options(type(opts)) | ignore
    now = json.loads(json.dumps(dataclasses.asdict(opts), default=str))
    # an option added since ``before`` was saved, at its default, is the run ``before`` made (e.g. ``student``)
    defaults = {f.name: f.default for f in fields(opts) if f.default is not dataclasses.MISSING}
    skip |= {k for k in now if k not in before and k in defaults and now[k] == defaults[k]}
    skip |= set(before) - set(now)
    keys = sorted((set(before) | set(now)) - skip)
    return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys if before.get(k) != now.get(k)]


# ------------------------------------------------------------------------------------------- sections
@dataclass
class OutputOptions:
    """Where a command writes (its run folder) and keeps its tokenization cache."""

    output_dir: str = option("runs", help="runs go to <output_dir>/<task>/<stage>/ (shared storage for multi-node)",
                             result=False)
    cache_dir: str | None = option(None, help="tokenization cache (default <output_dir>/.token_cache)", result=False)


@dataclass
class ModelOptions:
    """The backbone a stage starts from and the sequence length."""

    backbone: str = option(DEFAULT_BACKBONE, help="BERT checkpoint folder or hub id; 'minilm' = embedded "
                                                  "all-MiniLM-L6-v2")
    max_length: int = option(128, help="truncate sequences to this many tokens (at most the backbone's "
                                       "max_position_embeddings)", ge=1)


@dataclass
class TrainSliceOption:
    max_train_examples: int | None = option(None, help="use only the first N training examples", ge=1)


@dataclass
class EvalSliceOption:
    max_eval_examples: int | None = option(None, help="use only the first N dev examples", ge=1)


@dataclass
class BatchingOptions:
    pad_to_multiple_of: int | None = option(None, help="pad every batch to a multiple of N tokens (default: 8 "
                                                       "with --compile, else the batch's longest row)",
                                            group="engine", ge=1)


@dataclass
class ForceOption:
    force: bool = option(False, help="redo a stage whose inputs (teacher, cache, PTP encoder, data, backbone) "
                                     "changed since its folder was made, deleting its old work; cache-teacher: "
                                     "rebuild a cache that does not match", result=False)


class CommandOptions:
    """What every command's options class has besides its sections: the views (data, engine, loop), the
    run's layout, and :meth:`validate` (the cross-option checks of the sections it has, then its own)."""

    def padding_multiple(self) -> int | None:
        """What batches are padded to a multiple of: ``pad_to_multiple_of``, else 8 with ``compile``."""
        pad = getattr(self, "pad_to_multiple_of", None)
        if pad is not None:
            return pad
        return 8 if getattr(self, "compile", False) else None

    def engine_options(self) -> EngineOptions:
        """The engine's view of these options (an engine option this command does not take: its default)."""
        return _view(EngineOptions, self)

    def loop_options(self) -> LoopOptions:
        return _view(LoopOptions, self)

    def data_options(self) -> DataOptions:
        """The data options of this run (:class:`dist_peakd.data.DataOptions`)."""
        return DataOptions.from_options(self)

    def layout(self) -> RunLayout:
        """Every path this run reads or writes (:mod:`dist_peakd.layout`)."""
        return RunLayout.of(self, DataOptions.from_options(self).run_name())

    def task_dir(self) -> Path:
        return self.layout().task_dir

    def validate(self) -> None:
        """Refuse bad combinations before any work starts, naming the option: the checks of every section
        this class is made of (:data:`SECTION_CHECKS`; a single value's type, bounds and choices were checked
        when the options were built)."""
        for section, check in SECTION_CHECKS:
            if isinstance(self, section):
                check(self)


def _view(cls: type, opts: Any) -> Any:
    return cls(**{f.name: getattr(opts, f.name) for f in fields(cls) if f.init and hasattr(opts, f.name)})


def _check_output(opts: Any) -> None:
    for name in ("output_dir", "cache_dir"):
        check_folder_path(name, getattr(opts, name))


def _check_data(opts: Any) -> None:
    opts.data_options().validate()
    if opts.glue_dir is not None and opts.hub_dataset is not None:
        raise ConfigError("options glue_dir and hub_dataset: give one data source, not both "
                          f"(glue_dir={opts.glue_dir!r}, hub_dataset={opts.hub_dataset!r})")


def _check_engine(opts: Any) -> None:
    import torch

    check_accelerator()  # before DeepSpeed is imported (check_ds_config)
    e = opts.engine_options()
    base = load_ds_config(e.ds_config)
    check_ds_config(base, resolve_ds_config_path(e.ds_config), precision=e.precision, zero_stage=e.zero_stage,
                    gradient_clipping=e.gradient_clipping)
    zero = e.zero_stage if e.zero_stage is not None else base.get("zero_optimization", {}).get("stage", 0)
    if e.nan_policy == "skip" and zero == 3:
        raise ConfigError("option nan_policy: skip is supported with ZeRO stages 0-2, not with zero_stage 3 "
                          "(use nan_policy=stop, or ZeRO 2)")
    precision = e.precision or config_precision(base)
    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("option precision: fp16 needs a CUDA GPU (DeepSpeed refuses fp16 on CPU); "
                          "use precision=bf16 or precision=fp32 on CPU")


def _check_batches(opts: Any) -> None:
    if opts.micro_batch_size is not None and opts.batch_size % opts.micro_batch_size != 0:
        raise ConfigError(f"option batch_size: global batch {opts.batch_size} is not divisible by "
                          f"micro_batch_size {opts.micro_batch_size}")
    # The launcher sets WORLD_SIZE before the process starts: check micro x ranks now, not at engine build.
    world = env_int("WORLD_SIZE", 1, minimum=1)
    micro = opts.micro_batch_size or max(1, opts.batch_size // world)
    if world > 1 and opts.batch_size % (micro * world) != 0:
        raise ConfigError(f"option batch_size: global batch {opts.batch_size} is not divisible by "
                          f"micro_batch_size x ranks = {micro} x {world} = {micro * world}")


#: The cross-option checks of each section, in the order they run (:meth:`CommandOptions.validate`).
SECTION_CHECKS: list[tuple[type, Callable[[Any], None]]] = [
    (DataSourceOptions, _check_data), (OutputOptions, _check_output), (DeviceOptions, _check_engine),
    (OptimizerOptions, _check_batches)]


@dataclass
class RunOptions(ForceOption, LoopSection, BatchingOptions, OptimizerOptions, DeviceOptions, EvalSliceOption,
                 TrainSliceOption, ModelOptions, DataSourceOptions, OutputOptions, CommandOptions):
    """What a training stage reads (finetune-teacher, ptp, distill; pipeline and sweep run them): the data,
    the backbone, the engine and optimizer, the loop, and the reliability switches."""


#: Every option section (tests: each option is declared in exactly one of them).
SECTIONS: tuple[type, ...] = (OutputOptions, DataSourceOptions, UnlabeledOptions, ModelOptions, TrainSliceOption,
                              EvalSliceOption, SeedOption, TrustOption, DeviceOptions, OptimizerOptions,
                              BatchingOptions, EvalBatchOption, LoopSection, ForceOption)


def check_folder_path(option_name: str, value: str | None) -> None:
    """Refuse (ConfigError naming it) a folder option whose path, or a folder above it, is an existing file:
    nothing could be written under it (an ``mkdir`` would fail with a traceback after the run started)."""
    if value is None or not str(value).strip():
        return
    path = Path(value)
    for here in (path, *path.parents):
        if here.exists() or here.is_symlink():
            if not here.is_dir():
                what = "is a file" if here == path else f"is below {str(here)!r}, a file"
                raise ConfigError(f"option {option_name}: {str(value)!r} {what}: expected a folder (an existing "
                                  "one, or a path where one can be made)")
            return


def check_folder_name(option_name: str, value: str | None) -> None:
    """Refuse a name that would not be a folder inside ``--output_dir`` (ConfigError naming it): a relative
    path of plain names (a sweep's ``sweep-<name>/<trial>``), none empty, ``.``/``..`` or starting with ``.``."""
    if value is None:
        return
    text = str(value)
    parts = text.split("/")
    if (not text.strip() or Path(text).is_absolute() or any(c in text for c in "\\\0")
            or any(not p.strip() or p.startswith(".") for p in parts)):
        raise ConfigError(f"option {option_name}: {text!r} must be a folder name inside --output_dir (plain names "
                          "separated by '/', none empty or starting with '.', no '\\'): the run's folder stays "
                          "inside --output_dir")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file of options (a flat mapping; :func:`dist_peakd.schema.read_options_file`)."""
    return read_options_file(path)


def _unknown_options(cls: type, names: Iterable[str], source: str, command: str | None = None,
                     owners: dict[str, list[str]] | None = None) -> None:
    """Refuse names that are not options of ``cls``: one of another command (``owners``: option -> commands)
    naming ``command`` and those, any other with the valid ones and a "did you mean"."""
    valid = sorted(f.name for f in fields(cls))
    unknown = sorted(set(names) - set(valid))
    other = [name for name in unknown if name in (owners or {})]
    if other and command is not None and owners is not None:
        raise ConfigError(f"{source}: option {other[0]}: not an option of {command!r} (it belongs to: "
                          f"{', '.join(owners[other[0]])})")
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{source}: unknown option(s) {unknown}{hint} for {cls.__name__}; valid options: {valid}")


def preset_values(preset: dict[str, Any], task: Any) -> dict[str, Any]:
    """A preset's option values for ``task``: its common values, then those of its ``per_task`` entry for
    that task (GLUE names compared as :func:`normalize_task_name` spells them; no task: mrpc, the default)."""
    from .data.tasks import normalize_task_name

    values = {k: v for k, v in preset.items() if k != "per_task"}
    name = normalize_task_name(task) if isinstance(task, str) else "mrpc"
    return {**values, **preset.get("per_task", {}).get(name, {})}


def build_options(cls: type, config: str | None = None, _command: str | None = None,
                  _owners: dict[str, list[str]] | None = None, **overrides: Any) -> Any:
    """Instantiate the dataclass ``cls`` from an optional config file, then command-line overrides.

    Every value, whatever its source, is typed and checked (type, bounds, choices) as its field declares it
    (:func:`dist_peakd.schema.validate_values`, pydantic), then the cross-option checks (``validate()``); unknown option
    names are refused with the list of valid ones, naming the file they came from (``_command``,
    ``_owners``: the command these options are for and option -> the commands taking it, to name them when
    an option of another command is given).
    """
    values: dict[str, Any] = {}
    from_file: dict[str, Any] = {}
    if config:
        from_file = load_config_file(config)
        _unknown_options(cls, from_file, f"config file {config}", _command, _owners)
        values.update(validate_values(cls, from_file, f"config file {config}"))
    _unknown_options(cls, overrides, "options", _command, _owners)
    values.update(validate_values(cls, overrides, "the command line"))
    presets = getattr(cls, "PRESETS", {})
    preset = values.get("preset")
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"option preset: {preset!r} is not one of {sorted(presets)}")
        values = {**validate_values(cls, preset_values(presets[preset], values.get("task")), f"preset {preset}"),
                  **values}
    _unknown_options(cls, values, "options")
    opts = cls(**values)
    try:
        opts.validate()
    except ConfigError as e:  # a value the file set: say which file
        named = re.match(r"option (\w+):", str(e))
        if named and named.group(1) in from_file and named.group(1) not in overrides:
            raise ConfigError(f"config file {config}: {e}") from None
        raise
    return opts


def save_resolved_config(opts: Any, path: Path) -> None:
    """Write the resolved options as JSON (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(dataclasses.asdict(opts), indent=2, default=str))
