"""Exceptions of the GLUE data layer.

Every error is a :class:`DataError`, itself a :class:`ValueError`, so callers can catch either.
Messages always name the offending file (and line, where there is one) and say what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..errors import DataError

GLUE_LAYOUT = "<glue_dir>/<FOLDER>/{train,dev,test}.tsv (MNLI: train, dev_matched, dev_mismatched, test_matched, test_mismatched)"


class UnknownTaskError(DataError):
    """A task name that is not one of the nine GLUE tasks."""

    def __init__(self, name: str, valid: Iterable[str]) -> None:
        self.name = name
        self.valid = tuple(valid)
        super().__init__(f"unknown GLUE task {name!r}; valid names: {', '.join(self.valid)} "
                         "(case-insensitive, '-' and '_' ignored, e.g. 'SST-2', 'STS-B')")


class DataLayoutError(DataError):
    """A missing GLUE folder / task folder / split file, an unknown split, or an empty file."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(message)


class MalformedRowError(DataError):
    """A row whose column count differs from the header's (or a header that lacks a needed column)."""

    def __init__(self, path: str | Path, line: int, expected: int | None = None, found: int | None = None,
                 detail: str | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.expected = expected
        self.found = found
        if detail is None:
            detail = f"expected {expected} tab-separated columns, found {found}"
        super().__init__(f"{self.path}:{line}: malformed row: {detail}")


class LabelError(DataError):
    """A label value outside the task's label set (or a regression score that is not a float in [0, 5])."""

    def __init__(self, path: str | Path, line: int, value: object, valid: str) -> None:
        self.path = Path(path)
        self.line = line
        self.value = value
        super().__init__(f"{self.path}:{line}: invalid label {value!r}; valid labels: {valid}")


class EncodingError(DataError):
    """A file that is not valid UTF-8."""

    def __init__(self, path: str | Path, line: int, reason: str) -> None:
        self.path = Path(path)
        self.line = line
        super().__init__(f"{self.path}:{line}: not valid UTF-8 ({reason})")
