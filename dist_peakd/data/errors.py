"""Exceptions of the data layer (GLUE files, own files, hub datasets).

Every error is a :class:`DataError`, itself a :class:`ValueError`, so callers can catch either.
Messages always name the offending file (and line, where there is one) and say what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..errors import EXIT_CONFIG, ConfigError, DataError

GLUE_LAYOUT = "<glue_dir>/<FOLDER>/{train,dev,test}.tsv (MNLI: train, dev_matched, dev_mismatched, test_matched, test_mismatched)"


class UnknownTaskError(DataError):
    """A task name that is not one of the nine GLUE tasks."""

    def __init__(self, name: str, valid: Iterable[str]) -> None:
        self.name = name
        self.valid = tuple(valid)
        super().__init__(f"unknown GLUE task {name!r}; valid names: {', '.join(self.valid)} "
                         "(case-insensitive, '-' and '_' ignored, e.g. 'SST-2', 'STS-B'); for your own data "
                         "give --train_file (and --dev_file) or --hub_dataset")


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


class DataOptionError(DataError, ConfigError):
    """A data option with a bad value, or options that do not go together; names the option.

    A configuration error (exit 2, like every refused option; the CLI reports it before any work),
    and still a :class:`DataError` for callers of the data layer.
    """

    exit_code = EXIT_CONFIG

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        super().__init__(f"option {option}: {message}")


class DataFileError(DataError):
    """A data file that cannot be used as a whole: missing, unknown extension, unreadable, no rows."""

    def __init__(self, source: str | Path, message: str) -> None:
        self.source = str(source)
        super().__init__(f"{source}: {message}")


class ColumnError(DataError):
    """A column named by an option that a split lacks (the message lists the split's columns)."""

    def __init__(self, source: str | Path, column: str, columns: Iterable[str], option: str,
                 detail: str | None = None) -> None:
        self.source = str(source)
        self.column = column
        self.columns = tuple(columns)
        detail = detail or f"no column {column!r}"
        super().__init__(f"{source}: {detail} (option {option}); its columns: {', '.join(map(repr, self.columns))}")


class DataValueError(DataError):
    """A bad value in one row and column: empty/null text, unknown label, NaN regression target ...

    ``row`` is the 0-based index of the data row in its split (header excluded), which is also the
    example's ``idx``; ``line``, where known (CSV/TSV), the 1-based line of the file.
    """

    def __init__(self, source: str | Path, row: int, column: str, detail: str, line: int | None = None) -> None:
        self.source = str(source)
        self.row = row
        self.column = column
        at = f"row index {row}" + (f" (line {line})" if line is not None else "")
        super().__init__(f"{source}: {at}, column {column!r}: {detail}")


class MaxLengthError(DataOptionError):
    """``max_length`` above what the backbone's position embeddings can encode."""
