"""Option metadata (help, result relevance) on the fields themselves, and the run layout owning every path."""

from __future__ import annotations

import dataclasses
import json
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


# ----------------------------------------------------------------- issue 26: one schema, composed per command
#: Options a command declares again because they mean something else there (help and default of its own).
REDECLARED = {("ModelDirOptions", "task"), ("ModelDirOptions", "max_length"),  # '': read from the model folder
              ("CompressOptions", "search"), ("CompressOptions", "num_samples"),  # compress samples by default
              ("EvaluateOptions", "out"), ("PredictOptions", "out"),  # a JSON file, a predictions file, a folder
              ("PredictOptions", "split")}  # predict: default test (the submission file), evaluate: dev
#: A command's own default of a section's option (``lr: float = 5e-5``: help, bounds and result flag kept).
COMMAND_DEFAULTS = {("FinetuneTeacherOptions", "lr"), ("FinetuneTeacherOptions", "epochs"),
                    ("PTPOptions", "epochs"), ("DistillOptions", "epochs")}


def _all_option_classes(stages):
    from dist_peakd.stages.compress_trial import CompressTrialOptions
    from dist_peakd.stages.evaluate import ModelDirOptions

    return {k for cls in [*stages.values(), CompressTrialOptions, ModelDirOptions] for k in cls.__mro__
            if dataclasses.is_dataclass(k)}


def test_every_option_is_declared_once_and_defaults_are_not_copied(stages):
    """Each option has one ``option(...)`` declaration (its section); a class that sets another default for it
    does so on purpose (listed above), never by copying the declaration with a hand-copied default."""
    declared: dict[str, set[str]] = {}
    overrides = set()
    for klass in _all_option_classes(stages):
        own = klass.__dict__.get("__annotations__", {})
        for f in dataclasses.fields(klass):
            if f.name not in own:
                continue
            if "help" in f.metadata:
                declared.setdefault(f.name, set()).add(klass.__name__)
            else:
                overrides.add((klass.__name__, f.name))
    twice = {name: sorted(where) for name, where in declared.items()
             if len(where - {c for c, n in REDECLARED if n == name}) != 1}
    assert twice == {}
    assert overrides == COMMAND_DEFAULTS
    for cls_name, name in COMMAND_DEFAULTS:  # each of them really differs from the section's
        cls = next(k for k in _all_option_classes(stages) if k.__name__ == cls_name)
        section = next(k for k in cls.__mro__[1:] if name in getattr(k, "__dataclass_fields__", {}))
        assert section.__dataclass_fields__[name].default != cls.__dataclass_fields__[name].default or \
            (cls_name, name) == ("FinetuneTeacherOptions", "epochs"), (cls_name, name)


def test_engine_loop_and_data_options_are_views_of_the_same_sections():
    from dist_peakd.config import SECTIONS
    from dist_peakd.data import DataOptions
    from dist_peakd.engine.options import EngineOptions, LoopOptions
    from dist_peakd.schema import declaring_class

    for view in (EngineOptions, LoopOptions, DataOptions):
        options = [f.name for f in dataclasses.fields(view) if f.name != "label"]  # label: set by a stage
        assert all(declaring_class(view, name) in SECTIONS for name in options), view
    opts = RunOptions(lr=0.5, epochs=2.0, seed=4, task="rte", nan_policy="skip")
    assert opts.engine_options() == EngineOptions(lr=0.5, nan_policy="skip")
    assert opts.loop_options() == LoopOptions(epochs=2.0, seed=4)
    assert opts.data_options() == DataOptions(task="rte")


GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "resolved_options.json"
#: What a command no longer takes (it never read them): cache-teacher trains nothing; the teacher and PTP
#: stages do not read the unlabeled pool.
DROPPED = {
    "cache-teacher": {"batch_size", "epochs", "eval_batch_size", "eval_every_steps", "fused_optimizer",
                      "gradient_clipping", "keep_checkpoints", "keep_checkpoints_after_success", "log_every_steps",
                      "lr", "max_skipped_fraction", "micro_batch_size", "nan_policy", "pad_to_multiple_of",
                      "save_every_steps", "stop_after_steps", "warmup_ratio", "weight_decay"},
    "finetune-teacher": {"augment", "augment_seed", "unlabeled_file", "unlabeled_hub_dataset"},
    "ptp": {"augment", "augment_seed", "unlabeled_file", "unlabeled_hub_dataset"},
}
#: Options added after c77f647 (issue 23 item 4), at their default (off) in every recorded case.
ADDED = {"student_backbone": None}


@pytest.mark.parametrize("case", sorted(json.loads(GOLDEN.read_text())))
def test_resolved_options_are_those_main_resolved(stages, case):
    """`dist-peakd pipeline --task sst2 --preset cpu-fast` (the README's main job), the other training stages
    with their defaults: every option resolves to the value main (c77f647) resolved, recorded in
    tests/golden/resolved_options.json; an option a command no longer takes is one it never read."""
    from dist_peakd.config import build_options

    golden = json.loads(GOLDEN.read_text())[case]
    words = case.split()
    stage, values = words[0], dict(zip((w.removeprefix("--") for w in words[1::2]), words[2::2], strict=True))
    opts = build_options(stages[stage], **cli.coerce_values(stages[stage], values))
    now = json.loads(json.dumps(dataclasses.asdict(opts), default=str))
    assert set(golden) - set(now) == DROPPED.get(stage, set()) and set(now) <= set(golden) | set(ADDED)
    assert {k: v for k, v in now.items() if k in golden} == {k: v for k, v in golden.items() if k in now}
    assert all(now[k] == ADDED[k] for k in set(now) - set(golden))
