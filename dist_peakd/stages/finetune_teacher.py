"""Stage 1: fine-tune the teacher (an encoder of a supported family + its classification head) on a task.

Outputs under ``<output_dir>/<task>/teacher/``: ``best/`` and ``final/`` (HF format with tokenizer),
``summary.json``, ``stage_options.json`` (the resolved options), ``checkpoints/`` (exact resume), ``tb/``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import console
from ..config import RunOptions
from ..engine import Engine
from ..engine.tracking import with_eval_loss
from ..engine.trainer import Evaluation, Trainer
from ..layout import TEACHER_STAGE
from ..loss_output import LossOutput
from ..models import load_teacher, model_stats
from ..models.teacher import uses_token_types
from .cards import ExportContext, model_label_names, teacher_method
from .common import (
    MetricWarnings,
    backbone_fingerprint,
    build_engine,
    load_tokenizer,
    open_tracker,
    prepare_data,
    resolve_backbone,
    set_task_labels,
    stage_exporter,
    start_stage,
    tracker_session,
    trainer_data,
)
from .preflight import check_models
from .stage_folder import check_inputs, releases_locks

STAGE = TEACHER_STAGE


@dataclass
class FinetuneTeacherOptions(RunOptions):
    """Teacher fine-tuning options: the shared ones with the teacher's own lr/epoch defaults.

    Both ``best/`` (best dev metric) and ``final/`` are exported; later stages read ``teacher/best`` by
    default and ``--teacher_dir <...>/teacher/final`` picks the final one.
    """

    lr: float = 5e-5
    epochs: float = 3.0


def _inputs(batch: dict[str, torch.Tensor], token_types: bool) -> dict[str, torch.Tensor]:
    names = ("input_ids", "attention_mask", "token_type_ids") if token_types else ("input_ids", "attention_mask")
    return {name: batch[name] for name in names}


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, is_regression: bool) -> LossOutput:
    """The task loss of one micro-batch, summed over its examples, in fp32: cross-entropy with the gold
    labels for classification, squared error for regression (weight 1)."""
    logits = logits.float()
    if is_regression:
        loss = F.mse_loss(logits.squeeze(-1), labels.float(), reduction="sum")
        return LossOutput(total=loss, terms={"mse": loss.detach()}, count=len(logits), weights={"mse": 1.0})
    loss = F.cross_entropy(logits, labels, reduction="sum")
    return LossOutput(total=loss, terms={"ce": loss.detach()}, count=len(logits), weights={"ce": 1.0})


def train(trainer: Trainer, engine: Engine, is_regression: bool, token_types: bool) -> dict[str, Any]:
    """The fine-tuning recipe: per micro-batch the teacher's forward, the task loss and backward; per step
    the optimizer step and the log; returns the summary. ``token_types``: the model takes segment ids
    (:func:`~dist_peakd.models.teacher.uses_token_types`). Resume, evaluation, checkpoints and preemption
    happen around and between the steps (:class:`~dist_peakd.engine.trainer.Trainer`)."""
    for step in trainer.steps():  # resume, epochs, prefetch; evaluation/checkpoint/preemption between steps
        for micro in step.micro_batches:  # this rank's share (a weight-0 stand-in where it is empty)
            batch = engine.to_device(micro.batch)
            out = engine.forward(**_inputs(batch, token_types))
            loss = classification_loss(out.logits, batch["labels"], is_regression)  # CE (MSE), summed, weight 1
            engine.backward(loss, micro.weight)  # x world size / global batch (0: an empty share's stand-in)
            result = engine.step(sync=step.sync)  # last micro-batch: non-finite check, clip, AdamW, LR schedule
        trainer.end_step(step, result)  # train_log.jsonl, TensorBoard, progress bar
    return trainer.finish()  # [evaluate] -> final/ -> summary.json


def logits_predict(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"])
    return {"logits": out.logits.float(), "labels": batch["labels"]}


def teacher_predict(token_types: bool):
    """:func:`logits_predict` for a teacher family that may take no segment ids."""

    def predict(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": model(**_inputs(batch, token_types)).logits.float(), "labels": batch["labels"]}

    return predict


def metrics_from_logits(task: Any, warnings: MetricWarnings | None = None):
    """The dev metrics of gathered logits (``warnings``: where degenerate predictions are reported)."""
    warnings = warnings or MetricWarnings()

    def metric_fn(preds: dict[str, np.ndarray]) -> dict[str, float]:
        logits = preds["logits"]
        predictions = logits.squeeze(-1) if task.is_regression else logits.argmax(-1)
        return warnings.report(task, predictions, preds["labels"])

    return metric_fn


def classification_evaluation(task: Any, warnings: MetricWarnings | None = None,
                              token_types: bool = True) -> Evaluation:
    """Score the dev logits with the task's metrics and the dev loss."""
    return Evaluation(teacher_predict(token_types), with_eval_loss(metrics_from_logits(task, warnings), task.is_regression),
                      task.main_metric)


def kept_head_in_task_order(model: Any, task: Any, source: str) -> Any:
    """A backbone that is already a classifier of this task's classes in another order (a hub checkpoint)
    starts with its head's rows in the task's order; any other head is fine-tuned as it is (no refusal: a
    head of other classes is just a starting point here)."""
    from ..models import ModelConfigError
    from ..models.teacher_labels import match_labels, model_label_names, reorder_head

    names = task.id2label()
    try:
        match = match_labels(model_label_names(model.config.id2label, task.num_labels),
                             [names[i] for i in range(task.num_labels)], source, task.name)
    except ModelConfigError:
        return model
    if match.how == "by_name":
        reorder_head(model, match)
        console.info(f"teacher: {match.note}")
    return model


@releases_locks
def run(opts: FinetuneTeacherOptions) -> dict[str, Any]:
    """Fine-tune, evaluate each epoch, export best/ and final/; returns the summary dict (that of the
    earlier run, with ``reused``, when the stage finished with the same options and inputs)."""
    stage_dir = opts.layout().teacher_stage
    # a backbone no later stage can use is refused before anything is trained or written
    dist_info, loaded = start_stage(opts, stage_dir, lambda task: check_models(opts, "finetune-teacher", task))
    tokenizer = load_tokenizer(opts.backbone)
    data = prepare_data(opts, tokenizer, loaded=loaded)
    done = check_inputs(stage_dir, {"data": data.fingerprint, "backbone": backbone_fingerprint(opts.backbone)},
                        opts.force)
    if done is not None:
        return done
    model = set_task_labels(kept_head_in_task_order(
        load_teacher(resolve_backbone(opts.backbone), num_labels=data.task.num_labels,
                     trust_unverified=opts.trust_unverified), data.task, opts.backbone), data.task)
    batches = trainer_data(data, tokenizer, opts, dist_info)
    engine = build_engine(model, opts, batches, dist_info)
    tracker = open_tracker(stage_dir, dist_info, {
        **opts.__dict__, "stage": STAGE, "world_size": dist_info.world_size,
        "gradient_accumulation_steps": engine.gradient_accumulation_steps,
        "precision_resolved": engine.precision, "total_steps": engine.total_steps}, task=data.task)
    stats = model_stats(engine.module, seq_len=opts.max_length)
    warnings = MetricWarnings()
    context = ExportContext(STAGE, data.task, opts, stage_dir, teacher_method(opts, model), stats,
                            model_label_names(data.task), dev_rows=data.dev_rows, profile=warnings)
    export = stage_exporter(engine, tokenizer, {"stage": STAGE, "task": data.task.name, "data": data.task.describe()},
                            {"model_stats": stats}, context)
    token_types = uses_token_types(model)
    trainer = Trainer(engine, batches, classification_evaluation(data.task, warnings, token_types), stage_dir, tracker,
                      dataclasses.replace(opts.loop_options(), label="teacher"), export,
                      extra_summary={"model_stats": stats, "stage_dir": str(stage_dir),
                                     "metric_warnings": warnings.seen, "baseline": warnings.baseline})
    with tracker_session(tracker):
        return train(trainer, engine, data.task.is_regression, token_types)
