"""A sweep's results: one row per trial (CSV, Markdown, JSON), a report with notes, and PNG plots.

Status of a trial: ``completed`` (ran to the end: its ``summary.json`` exists), ``stopped`` (ended early
by the scheduler, e.g. ASHA: ``stopped_at_step`` says after which step), ``errored`` (failed after its
retries; ``error`` says why) or ``unfinished`` (the sweep was interrupted before it ended: ``--resume``
runs it). A trial stopped early says so in its ``trial.json`` or ``summary.json``: ``"stopped": {"step":
N, "by": "asha"}`` (or ``"stopped": N``); a trial Tune ended without a summary counts as stopped after
the last step it reported.

The table shows the swept options only (the fixed ones are listed once, :func:`fixed_line`);
:func:`identical_metric_notes` points out a swept option whose values give identical metrics.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_json
from ..layout import BEST, EXPORT_RECORD, SUMMARY
from .naming import find_trial_dir
from .plots import plot_results  # noqa: F401  (re-exported: the sweep driver imports it from here)
from .trainable import TRIAL_RECORD, read_stop_record, stopped_early

#: Options listed once in the report when they are not swept (the table has the swept ones only).
SHOWN_OPTIONS = ("k", "variant", "temperature", "alpha", "beta", "lr")
STATUSES = ("completed", "stopped", "errored", "unfinished")
#: Row fields that are not table columns.
HIDDEN_COLUMNS = ("run_dir", "stopped_at_step", "stopped_by")


@dataclass
class TrialState:
    """What Tune knows about one trial."""

    trial_id: str
    status: str                   # Tune's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    config: dict[str, Any]
    last_result: dict[str, Any]
    results_file: str | None = None   # Tune's result.json of the trial (every report)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _parameters(run_dir: Path, summary: dict[str, Any] | None) -> int | None:
    stats = (summary or {}).get("model_stats")
    if stats is None:
        info = _read_json(run_dir / BEST / EXPORT_RECORD) or {}
        stats = info.get("model_stats")
    return int(stats["parameters"]) if stats and "parameters" in stats else None


def _stop_record(summary: dict[str, Any] | None, record: dict[str, Any]) -> tuple[int | None, str] | None:
    """(step, scheduler) of a trial that recorded an early stop, else None."""
    for source in (summary or {}, record):
        stopped = source.get("stopped")
        if isinstance(stopped, dict):
            return stopped.get("step"), str(stopped.get("by") or "")
        if isinstance(stopped, int) and not isinstance(stopped, bool):
            return stopped, ""
    return None


def _status(t: TrialState, summary: dict[str, Any] | None, record: dict[str, Any],
            scheduler: str) -> tuple[str, int | None, str | None]:
    """(status, stopped_at_step, stopped_by) of one trial."""
    if t.status == "ERROR":
        return "errored", None, None
    stop = _stop_record(summary, record)
    if stop is not None:
        return "stopped", stop[0], (stop[1] or scheduler).upper()
    if summary is not None:
        return "completed", None, None
    if t.status == "TERMINATED":
        return "stopped", (t.last_result or {}).get("step"), scheduler.upper()
    return "unfinished", None, None


def collect_rows(sweep_dir: Path, trials: Iterable[TrialState], fixed: dict[str, Any], swept: Sequence[str],
                 metric: str, task_metrics: Sequence[str], scheduler: str = "asha") -> list[dict[str, Any]]:
    """One row per trial, in trial order: status, swept options, metrics (final and best), steps, size, attempts."""
    rows: list[dict[str, Any]] = []
    size_keys: dict[str, tuple[Any, Any]] = {}
    for t in sorted(trials, key=lambda t: t.trial_id):
        run_dir = find_trial_dir(sweep_dir, t.trial_id)
        summary = _read_json(run_dir / SUMMARY)
        record = _read_json(run_dir / TRIAL_RECORD) or {}
        stop_file = read_stop_record(run_dir)
        if stopped_early(stop_file) and "stopped" not in record:
            record = {**record, "stopped": stop_file}
        last = t.last_result or {}
        status, stopped_at, stopped_by = _status(t, summary, record, scheduler)
        row: dict[str, Any] = {"trial": run_dir.name, "status": status, "stopped_at_step": stopped_at,
                               "stopped_by": stopped_by}
        for name in swept:
            row[name] = t.config.get(name, fixed.get(name))
        final = summary["final"] if summary else {m: last.get(m) for m in task_metrics}
        best = summary["best"].get(metric) if summary else last.get(f"best_{metric}")
        row[f"{metric}_final"] = final.get(metric)
        row[f"{metric}_best"] = best
        for m in task_metrics:
            if m != metric:
                row[f"{m}_final"] = final.get(m)
        row["evaluations"] = len(summary["history"]) if summary else last.get("training_iteration")
        row["step"] = final.get("step") if summary else last.get("step")
        row["total_steps"] = (summary or {}).get("total_steps", record.get("total_steps"))
        row["parameters"] = _parameters(run_dir, summary)
        row["workers"] = last.get("world_size")
        row["attempts"] = record.get("attempts")
        errors = record.get("errors") or []
        row["error"] = errors[-1]["error"] if status == "errored" and errors else ""
        row["run_dir"] = str(run_dir)
        size_keys[row["trial"]] = (t.config.get("k", fixed.get("k")), t.config.get("variant", fixed.get("variant")))
        rows.append(row)
    sizes = {size_keys[r["trial"]]: r["parameters"] for r in rows if r["parameters"] is not None}
    for r in rows:  # same (k, variant) -> same size: fill in trials that never got that far
        if r["parameters"] is None:
            r["parameters"] = sizes.get(size_keys[r["trial"]])
    return rows


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def best_row(rows: Sequence[dict[str, Any]], metric: str, mode: str, scope: str) -> dict[str, Any] | None:
    """The best trial by its final (``scope=last``) or best-ever (``scope=all``) metric."""
    key = f"{metric}_{'final' if scope == 'last' else 'best'}"
    scored = [r for r in rows if _number(r.get(key))]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r[key])


def status_text(row: Mapping[str, Any]) -> str:
    """``completed``, ``stopped at step 4 (ASHA)``, ``errored``, ``unfinished``."""
    if row["status"] != "stopped":
        return str(row["status"])
    step = row.get("stopped_at_step")
    by = f" ({row['stopped_by']})" if row.get("stopped_by") else ""
    return f"stopped at step {step}{by}" if step is not None else f"stopped{by}"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue()


def to_markdown(rows: Sequence[dict[str, Any]], header: str, best_trial: str | None = None) -> str:
    """``header`` and the table: status as :func:`status_text`, columns empty in every row left out,
    the ``best_trial`` in bold."""
    cols = [c for c in (rows[0] if rows else {}) if c not in HIDDEN_COLUMNS
            and (c in ("trial", "status") or any(r.get(c) not in (None, "") for r in rows))]
    lines = [header, ""]
    if rows:
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            cells = {c: _fmt(r[c]) for c in cols}
            cells["status"] = status_text(r)
            if r["trial"] == best_trial:
                cells["trial"] = f"{r['trial']} **(best)**"
            lines.append("| " + " | ".join(cells[c].replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def fixed_line(fixed: Mapping[str, Any], swept: Sequence[str]) -> str:
    """``fixed: k=2, variant=shuffle, ...``: the usual distillation options that were not swept."""
    parts = [f"{n}={_fmt(fixed[n])}" for n in SHOWN_OPTIONS if n not in swept and fixed.get(n) is not None]
    return "fixed: " + ", ".join(parts) if parts else ""


def budget_line(num_trials: int, steps_per_trial: int | None, rows: Sequence[dict[str, Any]] = ()) -> str:
    """``budget: 4 trials x 6 steps = 24 steps`` and, given rows, the steps used and the early stops."""
    if steps_per_trial:
        line = f"budget: {num_trials} trials x {steps_per_trial} steps = {num_trials * steps_per_trial} steps"
    else:
        line = f"budget: {num_trials} trials"
    if rows:
        used = sum(int(r["step"]) for r in rows if _number(r.get("step")))
        stopped = sum(r["status"] == "stopped" for r in rows)
        line += f"; used {used} steps" + (f" ({stopped} trial(s) stopped early)" if stopped else "")
    return line


def steps_per_trial(rows: Sequence[dict[str, Any]]) -> int | None:
    """The training steps of one trial, from the trials that recorded it (None if none did)."""
    totals = [int(r["total_steps"]) for r in rows if _number(r.get("total_steps"))]
    return max(totals) if totals else None


def _metric_keys(rows: Sequence[dict[str, Any]], metric: str) -> list[str]:
    keys = [f"{metric}_final", f"{metric}_best"]
    return keys + [k for k in (rows[0] if rows else {}) if k.endswith("_final") and k not in keys]


def identical_metric_notes(rows: Sequence[dict[str, Any]], swept: Sequence[str], metric: str) -> list[str]:
    """Notes for swept options whose values give identical metrics in every cell of the other options.

    A cell is one combination of the other swept options' values; two values of an option are identical
    when every metric (final and best) is equal in every cell that has both.
    """
    keys = _metric_keys(rows, metric)
    scored = [r for r in rows if _number(r.get(f"{metric}_final"))]
    names = [k.removesuffix("_final") for k in keys if k.endswith("_final")]
    notes = []
    for option in swept:
        others = [o for o in swept if o != option]
        cells: dict[tuple, dict[Any, tuple]] = {}
        for r in scored:
            cells.setdefault(tuple(repr(r.get(o)) for o in others), {}).setdefault(r.get(option),
                                                                                   tuple(r.get(k) for k in keys))
        values = sorted({r.get(option) for r in scored}, key=lambda v: (str(type(v)), v))
        same: dict[tuple, int] = {}
        for a, b in itertools.combinations(values, 2):
            shared = [c for c in cells.values() if a in c and b in c]
            if shared and all(c[a] == c[b] for c in shared):
                same[(a, b)] = len(shared)
        for group in _classes(values, same):
            n_cells = len([c for c in cells.values() if sum(v in c for v in group) >= 2])
            where = f"in all {n_cells} cells ({' x '.join(others)})" if others else "in the one cell"
            spelled = ", ".join(_fmt(v) for v in group)
            if len(group) == len(values):
                notes.append(f"{option} makes no difference: identical {'/'.join(names)} for {option} = {spelled} "
                             f"{where}")
            else:
                notes.append(f"{option} = {spelled} give identical {'/'.join(names)} {where}")
    return notes


def _classes(values: Sequence[Any], same: Mapping[tuple, int]) -> list[list[Any]]:
    """Groups of values that are identical pairwise (each group of 2 or more, in value order)."""
    groups: list[list[Any]] = []
    for v in values:
        for g in groups:
            if all((u, v) in same for u in g):
                g.append(v)
                break
        else:
            groups.append([v])
    return [g for g in groups if len(g) > 1]


def progress_line(done: int, total: int, trial: str, values: Mapping[str, Any], status: str, metric: str,
                  value: float | None, step: int | None) -> str:
    """One line per finished trial: ``[dist-peakd] trial 3/4 trial-...: stopped at step 4 (ASHA), f1 0.8211``."""
    config = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
    score = f", {metric} {value:.4f}" if _number(value) else ""
    at = f" at step {step}" if step is not None and "step" not in status else ""
    return f"[dist-peakd] trial {done}/{total} {trial} ({config}): {status}{at}{score}"


def render_report(rows: Sequence[dict[str, Any]], header: str, *, metric: str, swept: Sequence[str],
                  fixed: Mapping[str, Any], best_trial: str | None, num_trials: int,
                  plots: Sequence[Path] = (), extra_notes: Sequence[str] = ()) -> str:
    """``results.md``: header, budget, fixed options, the table (best in bold), notes (identical metrics
    across a swept option, then ``extra_notes``, e.g. the trials' metric warnings), plots."""
    lines = [budget_line(num_trials, steps_per_trial(rows), rows)]
    if fixed_line(fixed, swept):
        lines.append(fixed_line(fixed, swept))
    table = to_markdown(rows, header, best_trial=best_trial)
    head, _, body = table.partition("\n\n")
    out = head + "\n\n" + "\n".join(f"{line}  " for line in lines) + "\n\n" + body
    notes = [*identical_metric_notes(rows, swept, metric), *extra_notes]
    if notes:
        out += "\nNotes:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    if plots:
        out += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    return out


def _tune_history(results_file: str | None, names: Sequence[str]) -> list[dict[str, Any]]:
    """The evaluations a trial reported to Tune (``step`` and the metrics ``names``), in order."""
    history: list[dict[str, Any]] = []
    try:
        lines = Path(results_file).read_text().splitlines() if results_file else []
    except OSError:
        return history
    for line in lines:
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result.get("step"), int) and (not history or history[-1]["step"] != result["step"]):
            history.append({"step": result["step"], **{m: result[m] for m in names if _number(result.get(m))}})
    return history


def recover_summaries(sweep_dir: Path, trials: Iterable[TrialState], metric: str, mode: str,
                      task_metrics: Sequence[str]) -> list[str]:
    """Write ``summary.json`` for trials the scheduler stopped whose process ended before writing it (a
    Ray Train trial's workers, a trial process that exited first), from the reports Tune kept; returns
    the trials written. Their ``best/`` is the one the run exported as it went."""
    written = []
    for t in trials:
        run_dir = find_trial_dir(sweep_dir, t.trial_id)
        stop = read_stop_record(run_dir)
        if t.status != "TERMINATED" or stop is None or (run_dir / SUMMARY).is_file():
            continue
        history = _tune_history(t.results_file, [*task_metrics, "loss"])
        scored = [h for h in history if _number(h.get(metric))]
        if not scored:
            continue
        best = (max if mode == "max" else min)(scored, key=lambda h: h[metric])
        summary = {"main_metric": metric, "final": dict(history[-1]), "best": dict(best), "history": history,
                   "total_steps": stop.get("total_steps"), "stage_dir": str(run_dir),
                   "recovered": "from the reports Tune kept (the trial's process ended before writing it)"}
        if stopped_early(stop):
            summary["stopped"] = {"step": stop.get("step"), "by": stop.get("by")}
        atomic_write_json(run_dir / SUMMARY, summary)
        written.append(run_dir.name)
    return written
