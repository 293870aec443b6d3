"""Deterministic, seeded, stratified carving of a dev split out of train (``--dev_fraction``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from .errors import DataOptionError


def dev_size(n: int, fraction: float) -> int:
    """Rows carved from ``n`` train rows: ``round(fraction * n)``, at least 1, leaving at least 1."""
    if n < 2:
        raise DataOptionError("dev_fraction", f"cannot carve a dev split from a train split of {n} row(s); "
                              "give a dev split (--dev_file / --dev_split)")
    return min(max(1, int(round(fraction * n))), n - 1)


def _quotas(counts: np.ndarray, n_dev: int) -> np.ndarray:
    """Per-class dev rows: proportional, largest remainders first (ties: lower class first), summing to
    ``n_dev``, never taking a class's last train row when it can be avoided."""
    exact = counts * (n_dev / counts.sum())
    quota = np.minimum(np.floor(exact).astype(np.int64), np.maximum(counts - 1, 0))
    order = np.lexsort((np.arange(len(counts)), -(exact - np.floor(exact))))
    for allow_last in (False, True):
        while quota.sum() < n_dev:
            room = counts - quota - (0 if allow_last else 1)
            candidates = [c for c in order if room[c] > 0]
            if not candidates:
                break
            for c in candidates:
                if quota.sum() == n_dev:
                    break
                quota[c] += 1
    return quota


def carve_dev(groups: Sequence[int] | None, n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted row positions (0..n-1) of train that form the dev split.

    ``groups``: the class index of every row (stratified: each class contributes its share), or
    ``None`` (regression: one group). Rows are drawn with ``numpy.random.RandomState(seed)``, whose
    stream numpy keeps stable across versions, so the split depends only on the rows' classes,
    ``fraction`` and ``seed``.
    """
    n_dev = dev_size(n, fraction)
    labels = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError(f"groups has {labels.size} entries for {n} rows")
    classes, inverse = np.unique(labels, return_inverse=True)
    quota = _quotas(np.bincount(inverse, minlength=len(classes)), n_dev)
    rng = np.random.RandomState(seed)
    picked = [rng.permutation(np.flatnonzero(inverse == c))[:quota[c]] for c in range(len(classes))]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def ids_digest(ids: Sequence[int]) -> str:
    """sha256 of a list of example ids (how a carved split is recorded and compared)."""
    return hashlib.sha256(np.asarray(ids, dtype="<i8").tobytes()).hexdigest()
