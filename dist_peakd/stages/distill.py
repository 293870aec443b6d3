"""Stage 4: distil the SPS student from the teacher cache with KD + Patient-KD.

The teacher model is never loaded here: its logits and per-layer [CLS] states come from the cache,
looked up by example id every step. The student is built from the pretrained backbone's bottom k
layers (``use_ptp=False``) or from the PTP encoder with a fresh task head (``use_ptp=True``).

Loss (per example, averaged over the global batch; weights logged):
    alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y) + beta * PT
Ablations are options: ``alpha=0 beta=0`` (no KD), ``beta=0`` (KD), ``variant=none`` (plain PKD),
``variant=share|shuffle`` (SPS), ``use_ptp`` on/off, any ``k``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import RunOptions
from ..distill import DistillLossConfig, distillation_loss, patient_layer_map
from ..engine import ConfigError, Engine, LossOutput, Tracker, seed_everything
from ..engine.loop import total_train_steps, train_loop
from ..models import build_student, load_student, model_stats
from .common import (
    collator_for,
    eval_sampler,
    train_sampler,
)
from .finetune_teacher import logits_predict, metrics_from_logits
from .student_common import (
    open_student_run,
    validate_student_options,
)


@dataclass
class DistillOptions(RunOptions):
    """Distillation options: student shape, loss weights, where the cache and PTP encoder are."""

    k: int = 3
    variant: str = "shuffle"
    use_ptp: bool = True
    ptp_dir: str | None = None
    teacher_cache_dir: str | None = None
    teacher_dir: str | None = None
    alpha: float = 0.7
    temperature: float = 10.0
    beta: float = 100.0
    kl_reduction: str = "batchmean"
    epochs: float = 4.0
    run_name: str | None = None

    def validate(self) -> None:
        super().validate()
        validate_student_options(self.k, self.variant)
        if self.temperature <= 0:
            raise ConfigError(f"option temperature: must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"option alpha: must be in [0, 1], got {self.alpha}")
        if self.beta < 0:
            raise ConfigError(f"option beta: must be >= 0, got {self.beta}")
        if self.kl_reduction not in ("batchmean", "mean_per_class"):
            raise ConfigError(f"option kl_reduction: {self.kl_reduction!r} is not one of "
                              "['batchmean', 'mean_per_class']")

    def loss_config(self) -> DistillLossConfig:
        return DistillLossConfig(alpha=self.alpha, temperature=self.temperature, beta=self.beta,
                                 kl_reduction=self.kl_reduction)

    def stage_name(self) -> str:
        if self.run_name:
            return self.run_name
        ptp = "-ptp" if self.use_ptp else ""
        return f"distill-k{self.k}-{self.variant}{ptp}-a{self.alpha:g}-T{self.temperature:g}-b{self.beta:g}-s{self.seed}"

    def ptp_encoder_dir(self) -> Path:
        return Path(self.ptp_dir) if self.ptp_dir else self.task_dir() / f"ptp-k{self.k}-{self.variant}" / "best"

    def teacher_folder(self) -> str:
        return self.teacher_dir or str(self.task_dir() / "teacher" / "best")


def run(opts: DistillOptions, on_eval: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Distil, evaluate on dev, export best/ and final/ students; returns the summary.

    ``on_eval(step, metrics)`` is called on every rank after each dev evaluation (sweeps report to Ray Tune).
    """
    run_ = open_student_run(opts, opts.teacher_folder())
    dist_info, backbone, stage_dir, tokenizer, data, cache = (
        run_.dist_info, run_.backbone, run_.stage_dir, run_.tokenizer, run_.data, run_.cache)
    task = data.task
    train_cache = cache.split("train")
    num_teacher_layers = int(cache.manifest["num_layers"])

    if opts.use_ptp:
        ptp_dir = opts.ptp_encoder_dir()
        if not (ptp_dir / "config.json").is_file():
            raise FileNotFoundError(f"option ptp_dir: no PTP encoder at {ptp_dir} (run `dist-peakd ptp` "
                                    f"with the same k/variant first, or pass --use_ptp=False)")
        model = load_student(ptp_dir, num_labels=task.num_labels)
        if model.config.num_hidden_layers != opts.k or model.config.sps_variant != opts.variant:
            raise ConfigError(f"option ptp_dir: encoder {ptp_dir} has k={model.config.num_hidden_layers}, "
                              f"variant={model.config.sps_variant}; this run asks k={opts.k}, variant={opts.variant}")
    else:
        model = build_student(backbone, k=opts.k, variant=opts.variant, num_labels=task.num_labels)
    layer_map = patient_layer_map(model.num_effective_layers, num_teacher_layers)
    loss_cfg = opts.loss_config()
    seed_everything(opts.seed + 1000 * dist_info.rank)
    sampler = train_sampler(data.train, opts, dist_info)
    total = total_train_steps(len(sampler), opts.epochs)
    engine = Engine(model, opts.engine_options(), total_steps=total, dist_info=dist_info)
    tracker = Tracker(stage_dir / "tb", enabled=dist_info.is_main)
    if dist_info.is_main:
        tracker.config({**opts.__dict__, "stage": "distill", "world_size": dist_info.world_size,
                        "loss_weights": {"kd": loss_cfg.alpha, "ce": 1 - loss_cfg.alpha, "pt": loss_cfg.beta},
                        "layer_map": layer_map, "precision_resolved": engine.precision, "total_steps": total})
        tracker.text("loss", f"weights kd={loss_cfg.alpha} ce={1 - loss_cfg.alpha} pt={loss_cfg.beta}; "
                             f"T={loss_cfg.temperature}; KL reduction {loss_cfg.kl_reduction}; "
                             f"Patient-KD map (student, teacher) = {layer_map}")

    def add_teacher_outputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Runs in the loop's prefetch thread: the cached teacher outputs of the batch's examples."""
        t_logits, t_cls = train_cache.lookup(batch["example_ids"].numpy())
        return {**batch, "teacher_logits": t_logits, "teacher_cls": t_cls}

    def loss_fn(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        if "teacher_logits" in batch:
            t_logits, t_cls = batch["teacher_logits"], batch["teacher_cls"]
        else:  # the loop's zero-weight dummy batch
            t_logits, t_cls = train_cache.lookup(batch["example_ids"].cpu().numpy())
        out = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"])
        return distillation_loss(out.logits, out.cls_states, t_logits.to(engine.device), t_cls.to(engine.device),
                                 batch["labels"], layer_map, loss_cfg, is_regression=task.is_regression)

    stats = model_stats(engine.module, seq_len=opts.max_length)

    def export(path: Path, info: dict[str, Any]) -> None:
        engine.export_pretrained(path, tokenizer, extra_json={"dist_peakd.json": {
            "stage": "distill", "task": task.name, **info, "model_stats": stats,
            "options": {k: v for k, v in opts.__dict__.items()}}})

    summary = train_loop(
        engine=engine, train_rows=data.train, train_sampler=sampler, eval_rows=data.dev,
        eval_sampler=eval_sampler(data.dev, opts, dist_info), collate=collator_for(tokenizer),
        loss_fn=loss_fn, predict_fn=logits_predict, metric_fn=metrics_from_logits(task),
        main_metric=task.main_metric, output_dir=stage_dir, tracker=tracker,
        options=opts.loop_options(), export_fn=export, batch_hook=add_teacher_outputs,
        extra_summary={"model_stats": stats, "stage_dir": str(stage_dir), "layer_map": layer_map,
                       "loss_weights": {"kd": loss_cfg.alpha, "ce": 1 - loss_cfg.alpha, "pt": loss_cfg.beta},
                       "teacher_dev_metrics": cache.manifest.get("teacher_dev_metrics")},
        on_eval=on_eval)
    tracker.close()
    return summary
