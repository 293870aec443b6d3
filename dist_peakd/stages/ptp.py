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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import RunOptions
from ..distill import ptp_histogram, ptp_labels, ptp_thresholds
from ..engine import ConfigError, Engine, LossOutput, Tracker, seed_everything
from ..engine.loop import total_train_steps, train_loop
from ..models import build_student, model_stats
from .common import (
    collator_for,
    eval_sampler,
    train_sampler,
)
from .student_common import (
    open_student_run,
    validate_student_options,
)

NUM_PTP_CLASSES = 4


@dataclass
class PTPOptions(RunOptions):
    """PTP options: the student shape (same as the distillation stage's) and the threshold rule."""

    k: int = 3
    variant: str = "shuffle"
    teacher_cache_dir: str | None = None
    teacher_dir: str | None = None
    threshold_rule: str = "median"
    epochs: float = 2.0

    def validate(self) -> None:
        super().validate()
        validate_student_options(self.k, self.variant)
        if self.threshold_rule not in ("median", "paper"):
            raise ConfigError(f"option threshold_rule: {self.threshold_rule!r} is not one of ['median', 'paper']")

    def stage_name(self) -> str:
        return f"ptp-k{self.k}-{self.variant}"


def _labels_by_id(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(dataset["idx"], dtype=np.int64)
    labels = np.asarray(dataset["label"])
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


def run(opts: PTPOptions) -> dict[str, Any]:
    """Label from the cache, pretrain the 4-way student, keep the lowest-dev-PTP-loss encoder."""
    from ..data import get_task

    if get_task(opts.task).is_regression:
        raise ConfigError(f"option task: PTP is defined for classification tasks only; {get_task(opts.task).name} "
                          "is regression (run distill with --use_ptp=False)")
    teacher_dir = opts.teacher_dir or str(opts.task_dir() / "teacher" / "best")
    run_ = open_student_run(opts, teacher_dir)
    dist_info, backbone, stage_dir, tokenizer, data, cache = (
        run_.dist_info, run_.backbone, run_.stage_dir, run_.tokenizer, run_.data, run_.cache)
    task = data.task
    train_ptp, thresholds, train_hist = build_ptp_targets(cache.split("train"), data.train, None,
                                                         opts.threshold_rule, task.name)
    dev_ptp, _, dev_hist = build_ptp_targets(cache.split(data.dev_split), data.dev, thresholds,
                                             opts.threshold_rule, task.name)
    ptp_info = {"thresholds": {"t1": thresholds.t1, "t2": thresholds.t2, "rule": thresholds.rule,
                               "n_correct": thresholds.n_correct, "n_wrong": thresholds.n_wrong},
                "histogram": {"train": train_hist, data.dev_split: dev_hist}}

    model = build_student(backbone, k=opts.k, variant=opts.variant, num_labels=NUM_PTP_CLASSES)
    seed_everything(opts.seed + 1000 * dist_info.rank)
    sampler = train_sampler(data.train, opts, dist_info)
    total = total_train_steps(len(sampler), opts.epochs)
    engine = Engine(model, opts.engine_options(), total_steps=total, dist_info=dist_info)
    tracker = Tracker(stage_dir / "tb", enabled=dist_info.is_main)
    if dist_info.is_main:
        tracker.config({**opts.__dict__, "stage": "ptp", "world_size": dist_info.world_size,
                        "precision_resolved": engine.precision, "total_steps": total})
        tracker.text("ptp", "```\n" + json.dumps(ptp_info, indent=2) + "\n```")
        print(f"[dist-peakd] PTP thresholds and histogram: {json.dumps(ptp_info)}", flush=True)
    train_targets = torch.from_numpy(train_ptp)

    def loss_fn(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        targets = train_targets[batch["example_ids"].cpu()].to(engine.device)
        out = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"])
        loss = F.cross_entropy(out.logits.float(), targets, reduction="sum")
        return LossOutput(total=loss, terms={"ptp_ce": loss.detach()}, count=len(targets), weights={"ptp_ce": 1.0})

    def predict_fn(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"])
        return {"logits": out.logits.float()}

    def metric_fn(preds: dict[str, np.ndarray]) -> dict[str, float]:
        targets = torch.from_numpy(dev_ptp[preds["example_ids"]])
        logits = torch.from_numpy(preds["logits"])
        return {"ptp_loss": float(F.cross_entropy(logits, targets)),
                "ptp_accuracy": float((logits.argmax(-1) == targets).float().mean())}

    stats = model_stats(engine.module, seq_len=opts.max_length)

    def export(path: Path, info: dict[str, Any]) -> None:
        engine.export_pretrained(path, tokenizer, extra_json={"dist_peakd.json": {
            "stage": "ptp", "task": task.name, **info, **ptp_info, "model_stats": stats}})

    summary = train_loop(
        engine=engine, train_rows=data.train, train_sampler=sampler, eval_rows=data.dev,
        eval_sampler=eval_sampler(data.dev, opts, dist_info), collate=collator_for(tokenizer),
        loss_fn=loss_fn, predict_fn=predict_fn, metric_fn=metric_fn, main_metric="ptp_loss",
        output_dir=stage_dir, tracker=tracker, options=opts.loop_options(), export_fn=export,
        higher_is_better=False, extra_summary={**ptp_info, "stage_dir": str(stage_dir), "model_stats": stats})
    tracker.close()
    return summary
