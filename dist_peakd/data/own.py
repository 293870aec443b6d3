"""One entry point for every stage: :func:`load_data` reads a GLUE task or the user's own data.

It returns a :class:`LoadedData`: the :class:`~.tasks.Task`, a ``DatasetDict`` in the common
schema of :func:`~.readers.glue_features` (``idx``, ``text_a``, ``text_b``, ``label``), the data
fingerprint (the tokenization and teacher caches' key) and a record of the sources. Own data:

* ``idx`` is the 0-based row position in the split's source file / hub split (as GLUE's), so ids are
  stable across runs and stages; a dev split carved from train keeps the train rows' ids.
* labels are class indices (``-1``: unlabelled test rows) or float32 scores (``NaN`` unlabelled).
* the fingerprint covers the reader version, the files' sha256 (hub: the splits' fingerprints),
  the text/label columns, the label list, the problem and, for a carved dev split, its fraction and
  seed; not the run name, the metric or the positive label (they do not change the rows).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, DatasetInfo

from ..artifacts import umask_file_mode
from . import labels as L
from .errors import DataError, DataFileError, DataOptionError
from .files import OWN_READER_VERSION, RawSplit, hub_split, read_file, read_hub
from .options import DataOptions
from .readers import data_fingerprint, glue_features, load_glue
from .split import carve_dev, ids_digest
from .tasks import DEFAULT_METRICS, Task, get_task

RECORD_FORMAT = "dist-peakd-data-v1"
ROLES = ("train", "dev", "test")


@dataclass
class LoadedData:
    """A task's splits in the common schema, its fingerprint and where every split came from.

    ``splits`` is keyed by the task's split names (own data: ``train``, ``dev``, ``test``; MNLI:
    ``dev_matched`` ...). ``sources[split]``: a JSON-able record (file, format and sha256; hub id,
    config, split and fingerprint; or, for a carved dev split, ``carved_from``, fraction, seed, row
    count and ``ids_sha256``). ``dev_ids``: the train ids carved into dev (``None`` if not carved).
    """

    task: Task
    splits: DatasetDict
    fingerprint: str
    sources: dict[str, dict[str, Any]]
    dev_ids: tuple[int, ...] | None = None
    label_reason: str | None = None  # own data: why the label column was read as classes / scores
    unlabeled: Any = None  # the unlabeled pool (data.unlabeled.UnlabeledData) when the run asked for one

    def summary(self) -> str:
        """One line: how the label column was read and why, and each split's rows (own data; GLUE: "")."""
        if self.label_reason is None:
            return ""
        t = self.task
        if t.is_regression:
            read = "regression targets"
        else:
            shown = ", ".join(map(repr, t.labels[:8])) + (", ..." if len(t.labels) > 8 else "")
            read = f"{len(t.labels)} classes ({shown})"
        rows = ", ".join(f"{name} {ds.num_rows} rows" + (" (carved from train)" if "carved_from" in
                                                          self.sources.get(name, {}) else "")
                         for name, ds in self.splits.items())
        return f"data {t.name}: label column {t.label_column!r} read as {read} because {self.label_reason}; {rows}"

    def record(self) -> dict[str, Any]:
        """What :func:`check_data_record` writes and compares (JSON-able)."""
        return {"format": RECORD_FORMAT, "task": self.task.describe(), "fingerprint": self.fingerprint,
                "splits": {name: ds.num_rows for name, ds in self.splits.items()}, "sources": self.sources}


def split_names(task: Task, wanted: Sequence[str] | None) -> list[str]:
    """Role or split names -> the task's split names: ``dev`` -> ``task.dev_splits[0]`` and ``test`` ->
    ``task.test_splits[0]`` where the task has no split of that name (MNLI); default train + dev."""
    wanted = ["train", "dev"] if wanted is None else [wanted] if isinstance(wanted, str) else list(wanted)
    out = []
    for name in wanted:
        if name not in task.splits:
            name = {"dev": task.dev_splits[0], "test": task.test_splits[0]}.get(name, name)
        if name not in out:
            out.append(name)
    return out


def load_data(opts: Any, splits: Sequence[str] | None = None, cache_dir: str | None = None) -> LoadedData:
    """Read the data that ``opts`` (a :class:`DataOptions` or any object with those attribute
    names, e.g. the stages' ``RunOptions``) describe; ``splits``: role or split names (default
    ``["train", "dev"]``). ``cache_dir``: the HF ``datasets`` cache for own files / hub data
    (default: the HF default). Everything is validated before it returns (:class:`DataError`).
    """
    opts = DataOptions.from_options(opts).validate()
    if opts.is_glue:
        return _load_glue(opts, splits)
    return _load_own(opts, splits, cache_dir)


def glue_task(opts: Any) -> Task:
    """The GLUE task the options name (``hub_config`` and ``metric`` applied), without reading its files."""
    opts = DataOptions.from_options(opts).validate()
    if not opts.is_glue:
        raise DataOptionError("task", f"{opts.task!r} is not a GLUE task; its task comes from load_data")
    task = get_task(opts.task)
    if opts.hub_config is not None:
        task = dataclasses.replace(task, hub_config=str(opts.hub_config))
    return _with_metric(task, opts.metric)


def _load_glue(opts: DataOptions, splits: Sequence[str] | None) -> LoadedData:
    task = glue_task(opts)
    names = split_names(task, splits)
    dsd = load_glue(task, data_dir=opts.glue_dir, hub_id=opts.hub_dataset, splits=names)
    fp = data_fingerprint(task, data_dir=opts.glue_dir, hub_id=opts.hub_dataset, splits=names)
    sources = {name: json.loads(ds.info.description) for name, ds in dsd.items()}
    for record in sources.values():
        record.pop("task", None)
        record.pop("split", None)
        if "source" in record:
            record["file"] = record.pop("source")
    return LoadedData(task=task, splits=dsd, fingerprint=fp, sources=sources)


def _with_metric(task: Task, metric: str | None) -> Task:
    try:
        return task.with_main_metric(metric)
    except ValueError as e:
        raise DataOptionError("metric", str(e)) from None


def _raw_splits(opts: DataOptions, roles: Sequence[str], cache_dir: str | None) -> dict[str, RawSplit]:
    """The raw train split and, for each role asked, its source (a missing dev is carved later)."""
    if opts.uses_files:
        files = {"train": opts.train_file, "dev": opts.dev_file, "test": opts.test_file}
        out = {"train": read_file(opts.train_file, "train_file", cache_dir)}
        for role in roles:
            if role == "test" and files["test"] is None:
                raise DataOptionError("test_file", "no test split: give --test_file")
            if role != "train" and files[role] is not None:
                out[role] = read_file(files[role], f"{role}_file", cache_dir)
        return out
    raw = read_hub(opts.hub_dataset, opts.hub_config, cache_dir)
    chosen = {"train": opts.train_split or "train"}
    if opts.dev_split is not None or "dev" in roles:
        chosen["dev"] = opts.dev_split or next((s for s in ("validation", "dev") if s in raw), None)
    if "test" in roles:
        chosen["test"] = opts.test_split or "test"
    out = {}
    for role, name in chosen.items():
        if name is None or (role != "train" and role not in roles):
            continue
        if name not in raw:
            option = f"{role}_split"
            raise DataOptionError(option, f"hub dataset {opts.hub_dataset!r} (config {opts.hub_config!r}) has no "
                                  f"split {name!r}; its splits: {', '.join(raw)}")
        out[role] = hub_split(raw, opts.hub_dataset, opts.hub_config, name)
    return out


def _own_task(opts: DataOptions, train: RawSplit) -> tuple[Task, list[Any], str]:
    """The task described by the options and the train split (labels / problem inferred from it), the train
    labels and why the label column was read as it was (for the data summary line)."""
    text_columns, label_column = opts.text_column_names(), opts.label_column_name()
    values = L.column_values(train, label_column, "label_column")
    given = opts.label_values()
    if opts.problem:
        problem, why = opts.problem, f"--problem {opts.problem}"
    elif given:
        problem, why = "binary" if len(given) == 2 else "multiclass", f"--labels lists {len(given)}"
    else:
        problem, why = L.infer_problem(train, label_column, values)
    labels = None
    if problem != "regression":
        if not given:
            L.check_class_values(train, label_column, values)
        classes = L.class_values(train, label_column, values)
        labels = given or L.sorted_labels(classes, train, label_column)
        if len(labels) < 2:
            raise DataError(f"{train.where}: column {label_column!r} has a single label {labels} in the train split; "
                            "a classifier needs at least two classes (for scores pass --problem regression)")
        if problem == "classification":
            problem = "binary" if len(labels) == 2 else "multiclass"
        if problem == "binary" and len(labels) != 2:
            raise DataOptionError("problem", f"binary needs 2 labels; the train split of {train.where} has "
                                  f"{len(labels)}: {', '.join(labels)}")
        values = classes
    positive = None if opts.positive_label is None else str(opts.positive_label)
    if positive is not None and (problem != "binary" or positive not in labels):
        raise DataOptionError("positive_label", f"{positive!r} is not a label of this binary problem" if
                              problem == "binary" else f"applies to binary problems, not {problem}")
    task = Task(name=opts.task, text_columns=text_columns, label_column=label_column, labels=labels,
                metrics=DEFAULT_METRICS[problem], main_metric=DEFAULT_METRICS[problem][0], problem=problem,
                positive_label=positive)
    return _with_metric(task, opts.metric), values, why


def _columns(task: Task, raw: RawSplit, role: str, origin: str, label_values: list[Any] | None = None) -> dict[str, list]:
    """One split in the common schema (``label_values``: the already decoded train labels)."""
    text_a = L.texts(raw, task.text_columns[0])
    text_b = L.texts(raw, task.text_columns[1]) if task.is_pair else [""] * len(text_a)
    column = task.label_column
    if role == "test" and L.unlabelled(raw, column):
        labels: list = [float("nan") if task.is_regression else -1] * len(text_a)
    else:
        if label_values is None:
            label_values = L.column_values(raw, column, "label_column")
            if not task.is_regression:
                label_values = L.class_values(raw, column, label_values)
        labels = (L.scores(raw, column, label_values) if task.is_regression
                  else L.class_ids(raw, column, label_values, task.labels, origin))
    return {"idx": list(range(len(text_a))), "text_a": text_a, "text_b": text_b, "label": labels}


def _load_own(opts: DataOptions, splits: Sequence[str] | None, cache_dir: str | None) -> LoadedData:
    roles = list(splits) if splits is not None else ["train", "dev"]
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise DataOptionError("splits", f"unknown split(s) {unknown} for own data; splits: {', '.join(ROLES)}")
    raws = _raw_splits(opts, roles, cache_dir)
    task, train_labels, why = _own_task(opts, raws["train"])
    origin = "--labels" if opts.labels is not None else f"label set of the train split {raws['train'].where}"
    columns = {role: _columns(task, raws[role], role, origin, train_labels if role == "train" else None)
               for role in raws}
    sources = {role: dict(raw.source, rows=raws[role].rows.num_rows) for role, raw in raws.items()}
    dev_ids = None
    if "dev" in roles and "dev" not in raws:
        columns["train"], columns["dev"], dev_ids = _carve(task, columns["train"], opts)
        sources["dev"] = {"carved_from": "train", "dev_fraction": float(opts.dev_fraction),
                          "split_seed": int(opts.split_seed), "rows": len(dev_ids), "ids_sha256": ids_digest(dev_ids)}
    features = glue_features(task)
    out = {}
    for role in ROLES:
        if role in roles:
            desc = {"task": task.name, "split": role, **sources[role]}
            info = DatasetInfo(description=json.dumps(desc), features=features)
            out[role] = Dataset.from_dict(columns[role], features=features, info=info)
    return LoadedData(task=task, splits=DatasetDict(out), fingerprint=_own_fingerprint(task, sources, roles),
                      sources={r: sources[r] for r in out}, dev_ids=dev_ids, label_reason=why)


def _carve(task: Task, train: dict[str, list], opts: DataOptions) -> tuple[dict, dict, tuple[int, ...]]:
    n = len(train["idx"])
    picked = carve_dev(None if task.is_regression else train["label"], n, float(opts.dev_fraction),
                       int(opts.split_seed))
    in_dev = set(picked.tolist())
    keep = [i for i in range(n) if i not in in_dev]
    take = picked.tolist()
    train_out = {k: [v[i] for i in keep] for k, v in train.items()}
    dev_out = {k: [v[i] for i in take] for k, v in train.items()}
    return train_out, dev_out, tuple(int(train["idx"][i]) for i in take)


def _own_fingerprint(task: Task, sources: dict[str, dict], roles: Sequence[str]) -> str:
    identity = {"reader": OWN_READER_VERSION, "problem": task.problem, "text_columns": list(task.text_columns),
                "label_column": task.label_column, "labels": task.labels,
                "train": _comparable(sources["train"]),
                "splits": {r: _comparable(sources[r]) for r in roles}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _comparable(source: dict[str, Any]) -> dict[str, Any]:
    """A source record without where it lives (moving a file does not change the data)."""
    return {k: v for k, v in source.items() if k != "file"}


def data_record_differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two :meth:`LoadedData.record` s, on the splits both hold."""
    diffs = []
    for key in ("problem", "text_columns", "label_column", "labels"):
        if before["task"].get(key) != now["task"].get(key):
            diffs.append(f"{key}: {before['task'].get(key)!r} -> {now['task'].get(key)!r}")
    for split in sorted(set(before["sources"]) & set(now["sources"])):
        old, new = _comparable(before["sources"][split]), _comparable(now["sources"][split])
        diffs += [f"{split}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                  if old.get(k) != new.get(k)]
    return diffs


def check_data_record(path: str | Path, data: LoadedData) -> bool:
    """Write ``data.record()`` to ``path`` if absent (atomically; returns ``True``), else refuse data
    that differ from the recorded ones (:class:`DataError` listing the differences; returns ``False``).

    Meant for ``<task_dir>/data.json``: every stage of a run then provably sees the same files,
    labels and carved dev split as the first one.
    """
    path = Path(path)
    record = data.record()
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DataFileError(path, f"unreadable data record ({e}); delete it to start the run afresh") from None
        diffs = data_record_differences(before, record)
        if diffs:
            raise DataError(f"{path}: the data differ from the ones this run started with ({'; '.join(diffs)}); "
                            "use another --task name / --output_dir, or delete the run folder to redo it")
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".data-", suffix=".json", dir=path.parent)
    try:
        os.fchmod(fd, umask_file_mode())  # mkstemp creates 0600; the record follows the umask
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True
