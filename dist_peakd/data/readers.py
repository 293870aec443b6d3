"""Strict readers for the GLUE TSV files and the Hugging Face hub copy of GLUE.

Both sources yield the same schema (see :func:`glue_features`):

* ``idx``: int64, 0-based position of the example among the data rows of its split file (hub: row
  position in the hub split). Stable across runs; used as the example id in predictions.
* ``text_a`` / ``text_b``: the texts exactly as stored (no stripping: SST-2's trailing spaces are
  kept, the tokenizer ignores them); ``text_b`` is ``""`` for single-sentence tasks.
* ``label``: int64 class index (``-1`` for unlabelled test rows), or float32 for STS-B (``NaN`` for
  unlabelled test rows).

Files are read as UTF-8 (a leading BOM, as in MRPC, is dropped) with
``csv.reader(delimiter='\\t', quoting=csv.QUOTE_NONE)``; every data row must have exactly the
header's number of columns and a valid label, otherwise a :class:`~.errors.DataError` names the
file and the 1-based line. Nothing is skipped or repaired silently.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict, DatasetInfo, Features, Value

from ..integrity import file_sha256
from .errors import GLUE_LAYOUT, DataError, DataLayoutError, EncodingError, LabelError, MalformedRowError
from .files import long_csv_fields
from .tasks import GlueTask, get_task

#: Bumped whenever parsing/conversion semantics change; part of :func:`data_fingerprint`.
READER_VERSION = "glue-reader-v1"

#: Hub split names -> split names of the GLUE folder layout.
HUB_SPLIT_ALIASES = {
    "validation": "dev",
    "validation_matched": "dev_matched",
    "validation_mismatched": "dev_mismatched",
}

GLUE_DIR_ENV = "DIST_PEAKD_GLUE_DIR"

#: A regression score as written in the files: a plain ASCII decimal number (optional exponent).
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def default_glue_dir() -> Path:
    """The GLUE root: ``$DIST_PEAKD_GLUE_DIR`` if set, else ``../shared/glue`` from the current
    directory if that exists, else ``shared/glue`` next to the repository root."""
    env = os.environ.get(GLUE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from_cwd = Path.cwd().parent / "shared" / "glue"
    if from_cwd.is_dir():
        return from_cwd
    return Path(__file__).resolve().parents[2].parent / "shared" / "glue"


def glue_features(task: str | GlueTask) -> Features:
    """The common schema of every split produced by :func:`load_glue`."""
    task = get_task(task)
    return Features({
        "idx": Value("int64"),
        "text_a": Value("string"),
        "text_b": Value("string"),
        "label": Value("float32" if task.is_regression else "int64"),
    })


def _is_test_split(split: str) -> bool:
    return split.startswith("test")


def _layout(task: GlueTask, root: Path | str = "<glue_dir>") -> str:
    return f"{root}/{task.folder}/{{{','.join(task.splits)}}}.tsv (general layout: {GLUE_LAYOUT})"


def _canonical_splits(task: GlueTask, splits: Sequence[str]) -> list[str]:
    if isinstance(splits, str):
        splits = [splits]
    if not splits:
        raise DataLayoutError(f"no split requested for task {task.name!r}; valid splits: {', '.join(task.splits)}")
    out: list[str] = []
    for s in splits:
        canon = HUB_SPLIT_ALIASES.get(s, s)
        if canon not in task.splits:
            raise DataLayoutError(f"unknown split {s!r} for task {task.name!r}; valid splits: "
                                  f"{', '.join(task.splits)}")
        if canon not in out:
            out.append(canon)
    return out


def split_paths(task: str | GlueTask, data_dir: str | Path | None = None,
                splits: Sequence[str] | None = None) -> dict[str, Path]:
    """Resolve the split files of ``task`` under the GLUE root ``data_dir``.

    Without ``splits``: every split whose file exists (e.g. QNLI here: dev, test). With ``splits``:
    exactly those, and a missing file raises :class:`DataLayoutError` naming the path.
    """
    task = get_task(task)
    root = Path(data_dir) if data_dir is not None else default_glue_dir()
    if not root.is_dir():
        raise DataLayoutError(f"GLUE data folder {root} does not exist; expected layout {_layout(task, root)}; "
                              f"pass data_dir or set {GLUE_DIR_ENV}", root)
    folder = root / task.folder
    if not folder.is_dir():
        raise DataLayoutError(f"task folder {folder} for GLUE task {task.name!r} does not exist; expected "
                              f"layout {_layout(task, root)}", folder)
    if splits is None:
        found = {s: folder / f"{s}.tsv" for s in task.splits if (folder / f"{s}.tsv").is_file()}
        if not found:
            raise DataLayoutError(f"no split files in {folder}; expected layout {_layout(task, root)}", folder)
        return found
    out: dict[str, Path] = {}
    for s in _canonical_splits(task, splits):
        path = folder / f"{s}.tsv"
        if not path.is_file():
            raise DataLayoutError(f"split file {path} for split {s!r} of task {task.name!r} does not exist; "
                                  f"expected layout {_layout(task, root)}", path)
        out[s] = path
    return out


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataLayoutError(f"file {path} does not exist; expected layout {GLUE_LAYOUT}", path) from None
    except IsADirectoryError:
        raise DataLayoutError(f"{path} is a directory, expected a TSV file", path) from None


def _decode(path: Path, data: bytes) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise EncodingError(path, line, f"byte 0x{data[e.start]:02x} at offset {e.start}: {e.reason}") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last row; it does not start an empty one
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _parse_tsv(task: GlueTask, path: Path, split: str, data: bytes) -> dict[str, list]:
    lines = _decode(path, data)
    if not lines or not any(ln.strip() for ln in lines):
        raise DataLayoutError(f"{path} is empty; expected a TSV file with a header row "
                              f"(columns {', '.join(task.text_columns)}, {task.label_column}) and data rows", path)
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        with long_csv_fields():
            rows = list(reader)
    except csv.Error as e:
        raise MalformedRowError(path, reader.line_num, detail=str(e)) from None

    first = rows[0]
    if task.headerless_columns is not None and not set(task.text_columns) <= set(first):
        header, start = list(task.headerless_columns), 0  # e.g. CoLA train/dev: no header row
    else:
        header, start = first, 1
        missing = [c for c in task.text_columns if c not in header]
        if missing:
            raise MalformedRowError(path, 1, detail=f"header {header} lacks column(s) {missing}; expected "
                                    f"text column(s) {list(task.text_columns)} and label column "
                                    f"{task.label_column!r}")
    labelled = task.label_column in header
    if not labelled and not _is_test_split(split):
        raise MalformedRowError(path, start or 1, detail=f"no label column {task.label_column!r} in header "
                                f"{header}; split {split!r} must be labelled")
    ncol = len(header)
    ia = header.index(task.text_columns[0])
    ib = header.index(task.text_columns[1]) if task.is_pair else None
    il = header.index(task.label_column) if labelled else None
    label_ids = task.label_to_id()
    valid = "a float score in [0, 5]" if task.is_regression else ", ".join(repr(x) for x in task.labels or ())

    text_a: list[str] = []
    text_b: list[str] = []
    labels: list[float | int] = []
    for lineno, row in enumerate(rows[start:], start=start + 1):
        if len(row) != ncol:
            raise MalformedRowError(path, lineno, ncol, len(row))
        text_a.append(row[ia])
        text_b.append(row[ib] if ib is not None else "")
        if il is None:
            labels.append(math.nan if task.is_regression else -1)
        elif task.is_regression:
            raw = row[il]
            # float() alone would also take '0_1' (= 1.0), non-ASCII digits and surrounding spaces
            if not _DECIMAL.fullmatch(raw):
                raise LabelError(path, lineno, raw, valid)
            score = float(raw)
            if not (math.isfinite(score) and 0.0 <= score <= 5.0):
                raise LabelError(path, lineno, raw, valid)
            labels.append(score)
        else:
            raw = row[il]
            if raw not in label_ids:
                raise LabelError(path, lineno, raw, valid)
            labels.append(label_ids[raw])
    if not text_a:
        raise DataLayoutError(f"{path} has a header but no data rows", path)
    return {"idx": list(range(len(text_a))), "text_a": text_a, "text_b": text_b, "label": labels}


def read_glue_tsv(task: str | GlueTask, path: str | Path, split: str) -> dict[str, list]:
    """Parse one GLUE split file strictly into columns ``idx, text_a, text_b, label``.

    ``split`` decides whether labels are required: only ``test*`` splits may lack the label column.
    Raises :class:`MalformedRowError`, :class:`LabelError`, :class:`EncodingError` or
    :class:`DataLayoutError` (missing/empty file) with the file and 1-based line in the message.
    """
    task = get_task(task)
    path = Path(path)
    return _parse_tsv(task, path, HUB_SPLIT_ALIASES.get(split, split), _read_bytes(path))


def _hub_select(task: GlueTask, hub_id: str, raw: DatasetDict, splits: Sequence[str] | None) -> dict[str, str]:
    """canonical split name -> hub split name, in canonical order."""
    available = {HUB_SPLIT_ALIASES.get(h, h): h for h in raw}
    wanted = [s for s in task.splits if s in available] if splits is None else _canonical_splits(task, splits)
    out: dict[str, str] = {}
    for s in wanted:
        if s not in available:
            raise DataLayoutError(f"split {s!r} not found in hub dataset {hub_id!r} (config "
                                  f"{task.hub_config!r}); available: {', '.join(raw)}")
        out[s] = available[s]
    if not out:
        raise DataLayoutError(f"hub dataset {hub_id!r} (config {task.hub_config!r}) has none of the splits "
                              f"{', '.join(task.splits)}; found {', '.join(raw)}")
    return out


def _convert_hub_split(task: GlueTask, ds: Dataset, where: str, split: str) -> dict[str, list]:
    needed = [*task.hub_text_columns, "label"]
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise DataError(f"{where}: hub split lacks column(s) {missing}; has {ds.column_names}")
    feat = ds.features["label"]
    names = getattr(feat, "names", None)
    if names is not None and task.label_names is not None and tuple(names) != task.label_names:
        raise DataError(f"{where}: hub label names {names} differ from the expected class order "
                        f"{list(task.label_names)}")
    cols = ds.select_columns(needed).to_dict()
    n = len(cols["label"])
    test = _is_test_split(split)
    labels: list = []
    for i, v in enumerate(cols["label"]):
        if task.is_regression:
            if v is not None and test and float(v) == -1.0:
                labels.append(math.nan)
            elif v is None or not (math.isfinite(float(v)) and 0.0 <= float(v) <= 5.0):
                raise LabelError(where, i + 1, v, "a float score in [0, 5]")
            else:
                labels.append(float(v))
        else:
            if v is None or not (0 <= int(v) < task.num_labels or (test and int(v) == -1)):
                raise LabelError(where, i + 1, v, f"class indices 0..{task.num_labels - 1}"
                                 + (" or -1 (unlabelled)" if test else ""))
            labels.append(int(v))
    text_a = cols[task.hub_text_columns[0]]
    text_b = cols[task.hub_text_columns[1]] if task.is_pair else [""] * n
    return {"idx": list(range(n)), "text_a": text_a, "text_b": text_b, "label": labels}


def _load_hub_raw(task: GlueTask, hub_id: str) -> DatasetDict:
    raw = datasets.load_dataset(hub_id, task.hub_config)
    if not isinstance(raw, DatasetDict):
        raise DataError(f"hub dataset {hub_id!r} (config {task.hub_config!r}) did not load as a DatasetDict")
    return raw


def _make_dataset(cols: dict[str, list], features: Features, desc: dict[str, str]) -> Dataset:
    info = DatasetInfo(description=json.dumps(desc), features=features)
    return Dataset.from_dict(cols, features=features, info=info)


def load_glue(task: str | GlueTask, data_dir: str | Path | None = None, hub_id: str | None = None,
              splits: Sequence[str] | None = None) -> DatasetDict:
    """Load a GLUE task as a ``DatasetDict`` keyed by ``train``, ``dev`` (MNLI: ``dev_matched``,
    ``dev_mismatched``) and test split(s), with the schema of :func:`glue_features`.

    From the GLUE folder ``data_dir`` (default :func:`default_glue_dir`), or, when ``hub_id`` is
    given (e.g. ``"nyu-mll/glue"``), via ``datasets.load_dataset(hub_id, task.hub_config)`` with hub
    split names mapped (``validation`` -> ``dev``, ...). Without ``splits`` every available split is
    returned; a requested split that is absent raises :class:`DataLayoutError`. Each split's
    ``info.description`` is a JSON record of its source (file path and sha256, or hub id/config).
    """
    task = get_task(task)
    features = glue_features(task)
    out: dict[str, Dataset] = {}
    if hub_id is not None:
        if data_dir is not None:
            raise ValueError("pass either data_dir (GLUE folder) or hub_id, not both")
        raw = _load_hub_raw(task, hub_id)
        for split, hub_split in _hub_select(task, hub_id, raw, splits).items():
            where = f"{hub_id}[{task.hub_config}]/{hub_split}"
            cols = _convert_hub_split(task, raw[hub_split], where, split)
            desc = {"task": task.name, "split": split, "hub_id": hub_id, "hub_config": task.hub_config,
                    "hub_split": hub_split, "hub_fingerprint": raw[hub_split]._fingerprint}
            out[split] = _make_dataset(cols, features, desc)
        return DatasetDict(out)
    for split, path in split_paths(task, data_dir, splits).items():
        data = _read_bytes(path)
        cols = _parse_tsv(task, path, split, data)
        desc = {"task": task.name, "split": split, "source": str(path), "sha256": hashlib.sha256(data).hexdigest()}
        out[split] = _make_dataset(cols, features, desc)
    return DatasetDict(out)


def data_fingerprint(task: str | GlueTask, data_dir: str | Path | None = None, hub_id: str | None = None,
                     splits: Sequence[str] | None = None) -> str:
    """sha256 identifying the data :func:`load_glue` returns for the same arguments.

    Covers the reader version, the task name and, per selected split, its name and the sha256 of
    its file (hub: hub id, config and each split's datasets ``_fingerprint``). Independent of where
    the GLUE folder lives.
    """
    task = get_task(task)
    h = hashlib.sha256(f"{READER_VERSION}\0{task.name}\0".encode())
    if hub_id is not None:
        if data_dir is not None:
            raise ValueError("pass either data_dir (GLUE folder) or hub_id, not both")
        raw = _load_hub_raw(task, hub_id)
        for split, hub_split in _hub_select(task, hub_id, raw, splits).items():
            h.update(f"hub\0{hub_id}\0{task.hub_config}\0{split}\0{raw[hub_split]._fingerprint}\0".encode())
    else:
        for split, path in split_paths(task, data_dir, splits).items():
            h.update(f"file\0{split}\0{file_sha256(path)}\0".encode())
    return h.hexdigest()
