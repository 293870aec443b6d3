"""The short outcome a stage command prints when it ends (the details are in the JSON file it names).

``dist-peakd distill ...`` ends with::

    [dist-peakd] distill done: f1 0.8239, accuracy 0.7255 (final, step 230/230); best f1 0.8239 at step 230; baseline f1 0.8122 (majority: equivalent); keeps 34.7% of the teacher's gain over it
    [dist-peakd] summary: runs/mrpc/distill-k3-shuffle-ptp-a0.7-T10-b100-s0/summary.json

``evaluate``, ``predict`` and ``export`` say what they scored or wrote the same way::

    [1/1] evaluate: runs/mrpc/distill-.../final, dev split of mrpc
    [dist-peakd] evaluate done: f1 0.8239, accuracy 0.7255 (dev, 408 rows); baseline f1 0.8122 (majority: equivalent)

The baseline is the trivial model of the same rows (the majority class; the mean for regression); a model
at or below it on the main metric adds a warning line.

A stage that finished earlier with the same options and inputs says ``reused`` instead of ``done``.
``pipeline`` and ``sweep`` print their own tables, the JSON's path and the folder's size themselves
(and, after each stage they run, that stage's lines as its own command prints them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Commands that print their own summary (a table, the JSON's path): nothing more is added.
SELF_REPORTING = ("pipeline", "sweep", "compress")


def _metrics(values: Mapping[str, Any], main: str | None = None) -> str:
    names = [n for n in values if n not in ("step", "epoch") and isinstance(values[n], int | float)
             and not isinstance(values[n], bool)]
    if main in names:
        names = [main, *(n for n in names if n != main)]
    return ", ".join(f"{n} {float(values[n]):.4f}" for n in names)


def summary_warnings(summary: Mapping[str, Any]) -> list[str]:
    """The warnings a stage recorded beside its metrics (``summary["warnings"]``, its
    ``metric_warnings`` — degenerate dev predictions — and the final evaluation's ``warnings`` when it
    has some), in order, without repeats."""
    found: list[str] = []
    final = summary.get("final") if isinstance(summary.get("final"), Mapping) else {}
    for source in (summary.get("warnings"), summary.get("metric_warnings"), final.get("warnings")):
        for warning in source or ():
            if str(warning) not in found:
                found.append(str(warning))
    return found


def baseline_text(block: Mapping[str, Any] | None) -> str:
    """``; baseline f1 0.8122 (majority: equivalent); keeps 25.3% of the teacher's gain`` from a
    ``baseline`` block (:func:`dist_peakd.metrics.compare_to_baseline`); ``""`` without one."""
    if not isinstance(block, Mapping) or "baseline_value" not in block:
        return ""
    text = f"; baseline {block['main_metric']} {float(block['baseline_value']):.4f} ({block.get('label')})"
    if block.get("teacher") is not None:
        kept = block.get("gain_kept")
        text += ("; the teacher does not beat the baseline" if kept is None
                 else f"; keeps {float(kept):.1%} of the teacher's gain over it")
    return text


def trainer_outcome(stage: str, summary: Mapping[str, Any]) -> list[str]:
    """The lines of a training stage's summary (``Trainer.fit``)."""
    main = summary.get("main_metric")
    final, best = summary.get("final") or {}, summary.get("best") or {}
    total = summary.get("total_steps")
    steps = f"step {final.get('step')}" + (f"/{total}" if total else "")
    stopped = summary.get("stopped")
    how = "reused" if summary.get("reused") else "done"
    if isinstance(stopped, Mapping):
        by = f" ({str(stopped.get('by')).upper()})" if stopped.get("by") else ""
        how = f"stopped at step {stopped.get('step')}{by}"
    line = f"[dist-peakd] {stage} {how}: {_metrics(final, main)} (final, {steps})"
    if main in best:
        line += f"; best {main} {float(best[main]):.4f} at step {best.get('step')}"
    lines = [line + baseline_text(summary.get("baseline"))]
    lines += [f"[dist-peakd] warning: {w}" for w in summary_warnings(summary)]
    if summary.get("stage_dir"):
        lines.append(f"[dist-peakd] summary: {Path(summary['stage_dir']) / 'summary.json'}")
    return lines


def cache_outcome(summary: Mapping[str, Any]) -> list[str]:
    rows = summary.get("rows") or {}
    what = "reused (valid, matching)" if summary.get("skipped") else "built"
    counts = ", ".join(f"{k} {v}" for k, v in rows.items())
    line = f"[dist-peakd] cache-teacher {what}: {sum(rows.values())} rows ({counts})"
    if summary.get("teacher_dev_metrics"):
        line += f"; teacher dev {_metrics(summary['teacher_dev_metrics'])}"
    lines = [line]
    if summary.get("cache_dir"):
        lines.append(f"[dist-peakd] cache: {summary['cache_dir']}")
    return lines


def stage_folder(stage: str, opts: Any) -> Path:
    """The folder a stage command writes (for its banner)."""
    layout = opts.layout()
    if stage == "finetune-teacher":
        return layout.teacher_stage
    if stage == "cache-teacher":
        return layout.teacher_cache
    name = getattr(opts, "stage_name", None)
    return layout.stage_dir(name()) if callable(name) else layout.task_dir


#: Commands that read a model folder (``--model_dir``) instead of writing a stage folder.
MODEL_COMMANDS = ("evaluate", "predict", "export")


def banner_detail(stage: str, opts: Any) -> str:
    """The banner's text after ``[1/1] <stage>: ``: the task and the folder a stage writes, or the model
    folder a deploy command reads and what it makes of it."""
    if stage not in MODEL_COMMANDS:
        return f"{opts.task} -> {stage_folder(stage, opts)}"
    source = str(opts.model_dir) + (f" ({opts.onnx_file})" if getattr(opts, "onnx_file", None) else "")
    if stage == "export":
        return f"{source} -> {opts.out} ({opts.format}" + (f", {opts.quantize}" if opts.quantize else "") + ")"
    what = f"rows of {opts.input}" if getattr(opts, "input", None) else f"{opts.split} split of {opts.task}"
    return f"{source}, {what}" + (f" -> {opts.out}" if stage == "predict" else "")


def model_command_outcome(stage: str, result: Mapping[str, Any]) -> list[str]:
    """The lines of ``evaluate`` / ``predict`` / ``export``."""
    if stage == "evaluate":
        lines = [f"[dist-peakd] evaluate done: {_metrics(result.get('metrics') or {})} ({result.get('split')}, "
                 f"{result.get('rows')} rows){baseline_text(result.get('baseline'))}"]
    elif stage == "predict":
        lines = [f"[dist-peakd] predict done: {result.get('rows')} rows of {result.get('split')} -> {result.get('out')}"]
        if result.get("submission"):
            lines.append(f"[dist-peakd] GLUE submission file: {result['submission']}")
        return lines + [f"[dist-peakd] warning: {w}" for w in summary_warnings(result)]
    else:
        size = f"{float(result.get('bytes') or 0) / 1e6:.1f} MB"
        line = f"[dist-peakd] export done: {result.get('format')} -> {result.get('out')} ({size}, " \
               f"{len(result.get('files') or ())} files)"
        if result.get("max_abs_diff") is not None:
            line += f"; verified on {result.get('verify_rows')} dev rows, max |logit diff| {result['max_abs_diff']:.2g}"
            if result.get("max_abs_diff_int8") is not None:
                line += f" (int8 {result['max_abs_diff_int8']:.2g})"
        return [line]
    lines += [f"[dist-peakd] warning: {w}" for w in summary_warnings(result)]
    return lines


def outcome_lines(stage: str, result: Any) -> list[str]:
    """What ``dist-peakd <stage>`` prints at its end instead of the whole result."""
    if stage in SELF_REPORTING or not isinstance(result, Mapping):
        return []
    if stage in MODEL_COMMANDS:
        return model_command_outcome(stage, result)
    if "main_metric" in result and "final" in result:
        return trainer_outcome(stage, result)
    if "cache_dir" in result:
        return cache_outcome(result)
    return [f"[dist-peakd] {stage} done"]
