"""Rows of a tokenized split by index: what the trainer and the cache pass hand to the collator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def fetch_rows(dataset: Any, indices: Sequence[int]) -> list[dict[str, Any]]:
    """Rows of an HF ``Dataset`` (or a list of dicts) as a list of dicts, in the given order."""
    if len(indices) == 0:
        return []
    if isinstance(dataset, list):
        return [dataset[i] for i in indices]
    cols = dataset[list(map(int, indices))]
    keys = list(cols.keys())
    return [dict(zip(keys, vals, strict=True)) for vals in zip(*(cols[k] for k in keys), strict=True)]


def column_array(dataset: Any, name: str) -> np.ndarray:
    """One column of an HF ``Dataset`` (or a list of dicts) as a numpy array, read in one Arrow pass.

    ``dataset[name]`` is a lazy column in datasets 4: iterating it (``list(...)``, ``np.asarray(...)``)
    decodes row by row, ~1.3 s per 67k rows here; this is ~0.03 s (0.5 s through an indices mapping).
    """
    if isinstance(dataset, list):
        return np.asarray([row[name] for row in dataset])
    return np.asarray(dataset.with_format("numpy", columns=[name])[:][name])
