"""The ONNX export's card: the dev metrics of the graphs it wrote (``model.onnx``, ``model_int8.onnx``),
measured on the rows the source's card metrics were measured on, next to the PyTorch ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.rows import column_array, fetch_rows
from ..engine.tracking import with_eval_loss
from ..export import read_folder_record, update_card
from .common import MetricWarnings, collator_for, prepare_data
from .finetune_teacher import metrics_from_logits
from .inference import ONNX_FILE, ONNX_INT8_FILE, eval_batches, open_model_folder

#: dev_metrics columns the ONNX card adds (runtime of each graph).
ONNX_COLUMNS = {ONNX_FILE: "onnx fp32", ONNX_INT8_FILE: "onnx int8"}


def graph_dev_metrics(opts: Any, folder: Path, onnx_file: str) -> dict[str, float]:
    """Dev metrics of one graph of ``folder`` in this process alone (the export runs on rank 0 only),
    on the rows the folder's card metrics are of (its run's ``max_eval_examples``)."""
    record = read_folder_record(folder)
    rows = ((record.get("card") or {}).get("options") or {}).get("max_eval_examples")
    model = open_model_folder(folder, onnx_file, torch.device("cpu"), opts.trust_unverified)
    data = prepare_data(opts, model.tokenizer, need_train=False, check_run=False, eval_rows=rows)
    collate = collator_for(model.tokenizer)
    logits, labels = [], []
    for share in eval_batches(column_array(data.dev, "length").tolist(), opts.eval_batch_size):
        batch = collate(fetch_rows(data.dev, share))
        logits.append(np.asarray(model.logits(batch), dtype=np.float32))
        labels.append(batch["labels"].numpy())
    preds = {"logits": np.concatenate(logits), "labels": np.concatenate(labels)}
    quiet = MetricWarnings(quiet=True)  # the export's one line stays one line; the card states the skew
    return with_eval_loss(metrics_from_logits(data.task, quiet), data.task.is_regression)(preds)


def add_onnx_metrics(opts: Any, out: Path) -> dict[str, dict[str, float]]:
    """Measure every graph in ``out`` and re-render its card with them (``update_card``); returns them."""
    record = read_folder_record(out)
    if "card" not in record:
        return {}
    measured = {column: graph_dev_metrics(opts, out, name) for name, column in ONNX_COLUMNS.items()
                if (out / name).is_file()}
    update_card(out, dev_metrics={**record["card"]["dev_metrics"], **measured})
    return measured
