"""The data options (same names as the CLI's), their parsing and their up-front checks.

A run reads either a GLUE task (``task`` is a GLUE name: ``--task mrpc [--glue_dir D |
--hub_dataset nyu-mll/glue]``) or the user's own data (``task`` is any other name, which then only
names the run and its output folder, plus local files or a hub dataset). :class:`DataOptions`
holds every data option; :meth:`DataOptions.from_options` copies them from any options object
(e.g. the stages' ``RunOptions``) so the wiring is one call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..schema import option
from .errors import DataOptionError, MaxLengthError
from .tasks import COMPATIBLE_METRICS, PROBLEMS, TASKS, is_glue_name

#: File extensions of own data files and the HF ``datasets`` builder reading each.
FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_OWN_ONLY = ("text_columns", "label_column", "labels", "problem", "positive_label",
             "train_file", "dev_file", "test_file", "train_split", "dev_split", "test_split")


@dataclass
class DataSourceOptions:
    """The labelled data: a GLUE task, or your own files / hub dataset, and how to read them (the option
    section every command that reads a task's rows takes; :class:`DataOptions` explains each)."""

    task: str = option("mrpc", help="a GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli), or the "
                                    "name of a run on your own data (its output folder)", group="data")
    glue_dir: str | None = option(None, help="GLUE TSV folder (default $DIST_PEAKD_GLUE_DIR, else ../shared/glue)",
                                  group="data")
    hub_dataset: str | None = option(None, help="a hub dataset id or local dataset folder: the GLUE copy to read "
                                                "(e.g. nyu-mll/glue), or your own dataset", group="data")
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


@dataclass
class UnlabeledOptions:
    """Unlabeled text for the teacher to label and distill to learn from (cache-teacher, distill)."""

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



#: The options of the unlabeled pool (issue 25): only the stages that read it (cache-teacher, distill) compare
#: them in a stage folder's "same options?" check (a teacher or PTP encoder does not depend on them).
UNLABELED_OPTIONS = frozenset(f.name for f in fields(UnlabeledOptions))


@dataclass
class DataOptions(UnlabeledOptions, DataSourceOptions):
    """Where the data come from and how to read them.

    * ``task``: a GLUE name (``mrpc``, ``SST-2`` ...) means that GLUE task; any other name (letters,
      digits, ``.-_``) names a run on your own data (its output folder).
    * ``glue_dir``: GLUE folder (GLUE tasks only; ignored for own data).
    * ``train_file`` / ``dev_file`` / ``test_file``: own data files, format by extension
      (``.csv``, ``.tsv``, ``.json`` (JSON Lines or an array of records), ``.jsonl``,
      ``.parquet``); ``train_file`` is required with files; without ``dev_file`` a dev split is
      carved from train (``dev_fraction``).
    * ``hub_dataset`` / ``hub_config``: a hub dataset id (or a local dataset folder) and its config.
      GLUE tasks: the GLUE copy to read (config defaults to the task's name). Own data: the dataset.
    * ``train_split`` / ``dev_split`` / ``test_split``: own hub data's split names (defaults
      ``train``, ``validation`` (else ``dev``; neither: carve ``dev_fraction``), ``test``).
      A split named explicitly must exist.
    * ``text_columns``: ``"a"`` (single text) or ``"a,b"`` (pair) (default ``text``).
    * ``label_column``: the label/score column (default ``label``).
    * ``labels``: class values in class-index order (``"neg,pos"``); default: the train split's
      distinct values, sorted (numerically when all are integers; a hub ``ClassLabel`` keeps its
      order). Dev/test labels must be in this set.
    * ``problem``: ``binary``, ``multiclass`` or ``regression``; default: regression for float
      labels (a float column, or decimal strings not all integers), else binary for 2 classes and
      multiclass for more.
    * ``dev_fraction``: share of train carved (stratified by class, seeded by ``split_seed``) as
      the dev split when there is none (default 0.1).
    * ``positive_label``: the class whose F1 ``f1`` reports (binary; default the second label).
    * ``metric``: the main metric (model selection, sweeps); default ``task.main_metric``
      (GLUE: as before; own data: ``accuracy`` / ``pearson``).
    * ``split_seed``: seed of the carved dev split. Deliberately not the training ``seed``: every
      stage and sweep trial then sees the same split whatever its training seed.
    * ``unlabeled_file`` (one path or several) / ``unlabeled_hub_dataset``: unlabeled text for the
      teacher to label (:mod:`.unlabeled`): ``.txt`` (one text per line; a pair task: two texts
      separated by one tab) or a table (the formats above) with the task's text columns.
    * ``augment``: N augmented variants per labelled train row, added to the unlabeled pool
      (``augment_seed``: their seed, default the run's ``seed``).
    """

    @classmethod
    def from_options(cls, opts: Any) -> DataOptions:
        """The data options of any options object (attributes it lacks keep their defaults)."""
        if isinstance(opts, DataOptions):
            return opts
        return cls(**{f.name: getattr(opts, f.name) for f in fields(cls) if hasattr(opts, f.name)})

    @property
    def is_glue(self) -> bool:
        return is_glue_name(self.task)

    @property
    def uses_files(self) -> bool:
        return any(v is not None for v in (self.train_file, self.dev_file, self.test_file))

    def run_name(self) -> str:
        """The run's folder name: the canonical GLUE name, or ``task`` itself for own data."""
        return TASKS[_glue_key(self.task)].name if self.is_glue else self.task

    def text_column_names(self) -> tuple[str, ...]:
        return names_option("text_columns", self.text_columns) if self.text_columns is not None else ("text",)

    def label_column_name(self) -> str:
        return "label" if self.label_column is None else str(self.label_column)

    def label_values(self) -> tuple[str, ...] | None:
        return None if self.labels is None else names_option("labels", self.labels)

    def validate(self) -> DataOptions:
        """Refuse bad values and combinations up front (:class:`DataOptionError` naming the option)."""
        if self.is_glue:
            self._validate_glue()
        else:
            self._validate_own()
        if not isinstance(self.dev_fraction, int | float) or not 0 < self.dev_fraction < 1:
            raise DataOptionError("dev_fraction", f"must be a number in (0, 1), got {self.dev_fraction!r}")
        self._validate_unlabeled()
        if self.metric is not None and self.metric not in {m for ms in COMPATIBLE_METRICS.values() for m in ms}:
            raise DataOptionError("metric", f"unknown metric {self.metric!r}; known: "
                                  f"{sorted({m for ms in COMPATIBLE_METRICS.values() for m in ms})}")
        return self

    def unlabeled_files(self) -> tuple[str, ...]:
        """The ``unlabeled_file`` paths (one string or a list/tuple of them)."""
        value = self.unlabeled_file
        if value is None:
            return ()
        return (str(value),) if isinstance(value, str | Path) else tuple(str(v) for v in value)

    @property
    def has_unlabeled(self) -> bool:
        """Unlabeled rows are asked for: a file, a hub dataset or ``augment`` > 0."""
        return bool(self.unlabeled_files() or self.unlabeled_hub_dataset or self.augment)

    def _validate_unlabeled(self) -> None:
        if self.unlabeled_file is not None and not isinstance(self.unlabeled_file, str | Path | tuple | list):
            raise DataOptionError("unlabeled_file", f"expected a path or a list of paths, got {self.unlabeled_file!r}")
        files = self.unlabeled_files()
        for path in files:
            unlabeled_format(path)
        if len(set(files)) != len(files):
            raise DataOptionError("unlabeled_file", f"a file is given twice: {list(files)}")
        hub = self.unlabeled_hub_dataset
        if hub is not None and (not isinstance(hub, str) or not hub.strip()):
            raise DataOptionError("unlabeled_hub_dataset", f"expected a hub dataset id or folder, got {hub!r}")
        if isinstance(self.augment, bool) or not isinstance(self.augment, int) or self.augment < 0:
            raise DataOptionError("augment", f"must be an integer >= 0 (variants per train row), got {self.augment!r}")
        seed = self.augment_seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise DataOptionError("augment_seed", f"must be an integer >= 0 when given, got {seed!r}")

    def _validate_glue(self) -> None:
        given = [name for name in _OWN_ONLY if getattr(self, name) is not None]
        if given:
            raise DataOptionError(given[0], f"{self.task!r} is a GLUE task, whose files, columns and labels are "
                                  "fixed; to read your own data under these options give the run another --task name")
        if self.hub_dataset is None and self.hub_config is not None:
            raise DataOptionError("hub_config", "needs --hub_dataset")

    def _validate_own(self) -> None:
        if not isinstance(self.task, str) or not _RUN_NAME.fullmatch(self.task):
            raise DataOptionError("task", f"{self.task!r} is neither a GLUE task ({', '.join(TASKS)}) nor a valid "
                                  "run name for own data (letters, digits, '.', '-', '_')")
        if self.uses_files and self.hub_dataset is not None:
            raise DataOptionError("hub_dataset", "give either data files (--train_file ...) or --hub_dataset, not both")
        if not self.uses_files and self.hub_dataset is None:
            raise DataOptionError("task", f"{self.task!r} is not a GLUE task ({', '.join(TASKS)}); for your own data "
                                  "give --train_file [--dev_file --test_file] or --hub_dataset")
        if self.uses_files:
            self._validate_files()
        elif self.hub_config is not None and not isinstance(self.hub_config, str):
            raise DataOptionError("hub_config", f"must be a config name, got {self.hub_config!r}")
        columns = self.text_column_names()
        if len(columns) > 2:
            raise DataOptionError("text_columns", f"at most two text columns (a single text or a pair), got "
                                  f"{len(columns)}: {', '.join(columns)}")
        if self.label_column_name() in columns:
            raise DataOptionError("label_column", f"{self.label_column_name()!r} is also a text column")
        self._validate_labels()

    def _validate_files(self) -> None:
        for name in ("train_split", "dev_split", "test_split"):
            if getattr(self, name) is not None:
                raise DataOptionError(name, "applies to --hub_dataset; with files give --train_file/--dev_file/--test_file")
        if self.train_file is None:
            raise DataOptionError("train_file", "required with --dev_file/--test_file (labels come from train)")
        for name in ("train_file", "dev_file", "test_file"):
            value = getattr(self, name)
            if value is not None:
                file_format(value, name)

    def _validate_labels(self) -> None:
        problem, labels = self.problem, self.label_values()
        if problem is not None and problem not in PROBLEMS:
            raise DataOptionError("problem", f"{problem!r} is not one of {list(PROBLEMS)}")
        if labels is not None:
            if problem == "regression":
                raise DataOptionError("labels", "class labels do not apply to --problem regression")
            if len(labels) < 2 or len(set(labels)) != len(labels):
                raise DataOptionError("labels", f"need at least two distinct class labels, got {list(labels)}")
            if problem == "binary" and len(labels) != 2:
                raise DataOptionError("labels", f"--problem binary needs exactly 2 labels, got {len(labels)}")
        if self.positive_label is not None:
            if problem in ("multiclass", "regression"):
                raise DataOptionError("positive_label", f"applies to binary problems, not {problem}")
            if labels is not None and str(self.positive_label) not in labels:
                raise DataOptionError("positive_label", f"{self.positive_label!r} is not one of --labels {list(labels)}")


def _glue_key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def names_option(option: str, value: Any) -> tuple[str, ...]:
    """``"a,b"`` / ``("a", "b")`` / ``(0, 1)`` (fire parses ``--labels 0,1`` to a tuple) -> ``("a", "b")``."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        items = [value]
    out = []
    for item in items:
        if isinstance(item, float) and item.is_integer():
            item = int(item)
        text = str(item).strip()
        if not text:
            raise DataOptionError(option, f"empty name in {value!r}; expected comma-separated names like 'a,b'")
        out.append(text)
    return tuple(out)


def unlabeled_format(path: str | Path) -> str:
    """The reader of an ``unlabeled_file``: ``txt`` (one text per line) or a table format (:func:`file_format`)."""
    if Path(str(path)).suffix.lower() == ".txt":
        return "txt"
    suffix = Path(str(path)).suffix.lower()
    if suffix not in FILE_FORMATS:
        raise DataOptionError("unlabeled_file", f"{path}: unknown extension {suffix or '(none)'!r}; expected .txt "
                              f"(one text per line) or one of {', '.join(FILE_FORMATS)}")
    return FILE_FORMATS[suffix]


def file_format(path: str | Path, option: str) -> str:
    """The reader for ``path`` by its extension (``csv``, ``tsv``, ``json``, ``parquet``)."""
    suffix = Path(str(path)).suffix.lower()
    if suffix not in FILE_FORMATS:
        raise DataOptionError(option, f"{path}: unknown extension {suffix or '(none)'!r}; expected one of "
                              f"{', '.join(FILE_FORMATS)}")
    return FILE_FORMATS[suffix]


#: Model types whose position ids start after the padding index (RoBERTa family): usable length
#: is ``max_position_embeddings - pad_token_id - 1``.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "bart", "mbart")


def position_limit(config: Any) -> int | None:
    """Longest token sequence a backbone config can encode (``None`` if it declares no limit)."""
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or isinstance(limit, bool):
        return None
    if getattr(config, "model_type", None) in _OFFSET_POSITIONS:
        limit -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    return limit


def check_max_length(max_length: int, backbone: Any) -> int | None:
    """Refuse ``max_length`` above the backbone's position limit, naming both numbers; returns the limit.

    ``backbone``: a transformers config, or a model folder / hub id (its ``config.json`` is read).
    A config without ``max_position_embeddings`` (e.g. relative positions) accepts any length.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise DataOptionError("max_length", f"must be an integer >= 2, got {max_length!r}")
    config = backbone
    if isinstance(backbone, str | Path):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(backbone))
    limit = position_limit(config)
    if limit is not None and max_length > limit:
        where = f" of {backbone}" if isinstance(backbone, str | Path) else ""
        declared = config.max_position_embeddings
        usable = "" if declared == limit else f" ({limit} usable: positions start after the padding index)"
        raise MaxLengthError("max_length", f"{max_length} exceeds the backbone's max_position_embeddings "
                             f"{declared}{usable}{where}; use --max_length {limit} or less (longer texts are "
                             "truncated to it)")
    return limit
