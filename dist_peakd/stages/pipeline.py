"""The whole method in one command: teacher fine-tune -> cache -> PTP -> distill -> evaluate.

Each stage is skipped when its valid output already exists (its ``summary.json``, written last and
atomically, with the same options), so rerunning the command resumes where it stopped; a stage that
was interrupted resumes from its own checkpoint. Ends with a teacher-vs-student table (metric,
parameters, FLOPs/token, latency) printed and written to ``<output_dir>/<task>/pipeline_summary.{json,md}``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import console
from ..artifacts import atomic_write_text
from ..config import RunOptions, option
from ..data import DataOptions, glue_task
from ..engine import barrier, init_distributed
from ..layout import FINAL
from ..outcome import outcome_lines
from . import cache_teacher, distill, finetune_teacher, ptp
from .common import load_run_data, run_task
from .depth import announce_k, resolve_k
from .distill import DistillOptions
from .preflight import check_models
from .ptp import ThresholdRuleOption, validate_threshold_rule
from .student_kind import plain_tag

# Named presets: applied under the user's own options (the command line always wins).
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's settings stay the defaults; this preset makes the README's main job (SST-2, its first
    # 6,000 training rows) and MRPC finish in < 30 min on 2 CPU cores. ``per_task``: values for one task only.
    "cpu-fast": {"max_length": 64, "teacher_epochs": 2.0, "ptp_epochs": 1.0, "epochs": 2.0,
                 "lr": 5e-5, "eval_batch_size": 128, "per_task": {"sst2": {"max_train_examples": 6000}}},
}

@dataclass
class EarlierStagesOptions(ThresholdRuleOption, DistillOptions):
    """Distillation options plus the teacher/PTP stages' epochs and lr and a named preset: what a command
    that runs those stages before distilling (``pipeline``, ``sweep``) accepts."""

    preset: str | None = option(None, help="named option preset applied under the command line (e.g. cpu-fast)",
                                result=False, choices=tuple(sorted(PRESETS)))
    teacher_epochs: float = option(3.0, help="epochs of the teacher fine-tune", gt=0)
    teacher_lr: float = option(5e-5, help="learning rate of the teacher fine-tune", gt=0)
    ptp_epochs: float = option(2.0, help="epochs of PTP pretraining", gt=0)
    ptp_lr: float = option(2e-5, help="learning rate of PTP pretraining", gt=0)

    PRESETS = PRESETS

    def validate(self) -> None:
        super().validate()
        data = self.data_options()
        if not (data.is_glue and glue_task(data).is_regression):  # regression skips PTP: any rule is unused
            validate_threshold_rule(self.threshold_rule, data)


@dataclass
class PipelineOptions(EarlierStagesOptions):
    """All distillation options, the earlier stages' epochs/lr, a named preset, and the latency probe."""

    latency_batch_size: int = option(32, help="batch size of the latency measurement", result=False, ge=1)
    latency_repeats: int = option(10, help="timed forward passes of the latency measurement", result=False, ge=1)


def _subset(opts: PipelineOptions, cls: type, **overrides: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in dataclasses.asdict(opts).items() if k in names}
    values.update(overrides)
    sub = cls(**values)
    sub.validate()
    return sub


#: The command name of a stage in the banners (the stage log keeps the short names).
BANNER_NAMES = {"teacher": "finetune-teacher", "cache": "cache-teacher"}


def print_outcome(stage: str, result: dict[str, Any]) -> None:
    """A stage's end lines (``distill done: f1 ... (final, step ...); best ...``, ``... reused: ...``,
    warnings, the summary's path) on the main process, as the stage's own command prints them."""
    for line in outcome_lines(stage, result):
        console.echo(line)


def _run_stage(name: str, stage_dir: Path, stage_opts: RunOptions, runner: Any, log: list[str],
               detail: str = "") -> dict[str, Any]:
    """Run one stage under its banner; the stage itself reuses its folder when it finished with the same
    options and inputs (its upstream artifacts' fingerprints), refuses it when they changed (``--force``
    redoes it)."""
    title = BANNER_NAMES.get(name.split(" ")[0], name.split(" ")[0])
    console.banner(title, f"{detail} -> {stage_dir}" if detail else str(stage_dir))
    t0 = time.perf_counter()
    result = runner(stage_opts)
    print_outcome(title, result)  # the stage's end line(s), as its own command prints them
    if result.get("reused"):
        log.append(f"{name}: reused {stage_dir}")
    else:
        log.append(f"{name}: ran in {time.perf_counter() - t0:.1f} s")
    return result


@torch.no_grad()
def measure_latency(model: torch.nn.Module, batch: dict[str, torch.Tensor], repeats: int) -> float:
    """Median forward latency in milliseconds for one batch (after one warm-up pass)."""
    model.eval()
    device = next(model.parameters()).device
    from ..models.teacher import model_inputs  # segment ids only where the model's family embeds them

    inputs = model_inputs(model, *(batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")))
    model(**inputs)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def student_vs_teacher(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The student's compute, measured latency and parameters as ratios to the teacher's."""
    teacher, student = rows
    return {"flops": student["flops_per_token"] / teacher["flops_per_token"],
            "latency": student["latency_ms"] / teacher["latency_ms"],
            "parameters": student["parameters"] / teacher["parameters"]}


def ratio_line(ratios: dict[str, float]) -> str:
    """``student: 0.67x FLOPs, 0.60x latency, 0.69x parameters (of the teacher)``."""
    return (f"student: {ratios['flops']:.2f}x FLOPs, {ratios['latency']:.2f}x latency, "
            f"{ratios['parameters']:.2f}x parameters (of the teacher)")


def baseline_summary(rows: list[dict[str, Any]], block: dict[str, Any] | None, main: str) -> dict[str, Any] | None:
    """The trivial baseline of the student's dev rows (its summary's ``baseline`` block) with the share of
    the table's teacher's gain (final ``main``) the student's final keeps; None without a block."""
    from ..metrics import gain_kept

    if not block or "metrics" not in block:
        return None
    teacher, student = (r["final"].get(main) for r in rows)
    base = block["metrics"][main]
    kept = None if teacher is None or student is None else gain_kept(student, base, teacher)
    return {**block, "gain_kept": kept, "teacher": teacher, "model": student}


def gain_line(baseline: dict[str, Any]) -> str:
    """``student keeps 34.7% of the teacher's gain over the baseline (f1)`` (or why there is none)."""
    main = baseline["main_metric"]
    if baseline.get("gain_kept") is None:
        return f"the teacher does not beat the trivial baseline on {main}: there is no gain for the student to keep"
    return f"student keeps {baseline['gain_kept']:.1%} of the teacher's gain over the baseline ({main})"


def _baseline_row(baseline: dict[str, Any], metric_names: list[str]) -> str:
    values = [f"{100 * baseline['metrics'][m]:.2f}" for m in metric_names]
    return "| " + " | ".join([f"trivial baseline ({baseline['label']})", *values, *values, "0", "-", "-", "-"]) + " |"


def _markdown(rows: list[dict[str, Any]], metric_names: list[str], header: str,
              baseline: dict[str, Any] | None = None) -> str:
    cols = ["model", *[f"{m} (final)" for m in metric_names], *[f"{m} (best)" for m in metric_names],
            "parameters", "encoder layers (param/effective)", "GFLOPs/seq", "latency ms/batch"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [r["model"], *[f"{100 * r['final'][m]:.2f}" for m in metric_names],
                *[f"{100 * r['best'][m]:.2f}" for m in metric_names], f"{r['parameters']:,}",
                f"{r['num_parameter_layers']}/{r['num_effective_layers']}", f"{r['gflops_per_sequence']:.2f}",
                f"{r['latency_ms']:.1f}"]
        lines.append("| " + " | ".join(vals) + " |")
    if baseline:
        lines.append(_baseline_row(baseline, metric_names))
    lines += ["", ratio_line(student_vs_teacher(rows))]
    if baseline:
        lines.append(gain_line(baseline))
    return "\n".join(lines) + "\n"


def run_teacher_stages(opts: EarlierStagesOptions, log: list[str], **teacher_overrides: Any
                       ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Fine-tune the teacher (unless ``--teacher_dir`` gives one) and cache it; each reused when done.

    Returns the fine-tune's summary (None for a given teacher) and the cache stage's summary.
    """
    layout = opts.layout()
    teacher_summary = None
    if layout.teacher_is_given:
        log.append(f"teacher: given ({layout.teacher})")
    else:
        teacher_opts = _subset(opts, finetune_teacher.FinetuneTeacherOptions, epochs=opts.teacher_epochs,
                               lr=opts.teacher_lr, **teacher_overrides)
        teacher_summary = _run_stage("teacher", layout.teacher_stage, teacher_opts, finetune_teacher.run, log,
                                     f"fine-tune {opts.backbone} on {opts.task}, {opts.teacher_epochs:g} epoch(s), "
                                     f"lr {opts.teacher_lr:g}")
    t0 = time.perf_counter()
    console.banner("cache-teacher", f"teacher {layout.teacher} over train + dev -> {layout.teacher_cache}")
    cache_summary = cache_teacher.run(_subset(opts, cache_teacher.CacheTeacherOptions))
    print_outcome("cache-teacher", cache_summary)
    log.append(f"cache: {'reused' if cache_summary.get('skipped') else 'built'} in {time.perf_counter() - t0:.1f} s")
    return teacher_summary, cache_summary


def _teacher_metrics(teacher_summary: dict[str, Any] | None, cache_summary: dict[str, Any]) -> dict[str, Any]:
    """The teacher's final/best dev metrics: from its fine-tune, or (a given teacher) from its cache."""
    if teacher_summary is not None:
        return {"final": teacher_summary["final"], "best": teacher_summary["best"]}
    metrics = dict(cache_summary.get("teacher_dev_metrics") or {})
    return {"final": metrics, "best": metrics}


def _model_row(name: str, model: torch.nn.Module, metrics: dict[str, Any], batch: dict[str, torch.Tensor],
               opts: PipelineOptions) -> dict[str, Any]:
    from ..models import model_stats

    stats = model_stats(model, seq_len=opts.max_length)
    return {"model": name, "final": metrics["final"], "best": metrics["best"],
            "parameters": stats["parameters"], "encoder_parameters": stats["encoder_parameters"],
            "num_parameter_layers": stats["num_parameter_layers"],
            "num_effective_layers": stats["num_effective_layers"],
            "flops_per_token": stats["flops_per_token"],
            "gflops_per_sequence": stats["forward_gflops_per_sequence"],
            "latency_ms": measure_latency(model, batch, opts.latency_repeats)}


def compare_teacher_and_student(opts: PipelineOptions, teacher: dict[str, Any], student_summary: dict[str, Any],
                                device: torch.device) -> tuple[list[dict[str, Any]], int]:
    """Rank 0: the teacher-vs-student rows (metrics, size, FLOPs, latency on one dev batch)."""
    from ..models import load_student, load_teacher
    from .common import collator_for, load_tokenizer, prepare_data
    from .cross_student import student_batch

    tokenizer = load_tokenizer(opts.backbone)
    data = prepare_data(_subset(opts, RunOptions), tokenizer, need_train=False)
    task = data.task
    dev_rows = [data.dev[i] for i in range(min(opts.latency_batch_size, len(data.dev)))]
    batch = collator_for(tokenizer)(dev_rows)
    teacher_model = load_teacher(opts.layout().teacher, num_labels=task.num_labels,
                                 trust_unverified=opts.trust_unverified, require_head=True).to(device)
    final = Path(student_summary["stage_dir"]) / FINAL
    student_model = (load_teacher(final, num_labels=task.num_labels, require_head=True) if plain_tag(opts)  # bert
                     else load_student(final)).to(device)
    student = {"final": student_summary["final"], "best": student_summary["best"]}
    own = student_batch(opts, len(dev_rows))  # issue 23 item 4: a cross student's own tokens of the same rows
    rows = [_model_row("teacher", teacher_model, teacher, batch, opts),
            _model_row("student", student_model, student, batch if own is None else own, opts)]
    return rows, len(dev_rows)


def add_latency_to_card(student_dir: Path, rows: list[dict[str, Any]], batch: int, device: Any) -> None:
    """Put the measured teacher/student latency into the student's ``final/`` model card."""
    from ..export import update_card
    from ..export.card_limits import machine_description

    machine = machine_description(device)  # the CPU model / GPU name and the threads of these figures
    latency = [{"model": r["model"], "runtime": f"PyTorch eager ({device})", "batch": batch,
                "seq": "dev rows, dynamic padding", "median_ms": r["latency_ms"], **machine} for r in rows]
    update_card(student_dir, latency=latency)


def run(opts: PipelineOptions) -> dict[str, Any]:
    """Run (or resume) every stage for one task and write the summary table."""
    t_start = time.perf_counter()
    check_models(opts, "pipeline")  # every model of every stage, before the teacher trains
    dist_info = init_distributed()
    opts, k_auto = resolve_k(opts)
    announce_k(k_auto, dist_info)
    task = run_task(opts)
    if DataOptions.from_options(opts).has_unlabeled:  # the pool read and checked before the teacher trains
        load_run_data(opts, check_run=False, unlabeled=True)
    layout = opts.layout()
    log: list[str] = []
    use_ptp = opts.use_ptp and not task.is_regression
    with console.stage_plan(2 + (not layout.teacher_is_given) + use_ptp):
        teacher_summary, cache_summary = run_teacher_stages(opts, log)
        if use_ptp:
            ptp_opts = _subset(opts, ptp.PTPOptions, epochs=opts.ptp_epochs, lr=opts.ptp_lr)
            _run_stage("ptp", layout.stage_dir(ptp_opts.stage_name()), ptp_opts, ptp.run, log,
                       f"pretrain the {student_words(opts)} student on teacher-prediction labels, "
                       f"{opts.ptp_epochs:g} epoch(s)")
        distill_opts = _subset(opts, DistillOptions, use_ptp=use_ptp)
        student_summary = _run_stage("distill", layout.stage_dir(distill_opts.stage_name()), distill_opts,
                                     distill.run, log, distill_detail(distill_opts))
    result: dict[str, Any] = {}
    if dist_info.is_main:
        rows, latency_batch = compare_teacher_and_student(opts, _teacher_metrics(teacher_summary, cache_summary),
                                                          student_summary, dist_info.device)
        baseline = baseline_summary(rows, student_summary.get("baseline"), task.main_metric)
        result = {"task": task.name, "metrics": list(task.metrics), "rows": rows, "baseline": baseline,
                  "student_vs_teacher": student_vs_teacher(rows), "k": opts.k, "k_auto": k_auto, "stages": log,
                  "teacher_dir": str(layout.teacher), "student_dir": str(Path(student_summary["stage_dir"]) / FINAL),
                  "wall_time_s": round(time.perf_counter() - t_start, 1), "device": str(dist_info.device),
                  "world_size": dist_info.world_size, "latency_batch": latency_batch,
                  "options": json.loads(json.dumps(dataclasses.asdict(opts), default=str))}
        k_text = (f"{student_words(opts)}" if plain_tag(opts) else f"k={opts.k}") + \
            (f" (auto: {k_auto['teacher_layers']}-layer teacher)" if k_auto and "teacher_layers" in k_auto else "")
        shape = f"{k_text}, {opts.variant}" if not plain_tag(opts) else k_text
        header = (f"## dist-peakd pipeline: {task.name} ({shape}, PTP {'on' if use_ptp else 'off'}; "
                  f"{result['wall_time_s']} s on {dist_info.world_size} x {dist_info.device})")
        md = _markdown(rows, list(task.metrics), header, baseline)
        add_latency_to_card(Path(result["student_dir"]), rows, latency_batch, dist_info.device)
        result["output_bytes"] = console.folder_size(layout.task_dir)
        atomic_write_text(layout.pipeline_summary("json"), json.dumps(result, indent=2))
        atomic_write_text(layout.pipeline_summary("md"), md)
        print_summary(md, result, layout.task_dir, layout.pipeline_summary("json"),
                      [teacher_summary or {}, student_summary], opts.keep_checkpoints_after_success)
    barrier()
    return result


def distill_detail(opts: DistillOptions) -> str:
    """The distillation banner: the student and the loss."""
    start = "the PTP encoder" if opts.use_ptp else ("the backbone's mapped layers" if plain_tag(opts)
                                                     else "the backbone's bottom layers")
    return (f"{student_words(opts)} student from {start}, alpha {opts.alpha:g}, T {opts.temperature:g}, "
            f"beta {opts.beta:g}, {opts.epochs:g} epoch(s)")


def student_words(opts: Any) -> str:
    """``k=2 shuffle`` (SPS) or ``plain d=2 (alternate layers)``, as the banners and the table header say it."""
    if plain_tag(opts):
        return f"plain d={opts.depth} ({opts.layer_map} layers)"
    return f"k={opts.k} {opts.variant}"


def print_summary(md: str, result: dict[str, Any], task_dir: Path, json_path: Path,
                  summaries: list[dict[str, Any]], kept_checkpoints: bool) -> None:
    """The end of the pipeline's console output: the table, warnings, where the details are, the disk used."""
    from ..outcome import summary_warnings

    console.echo(md)
    for who, summary in zip(("teacher", "student"), summaries, strict=True):
        for warning in summary_warnings(summary):
            console.warn(f"{who}: {warning}")
    console.info(f"summary: {json_path} (table: {json_path.with_suffix('.md')})")
    note = "checkpoints kept" if kept_checkpoints else "checkpoints removed once each stage completed"
    console.info(f"output folder {task_dir}: {console.human_size(result['output_bytes'])} ({note})")
