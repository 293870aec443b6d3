"""Registry of the nine GLUE tasks: file layout, columns, label sets and metrics.

Class indices follow the Hugging Face hub dataset ``nyu-mll/glue`` (its ``ClassLabel`` order), so a
model trained from the TSV files and one trained from the hub agree on what index ``k`` means:
``labels[k]`` is the string found in the TSV file and ``label_names[k]`` the hub's class name.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnknownTaskError


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task.

    ``text_columns`` are TSV header names; for files without a header (CoLA train/dev) the header is
    ``headerless_columns``. ``labels`` are the label strings as they appear in the files, in
    class-index order (``None`` for the regression task STS-B, whose scores are floats in [0, 5]).
    """

    name: str
    folder: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    dev_splits: tuple[str, ...]
    hub_config: str
    test_splits: tuple[str, ...] = ("test",)
    hub_text_columns: tuple[str, ...] = ()
    label_names: tuple[str, ...] | None = None
    headerless_columns: tuple[str, ...] | None = None

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        """Number of classes (1 for regression: one output unit)."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def splits(self) -> tuple[str, ...]:
        """All split names of the task, in canonical order: train, dev split(s), test split(s)."""
        return ("train", *self.dev_splits, *self.test_splits)

    def label_to_id(self) -> dict[str, int]:
        """Map from the label string in the files to its class index (empty for regression)."""
        return {} if self.labels is None else {lab: i for i, lab in enumerate(self.labels)}


_ACC = ("accuracy",)
_F1_ACC = ("f1", "accuracy")

TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask("cola", "CoLA", ("sentence",), "label", ("0", "1"), ("matthews",), "matthews", ("dev",),
                 "cola", hub_text_columns=("sentence",), label_names=("unacceptable", "acceptable"),
                 headerless_columns=("source", "label", "original_label", "sentence")),
        GlueTask("sst2", "SST-2", ("sentence",), "label", ("0", "1"), _ACC, "accuracy", ("dev",), "sst2",
                 hub_text_columns=("sentence",), label_names=("negative", "positive")),
        GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), _F1_ACC, "f1", ("dev",),
                 "mrpc", hub_text_columns=("sentence1", "sentence2"),
                 label_names=("not_equivalent", "equivalent")),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearmanr"),
                 "pearson", ("dev",), "stsb", hub_text_columns=("sentence1", "sentence2")),
        GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), _F1_ACC, "accuracy",
                 ("dev",), "qqp", hub_text_columns=("question1", "question2"),
                 label_names=("not_duplicate", "duplicate")),
        GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label",
                 ("entailment", "neutral", "contradiction"), _ACC, "accuracy",
                 ("dev_matched", "dev_mismatched"), "mnli", test_splits=("test_matched", "test_mismatched"),
                 hub_text_columns=("premise", "hypothesis"),
                 label_names=("entailment", "neutral", "contradiction")),
        GlueTask("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), _ACC,
                 "accuracy", ("dev",), "qnli", hub_text_columns=("question", "sentence"),
                 label_names=("entailment", "not_entailment")),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), _ACC,
                 "accuracy", ("dev",), "rte", hub_text_columns=("sentence1", "sentence2"),
                 label_names=("entailment", "not_entailment")),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), _ACC, "accuracy", ("dev",),
                 "wnli", hub_text_columns=("sentence1", "sentence2"),
                 label_names=("not_entailment", "entailment")),
    )
}


def _normalize(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def get_task(name: str | GlueTask) -> GlueTask:
    """Look a task up by name, case-insensitively, ignoring '-' and '_' ("SST-2", "sts_b", "MRPC").

    A :class:`GlueTask` is returned unchanged. Unknown names raise :class:`UnknownTaskError`
    (a ``ValueError``) listing the valid names.
    """
    if isinstance(name, GlueTask):
        return name
    if not isinstance(name, str):
        raise UnknownTaskError(repr(name), TASKS)
    task = TASKS.get(_normalize(name))
    if task is None:
        raise UnknownTaskError(name, TASKS)
    return task
