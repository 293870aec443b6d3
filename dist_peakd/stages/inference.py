"""Running a saved model folder (PyTorch or ONNX) over tokenized rows, on one rank or N.

The batches are the training stages' evaluation batches: rows sorted by length (descending, stable),
cut into ``eval_batch_size`` rows, padded by the same collator. With N ranks each rank runs *whole*
batches (batch ``i`` on rank ``i mod N``) and the logits are gathered by example id, so every rank
count gives the same logits as one rank, and one rank gives what the stage's own dev evaluation gave.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import LengthGroupedBatchSampler
from ..data.rows import column_array, fetch_rows
from ..engine import DistInfo, all_gather_objects
from ..errors import ArtifactCorruptError, ConfigError
from ..export import ExportError, OnnxLogits, load_model_folder, read_folder_record
from ..export.onnx import ONNX_FILE, ONNX_INT8_FILE
from ..integrity import verify_export

Batch = dict[str, torch.Tensor]


@dataclass
class ModelFolder:
    """A loaded model folder: ``logits(batch) -> np.ndarray`` and what describes it."""

    folder: Path
    runtime: str                                  # "pytorch" | "onnxruntime"
    graph: Path | None                            # the ONNX file (None for PyTorch)
    tokenizer: Any
    config: Any
    logits: Callable[[Batch], np.ndarray]
    record: dict[str, Any] = field(default_factory=dict)
    label_order: tuple[int, ...] | None = None    # set once its classes are matched to a task's

    def label_names(self, task: Any) -> list[str]:
        """Class names: the task's (the registry's) when they fit the model's outputs, else the folder's."""
        if task is not None and task.num_labels == self.config.num_labels:
            return [task.id2label()[i] for i in range(task.num_labels)]
        return [str(self.config.id2label[i]) for i in range(self.config.num_labels)]

    def describe(self) -> dict[str, Any]:
        return {"model_dir": str(self.folder), "runtime": self.runtime,
                "graph": None if self.graph is None else self.graph.name}


def trained_task_note(model: ModelFolder, task: Any) -> dict[str, Any]:
    """What to add to a result when the folder records another task than ``task``: nothing for its own task
    (or a folder without a record); ``trained_on`` and a warning when the classes are the same (the same
    names in the same order); refused (ConfigError) when they differ: its outputs mean other classes."""
    trained_on = model.record.get("task")
    if not trained_on or trained_on == task.name:
        return {}
    names = task.id2label()
    theirs = [str(names[i]) for i in range(task.num_labels)]
    ours = [str(model.config.id2label.get(i, i)) for i in range(model.config.num_labels)]
    if ours != theirs:
        raise ConfigError(f"option task: {model.folder} was trained on {trained_on} (classes {', '.join(ours)}), not "
                          f"on {task.name} (classes {', '.join(theirs)}): its outputs mean another task's classes; leave "
                          f"--task out to use the task the folder records, or give a model of {task.name}")
    note = (f"{model.folder} was trained on {trained_on}, not on {task.name} (the same classes: {', '.join(ours)}): "
            f"these are another task's model's results on {task.name}")
    return {"trained_on": trained_on, "warnings": [note]}


def match_task_labels(model: ModelFolder, task: Any) -> dict[str, Any]:
    """A folder's own classes (its ``id2label``) matched onto ``task``'s: the same names (a folder a stage
    wrote), the same names in another order (its outputs reordered by name), generic ``LABEL_i`` names (by
    index, with a warning); other names are refused naming both label sets (ConfigError). Returns the
    warnings to add to the result. Applied once per folder (the GLUE check runs it before the data)."""
    from ..models import ModelConfigError
    from ..models.teacher_labels import match_labels, model_label_names

    if task.is_regression or model.config.num_labels != task.num_labels:
        return {}  # another count: check_outputs names it
    names = task.id2label()
    try:
        match = match_labels(model_label_names(model.config.id2label, task.num_labels),
                             [names[i] for i in range(task.num_labels)], str(model.folder), task.name)
    except ModelConfigError as e:
        raise ConfigError(f"option model_dir: {e}") from None
    if model.label_order is None:
        model.label_order = match.order
        if not match.is_identity:
            inner, order = model.logits, list(match.order)
            model.logits = lambda batch: inner(batch)[:, order]
    return {"warnings": [match.note]} if match.note else {}


def is_onnx_folder(folder: str | Path) -> bool:
    return any((Path(folder) / name).is_file() for name in (ONNX_FILE, ONNX_INT8_FILE))


def open_model_folder(model_dir: str | Path, onnx_file: str | None = None,
                      device: torch.device | None = None, trust_unverified: bool = False) -> ModelFolder:
    """Load a folder a stage or ``dist-peakd export`` wrote: an HF folder (compact SPS student, plain
    BERT, teacher) in PyTorch fp32, or an ONNX folder in onnxruntime (``onnx_file``: which graph)."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ConfigError(f"option model_dir: {str(folder)!r} is not a folder (give a stage's best/ or final/, "
                          "or a folder `dist-peakd export` wrote)")
    if not is_onnx_folder(folder):
        if onnx_file is not None:
            raise ConfigError(f"option onnx_file: {folder} holds no ONNX graph (it is a PyTorch folder)")
        try:
            model, tokenizer = load_model_folder(folder, trust_unverified)
        except ExportError as e:
            raise ConfigError(str(e)) from None
        model = model.to(device or torch.device("cpu"))
        return ModelFolder(folder, "pytorch", None, _require_tokenizer(tokenizer, folder), model.config,
                           _torch_logits(model), read_folder_record(folder))
    from transformers import AutoConfig, AutoTokenizer

    graph = folder / (onnx_file or ONNX_FILE)
    present = sorted(p.name for p in folder.glob("*.onnx"))
    if not graph.is_file():
        raise ConfigError(f"option onnx_file: {graph} not found; this folder has {present}")
    if graph.suffix.lower() != ".onnx":
        raise ConfigError(f"option onnx_file: {graph} is not an ONNX graph (a .onnx file); this folder has {present}")
    verify_export(folder, trust_unverified=trust_unverified)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    runner = _onnx_session(graph, onnx_file)
    return ModelFolder(folder, "onnxruntime", graph, tokenizer, AutoConfig.from_pretrained(str(folder)),
                       runner, read_folder_record(folder))


def _onnx_session(graph: Path, onnx_file: str | None) -> OnnxLogits:
    """An onnxruntime session of ``graph``; a file onnxruntime cannot load is refused in one line (the option's
    file: exit 2; the folder's own graph, which its manifest vouched for: a corrupted artifact, exit 4)."""
    try:
        return OnnxLogits(graph)
    except Exception as e:  # onnxruntime's InvalidProtobuf, Fail, ...: a file that is not a usable graph
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if onnx_file is not None:
            raise ConfigError(f"option onnx_file: {graph} is not a loadable ONNX graph ({first})") from None
        raise ArtifactCorruptError(graph, f"not a loadable ONNX graph ({first})") from None


def _require_tokenizer(tokenizer: Any, folder: Path) -> Any:
    if tokenizer is None:
        raise ConfigError(f"option model_dir: {folder} has no tokenizer files (a stage's best/ and final/ do)")
    return tokenizer


def _torch_logits(model: torch.nn.Module) -> Callable[[Batch], np.ndarray]:
    from ..models.teacher import uses_token_types

    device = next(model.parameters()).device
    names = ("input_ids", "attention_mask", "token_type_ids") if uses_token_types(model) else ("input_ids",
                                                                                               "attention_mask")

    @torch.no_grad()
    def logits(batch: Batch) -> np.ndarray:
        out = model(**{name: batch[name].to(device) for name in names})
        return out.logits.float().cpu().numpy()

    return logits


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """The row indices of each evaluation batch (as the stages' dev evaluation cuts them)."""
    return LengthGroupedBatchSampler(lengths, global_batch_size=batch_size, shuffle=False).global_batches(0)


def rows_logits(model: ModelFolder, rows: Any, collate: Callable[[list[dict]], Batch], batch_size: int,
                dist_info: DistInfo) -> dict[str, np.ndarray]:
    """``{"example_ids", "logits", "labels"}`` of every row, sorted by example id, on every rank."""
    batches = eval_batches(column_array(rows, "length").tolist(), batch_size)
    local: dict[str, list[np.ndarray]] = {"example_ids": [], "logits": [], "labels": []}
    for share in batches[dist_info.rank::dist_info.world_size]:
        batch = collate(fetch_rows(rows, share))
        local["logits"].append(np.asarray(model.logits(batch), dtype=np.float32))
        local["example_ids"].append(batch["example_ids"].numpy())
        local["labels"].append(batch["labels"].numpy())
    parts = [p for p in all_gather_objects(local) if p["logits"]]
    merged = {k: np.concatenate([a for p in parts for a in p[k]]) for k in local}
    ids, first = np.unique(merged["example_ids"], return_index=True)
    if len(ids) != len(merged["example_ids"]):
        raise RuntimeError("inference saw an example id twice across ranks")
    return {k: v[first] for k, v in merged.items()}


def has_labels(labels: np.ndarray, is_regression: bool) -> bool:
    """False for an unlabelled (test) split: every label -1, or NaN for regression."""
    return bool(np.isfinite(labels).any()) if is_regression else bool((labels >= 0).any())
