"""Own data columns -> the common schema: texts checked, labels inferred and checked, problem decided.

Every refusal is a :class:`~.errors.DataError` naming the split's file (or hub split), the row
index (0-based data row = the example's ``idx``; CSV/TSV also the file line) and the column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from datasets import ClassLabel, Value

from .errors import ColumnError, DataValueError
from .files import RawSplit

_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.ASCII | re.IGNORECASE)
_TEXT_DTYPES = ("string", "large_string", "null")
_FLOAT_DTYPES = ("float16", "float32", "float64", "double", "halffloat", "float")


def has_column(raw: RawSplit, column: str) -> bool:
    return column in raw.rows.column_names


def column_values(raw: RawSplit, column: str, option: str) -> list[Any]:
    """All values of ``column`` (decoded as the split's features say); missing -> :class:`ColumnError`."""
    if not has_column(raw, column):
        raise ColumnError(raw.where, column, raw.rows.column_names, option)
    return raw.rows.select_columns([column]).to_dict()[column]


def texts(raw: RawSplit, column: str, option: str = "text_columns") -> list[str]:
    """The text column ``column``: every value a non-blank string (``option``: the option messages name)."""
    values = column_values(raw, column, option)
    feature = raw.rows.features[column]
    if not (isinstance(feature, Value) and feature.dtype in _TEXT_DTYPES):
        mixed = next((row for row, v in enumerate(values) if v is not None and not isinstance(v, str)), None)
        if mixed is not None and any(isinstance(v, str) for v in values):  # mixed types (a Json column)
            raise DataValueError(raw.where, mixed, column, f"{type(values[mixed]).__name__} value "
                                 f"{values[mixed]!r} where a text is expected", raw.line(mixed))
        raise ColumnError(raw.where, column, raw.rows.column_names, option,
                          detail=f"column {column!r} holds {_describe(feature)} values, expected text")
    for row, value in enumerate(values):
        if value is None:
            raise DataValueError(raw.where, row, column, "null text (a missing value)", raw.line(row))
        if not value.strip():
            raise DataValueError(raw.where, row, column, f"empty text ({value!r})", raw.line(row))
    return values


def _describe(feature: Any) -> str:
    return feature.dtype if isinstance(feature, Value) else type(feature).__name__


def _class_names(raw: RawSplit, column: str) -> tuple[str, ...] | None:
    feature = raw.rows.features[column]
    return tuple(feature.names) if isinstance(feature, ClassLabel) else None


def _numeric(text: str) -> bool:
    return bool(_DECIMAL.fullmatch(text) or _NON_FINITE.fullmatch(text))


def infer_problem(raw: RawSplit, column: str, values: Sequence[Any]) -> tuple[str, str]:
    """``(problem, why)``: ``regression`` for float labels (a float column, or numbers as text not all
    integers), else ``classification`` (the caller picks binary/multiclass from the label count); ``why`` says
    which. A ``nan``/``inf`` cell never makes a numeric column classes: it counts as a number (and is then
    refused by :func:`scores` or :func:`check_class_values`, naming its row)."""
    feature = raw.rows.features[column]
    if isinstance(feature, ClassLabel):
        return "classification", f"it is a ClassLabel column of {len(feature.names)} names"
    dtype = feature.dtype if isinstance(feature, Value) else type(feature).__name__
    if dtype in _FLOAT_DTYPES:
        return "regression", f"it holds {dtype} numbers"
    if dtype not in ("string", "large_string"):
        return "classification", f"it holds {dtype} values"
    present = [v.strip() for v in values if v is not None and v.strip()]
    other = next((v for v in present if not _numeric(v)), None)
    if other is not None:
        return "classification", f"its values are not all numbers (e.g. {other!r})"
    if any(not _INTEGER.fullmatch(v) and not _NON_FINITE.fullmatch(v) for v in present):
        return "regression", "its values are numbers, not all integers"
    return "classification", "every value is an integer (for scores pass --problem regression)"


def check_class_values(raw: RawSplit, column: str, values: Sequence[Any]) -> None:
    """Refuse a ``nan``/``inf`` label among numbers (a float ``inf``, or ``nan``/``inf`` text in a column whose
    other values are all numbers): it is a broken cell, not a class (:class:`DataValueError` naming the row)."""
    texts_ = [v.strip() for v in values if isinstance(v, str) and v.strip()]
    numeric = bool(texts_) and all(_numeric(v) for v in texts_)
    for row, v in enumerate(values):
        bad = (isinstance(v, float) and math.isinf(v)) or (
            numeric and isinstance(v, str) and _NON_FINITE.fullmatch(v.strip()) is not None)
        if bad:
            raise DataValueError(raw.where, row, column, f"NaN/inf label {v!r} in a column of numbers (a class "
                                 "or a regression target must be a finite number)", raw.line(row))


def class_values(raw: RawSplit, column: str, values: Sequence[Any]) -> list[str | None]:
    """Label values as class strings (``None``: missing). Strings are stripped; integral floats and
    ints become their decimal digits; a ``ClassLabel`` index its class name (-1: missing)."""
    names = _class_names(raw, column)
    out: list[str | None] = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif names is not None:
            out.append(None if v == -1 else names[v] if 0 <= v < len(names) else str(v))
        elif isinstance(v, str):
            out.append(v.strip() or None)
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return out


def sorted_labels(values: Sequence[str | None], raw: RawSplit, column: str) -> tuple[str, ...]:
    """Distinct labels of the train split, sorted (numerically when all are integers); a ``ClassLabel``
    keeps its class order."""
    names = _class_names(raw, column)
    if names is not None:
        return names
    distinct = {v for v in values if v is not None}
    if distinct and all(_INTEGER.fullmatch(v) for v in distinct):
        return tuple(sorted(distinct, key=lambda v: (int(v), v)))
    return tuple(sorted(distinct))


def class_ids(raw: RawSplit, column: str, values: Sequence[str | None], labels: Sequence[str], origin: str) -> list[int]:
    """Class index of every row; a missing label or one outside ``labels`` -> :class:`DataValueError`."""
    index = {label: i for i, label in enumerate(labels)}
    out = []
    for row, v in enumerate(values):
        if v is None:
            raise DataValueError(raw.where, row, column, "empty label (a missing value)", raw.line(row))
        i = index.get(v)
        if i is None:
            raise DataValueError(raw.where, row, column, f"label {v!r} is not in the {origin} "
                                 f"({', '.join(map(repr, labels))})", raw.line(row))
        out.append(i)
    return out


def scores(raw: RawSplit, column: str, values: Sequence[Any]) -> list[float]:
    """Regression targets: finite numbers (or decimal strings); null, empty, NaN, inf -> :class:`DataValueError`."""
    out = []
    for row, v in enumerate(values):
        problem = None
        if v is None or (isinstance(v, str) and not v.strip()):
            problem = "empty regression target (a missing value)"
        elif isinstance(v, bool) or not isinstance(v, int | float | str):
            problem = f"regression target {v!r} is not a number"
        elif isinstance(v, str):
            text = v.strip()
            if _NON_FINITE.fullmatch(text):
                problem = f"NaN/inf regression target {v!r}"
            elif not _DECIMAL.fullmatch(text):
                problem = f"regression target {v!r} is not a number"
            else:
                v = float(text)
        if problem is None and not math.isfinite(float(v)):
            problem = f"NaN/inf regression target {v!r}"
        if problem is not None:
            raise DataValueError(raw.where, row, column, problem, raw.line(row))
        out.append(float(v))
    return out


def unlabelled(raw: RawSplit, column: str) -> bool:
    """A test split without labels: no label column, or only missing values in it."""
    if not has_column(raw, column):
        return True
    values = class_values(raw, column, column_values(raw, column, "label_column"))
    return all(v is None for v in values)
