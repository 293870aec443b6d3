"""Batch collation with dynamic (or fixed) padding."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


class DynamicPaddingCollator:
    """Turn tokenized rows into a padded batch of tensors.

    Each row is a mapping with ``input_ids``, optional ``token_type_ids`` (zeros if absent),
    ``label`` and ``idx``. The batch has ``input_ids``, ``token_type_ids``, ``attention_mask``
    (1 = real token), all ``torch.long`` of shape ``(batch, length)``, plus ``labels`` (long, or
    float32 for regression) and ``example_ids`` (long). ``length`` is the longest row rounded up
    to ``pad_to_multiple_of``, or exactly ``pad_to_length`` when given (a longer row is an error).
    An empty list gives tensors with batch dimension 0 (length ``pad_to_length`` or 0).

    ``is_regression=None`` infers the label dtype from the first row (a Python/NumPy float or
    floating tensor means regression).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None,
                 pad_to_length: int | None = None, is_regression: bool | None = None) -> None:
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        if pad_to_length is not None and pad_to_length < 1:
            raise ValueError(f"pad_to_length must be >= 1, got {pad_to_length}")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_to_length = pad_to_length
        self.is_regression = is_regression

    def _target_length(self, longest: int) -> int:
        if self.pad_to_length is not None:
            if longest > self.pad_to_length:
                raise ValueError(f"a row has {longest} tokens, more than pad_to_length={self.pad_to_length}")
            return self.pad_to_length
        if self.pad_to_multiple_of is not None and longest > 0:
            return int(math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of)
        return longest

    @staticmethod
    def _label_is_float(label: Any) -> bool:
        if isinstance(label, torch.Tensor):
            return label.is_floating_point()
        return isinstance(label, float) or (hasattr(label, "dtype") and getattr(label.dtype, "kind", "") == "f")

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        regression = self.is_regression
        if regression is None:
            regression = bool(rows) and self._label_is_float(rows[0]["label"])
        ids = [np.asarray(r["input_ids"], dtype=np.int64) for r in rows]
        length = self._target_length(max((len(x) for x in ids), default=0))
        n = len(rows)
        # filled in numpy (one slice assignment per row), handed to torch without a copy
        input_ids = np.full((n, length), self.pad_token_id, dtype=np.int64)
        token_type_ids = np.zeros((n, length), dtype=np.int64)
        attention_mask = np.zeros((n, length), dtype=np.int64)
        for i, (r, seq) in enumerate(zip(rows, ids, strict=True)):
            k = len(seq)
            if k:
                input_ids[i, :k] = seq
                attention_mask[i, :k] = 1
                tt = r.get("token_type_ids")
                if tt is not None:
                    if len(tt) != k:
                        raise ValueError(f"row {i}: token_type_ids has {len(tt)} entries, input_ids {k}")
                    token_type_ids[i, :k] = np.asarray(tt, dtype=np.int64)
        label_dtype = torch.float32 if regression else torch.long
        labels = torch.tensor([float(r["label"]) if regression else int(r["label"]) for r in rows], dtype=label_dtype)
        example_ids = torch.tensor([int(r["idx"]) for r in rows], dtype=torch.long)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "token_type_ids": torch.from_numpy(token_type_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "labels": labels,
            "example_ids": example_ids,
        }
