"""PNG plots of a sweep's metric over its swept options (matplotlib, optional: ``pip install dist-peakd[plots]``).

* two discrete swept options (a 2-D grid, e.g. temperature x alpha): one heatmap,
  ``<metric>_heatmap_<a>_x_<b>.png``, cells = the metric (mean over repeats; an early-stopped trial's
  cell says at which step), the best cell outlined;
* otherwise: ``<metric>_vs_<option>.png`` for each swept option (filled dots: final metric; open circles:
  best on dev; the best trial ringed in red). Integer options get integer ticks (a discrete option: a tick
  per value), text/bool options one position per value, ``log_scale`` options a log axis;
* when ``k`` or ``variant`` is swept, also ``<metric>_vs_parameters.png`` (the student's size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import console

#: At most this many values for an option to count as discrete when the caller does not say.
MAX_DISCRETE = 12


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _values(rows: Sequence[dict[str, Any]], name: str) -> list[Any]:
    seen: list[Any] = []
    for r in rows:
        if r.get(name) is not None and r.get(name) not in seen:
            seen.append(r.get(name))
    return sorted(seen, key=lambda v: (str(type(v)), v)) if all(_number(v) for v in seen) else seen


def is_discrete(rows: Sequence[dict[str, Any]], name: str) -> bool:
    """Guess: text/bool/integer values, or few values that repeat across trials (a grid axis or a choice)."""
    values = [r.get(name) for r in rows if r.get(name) is not None]
    distinct = _values(rows, name)
    if not values or len(distinct) > MAX_DISCRETE:
        return False
    return not all(isinstance(v, float) for v in values) or len(distinct) < len(values)


def _best(rows: Sequence[dict[str, Any]], metric: str, best_trial: str | None) -> dict[str, Any] | None:
    if best_trial is not None:
        return next((r for r in rows if r.get("trial") == best_trial), None)
    scored = [r for r in rows if _number(r.get(f"{metric}_final"))]
    return max(scored, key=lambda r: r[f"{metric}_final"]) if scored else None


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.info("matplotlib is not installed: no sweep plots (pip install 'dist-peakd[plots]')")
        return None
    return plt


def plot_results(rows: Sequence[dict[str, Any]], out_dir: Path, metric: str, swept: Sequence[str],
                 log_scale: Sequence[str] = (), *, best_trial: str | None = None,
                 discrete: Sequence[str] | None = None, scope: str = "last") -> list[Path]:
    """The sweep's plots (module doc); returns the files written ([] without matplotlib).

    ``best_trial``: the trial to highlight (default: the highest final metric); ``discrete``: the swept
    options that take a finite set of values (default: :func:`is_discrete`); ``scope``: the heatmap's cells
    show the final (``last``) or best-on-dev (``all``) metric.
    """
    plt = _pyplot()
    if plt is None:
        return []
    shown = [name for name in swept if _values(rows, name)]
    discrete = [n for n in shown if (n in discrete if discrete is not None else is_discrete(rows, n))]
    best = _best(rows, metric, best_trial)
    files = []
    if len(shown) == 2 and set(shown) <= set(discrete):
        files.append(_heatmap(plt, rows, out_dir, metric, shown, best, scope))
    else:
        for name in shown:
            files.append(_scatter(plt, rows, out_dir, metric, name, best, name in discrete, name in log_scale))
    sizes = {r.get("parameters") for r in rows if r.get("parameters") is not None}
    if ({"k", "variant"} & set(swept)) and len(sizes) > 1:
        files.append(_scatter(plt, rows, out_dir, metric, "parameters", best, False, False))
    return files


@dataclass(frozen=True)
class XAxis:
    """How an option's axis is drawn: ``kind`` is ``category`` (one position per value), ``ticks`` (one
    integer tick per value), ``integer`` (integer ticks only), ``log`` or ``linear``."""

    kind: str
    positions: dict[Any, float] | None = None   # category: value -> position
    ticks: tuple[float, ...] = ()
    labels: tuple[str, ...] = ()

    def x(self, value: Any) -> float | None:
        if self.positions is not None:
            return self.positions.get(value)
        return float(value) if _number(value) else None


def x_axis(rows: Sequence[dict[str, Any]], name: str, discrete: bool, log: bool) -> XAxis:
    """The axis of option ``name``: text/bool values by position; integer values with integer ticks."""
    values = _values(rows, name)
    if not all(_number(v) for v in values):
        positions = {v: float(i) for i, v in enumerate(values)}
        return XAxis("category", positions, tuple(positions.values()), tuple(str(v) for v in values))
    if log:
        return XAxis("log")
    integer = all(float(v).is_integer() for v in values)
    if integer and discrete:
        return XAxis("ticks", None, tuple(float(v) for v in values), tuple(str(int(v)) for v in values))
    if integer and all(isinstance(v, int) for v in values):
        return XAxis("integer")
    return XAxis("linear")


def _scatter(plt: Any, rows: Sequence[dict[str, Any]], out_dir: Path, metric: str, x: str,
             best: dict[str, Any] | None, discrete: bool, log: bool) -> Path:
    from matplotlib.ticker import MaxNLocator

    axis = x_axis(rows, x, discrete, log)
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=100)
    for which in ("final", "best"):
        pts = [(axis.x(r.get(x)), r[f"{metric}_{which}"]) for r in rows
               if axis.x(r.get(x)) is not None and _number(r.get(f"{metric}_{which}"))]
        if pts:
            kw = {"color": "C0"} if which == "final" else {"facecolors": "none", "edgecolors": "C0"}
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{metric} ({which})", **kw)
    if best is not None and axis.x(best.get(x)) is not None and _number(best.get(f"{metric}_final")):
        ax.scatter([axis.x(best.get(x))], [best[f"{metric}_final"]], s=220, facecolors="none", edgecolors="red",
                   linewidths=2, label=f"best: {best.get('trial')}")
    if axis.kind in ("category", "ticks"):
        ax.set_xticks(list(axis.ticks), list(axis.labels))
    if axis.kind == "category":
        ax.set_xlim(-0.5, len(axis.ticks) - 0.5)
    elif axis.kind == "log":
        ax.set_xscale("log")
    elif axis.kind == "integer":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("student parameters" if x == "parameters" else x)
    ax.set_ylabel(f"dev {metric}")
    ax.set_title(f"{metric} vs {x}")
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / f"{metric}_vs_{x}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def heatmap_cells(rows: Sequence[dict[str, Any]], metric: str, axes: Sequence[str],
                  scope: str = "last") -> tuple[list[Any], list[Any], list[list[float]]]:
    """(values of axes[0] = heatmap rows, values of axes[1] = columns, mean metric per cell; NaN: none)."""
    key = f"{metric}_{'final' if scope == 'last' else 'best'}"
    ys, xs = _values(rows, axes[0]), _values(rows, axes[1])
    grid = []
    for y in ys:
        line = []
        for x in xs:
            vals = [r[key] for r in rows if r.get(axes[0]) == y and r.get(axes[1]) == x and _number(r.get(key))]
            line.append(sum(vals) / len(vals) if vals else float("nan"))
        grid.append(line)
    return ys, xs, grid


def _heatmap(plt: Any, rows: Sequence[dict[str, Any]], out_dir: Path, metric: str, axes: Sequence[str],
             best: dict[str, Any] | None, scope: str) -> Path:
    import numpy as np
    from matplotlib.patches import Rectangle

    ys, xs, grid = heatmap_cells(rows, metric, axes, scope)
    data = np.ma.masked_invalid(np.array(grid, dtype=float))
    fig, ax = plt.subplots(figsize=(1.4 * len(xs) + 2.6, 1.0 * len(ys) + 1.8), dpi=100)
    image = ax.imshow(data, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=f"dev {metric} ({'final' if scope == 'last' else 'best'})")
    finite = data.compressed()
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i, line in enumerate(grid):
        for j, value in enumerate(line):
            text = "-" if math.isnan(value) else f"{value:.4f}"
            stops = [r.get("stopped_at_step") for r in rows if r.get("status") == "stopped"
                     and r.get(axes[0]) == ys[i] and r.get(axes[1]) == xs[j]]
            if stops:
                text += "\nstopped" + (f" at {stops[0]}" if stops[0] is not None else "")
            color = "black" if not math.isnan(value) and value > middle else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color=color)
    if best is not None and best.get(axes[0]) in ys and best.get(axes[1]) in xs:
        i, j = ys.index(best[axes[0]]), xs.index(best[axes[1]])
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3))
        ax.set_title(f"{metric}: {axes[0]} x {axes[1]} (best outlined)")
    else:
        ax.set_title(f"{metric}: {axes[0]} x {axes[1]}")
    ax.set_xticks(range(len(xs)), [_label(v) for v in xs])
    ax.set_yticks(range(len(ys)), [_label(v) for v in ys])
    ax.set_xlabel(axes[1])
    ax.set_ylabel(axes[0])
    fig.tight_layout()
    path = out_dir / f"{metric}_heatmap_{axes[0]}_x_{axes[1]}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _label(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4g}"
    return str(value)
