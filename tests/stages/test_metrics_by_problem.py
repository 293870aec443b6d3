"""Metrics by problem (binary / multi-class / regression), the positive label, the main-metric choice,
the degenerate-prediction warnings, and the Task description shared by GLUE and own data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dist_peakd.data import TASKS, Task, get_task
from dist_peakd.metrics import compute_metrics, f1, macro_f1, metric_report, prediction_warnings


def _task(problem, labels=None, **kw):
    from dist_peakd.data.tasks import DEFAULT_METRICS

    return Task(name="own", text_columns=("text",), label_column="label", labels=labels,
                metrics=DEFAULT_METRICS[problem], main_metric=DEFAULT_METRICS[problem][0], problem=problem, **kw)


BINARY = _task("binary", ("ham", "spam"))
THREE = _task("multiclass", ("bird", "cat", "dog"))
SCORES = _task("regression")


def test_binary_reports_accuracy_and_f1_of_the_positive_class():
    p, y = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # tp=2 fp=1 fn=1 for class 1; tp=1 fp=1 fn=1 for class 0
    assert compute_metrics(BINARY, p, y) == {"accuracy": pytest.approx(0.6), "f1": pytest.approx(2 / 3)}
    neg = _task("binary", ("ham", "spam"), positive_label="ham")
    assert neg.positive_index == 0
    assert compute_metrics(neg, p, y) == {"accuracy": pytest.approx(0.6), "f1": pytest.approx(0.5)}
    assert f1(p, y, positive=0) == pytest.approx(0.5)


def test_multiclass_reports_accuracy_and_macro_f1():
    p, y = [0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2]
    # class 0: tp1 fp1 fn0 -> 2/3; class 1: tp2 fp0 fn1 -> 4/5; class 2: tp1 fp1 fn1 -> 1/2
    expected = (2 / 3 + 4 / 5 + 1 / 2) / 3
    assert compute_metrics(THREE, p, y) == {"accuracy": pytest.approx(4 / 6), "macro_f1": pytest.approx(expected)}
    logits = np.eye(3)[p] * 3.0
    assert compute_metrics(THREE, logits, y) == compute_metrics(THREE, p, y)


def test_regression_reports_pearson_and_spearman_without_warnings():
    report = metric_report(SCORES, [1.0, 2.0, 2.5, 4.0], [1.5, 2.0, 3.0, 3.5])
    assert list(report.values) == ["pearson", "spearmanr"] and report.values["spearmanr"] == pytest.approx(1.0)
    assert report.warnings == []


def test_constant_regression_predictions_warn_beside_their_zero_correlations():
    labels = [0.5, 1.0, 3.0, 4.5]
    report = metric_report(SCORES, np.full((4, 1), 2.5, dtype=np.float32), labels)
    assert report.values == {"pearson": 0.0, "spearmanr": 0.0}
    assert all(isinstance(v, float) for v in report.values.values())  # the dict stays numeric
    assert len(report.warnings) == 1 and "all 4 predictions are the same value 2.5" in report.warnings[0]
    assert "collapsed" in report.warnings[0]
    nearly = metric_report(SCORES, [2.5, 2.5 + 1e-6, 2.5 - 1e-6, 2.5], labels)
    assert len(nearly.warnings) == 1 and "nearly constant" in nearly.warnings[0]
    assert prediction_warnings(SCORES, [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]) == [
        "own: all 4 labels are the same value 2: pearson/spearmanr are undefined and read 0.0"]
    assert prediction_warnings("stsb", [2.0] * 3, [1.0, 2.0, 3.0])[0].startswith("stsb: all 3 predictions")


def test_single_class_classifier_warns():
    report = metric_report(THREE, [1, 1, 1], [0, 1, 2])
    assert report.warnings == ["own: all 3 predictions are class 'cat'"]
    assert metric_report(THREE, [1, 0, 1], [0, 1, 2]).warnings == []
    assert prediction_warnings("mrpc", [1, 1], [0, 1]) == ["mrpc: all 2 predictions are class 'equivalent'"]


def test_glue_metrics_keep_their_names_order_and_values():
    p, y = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    assert compute_metrics("mrpc", p, y) == {"f1": pytest.approx(2 / 3), "accuracy": pytest.approx(0.6)}
    assert list(compute_metrics("qqp", p, y)) == ["f1", "accuracy"]
    assert list(compute_metrics("cola", p, y)) == ["matthews"]
    assert list(compute_metrics("mnli", [0, 1, 2], [0, 1, 1])) == ["accuracy"]


@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=60),
       positive=st.integers(0, 1))
def test_f1_and_macro_f1_match_sklearn(data, positive):
    sk = pytest.importorskip("sklearn.metrics")
    p, y = np.array([a for a, _ in data]), np.array([b for _, b in data])
    assert macro_f1(p, y) == pytest.approx(sk.f1_score(y, p, average="macro", zero_division=0))
    assert f1(p, y, positive) == pytest.approx(sk.f1_score(y, p, labels=[positive], average="macro", zero_division=0))


def test_main_metric_choice():
    assert THREE.with_main_metric(None) is THREE
    chosen = THREE.with_main_metric("matthews")
    assert chosen.main_metric == "matthews" and chosen.metrics == ("accuracy", "macro_f1", "matthews")
    assert list(compute_metrics(chosen, [0, 1, 2], [0, 1, 1])) == ["accuracy", "macro_f1", "matthews"]
    mrpc = get_task("mrpc").with_main_metric("accuracy")
    assert mrpc.metrics == ("f1", "accuracy") and mrpc.main_metric == "accuracy" and mrpc.is_glue
    with pytest.raises(ValueError, match="not defined for multiclass"):
        THREE.with_main_metric("f1")
    with pytest.raises(ValueError, match="not defined for regression"):
        SCORES.with_main_metric("accuracy")


def test_glue_tasks_are_tasks_with_problems_and_positive_labels():
    problems = {name: t.problem for name, t in TASKS.items()}
    assert problems == {"cola": "binary", "sst2": "binary", "mrpc": "binary", "stsb": "regression", "qqp": "binary",
                        "mnli": "multiclass", "qnli": "binary", "rte": "binary", "wnli": "binary"}
    assert all(isinstance(t, Task) and t.is_glue for t in TASKS.values())
    assert TASKS["mrpc"].positive_label == "1" and TASKS["mrpc"].positive_index == 1
    assert TASKS["mrpc"].id2label() == {0: "not_equivalent", 1: "equivalent"}
    assert TASKS["stsb"].id2label() == {0: "score"} and TASKS["stsb"].positive_label is None
    assert json.loads(json.dumps(TASKS["mnli"].describe()))["labels"] == ["entailment", "neutral", "contradiction"]


def test_own_task_description_and_invariants():
    assert not BINARY.is_glue and BINARY.positive_label == "spam" and BINARY.id2label() == {0: "ham", 1: "spam"}
    assert THREE.describe()["problem"] == "multiclass" and SCORES.num_labels == 1 and SCORES.is_regression
    with pytest.raises(ValueError, match="binary needs distinct labels"):
        _task("binary", ("a", "b", "c"))
    with pytest.raises(ValueError, match="labels must be None exactly for regression"):
        _task("regression", ("a", "b"))
    with pytest.raises(ValueError, match="positive_label 'c'"):
        _task("binary", ("a", "b"), positive_label="c")
    with pytest.raises(ValueError, match="1 or 2 text columns"):
        Task(name="x", text_columns=("a", "b", "c"), label_column="y", labels=("p", "q"), metrics=("accuracy",),
             main_metric="accuracy")
    with pytest.raises(ValueError, match="invalid for regression"):
        Task(name="x", text_columns=("a",), label_column="y", labels=None, metrics=("accuracy",),
             main_metric="accuracy")
