"""The end of a sweep: Tune's trial states -> results.{csv,md,json} and plots in the sweep folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import console
from ..artifacts import atomic_write_text
from ..layout import CHECKPOINTS, FINAL, SUMMARY


@dataclass
class SweepReport:
    """What the results need to know about the sweep (besides its trials)."""

    task: str
    task_metrics: list[str]
    metric: str
    mode: str
    scope: str                       # last | all: rank trials by their final or best-on-dev metric
    search: str
    scheduler: str
    expected_trials: int             # samples x grid size
    fixed: dict[str, Any] = field(default_factory=dict)   # the sweep's options (every trial's fixed values)
    keep_trial_final: bool = False   # keep final/ of every trial (default: the best trial's only)


def trial_states(tune_dir: Path) -> list[Any]:
    """What Tune recorded about every trial of the sweep stored in ``tune_dir``."""
    from ray.tune import ExperimentAnalysis

    from .results import TrialState

    analysis = ExperimentAnalysis(str(tune_dir))
    return [TrialState(trial_id=t.trial_id, status=t.status, config=dict(t.config), last_result=dict(t.last_result),
                       results_file=_results_file(t)) for t in analysis.trials]


def _results_file(trial: Any) -> str | None:
    """Tune's ``result.json`` of a trial (every report, one JSON per line), when it has one."""
    path = getattr(trial, "path", None)
    return str(Path(path) / "result.json") if path and (Path(path) / "result.json").is_file() else None


def _best_info(best: dict[str, Any] | None, metric: str, swept: list[str]) -> dict[str, Any] | None:
    if best is None:
        return None
    return {"trial": best["trial"], "config": {k: best[k] for k in swept},
            f"{metric}_final": best[f"{metric}_final"], f"{metric}_best": best[f"{metric}_best"],
            "run_dir": best["run_dir"]}


def _print_outcome(result: dict[str, Any], report: SweepReport, sweep_dir: Path) -> None:
    best_info, counts, metric = result["best"], result["status_counts"], report.metric
    if best_info:
        which = "final" if report.scope == "last" else "best"
        console.info(f"best trial {best_info['trial']}: {metric} = {best_info[f'{metric}_{which}']:.4f} "
                     f"({'final' if report.scope == 'last' else 'best on dev'}) with {json.dumps(best_info['config'])}")
    console.info(f"results: {sweep_dir / 'results.md'} (and .csv, .json); plots: "
                 + (", ".join(Path(p).name for p in result["plots"]) or "none"))
    console.info(f"sweep folder {sweep_dir}: {console.human_size(result['output_bytes'])}")
    if result["interrupted"]:
        name = sweep_dir.name.removeprefix("sweep-")
        console.info(f"the sweep was interrupted ({counts['unfinished']} trial(s) unfinished, "
                     f"{result['not_started']} not started): rerun the same command with --resume --sweep_name {name}")


def tidy_trials(rows: list[dict[str, Any]], best_trial: str | None, keep_final: bool) -> list[str]:
    """Disk economy once the results are in: every ended trial keeps ``best/`` and its summary; its
    checkpoints go, and so does ``final/`` except the best trial's (``keep_final``: every trial's)."""
    removed = []
    for row in rows:
        run_dir = Path(row["run_dir"])
        if row["status"] in ("completed", "stopped"):
            shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
        if not keep_final and row["trial"] != best_trial and (run_dir / FINAL).is_dir():
            shutil.rmtree(run_dir / FINAL, ignore_errors=True)
            removed.append(row["trial"])
    return removed


def write_results(report: SweepReport, sweep_dir: Path, dims: dict[str, Any], log: list[str],
                  wall_s: float) -> dict[str, Any]:
    """results.{csv,md,json} and the plots in the sweep folder; returns the result summary."""
    from .results import best_row, collect_rows, plot_results, recover_summaries, render_report, to_csv

    swept = [n for n, d in dims.items() if d.kind != "fixed"]
    metric = report.metric
    states = trial_states(sweep_dir / "tune")
    recover_summaries(sweep_dir, states, metric, report.mode, report.task_metrics)
    rows = collect_rows(sweep_dir, states, report.fixed, swept, metric, report.task_metrics, report.scheduler)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped", "errored", "unfinished")}
    not_started = max(0, report.expected_trials - len(rows))
    best = best_row(rows, metric, report.mode, report.scope)
    best_info = _best_info(best, metric, swept)
    header = (f"## dist-peakd sweep {sweep_dir.name.removeprefix('sweep-')} ({report.task}, {report.search} search, "
              f"{report.scheduler}; {len(rows)} trials: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
              + (f"; {not_started} not started yet" if not_started else "") + ")")
    discrete = [n for n in swept if dims[n].discrete]
    plots = plot_results(rows, sweep_dir, metric, swept, log_scale=[n for n, d in dims.items() if d.kind == "loguniform"],
                         best_trial=best["trial"] if best else None, discrete=discrete, scope=report.scope)
    md = render_report(rows, header, metric=metric, swept=swept, fixed=report.fixed,
                       best_trial=best["trial"] if best else None, num_trials=report.expected_trials, plots=plots,
                       extra_notes=[*baseline_note(rows), *_warning_notes(rows)])
    atomic_write_text(sweep_dir / "results.csv", to_csv(rows))
    atomic_write_text(sweep_dir / "results.md", md)
    tidy_trials(rows, best["trial"] if best else None, report.keep_trial_final)
    result = {
        "sweep_dir": str(sweep_dir), "task": report.task, "metric": metric, "mode": report.mode, "scope": report.scope,
        "best": best_info, "num_trials": len(rows), "status_counts": counts, "not_started": not_started,
        "interrupted": counts["unfinished"] > 0 or not_started > 0, "stages": log, "wall_time_s": round(wall_s, 1),
        "results": {ext: str(sweep_dir / f"results.{ext}") for ext in ("csv", "md", "json")},
        "plots": [str(p) for p in plots], "output_bytes": console.folder_size(sweep_dir),
    }
    atomic_write_text(sweep_dir / "results.json", json.dumps({**result, "rows": rows}, indent=2, default=str))
    console.echo("\n".join(line for line in md.splitlines() if not line.startswith("![")))
    _print_outcome(result, report, sweep_dir)
    return result


def baseline_note(rows: list[dict[str, Any]]) -> list[str]:
    """The trivial baseline of the trials' dev rows (the ``baseline`` block of the first trial summary that
    records one: every trial scores the same dev rows) and the teacher's main metric beside it."""
    for row in rows:
        block = (_read_summary(Path(row["run_dir"])) or {}).get("baseline")
        if isinstance(block, dict) and "metrics" in block:
            values = ", ".join(f"{k} {float(v):.4f}" for k, v in block["metrics"].items())
            line = f"trivial baseline on the same {block['rows']} dev rows ({block['label']}): {values}"
            if block.get("teacher") is not None:
                line += f"; teacher {block['main_metric']} {float(block['teacher']):.4f}"
            return [line + "; a trial at or below the baseline has learned nothing the trivial model does not give"]
    return []


def _warning_notes(rows: list[dict[str, Any]]) -> list[str]:
    """The warnings the trials' summaries carry beside their metrics (e.g. a constant regression student)."""
    from ..outcome import summary_warnings

    notes = []
    for row in rows:
        summary = _read_summary(Path(row["run_dir"]))
        notes += [f"{row['trial']}: {w}" for w in summary_warnings(summary or {})]
    return notes


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
