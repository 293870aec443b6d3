"""Ray Tune sweeps: space syntax, a 4-trial ASHA sweep, a failing trial on Ray Train workers, interrupt + resume.

The sweeps share one output folder, so the teacher, its cache and the PTP encoders are built by the
first sweep only; one local Ray instance (2 CPUs) serves the whole module.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
from pathlib import Path

import numpy as np
import pytest

from dist_peakd.config import build_options
from dist_peakd.engine import ConfigError
from dist_peakd.stages.distill import DistillOptions
from dist_peakd.stages.sweep import SweepOptions
from dist_peakd.stages.sweep import run as run_sweep
from dist_peakd.sweep.space import grid_size, load_space, parse_space, to_tune
from dist_peakd.sweep.trainable import EvalReporter, coerce_config

SLICE = dict(task="mrpc", max_length=40, max_train_examples=48, max_eval_examples=32, batch_size=8,
             eval_batch_size=32, log_every_steps=2, eval_every_steps=2, epochs=1, lr=1e-3, seed=0)
VALID = {"temperature", "alpha", "beta", "k", "variant", "lr", "seed", "use_ptp", "task", "max_length"}


def _when(iso: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(iso)


def _rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "results.csv") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------- space syntax
def test_space_syntax_lists_distributions_and_files(tmp_path):
    raw = load_space('{"temperature": [2, 5, 10], "alpha": {"uniform": [0.3, 0.9]}, "k": [2, 3]}', None)
    grid = parse_space(raw, VALID, "grid")
    assert (grid["temperature"].kind, grid["alpha"].kind, grid["k"].kind) == ("grid", "uniform", "grid")
    assert grid_size(grid) == 6 and grid["k"].candidates() == [2, 3]
    rand = parse_space(raw, VALID, "random")
    assert rand["temperature"].kind == "choice" and grid_size(rand) == 1
    tune_space = to_tune(grid)
    assert tune_space["temperature"] == {"grid_search": [2, 5, 10]}
    assert 0.3 <= tune_space["alpha"].sample() <= 0.9
    assert 1e-5 <= to_tune(parse_space({"lr": {"loguniform": [1e-5, 1e-4]}}, VALID, "grid"))["lr"].sample() <= 1e-4
    # a file (YAML), then --space on top; fire hands over a dict
    (tmp_path / "space.yaml").write_text("temperature: [1, 2]\nbeta: {choice: [0, 100]}\nvariant: share\n")
    merged = load_space({"temperature": [4]}, str(tmp_path / "space.yaml"))
    dims = parse_space(merged, VALID, "grid")
    assert dims["temperature"].candidates() == [4] and dims["beta"].kind == "choice"
    assert dims["variant"].kind == "fixed" and dims["variant"].candidates() == ["share"]


@pytest.mark.parametrize("space, search, message", [
    ({"temprature": [1]}, "grid", "'temprature' is not an option of the distillation stage"),
    ({"max_length": [32, 64]}, "grid", "'max_length' cannot be swept"),
    ({"k": {"uniform": [1, 3]}}, "grid", "k must be a list, choice or grid"),
    ({"alpha": {"normal": [0, 1]}}, "grid", "is not one of"),
    ({"alpha": {"uniform": [0.9, 0.3]}}, "grid", "needs low < high"),
    ({"lr": {"loguniform": [0, 1]}}, "grid", "loguniform needs low > 0"),
    ({"alpha": []}, "grid", "an empty list"),
    ({"seed": {"grid": [0, 1]}}, "optuna", "grid axes are not supported by search=optuna"),
])
def test_space_errors_name_the_option(space, search, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(space, VALID, search)


def test_sweep_options_are_checked_up_front(tmp_path):
    base = dict(output_dir=str(tmp_path), space={"temperature": [2]})
    for bad, message in ((dict(metric="mcc"), "option metric"), (dict(scheduler="pbt"), "option scheduler"),
                         (dict(workers_per_trial=2, trial_backend="function"), "option trial_backend"),
                         (dict(space='{"k": [1, 2]}', ptp_dir="x"), "option ptp_dir"),
                         (dict(space="[1, 2]"), "must be a mapping"), (dict(sweep_name="a/b"), "option sweep_name")):
        with pytest.raises(ConfigError, match=message):
            build_options(SweepOptions, **{**base, **bad})
    try:
        import optuna  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install optuna"):
            build_options(SweepOptions, **base, search="optuna")
    opts = build_options(SweepOptions, **base, preset="cpu-fast")
    assert opts.max_length == 64 and opts.resolved_metric() == "f1" and opts.backend() == "function"
    assert opts.samples() == 1 and build_options(SweepOptions, **base, search="random").samples() == 8


def test_sweep_is_a_cli_command():
    from dist_peakd.cli import stage_commands

    doc = stage_commands()["sweep"].__doc__
    for option in ("--space=", "--space_file=", "--num_samples=", "--search='grid'", "--scheduler='asha'",
                   "--workers_per_trial=1", "--max_failures=1", "--address=None", "--resume=False", "--ptp_epochs="):
        assert option in doc, option


def test_trial_values_and_reporter():
    assert coerce_config({"k": np.int64(2), "temperature": 4, "alpha": np.float64(0.5), "seed": 1.0},
                         DistillOptions) == \
        {"k": 2, "temperature": 4.0, "alpha": 0.5, "seed": 1}
    reports: list[dict] = []
    rep = EvalReporter("f1", "max", reports.append, {"world_size": 1})
    rep(2, {"f1": 0.5, "accuracy": 0.6})
    rep(4, {"f1": 0.4, "accuracy": 0.7})
    assert [r["best_f1"] for r in reports] == [0.5, 0.5] and reports[1]["step"] == 4
    rep.finish({"final": {"step": 4, "f1": 0.4}, "best": {"f1": 0.5}})  # already reported: nothing more
    assert len(reports) == 2


# ------------------------------------------------------------------------------------- real sweeps
@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance (2 CPUs) for every sweep of this module."""
    from dist_peakd.sweep.cluster import init_ray, shutdown_ray

    started = init_ray(None, num_cpus=2)
    yield
    shutdown_ray(started)


@pytest.fixture(scope="module")
def sweep_out(tmp_path_factory):
    return tmp_path_factory.mktemp("sweeps")


def _opts(out: Path, tiny_bert: Path, glue_dir: Path, **kw) -> SweepOptions:
    values = dict(SLICE, output_dir=str(out), glue_dir=str(glue_dir), backbone=str(tiny_bert),
                  cache_dir=str(out / "tok"), teacher_epochs=1, ptp_epochs=1, teacher_lr=1e-3, ptp_lr=1e-3)
    values.update(kw)
    return build_options(SweepOptions, **values)


@pytest.fixture(scope="module")
def asha_sweep(ray_cluster, sweep_out, tiny_bert, glue_dir):
    opts = _opts(sweep_out, tiny_bert, glue_dir, sweep_name="asha", scheduler="asha",
                 space={"temperature": [2, 8], "k": [1, 2], "alpha": {"uniform": [0.3, 0.9]}})
    return run_sweep(opts)


@pytest.mark.slow
def test_asha_sweep_over_temperature_alpha_and_depth(asha_sweep, sweep_out):
    result = asha_sweep
    task_dir = sweep_out / "mrpc"
    sweep_dir = task_dir / "sweep-asha"
    assert result["sweep_dir"] == str(sweep_dir.resolve()) and not result["interrupted"]
    rows = _rows(sweep_dir)
    assert len(rows) == 4
    assert len({(r["temperature"], r["alpha"], r["k"]) for r in rows}) == 4
    assert {r["status"] for r in rows} <= {"completed", "stopped"} and "completed" in {r["status"] for r in rows}
    md = (sweep_dir / "results.md").read_text()
    assert md.count("| trial-") == 4
    best = result["best"]
    assert best["trial"] in {r["trial"] for r in rows} and set(best["config"]) == {"temperature", "k", "alpha"}
    assert best["f1_final"] == max(float(r["f1_final"]) for r in rows if r["f1_final"])
    sizes = {r["k"]: int(r["parameters"]) for r in rows}
    assert sizes["1"] < sizes["2"]

    # shared stages: the teacher and its cache once, one PTP encoder per depth, all before any trial
    assert result["stages"][0].startswith("teacher: ran") and result["stages"][1].startswith("cache: built")
    assert sorted(p.name for p in task_dir.glob("ptp-*")) == ["ptp-k1-shuffle", "ptp-k2-shuffle"]
    assert sum(s.startswith("ptp k=") and "ran" in s for s in result["stages"]) == 2
    assert len(list(task_dir.glob("**/teacher_cache/manifest.json"))) == 1
    created = _when(json.loads((task_dir / "teacher_cache" / "manifest.json").read_text())["created_at"])
    ptp_done = max((task_dir / f"ptp-k{k}-shuffle" / "summary.json").stat().st_mtime for k in (1, 2))
    for r in rows:
        record = json.loads((Path(r["run_dir"]) / "trial.json").read_text())
        assert record["attempts"] == 1 and _when(record["first_started_at"]) >= created
        assert _when(record["first_started_at"]).timestamp() >= ptp_done
        assert json.loads((Path(r["run_dir"]) / "config.json").read_text())["use_ptp"] is True

    # plots and per-trial TensorBoard logs under the sweep folder (Tune's own TB logs are off)
    for name in ("temperature", "alpha", "k", "parameters"):
        png = sweep_dir / f"f1_vs_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    for r in rows:
        assert list((Path(r["run_dir"]) / "tb").glob("events.out.tfevents.*")), r["trial"]
    assert not list((sweep_dir / "tune").glob("**/events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    done = next(r for r in rows if r["status"] == "completed")
    acc = EventAccumulator(str(Path(done["run_dir"]) / "tb"))
    acc.Reload()
    assert len(acc.Scalars("eval/f1")) == int(done["evaluations"]) == 3


@pytest.mark.slow
def test_failing_trial_is_retried_and_reported_on_ray_train_workers(asha_sweep, sweep_out, tiny_bert, glue_dir):
    """temperature=-1 fails DistillOptions.validate; the other trial runs on 2 DeepSpeed (gloo) workers."""
    opts = _opts(sweep_out, tiny_bert, glue_dir, sweep_name="faulty", k=2, space={"temperature": [-1, 3]},
                 workers_per_trial=2, cpus_per_worker=0.5, max_failures=1)
    teacher_mtime = (sweep_out / "mrpc" / "teacher" / "summary.json").stat().st_mtime
    result = run_sweep(opts)
    assert result["status_counts"]["errored"] == 1 and result["status_counts"]["completed"] == 1
    rows = {float(r["temperature"]): r for r in _rows(Path(result["sweep_dir"]))}
    bad, good = rows[-1.0], rows[3.0]
    assert bad["status"] == "errored" and "option temperature: must be > 0" in bad["error"]
    assert bad["attempts"] == "2"  # one retry (max_failures=1)
    assert "ConfigError" in (Path(bad["run_dir"]) / "error.txt").read_text()
    assert good["status"] == "completed" and good["workers"] == "2" and good["attempts"] == "1"
    assert result["best"]["trial"] == good["trial"]
    assert all("reused" in s for s in result["stages"]), result["stages"]
    assert (sweep_out / "mrpc" / "teacher" / "summary.json").stat().st_mtime == teacher_mtime


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(asha_sweep, sweep_out, tiny_bert, glue_dir):
    kw = dict(sweep_name="resumable", k=1, space={"temperature": [2, 4, 8]}, max_concurrent_trials=1,
              scheduler="fifo")
    first = run_sweep(_opts(sweep_out, tiny_bert, glue_dir, stop_after_trials=1, **kw))
    sweep_dir = Path(first["sweep_dir"])
    assert first["interrupted"]
    finished = {p.parent.name: p.stat().st_mtime for p in sweep_dir.glob("trial-*/summary.json")}
    assert 1 <= len(finished) < 3

    with pytest.raises(ConfigError, match="pass --resume"):
        run_sweep(_opts(sweep_out, tiny_bert, glue_dir, **kw))
    with pytest.raises(ConfigError, match=r"started with other options \(alpha: 0.7 -> 0.5\)"):
        run_sweep(_opts(sweep_out, tiny_bert, glue_dir, resume=True, **{**kw, "alpha": 0.5}))

    second = run_sweep(_opts(sweep_out, tiny_bert, glue_dir, resume=True, **kw))
    assert not second["interrupted"] and second["status_counts"]["completed"] == 3
    rows = _rows(sweep_dir)
    assert sorted(float(r["temperature"]) for r in rows) == [2.0, 4.0, 8.0]
    for name, mtime in finished.items():
        assert (sweep_dir / name / "summary.json").stat().st_mtime == mtime, f"{name} ran again"
        assert json.loads((sweep_dir / name / "trial.json").read_text())["attempts"] == 1


@pytest.mark.slow
def test_a_trial_larger_than_the_cluster_is_refused(ray_cluster, tmp_path, tiny_bert, glue_dir):
    opts = _opts(tmp_path, tiny_bert, glue_dir, space={"temperature": [2]}, workers_per_trial=3)
    with pytest.raises(ConfigError, match=r"one trial needs 4 CPUs .* the Ray cluster has 2 CPUs"):
        run_sweep(opts)
    assert not (tmp_path / "mrpc" / "teacher").exists()  # refused before any stage ran


def test_local_instance_runs_workers_at_the_callers_priority(ray_cluster):
    """Ray's default worker niceness (15) starves trials beside any other busy process: a local instance uses 0."""
    import ray

    @ray.remote(num_cpus=1)
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0)
