"""Rows of a tokenized split by index: what the trainer and the cache pass hand to the collator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def fetch_rows(dataset: Any, indices: Sequence[int]) -> list[dict[str, Any]]:
    """Rows of an HF ``Dataset`` (or a list of dicts) as a list of dicts, in the given order."""
    if len(indices) == 0:
        return []
    if isinstance(dataset, list):
        return [dataset[i] for i in indices]
    cols = dataset[list(map(int, indices))]
    keys = list(cols.keys())
    return [dict(zip(keys, vals, strict=True)) for vals in zip(*(cols[k] for k in keys), strict=True)]
