"""Option metadata (help, result relevance) on the fields themselves, and the run layout owning every path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dist_peakd import cli
from dist_peakd.config import RunOptions, non_result_options, option_meta, result_differences
from dist_peakd.layout import RunLayout

#: Options that do not change any result: the union of the two lists the project had before
#: (stages/common.py and stages/sweep.py), restricted to each class's fields.
NOT_RESULT = {"stop_after_steps", "log_every_steps", "cache_dir", "output_dir", "rebuild", "eval_batch_size",
              "cache_batch_size", "preset", "latency_batch_size", "latency_repeats", "save_every_steps",
              "keep_checkpoints", "resume", "resume_errored", "address", "num_cpus", "max_concurrent_trials",
              "stop_after_trials", "max_failures", "sweep_name", "keep_checkpoints_after_success", "keep_trial_final",
              # reliability options (issue 14): how a run treats its folders and skipped steps
              "trust_unverified", "force", "max_skipped_fraction",
              # compress (issue 24): how the trained students are measured and chosen, not how they are trained
              "precisions", "latency_shape", "latency_threads", "latency_runs", "latency_warmup", "max_metric_drop",
              "max_latency_ms", "max_size_mb", "objective", "time_budget_s"}


@pytest.fixture(scope="module")
def stages() -> dict[str, type]:
    return cli.stage_options()


def test_every_option_of_every_stage_has_a_help_line(stages):
    missing = [(name, f.name) for name, cls in stages.items() for f in dataclasses.fields(cls)
               if not option_meta(cls, f.name)["help"]]
    assert not missing


def test_stage_help_shows_the_fields_help(stages, capsys):
    cli.main(["distill", "--help"])
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.strip().startswith("--temperature="))
    assert line.rstrip().endswith("KD softmax temperature")
    line = next(x for x in text.splitlines() if x.strip().startswith("--epochs="))
    assert "--epochs=4.0" in line and line.rstrip().endswith("training epochs (fractions allowed)")


def test_non_result_options_are_the_union_of_the_old_lists(stages):
    for name, cls in stages.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert non_result_options(cls) == NOT_RESULT & fields, name


def test_result_differences_ignore_only_non_result_options(stages):
    cls = stages["sweep"]
    before = dataclasses.asdict(cls())
    changed = cls(keep_checkpoints=5, stop_after_steps=3, max_failures=4, address="auto", sweep_name="x")
    assert result_differences(before, changed) == []
    assert result_differences(before, cls(temperature=2.0)) == ["temperature: 10.0 -> 2.0"]
    assert result_differences(before, cls(space={"k": [2]}), ignore=frozenset({"space"})) == []


def test_layout_defaults_and_overrides(tmp_path):
    opts = RunOptions(task="SST-2", output_dir=str(tmp_path))
    layout = opts.layout()
    assert layout.task_dir == tmp_path / "sst2" == opts.task_dir()
    assert layout.teacher == tmp_path / "sst2" / "teacher" / "best"
    assert layout.teacher_cache == tmp_path / "sst2" / "teacher_cache"
    assert layout.ptp_encoder(3, "shuffle") == tmp_path / "sst2" / "ptp-k3-shuffle" / "best"
    assert layout.token_cache == tmp_path / ".token_cache"
    assert layout.sweep_dir("a") == tmp_path / "sst2" / "sweep-a"
    assert not layout.teacher_is_given
    given = RunLayout(tmp_path, "mrpc", teacher_override="/t", teacher_cache_override="/c", ptp_override="/p",
                      token_cache_override="/k")
    assert (given.teacher, given.teacher_cache, given.ptp_encoder(2, "none"), given.token_cache) == \
        (Path("/t"), Path("/c"), Path("/p"), Path("/k"))
    assert given.teacher_stage == tmp_path / "mrpc" / "teacher" and given.teacher_is_given


def test_cache_teacher_has_the_teacher_cache_dir_option(stages):
    assert "teacher_cache_dir" in {f.name for f in dataclasses.fields(stages["cache-teacher"])}


@pytest.mark.parametrize(("task", "expected"), [("sst2", 6000), ("SST-2", 6000), ("mrpc", None), (None, None)])
def test_cpu_fast_caps_only_the_main_jobs_sst2_train_rows(task, expected):
    from dist_peakd.config import build_options
    from dist_peakd.stages.pipeline import PipelineOptions

    opts = build_options(PipelineOptions, preset="cpu-fast", **({"task": task} if task else {}))
    assert (opts.max_train_examples, opts.max_length, opts.epochs, opts.lr) == (expected, 64, 2.0, 5e-5)
    mine = build_options(PipelineOptions, preset="cpu-fast", task="sst2", max_train_examples=100)
    assert mine.max_train_examples == 100  # the command line wins over the preset's per-task value
