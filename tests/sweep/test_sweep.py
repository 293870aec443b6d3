"""Ray Tune sweeps: space syntax, a 4-trial ASHA sweep, a failing trial on Ray Train workers, interrupt + resume.

The sweeps share one output folder, so the teacher, its cache and the PTP encoders are built by the
first sweep only; one local Ray instance (2 CPUs) serves the whole module.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import io
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
    """A 2x2 temperature x alpha grid under ASHA with 3 rungs (6 steps per trial, dev evaluations at steps 2, 4
    and 6), one trial at a time, on STS-B: regression KD has no temperature, so T=2 and T=8 train the same
    student for each alpha, and with the trials in grid order ASHA then always stops one (the first trial
    whose pearson is below the recorded one at a rung it reaches). Returns the result and what it printed."""
    opts = _opts(sweep_out, tiny_bert, glue_dir, task="stsb", sweep_name="asha", scheduler="asha", k=2,
                 eval_every_steps=0, rungs=3, max_concurrent_trials=1,
                 space={"temperature": [2, 8], "alpha": [0.3, 0.9]})
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = run_sweep(opts)
    return result, printed.getvalue()


def _hparams(log_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    return {"experiment": metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG]),
            "end": metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])}


@pytest.mark.slow
def test_asha_sweep_over_temperature_and_alpha(asha_sweep, sweep_out):
    result, printed = asha_sweep
    sweep_dir = sweep_out / "stsb" / "sweep-asha"
    assert result["sweep_dir"] == str(sweep_dir.resolve()) and not result["interrupted"]
    rows = _rows(sweep_dir)
    assert sorted((r["temperature"], r["alpha"]) for r in rows) == [("2", "0.3"), ("2", "0.9"), ("8", "0.3"),
                                                                    ("8", "0.9")]
    # every trial has its summary and best/, no checkpoints; its status matches what ASHA recorded and Tune saw
    stopped = [r for r in rows if r["status"] == "stopped"]
    assert stopped and {r["status"] for r in rows} == {"completed", "stopped"}
    for r in rows:
        run = Path(r["run_dir"])
        assert run.name == f"{r['trial']}" and run.name.endswith(f"-temperature={r['temperature']}-alpha={r['alpha']}")
        summary = json.loads((run / "summary.json").read_text())
        steps = [h["step"] for h in summary["history"]]
        tune_reports = (sweep_dir / "tune" / f"trial-{run.name.split('-')[1]}" / "result.json").read_text().splitlines()
        assert len(tune_reports) == len(steps) == int(r["evaluations"])
        assert (run / "best" / "model.safetensors").is_file() and not (run / "checkpoints").exists()
        assert summary["total_steps"] == int(r["total_steps"]) == 6
        if r["status"] == "stopped":
            at = int(r["stopped_at_step"])
            assert summary["stopped"] == {"step": at, "by": "asha"} and steps[-1] == at < 6 and steps == [2, 4][:len(steps)]
            assert json.loads((run / "trial.json").read_text())["stopped"] == summary["stopped"]
            assert not (run / "final").exists()
        else:
            assert "stopped" not in summary and steps == [2, 4, 6]
    md = (sweep_dir / "results.md").read_text()
    for r in stopped:
        assert f"| stopped at step {r['stopped_at_step']} (ASHA) |" in md
    assert "budget: 4 trials x 6 steps = 24 steps; used " in md and "fixed: k=2, variant=shuffle" in md
    base = json.loads((Path(rows[0]["run_dir"]) / "summary.json").read_text())["baseline"]  # stsb: the dev mean
    assert base["rule"] == "mean" and base["metrics"] == {"pearson": 0.0, "spearmanr": 0.0}
    assert f"- trivial baseline on the same {base['rows']} dev rows (mean: {base['value']:.4f}): pearson 0.0000" in md
    # disk: final/ only for the best trial; the heatmap of the 2-D grid
    assert {Path(r["run_dir"]).name for r in rows if (Path(r["run_dir"]) / "final").is_dir()} == {result["best"]["trial"]}
    heatmap = sweep_dir / "pearson_heatmap_temperature_x_alpha.png"
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [Path(p).name for p in result["plots"]] == [heatmap.name]
    # console: the budget up front, one line per ended trial, the table at the end
    assert "[2/3] cache-teacher:" in printed and ("[3/3] sweep: 4 trials x 6 steps = 24 steps; 3 dev evaluation(s) "
                                                  "per trial (ASHA may stop a trial after evaluation 1 or 2)") in printed
    lines = [ln for ln in printed.splitlines() if ln.startswith("[dist-peakd] trial ")]
    assert [ln.split()[2] for ln in lines] == ["1/4", "2/4", "3/4", "4/4"]
    for r in stopped:
        assert any(r["trial"] in ln and f"stopped at step {r['stopped_at_step']} (ASHA)" in ln for ln in lines)
    # TensorBoard: each trial's events in its folder (the run's name), with the HParams columns to compare
    from tensorboard.plugins.hparams import api_pb2

    for r in rows:
        data = _hparams(Path(r["run_dir"]))
        tags = [m.name.tag for m in data["experiment"].metric_infos]
        assert tags == ["eval/pearson", "best/pearson", "eval/spearmanr", "eval/loss", "reference/teacher_pearson"]
        assert {h.name for h in data["experiment"].hparam_infos if h.differs} == {"temperature", "alpha"}
        assert data["end"].status == api_pb2.STATUS_SUCCESS


def test_a_stop_by_the_scheduler_becomes_an_early_stop(tmp_path):
    """Tune ends a trial's report with SystemExit: an early stop when the driver recorded one, else it goes on."""
    from dist_peakd.errors import EarlyStopped
    from dist_peakd.sweep.trainable import STOP_RECORD, stopped_early

    def tune_stops(result: dict) -> None:
        raise SystemExit(0)

    called = []
    rep = EvalReporter("f1", "max", tune_stops, run_dir=tmp_path, on_stop=lambda: called.append(True))
    with pytest.raises(SystemExit):  # no record: the sweep is ending, the trial stays unfinished
        rep(2, {"f1": 0.5})
    assert not rep.stopped and not called
    (tmp_path / STOP_RECORD).write_text(json.dumps({"step": 2, "by": "asha", "total_steps": 6}))
    with pytest.raises(EarlyStopped) as e:
        rep(2, {"f1": 0.5})
    assert (e.value.step, e.value.by) == (2, "asha") and rep.stopped and called == [True]
    assert stopped_early({"step": 2, "total_steps": 6}) and not stopped_early({"step": 6, "total_steps": 6})


def test_trial_plan_rungs_and_budget():
    from dist_peakd.sweep.plan import asha_milestones, budget_text, trial_plan

    plan = trial_plan({"batch_size": 8, "epochs": 1, "eval_every_steps": 0}, 48, rungs=3)
    assert (plan.steps_per_epoch, plan.total_steps, plan.eval_every_steps, plan.evaluations) == (6, 6, 2, 3)
    plan = trial_plan({"batch_size": 16, "epochs": 2, "eval_every_steps": 0}, 512, rungs=3)
    # every 11 global steps plus each epoch's end: 11 22 32 | 33 44 55 64
    assert (plan.total_steps, plan.eval_every_steps, plan.evaluations) == (64, 11, 7)
    assert trial_plan({"batch_size": 8, "epochs": 1, "eval_every_steps": 4}, 48, rungs=3).evaluations == 2
    assert asha_milestones(3, 1, 2) == [1, 2] and asha_milestones(9, 1, 2) == [1, 2, 4, 8]
    assert budget_text(4, plan, [1, 2, 4]) == ("4 trials x 64 steps = 256 steps; 7 dev evaluation(s) per trial "
                                               "(ASHA may stop a trial after evaluation 1, 2 or 4)")


@pytest.mark.slow
def test_failing_trial_is_retried_and_reported_on_ray_train_workers(asha_sweep, sweep_out, tiny_bert, glue_dir):
    """temperature=-1 fails DistillOptions.validate in its trial; the other trial runs on 2 DeepSpeed (gloo)
    workers. The shared stages (teacher, its cache, the k=2 PTP encoder) run once, before any trial. (The
    options are built with a valid space and the bad value put in afterwards: build_options refuses it up
    front, tests/cli/test_refusals_before_work.py; this is the path of a trial that raises anyway.)"""
    opts = _opts(sweep_out, tiny_bert, glue_dir, sweep_name="faulty", k=2, space={"temperature": [1, 3]},
                 workers_per_trial=2, cpus_per_worker=0.5, max_failures=1)
    opts = dataclasses.replace(opts, space={"temperature": [-1, 3]})
    result = run_sweep(opts)
    assert result["status_counts"]["errored"] == 1 and result["status_counts"]["completed"] == 1
    rows = {float(r["temperature"]): r for r in _rows(Path(result["sweep_dir"]))}
    bad, good = rows[-1.0], rows[3.0]
    assert bad["status"] == "errored" and "option temperature: must be > 0" in bad["error"]
    assert bad["attempts"] == "2"  # one retry (max_failures=1)
    assert "ConfigError" in (Path(bad["run_dir"]) / "error.txt").read_text()
    assert good["status"] == "completed" and good["workers"] == "2" and good["attempts"] == "1"
    assert result["best"]["trial"] == good["trial"]
    assert [s.split(":")[0] + ":" + s.split(":")[1].split()[0] for s in result["stages"]] == \
        ["teacher:ran", "cache:built", "ptp k=2 shuffle:ran"], result["stages"]
    task_dir = sweep_out / "mrpc"
    assert len(list(task_dir.glob("**/teacher_cache/manifest.json"))) == 1
    ptp_done = (task_dir / "ptp-k2-shuffle" / "summary.json").stat().st_mtime
    for r in (bad, good):
        first = _when(json.loads((Path(r["run_dir"]) / "trial.json").read_text())["first_started_at"])
        assert first.timestamp() >= ptp_done
    assert json.loads((Path(good["run_dir"]) / "stage_options.json").read_text())["use_ptp"] is True
    assert (Path(good["run_dir"]) / "best").is_dir() and not (Path(good["run_dir"]) / "checkpoints").exists()


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(asha_sweep, sweep_out, tiny_bert, glue_dir):
    kw = dict(sweep_name="resumable", k=1, space={"temperature": [2, 4, 8]}, max_concurrent_trials=1,
              scheduler="fifo")
    teacher_mtime = (sweep_out / "mrpc" / "teacher" / "summary.json").stat().st_mtime
    first = run_sweep(_opts(sweep_out, tiny_bert, glue_dir, stop_after_trials=1, **kw))
    sweep_dir = Path(first["sweep_dir"])
    assert first["interrupted"]
    assert first["stages"][0].startswith("teacher: reused") and first["stages"][1].startswith("cache: reused")
    assert (sweep_out / "mrpc" / "teacher" / "summary.json").stat().st_mtime == teacher_mtime
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
    assert not (tmp_path / "mrpc").exists()  # refused before any stage ran, and before the sweep folder


def test_local_instance_runs_workers_at_the_callers_priority(ray_cluster):
    """Ray's default worker niceness (15) starves trials beside any other busy process: a local instance uses 0."""
    import ray

    @ray.remote(num_cpus=1)
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0)
