"""Metrics by problem in plain NumPy (no sklearn/scipy).

binary: ``accuracy`` + ``f1`` (of the task's positive class); multi-class: ``accuracy`` +
``macro_f1``; regression: ``pearson`` + ``spearmanr``; ``matthews`` for CoLA (and on request).
GLUE tasks report exactly their GLUE metrics (``task.metrics``).

All functions take ``(predictions, labels)`` and return a Python float. Degenerate cases are
defined explicitly instead of producing NaN:

* ``f1``: no positive prediction and no positive label (``2tp + fp + fn == 0``) -> 0.0 (as
  sklearn's ``zero_division=0``); ``macro_f1`` averages that over the classes present in the
  labels or the predictions (as sklearn's ``f1_score(average="macro")``).
* ``matthews_corrcoef``: constant predictions or constant labels (a zero denominator) -> 0.0 (as
  sklearn).
* ``pearson`` / ``spearman``: a constant input (zero variance) -> 0.0 instead of NaN; fewer than
  two points -> 0.0.
* empty inputs, length mismatches and non-finite values raise ``ValueError``.

Those 0.0 values hide a collapsed model, so :func:`metric_report` returns, beside the numeric
metrics, ``warnings``: one line per suspicious case (constant or nearly constant regression
predictions, constant labels, a classifier predicting a single class) for the stages to print/log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .data.tasks import Task, get_task


def _pair(predictions: Any, labels: Any, dtype: Any = None) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predictions, dtype=dtype).reshape(-1)
    y = np.asarray(labels, dtype=dtype).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"predictions ({p.size}) and labels ({y.size}) differ in length")
    if p.size == 0:
        raise ValueError("metrics of an empty set are undefined")
    return p, y


def accuracy(predictions: Any, labels: Any) -> float:
    """Fraction of exact matches."""
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def f1(predictions: Any, labels: Any, positive: int = 1) -> float:
    """F1 of the class ``positive`` (default 1; 0.0 when there is neither a positive prediction nor label)."""
    p, y = _pair(predictions, labels)
    return _class_f1(p, y, positive)


def _class_f1(p: np.ndarray, y: np.ndarray, positive: Any) -> float:
    tp = int(np.sum((p == positive) & (y == positive)))
    fp = int(np.sum((p == positive) & (y != positive)))
    fn = int(np.sum((p != positive) & (y == positive)))
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else 2.0 * tp / denom


def macro_f1(predictions: Any, labels: Any) -> float:
    """Unweighted mean of the per-class F1 over the classes present in labels or predictions."""
    p, y = _pair(predictions, labels)
    return float(np.mean([_class_f1(p, y, c) for c in np.unique(np.concatenate([y, p]))]))


def matthews_corrcoef(predictions: Any, labels: Any) -> float:
    """Matthews correlation (multi-class form, as sklearn); 0.0 when predictions or labels are constant."""
    p, y = _pair(predictions, labels)
    classes, inv = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = len(classes)
    yi, pi = inv[: len(y)], inv[len(y):]
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (yi, pi), 1.0)
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    n = cm.sum()
    cov_yp = np.trace(cm) * n - t_sum @ p_sum
    cov_pp = n * n - p_sum @ p_sum
    cov_yy = n * n - t_sum @ t_sum
    if cov_pp == 0 or cov_yy == 0:
        return 0.0
    return float(np.clip(cov_yp / np.sqrt(cov_yy * cov_pp), -1.0, 1.0))


def _finite_floats(predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = _pair(predictions, labels, dtype=np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("predictions and labels must be finite (NaN/inf found)")
    return x, y


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2:
        return 0.0
    xm, ym = x - x.mean(), y - y.mean()
    sx, sy = np.abs(xm).max(), np.abs(ym).max()
    if sx == 0 or sy == 0:
        return 0.0
    xm, ym = xm / sx, ym / sy  # rescale: no under/overflow in the products below
    denom = np.sqrt((xm @ xm) * (ym @ ym))
    if denom == 0 or not np.isfinite(denom):
        return 0.0
    return float(np.clip((xm @ ym) / denom, -1.0, 1.0))


def pearson(predictions: Any, labels: Any) -> float:
    """Pearson correlation; 0.0 when either side is constant."""
    return _pearson(*_finite_floats(predictions, labels))


def rankdata(a: Any) -> np.ndarray:
    """1-based ranks with ties given their average rank (as ``scipy.stats.rankdata(method='average')``)."""
    a = np.asarray(a).reshape(-1)
    sorter = np.argsort(a, kind="mergesort")
    inv = np.empty(a.size, dtype=np.intp)
    inv[sorter] = np.arange(a.size)
    s = a[sorter]
    first = np.r_[True, s[1:] != s[:-1]]
    dense = np.cumsum(first)[inv]
    bounds = np.r_[np.nonzero(first)[0], a.size]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def spearman(predictions: Any, labels: Any) -> float:
    """Spearman rank correlation (Pearson of average ranks); 0.0 when either side is constant."""
    x, y = _finite_floats(predictions, labels)
    return _pearson(rankdata(x), rankdata(y))


_METRICS = {
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "matthews": matthews_corrcoef,
    "pearson": pearson,
    "spearmanr": spearman,
}


@dataclass
class MetricReport:
    """Numeric metrics (``values``, as :func:`compute_metrics`) and one-line ``warnings`` beside them."""

    values: dict[str, float]
    warnings: list[str] = field(default_factory=list)


def compute_metrics(task: str | Task, predictions: Any, labels: Any) -> dict[str, float]:
    """The task's metrics (``task.metrics``, in that order) as ``{name: value}``.

    Classification: ``predictions`` are class indices, or logits of shape ``(n, num_labels)``
    (arg-maxed); ``labels`` class indices. Regression: floats (shape ``(n,)`` or ``(n, 1)``).
    ``f1`` is the F1 of ``task.positive_label`` (GLUE: class 1). Unlabelled rows (label -1 / NaN,
    i.e. test splits) raise ``ValueError``.
    """
    return metric_report(task, predictions, labels).values


def metric_report(task: str | Task, predictions: Any, labels: Any, rel_tol: float = 1e-3) -> MetricReport:
    """:func:`compute_metrics` plus :func:`prediction_warnings` (``rel_tol``: see there)."""
    task = get_task(task)
    p, y = _prepared(task, predictions, labels)
    _pair(p, y)
    positive = 1 if task.positive_index is None else task.positive_index
    values = {m: _class_f1(p, y, positive) if m == "f1" else _METRICS[m](p, y) for m in task.metrics}
    return MetricReport(values=values, warnings=_warnings(task, p, y, rel_tol))


def prediction_warnings(task: str | Task, predictions: Any, labels: Any, rel_tol: float = 1e-3) -> list[str]:
    """Warnings on degenerate predictions (inputs as for :func:`compute_metrics`).

    Regression: predictions constant (all equal), or nearly constant (standard deviation below
    ``rel_tol`` times the labels'), and constant labels: Pearson/Spearman then read 0.0 or noise.
    Classification (2+ rows): every prediction the same class.
    """
    task = get_task(task)
    return _warnings(task, *_prepared(task, predictions, labels), rel_tol)


def _warnings(task: Task, p: np.ndarray, y: np.ndarray, rel_tol: float) -> list[str]:
    out: list[str] = []
    if p.size < 2:
        return out
    if task.is_regression:
        p_std, y_std = float(np.std(p.astype(np.float64))), float(np.std(y.astype(np.float64)))
        if np.all(p == p[0]):
            out.append(f"{task.name}: all {p.size} predictions are the same value {float(p[0]):.6g}: the model is "
                       "collapsed; pearson/spearmanr are undefined and read 0.0")
        elif p_std < rel_tol * y_std:
            out.append(f"{task.name}: predictions are nearly constant (std {p_std:.3g} vs the labels' {y_std:.3g}): "
                       "the model is (nearly) collapsed; pearson/spearmanr are not meaningful")
        if np.all(y == y[0]):
            out.append(f"{task.name}: all {y.size} labels are the same value {float(y[0]):.6g}: "
                       "pearson/spearmanr are undefined and read 0.0")
    elif np.all(p == p[0]):
        names = task.id2label()
        out.append(f"{task.name}: all {p.size} predictions are class {names.get(int(p[0]), p[0])!r}")
    return out


def _prepared(task: Task, predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """1-D predictions and labels: logits arg-maxed, dtypes and ranges checked."""
    p = np.asarray(predictions)
    y = np.asarray(labels)
    if task.is_regression:
        if p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
        p = p.astype(np.float64)
        y = y.astype(np.float64)
        if y.size and np.isnan(y).any():
            raise ValueError(f"{task.name}: labels contain NaN (unlabelled test rows?)")
    else:
        if p.ndim == 2:
            if p.shape[1] != task.num_labels:
                raise ValueError(f"{task.name}: logits have {p.shape[1]} columns, expected {task.num_labels}")
            p = p.argmax(axis=-1)
        if y.size and np.issubdtype(y.dtype, np.floating):
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                raise ValueError(f"{task.name}: classification labels must be integer class indices")
        y = y.astype(np.int64)
        if y.size and (y.min() < 0 or y.max() >= task.num_labels):
            raise ValueError(f"{task.name}: labels must be in [0, {task.num_labels}) (unlabelled test rows "
                             f"are -1), got range [{y.min()}, {y.max()}]")
    if p.ndim != 1:
        raise ValueError(f"{task.name}: predictions must be 1-D, got shape {p.shape}")
    return p, y


def prediction_profile(task: str | Task, predictions: Any, labels: Any) -> dict[str, Any]:
    """What a model card's limitations section states about one dev evaluation.

    ``baseline``: the trivial model's metrics on the same rows (classification: always the dev split's
    most frequent gold class, ties to the lower index; regression: always the dev labels' mean, whose
    correlations read 0.0). Classification adds the share of each class among the predictions and
    among the gold labels; regression the mean and standard deviation of both.
    """
    task = get_task(task)
    p, y = _prepared(task, predictions, labels)
    _pair(p, y)
    out: dict[str, Any] = {"rows": int(y.size)}
    if task.is_regression:
        mean = float(y.mean())
        out["baseline"] = {"rule": "mean", "value": mean,
                           "metrics": metric_report(task, np.full(y.size, mean), y).values}
        out["predictions"] = {"mean": float(p.mean()), "std": float(p.std())}
        out["gold"] = {"mean": mean, "std": float(y.std())}
        return out
    names = task.id2label()
    counts_y, counts_p = np.bincount(y, minlength=task.num_labels), np.bincount(p, minlength=task.num_labels)
    majority = int(np.argmax(counts_y))
    out["baseline"] = {"rule": "majority", "class": names.get(majority, str(majority)),
                       "metrics": metric_report(task, np.full(y.size, majority), y).values}
    out["predicted_share"] = {names.get(i, str(i)): float(c / y.size) for i, c in enumerate(counts_p)}
    out["gold_share"] = {names.get(i, str(i)): float(c / y.size) for i, c in enumerate(counts_y)}
    return out


def gain_kept(model: float, baseline: float, teacher: float) -> float | None:
    """Share of the teacher's gain over the trivial baseline the model keeps: ``(m - b) / (t - b)``
    (None when the teacher does not beat the baseline)."""
    return None if teacher <= baseline else (model - baseline) / (teacher - baseline)


def baseline_comparison(task: str | Task, predictions: Any, labels: Any,
                        teacher: dict[str, float] | None = None) -> dict[str, Any]:
    """The trivial baseline of these rows (:func:`prediction_profile`'s) beside the model's main metric.

    Returns the baseline (``rule``, ``class`` or ``value``, ``rows``, ``metrics``, ``label``:
    :func:`baseline_label`) plus ``main_metric``,
    ``model`` (the model's value of it), ``baseline_value``, ``teacher`` (``teacher[main]`` or None),
    ``gain_kept`` (:func:`gain_kept`; None without a teacher or when the teacher does not beat the
    baseline) and ``at_or_below`` (the model scores no better than the baseline: a warning)."""
    task = get_task(task)
    profile = prediction_profile(task, predictions, labels)
    values = metric_report(task, predictions, labels).values
    return compare_to_baseline(task.main_metric, values, {**profile["baseline"], "rows": profile["rows"]}, teacher)


def compare_to_baseline(main: str, metrics: dict[str, float], baseline: dict[str, Any],
                        teacher: dict[str, float] | None = None) -> dict[str, Any]:
    """:func:`baseline_comparison` from metrics already computed (``baseline``: a profile's baseline)."""
    model, base = float(metrics[main]), float(baseline["metrics"][main])
    t = float(teacher[main]) if teacher and teacher.get(main) is not None else None
    return {**baseline, "label": baseline_label(baseline), "main_metric": main, "model": model,
            "baseline_value": base, "teacher": t,
            "gain_kept": None if t is None else gain_kept(model, base, t), "at_or_below": model <= base}


def baseline_label(block: dict[str, Any]) -> str:
    """``majority: equivalent`` / ``mean: 2.7000``: what the trivial model always predicts."""
    return f"majority: {block['class']}" if block.get("rule") == "majority" else f"mean: {block['value']:.4f}"


def baseline_warning(task_name: str, block: dict[str, Any]) -> str | None:
    """The warning for a model at or below the trivial baseline on the main metric (None otherwise)."""
    if not block or not block.get("at_or_below"):
        return None
    what = "the majority class" if block.get("rule") == "majority" else "the mean"
    return (f"{task_name}: {block['main_metric']} {block['model']:.4f} is at or below the trivial baseline's "
            f"{block['baseline_value']:.4f} ({baseline_label(block)}, on the same {block['rows']} rows): the model "
            f"is no better than always predicting {what}")
