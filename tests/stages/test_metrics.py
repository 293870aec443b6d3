"""Metrics against hand-computed values, degenerate cases, and (where installed) sklearn/scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dist_peakd.data import TASKS
from dist_peakd.metrics import (
    accuracy,
    compute_metrics,
    f1,
    matthews_corrcoef,
    pearson,
    rankdata,
    spearman,
)

# predictions / labels with tp=2, tn=1, fp=1, fn=1
P = [1, 1, 0, 0, 1]
Y = [1, 0, 0, 1, 1]


def test_accuracy():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert accuracy(P, Y) == pytest.approx(3 / 5)


def test_f1_binary():
    # precision 2/3, recall 2/3 -> f1 = 2tp / (2tp + fp + fn) = 4/6
    assert f1(P, Y) == pytest.approx(2 / 3)
    assert f1([0, 0, 1], [0, 1, 1]) == pytest.approx(2 / 3)  # tp=1, fn=1 -> 2/3
    assert f1([1, 1], [1, 1]) == 1.0
    assert f1([0, 0], [0, 0]) == 0.0  # no positives at all: defined as 0.0
    assert f1([1, 1], [0, 0]) == 0.0


def test_matthews():
    # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2 - 1) / sqrt(3*3*2*2) = 1/6
    assert matthews_corrcoef(P, Y) == pytest.approx(1 / 6)
    assert matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 0, 1], [0, 1, 1, 0]) == pytest.approx(-1.0)
    assert matthews_corrcoef([1, 1, 1, 1], [0, 1, 1, 0]) == 0.0  # constant predictions
    assert matthews_corrcoef([0, 1, 1, 0], [1, 1, 1, 1]) == 0.0  # constant labels
    # multi-class: cm diag 2,1,1 and two swaps: (4*6 - 12) / sqrt((36 - 12) * (36 - 12)) = 0.5
    assert matthews_corrcoef([0, 2, 1, 0, 1, 2], [0, 1, 2, 0, 1, 2]) == pytest.approx(0.5)


def test_pearson():
    # x - 2.5 = [-1.5,-.5,.5,1.5], y - 3.75 = [-1.75,.25,1.25,.25]: 3.5 / sqrt(5 * 4.75)
    assert pearson([1, 2, 3, 4], [2, 4, 5, 4]) == pytest.approx(3.5 / math.sqrt(23.75))
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([2.0, 2.0, 2.0], [1, 2, 3]) == 0.0  # constant: 0.0 instead of NaN
    assert pearson([1.0], [2.0]) == 0.0


def test_rankdata_average_ties():
    assert rankdata([10, 20, 20, 30, 20]).tolist() == [1, 3, 3, 5, 3]
    assert rankdata([3.0, 1.0, 2.0]).tolist() == [3, 1, 2]
    assert rankdata([7, 7]).tolist() == [1.5, 1.5]


def test_spearman_with_ties():
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]: 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 10, 100, 1000], [1, 2, 3, 4]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([5, 5, 5], [1, 2, 3]) == 0.0


def test_input_validation():
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="empty"):
        f1([], [])
    with pytest.raises(ValueError, match="finite"):
        pearson([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        spearman([1.0, 2.0], [1.0, float("inf")])


def test_compute_metrics_per_task():
    assert compute_metrics("mrpc", P, Y) == {"f1": pytest.approx(2 / 3), "accuracy": pytest.approx(0.6)}
    assert list(compute_metrics("mrpc", P, Y)) == ["f1", "accuracy"]
    assert compute_metrics("CoLA", P, Y) == {"matthews": pytest.approx(1 / 6)}
    assert compute_metrics(TASKS["rte"], P, Y) == {"accuracy": pytest.approx(0.6)}
    out = compute_metrics("stsb", [1, 2, 2, 3], [1, 3, 2, 4])
    assert out == {"pearson": pytest.approx(pearson([1, 2, 2, 3], [1, 3, 2, 4])),
                   "spearmanr": pytest.approx(4.5 / math.sqrt(22.5))}
    assert all(isinstance(v, float) for v in out.values())


def test_compute_metrics_logits_and_column_vectors():
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]])
    assert compute_metrics("sst2", logits, [1, 0, 0]) == {"accuracy": pytest.approx(2 / 3)}
    mnli = np.eye(3)[[0, 2, 1, 1]]
    assert compute_metrics("mnli", mnli, [0, 2, 1, 0]) == {"accuracy": 0.75}
    reg = compute_metrics("stsb", np.array([[1.0], [2.0], [3.5]]), np.array([0.5, 2.0, 4.0], dtype=np.float32))
    assert reg["pearson"] > 0.98
    with pytest.raises(ValueError, match="columns"):
        compute_metrics("sst2", np.zeros((3, 3)), [0, 1, 0])


def test_compute_metrics_rejects_unlabelled():
    with pytest.raises(ValueError, match="unlabelled"):
        compute_metrics("mrpc", [0, 1], [-1, -1])
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics("stsb", [0.5, 1.0], [float("nan"), 1.0])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        compute_metrics("sst2", [0, 1], [0, 2])


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")
@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=60))
def test_classification_metrics_match_sklearn(data):
    skm = pytest.importorskip("sklearn.metrics")
    p, y = (np.array(v) for v in zip(*data, strict=True))
    assert matthews_corrcoef(p, y) == pytest.approx(skm.matthews_corrcoef(y, p), abs=1e-12)
    pb, yb = p % 2, y % 2
    assert f1(pb, yb) == pytest.approx(skm.f1_score(yb, pb, zero_division=0.0), abs=1e-12)
    assert accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p))


@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.tuples(st.integers(0, 5), st.floats(0, 5, allow_nan=False)), min_size=2, max_size=60))
def test_correlations_match_scipy(data):
    stats = pytest.importorskip("scipy.stats")
    x, y = (np.array(v, dtype=float) for v in zip(*data, strict=True))
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert pearson(x, y) == 0.0 and spearman(x, y) == 0.0
        return
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-9)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-9)
    assert rankdata(x).tolist() == stats.rankdata(x).tolist()
