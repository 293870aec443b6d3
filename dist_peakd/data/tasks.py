"""Task descriptions: one :class:`Task` for every dataset (the nine GLUE tasks and the user's own).

Downstream code (stages, metrics, exports) reads only :class:`Task` attributes (``name``,
``problem``, ``labels``, ``num_labels``, ``is_regression``, ``metrics``, ``main_metric``,
``positive_label``, ``dev_splits`` ...), so it never branches on GLUE vs own data. GLUE tasks are
:class:`GlueTask` instances (a :class:`Task` plus their file/hub layout); own datasets are plain
:class:`Task` instances built by :func:`~.own.load_data` from the data options.

GLUE class indices follow the Hugging Face hub dataset ``nyu-mll/glue`` (its ``ClassLabel`` order),
so a model trained from the TSV files and one trained from the hub agree on what index ``k`` means:
``labels[k]`` is the string found in the TSV file and ``label_names[k]`` the hub's class name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import UnknownTaskError

PROBLEMS = ("binary", "multiclass", "regression")

#: Metrics reported by default per problem (in this order; the first is the default main metric).
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("accuracy", "f1"),
    "multiclass": ("accuracy", "macro_f1"),
    "regression": ("pearson", "spearmanr"),
}

#: Every metric a problem can report (``--metric`` may pick any of these as the main one).
COMPATIBLE_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("accuracy", "f1", "macro_f1", "matthews"),
    "multiclass": ("accuracy", "macro_f1", "matthews"),
    "regression": ("pearson", "spearmanr"),
}


@dataclass(frozen=True)
class Task:
    """What every stage needs to know about a dataset.

    ``text_columns``: the 1 (single text) or 2 (pair) source column names; ``label_column``: the
    source label column. ``labels``: class values as strings, in class-index order (``None`` for
    regression); ``label_names``: human-readable class names where they differ (GLUE hub names),
    else ``None``. ``problem``: ``binary`` / ``multiclass`` / ``regression`` (derived from
    ``labels`` when empty). ``positive_label``: the class whose F1 is ``f1`` (binary only; default
    the second label). ``metrics``: reported dev metrics, in order; ``main_metric`` selects models.
    ``dev_splits`` / ``test_splits``: canonical split names (own data: ``dev`` and ``test``).
    """

    name: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    dev_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    label_names: tuple[str, ...] | None = None
    problem: str = ""
    positive_label: str | None = None

    def __post_init__(self) -> None:
        labels = self.labels
        problem = self.problem or ("regression" if labels is None else "binary" if len(labels) == 2 else "multiclass")
        if problem not in PROBLEMS:
            raise ValueError(f"task {self.name}: problem {problem!r} is not one of {list(PROBLEMS)}")
        if (problem == "regression") != (labels is None):
            raise ValueError(f"task {self.name}: labels must be None exactly for regression")
        if labels is not None and (len(labels) < 2 or len(set(labels)) != len(labels)
                                   or (problem == "binary" and len(labels) != 2)):
            raise ValueError(f"task {self.name}: {problem} needs distinct labels (binary: 2), got {labels}")
        if self.label_names is not None and (labels is None or len(self.label_names) != len(labels)):
            raise ValueError(f"task {self.name}: label_names must match labels one to one")
        if not 1 <= len(self.text_columns) <= 2:
            raise ValueError(f"task {self.name}: 1 or 2 text columns, got {self.text_columns}")
        unknown = [m for m in self.metrics if m not in COMPATIBLE_METRICS[problem]]
        if unknown or self.main_metric not in self.metrics:
            raise ValueError(f"task {self.name}: metrics {self.metrics} / main {self.main_metric!r} invalid for "
                             f"{problem} (choose from {COMPATIBLE_METRICS[problem]})")
        positive = self.positive_label
        if problem == "binary" and positive is None:
            positive = labels[1]
        if positive is not None and (problem != "binary" or positive not in labels):
            raise ValueError(f"task {self.name}: positive_label {positive!r} needs a binary task holding it")
        object.__setattr__(self, "problem", problem)
        object.__setattr__(self, "positive_label", positive)

    @property
    def is_regression(self) -> bool:
        return self.problem == "regression"

    @property
    def num_labels(self) -> int:
        """Number of classes (1 for regression: one output unit)."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def is_glue(self) -> bool:
        return False

    @property
    def splits(self) -> tuple[str, ...]:
        """All split names of the task, in canonical order: train, dev split(s), test split(s)."""
        return ("train", *self.dev_splits, *self.test_splits)

    @property
    def positive_index(self) -> int | None:
        """Class index of ``positive_label`` (binary tasks), else ``None``."""
        return None if self.positive_label is None else self.labels.index(self.positive_label)

    def label_to_id(self) -> dict[str, int]:
        """Map from the label string in the files to its class index (empty for regression)."""
        return {} if self.labels is None else {lab: i for i, lab in enumerate(self.labels)}

    def id2label(self) -> dict[int, str]:
        """Class index -> display name, for a model config's ``id2label`` (regression: the label column)."""
        if self.labels is None:
            return {0: self.label_column}
        return dict(enumerate(self.label_names or self.labels))

    def with_main_metric(self, metric: str | None) -> Task:
        """This task with ``metric`` as main metric (added to ``metrics`` if not reported yet).

        ``None`` returns the task unchanged; a metric the problem cannot report raises ``ValueError``.
        """
        if metric is None or metric == self.main_metric:
            return self
        if metric not in COMPATIBLE_METRICS[self.problem]:
            raise ValueError(f"metric {metric!r} is not defined for {self.problem} task {self.name}; "
                             f"choose from {list(COMPATIBLE_METRICS[self.problem])}")
        metrics = self.metrics if metric in self.metrics else (*self.metrics, metric)
        return dataclasses.replace(self, metrics=metrics, main_metric=metric)

    def describe(self) -> dict[str, Any]:
        """JSON-able description (for run records, model cards and exports)."""
        return {"name": self.name, "glue": self.is_glue, "problem": self.problem,
                "text_columns": list(self.text_columns), "label_column": self.label_column,
                "labels": None if self.labels is None else list(self.labels),
                "id2label": {str(k): v for k, v in self.id2label().items()},
                "positive_label": self.positive_label, "metrics": list(self.metrics),
                "main_metric": self.main_metric}


@dataclass(frozen=True, kw_only=True)
class GlueTask(Task):
    """One GLUE task: a :class:`Task` plus where its files and hub copy live.

    ``text_columns`` are TSV header names; for files without a header (CoLA train/dev) the header is
    ``headerless_columns``. ``labels`` are the label strings as they appear in the files, in
    class-index order (``None`` for the regression task STS-B, whose scores are floats in [0, 5]).
    """

    folder: str
    hub_config: str
    hub_text_columns: tuple[str, ...] = ()
    headerless_columns: tuple[str, ...] | None = None

    @property
    def is_glue(self) -> bool:
        return True


_ACC = ("accuracy",)
_F1_ACC = ("f1", "accuracy")
_PAIR = ("sentence1", "sentence2")


def _glue(name: str, folder: str, text_columns: tuple[str, ...], label_column: str,
          labels: tuple[str, ...] | None, metrics: tuple[str, ...], main: str,
          hub_text_columns: tuple[str, ...], label_names: tuple[str, ...] | None = None, **kw: Any) -> GlueTask:
    return GlueTask(name=name, folder=folder, text_columns=text_columns, label_column=label_column,
                    labels=labels, metrics=metrics, main_metric=main, hub_config=name,
                    hub_text_columns=hub_text_columns, label_names=label_names, **kw)


TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        _glue("cola", "CoLA", ("sentence",), "label", ("0", "1"), ("matthews",), "matthews", ("sentence",),
              ("unacceptable", "acceptable"), headerless_columns=("source", "label", "original_label", "sentence")),
        _glue("sst2", "SST-2", ("sentence",), "label", ("0", "1"), _ACC, "accuracy", ("sentence",),
              ("negative", "positive")),
        _glue("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), _F1_ACC, "f1", _PAIR,
              ("not_equivalent", "equivalent")),
        _glue("stsb", "STS-B", _PAIR, "score", None, ("pearson", "spearmanr"), "pearson", _PAIR),
        _glue("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), _F1_ACC, "accuracy",
              ("question1", "question2"), ("not_duplicate", "duplicate")),
        _glue("mnli", "MNLI", _PAIR, "gold_label", ("entailment", "neutral", "contradiction"), _ACC, "accuracy",
              ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
              dev_splits=("dev_matched", "dev_mismatched"), test_splits=("test_matched", "test_mismatched")),
        _glue("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), _ACC,
              "accuracy", ("question", "sentence"), ("entailment", "not_entailment")),
        _glue("rte", "RTE", _PAIR, "label", ("entailment", "not_entailment"), _ACC, "accuracy", _PAIR,
              ("entailment", "not_entailment")),
        _glue("wnli", "WNLI", _PAIR, "label", ("0", "1"), _ACC, "accuracy", _PAIR,
              ("not_entailment", "entailment")),
    )
}


def normalize_task_name(name: str) -> str:
    """``"SST-2"`` -> ``"sst2"``: lower case, surrounding spaces and every '-' / '_' dropped."""
    return name.strip().lower().replace("-", "").replace("_", "")


def is_glue_name(name: object) -> bool:
    """Whether ``name`` names one of the nine GLUE tasks (as :func:`get_task` would accept it)."""
    return isinstance(name, str) and normalize_task_name(name) in TASKS


def get_task(name: str | Task) -> Task:
    """Look a GLUE task up by name, case-insensitively, ignoring '-' and '_' ("SST-2", "sts_b", "MRPC").

    A :class:`Task` (GLUE or own) is returned unchanged. Unknown names raise
    :class:`UnknownTaskError` (a ``ValueError``) listing the valid names; own datasets are
    described by :func:`~.own.load_data` instead.
    """
    if isinstance(name, Task):
        return name
    if not isinstance(name, str):
        raise UnknownTaskError(repr(name), TASKS)
    task = TASKS.get(normalize_task_name(name))
    if task is None:
        raise UnknownTaskError(name, TASKS)
    return task
