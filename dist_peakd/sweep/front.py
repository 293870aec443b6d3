"""The compression front: candidate students (dev metric on their exported graph, latency, size), the
non-dominated ones, the one chosen under a budget, and the trial that misses it least.

A *point* is a mapping with at least ``metric`` (the task's main dev metric, higher is better),
``latency_ms`` and ``size_mb`` (lower is better). ``a`` dominates ``b`` when it is no worse on all three
and better on at least one; the front is every point no other point dominates. Two identical points do
not dominate each other: both stay on the front.

Budgets (:class:`Budget`): ``max_metric_drop`` in **points** of the main metric (1 point = 0.01: F1
0.8459 -> 0.8259 is a drop of 2.0 points) below the teacher's dev value, ``max_latency_ms``, ``max_size_mb``;
``None`` = no limit. Among the points meeting every budget the ``objective`` picks: ``latency`` the fastest,
``size`` the smallest, ``metric`` the most accurate (ties broken by the other two, then by the trial name).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

OBJECTIVES = ("latency", "size", "metric")
#: The tie-break order of each objective: (key, sign) with sign -1 for "higher is better".
_ORDER = {"latency": (("latency_ms", 1), ("metric", -1), ("size_mb", 1)),
          "size": (("size_mb", 1), ("metric", -1), ("latency_ms", 1)),
          "metric": (("metric", -1), ("latency_ms", 1), ("size_mb", 1))}


@dataclass(frozen=True)
class Budget:
    """What the chosen student must meet (None: no limit) and what it optimises among those that do."""

    max_metric_drop: float | None = None   # points of the main metric below the teacher's
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    objective: str = "latency"

    def describe(self) -> str:
        parts = [f"metric drop <= {self.max_metric_drop:g} points" if self.max_metric_drop is not None else None,
                 f"latency <= {self.max_latency_ms:g} ms" if self.max_latency_ms is not None else None,
                 f"size <= {self.max_size_mb:g} MB" if self.max_size_mb is not None else None]
        limits = ", ".join(p for p in parts if p) or "no limits"
        return f"{limits}; objective: {self.objective}"


def dominates(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """``a`` is no worse than ``b`` on metric, latency and size, and strictly better on one."""
    no_worse = a["metric"] >= b["metric"] and a["latency_ms"] <= b["latency_ms"] and a["size_mb"] <= b["size_mb"]
    better = a["metric"] > b["metric"] or a["latency_ms"] < b["latency_ms"] or a["size_mb"] < b["size_mb"]
    return no_worse and better


def pareto_front(points: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The points no other point dominates, in their given order (identical points all stay)."""
    return [p for p in points if not any(dominates(q, p) for q in points if q is not p)]


def drop_points(metric: float, teacher: float | None) -> float | None:
    """How far ``metric`` is below the teacher's, in points (negative: above it)."""
    return None if teacher is None else round(100.0 * (teacher - metric), 6)


def misses(point: Mapping[str, Any], budget: Budget, teacher: float | None) -> dict[str, float]:
    """By how much ``point`` misses each budget it misses (``{"metric_drop_points": 1.3, "latency_ms": 0.4}``:
    the excess over the limit); empty when it meets all of them. Without the teacher's metric a metric-drop
    budget cannot be checked and counts as missed by ``inf``."""
    out: dict[str, float] = {}
    if budget.max_metric_drop is not None:
        drop = drop_points(point["metric"], teacher)
        if drop is None:
            out["metric_drop_points"] = float("inf")
        elif drop > budget.max_metric_drop:
            out["metric_drop_points"] = round(drop - budget.max_metric_drop, 6)
    if budget.max_latency_ms is not None and point["latency_ms"] > budget.max_latency_ms:
        out["latency_ms"] = round(point["latency_ms"] - budget.max_latency_ms, 6)
    if budget.max_size_mb is not None and point["size_mb"] > budget.max_size_mb:
        out["size_mb"] = round(point["size_mb"] - budget.max_size_mb, 6)
    return out


def _rank_key(point: Mapping[str, Any], objective: str) -> tuple[Any, ...]:
    return (*(sign * point[key] for key, sign in _ORDER[objective]), str(point.get("name", "")))


def choose(points: Sequence[Mapping[str, Any]], budget: Budget, teacher: float | None
           ) -> tuple[Mapping[str, Any] | None, list[Mapping[str, Any]]]:
    """``(chosen, feasible)``: the points meeting every budget and the best of them by the objective
    (None when none does)."""
    if budget.objective not in OBJECTIVES:
        raise ValueError(f"objective {budget.objective!r} is not one of {list(OBJECTIVES)}")
    feasible = [p for p in points if not misses(p, budget, teacher)]
    if not feasible:
        return None, []
    return min(feasible, key=lambda p: _rank_key(p, budget.objective)), feasible


def _limit(budget: Budget, key: str) -> float | None:
    return {"metric_drop_points": budget.max_metric_drop, "latency_ms": budget.max_latency_ms,
            "size_mb": budget.max_size_mb}[key]


def closest(points: Sequence[Mapping[str, Any]], budget: Budget, teacher: float | None
            ) -> tuple[Mapping[str, Any], dict[str, float]] | None:
    """The point missing the budget least (the sum over budgets of its excess relative to the limit; a
    zero limit counts the excess itself; ties: the better by the objective) and its misses; None without
    points."""
    if not points:
        return None

    def relative(p: Mapping[str, Any]) -> tuple[Any, ...]:
        total = 0.0
        for key, excess in misses(p, budget, teacher).items():
            limit = _limit(budget, key)
            total += excess / limit if limit else excess
        return (total, *_rank_key(p, budget.objective))

    best = min(points, key=relative)
    return best, misses(best, budget, teacher)


def describe_misses(missed: Mapping[str, float], budget: Budget) -> str:
    """``metric drop 3.10 points (limit 2; over by 1.10), latency ...``."""
    words = {"metric_drop_points": ("metric drop", "points"), "latency_ms": ("latency", "ms"),
             "size_mb": ("size", "MB")}
    parts = []
    for key, excess in missed.items():
        label, unit = words[key]
        limit = _limit(budget, key)
        parts.append(f"{label} over the limit of {limit:g} {unit} by {excess:.2f} {unit}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------ table
COLUMNS = ("name", "student", "temperature", "alpha", "precision", "metric", "drop_points", "gain_kept",
           "latency_ms", "size_mb")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def front_table(front: Sequence[Mapping[str, Any]], metric_name: str, chosen: Mapping[str, Any] | None = None
                ) -> str:
    """The front as a Markdown table, sorted by latency (the chosen point's name in bold)."""
    header = [c if c != "metric" else f"{metric_name} (graph)" for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in sorted(front, key=lambda q: (q["latency_ms"], -q["metric"], str(q.get("name", "")))):
        cells = [_cell(p.get(c)) for c in COLUMNS]
        if chosen is not None and p.get("name") == chosen.get("name"):
            cells[0] = f"**{cells[0]}** (chosen)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str, allow_nan=True)
