"""The compression front as a PNG (matplotlib, optional as for the sweep plots): every candidate's dev
metric (on its exported graph) against its latency, marker area by size; the front joined and filled, the
chosen point ringed, the front's points named, the budgets, the teacher and the trivial baseline as lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .plots import _pyplot


def plot_front(points: Sequence[Mapping[str, Any]], front: Sequence[Mapping[str, Any]], out: Path, metric: str,
               chosen: Mapping[str, Any] | None = None, lines: Mapping[str, float | None] | None = None,
               max_latency_ms: float | None = None) -> Path | None:
    """Write ``out`` (PNG); None when matplotlib is missing or there is nothing to plot. ``lines``:
    horizontal reference lines by label (teacher, trivial baseline, the budget's lowest metric)."""
    plt = _pyplot() if points else None
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    biggest = max(p["size_mb"] for p in points) or 1.0
    on_front = {id(p) for p in front}
    for group, style in ((False, dict(facecolors="none", edgecolors="grey")), (True, dict(color="tab:blue"))):
        chosen_pts = [p for p in points if (id(p) in on_front) == group]
        if chosen_pts:
            ax.scatter([p["latency_ms"] for p in chosen_pts], [p["metric"] for p in chosen_pts],
                       s=[30 + 170 * p["size_mb"] / biggest for p in chosen_pts],
                       label="front (non-dominated)" if group else "dominated", zorder=3, **style)
    ordered = sorted(front, key=lambda p: p["latency_ms"])
    ax.plot([p["latency_ms"] for p in ordered], [p["metric"] for p in ordered], color="tab:blue", lw=1, zorder=2)
    for p in front:  # the dominated ones unlabelled (they crowd at equal metric)
        ax.annotate(f"{p.get('student', '')} {p.get('precision', '')}", (p["latency_ms"], p["metric"]),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    if chosen is not None:
        ax.scatter([chosen["latency_ms"]], [chosen["metric"]], s=260, facecolors="none", edgecolors="red",
                   linewidths=2, label="chosen", zorder=4)
    colors = iter(("black", "tab:orange", "tab:green", "tab:purple"))
    for label, value in (lines or {}).items():
        if value is not None:
            ax.axhline(value, ls="--", lw=1, color=next(colors, "grey"), label=label)
    if max_latency_ms is not None:
        ax.axvline(max_latency_ms, ls=":", lw=1, color="red", label="latency budget")
    ax.set_xlabel("latency (ms, median; onnxruntime on this machine)")
    ax.set_ylabel(f"dev {metric} (exported graph)")
    ax.set_title("compression front (marker area: graph size)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
