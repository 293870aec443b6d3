"""Run options as plain dataclasses: the CLI and config files fill them; every stage shares the names.

Each option is declared once, with its default, its help line and whether it changes a stage's
result (:func:`option`); ``--help``, the "same options?" check of a stage folder and a sweep's
``--resume`` all read that metadata::

    temperature: float = option(10.0, help="KD softmax temperature")
    eval_batch_size: int = option(128, help="global evaluation batch size", result=False)

A subclass that only changes a default (``lr: float = 5e-5``) keeps the help and result flag of the
class that declared the option (:func:`option_meta` looks them up along the MRO).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .artifacts import atomic_write_text
from .coerce import coerce_options, read_options_file
from .data.options import DataOptions
from .engine.ds_config import (
    PRECISIONS,
    ZERO_STAGES,
    check_ds_config,
    config_precision,
    load_ds_config,
    resolve_ds_config_path,
)
from .engine.engine import EngineOptions
from .engine.loop_spec import LoopOptions
from .engine.nonfinite import NAN_POLICIES
from .env import check_accelerator, env_int
from .errors import ConfigError
from .layout import RunLayout

DEFAULT_BACKBONE = "minilm"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def option(default: Any = dataclasses.MISSING, *, help: str, result: bool = True, group: str | None = None,
           ge: float | None = None, gt: float | None = None, le: float | None = None) -> Any:
    """A dataclass field with its ``--help`` line and whether its value changes a stage's result.

    ``result=False`` marks options that only change how a run goes, not what it produces (logging,
    checkpoint cadence, where caches live, resources): a stage folder or a sweep made with other
    values of them is still the same run and is resumed or reused. ``group`` puts the option in its
    own section of ``--help`` (one of :data:`OPTION_GROUPS`; ``None``: the general options).
    ``ge``/``gt``/``le``: the range of a number (checked for every options object :func:`build_options`
    makes; None is exempt).
    """
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le)) if v is not None}
    metadata: dict[str, Any] = {"help": help, "result": result, **bounds}
    if group is not None:
        metadata["group"] = group
    return field(default=default, metadata=metadata)


#: Sections of ``--help`` besides the general options: group name -> heading.
OPTION_GROUPS: dict[str, str] = {
    "data": "Data options (a GLUE task, or your own files / hub dataset; docs/OWN_DATA.md)",
}


def check_bounds(opts: Any) -> None:
    """Refuse (ConfigError naming it) every option whose value is outside its declared ``ge``/``gt``/``le``."""
    for f in fields(opts):
        meta, value = option_meta(type(opts), f.name), getattr(opts, f.name)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        for key, ok, words in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                               ("le", lambda v, b: v <= b, "<=")):
            if key in meta and not ok(value, meta[key]):
                raise ConfigError(f"option {f.name}: must be {words} {meta[key]:g}, got {value}")


def option_meta(cls: type, name: str) -> dict[str, Any]:
    """``{"help", "result", "group"}`` of option ``name`` of ``cls``, from the nearest class that
    declared it (``group``: the nearest class that gave one; ``None`` for the general options)."""
    meta: dict[str, Any] | None = None
    group = None
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is None or "help" not in f.metadata:
            continue
        meta = meta or dict(f.metadata)
        group = group or f.metadata.get("group")
    return {"help": "", "result": True, **(meta or {}), "group": group}


def non_result_options(cls: type) -> frozenset[str]:
    """Names of the options of ``cls`` that do not change a result (``option(..., result=False)``)."""
    return frozenset(f.name for f in fields(cls) if not option_meta(cls, f.name)["result"])


def result_differences(before: dict[str, Any], opts: Any, ignore: frozenset[str] = frozenset()) -> list[str]:
    """``"name: old -> new"`` for every result-relevant option whose value differs from ``before``
    (a saved ``dataclasses.asdict`` of the same options class; an option ``before`` lacks counts as the
    same when it is at its default)."""
    skip = non_result_options(type(opts)) | ignore
    now = json.loads(json.dumps(dataclasses.asdict(opts), default=str))
    # an option added since ``before`` was saved, at its default, is the run ``before`` made (e.g. ``student``)
    defaults = {f.name: f.default for f in fields(opts) if f.default is not dataclasses.MISSING}
    skip |= {k for k in now if k not in before and k in defaults and now[k] == defaults[k]}
    keys = sorted((set(before) | set(now)) - skip)
    return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys if before.get(k) != now.get(k)]


@dataclass
class RunOptions:
    """Options every stage accepts (same names everywhere)."""

    task: str = option("mrpc", help="a GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli), or the "
                                    "name of a run on your own data (its output folder)", group="data")
    output_dir: str = option("runs", help="runs go to <output_dir>/<task>/<stage>/ (shared storage for multi-node)",
                             result=False)
    glue_dir: str | None = option(None, help="GLUE TSV folder (default $DIST_PEAKD_GLUE_DIR, else ../shared/glue)",
                                  group="data")
    hub_dataset: str | None = option(None, help="a hub dataset id or local dataset folder: the GLUE copy to read "
                                                "(e.g. nyu-mll/glue), or your own dataset", group="data")
    # data: your own files or hub dataset (dist_peakd.data.DataOptions; same names and defaults)
    hub_config: str | None = option(None, help="config of --hub_dataset (GLUE: default the task's name)", group="data")
    train_file: str | None = option(None, help="own data: train file (.csv .tsv .json .jsonl .parquet)", group="data")
    dev_file: str | None = option(None, help="own data: dev file (default: --dev_fraction of train, stratified)",
                                  group="data")
    test_file: str | None = option(None, help="own data: test file (labels optional)", group="data")
    train_split: str | None = option(None, help="own hub data: train split name (default train)", group="data")
    dev_split: str | None = option(None, help="own hub data: dev split (default validation, else dev, else carved)",
                                   group="data")
    test_split: str | None = option(None, help="own hub data: test split name (default test)", group="data")
    text_columns: str | None = option(None, help="own data: text column, or two for pairs: a or a,b (default text)",
                                      group="data")
    label_column: str | None = option(None, help="own data: label or score column (default label)", group="data")
    labels: str | None = option(None, help="own data: class names in class-index order, l1,l2,... (default: the "
                                           "train split's values, sorted)", group="data")
    problem: str | None = option(None, help="own data: binary | multiclass | regression (default: inferred from the "
                                            "labels; float scores: regression)", group="data")
    dev_fraction: float = option(0.1, help="own data without a dev split: share of train carved as dev "
                                           "(stratified, seeded by --split_seed)", group="data")
    positive_label: str | None = option(None, help="binary: the class whose F1 is 'f1' (default the second label)",
                                        group="data")
    metric: str | None = option(None, help="main metric: model selection and sweeps (default: the task's; own "
                                           "data: accuracy, regression pearson)", group="data")
    split_seed: int = option(0, help="seed of the carved dev split (not --seed: every stage and trial sees the "
                                     "same split)", group="data")
    unlabeled_file: list[str] | None = option(
        None, group="data", help="unlabeled text the teacher labels (cache-teacher) and distill learns from: .txt "
                                 "(one text per line; pairs: two texts separated by a tab) or .csv .tsv .json .jsonl "
                                 ".parquet with the task's text columns; repeatable: '[a.txt,b.csv]'")
    unlabeled_hub_dataset: str | None = option(None, group="data", help="a hub dataset id or local dataset folder "
                                                                        "of unlabeled text (its splits, the task's "
                                                                        "text columns)")
    augment: int = option(0, ge=0, group="data", help="N augmented variants of every labelled train row, added to "
                                                      "the unlabeled rows (0: none)")
    augment_seed: int | None = option(None, ge=0, group="data", help="seed of --augment (default --seed)")
    backbone: str = option(DEFAULT_BACKBONE, help="BERT checkpoint folder or hub id; 'minilm' = embedded "
                                                  "all-MiniLM-L6-v2")
    max_length: int = option(128, help="truncate sequences to this many tokens (at most the backbone's "
                                       "max_position_embeddings)")
    cache_dir: str | None = option(None, help="tokenization cache (default <output_dir>/.token_cache)", result=False)
    max_train_examples: int | None = option(None, help="use only the first N training examples")
    max_eval_examples: int | None = option(None, help="use only the first N dev examples")
    seed: int = option(0, help="random seed (sampling, init, dropout)", ge=0)
    # engine
    ds_config: str = option("fp32_zero0", help="DeepSpeed config: a ds_configs/ file stem or a path")
    precision: str | None = option(None, help="fp32 | bf16 | fp16 (overrides the ds_config)")
    zero_stage: int | None = option(None, help="ZeRO stage 0-3 (overrides the ds_config)")
    batch_size: int = option(32, help="global batch size (all ranks, all accumulation steps)")
    micro_batch_size: int | None = option(None, help="per-rank micro-batch (default batch_size / ranks)")
    gradient_clipping: float | None = option(1.0, help="max gradient norm (None: no clipping)", ge=0)
    lr: float = option(2e-5, help="peak learning rate (AdamW, linear warmup then decay)")
    weight_decay: float = option(0.01, help="AdamW weight decay", ge=0)
    warmup_ratio: float = option(0.1, help="fraction of the steps spent warming up")
    nan_policy: str = option("stop", help="non-finite loss: stop (exit 3, naming step and term) | skip the step")
    fused_optimizer: bool = option(True, help="fused AdamW kernel on CPU too (False: torch's per-tensor loop on "
                                              "CPU, bit for bit the results before issue 16; GPUs always fuse)")
    compile: bool = option(False, help="torch.compile the model forward (DeepSpeed engine.compile) and the loss; "
                                       "batches then pad to multiples of 8 (see pad_to_multiple_of)")
    compile_mode: str = option("default", help="torch.compile mode: default | reduce-overhead (CUDA graphs) | "
                                               "max-autotune | max-autotune-no-cudagraphs")
    pad_to_multiple_of: int | None = option(None, help="pad every batch to a multiple of N tokens (default: 8 "
                                                       "with --compile, else the batch's longest row)")
    # loop
    epochs: float = option(3.0, help="training epochs (fractions allowed)")
    eval_batch_size: int = option(128, help="global evaluation batch size", result=False)
    eval_every_steps: int = option(0, help="also evaluate every N steps (0: end of each epoch only)", ge=0)
    log_every_steps: int = option(10, help="log train scalars every N steps", result=False)
    stop_after_steps: int | None = option(None, help="checkpoint and stop (exit 75) after N steps of this "
                                                     "invocation; rerunning the same command resumes and runs N "
                                                     "more (the run's last step finishes it)", result=False)
    save_every_steps: int = option(0, help="also checkpoint every N steps (0: at epoch ends and on SIGTERM only)",
                                   result=False)
    keep_checkpoints: int = option(2, help="newest complete checkpoints kept; a corrupted newest falls back",
                                   result=False)
    keep_checkpoints_after_success: bool = option(False, help="keep checkpoints/ after the stage completed "
                                                              "(default: removed once summary.json is written)",
                                                  result=False)
    # reliability
    trust_unverified: bool = option(False, help="accept a dist-peakd folder (export, checkpoint) that has no file "
                                                "manifest; a file that fails its manifest is refused regardless",
                                    result=False)
    force: bool = option(False, help="redo a stage whose inputs (teacher, cache, PTP encoder, data, backbone) "
                                     "changed since its folder was made, deleting its old work; cache-teacher: "
                                     "rebuild a cache that does not match", result=False)
    max_skipped_fraction: float = option(0.1, help="nan_policy=skip: a run that skipped more than this fraction "
                                                   "of its steps is not finished (exit 3, no final/ export)",
                                         result=False, ge=0, le=1)

    def padding_multiple(self) -> int | None:
        """What batches are padded to a multiple of: ``pad_to_multiple_of``, else 8 with ``compile``."""
        if self.pad_to_multiple_of is not None:
            return self.pad_to_multiple_of
        return 8 if self.compile else None

    def engine_options(self) -> EngineOptions:
        names = {f.name for f in fields(EngineOptions)}
        return EngineOptions(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    def loop_options(self) -> LoopOptions:
        names = {f.name for f in fields(LoopOptions)}
        return LoopOptions(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    def layout(self) -> RunLayout:
        """Every path this run reads or writes (:mod:`dist_peakd.layout`)."""
        return RunLayout.of(self, DataOptions.from_options(self).run_name())

    def task_dir(self) -> Path:
        return self.layout().task_dir

    def data_options(self) -> DataOptions:
        """The data options of this run (:class:`dist_peakd.data.DataOptions`)."""
        return DataOptions.from_options(self)

    def validate(self) -> None:
        """Refuse bad values before any work starts, naming the option."""
        self.data_options().validate()
        for name in ("output_dir", "cache_dir"):
            check_folder_path(name, getattr(self, name))
        for name in ("max_length", "batch_size", "eval_batch_size", "log_every_steps"):
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
        if self.nan_policy not in NAN_POLICIES:
            raise ConfigError(f"option nan_policy: {self.nan_policy!r} is not one of {list(NAN_POLICIES)}")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"option compile_mode: {self.compile_mode!r} is not one of {list(COMPILE_MODES)}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ConfigError(f"option pad_to_multiple_of: must be >= 1 when given, got {self.pad_to_multiple_of}")
        if self.save_every_steps < 0:
            raise ConfigError(f"option save_every_steps: must be >= 0, got {self.save_every_steps}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"option keep_checkpoints: must be >= 1, got {self.keep_checkpoints}")
        if self.glue_dir is not None and self.hub_dataset is not None:
            raise ConfigError("options glue_dir and hub_dataset: give one data source, not both "
                              f"(glue_dir={self.glue_dir!r}, hub_dataset={self.hub_dataset!r})")

    def _validate_engine(self) -> None:
        import torch

        check_accelerator()  # before DeepSpeed is imported (check_ds_config)
        base = load_ds_config(self.ds_config)
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"option precision: {self.precision!r} is not one of {list(PRECISIONS)}")
        if self.zero_stage is not None and self.zero_stage not in ZERO_STAGES:
            raise ConfigError(f"option zero_stage: {self.zero_stage!r} is not one of {list(ZERO_STAGES)}")
        check_ds_config(base, resolve_ds_config_path(self.ds_config), precision=self.precision,
                        zero_stage=self.zero_stage, gradient_clipping=self.gradient_clipping)
        zero = self.zero_stage if self.zero_stage is not None else base.get("zero_optimization", {}).get("stage", 0)
        if self.nan_policy == "skip" and zero == 3:
            raise ConfigError("option nan_policy: skip is supported with ZeRO stages 0-2, not with zero_stage 3 "
                              "(use nan_policy=stop, or ZeRO 2)")
        precision = self.precision or config_precision(base)
        if precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("option precision: fp16 needs a CUDA GPU (DeepSpeed refuses fp16 on CPU); "
                              "use precision=bf16 or precision=fp32 on CPU")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size != 0:
            raise ConfigError(f"option batch_size: global batch {self.batch_size} is not divisible by "
                              f"micro_batch_size {self.micro_batch_size}")
        # The launcher sets WORLD_SIZE before the process starts: check micro x ranks now, not at engine build.
        world = env_int("WORLD_SIZE", 1, minimum=1)
        micro = self.micro_batch_size or max(1, self.batch_size // world)
        if world > 1 and self.batch_size % (micro * world) != 0:
            raise ConfigError(f"option batch_size: global batch {self.batch_size} is not divisible by "
                              f"micro_batch_size x ranks = {micro} x {world} = {micro * world}")


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
    """Read a YAML or JSON file of options (a flat mapping; :func:`dist_peakd.coerce.read_options_file`)."""
    return read_options_file(path)


def _unknown_options(cls: type, names: Iterable[str], source: str) -> None:
    valid = sorted(f.name for f in fields(cls))
    unknown = sorted(set(names) - set(valid))
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


def build_options(cls: type, config: str | None = None, **overrides: Any) -> Any:
    """Instantiate the dataclass ``cls`` from an optional config file, then command-line overrides.

    Every value, whatever its source, goes through :func:`dist_peakd.coerce.coerce_options` (the
    field's type) and the declared bounds (:func:`check_bounds`), then ``validate()``; unknown option
    names are refused with the list of valid ones, naming the file they came from.
    """
    values: dict[str, Any] = {}
    from_file: dict[str, Any] = {}
    if config:
        from_file = load_config_file(config)
        _unknown_options(cls, from_file, f"config file {config}")
        values.update(coerce_options(cls, from_file, f"config file {config}"))
    _unknown_options(cls, overrides, "options")
    values.update(coerce_options(cls, overrides, "the command line"))
    presets = getattr(cls, "PRESETS", {})
    preset = values.get("preset")
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"option preset: {preset!r} is not one of {sorted(presets)}")
        values = {**coerce_options(cls, preset_values(presets[preset], values.get("task")), f"preset {preset}"),
                  **values}
    _unknown_options(cls, values, "options")
    opts = cls(**values)
    try:
        check_bounds(opts)
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
