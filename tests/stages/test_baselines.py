"""The trivial baseline (majority class / mean) beside every metric the tool shows: golden hand tables
(binary, multi-class, regression), the share of the teacher's gain kept, the at-or-below warning, and
its rendering in the stage end lines, ``evaluate``, the pipeline table and the model card."""

from __future__ import annotations

import pytest

from dist_peakd.data import Task
from dist_peakd.data.tasks import DEFAULT_METRICS
from dist_peakd.export.card_limits import limitations_section
from dist_peakd.metrics import baseline_comparison, baseline_warning, gain_kept, prediction_profile
from dist_peakd.outcome import model_command_outcome, trainer_outcome
from dist_peakd.stages.common import MetricWarnings
from dist_peakd.stages.pipeline import _markdown, baseline_summary

THREE = Task(name="own3", text_columns=("text",), label_column="label", labels=("bird", "cat", "dog"),
             metrics=DEFAULT_METRICS["multiclass"], main_metric="macro_f1", problem="multiclass")

# MRPC-like: 3 of 5 rows "equivalent" (class 1, the positive class): the majority predictor says 1 always.
Y_BIN = [1, 1, 1, 0, 0]


def test_binary_majority_baseline_has_nonzero_f1_and_the_gain_kept():
    cmp = baseline_comparison("mrpc", [1, 1, 1, 0, 1], Y_BIN, teacher={"f1": 1.0, "accuracy": 1.0})
    assert (cmp["rule"], cmp["class"], cmp["rows"], cmp["label"]) == ("majority", "equivalent", 5,
                                                                      "majority: equivalent")
    # always 1: tp 3, fp 2, fn 0 -> F1 6/8 (not 0); accuracy 3/5
    assert cmp["metrics"] == {"f1": pytest.approx(0.75), "accuracy": pytest.approx(0.6)}
    assert cmp["main_metric"] == "f1" and cmp["model"] == pytest.approx(6 / 7)  # tp 3, fp 1
    assert cmp["gain_kept"] == pytest.approx(3 / 7)  # (6/7 - 3/4) / (1 - 3/4)
    assert cmp["at_or_below"] is False and baseline_warning("mrpc", cmp) is None


def test_binary_minority_positive_baseline_f1_is_zero():
    cmp = baseline_comparison("mrpc", [0, 1, 0, 1], [0, 0, 0, 1])
    assert cmp["class"] == "not_equivalent"
    assert cmp["metrics"] == {"f1": 0.0, "accuracy": pytest.approx(0.75)}
    assert cmp["teacher"] is None and cmp["gain_kept"] is None


def test_a_model_equal_to_the_majority_predictor_is_a_warning():
    cmp = baseline_comparison("mrpc", [1] * 5, Y_BIN, teacher={"f1": 0.9})
    assert cmp["at_or_below"] is True and cmp["gain_kept"] == pytest.approx(0.0)
    assert baseline_warning("mrpc", cmp) == (
        "mrpc: f1 0.7500 is at or below the trivial baseline's 0.7500 (majority: equivalent, on the same 5 rows): "
        "the model is no better than always predicting the majority class")


def test_no_gain_to_keep_when_the_teacher_does_not_beat_the_baseline():
    assert baseline_comparison("mrpc", [1, 1, 1, 0, 1], Y_BIN, teacher={"f1": 0.75})["gain_kept"] is None
    assert gain_kept(0.8, 0.75, 0.7) is None and gain_kept(0.7, 0.6, 0.8) == pytest.approx(0.5)


def test_multiclass_macro_f1_baseline_and_ties_go_to_the_lower_class():
    y = [0, 0, 0, 1, 1, 2]
    cmp = baseline_comparison(THREE, [0, 0, 1, 1, 1, 2], y, teacher={"macro_f1": 1.0})
    assert cmp["class"] == "bird"
    # always 0: class 0 F1 6/9, classes 1 and 2 F1 0 -> macro 2/9; accuracy 1/2
    assert cmp["metrics"] == {"accuracy": pytest.approx(0.5), "macro_f1": pytest.approx(2 / 9)}
    assert cmp["model"] == pytest.approx(13 / 15)  # (4/5 + 4/5 + 1) / 3
    assert cmp["gain_kept"] == pytest.approx(29 / 35)  # (13/15 - 2/9) / (1 - 2/9)
    assert prediction_profile(THREE, [2, 2, 2, 2], [1, 1, 2, 2])["baseline"]["class"] == "cat"


def test_regression_mean_baseline_correlates_with_nothing():
    cmp = baseline_comparison("stsb", [1.0, 2.0, 3.0, 5.0], [1.0, 2.0, 3.0, 4.0], teacher={"pearson": 1.0})
    assert (cmp["rule"], cmp["value"], cmp["label"]) == ("mean", 2.5, "mean: 2.5000")
    assert cmp["metrics"] == {"pearson": 0.0, "spearmanr": 0.0}
    assert cmp["model"] == pytest.approx(0.9827076)  # Pearson of (1,2,3,5) and (1,2,3,4)
    assert cmp["gain_kept"] == pytest.approx(cmp["model"])
    anti = baseline_comparison("stsb", [4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0], teacher={"pearson": -0.1})
    assert anti["at_or_below"] is True and anti["gain_kept"] is None
    assert "always predicting the mean" in baseline_warning("stsb", anti)


def test_metric_warnings_keep_the_latest_comparison_and_its_warning_only():
    warnings = MetricWarnings(teacher={"f1": 0.9, "accuracy": 0.8})
    task = "mrpc"
    from dist_peakd.data import get_task

    warnings.report(get_task(task), [1] * 5, Y_BIN)  # first eval: all majority -> at the baseline
    block = warnings.baseline
    assert block["at_or_below"] is True and any("trivial baseline" in w for w in warnings.seen)
    warnings.report(get_task(task), [1, 1, 1, 0, 1], Y_BIN)  # later eval beats it: the warning goes
    assert warnings.baseline is block and block["at_or_below"] is False  # updated in place (the summary's)
    assert block["gain_kept"] == pytest.approx((6 / 7 - 0.75) / 0.15)
    assert not any("trivial baseline" in w for w in warnings.seen)
    assert any("all 5 predictions are class" in w for w in warnings.seen)  # the other warnings stay


def _summary(model_f1: float, at_or_below: bool, warnings=()):
    block = {"rule": "majority", "class": "equivalent", "label": "majority: equivalent", "rows": 408,
             "metrics": {"f1": 0.8122, "accuracy": 0.6838}, "main_metric": "f1", "model": model_f1,
             "baseline_value": 0.8122, "teacher": 0.8459, "gain_kept": gain_kept(model_f1, 0.8122, 0.8459),
             "at_or_below": at_or_below}
    return {"main_metric": "f1", "final": {"step": 230, "f1": model_f1, "accuracy": 0.7059},
            "best": {"step": 230, "f1": model_f1}, "total_steps": 230, "baseline": block,
            "metric_warnings": list(warnings), "stage_dir": "runs/mrpc/distill-x"}


def test_stage_end_line_shows_the_baseline_and_the_gain_kept():
    lines = trainer_outcome("distill", _summary(0.8239, False))
    assert lines[0] == ("[dist-peakd] distill done: f1 0.8239, accuracy 0.7059 (final, step 230/230); best f1 0.8239 "
                        "at step 230; baseline f1 0.8122 (majority: equivalent); keeps 34.7% of the teacher's gain "
                        "over it")
    warning = baseline_warning("mrpc", _summary(0.8083, True)["baseline"])
    lines = trainer_outcome("distill", _summary(0.8083, True, [warning]))
    assert "; baseline f1 0.8122 (majority: equivalent); keeps -11.6% of the teacher's gain over it" in lines[0]
    assert lines[1] == f"[dist-peakd] warning: {warning}" and "0.8083 is at or below" in lines[1]
    old = _summary(0.8239, False)
    del old["baseline"]  # a summary written before baselines: the line as it was
    assert trainer_outcome("distill", old)[0].endswith("best f1 0.8239 at step 230")


def test_evaluate_line_shows_the_baseline():
    block = {**_summary(0.8239, False)["baseline"], "teacher": None, "gain_kept": None}
    lines = model_command_outcome("evaluate", {"metrics": {"f1": 0.8239, "accuracy": 0.7255}, "split": "dev",
                                               "rows": 408, "baseline": block})
    assert lines == ["[dist-peakd] evaluate done: f1 0.8239, accuracy 0.7255 (dev, 408 rows); baseline f1 0.8122 "
                     "(majority: equivalent)"]


def test_pipeline_table_has_the_baseline_row_and_the_gain_line():
    stats = {"parameters": 10, "num_parameter_layers": 2, "num_effective_layers": 4, "gflops_per_sequence": 1.0,
             "latency_ms": 2.0, "flops_per_token": 1.0}
    rows = [{"model": "teacher", "final": {"f1": 0.85, "accuracy": 0.77}, "best": {"f1": 0.85, "accuracy": 0.77},
             **stats},
            {"model": "student", "final": {"f1": 0.83, "accuracy": 0.72}, "best": {"f1": 0.83, "accuracy": 0.72},
             **stats}]
    base = baseline_summary(rows, _summary(0.8, False)["baseline"], "f1")
    assert base["gain_kept"] == pytest.approx((0.83 - 0.8122) / (0.85 - 0.8122))
    md = _markdown(rows, ["f1", "accuracy"], "## t", base)
    assert "| trivial baseline (majority: equivalent) | 81.22 | 68.38 | 81.22 | 68.38 | 0 | - | - | - |" in md
    assert "student keeps 47.1% of the teacher's gain over the baseline (f1)" in md
    none = baseline_summary([{**rows[0], "final": {"f1": 0.80}}, rows[1]], _summary(0.8, False)["baseline"], "f1")
    assert "the teacher does not beat the trivial baseline on f1" in _markdown(rows, ["f1", "accuracy"], "## t", none)
    assert "trivial baseline" not in _markdown(rows, ["f1", "accuracy"], "## t", baseline_summary(rows, None, "f1"))


def test_card_warns_as_the_console_does():
    lim = {**prediction_profile("mrpc", [1] * 5, Y_BIN), "main_metric": "f1"}
    text = "\n".join(limitations_section(lim, {"final": {"f1": 0.75, "accuracy": 0.6}, "teacher": {"f1": 0.9}},
                                         "final", None))
    assert ("- **Warning**: this model: f1 0.7500 is at or below the trivial baseline's 0.7500 (majority: "
            "equivalent, on the same 5 rows): the model is no better than always predicting the majority class.") in text
    good = "\n".join(limitations_section(lim, {"final": {"f1": 0.8}}, "final", None))
    assert "Warning" not in good


def test_sweep_results_note_the_baseline_of_the_trials_dev_rows(tmp_path):
    import json

    from dist_peakd.sweep.report import baseline_note

    empty, trial = tmp_path / "t0", tmp_path / "t1"
    empty.mkdir(), trial.mkdir()
    (trial / "summary.json").write_text(json.dumps(_summary(0.83, False)))
    assert baseline_note([{"run_dir": str(empty)}]) == []
    assert baseline_note([{"run_dir": str(empty)}, {"run_dir": str(trial)}]) == [
        "trivial baseline on the same 408 dev rows (majority: equivalent): f1 0.8122, accuracy 0.6838; teacher f1 "
        "0.8459; a trial at or below the baseline has learned nothing the trivial model does not give"]
