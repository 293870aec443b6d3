"""Task registry: names, folders, label sets, metrics and name lookup."""

from __future__ import annotations

import pytest

from dist_peakd.data import TASKS, GlueTask, UnknownTaskError, get_task
from dist_peakd.data.errors import DataError

ALL = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


def test_all_nine_tasks_registered():
    assert set(TASKS) == set(ALL)
    for name, task in TASKS.items():
        assert isinstance(task, GlueTask)
        assert task.name == name
        assert task.main_metric in task.metrics
        assert 1 <= len(task.text_columns) <= 2
        assert len(task.hub_text_columns) == len(task.text_columns)
        assert task.splits[0] == "train"
        if task.labels is not None:
            assert task.label_names is not None and len(task.label_names) == len(task.labels)
            assert len(set(task.labels)) == len(task.labels)


@pytest.mark.parametrize(("name", "folder", "main", "metrics"), [
    ("mrpc", "MRPC", "f1", ("f1", "accuracy")),
    ("cola", "CoLA", "matthews", ("matthews",)),
    ("stsb", "STS-B", "pearson", ("pearson", "spearmanr")),
    ("sst2", "SST-2", "accuracy", ("accuracy",)),
    ("qqp", "QQP", "accuracy", ("f1", "accuracy")),
    ("mnli", "MNLI", "accuracy", ("accuracy",)),
    ("qnli", "QNLI", "accuracy", ("accuracy",)),
    ("rte", "RTE", "accuracy", ("accuracy",)),
    ("wnli", "WNLI", "accuracy", ("accuracy",)),
])
def test_folders_and_metrics(name, folder, main, metrics):
    task = TASKS[name]
    assert task.folder == folder
    assert task.main_metric == main
    assert task.metrics == metrics


def test_properties():
    assert TASKS["stsb"].is_regression and TASKS["stsb"].num_labels == 1 and TASKS["stsb"].labels is None
    assert TASKS["mnli"].num_labels == 3 and not TASKS["mnli"].is_regression
    assert TASKS["mnli"].dev_splits == ("dev_matched", "dev_mismatched")
    assert TASKS["mnli"].test_splits == ("test_matched", "test_mismatched")
    assert TASKS["mrpc"].num_labels == 2 and TASKS["mrpc"].is_pair
    assert not TASKS["cola"].is_pair and not TASKS["sst2"].is_pair
    assert TASKS["cola"].headerless_columns == ("source", "label", "original_label", "sentence")
    assert TASKS["qnli"].label_to_id() == {"entailment": 0, "not_entailment": 1}
    assert TASKS["stsb"].label_to_id() == {}
    for name in ALL:
        assert TASKS[name].hub_config == name
        assert TASKS[name].dev_splits == (("dev_matched", "dev_mismatched") if name == "mnli" else ("dev",))


def test_class_order_matches_hub():
    # index k means the same class whether data come from the TSV files or from nyu-mll/glue
    assert TASKS["mnli"].labels == ("entailment", "neutral", "contradiction")
    assert TASKS["rte"].label_names == ("entailment", "not_entailment")
    assert TASKS["mrpc"].label_names == ("not_equivalent", "equivalent")
    assert TASKS["wnli"].label_names == ("not_entailment", "entailment")
    assert TASKS["cola"].label_names == ("unacceptable", "acceptable")


@pytest.mark.parametrize(("alias", "name"), [
    ("SST-2", "sst2"), ("sst-2", "sst2"), ("sst2", "sst2"), ("SST2", "sst2"), ("STS-B", "stsb"),
    ("sts_b", "stsb"), ("stsb", "stsb"), ("MRPC", "mrpc"), ("CoLA", "cola"), ("MNLI", "mnli"),
    (" qnli ", "qnli"), ("Rte", "rte"), ("WNLI", "wnli"), ("QQP", "qqp"),
])
def test_get_task_aliases(alias, name):
    assert get_task(alias) is TASKS[name]


def test_get_task_passes_task_through():
    assert get_task(TASKS["rte"]) is TASKS["rte"]


@pytest.mark.parametrize("bad", ["sst", "glue", "", "mnli-mm", "squad"])
def test_unknown_task_lists_valid_names(bad):
    with pytest.raises(UnknownTaskError) as ei:
        get_task(bad)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, DataError)
    msg = str(ei.value)
    assert repr(bad) in msg
    for name in ALL:
        assert name in msg


def test_task_is_frozen():
    with pytest.raises(AttributeError):
        TASKS["mrpc"].name = "x"  # type: ignore[misc]
