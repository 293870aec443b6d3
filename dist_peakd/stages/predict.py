"""``dist-peakd predict``: label names and probabilities for every row of a split or of your own file.

::

    dist-peakd predict --model_dir runs/mrpc/distill-.../final --split test --out preds/mrpc_test.tsv
        # -> preds/mrpc_test.tsv (index, label, one probability per class) and preds/MRPC.tsv, the GLUE
        #    server's submission file (index<TAB>prediction)
    dist-peakd predict --model_dir ... --input pairs.jsonl --out pairs_pred.jsonl
    deepspeed --num_gpus 2 --module dist_peakd.cli predict ...                   # N ranks, same file

``--out`` ends in ``.tsv`` (a header, then ``index  label  p_<class> ...``; regression: ``index
prediction``) or ``.jsonl`` (``{"index", "label", "probabilities": {class: p}}``; regression
``{"index", "prediction"}``). Rows are in index order: the 0-based row of the split file (GLUE: its
``index`` column) or of ``--input``. ``--input`` (.tsv/.csv/.json/.jsonl/.parquet) holds the task's
text column(s): its own names (GLUE MRPC: ``#1 String``, ``#2 String``), the hub's (``sentence1``,
``sentence2``), ``text_a`` [, ``text_b``] or ``text`` [, ``text_pair``] (``pipeline()``'s names); other columns
are ignored. Every text is checked as the stages check theirs: a null, a number, a list or a blank text is
refused (exit 4) naming the file, the row and the column, never predicted as the string ``"None"``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import atomic_write_text
from ..config import EvalSliceOption, option
from ..engine import barrier, init_distributed
from ..errors import ConfigError
from ..integrity import file_sha256
from .common import collator_for, prepare_data
from .evaluate import ModelDirOptions, OnnxFileOption, check_glue_model_task, check_model_task, check_split
from .inference import ModelFolder, open_model_folder, rows_logits
from .outputs import check_output_file, command_inputs

#: The file name the GLUE server expects for each task's (test split's) predictions.
GLUE_SUBMISSION_NAMES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
                         "test_matched": "MNLI-m", "test_mismatched": "MNLI-mm", "qnli": "QNLI", "rte": "RTE",
                         "wnli": "WNLI"}
OUT_FORMATS = (".tsv", ".jsonl")


@dataclass
class PredictOptions(OnnxFileOption, EvalSliceOption, ModelDirOptions):
    """What to predict (a split, or ``--input``), where the predictions go."""

    split: str = option("test", help="split to predict: test (GLUE: also writes the submission file), dev, or "
                                     "another split name; ignored with --input")
    input: str | None = option(None, help="predict the rows of this file instead (.tsv/.csv/.json/.jsonl/.parquet "
                                          "with the task's text column(s))")
    out: str | None = option(None, help="predictions file: .tsv or .jsonl (required)")

    def validate(self) -> None:
        super().validate()
        if not self.out:
            raise ConfigError("option out: required (a .tsv or .jsonl file for the predictions)")
        if Path(self.out).suffix.lower() not in OUT_FORMATS:
            raise ConfigError(f"option out: {self.out!r} must end in {' or '.join(OUT_FORMATS)}")
        if self.input is None:
            check_split(self.task, self.split, allow_test=True)
        elif not Path(self.input).is_file():
            raise ConfigError(f"option input: {self.input!r} is not a file")
        check_output_file("out", self.out, command_inputs(self))


# ------------------------------------------------------------------------------------------ input rows
def input_columns(task: Any) -> list[tuple[str, ...]]:
    """The column names ``--input`` may hold the texts under, in the order they are tried: the task's, the
    hub's, ``text_a`` [, ``text_b``], and ``text`` [, ``text_pair``] (the names of ``pipeline()``'s inputs)."""
    n = len(task.text_columns)
    out = [tuple(task.text_columns), tuple(getattr(task, "hub_text_columns", ()) or ()),
           ("text_a", "text_b")[:n], ("text", "text_pair")[:n]]
    return [c for i, c in enumerate(out) if c and c not in out[:i]]


def _input_texts(path: str, task: Any) -> tuple[list[str], list[str]]:
    """The text column(s) of ``--input``, under one of :func:`input_columns`' names, checked as the stages check
    a split's texts: a null, a number, a list or a blank text is refused naming the file, row and column."""
    from ..data.files import read_file
    from ..data.labels import texts

    raw = read_file(path, "input")
    candidates = input_columns(task)
    for names in candidates:
        if set(names) <= set(raw.rows.column_names):
            a = texts(raw, names[0], "input")
            return a, texts(raw, names[1], "input") if task.is_pair else [""] * len(a)
    accepted = " or ".join(str(list(c)) for c in candidates)
    raise ConfigError(f"option input: {path} has columns {raw.rows.column_names}; {task.name} needs {accepted}")


def input_rows(opts: PredictOptions, task: Any, tokenizer: Any) -> Any:
    """``--input`` tokenized like a split (through the tokenization cache), labels unknown."""
    from datasets import Dataset, DatasetDict

    from ..data import glue_features, tokenize_dataset

    text_a, text_b = _input_texts(opts.input, task)
    label = float("nan") if task.is_regression else -1
    columns = {"idx": list(range(len(text_a))), "text_a": text_a, "text_b": text_b, "label": [label] * len(text_a)}
    dsd = DatasetDict({"input": Dataset.from_dict(columns, features=glue_features(task))})
    fingerprint = hashlib.sha256(f"input|{file_sha256(opts.input)}|{task.name}|{task.is_pair}".encode()).hexdigest()
    tokenized, _ = tokenize_dataset(dsd, tokenizer, opts.max_length, opts.layout().token_cache, fingerprint,
                                    is_pair=task.is_pair)
    return tokenized["input"]


def input_task(opts: PredictOptions, model: ModelFolder) -> Any:
    """The task of ``--input`` rows: the registry's (GLUE), else the one the model folder records."""
    from ..data import Task, get_task, is_glue_name

    if is_glue_name(opts.task):
        return get_task(opts.task)
    d = model.record.get("task_record")
    if not d:
        raise ConfigError(f"option task: {opts.task!r} is not a GLUE task and {model.folder} records no task")
    return Task(name=d["name"], text_columns=tuple(d["text_columns"]), label_column=d["label_column"],
                labels=None if d["labels"] is None else tuple(d["labels"]), metrics=tuple(d["metrics"]),
                main_metric=d["main_metric"], problem=d["problem"], positive_label=d["positive_label"])


# ------------------------------------------------------------------------------------------ writing
def prediction_lines(logits: np.ndarray, ids: np.ndarray, names: list[str], regression: bool, fmt: str) -> list[str]:
    """One line per row (plus the TSV header): label name + probabilities, or the predicted score."""
    if regression:
        values = logits[:, 0].astype(np.float64)
        if fmt == ".jsonl":
            return [json.dumps({"index": int(i), "prediction": round(float(v), 6)}) for i, v in zip(ids, values, strict=True)]
        return ["index\tprediction", *(f"{int(i)}\t{float(v):.6f}" for i, v in zip(ids, values, strict=True))]
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    best = probs.argmax(axis=1)
    if fmt == ".jsonl":
        return [json.dumps({"index": int(i), "label": names[b], "probabilities":
                            {n: round(float(p), 6) for n, p in zip(names, row, strict=True)}})
                for i, b, row in zip(ids, best, probs, strict=True)]
    header = "\t".join(["index", "label", *(f"p_{n}" for n in names)])
    return [header, *("\t".join([str(int(i)), names[b], *(f"{p:.6f}" for p in row)])
                      for i, b, row in zip(ids, best, probs, strict=True))]


def submission_lines(task: Any, logits: np.ndarray, ids: np.ndarray) -> list[str]:
    """The GLUE server's format: ``index<TAB>prediction``; the label as in the task's files, or a score."""
    if task.is_regression:
        return ["index\tprediction", *(f"{int(i)}\t{float(v):.6f}" for i, v in zip(ids, logits[:, 0], strict=True))]
    return ["index\tprediction", *(f"{int(i)}\t{task.labels[int(b)]}" for i, b in zip(ids, logits.argmax(axis=1), strict=True))]


def submission_path(opts: PredictOptions, task: Any, split: str) -> Path | None:
    """``<out folder>/<MRPC|SST-2|MNLI-m|...>.tsv`` for a GLUE test split, else None."""
    if opts.input is not None or not getattr(task, "is_glue", False) or split not in task.test_splits:
        return None
    name = GLUE_SUBMISSION_NAMES.get(split if task.name == "mnli" else task.name)
    if name is None:
        return None
    path = Path(opts.out).parent / f"{name}.tsv"
    if path.resolve() == Path(opts.out).resolve():
        raise ConfigError(f"option out: {opts.out} is the GLUE submission file's name; choose another name")
    return path


def run(opts: PredictOptions) -> dict[str, Any]:
    """Predict every row; rank 0 writes ``--out`` (and, for a GLUE test split, the submission file)."""
    dist_info = init_distributed()
    model = open_model_folder(opts.model_dir, opts.onnx_file, dist_info.device, opts.trust_unverified)
    if opts.input is not None:
        task, split = input_task(opts, model), "input"
        check_model_task(model, task)  # before the rows are tokenized and cached
        rows = input_rows(opts, task, model.tokenizer)
    else:
        check_glue_model_task(model, opts.task)  # before anything is read or cached
        data = prepare_data(opts, model.tokenizer, need_train=False, eval_split=opts.split, check_run=False)
        task, split, rows = data.task, data.dev_split, data.dev
    other_task = check_model_task(model, task)  # another task's classes: refused; the same: said plainly
    outputs = rows_logits(model, rows, collator_for(model.tokenizer), opts.eval_batch_size, dist_info)
    logits, ids = outputs["logits"], outputs["example_ids"]
    submission = submission_path(opts, task, split)
    if dist_info.is_main:
        out = Path(opts.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = prediction_lines(logits, ids, model.label_names(task), task.is_regression, out.suffix.lower())
        atomic_write_text(out, "\n".join(lines) + "\n")
        if submission is not None:
            atomic_write_text(submission, "\n".join(submission_lines(task, logits, ids)) + "\n")
    barrier()
    return {**model.describe(), "task": task.name, "split": split, "rows": int(len(ids)), "out": str(opts.out),
            "submission": None if submission is None else str(submission), "world_size": dist_info.world_size,
            **other_task}
