"""GLUE metrics in plain NumPy (no sklearn/scipy).

All functions take ``(predictions, labels)`` (every metric here is symmetric in its two arguments)
and return a Python float. Degenerate cases are defined explicitly instead of producing NaN:

* ``f1``: no positive prediction and no positive label (``2tp + fp + fn == 0``) -> 0.0 (as
  sklearn's ``zero_division=0``).
* ``matthews_corrcoef``: constant predictions or constant labels (a zero denominator) -> 0.0 (as
  sklearn).
* ``pearson`` / ``spearman``: a constant input (zero variance) -> 0.0 instead of NaN; fewer than
  two points -> 0.0.
* empty inputs, length mismatches and non-finite values raise ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .data.tasks import GlueTask, get_task


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


def f1(predictions: Any, labels: Any) -> float:
    """Binary F1 of the positive class 1 (0.0 when there is neither a positive prediction nor label)."""
    p, y = _pair(predictions, labels)
    tp = int(np.sum((p == 1) & (y == 1)))
    fp = int(np.sum((p == 1) & (y != 1)))
    fn = int(np.sum((p != 1) & (y == 1)))
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else 2.0 * tp / denom


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
    "f1": f1,
    "matthews": matthews_corrcoef,
    "pearson": pearson,
    "spearmanr": spearman,
}


def compute_metrics(task: str | GlueTask, predictions: Any, labels: Any) -> dict[str, float]:
    """The task's metrics (``task.metrics``, in that order) as ``{name: value}``.

    Classification: ``predictions`` are class indices, or logits of shape ``(n, num_labels)``
    (arg-maxed); ``labels`` class indices. Regression: floats (shape ``(n,)`` or ``(n, 1)``).
    Unlabelled rows (label -1 / NaN, i.e. test splits) raise ``ValueError``.
    """
    task = get_task(task)
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
    return {m: _METRICS[m](p, y) for m in task.metrics}
