"""Raw readers of own data: local CSV / TSV / JSON / JSONL / Parquet files and hub datasets.

Everything is read through HF ``datasets`` (``load_dataset("csv" | "json" | "parquet", ...)`` and
``load_dataset(hub_id, config)``); these functions return the raw rows (every column, as stored)
plus a JSON-able record of the source. Conventions, fixed so nothing is altered silently:

* CSV: RFC-4180 quoting (``"..."``, doubled quotes inside, fields may hold commas and newlines).
  TSV: no quoting at all (as the GLUE files and the IANA TSV type): a ``"`` is a plain character
  and a field cannot hold a tab or a newline.
* CSV/TSV cells are read as strings, exactly as written: no ``NA``/``null``/``None`` -> missing
  conversion and no number parsing (``007`` stays ``007``); an empty cell is ``""``. A UTF-8 BOM
  is dropped; CRLF line ends are accepted; completely empty lines are skipped.
* Every CSV/TSV data row must have the header's number of fields (checked before parsing, the
  error names the line), and header names must be distinct.
* JSON: JSON Lines or one array of objects; Parquet: as stored. Types come from the file.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import warnings
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict, Features, Value

from ..errors import ArtifactCorruptError, ArtifactWriteError
from ..integrity import file_sha256
from .errors import DataFileError, MalformedRowError
from .options import file_format
from .parse_cache import verified_load

#: Bumped whenever how own files are read changes; part of the data fingerprint.
OWN_READER_VERSION = "own-reader-v1"


@dataclass
class RawSplit:
    """One split's raw rows, where they came from (``where``: for messages) and its source record.

    ``lines``: for CSV/TSV, the 1-based file line on which each data row ends (for error messages).
    """

    rows: Dataset
    where: str
    source: dict[str, Any]
    lines: array | None = field(default=None, repr=False)

    def line(self, row: int) -> int | None:
        return None if self.lines is None else int(self.lines[row])


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


#: The longest CSV/TSV field the readers take (the csv module's default, 131,072 characters, would refuse
#: a long document; tokenization truncates every text to ``--max_length`` anyway, as for JSONL).
CSV_FIELD_LIMIT = 2**31 - 1


@contextlib.contextmanager
def long_csv_fields() -> Iterator[None]:
    """``csv.field_size_limit`` raised to :data:`CSV_FIELD_LIMIT` for the block (a process-wide setting of
    the csv module: the previous limit is restored after)."""
    before = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(before)


def _scan_delimited(path: Path, delimiter: str, quoting: int) -> tuple[list[str], array]:
    """Header and each data row's end line; refuses bad UTF-8, field-count mismatches, no rows."""
    lines = array("q")
    try:
        with long_csv_fields(), path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=True)
            header: list[str] | None = None
            for row in reader:
                if not row:
                    continue  # an empty line (pandas skips it too)
                if header is None:
                    header = row
                    continue
                if len(row) != len(header):
                    raise MalformedRowError(path, reader.line_num, detail=(
                        f"row index {len(lines)} has {len(row)} fields, the header has {len(header)} "
                        f"({', '.join(map(repr, header))})"))
                lines.append(reader.line_num)
    except UnicodeDecodeError:
        raise _utf8_error(path) from None
    except csv.Error as e:
        raise MalformedRowError(path, reader.line_num, detail=str(e)) from None
    if header is None:
        raise DataFileError(path, "is empty; expected a header row and data rows")
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise DataFileError(path, f"column name(s) {duplicates} appear more than once in the header")
    if not lines:
        raise DataFileError(path, f"has a header ({', '.join(map(repr, header))}) but no data rows")
    return header, lines


def _utf8_error(path: Path) -> DataFileError:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return DataFileError(path, f"line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}: "
                             f"{e.reason})")
    return DataFileError(path, "not valid UTF-8")


def _load(builder: str, path: Path, cache_dir: str, **kwargs: Any) -> Dataset:
    import pandas as pd

    def load(folder: str) -> Dataset:
        with warnings.catch_warnings():  # pandas warns where it would drop fields: refuse instead
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=folder, **kwargs)

    try:
        return verified_load(cache_dir, str(path), load)
    except (ArtifactCorruptError, ArtifactWriteError):
        raise
    except Exception as e:
        cause = _root_cause(e)
        if "corresponds to no data" in str(e) or cause.startswith("StopIteration"):
            raise DataFileError(path, "has no data rows") from None
        raise DataFileError(path, f"cannot be read as {builder.upper()}: {cause}") from None


def read_file(path: str | Path, option: str, cache_dir: str | None = None) -> RawSplit:
    """Raw rows of one own data file (format by extension; ``option`` names the file's option)."""
    fmt = file_format(path, option)
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, f"does not exist or is not a file (option {option})")
    if path.stat().st_size == 0:
        raise DataFileError(path, f"is empty (option {option})")
    sha256 = file_sha256(path)
    # datasets keys its cache of a local file on path + mtime only: a per-content folder means a
    # rewritten file (same mtime, e.g. copied with ``cp -p``) is never served from a stale cache; its
    # parsed files are checked against the folder's record on every load (parse_cache.verified_load)
    cache_dir = str(Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "dist_peakd_files" / sha256[:20])
    lines = None
    if fmt in ("csv", "tsv"):
        delimiter, quoting = ("\t", csv.QUOTE_NONE) if fmt == "tsv" else (",", csv.QUOTE_MINIMAL)
        header, lines = _scan_delimited(path, delimiter, quoting)
        rows = _load("csv", path, cache_dir, sep=delimiter, quoting=quoting, keep_default_na=False,
                     na_filter=False, index_col=False, encoding="utf-8-sig",
                     features=Features({c: Value("string") for c in header}))
    else:
        rows = _load(fmt, path, cache_dir)
    if rows.num_rows == 0:
        raise DataFileError(path, "has no data rows")
    if lines is not None and len(lines) != rows.num_rows:  # the scan and pandas disagree on the rows
        raise DataFileError(path, f"read as {rows.num_rows} rows by pandas but {len(lines)} by the csv module; "
                            "check its quoting")
    source = {"file": str(path.resolve()), "format": fmt, "sha256": sha256}
    return RawSplit(rows=rows, where=str(path), source=source, lines=lines)


def read_hub(hub_id: str, config: str | None, cache_dir: str | None = None) -> DatasetDict:
    """Every split of a hub dataset (or a local dataset folder) as raw rows."""
    where = f"hub dataset {hub_id!r} (config {config!r})"
    key = hashlib.sha256(f"{hub_id}\0{config}".encode()).hexdigest()[:20]
    folder = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "dist_peakd_hub" / key
    try:
        raw = verified_load(folder, where, lambda path: datasets.load_dataset(hub_id, config, cache_dir=path))
    except (ArtifactCorruptError, ArtifactWriteError):
        raise
    except Exception as e:
        cause = _root_cause(e)
        if "corresponds to no data" in cause:  # datasets refuses a split without rows
            raise DataFileError(where, f"has a split with zero rows ({cause})") from None
        raise DataFileError(where, f"cannot be loaded: {cause}") from None
    if not isinstance(raw, DatasetDict):
        raise DataFileError(where, "did not load as a DatasetDict")
    return raw


def hub_split(raw: DatasetDict, hub_id: str, config: str | None, split: str) -> RawSplit:
    where = f"{hub_id}" + (f"[{config}]" if config else "") + f"/{split}"
    rows = raw[split]
    if rows.num_rows == 0:
        raise DataFileError(where, "has no rows")
    fingerprint = getattr(rows, "_fingerprint", None) or hashlib.sha256(str(rows.data.schema).encode()).hexdigest()
    source = {"hub_dataset": hub_id, "hub_config": config, "hub_split": split, "hub_fingerprint": fingerprint}
    return RawSplit(rows=rows, where=where, source=source)
