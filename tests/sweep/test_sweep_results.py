"""Sweep reporting without Ray: trial statuses (incl. "stopped at step N (ASHA)"), tables with the swept
options only, identical-metric notes (on the recorded MRPC sweep), budget line, heatmap and axes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dist_peakd.sweep.naming import find_trial_dir, trial_dirname
from dist_peakd.sweep.plots import heatmap_cells, is_discrete, plot_results, x_axis
from dist_peakd.sweep.results import (
    TrialState,
    best_row,
    budget_line,
    collect_rows,
    identical_metric_notes,
    progress_line,
    render_report,
    status_text,
    to_csv,
    to_markdown,
)

REPO = Path(__file__).resolve().parents[2]
FIXED = {"k": 2, "variant": "shuffle", "temperature": 10.0, "alpha": 0.7, "beta": 100.0, "lr": 5e-5}


def _summary(f1s: list[float], total_steps: int = 6, **extra) -> dict:
    history = [{"step": 2 * (i + 1), "epoch": 0.0, "f1": v, "accuracy": v - 0.1} for i, v in enumerate(f1s)]
    best = max(history, key=lambda h: h["f1"])
    return {"main_metric": "f1", "final": {"step": history[-1]["step"], "f1": f1s[-1], "accuracy": f1s[-1] - 0.1},
            "best": best, "history": history, "total_steps": total_steps,
            "model_stats": {"parameters": 1000}, **extra}


def _write(run_dir: Path, summary: dict | None = None, record: dict | None = None) -> None:
    run_dir.mkdir(parents=True)
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "trial.json").write_text(json.dumps({"attempts": 1, "errors": [], **(record or {})}))


@pytest.fixture
def sweep(tmp_path):
    """Five trials of a temperature x alpha sweep, one per status (and both folder namings)."""
    cfg = [{"temperature": 2, "alpha": 0.5}, {"temperature": 2, "alpha": 0.9}, {"temperature": 8, "alpha": 0.5},
           {"temperature": 8, "alpha": 0.9}, {"temperature": 4, "alpha": 0.5}]
    ids = [f"ab_{i:05d}" for i in range(5)]
    _write(tmp_path / trial_dirname(ids[0], cfg[0]), _summary([0.5, 0.6, 0.7]))
    _write(tmp_path / trial_dirname(ids[1], cfg[1]), _summary([0.4, 0.45]), {"stopped": {"step": 4, "by": "asha"}})
    _write(tmp_path / f"trial-{ids[2]}")  # ended by Tune without a summary (phase-1 ASHA stop)
    _write(tmp_path / f"trial-{ids[3]}", record={"attempts": 2, "errors": [{"error": "ValueError: boom"}]})
    states = [TrialState(ids[0], "TERMINATED", cfg[0], {"step": 6, "f1": 0.7}),
              TrialState(ids[1], "TERMINATED", cfg[1], {"step": 4, "f1": 0.45}),
              TrialState(ids[2], "TERMINATED", cfg[2], {"step": 2, "f1": 0.55, "best_f1": 0.55,
                                                        "accuracy": 0.45, "training_iteration": 1}),
              TrialState(ids[3], "ERROR", cfg[3], {}),
              TrialState(ids[4], "RUNNING", cfg[4], {})]
    return tmp_path, collect_rows(tmp_path, states, FIXED, ["temperature", "alpha"], "f1", ["f1", "accuracy"])


def test_statuses_and_only_the_swept_options(sweep):
    sweep_dir, rows = sweep
    assert [status_text(r) for r in rows] == ["completed", "stopped at step 4 (ASHA)", "stopped at step 2 (ASHA)",
                                              "errored", "unfinished"]
    assert [r["status"] for r in rows] == ["completed", "stopped", "stopped", "errored", "unfinished"]
    assert rows[0]["trial"] == "trial-ab_00000-temperature=2-alpha=0.5" and rows[2]["trial"] == "trial-ab_00002"
    options = set(rows[0]) - {"trial", "status", "stopped_at_step", "stopped_by", "f1_final", "f1_best",
                              "accuracy_final", "evaluations", "step", "total_steps", "parameters", "workers",
                              "attempts", "error", "run_dir"}
    assert options == {"temperature", "alpha"}  # k, variant, beta, lr are not swept: not in the table
    assert rows[1]["f1_final"] == 0.45 and rows[1]["f1_best"] == 0.45 and rows[1]["step"] == 4
    assert rows[2]["f1_final"] == 0.55 and rows[2]["evaluations"] == 1
    assert rows[3]["error"] == "ValueError: boom" and rows[3]["attempts"] == 2
    assert rows[2]["parameters"] == 1000  # same (k, variant) as the finished trials
    assert best_row(rows, "f1", "max", "last")["trial"] == rows[0]["trial"]
    assert "stopped_at_step" in to_csv(rows).splitlines()[0]


def test_markdown_and_report(sweep):
    sweep_dir, rows = sweep
    md = to_markdown(rows, "## sweep", best_trial=rows[0]["trial"])
    header = next(line for line in md.splitlines() if line.startswith("| trial"))
    assert header.split(" | ")[:4] == ["| trial", "status", "temperature", "alpha"]
    assert "run_dir" not in header and "stopped_at_step" not in header and "beta" not in header
    assert f"| {rows[0]['trial']} **(best)** |" in md and "| stopped at step 4 (ASHA) |" in md
    assert md.count("| trial-") == 5
    report = render_report(rows, "## sweep", metric="f1", swept=["temperature", "alpha"], fixed=FIXED,
                           best_trial=rows[0]["trial"], num_trials=5, plots=[sweep_dir / "f1_heatmap.png"])
    assert "budget: 5 trials x 6 steps = 30 steps; used 12 steps (2 trial(s) stopped early)" in report
    assert "fixed: k=2, variant=shuffle, beta=100, lr=5e-05" in report
    assert "![f1_heatmap](f1_heatmap.png)" in report
    assert budget_line(4, None) == "budget: 4 trials"


def _recorded_sweep() -> list[dict]:
    """The 12 trials of docs/runs/sweep-mrpc12-cpu.md (T in {2, 5, 10} x alpha x k)."""
    text = (REPO / "docs" / "runs" / "sweep-mrpc12-cpu.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| trial-")]
    cols = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| trial |")).split("|")]
    rows = []
    for line in lines:
        cells = dict(zip(cols, (c.strip() for c in line.split("|")), strict=True))
        rows.append({"trial": cells["trial"], "status": cells["status"], "temperature": int(cells["temperature"]),
                     "alpha": float(cells["alpha"]), "k": int(cells["k"]), "f1_final": float(cells["f1_final"]),
                     "f1_best": float(cells["f1_best"]), "accuracy_final": float(cells["accuracy_final"])})
    assert len(rows) == 12
    return rows


def test_identical_metrics_across_a_swept_option_are_pointed_out():
    rows = _recorded_sweep()
    notes = identical_metric_notes(rows, ["temperature", "alpha", "k"], "f1")
    assert notes == ["temperature = 5, 10 give identical f1/accuracy in all 4 cells (alpha x k)"]
    # an option with no effect at all
    flat = [{**r, "f1_final": 0.8, "f1_best": 0.8, "accuracy_final": 0.7} for r in rows if r["k"] == 2]
    notes = identical_metric_notes(flat, ["temperature", "alpha"], "f1")
    assert notes[0] == ("temperature makes no difference: identical f1/accuracy for temperature = 2, 5, 10 "
                        "in all 2 cells (alpha)")
    # a continuous option (every value once) never has a pair to compare
    cont = [{**r, "alpha": 0.3 + 0.01 * i} for i, r in enumerate(rows)]
    assert not any(n.startswith("alpha") for n in identical_metric_notes(cont, ["temperature", "alpha", "k"], "f1"))


def _red_pixels(png: Path) -> int:
    import matplotlib.image

    img = matplotlib.image.imread(str(png))
    return int(((img[..., 0] > 0.9) & (img[..., 1] < 0.2) & (img[..., 2] < 0.2)).sum())


def test_a_2d_grid_gets_a_heatmap_with_the_best_cell_outlined(sweep, tmp_path):
    _, rows = sweep
    grid_rows = [r for r in rows if r["temperature"] in (2, 8)]
    ys, xs, cells = heatmap_cells(grid_rows, "f1", ["temperature", "alpha"])
    assert (ys, xs) == ([2, 8], [0.5, 0.9])
    assert cells[0] == [0.7, 0.45] and cells[1][0] == 0.55 and cells[1][1] != cells[1][1]  # NaN: errored
    out = tmp_path / "plots"
    out.mkdir()
    files = plot_results(grid_rows, out, "f1", ["temperature", "alpha"], best_trial=grid_rows[0]["trial"])
    assert [f.name for f in files] == ["f1_heatmap_temperature_x_alpha.png"]
    assert _red_pixels(files[0]) > 100  # the best cell's outline
    plain = plot_results(grid_rows, out, "f1", ["temperature", "alpha"], best_trial="no-such-trial")
    assert _red_pixels(plain[0]) == 0


def test_other_sweeps_plot_the_metric_per_swept_option(tmp_path):
    rows = [{"trial": f"t{i}", "k": k, "alpha": a, "variant": v, "f1_final": 0.5 + 0.01 * i, "f1_best": 0.6,
             "parameters": 1000 * k} for i, (k, a, v) in enumerate([(1, 0.31, "share"), (2, 0.52, "shuffle"),
                                                                     (1, 0.77, "shuffle"), (2, 0.64, "share")])]
    files = plot_results(rows, tmp_path, "f1", ["k", "alpha", "variant"])
    assert [f.name for f in files] == ["f1_vs_k.png", "f1_vs_alpha.png", "f1_vs_variant.png",
                                       "f1_vs_parameters.png"]
    assert all(_red_pixels(f) > 20 for f in files)  # the best trial ringed in every plot
    k_axis = x_axis(rows, "k", is_discrete(rows, "k"), False)
    assert (k_axis.kind, k_axis.ticks, k_axis.labels) == ("ticks", (1.0, 2.0), ("1", "2"))  # no k = 1.5
    assert x_axis(rows, "alpha", is_discrete(rows, "alpha"), False).kind == "linear"
    variant = x_axis(rows, "variant", True, False)
    assert variant.kind == "category" and variant.labels == ("share", "shuffle") and variant.x("shuffle") == 1.0
    temps = [{"temperature": t} for t in (2.0, 5.0, 2.0, 5.0)]
    assert x_axis(temps, "temperature", is_discrete(temps, "temperature"), False).labels == ("2", "5")
    seeds = [{"beta": b} for b in range(20)]  # randint-like: too many values for a tick each
    assert x_axis(seeds, "beta", is_discrete(seeds, "beta"), False).kind == "integer"
    assert x_axis(rows, "alpha", False, True).kind == "log"
    assert plot_results(rows, tmp_path, "f1", ["alpha"])[0].name == "f1_vs_alpha.png"  # no size plot


def test_trial_names_and_progress_line(tmp_path):
    name = trial_dirname("e4320_00003", {"temperature": 5.0, "alpha": 0.7, "variant": "share/x y", "use_ptp": True})
    assert name == "trial-e4320_00003-temperature=5-alpha=0.7-variant=share_x_y-use_ptp=true"
    assert len(trial_dirname("x_00001", {f"option{i}": 0.123456 for i in range(30)})) <= 120
    (tmp_path / name).mkdir()
    assert find_trial_dir(tmp_path, "e4320_00003") == tmp_path / name
    assert find_trial_dir(tmp_path, "e4320_0000") == tmp_path / "trial-e4320_0000"  # no prefix match
    line = progress_line(3, 4, name, {"temperature": 5.0, "alpha": 0.7}, "stopped at step 4 (ASHA)", "f1", 0.8211, 4)
    assert line == f"[dist-peakd] trial 3/4 {name} (temperature=5, alpha=0.7): stopped at step 4 (ASHA), f1 0.8211"
    assert re.search(r": completed at step 6, f1 0\.8000$",
                     progress_line(1, 4, "t", {}, "completed", "f1", 0.8, 6))
