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

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..config import RunOptions, UnlabeledOptions, check_folder_name, option
from ..distill import KL_REDUCTIONS, DistillLossConfig, distillation_loss, patient_layer_map
from ..engine import Engine
from ..engine.hooks import EvalCallback
from ..engine.loop_spec import Batch
from ..engine.tracking import with_eval_loss
from ..engine.trainer import Evaluation, Trainer
from ..errors import ConfigError
from ..integrity import export_fingerprint
from ..layout import RunLayout
from ..models import build_student, load_student, model_stats
from ..models.cross_student import exported_model
from .cards import ExportContext, model_label_names, student_method, teacher_reference
from .common import (
    MetricWarnings,
    build_engine,
    check_model_source,
    open_tracker,
    set_task_labels,
    stage_exporter,
    tracker_session,
    trainer_data,
)
from .cross_student import width_map_hooks, width_mapped
from .depth import announce_k, resolve_k
from .finetune_teacher import logits_predict, metrics_from_logits
from .preflight import check_ptp_encoder
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
from .unlabeled_mix import (
    MIN_CONF_HELP,
    RATIO_HELP,
    UNLABELED_SPLIT,
    UnlabeledPlan,
    ce_weights,
    check_unlabeled_options,
    check_unlabeled_task,
    lookup_mixed,
    mixed_trainer_data,
    parse_ratio,
    plan_unlabeled,
    unlabeled_line,
    with_unlabeled,
)


@dataclass
class DistillOptions(TeacherOptions, StudentShapeOptions, UnlabeledOptions, RunOptions):
    """Distillation options: student shape, loss weights, where the cache and PTP encoder are."""

    #: distill reads the unlabeled pool: its options count when a stage folder is compared (stage_folder)
    uses_unlabeled: ClassVar[bool] = True

    use_ptp: bool = option(True, help="start from the PTP-pretrained encoder")
    ptp_dir: str | None = option(None, help="PTP encoder folder (default <output_dir>/<task>/ptp-k<k>-<variant>/best)")
    alpha: float = option(0.7, help="KD weight (1 - alpha goes to the hard-label CE)", ge=0, le=1)
    temperature: float = option(10.0, help="KD softmax temperature", gt=0)
    beta: float = option(100.0, help="Patient-KD weight", ge=0)
    kl_reduction: str = option("batchmean", help="batchmean | mean_per_class", choices=KL_REDUCTIONS)
    unlabeled_ratio: float | str = option("auto", help=RATIO_HELP)
    unlabeled_min_confidence: float = option(0.0, help=MIN_CONF_HELP)
    epochs: float = 4.0
    run_name: str | None = option(None, help="stage folder name (default derived from k/variant/alpha/T/beta/seed)")

    def __post_init__(self) -> None:
        fill_defaults(self)

    def validate(self) -> None:
        super().validate()
        validate_student_options(self)
        check_folder_name("run_name", self.run_name)
        check_unlabeled_options(self)
        if self.ptp_dir is not None and not self.use_ptp:
            raise ConfigError(f"options ptp_dir and use_ptp: ptp_dir={self.ptp_dir!r} is given but use_ptp is "
                              "False (the student would not start from it); drop one of them")

    def loss_config(self) -> DistillLossConfig:
        return DistillLossConfig(alpha=self.alpha, temperature=self.temperature, beta=self.beta,
                                 kl_reduction=self.kl_reduction)

    def loss_weights(self) -> dict[str, float]:
        return {"kd": self.alpha, "ce": 1 - self.alpha, "pt": self.beta}

    def stage_name(self) -> str:
        if self.run_name:
            return self.run_name
        ptp = "-ptp" if self.use_ptp else ""
        shape = plain_tag(self) or f"k{self.k}-{self.variant}"
        ratio = parse_ratio(self.unlabeled_ratio)
        pool = (f"-u{ratio:g}" if ratio != "auto" else "") + \
            (f"-c{self.unlabeled_min_confidence:g}" if self.unlabeled_min_confidence else "")
        return f"distill-{shape}{ptp}-a{self.alpha:g}-T{self.temperature:g}-b{self.beta:g}{pool}-s{self.seed}"


def build_distill_student(opts: DistillOptions, layout: RunLayout, run_: StudentRun) -> torch.nn.Module:
    """The student: the PTP encoder of this shape with a fresh head, or the backbone's bottom k layers (a plain
    student: the layers of its layer map)."""
    task = run_.data.task
    if not opts.use_ptp:
        return set_task_labels(build_student(run_.backbone, k=opts.k, variant=opts.variant,
                                             num_labels=task.num_labels, layers=student_layers(opts)), task)
    ptp_dir = layout.ptp_encoder(opts.k, opts.variant, plain_tag(opts))
    check_ptp_encoder(opts)
    model = load_student(ptp_dir, num_labels=task.num_labels, trust_unverified=opts.trust_unverified)
    return set_task_labels(model, task)


def _ptp_fingerprint(opts: DistillOptions, layout: RunLayout) -> str:
    ptp_dir = layout.ptp_encoder(opts.k, opts.variant, plain_tag(opts))
    check_ptp_encoder(opts)
    return export_fingerprint(ptp_dir, opts.trust_unverified)


def teacher_outputs(run_: StudentRun, unlabeled: UnlabeledPlan | None = None) -> Callable[[Batch], Batch]:
    """The trainer's batch hook (it runs in the prefetch thread): the cached teacher logits and per-layer [CLS]
    states of the batch's examples, looked up by example id. ``unlabeled``: batches mix train and pool rows
    (``from_unlabeled``); each row's teacher outputs come from its own cache split."""
    train_cache = run_.cache.split("train")
    pool_cache = run_.cache.split(UNLABELED_SPLIT) if unlabeled is not None else None

    def add_teacher_outputs(batch: Batch) -> Batch:
        if pool_cache is None:
            t_logits, t_cls = train_cache.lookup(batch["example_ids"].cpu().numpy())
        else:
            t_logits, t_cls = lookup_mixed(train_cache, pool_cache, batch)
        return {**batch, "teacher_logits": t_logits, "teacher_cls": t_cls}

    return add_teacher_outputs


def train(trainer: Trainer, engine: Engine, opts: DistillOptions, layer_map: list[tuple[int, int]],
          is_regression: bool, unlabeled: UnlabeledPlan | None) -> dict[str, Any]:
    """The distillation recipe: per micro-batch the student's forward, the loss against the cached teacher
    outputs and backward; per step the optimizer step and the log; returns the summary. Resume, evaluation,
    checkpoints and preemption happen around and between the steps (:class:`~dist_peakd.engine.trainer.Trainer`)."""
    cfg = DistillLossConfig(alpha=opts.alpha, temperature=opts.temperature, beta=opts.beta,
                            kl_reduction=opts.kl_reduction)
    loss_terms = engine.compiled(distillation_loss)  # torch.compile under --compile, else distillation_loss
    for step in trainer.steps():  # resume, epochs, prefetch; evaluation/checkpoint/preemption between steps
        for micro in step.micro_batches:  # this rank's share; teacher outputs attached by teacher_outputs()
            batch = engine.to_device(micro.batch)
            out = engine.forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 token_type_ids=batch["token_type_ids"])
            # per example, summed over the micro-batch (distill/losses.py):
            #     alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))   (kl_reduction; MSE for regression)
            #   + (1 - alpha) * CE(student, label)   (x ce_weight with unlabeled text: 0 on the pool's rows)
            #   + beta * PT: mean squared distance of the normalised [CLS] states of the layer map's pairs
            loss = loss_terms(out.logits, out.cls_states, batch["teacher_logits"], batch["teacher_cls"],
                              batch["labels"], layer_map, cfg, is_regression=is_regression,
                              ce_weight=None if unlabeled is None else ce_weights(batch, unlabeled.ce_scale))
            engine.backward(loss, micro.weight)  # x world size / global batch (0: an empty share's stand-in)
            result = engine.step(sync=step.sync)  # last micro-batch: non-finite check, clip, AdamW, LR schedule
        trainer.end_step(step, result)  # train_log.jsonl, TensorBoard, progress bar
    return trainer.finish()  # [evaluate] -> final/ -> summary.json


@releases_locks
def run(opts: DistillOptions, on_eval: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Distil, evaluate on dev, export best/ and final/ students; returns the summary.

    ``on_eval(step, metrics)`` is called on every rank after each dev evaluation (sweeps report to Ray Tune).
    """
    check_model_source(opts.backbone)  # before --k auto reads its depth
    opts, k_auto = resolve_k(opts)
    layout = opts.layout()
    run_ = open_student_run(opts, layout, "distill", unlabeled=True,
                            before_pool=lambda task: check_unlabeled_task(opts, task))
    inputs = dict(run_.inputs)
    if opts.use_ptp:
        inputs["ptp_encoder"] = _ptp_fingerprint(opts, layout)
    done = check_inputs(run_.stage_dir, inputs, opts.force)
    if done is not None:
        return done
    announce_k(k_auto, run_.dist_info)
    trainer, tracker, layer_map, plan = _distill_trainer(opts, layout, run_, k_auto, on_eval)
    with tracker_session(tracker):
        return train(trainer, trainer.engine, opts, layer_map, run_.data.task.is_regression, plan)


def _distill_trainer(opts: DistillOptions, layout: RunLayout, run_: StudentRun, k_auto: bool,
                     on_eval: Callable[[int, dict[str, float]], None] | None
                     ) -> tuple[Trainer, Any, list[tuple[int, int]], UnlabeledPlan | None]:
    """The student, its data (labelled, or labelled + unlabeled), engine, tracker, exporter and trainer."""
    model = build_distill_student(opts, layout, run_)
    layer_map = patient_layer_map(model.num_effective_layers, run_.cache.num_layers)
    loss_cfg, weights = opts.loss_config(), opts.loss_weights()
    plan = plan_unlabeled(opts, run_.data, run_.cache)
    batches = (trainer_data(run_.data, run_.tokenizer, opts, run_.dist_info) if plan is None
               else mixed_trainer_data(run_.data, run_.tokenizer, opts, run_.dist_info, plan))
    engine = build_engine(width_mapped(model, opts, run_.cache), opts, batches, run_.dist_info)  # issue 23 item 4
    tracker = open_tracker(run_.stage_dir, run_.dist_info, {
        **opts.__dict__, "stage": "distill", "world_size": run_.dist_info.world_size, "loss_weights": weights,
        "layer_map": layer_map, "precision_resolved": engine.precision, "total_steps": engine.total_steps},
        task=run_.data.task, reference=run_.cache.manifest.get("teacher_dev_metrics"))
    tracker.text("loss", f"weights kd={weights['kd']} ce={weights['ce']} pt={weights['pt']}; "
                         f"T={loss_cfg.temperature}; KL reduction {loss_cfg.kl_reduction}; "
                         f"Patient-KD map (student, teacher) = {layer_map}" + unlabeled_line(plan, len(run_.data.train)))
    stats = model_stats(exported_model(engine.module), seq_len=opts.max_length)  # without a width map
    teacher_metrics, teacher_stats = teacher_reference(layout.teacher, run_.cache.manifest)
    warnings = MetricWarnings(teacher=teacher_metrics)
    method = with_unlabeled(student_method(opts, model, layout.teacher, cache_manifest=run_.cache.manifest),
                            plan, len(run_.data.train))
    context = ExportContext("distill", run_.data.task, opts, run_.stage_dir, method, stats,
                            model_label_names(run_.data.task), teacher_metrics=teacher_metrics,
                            teacher_stats=teacher_stats, dev_rows=run_.data.dev_rows, profile=warnings)
    export = stage_exporter(engine, tokenizer=run_.tokenizer,
                            head={"stage": "distill", "task": run_.data.task.name, "data": run_.data.task.describe()},
                            tail={"model_stats": stats, "options": dict(opts.__dict__)}, context=context,
                            plain=plain_tag(opts) is not None)
    loop = dataclasses.replace(opts.loop_options(), label=run_.stage_dir.name if opts.run_name else "distill")
    task = run_.data.task
    evaluation = Evaluation(logits_predict, with_eval_loss(metrics_from_logits(task, warnings), task.is_regression),
                            task.main_metric)
    map_hooks = width_map_hooks(engine.module)  # issue 23 item 4: the summary's width_map entry
    trainer = Trainer(
        engine, batches, evaluation, run_.stage_dir, tracker, loop, export,
        hooks=([EvalCallback(on_eval)] if on_eval is not None else []) + map_hooks,
        batch_hook=teacher_outputs(run_, plan),
        extra_summary={"model_stats": stats, "stage_dir": str(run_.stage_dir), "k": opts.k, "k_auto": k_auto,
                       "layer_map": layer_map,
                       "loss_weights": weights, "teacher_dev_metrics": run_.cache.manifest.get("teacher_dev_metrics"),
                       "metric_warnings": warnings.seen, "baseline": warnings.baseline,
                       **({"student": plain_summary(opts)} if plain_tag(opts) else {}),
                       **({"width_map": map_hooks[0].info()} if map_hooks else {}),
                       **({"unlabeled": plan.describe()} if plan is not None else {})})
    return trainer, tracker, layer_map, plan
