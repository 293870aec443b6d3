"""A sweep's results: one row per trial (CSV, Markdown, JSON) and PNG plots of the metric.

Status of a trial: ``completed`` (ran to the end: its ``summary.json`` exists), ``stopped`` (ended
early by the scheduler, e.g. ASHA), ``errored`` (failed after its retries; ``error`` says why) or
``unfinished`` (the sweep was interrupted before it ended: ``--resume`` runs it).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .trainable import TRIAL_RECORD, trial_dirname_for

#: Options always shown in the table (after the swept ones).
SHOWN_OPTIONS = ("k", "variant", "temperature", "alpha", "beta", "lr")
#: Options plotted against the metric (plus every other numeric swept option, and the student's size).
PLOTTED_OPTIONS = ("temperature", "alpha", "k")


@dataclass
class TrialState:
    """What Tune knows about one trial."""

    trial_id: str
    status: str                   # Tune's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    config: dict[str, Any]
    last_result: dict[str, Any]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _parameters(run_dir: Path, summary: dict[str, Any] | None) -> int | None:
    stats = (summary or {}).get("model_stats")
    if stats is None:
        info = _read_json(run_dir / "best" / "dist_peakd.json") or {}
        stats = info.get("model_stats")
    return int(stats["parameters"]) if stats and "parameters" in stats else None


def collect_rows(sweep_dir: Path, trials: Iterable[TrialState], fixed: dict[str, Any], swept: Sequence[str],
                 metric: str, task_metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per trial, in trial order: status, options, metrics (final and best), size, attempts."""
    rows: list[dict[str, Any]] = []
    for t in sorted(trials, key=lambda t: t.trial_id):
        run_dir = sweep_dir / trial_dirname_for(t.trial_id)
        summary = _read_json(run_dir / "summary.json")
        record = _read_json(run_dir / TRIAL_RECORD) or {}
        last = t.last_result or {}
        if t.status == "ERROR":
            status = "errored"
        elif summary is not None:
            status = "completed"
        elif t.status == "TERMINATED":
            status = "stopped"
        else:
            status = "unfinished"
        row: dict[str, Any] = {"trial": trial_dirname_for(t.trial_id), "status": status}
        for name in [*swept, *(o for o in SHOWN_OPTIONS if o not in swept)]:
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
        row["parameters"] = _parameters(run_dir, summary)
        row["workers"] = last.get("world_size")
        row["attempts"] = record.get("attempts")
        errors = record.get("errors") or []
        row["error"] = errors[-1]["error"] if status == "errored" and errors else ""
        row["run_dir"] = str(run_dir)
        rows.append(row)
    sizes = {(r["k"], r["variant"]): r["parameters"] for r in rows if r["parameters"] is not None}
    for r in rows:  # same (k, variant) -> same size: fill in trials that never got that far
        if r["parameters"] is None:
            r["parameters"] = sizes.get((r["k"], r["variant"]))
    return rows


def best_row(rows: Sequence[dict[str, Any]], metric: str, mode: str, scope: str) -> dict[str, Any] | None:
    """The best trial by its final (``scope=last``) or best-ever (``scope=all``) metric."""
    key = f"{metric}_{'final' if scope == 'last' else 'best'}"
    scored = [r for r in rows if isinstance(r.get(key), int | float) and not math.isnan(r[key])]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r[key])


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


def to_markdown(rows: Sequence[dict[str, Any]], header: str) -> str:
    cols = [c for c in (rows[0] if rows else {}) if c != "run_dir"]
    lines = [header, ""]
    if rows:
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r[c]).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_results(rows: Sequence[dict[str, Any]], out_dir: Path, metric: str, swept: Sequence[str],
                 log_scale: Sequence[str] = ()) -> list[Path]:
    """``<metric>_vs_<option>.png`` for temperature, alpha, k, other numeric swept options, and parameters.

    Filled dots: final metric; open circles: best on dev; trials without a metric are left out.
    Returns the written files ([] when matplotlib is not installed: ``pip install dist-peakd[plots]``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[dist-peakd] matplotlib is not installed: no sweep plots (pip install 'dist-peakd[plots]')",
              flush=True)
        return []
    xs = list(PLOTTED_OPTIONS)
    for name in swept:
        values = [r.get(name) for r in rows]
        if name not in xs and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            xs.append(name)
    xs.append("parameters")
    files = []
    for x in xs:
        fig, ax = plt.subplots(figsize=(5, 3.6), dpi=100)
        for which, style in (("final", dict(marker="o")), ("best", dict(marker="o", facecolors="none"))):
            pts = [(r[x], r[f"{metric}_{which}"]) for r in rows
                   if isinstance(r.get(x), int | float) and isinstance(r.get(f"{metric}_{which}"), int | float)]
            if pts:
                kw = {"edgecolors": "C0"} if which == "best" else {"color": "C0"}
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=f"{metric} ({which})", **style, **kw)
        if x in log_scale:
            ax.set_xscale("log")
        ax.set_xlabel("student parameters" if x == "parameters" else x)
        ax.set_ylabel(f"dev {metric}")
        ax.set_title(f"{metric} vs {x}")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{metric}_vs_{x}.png"
        fig.savefig(path)
        plt.close(fig)
        files.append(path)
    return files
