"""``dist-peakd compress``: the Pareto front and the choice under a budget on hand-made points; option
refusals before any work; one tiny search (2 trials: an SPS and a plain student) whose front is
non-dominated and whose chosen student is exported and carded, then the same search re-measured under a
budget nothing meets (reported, exit 0, nothing exported). Latencies are produced, never compared with a
threshold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reliab_helpers import run_cli

from dist_peakd.sweep.front import Budget, choose, closest, dominates, misses, pareto_front


def _p(name, metric, latency, size):
    return {"name": name, "metric": metric, "latency_ms": latency, "size_mb": size}


POINTS = [_p("a", 0.80, 5.0, 50.0), _p("b", 0.82, 8.0, 50.0), _p("c", 0.79, 6.0, 60.0),  # c: dominated by a
          _p("d", 0.85, 20.0, 100.0), _p("e", 0.80, 5.0, 25.0),                           # e dominates a
          _p("f", 0.85, 20.0, 100.0)]                                                    # f ties d


def test_pareto_front_keeps_non_dominated_points_and_ties():
    front = [p["name"] for p in pareto_front(POINTS)]
    assert front == ["b", "d", "e", "f"]  # a (by e) and c (by a, e) are dominated; d and f tie: both stay
    assert dominates(POINTS[4], POINTS[0]) and not dominates(POINTS[0], POINTS[4])
    assert not dominates(POINTS[3], POINTS[5]) and not dominates(POINTS[5], POINTS[3])
    for p in pareto_front(POINTS):
        assert not any(dominates(q, p) for q in POINTS)


@pytest.mark.parametrize("objective, want", [("latency", "e"), ("size", "e"), ("metric", "b")])
def test_the_objective_picks_among_points_meeting_every_budget(objective, want):
    budget = Budget(max_metric_drop=4.0, max_latency_ms=10.0, objective=objective)  # teacher 0.84: metric >= 0.80
    chosen, feasible = choose(POINTS, budget, teacher=0.84)
    assert sorted(p["name"] for p in feasible) == ["a", "b", "e"]
    assert chosen["name"] == want


def test_latency_ties_are_broken_by_metric_then_size():
    pts = [_p("x", 0.80, 5.0, 30.0), _p("y", 0.81, 5.0, 40.0), _p("z", 0.81, 5.0, 35.0)]
    assert choose(pts, Budget(objective="latency"), teacher=None)[0]["name"] == "z"


def test_a_budget_nothing_meets_names_the_closest_and_its_misses():
    budget = Budget(max_metric_drop=1.0, max_latency_ms=10.0, max_size_mb=200.0)
    chosen, feasible = choose(POINTS, budget, teacher=0.86)
    assert chosen is None and feasible == []
    point, missed = closest(POINTS, budget, teacher=0.86)
    # relative misses: b 3 points over / 1 = 3; d (and f, its tie) 10 ms over / 10 = 1; a, c, e >= 5
    assert point["name"] == "d" and missed == {"latency_ms": 10.0}
    tight = Budget(max_metric_drop=1.0, max_latency_ms=4.0)
    assert misses(_p("g", 0.845, 4.5, 10.0), tight, 0.86) == {"metric_drop_points": 0.5, "latency_ms": 0.5}
    assert misses(_p("h", 0.9, 1.0, 1.0), Budget(max_metric_drop=1.0), None) == {"metric_drop_points": float("inf")}


# ------------------------------------------------------------------------------------ refusals
TINY = dict(task="mrpc", max_length=32, max_train_examples=32, max_eval_examples=24, batch_size=8,
            eval_batch_size=24, log_every_steps=2, epochs=1, lr=1e-3, seed=0, teacher_epochs=1, teacher_lr=1e-3,
            use_ptp=False, rungs=1, latency_runs=2, latency_warmup=0, latency_threads=1, num_cpus=2,
            shapes="sps-k1-shuffle,plain-d1-bottom", search="grid", space='{"temperature": 2, "alpha": 0.5}')


def _argv(out: Path, tiny_bert: Path, glue_dir: Path, **kw) -> list[str]:
    values = dict(TINY, output_dir=str(out), glue_dir=str(glue_dir), backbone=str(tiny_bert),
                  cache_dir=str(out / "tok"), **kw)
    return ["compress", *(f"--{k}={v}" for k, v in values.items())]


@pytest.mark.parametrize("bad, message", [
    (dict(shapes="sps-2"), "option shapes: 'sps-2'"),
    (dict(shapes="sps-k9-shuffle"), "option shapes: 'sps-k9-shuffle' needs 9 layers"),
    (dict(precisions="fp16"), "option precisions: 'fp16'"),
    (dict(latency_shape="1x128"), "option latency_shape: '1x128'"),
    (dict(objective="speed"), "option objective: 'speed'"),
    (dict(max_metric_drop=-1), "option max_metric_drop"),
    (dict(student="plain", depth=2), "option student: 'plain': compress takes the student's kind"),
    (dict(space='{"k": [1, 2]}'), "option space: 'k' cannot be swept by compress"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, tiny_bert, glue_dir, capsys, bad, message):
    out = tmp_path / "runs"
    code, _, err = run_cli(_argv(out, tiny_bert, glue_dir, **bad), capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


# ------------------------------------------------------------------------------------ a tiny search
@pytest.fixture(scope="module")
def compressed(tmp_path_factory, tiny_bert, glue_dir):
    """2 trials (sps k=1, plain d=1) on a 32-row MRPC slice; no budget: the fastest candidate is chosen."""
    out = tmp_path_factory.mktemp("compress")
    code, _, _ = run_cli(_argv(out, tiny_bert, glue_dir, sweep_name="c"))
    folder = out / "mrpc" / "sweep-c"
    return code, folder, json.loads((folder / "front.json").read_text()), out


@pytest.mark.slow
def test_compress_returns_a_non_dominated_front_and_exports_the_chosen(compressed):
    code, folder, result, _ = compressed
    assert code == 0
    points = result["points"]
    assert len(points) == 4  # 2 trials x (fp32, int8)
    assert {p["student"] for p in points} == {"sps-k1-shuffle", "plain-d1-bottom"}
    front = [p for p in points if p["name"] in result["front"]]
    assert front and all(not any(dominates(q, p) for q in points) for p in front)
    assert all(any(dominates(q, p) for q in points) for p in points if p["name"] not in result["front"])
    chosen = result["chosen"]
    assert chosen["name"] in result["front"]
    assert chosen["latency_ms"] == min(p["latency_ms"] for p in points)  # objective latency, no limits
    for p in points:  # metric measured on the graph, baseline beside it
        assert 0.0 <= p["metric"] <= 1.0 and p["size_mb"] > 0 and p["latency"]["threads"] == 1
        assert "gain_kept" in p and result["baseline"]["metrics"]["f1"] >= 0
    graph = "model_int8.onnx" if chosen["precision"] == "int8" else "model.onnx"
    assert (folder / "chosen" / "onnx" / graph).is_file()
    assert (folder / "chosen" / "hf" / "config.json").is_file()
    for sub in ("onnx", "hf"):
        card = (folder / "chosen" / sub / "README.md").read_text()
        assert "## Compression front" in card and f"**{chosen['name']}** (chosen)" in card
        assert "## Measured latency" in card
    md = (folder / "front.md").read_text()
    assert "Trivial baseline" in md or "trivial baseline" in md
    assert not list(folder.glob("trial-*/onnx-measure"))  # the measuring exports are cleaned up


@pytest.mark.slow
def test_a_budget_nothing_meets_is_reported_and_exports_nothing(compressed, tiny_bert, glue_dir, capsys):
    _, folder, _, out = compressed
    # the same search resumed (its trials are not run again) and measured under an impossible latency budget
    code, stdout, err = run_cli(_argv(out, tiny_bert, glue_dir, sweep_name="c", resume=True, max_latency_ms=1e-6),
                                capsys)
    assert code == 0, err
    result = json.loads((folder / "front.json").read_text())
    assert result["chosen"] is None and result["exported"] is None
    assert result["closest"]["name"] in {p["name"] for p in result["points"]}
    assert "latency_ms" in result["closest"]["misses"]
    assert "Nothing meets the budget" in (folder / "front.md").read_text()
    assert "Nothing meets the budget" in stdout + err and "Closest" in stdout + err
    assert not (folder / "chosen").exists()
    assert stdout.count("measured before under the same conditions") == 2  # the graphs were not measured again


def test_the_closest_among_equal_misses_is_the_best_by_the_objective():
    # every point misses the metric budget by the same amount (all at the same metric): the fastest is named
    pts = [_p("a", 0.81, 80.0, 60.0), _p("b", 0.81, 20.0, 60.0), _p("c", 0.81, 40.0, 15.0)]
    assert closest(pts, Budget(max_metric_drop=3.0), teacher=0.8459)[0]["name"] == "b"
    assert closest(pts, Budget(max_metric_drop=3.0, objective="size"), teacher=0.8459)[0]["name"] == "c"
