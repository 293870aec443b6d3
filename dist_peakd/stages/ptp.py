"""Stage 3: PTP — pretrain the SPS student on 4-way labels derived from the teacher cache.

label = teacher right/wrong x confident/unsure (method.md); thresholds t1/t2 are the medians of the
teacher's confidence over correct / wrong TRAIN examples by default (``threshold_rule=paper`` uses the
reference constants). Train and dev are each labelled from the teacher's predictions on that split
(with the train thresholds). The checkpoint with the lowest dev PTP loss is exported to ``best/``;
the distillation stage loads its encoder and puts a fresh task head on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import console
from ..config import RunOptions, option
from ..data.rows import column_array
from ..distill import ptp_histogram, ptp_labels, ptp_thresholds
from ..distill.ptp import PTP_CLASS_NAMES
from ..engine import Engine
from ..engine.loop_spec import Batch
from ..engine.trainer import Evaluation, Trainer
from ..errors import ConfigError
from ..layout import ptp_stage_name
from ..loss_output import LossOutput
from ..models import build_student, model_stats
from .cards import ExportContext, student_method, teacher_reference
from .common import (
    build_engine,
    check_model_source,
    open_tracker,
    stage_exporter,
    tracker_session,
    trainer_data,
)
from .depth import announce_k, resolve_k
from .stage_folder import check_inputs, releases_locks
from .student_common import (
    StudentRun,
    StudentShapeOptions,
    TeacherOptions,
    open_student_run,
    student_layers,
    validate_student_options,
)
from .student_kind import fill_defaults, plain_summary, plain_tag

NUM_PTP_CLASSES = 4


@dataclass
class ThresholdRuleOption:
    threshold_rule: str = option("median", help="PTP confidence thresholds: median | paper",
                                 choices=("median", "paper"))


@dataclass
class PTPOptions(ThresholdRuleOption, TeacherOptions, StudentShapeOptions, RunOptions):
    """PTP options: the student shape (same as the distillation stage's) and the threshold rule."""

    epochs: float = 2.0

    def __post_init__(self) -> None:
        fill_defaults(self)

    def validate(self) -> None:
        super().validate()
        validate_student_options(self)
        validate_threshold_rule(self.threshold_rule, self.data_options())

    def stage_name(self) -> str:
        return ptp_stage_name(self.k, self.variant, plain_tag(self))


def validate_threshold_rule(rule: str, data: Any) -> None:
    """``median`` always; ``paper`` only for the GLUE tasks the reference code has constants for."""
    from ..distill.ptp import PAPER_THRESHOLDS

    if rule not in ("median", "paper"):
        raise ConfigError(f"option threshold_rule: {rule!r} is not one of ['median', 'paper']")
    if rule == "paper" and (not data.is_glue or data.run_name() not in PAPER_THRESHOLDS):
        raise ConfigError(f"option threshold_rule: 'paper' has constants for the GLUE tasks "
                          f"{sorted(PAPER_THRESHOLDS)} only, not {data.task!r}; use threshold_rule=median")


def _labels_by_id(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    ids = column_array(dataset, "idx").astype(np.int64)
    labels = column_array(dataset, "label")
    order = np.argsort(ids)
    return ids[order], labels[order]


def build_ptp_targets(cache_split: Any, dataset: Any, thresholds: Any | None, rule: str, task: str
                      ) -> tuple[np.ndarray, Any, dict[str, int]]:
    """PTP label per example id (array indexed by id; -1 where absent), the thresholds, the histogram."""
    ids, labels = _labels_by_id(dataset)
    logits, _ = cache_split.lookup(ids)
    logits = logits.numpy()
    if thresholds is None:
        thresholds = ptp_thresholds(logits, labels, rule=rule, task=task)
    ptp = ptp_labels(logits, labels, thresholds)
    by_id = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
    by_id[ids] = ptp
    return by_id, thresholds, ptp_histogram(ptp)


def ptp_predict(module: torch.nn.Module, batch: Batch) -> Batch:
    out = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 token_type_ids=batch["token_type_ids"])
    return {"logits": out.logits.float()}


def ptp_evaluation(dev_ptp: np.ndarray) -> Evaluation:
    """Dev scored by the PTP loss (lower is better) and accuracy against the dev PTP labels."""

    def metric_fn(preds: dict[str, np.ndarray]) -> dict[str, float]:
        targets = torch.from_numpy(dev_ptp[preds["example_ids"]])
        logits = torch.from_numpy(preds["logits"])
        return {"ptp_loss": float(F.cross_entropy(logits, targets)),
                "ptp_accuracy": float((logits.argmax(-1) == targets).float().mean())}

    return Evaluation(ptp_predict, metric_fn, main_metric="ptp_loss", higher_is_better=False)


def train(trainer: Trainer, engine: Engine, train_ptp: np.ndarray) -> dict[str, Any]:
    """The PTP recipe: per micro-batch the 4-way PTP labels of its examples, the student's forward, the CE
    and backward; per step the optimizer step and the log; returns the summary. Resume, evaluation,
    checkpoints and preemption happen around and between the steps (:class:`~dist_peakd.engine.trainer.Trainer`)."""
    ptp_label_of = torch.from_numpy(train_ptp)  # indexed by example id
    for step in trainer.steps():  # resume, epochs, prefetch; evaluation/checkpoint/preemption between steps
        for micro in step.micro_batches:  # this rank's share (a weight-0 stand-in where it is empty)
            batch = engine.to_device(micro.batch)
            targets = ptp_label_of[batch["example_ids"].cpu()].to(engine.device)
            out = engine.forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 token_type_ids=batch["token_type_ids"])
            ce = F.cross_entropy(out.logits.float(), targets, reduction="sum")  # weight 1, summed over the micro-batch
            loss = LossOutput(total=ce, terms={"ptp_ce": ce.detach()}, count=len(targets), weights={"ptp_ce": 1.0})
            engine.backward(loss, micro.weight)  # x world size / global batch (0: an empty share's stand-in)
            result = engine.step(sync=step.sync)  # last micro-batch: non-finite check, clip, AdamW, LR schedule
        trainer.end_step(step, result)  # train_log.jsonl, TensorBoard, progress bar
    return trainer.finish()  # [evaluate] -> final/ -> summary.json


def ptp_targets(opts: PTPOptions, run_: StudentRun) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Train and dev PTP labels by example id (thresholds from train) and what to record about them."""
    data, cache = run_.data, run_.cache
    train_ptp, thresholds, train_hist = build_ptp_targets(cache.split("train"), data.train, None,
                                                          opts.threshold_rule, data.task.name)
    dev_ptp, _, dev_hist = build_ptp_targets(cache.split(data.dev_split), data.dev, thresholds,
                                             opts.threshold_rule, data.task.name)
    info = {"thresholds": {"t1": thresholds.t1, "t2": thresholds.t2, "rule": thresholds.rule,
                           "n_correct": thresholds.n_correct, "n_wrong": thresholds.n_wrong},
            "histogram": {"train": train_hist, data.dev_split: dev_hist}}
    return train_ptp, dev_ptp, info


def refuse_regression(task: Any) -> None:
    """PTP needs a right/wrong teacher prediction: refuse a regression task (any number of classes is fine)."""
    if task.is_regression:
        raise ConfigError(f"option task: PTP is defined for classification tasks only; {task.name} is regression "
                          "(its teacher has no right or wrong prediction): run distill with --use_ptp=False "
                          "(the pipeline and sweeps skip PTP on regression tasks)")


@releases_locks
def run(opts: PTPOptions) -> dict[str, Any]:
    """Label from the cache, pretrain the 4-way student, keep the lowest-dev-PTP-loss encoder."""
    check_model_source(opts.backbone)  # before --k auto reads its depth
    opts, k_auto = resolve_k(opts)
    run_ = open_student_run(opts, opts.layout(), "ptp", check_task=refuse_regression)
    done = check_inputs(run_.stage_dir, run_.inputs, opts.force)
    if done is not None:
        return done
    announce_k(k_auto, run_.dist_info)
    train_ptp, dev_ptp, ptp_info = ptp_targets(opts, run_)
    model = build_student(run_.backbone, k=opts.k, variant=opts.variant, num_labels=NUM_PTP_CLASSES,
                          layers=student_layers(opts))
    model.config.id2label = dict(enumerate(PTP_CLASS_NAMES))  # 4 PTP classes whatever the task's label count
    model.config.label2id = {name: i for i, name in enumerate(PTP_CLASS_NAMES)}
    batches = trainer_data(run_.data, run_.tokenizer, opts, run_.dist_info)
    engine = build_engine(model, opts, batches, run_.dist_info)
    tracker = open_tracker(run_.stage_dir, run_.dist_info, {
        **opts.__dict__, "stage": "ptp", "world_size": run_.dist_info.world_size,
        "precision_resolved": engine.precision, "total_steps": engine.total_steps})
    tracker.text("ptp", "```\n" + json.dumps(ptp_info, indent=2) + "\n```")
    t, hist = ptp_info["thresholds"], ptp_info["histogram"]["train"]
    console.info(f"PTP labels: confidence thresholds t1 {t['t1']:.4g} / t2 {t['t2']:.4g} ({t['rule']} "
                 f"rule; {t['n_correct']} right, {t['n_wrong']} wrong train examples); train: "
                 + ", ".join(f"{k} {v}" for k, v in hist.items()))
    stats = model_stats(engine.module, seq_len=opts.max_length)
    teacher = opts.layout().teacher
    _, teacher_stats = teacher_reference(teacher, run_.cache.manifest)
    context = ExportContext("ptp", run_.data.task, opts, run_.stage_dir,
                            student_method(opts, model, teacher, "ptp", run_.cache.manifest),
                            stats, list(PTP_CLASS_NAMES), teacher_stats=teacher_stats, dev_rows=run_.data.dev_rows)
    export = stage_exporter(engine, run_.tokenizer, {"stage": "ptp", "task": run_.data.task.name},
                            {**ptp_info, "model_stats": stats,
                             **({"student": plain_summary(opts)} if plain_tag(opts) else {})}, context)
    trainer = Trainer(engine, batches, ptp_evaluation(dev_ptp), run_.stage_dir, tracker, opts.loop_options(), export,
                      extra_summary={**ptp_info, "stage_dir": str(run_.stage_dir), "model_stats": stats, "k": opts.k,
                                     "k_auto": k_auto, **({"student": plain_summary(opts)} if plain_tag(opts) else {})})
    with tracker_session(tracker):
        return train(trainer, engine, train_ptp)
