"""The body of ``dist-peakd compress`` (:mod:`.compress`): the shared stages, the Tune search, the graphs
measured, the front written and the chosen student exported (:mod:`.compress_report`)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from .. import console
from ..export.latency import machine_name
from ..layout import BEST, FINAL, MODEL_CONFIG
from .compress_trial import Measure, measure_options, measure_trial, parse_shape, parse_shapes, run_trial
from .pipeline import run_teacher_stages


def prepare_compress_stages(opts: Any, task: Any) -> tuple[list[str], bool]:
    """Teacher fine-tune and cache (each reused when done) and one PTP encoder per shape (PTP on)."""
    from . import ptp
    from .pipeline import _run_stage, _subset

    log: list[str] = []
    if opts.teacher_cache_dir:
        log.append(f"teacher + cache: given ({opts.teacher_cache_dir})")
    else:
        run_teacher_stages(opts, log, eval_every_steps=0)
    use_ptp = bool(opts.use_ptp) and not task.is_regression
    if use_ptp and not opts.ptp_dir:
        for shape in parse_shapes(opts.shapes):
            ptp_opts = _subset(opts, ptp.PTPOptions, **parse_shape(shape), epochs=opts.ptp_epochs, lr=opts.ptp_lr,
                               eval_every_steps=0)
            _run_stage(f"ptp {shape}", opts.layout().stage_dir(ptp_opts.stage_name()), ptp_opts, ptp.run, log)
    return log, use_ptp


def _stage_count(opts: Any, task: Any) -> int:
    count = 0 if opts.teacher_cache_dir else 1 + (not opts.layout().teacher_is_given)
    if opts.use_ptp and not task.is_regression and not opts.ptp_dir:
        count += len(parse_shapes(opts.shapes))
    return count


def _search(opts: Any, task: Any, t_start: float) -> tuple[Path, dict[str, Any]]:
    """The Tune search (a sweep whose trials are :func:`.compress_trial.run_trial`); the sweep's results."""
    from ..sweep.plan import trial_budget
    from ..sweep.report import write_results
    from ..sweep.space import grid_size
    from ..sweep.trainable import TrialSettings, make_trainable
    from ..sweep.tuner import check_resources, make_tuner, run_tuner
    from .common import run_task
    from .compress_trial import CompressTrialOptions
    from .stage_folder import lock_for_job
    from .sweep import _check_sweep_state, _report, _sweep_name, _train_rows, _trial_base

    settings = TrialSettings(base={}, sweep_name="", sweep_dir="", metric="", mode=opts.mode, backend=opts.backend(),
                             workers=opts.workers_per_trial, cpus_per_worker=opts.cpus_per_worker,
                             gpus_per_worker=opts.gpus_per_worker, options_type=CompressTrialOptions,
                             trial_fn=run_trial)
    check_resources(settings, local=opts.address is None)
    dims = opts.dimensions()
    name = opts.sweep_name or (_sweep_name(opts) if opts.resume else f"compress-{time.strftime('%Y%m%d-%H%M%S')}")
    sweep_dir = opts.layout().sweep_dir(name).resolve()
    run_task(opts)
    lock_for_job(sweep_dir, "compress folder")
    restore = _check_sweep_state(opts, sweep_dir, dims)
    swept = tuple(n for n, d in dims.items() if d.kind != "fixed")
    with console.stage_plan(_stage_count(opts, task) + 1):
        log, use_ptp = prepare_compress_stages(opts, task)
        base, train_rows = _trial_base(opts, use_ptp), _train_rows(opts)
        settings = dataclasses.replace(settings, base=base, train_rows=train_rows, rungs=opts.rungs, swept=swept,
                                       sweep_name=name, sweep_dir=str(sweep_dir), metric=task.main_metric)
        max_t, budget = trial_budget(opts, dims, base, train_rows)
        limit = f", at most {opts.time_budget_s:g} s" if opts.time_budget_s else ""
        console.banner("compress", f"{'resuming ' if restore else ''}{budget}{limit} -> {sweep_dir}")
    spec = opts.tuner_spec(max_t, opts.samples() * grid_size(dims), swept, task)
    run_tuner(make_tuner(spec, make_trainable(settings), dims, sweep_dir, restore), opts.stop_after_trials)
    report = dataclasses.replace(_report(opts, dims, task), keep_trial_final=True)  # measured below
    result = write_results(report, sweep_dir, dims, log, time.perf_counter() - t_start)
    return sweep_dir, result


MEASURED = "compress_measured.json"


def checkpoint_of(run_dir: Path) -> str | None:
    """The checkpoint a finished trial is measured as: ``final/``; ``best/`` when the scheduler ended the
    trial at its last evaluation, before ``final/`` was written (its best on dev over its evaluations)."""
    for name in (FINAL, BEST):
        if (run_dir / name / MODEL_CONFIG).is_file():
            return name
    return None


def measured_graphs(run_dir: Path, measure: Measure, checkpoint: str) -> list[dict[str, Any]]:
    """The trial's graphs measured (:func:`.compress_trial.measure_trial`), or the record of an earlier
    measurement of the same checkpoint under the same conditions (a resumed search re-chosen under another
    budget)."""
    from ..artifacts import atomic_write_json

    conditions = {k: v for k, v in dataclasses.asdict(measure).items() if k != "data"}
    conditions.update(precisions=list(measure.precisions), machine=machine_name(), checkpoint=checkpoint)
    record = run_dir / MEASURED
    try:
        saved = json.loads(record.read_text())
        if saved.get("conditions") == conditions:
            console.info(f"{run_dir.name}: measured before under the same conditions ({record.name}): reused")
            return saved["graphs"]
    except (OSError, ValueError, AttributeError):
        pass
    console.info(f"measuring {run_dir.name}: ONNX {'+'.join(measure.precisions)}, dev metric on the graph, latency "
                 f"at batch {measure.batch} x seq {measure.seq}, {measure.threads} thread(s)")
    graphs = measure_trial(run_dir / checkpoint, run_dir / "onnx-measure", measure)
    atomic_write_json(record, {"conditions": conditions, "graphs": graphs})
    return graphs


def trial_points(row: dict[str, Any], measure: Measure, main: str, block: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidates of one finished trial: one per precision, with its comparison to the trivial baseline
    (``block``: the search's, every trial scores the same dev rows)."""
    from ..metrics import compare_to_baseline
    from ..sweep.front import drop_points

    run_dir = Path(row["run_dir"])
    teacher = block.get("teacher")
    short = row["trial"].removeprefix("trial-").split("-")[0].rsplit("_", 1)[-1]
    points = []
    checkpoint = checkpoint_of(run_dir) or FINAL
    for graph in measured_graphs(run_dir, measure, checkpoint):
        metrics = graph["metrics"]
        compared = (compare_to_baseline(main, metrics, block, {main: teacher} if teacher is not None else None)
                    if block.get("metrics") else {})
        points.append({
            "name": f"{short}-{graph['precision']}", "trial": row["trial"], "run_dir": str(run_dir),
            "checkpoint": checkpoint,
            "student": row.get("shape"), "temperature": row.get("temperature"), "alpha": row.get("alpha"),
            "precision": graph["precision"], "metric": float(metrics[main]), "metrics": metrics,
            "pytorch_metric": row.get(f"{main}_final"), "drop_points": drop_points(float(metrics[main]), teacher),
            "gain_kept": compared.get("gain_kept"), "at_or_below_baseline": compared.get("at_or_below"),
            "latency_ms": graph["latency_ms"], "size_mb": graph["size_mb"], "latency": graph["latency"]})
    return points


def measure_rows(rows: list[dict[str, Any]], measure: Measure, main: str, block: dict[str, Any]
                 ) -> tuple[list[dict[str, Any]], list[str]]:
    """Every trial that ran to its end measured (:func:`checkpoint_of`); notes on the trials left out."""
    points: list[dict[str, Any]] = []
    notes = []
    for row in rows:
        if row["status"] != "completed" or checkpoint_of(Path(row["run_dir"])) is None:
            notes.append(f"{row['trial']}: {row['status']} (not measured: only trials that ran to their end are "
                         "candidates)")
            continue
        points += trial_points(row, measure, main, block)
    return points, notes


def run_compress(opts: Any, t_start: float) -> dict[str, Any]:
    from ..sweep.report import tidy_trials
    from .common import run_task
    from .compress_report import baseline_block, finish

    task = run_task(opts)
    sweep_dir, sweep_result = _search(opts, task, t_start)
    rows = json.loads((sweep_dir / "results.json").read_text())["rows"]
    measure = measure_options(opts)
    t_measure = time.perf_counter()
    points, notes = measure_rows(rows, measure, task.main_metric, baseline_block(rows))
    conditions = {"batch": measure.batch, "seq": measure.seq, "threads": measure.threads, "runs": measure.runs,
                  "warmup": measure.warmup, "machine": machine_name(), "runtime": "onnxruntime (CPU)",
                  "measure_s": round(time.perf_counter() - t_measure, 1)}
    result = finish(opts, task, sweep_dir, rows, points, notes, conditions)
    tidy_trials(rows, None, keep_final=True)  # checkpoints go; every final/ stays: a new budget re-measures them
    result.update(sweep=sweep_result, wall_time_s=round(time.perf_counter() - t_start, 1))
    return result
