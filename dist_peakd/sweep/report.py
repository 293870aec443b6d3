"""The end of a sweep: Tune's trial states -> results.{csv,md,json} and plots in the sweep folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_text


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


def trial_states(tune_dir: Path) -> list[Any]:
    """What Tune recorded about every trial of the sweep stored in ``tune_dir``."""
    from ray.tune import ExperimentAnalysis

    from .results import TrialState

    analysis = ExperimentAnalysis(str(tune_dir))
    return [TrialState(trial_id=t.trial_id, status=t.status, config=dict(t.config), last_result=dict(t.last_result))
            for t in analysis.trials]


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
        print(f"[dist-peakd] best trial {best_info['trial']}: {metric} = {best_info[f'{metric}_{which}']:.4f} "
              f"({'final' if report.scope == 'last' else 'best on dev'}) with {json.dumps(best_info['config'])}",
              flush=True)
    if result["interrupted"]:
        name = sweep_dir.name.removeprefix("sweep-")
        print(f"[dist-peakd] the sweep was interrupted ({counts['unfinished']} trial(s) unfinished, "
              f"{result['not_started']} not started): rerun the same command with --resume --sweep_name {name}",
              flush=True)


def write_results(report: SweepReport, sweep_dir: Path, dims: dict[str, Any], log: list[str],
                  wall_s: float) -> dict[str, Any]:
    """results.{csv,md,json} and the plots in the sweep folder; returns the result summary."""
    from .results import best_row, collect_rows, plot_results, to_csv, to_markdown

    swept, metric = list(dims), report.metric
    rows = collect_rows(sweep_dir, trial_states(sweep_dir / "tune"), report.fixed, swept, metric, report.task_metrics)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped", "errored", "unfinished")}
    not_started = max(0, report.expected_trials - len(rows))
    best_info = _best_info(best_row(rows, metric, report.mode, report.scope), metric, swept)
    header = (f"## dist-peakd sweep {sweep_dir.name.removeprefix('sweep-')} ({report.task}, {report.search} search, "
              f"{report.scheduler}; {len(rows)} trials: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
              + (f"; {not_started} not started yet" if not_started else "") + ")")
    md = to_markdown(rows, header)
    atomic_write_text(sweep_dir / "results.csv", to_csv(rows))
    atomic_write_text(sweep_dir / "results.md", md)
    plots = plot_results(rows, sweep_dir, metric, swept, log_scale=[n for n, d in dims.items() if d.kind == "loguniform"])
    result = {
        "sweep_dir": str(sweep_dir), "task": report.task, "metric": metric, "mode": report.mode, "scope": report.scope,
        "best": best_info, "num_trials": len(rows), "status_counts": counts, "not_started": not_started,
        "interrupted": counts["unfinished"] > 0 or not_started > 0, "stages": log, "wall_time_s": round(wall_s, 1),
        "results": {ext: str(sweep_dir / f"results.{ext}") for ext in ("csv", "md", "json")},
        "plots": [str(p) for p in plots],
    }
    atomic_write_text(sweep_dir / "results.json", json.dumps({**result, "rows": rows}, indent=2, default=str))
    print(md, flush=True)
    _print_outcome(result, report, sweep_dir)
    return result
