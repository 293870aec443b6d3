"""TensorBoard tracking: HParams plugin data (experiment with metric infos, session start/end) read back from
the event files, both raw and through TensorBoard's own HParams backend (what the HParams tab shows), the
best-so-far and reference scalars, eval loss, and a real teacher stage's event file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_peakd.engine import tracking
from dist_peakd.engine.tracking import (
    HPARAM_TYPES,
    Tracker,
    hparam_values,
    run_metrics,
    tensorboard_dir,
    with_eval_loss,
)

DISTILL = {"stage": "distill", "task": "mrpc", "k": 2, "variant": "shuffle", "temperature": 5.0, "alpha": 0.7,
           "beta": 100.0, "lr": 1e-3, "epochs": 1.0, "use_ptp": True, "total_steps": 6, "ptp_dir": None,
           "layer_map": [[0, 1], [1, 3]]}


def _accumulator(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def _hparams(log_dir: Path) -> dict:
    """The run's HParams plugin data: experiment, session start, session end (None when absent)."""
    from tensorboard.plugins.hparams import metadata

    content = _accumulator(log_dir).PluginTagToContent(metadata.PLUGIN_NAME)
    parse = {metadata.EXPERIMENT_TAG: ("experiment", metadata.parse_experiment_plugin_data),
             metadata.SESSION_START_INFO_TAG: ("start", metadata.parse_session_start_info_plugin_data),
             metadata.SESSION_END_INFO_TAG: ("end", metadata.parse_session_end_info_plugin_data)}
    out = {"experiment": None, "start": None, "end": None}
    for tag, (name, fn) in parse.items():
        if tag in content:
            out[name] = fn(content[tag])
    return out


def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in _accumulator(log_dir).Scalars(tag)]


def _write_trial(log_dir: Path, config: dict, evals: list[dict], **kw) -> None:
    tracker = Tracker(log_dir)
    tracker.config(config, **kw)
    for i, metrics in enumerate(evals):
        tracker.scalars({"train/loss": 1.0 / (i + 1), **{f"eval/{k}": v for k, v in metrics.items()}}, 2 * (i + 1))
    tracker.close()


def test_hparams_experiment_has_metric_infos_and_the_session_its_hparams(tmp_path):
    _write_trial(tmp_path, DISTILL, [{"f1": 0.5, "accuracy": 0.6, "loss": 0.9}, {"f1": 0.7, "accuracy": 0.65,
                                                                              "loss": 0.8},
                                     {"f1": 0.6, "accuracy": 0.7, "loss": 0.7}],
                 metric_names=("f1", "accuracy", "loss"), varied=("temperature", "alpha"),
                 reference={"f1": 0.81, "accuracy": 0.72})
    data = _hparams(tmp_path)
    exp = data["experiment"]
    tags = [m.name.tag for m in exp.metric_infos]
    assert tags == ["eval/f1", "best/f1", "eval/accuracy", "eval/loss", "reference/teacher_f1"]
    assert [m.display_name for m in exp.metric_infos][:2] == ["f1 (final)", "f1 (best)"]
    infos = {h.name: h for h in exp.hparam_infos}
    assert set(HPARAM_TYPES) <= set(infos)                       # the same columns for every run
    assert infos["temperature"].differs and infos["alpha"].differs and not infos["k"].differs
    start = data["start"].hparams
    assert start["temperature"].number_value == 5.0 and start["variant"].string_value == "shuffle"
    assert start["use_ptp"].bool_value is True and "ptp_dir" not in start and "layer_map" not in start
    from tensorboard.plugins.hparams import api_pb2

    assert data["end"].status == api_pb2.STATUS_SUCCESS
    # the columns' scalars: eval/* final = last value, best/* = best so far, the teacher as a flat line
    assert _scalars(tmp_path, "eval/f1")[-1] == (6, pytest.approx(0.6))
    assert [v for _, v in _scalars(tmp_path, "best/f1")] == pytest.approx([0.5, 0.7, 0.7])
    assert _scalars(tmp_path, "eval/loss")[-1][1] == pytest.approx(0.7)
    assert _scalars(tmp_path, "reference/teacher_f1") == [(0, pytest.approx(0.81)), (6, pytest.approx(0.81))]
    assert _scalars(tmp_path, "train/loss")[0] == (2, 1.0)


def test_ptp_runs_track_the_lowest_loss_and_declare_the_tasks_columns(tmp_path):
    _write_trial(tmp_path, {"stage": "ptp", "task": "mrpc", "k": 2, "total_steps": 4},
                 [{"ptp_loss": 1.2, "ptp_accuracy": 0.3}, {"ptp_loss": 0.9, "ptp_accuracy": 0.5},
                  {"ptp_loss": 1.0, "ptp_accuracy": 0.4}])
    tags = [m.name.tag for m in _hparams(tmp_path)["experiment"].metric_infos]
    assert tags[:3] == ["eval/ptp_loss", "best/ptp_loss", "eval/ptp_accuracy"]
    assert {"eval/f1", "eval/accuracy"} <= set(tags)  # a task folder keeps the same columns
    assert [v for _, v in _scalars(tmp_path, "best/ptp_loss")] == pytest.approx([1.2, 0.9, 0.9])


def test_the_loops_best_wins_over_the_trackers_own(tmp_path):
    """After a resume the loop knows the best of earlier evaluations; the tracker only saw the new ones."""
    tracker = Tracker(tmp_path)
    tracker.config({"stage": "distill", "task": "mrpc"})
    tracker.evaluation(8, {"f1": 0.6, "accuracy": 0.6}, best=0.75)
    tracker.close(status="failure")
    assert _scalars(tmp_path, "best/f1") == [(8, pytest.approx(0.75))]
    from tensorboard.plugins.hparams import api_pb2

    assert _hparams(tmp_path)["end"].status == api_pb2.STATUS_FAILURE


def test_experiment_can_be_left_to_another_run_and_rank_nonzero_writes_nothing(tmp_path):
    _write_trial(tmp_path / "a", DISTILL, [{"f1": 0.5, "accuracy": 0.5}], experiment=False)
    data = _hparams(tmp_path / "a")
    assert data["experiment"] is None and data["start"] is not None and data["end"] is not None
    silent = Tracker(tmp_path / "b", enabled=False)
    silent.config(DISTILL)
    silent.scalars({"eval/f1": 0.5}, 1)
    silent.close()
    assert not (tmp_path / "b").exists()


def test_defaults_set_by_the_caller_reach_the_stages_tracker(tmp_path):
    """A sweep trial sets what the stage cannot know (swept options, the teacher's metrics) around the run."""
    with tracking.defaults(varied=["alpha"], reference={"f1": 0.8}):
        with tracking.defaults(metric_names=["f1", "accuracy", "loss"]):
            _write_trial(tmp_path / "a", DISTILL, [{"f1": 0.5, "accuracy": 0.5}])
        _write_trial(tmp_path / "b", DISTILL, [{"f1": 0.5, "accuracy": 0.5}], varied=["temperature"])
    _write_trial(tmp_path / "c", DISTILL, [{"f1": 0.5, "accuracy": 0.5}])
    tags = {n: [m.name.tag for m in _hparams(tmp_path / n)["experiment"].metric_infos] for n in "abc"}
    assert tags["a"] == ["eval/f1", "best/f1", "eval/accuracy", "eval/loss", "reference/teacher_f1"]
    assert tags["b"] == ["eval/f1", "best/f1", "eval/accuracy", "reference/teacher_f1"]
    assert tags["c"] == ["eval/f1", "best/f1", "eval/accuracy"]  # outside: nothing left over
    differs = {n: {h.name for h in _hparams(tmp_path / n)["experiment"].hparam_infos if h.differs} for n in "abc"}
    assert differs == {"a": {"alpha"}, "b": {"temperature"}, "c": set()}
    with pytest.raises(TypeError, match="unknown option"):
        with tracking.defaults(varid=["alpha"]):
            pass


def test_metrics_and_hparams_from_the_config():
    m = run_metrics({"task": "mrpc", "stage": "teacher"})
    assert (m.main, m.names, m.mode, m.has_loss) == ("f1", ("f1", "accuracy"), "max", False)
    assert run_metrics({"task": "stsb"}).main == "pearson"
    assert run_metrics({"task": "no-such-task"}) is None
    assert run_metrics({"task": "no-such-task"}, main_metric="acc", mode="max").names == ("acc",)
    values = hparam_values({**DISTILL, "seed": 3, "note": {"a": 1}}, ["note"])
    assert values["seed"] == 3.0 and values["note"] == '{"a": 1}' and "total_steps" not in values
    assert tensorboard_dir(Path("runs/mrpc/distill-k2-shuffle")) == Path("runs/mrpc/distill-k2-shuffle")


def test_eval_loss_matches_torch():
    logits = np.array([[2.0, -1.0], [0.3, 0.1], [-0.5, 1.5]], dtype=np.float32)
    labels = np.array([0, 1, 1])
    fn = with_eval_loss(lambda preds: {"accuracy": 1.0}, is_regression=False)
    out = fn({"logits": logits, "labels": labels})
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(labels))
    assert out["accuracy"] == 1.0 and out["loss"] == pytest.approx(float(expected), rel=1e-9)
    reg = with_eval_loss(lambda preds: {}, is_regression=True)({"logits": np.array([[1.0], [3.0]]),
                                                                 "labels": np.array([2.0, 2.5])})
    assert reg["loss"] == pytest.approx((1.0 + 0.25) / 2)


def _tensorboard_hparams_view(logdir: Path) -> tuple:
    """What TensorBoard's HParams tab gets from its backend: the experiment and the session groups."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), data_provider=provider,
                                                            multiplexer=mux))
    rctx = context.RequestContext()
    experiment = get_experiment.Handler(rctx, backend, "", api_pb2.GetExperimentRequest()).run()
    cols = [api_pb2.ColParams(metric=m.name) for m in experiment.metric_infos]
    statuses = [api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING]
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, col_params=cols,
                                               allowed_statuses=statuses, aggregation_type=api_pb2.AGGREGATION_AVG)
    groups = list_session_groups.Handler(rctx, backend, "", request).run()
    return experiment, groups


def test_tensorboard_backend_shows_one_row_per_trial_with_its_metrics(tmp_path):
    """Two sweep trials in one logdir (run names = their folders): the HParams backend lists both with
    their final and best f1 (the HParams tab's table)."""
    for name, temperature, evals in (("trial-a_00000-temperature=2", 2.0, [0.5, 0.7, 0.6]),
                                     ("trial-a_00001-temperature=8", 8.0, [0.4, 0.45])):
        _write_trial(tmp_path / name, {**DISTILL, "temperature": temperature},
                     [{"f1": v, "accuracy": v} for v in evals], varied=("temperature",))
    experiment, response = _tensorboard_hparams_view(tmp_path)
    assert [m.name.tag for m in experiment.metric_infos] == ["eval/f1", "best/f1", "eval/accuracy"]
    assert experiment.hparam_infos[0].name == "temperature"  # the swept option first (differs)
    rows = {}
    for group in response.session_groups:
        values = {m.name.tag: m.value for m in group.metric_values}
        rows[group.name] = (group.hparams["temperature"].number_value, values)
    assert set(rows) == {"trial-a_00000-temperature=2", "trial-a_00001-temperature=8"}
    t, values = rows["trial-a_00000-temperature=2"]
    assert t == 2.0 and values["eval/f1"] == pytest.approx(0.6) and values["best/f1"] == pytest.approx(0.7)
    t, values = rows["trial-a_00001-temperature=8"]
    assert t == 8.0 and values["eval/f1"] == pytest.approx(0.45) and values["best/f1"] == pytest.approx(0.45)


@pytest.mark.slow
def test_a_teacher_stage_writes_its_hparams_and_metric_columns(tmp_path, tiny_bert, glue_dir):
    """The finetune-teacher stage as it is: its event file holds the metric infos and the columns' values."""
    from dist_peakd.config import build_options
    from dist_peakd.stages import finetune_teacher

    opts = build_options(finetune_teacher.FinetuneTeacherOptions, task="mrpc", max_length=40,
                         max_train_examples=48, max_eval_examples=32, batch_size=8, eval_batch_size=32,
                         log_every_steps=2, eval_every_steps=2, epochs=1, lr=1e-3, seed=0,
                         output_dir=str(tmp_path), glue_dir=str(glue_dir), backbone=str(tiny_bert),
                         cache_dir=str(tmp_path / "tok"))
    from tensorboard.plugins.hparams import api_pb2

    summary = finetune_teacher.run(opts)
    log_dir = tmp_path / "mrpc" / "teacher"  # the stage folder itself: TensorBoard names the run "teacher"
    assert [p.parent for p in log_dir.glob("**/events.out.tfevents.*")] == [log_dir]
    data = _hparams(log_dir)
    assert [m.name.tag for m in data["experiment"].metric_infos] == ["eval/f1", "best/f1", "eval/accuracy",
                                                                      "eval/loss"]
    assert data["start"].hparams["stage"].string_value == "teacher"
    assert data["start"].hparams["lr"].number_value == pytest.approx(1e-3)
    assert data["end"].status == api_pb2.STATUS_SUCCESS
    assert _scalars(log_dir, "eval/loss")[-1][1] == pytest.approx(summary["final"]["loss"])
    assert 0 < summary["final"]["loss"] < 5
    assert _scalars(log_dir, "eval/f1")[-1][1] == pytest.approx(summary["final"]["f1"])
    assert _scalars(log_dir, "best/f1")[-1][1] == pytest.approx(summary["best"]["f1"])
    assert len(_scalars(log_dir, "eval/f1")) == len(summary["history"]) == 3
    assert not math.isnan(_scalars(log_dir, "eval/accuracy")[-1][1])
