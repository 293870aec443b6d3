"""Unlabeled text for distillation: the pool the teacher labels once (``cache-teacher``) and ``distill`` learns from.

:func:`load_unlabeled` reads every source the options name (``--unlabeled_file``, ``--unlabeled_hub_dataset``)
and the ``--augment`` variants of the train rows, drops duplicates, and returns the pool as an Arrow-backed
``datasets.Dataset`` written to ``<datasets cache>/unlabeled/<fingerprint>/`` (memory-mapped: a million rows
are never Python objects at once). Two passes over the sources:

1. read and check every row (a bad row is refused, naming file and line, before anything is written) and
   keep one 64-bit key per row (:func:`~.unlabeled_read.text_key`: 8 bytes a row, e.g. 8 MB for 1M rows);
2. write the rows kept, in source order, with ids ``0..N-1``.

Dedup: a row whose key equals a labelled row's (train, dev and test: every labelled split the run has, so
no dev or test example leaks into training through the pool) is dropped, and so is every repeat within the
pool (the first occurrence is kept); texts are compared with whitespace runs collapsed and lower-cased.
The pool is keyed by :attr:`UnlabeledData.fingerprint` (the sources' bytes, the labelled keys it was
deduplicated against, the augment settings, this format); a folder of that key is reused after its file
manifest is verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, Features, Value

from .. import console
from ..artifacts import writing
from ..integrity import verify_folder, write_export_manifest
from .errors import DataLayoutError, DataOptionError
from .options import DataOptions
from .own import LoadedData, load_data
from .unlabeled_read import MAX_TEXT_CHARS, Source, open_sources, text_key

#: Bumped whenever the pool's content for the same inputs changes; part of the fingerprint.
UNLABELED_FORMAT = "unlabeled-v1"
DEDUP_POLICY = "blake2b-64 of whitespace-collapsed lower-cased texts; vs train/dev/test and within the pool"
SPLIT = "unlabeled"
_BATCH = 10_000


@dataclass
class UnlabeledData:
    """The unlabeled pool: ``rows`` (columns ``idx``, ``text_a``, ``text_b``, ``label`` = -1 / NaN, ``source``,
    ``line``), each source's record with its counts, the pool's ``fingerprint`` and a one-line ``report``."""

    rows: Dataset
    sources: list[dict[str, Any]]
    fingerprint: str
    report: str

    def record(self) -> dict[str, Any]:
        """What the teacher cache's manifest keeps of the pool (JSON-able)."""
        return {"fingerprint": self.fingerprint, "rows": self.rows.num_rows, "sources": self.sources,
                "report": self.report, "dedup": DEDUP_POLICY, "max_text_chars": MAX_TEXT_CHARS}


def load_unlabeled(opts: Any, loaded: LoadedData, cache_dir: str | Path) -> UnlabeledData | None:
    """The run's unlabeled pool (None when the options ask for none): read, checked, deduplicated against
    every labelled split, written under ``cache_dir`` (the run's datasets cache). ``opts``: any object with
    the data options (plus ``seed`` / ``max_train_examples`` for ``--augment``)."""
    data_opts = DataOptions.from_options(opts)
    if not data_opts.has_unlabeled:
        return None
    task = loaded.task
    sources = open_sources(data_opts.unlabeled_files(), data_opts.unlabeled_hub_dataset, task, data_opts.is_glue,
                           str(cache_dir))
    if data_opts.augment:
        sources.append(_augment_source(loaded, data_opts, opts))
    for source in sources:
        if source.note:
            console.info(source.note)
    labelled = _labelled_keys(opts, loaded, str(cache_dir))
    fingerprint = _fingerprint(task, sources, labelled, data_opts)
    folder = Path(cache_dir) / SPLIT / fingerprint[:32]
    cached = _open_cached(folder)
    if cached is None:
        keep, records, report = _plan(sources, labelled)
        cached = _write(folder, sources, keep, records, report, task.is_regression)
    rows, record = cached
    console.info(record["report"])
    return UnlabeledData(rows=rows, sources=record["sources"], fingerprint=fingerprint, report=record["report"])


def _augment_source(loaded: LoadedData, data_opts: DataOptions, opts: Any) -> Source:
    from .augment import augment_text  # u2's module (issue 25 item 4)

    train = loaded.splits["train"]
    limit = getattr(opts, "max_train_examples", None)
    if limit:
        train = train.select(range(min(int(limit), train.num_rows)))
    n = int(data_opts.augment)
    seed = int(data_opts.augment_seed if data_opts.augment_seed is not None else getattr(opts, "seed", 0))
    pair = loaded.task.is_pair
    ids = np.asarray(train.with_format("numpy", columns=["idx"])[:]["idx"], dtype=np.int64)

    def rows() -> Iterator[tuple[int, str, str]]:
        rng = np.random.default_rng(seed)
        texts = train.select_columns(["idx", "text_a", "text_b"])
        for start in range(0, texts.num_rows, _BATCH):
            chunk = texts[start:start + _BATCH]
            for idx, a, b in zip(chunk["idx"], chunk["text_a"], chunk["text_b"], strict=True):
                va = augment_text(a, n, rng)
                vb = augment_text(b, n, rng) if pair else [""] * len(va)
                for x, y in zip(va, vb, strict=False):
                    if x.strip() and (y.strip() or not pair):
                        yield int(idx), x, y

    record = {"augment": n, "augment_seed": seed, "format": "augment", "train_rows": int(train.num_rows),
              "train_ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest()}
    return Source(name="augment", where="--augment", record=record, rows=rows)


def _split_texts(ds: Dataset) -> Iterator[tuple[str, str]]:
    cols = ds.select_columns(["text_a", "text_b"])
    for start in range(0, cols.num_rows, _BATCH):
        chunk = cols[start:start + _BATCH]
        yield from zip(chunk["text_a"], chunk["text_b"], strict=True)


def labelled_splits(opts: Any, loaded: LoadedData, cache_dir: str) -> dict[str, Dataset]:
    """Every labelled split the run has: the loaded ones plus the task's other splits that exist (GLUE:
    test files, MNLI's second dev; own data: ``--test_file`` / the hub's test split), for deduplication."""
    out = dict(loaded.splits)
    task = loaded.task
    data_opts = DataOptions.from_options(opts)
    if data_opts.is_glue:
        wanted = [s for s in task.splits if s not in out]
    elif data_opts.uses_files:
        wanted = ["test"] if data_opts.test_file is not None and "test" not in out else []
    else:
        wanted = [] if "test" in out else ["test"]
    for name in wanted:
        try:
            more = load_data(opts, [name], cache_dir=cache_dir)
        except (DataLayoutError, DataOptionError):
            continue  # that split is not there (no test file, a hub dataset without it)
        out.update({k: v for k, v in more.splits.items() if k not in out})
    return out


def _labelled_keys(opts: Any, loaded: LoadedData, cache_dir: str) -> np.ndarray:
    keys = array("Q")
    for ds in labelled_splits(opts, loaded, cache_dir).values():
        keys.extend(text_key(a, b) for a, b in _split_texts(ds))
    return np.unique(np.frombuffer(keys, dtype=np.uint64))


def _fingerprint(task: Any, sources: list[Source], labelled: np.ndarray, data_opts: DataOptions) -> str:
    identity = {
        "format": UNLABELED_FORMAT, "dedup": DEDUP_POLICY, "max_text_chars": MAX_TEXT_CHARS,
        "pair": task.is_pair, "regression": task.is_regression,
        "sources": [{k: v for k, v in s.record.items() if k != "file"} for s in sources],
        "labelled_keys_sha256": hashlib.sha256(labelled.tobytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _plan(sources: list[Source], labelled: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]], str]:
    """Pass 1: every row read and checked, its key kept; returns the keep mask (one bool per row read),
    each source's record with its counts, and the report line."""
    keys = array("Q")
    bounds = [0]
    for source in sources:
        keys.extend(text_key(a, b) for _, a, b in source.rows())
        bounds.append(len(keys))
    k = np.frombuffer(keys, dtype=np.uint64) if len(keys) else np.zeros(0, np.uint64)
    in_labelled = np.isin(k, labelled)
    first = np.zeros(len(k), dtype=bool)
    first[np.unique(k, return_index=True)[1]] = True
    keep = first & ~in_labelled
    records = []
    for i, source in enumerate(sources):
        part = slice(bounds[i], bounds[i + 1])
        records.append({**source.record, "name": source.name, "rows_read": int(bounds[i + 1] - bounds[i]),
                        "kept": int(keep[part].sum()), "dropped_labelled_duplicates": int(in_labelled[part].sum()),
                        "dropped_pool_duplicates": int((~first[part] & ~in_labelled[part]).sum()),
                        "dropped_blank_lines": int(source.blank[0])})
    if not keep.any():
        where = ", ".join(s.where for s in sources)
        raise DataLayoutError(f"{where}: no unlabeled row is left after deduplication ({len(k)} read, all equal to "
                              "a labelled row or repeated)")
    total = {key: sum(r[key] for r in records) for key in ("rows_read", "kept", "dropped_labelled_duplicates",
                                                            "dropped_pool_duplicates", "dropped_blank_lines")}
    report = (f"unlabeled rows: {total['kept']} kept of {total['rows_read']} read from {len(sources)} source(s); "
              f"dropped {total['dropped_labelled_duplicates']} equal to a labelled train/dev/test row and "
              f"{total['dropped_pool_duplicates']} repeated in the pool"
              + (f"; {total['dropped_blank_lines']} blank line(s) skipped" if total["dropped_blank_lines"] else ""))
    return keep, records, report


def _features(regression: bool) -> Features:
    return Features({"idx": Value("int64"), "text_a": Value("string"), "text_b": Value("string"),
                     "label": Value("float32" if regression else "int64"), "source": Value("string"),
                     "line": Value("int64")})


def _kept_rows(sources: list[Source], keep: np.ndarray) -> Iterator[dict[str, list]]:
    """Pass 2: the kept rows in batches of columns, ids ``0..N-1`` in source order."""
    batch: dict[str, list] = {k: [] for k in ("idx", "text_a", "text_b", "source", "line")}
    pos = next_id = 0
    for source in sources:
        for line, a, b in source.rows():
            if keep[pos]:
                for key, value in zip(batch, (next_id, a, b, source.name, line), strict=True):
                    batch[key].append(value)
                next_id += 1
                if len(batch["idx"]) == _BATCH:
                    yield batch
                    batch = {k: [] for k in batch}
            pos += 1
    if batch["idx"]:
        yield batch


def _write(folder: Path, sources: list[Source], keep: np.ndarray, records: list[dict[str, Any]], report: str,
           regression: bool) -> tuple[Dataset, dict[str, Any]]:
    from datasets.arrow_writer import ArrowWriter

    features = _features(regression)
    no_label = float("nan") if regression else -1
    with writing(folder.parent, "unlabeled rows"):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name[:12]}-", dir=folder.parent))
        try:
            with ArrowWriter(features=features, path=str(tmp / "data.arrow")) as writer:
                for batch in _kept_rows(sources, keep):
                    writer.write_batch({**batch, "label": [no_label] * len(batch["idx"])})
                writer.finalize()
            record = {"format": UNLABELED_FORMAT, "rows": int(keep.sum()), "sources": records, "report": report}
            (tmp / "record.json").write_text(json.dumps(record, indent=1))
            write_export_manifest(tmp)
            try:
                os.replace(tmp, folder)
            except OSError:
                if not folder.is_dir():  # not a lost race with another rank writing the same pool
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    opened = _open_cached(folder)
    assert opened is not None
    return opened


def _open_cached(folder: Path) -> tuple[Dataset, dict[str, Any]] | None:
    """The pool in ``folder`` (its files checked against its manifest), or None when there is none."""
    if not (folder / "record.json").is_file():
        return None
    verify_folder(folder, what="unlabeled rows")
    record = json.loads((folder / "record.json").read_text())
    return Dataset.from_file(str(folder / "data.arrow")), record
