"""Stage 1: fine-tune the teacher (a BERT-family encoder + linear head) on a GLUE task.

Outputs under ``<output_dir>/<task>/teacher/``: ``best/`` and ``final/`` (HF format with tokenizer),
``summary.json``, ``config.json`` (the resolved options), ``checkpoints/`` (exact resume), ``tb/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import RunOptions
from ..engine import Engine, LossOutput, Tracker, init_distributed, seed_everything
from ..engine.loop import total_train_steps, train_loop
from ..metrics import compute_metrics
from ..models import load_teacher, model_stats
from .common import (
    claim_stage_dir,
    collator_for,
    eval_sampler,
    load_tokenizer,
    prepare_data,
    resolve_backbone,
    train_sampler,
)

STAGE = "teacher"


@dataclass
class FinetuneTeacherOptions(RunOptions):
    """Teacher fine-tuning options: the shared ones with the teacher's own lr/epoch defaults.

    Both ``best/`` (best dev metric) and ``final/`` are exported; later stages read ``teacher/best`` by
    default and ``--teacher_dir <...>/teacher/final`` picks the final one.
    """

    lr: float = 5e-5
    epochs: float = 3.0

def classification_loss(task_is_regression: bool):
    """CE (sum over the micro-batch) for classification, MSE for regression; computed in fp32."""

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"])
        logits = out.logits.float()
        if task_is_regression:
            loss = F.mse_loss(logits.squeeze(-1), batch["labels"].float(), reduction="sum")
            return LossOutput(total=loss, terms={"mse": loss.detach()}, count=len(logits), weights={"mse": 1.0})
        loss = F.cross_entropy(logits, batch["labels"], reduction="sum")
        return LossOutput(total=loss, terms={"ce": loss.detach()}, count=len(logits), weights={"ce": 1.0})

    return loss_fn


def logits_predict(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"])
    return {"logits": out.logits.float(), "labels": batch["labels"]}


def metrics_from_logits(task: Any):
    def metric_fn(preds: dict[str, np.ndarray]) -> dict[str, float]:
        logits = preds["logits"]
        predictions = logits.squeeze(-1) if task.is_regression else logits.argmax(-1)
        return compute_metrics(task, predictions, preds["labels"])

    return metric_fn


def run(opts: FinetuneTeacherOptions) -> dict[str, Any]:
    """Fine-tune, evaluate each epoch, export best/ and final/; returns the summary dict."""
    dist_info = init_distributed()
    seed_everything(opts.seed)
    stage_dir = opts.task_dir() / STAGE
    claim_stage_dir(stage_dir, opts)
    tokenizer = load_tokenizer(opts.backbone)
    data = prepare_data(opts, tokenizer)
    task = data.task
    model = load_teacher(resolve_backbone(opts.backbone), num_labels=task.num_labels)
    seed_everything(opts.seed + 1000 * dist_info.rank)  # distinct dropout streams per rank
    sampler = train_sampler(data.train, opts, dist_info)
    total = total_train_steps(len(sampler), opts.epochs)
    engine = Engine(model, opts.engine_options(), total_steps=total, dist_info=dist_info)
    tracker = Tracker(stage_dir / "tb", enabled=dist_info.is_main)
    if dist_info.is_main:
        cfg = {**opts.__dict__, "stage": STAGE, "world_size": dist_info.world_size,
               "gradient_accumulation_steps": engine.gradient_accumulation_steps,
               "precision_resolved": engine.precision, "total_steps": total}
        tracker.config(cfg)
    stats = model_stats(engine.module, seq_len=opts.max_length)

    def export(path: Path, info: dict[str, Any]) -> None:
        engine.export_pretrained(path, tokenizer, extra_json={"dist_peakd.json": {
            "stage": STAGE, "task": task.name, **info, "model_stats": stats}})

    summary = train_loop(
        engine=engine, train_rows=data.train, train_sampler=sampler, eval_rows=data.dev,
        eval_sampler=eval_sampler(data.dev, opts, dist_info), collate=collator_for(tokenizer),
        loss_fn=classification_loss(task.is_regression), predict_fn=logits_predict,
        metric_fn=metrics_from_logits(task), main_metric=task.main_metric, output_dir=stage_dir,
        tracker=tracker, options=opts.loop_options(), export_fn=export,
        extra_summary={"model_stats": stats, "stage_dir": str(stage_dir)})
    tracker.close()
    return summary
