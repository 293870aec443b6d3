"""PTP labels and thresholds on hand-made teacher logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dist_peakd.distill import (
    PAPER_THRESHOLDS,
    PTPThresholds,
    ptp_histogram,
    ptp_labels,
    ptp_thresholds,
)

# 3-class logits; conf = max softmax written out by hand below.
LOGITS = np.array([
    [3.0, 0.0, 0.0],   # gold 0, correct, conf e^3/(e^3+2)     = 0.9094
    [1.0, 0.0, 0.0],   # gold 0, correct, conf e/(e+2)         = 0.5761
    [0.0, 2.0, 0.0],   # gold 1, correct, conf e^2/(e^2+2)     = 0.7870  (the median of the correct ones)
    [4.0, 0.0, 0.0],   # gold 2, wrong,   conf e^4/(e^4+2)     = 0.9647
    [0.0, 0.0, 0.5],   # gold 0, wrong,   conf e^.5/(e^.5+2)   = 0.4519
], dtype=np.float32)
GOLD = np.array([0, 0, 1, 2, 0])


def _conf(a: float) -> float:
    return math.exp(a) / (math.exp(a) + 2.0)


def test_median_thresholds_and_labels():
    th = ptp_thresholds(LOGITS, GOLD)
    assert isinstance(th, PTPThresholds)
    assert (th.rule, th.n_correct, th.n_wrong) == ("median", 3, 2)
    assert th.t1 == pytest.approx(_conf(2.0), rel=1e-12)
    assert th.t2 == pytest.approx((_conf(4.0) + _conf(0.5)) / 2, rel=1e-12)
    labels = ptp_labels(LOGITS, GOLD, th)
    assert labels.dtype == np.int64
    # example 2 sits exactly on t1 -> unconfident (strict >)
    assert labels.tolist() == [0, 1, 1, 2, 3]


def test_boundary_equal_to_threshold_is_unconfident():
    logits = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])  # conf exactly 0.5, 0.5, 0.731
    gold = np.array([0, 1, 0])                                  # ties: argmax is class 0
    assert ptp_labels(logits, gold, (0.5, 0.5)).tolist() == [1, 3, 0]
    assert ptp_labels(logits, gold, (0.49, 0.49)).tolist() == [0, 2, 0]


def test_all_correct_teacher():
    gold = np.array([0, 0, 1, 0, 2])
    logits = LOGITS.copy()
    logits[4] = [0.0, 0.0, 3.0]
    th = ptp_thresholds(logits, gold)
    assert th.n_wrong == 0 and th.t2 == 1.0
    labels = ptp_labels(logits, gold, th)
    assert set(labels.tolist()) <= {0, 1}
    hist = ptp_histogram(labels)
    assert hist["confident_wrong"] == 0 and hist["unconfident_wrong"] == 0
    assert hist["confident_correct"] + hist["unconfident_correct"] == 5


def test_all_wrong_teacher():
    gold = np.array([1, 2, 0, 1, 1])
    th = ptp_thresholds(LOGITS, gold)
    assert th.n_correct == 0 and th.t1 == 1.0
    labels = ptp_labels(LOGITS, gold, th)
    assert set(labels.tolist()) == {2, 3}
    assert th.t2 == pytest.approx(_conf(2.0))  # median of the five confidences
    assert labels.tolist() == [2, 3, 3, 2, 3]


def test_saturated_confidence_never_exceeds_empty_set_threshold():
    logits = np.array([[60.0, 0.0], [0.0, 60.0]])  # conf rounds to 1.0 in float64
    gold = np.array([0, 1])
    th = ptp_thresholds(logits, gold)
    assert th.t1 == 1.0 and th.t2 == 1.0
    assert ptp_labels(logits, gold, th).tolist() == [1, 1]


@pytest.mark.parametrize("task,key", [("rte", "rte"), ("MRPC", "mrpc"), ("SST-2", "sst2"), ("sst2", "sst2"),
                                      ("qnli", "qnli"), ("CoLA", "cola")])
def test_paper_thresholds(task, key):
    th = ptp_thresholds(LOGITS, GOLD, rule="paper", task=task)
    assert (th.t1, th.t2) == PAPER_THRESHOLDS[key]
    assert (th.rule, th.n_correct, th.n_wrong) == ("paper", 3, 2)


def test_paper_constants():
    assert PAPER_THRESHOLDS == {"rte": (0.80, 0.60), "mrpc": (0.95, 0.75), "sst2": (0.98, 0.80),
                                "qnli": (0.98, 0.70), "cola": (0.95, 0.70)}
    th = ptp_thresholds(LOGITS, GOLD, rule="paper", task="rte")
    # 0.9094 > 0.80; 0.5761, 0.7870 <= 0.80; 0.9647 > 0.60; 0.4519 <= 0.60
    assert ptp_labels(LOGITS, GOLD, th).tolist() == [0, 1, 1, 2, 3]


@pytest.mark.parametrize("task", ["mnli", "stsb", None])
def test_paper_unknown_task_lists_known_tasks(task):
    with pytest.raises(ValueError, match="rte") as err:
        ptp_thresholds(LOGITS, GOLD, rule="paper", task=task)
    for name in PAPER_THRESHOLDS:
        assert name in str(err.value)


def test_unknown_rule():
    with pytest.raises(ValueError, match="rule"):
        ptp_thresholds(LOGITS, GOLD, rule="mean")


def test_regression_rejected():
    logits = np.array([[0.3], [2.1]])
    with pytest.raises(ValueError, match="classification tasks only"):
        ptp_thresholds(logits, np.array([0.5, 2.0]))
    with pytest.raises(ValueError, match="classification tasks only"):
        ptp_labels(logits, np.array([0.5, 2.0]), (0.9, 0.7))


def test_histogram_keys_always_present():
    keys = {"confident_correct", "unconfident_correct", "confident_wrong", "unconfident_wrong"}
    assert ptp_histogram(np.array([], dtype=np.int64)) == dict.fromkeys(keys, 0)
    hist = ptp_histogram(np.array([0, 1, 1, 3, 3, 3]))
    assert hist == {"confident_correct": 1, "unconfident_correct": 2, "confident_wrong": 0,
                    "unconfident_wrong": 3}
    with pytest.raises(ValueError):
        ptp_histogram(np.array([0, 4]))
