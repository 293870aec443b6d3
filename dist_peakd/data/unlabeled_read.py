"""Streaming readers of unlabeled text sources: ``.txt`` files, tables (CSV/TSV/JSON/JSONL/Parquet), hub datasets.

Every source yields ``(line, text_a, text_b)`` one row at a time (never the whole file as Python
objects) and can be iterated again (the pool is read twice: once to check and hash every row, once to
write the kept ones). Every refusal is one :class:`~.errors.DataError` naming the file and the line
(a table without lines: the 0-based row index), raised in the first pass, before anything is written.

* ``.txt``: UTF-8 (a leading BOM dropped, CRLF accepted), one text per line; for a pair task two texts
  separated by exactly one tab. Blank (whitespace-only) lines are skipped and counted. A NUL character
  means binary data: refused.
* tables: the task's text columns (own data: ``--text_columns``; GLUE: the task's column names, or the
  hub copy's names); a label column, if there is one, is ignored (said once); every text must be a
  non-blank string.
* every text: at most :data:`MAX_TEXT_CHARS` characters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..integrity import file_sha256
from .errors import ColumnError, DataFileError, DataValueError, EncodingError
from .files import RawSplit, hub_split, read_file, read_hub
from .options import unlabeled_format
from .tasks import Task

#: The longest text (characters) of an unlabeled row. Own labelled data have no such limit (texts are
#: truncated to ``--max_length`` tokens); raw text does: one "line" of 100,000 characters is a file that is
#: not one example per line (a document without newlines, a dump), of which the teacher would read only
#: the first ``--max_length`` tokens (about 2,000 characters at 512 tokens).
MAX_TEXT_CHARS = 100_000

Row = tuple[int, str, str]


@dataclass
class Source:
    """One unlabeled source: ``rows()`` iterates ``(line, text_a, text_b)`` (may be called again).

    ``record``: JSON-able (file / hub id, format, sha256 or hub fingerprint; counts added by the loader);
    ``blank``: blank lines skipped (``.txt``), known after a full iteration; ``note``: a line to print
    (e.g. the label column that is ignored).
    """

    name: str
    where: str
    record: dict[str, Any]
    rows: Callable[[], Iterator[Row]]
    note: str | None = None
    blank: list[int] = field(default_factory=lambda: [0])


def check_text(where: str, row: int, line: int | None, column: str, value: Any) -> str:
    """``value`` as a usable text, else a :class:`DataValueError` naming ``where``, the row (and line) and column."""
    problem = None
    if value is None:
        problem = "null text (a missing value)"
    elif not isinstance(value, str):
        problem = f"{type(value).__name__} value {value!r} where a text is expected"
    elif not value.strip():
        problem = f"empty text ({value!r})"
    elif len(value) > MAX_TEXT_CHARS:
        problem = (f"text of {len(value):,} characters, over the limit of {MAX_TEXT_CHARS:,} for an unlabeled row "
                   "(one example per line?)")
    elif "\x00" in value:
        problem = "NUL character: binary data, not text"
    if problem is not None:
        raise DataValueError(where, row, column, problem, line)
    return value


def _txt_rows(path: Path, is_pair: bool, blank: list[int]) -> Iterator[Row]:
    blank[0] = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise EncodingError(path, lineno, f"byte 0x{raw[e.start]:02x} at column {e.start + 1}: "
                                    f"{e.reason}; binary data?") from None
            text = text.rstrip("\n").removesuffix("\r")
            if not text.strip():
                blank[0] += 1
                continue
            if not is_pair:
                yield lineno, check_text(str(path), lineno - 1, lineno, "text", text), ""
                continue
            parts = text.split("\t")
            if len(parts) != 2:
                raise DataValueError(path, lineno - 1, "text", f"a pair task needs two texts separated by one tab "
                                     f"per line; found {len(parts)} field(s)", lineno)
            yield (lineno, check_text(str(path), lineno - 1, lineno, "text_a", parts[0]),
                   check_text(str(path), lineno - 1, lineno, "text_b", parts[1]))


def _txt_source(path: Path, is_pair: bool) -> Source:
    if path.stat().st_size == 0:
        raise DataFileError(path, "is empty (option unlabeled_file); expected one text per line")
    source = Source(name=path.name, where=str(path), record={"file": str(path.resolve()), "format": "txt",
                                                              "sha256": file_sha256(path)}, rows=lambda: iter(()))
    source.rows = lambda: _txt_rows(path, is_pair, source.blank)
    return source


def text_columns_of(task: Task, raw: RawSplit, glue: bool) -> tuple[str, ...]:
    """The columns a table of unlabeled text must have: the task's text columns (GLUE: or the hub copy's
    names); a :class:`ColumnError` naming the expected and the found columns otherwise."""
    found = raw.rows.column_names
    candidates = [tuple(task.text_columns)]
    hub_names = tuple(getattr(task, "hub_text_columns", ()) or ())
    if glue and hub_names:
        candidates.append(hub_names)
    for columns in candidates:
        if all(c in found for c in columns):
            return columns
    wanted = " or ".join(repr(list(c)) for c in candidates)
    missing = next(c for c in candidates[0] if c not in found)
    option = "the task's text columns" if glue else "text_columns"
    raise ColumnError(raw.where, missing, found, f"unlabeled_file: expected text column(s) {wanted}, from {option}",
                      detail=f"no column {missing!r}")


def _table_rows(raw: RawSplit, columns: tuple[str, ...], batch: int = 10_000) -> Iterator[Row]:
    rows = raw.rows.select_columns(list(columns))
    for start in range(0, rows.num_rows, batch):
        chunk = rows[start:start + batch]
        for k in range(len(chunk[columns[0]])):
            i = start + k
            line = raw.line(i)
            a = check_text(raw.where, i, line, columns[0], chunk[columns[0]][k])
            b = check_text(raw.where, i, line, columns[1], chunk[columns[1]][k]) if len(columns) > 1 else ""
            yield (line if line is not None else i + 1), a, b


def _table_source(raw: RawSplit, name: str, task: Task, glue: bool) -> Source:
    columns = text_columns_of(task, raw, glue)
    label = task.label_column if task.label_column in raw.rows.column_names else None
    if label is None and "label" in raw.rows.column_names:
        label = "label"
    note = None if label is None else f"{raw.where}: column {label!r} ignored (unlabeled text: the teacher's " \
                                      "outputs are the targets)"
    record = {**raw.source, "format": raw.source.get("format", "hub"), "text_columns": list(columns)}
    return Source(name=name, where=raw.where, record=record, rows=lambda: _table_rows(raw, columns), note=note)


def open_sources(files: tuple[str, ...], hub_id: str | None, task: Task, glue: bool,
                 cache_dir: str | None) -> list[Source]:
    """Every unlabeled source the options name, opened and checked (files exist, are not empty, have the
    columns); their rows are read later (:attr:`Source.rows`)."""
    out = []
    for name in files:
        fmt = unlabeled_format(name)
        path = Path(name)
        if not path.is_file():
            raise DataFileError(path, "does not exist or is not a file (option unlabeled_file)")
        if fmt == "txt":
            out.append(_txt_source(path, task.is_pair))
        else:
            out.append(_table_source(read_file(path, "unlabeled_file", cache_dir), path.name, task, glue))
    if hub_id:
        raw = read_hub(hub_id, None, cache_dir)
        for split in raw:
            part = hub_split(raw, hub_id, None, split)
            out.append(_table_source(part, part.where, task, glue))
    return out


def text_key(text_a: str, text_b: str) -> int:
    """The 64-bit dedup key of a row: blake2b of its texts with whitespace runs collapsed and lower-cased
    (texts that differ only there are the same example); pairs: both texts, in order."""
    norm = " ".join(text_a.split()).lower() + "\t" + " ".join(text_b.split()).lower()
    return int.from_bytes(hashlib.blake2b(norm.encode("utf-8"), digest_size=8).digest(), "little")
