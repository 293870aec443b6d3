"""The `dist-peakd` command line: help completeness, one option vocabulary, config files, refusals."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dist_peakd import cli
from dist_peakd.config import RunOptions


@pytest.fixture(scope="module")
def stages() -> dict[str, type]:
    return cli.stage_options()


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def test_every_written_stage_is_a_command(stages):
    import importlib.util

    written = [name for name, module, *_ in cli.STAGES
               if importlib.util.find_spec(f"dist_peakd.stages.{module}") is not None]
    assert list(stages) == written and list(cli.stage_commands()) == written
    assert {"finetune-teacher", "cache-teacher", "ptp", "distill", "pipeline"} <= set(stages)


@pytest.mark.slow
def test_console_script_help_lists_every_stage_and_option(stages):
    exe = Path(sys.executable).parent / "dist-peakd"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    for name, cls in stages.items():
        assert f"\n  {name} " in text, name
        for f in dataclasses.fields(cls):
            assert f"--{f.name}" in text, (name, f.name)
            if f.name not in RunOptions.__dataclass_fields__:
                assert f"--{f.name}={_default(f)!r}" in text, (name, f.name)  # stage options with defaults
    for f in dataclasses.fields(RunOptions):
        assert f"--{f.name}={_default(f)!r}" in text, f.name
    assert "--config=None" in text


def test_help_read_by_a_pipe_that_closes_early_ends_quietly():
    """`dist-peakd --help | head -3`: the reader leaves after 3 lines of a help longer than a pipe
    buffer; the command ends with exit 0 and no BrokenPipeError traceback."""
    code = ("import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1); "
            "from dist_peakd import cli; cli.main(['--help'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("how", [["--help"], ["-h"], ["help"]])
def test_stage_help_lists_every_option_with_its_default(stages, capsys, how):
    for name, cls in stages.items():
        argv = ["help", name] if how == ["help"] else [name, *how]
        cli.main(argv)
        text = capsys.readouterr().out
        assert text.startswith(f"usage: dist-peakd {name} ")
        assert "--config=None" in text
        for f in dataclasses.fields(cls):
            assert f"\n  --{f.name}={_default(f)!r} " in text, (name, f.name)  # the stage's own default


def test_option_names_are_the_same_in_every_stage(stages):
    """An option spelled the same means the same type in every stage that takes it (issue 26: a stage takes
    the option sections it reads, not every shared option; the training stages take them all)."""
    from dist_peakd.config import CommandOptions

    shared = {f.name: f.type for f in dataclasses.fields(RunOptions)}
    seen: dict[str, tuple[str, object]] = {}
    for name, cls in stages.items():
        assert issubclass(cls, CommandOptions), name
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        if name in ("finetune-teacher", "ptp", "distill", "pipeline", "sweep", "compress"):
            assert issubclass(cls, RunOptions) and {k: fields[k] for k in shared} == shared, name
        for option, typ in fields.items():  # an option spelled the same means the same type everywhere
            first = seen.setdefault(option, (name, typ))
            assert first[1] == typ, f"--{option}: {first[0]} says {first[1]}, {name} says {typ}"
            assert option == option.lower() and "-" not in option


@pytest.fixture()
def captured(monkeypatch):
    """Replace distill's run() to capture the resolved options instead of training."""
    from dist_peakd.stages import distill

    seen = []
    monkeypatch.setattr(distill, "run", lambda opts: seen.append(opts))
    return seen


def test_config_file_then_command_line(tmp_path, captured):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("task: rte\nlr: 1.0e-3\nk: 2\nuse_ptp: false\nalpha: 0.5\nmax_train_examples: 64\n"
                   "run_name: from-yaml\n")
    cli.main(["distill", "--config", str(cfg), "--lr", "5e-4", "--alpha=0.9", "--run_name", "123",
              "--temperature", "4", "--seed", "3"])
    opts = captured[-1]
    assert (opts.task, opts.k, opts.use_ptp, opts.max_train_examples) == ("rte", 2, False, 64)  # from the file
    assert (opts.lr, opts.alpha, opts.seed) == (5e-4, 0.9, 3)  # the command line wins
    assert opts.run_name == "123" and isinstance(opts.temperature, float)  # types follow the options
    assert opts.epochs == 4.0 and opts.beta == 100.0  # untouched defaults
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"task": "sst2", "use_ptp": False, "batch_size": 16}))
    cli.main(["distill", "--config", str(js), "--use_ptp"])
    assert (captured[-1].task, captured[-1].batch_size, captured[-1].use_ptp) == ("sst2", 16, True)


@pytest.mark.parametrize("args,expected", [
    (["--use_ptp", "false"], False), (["--use_ptp=False"], False), (["--nouse_ptp"], False),
    (["--use-ptp", "no"], False), (["--use_ptp"], True), (["--use_ptp", "1"], True), ([], True)])
def test_boolean_spellings(captured, args, expected):
    cli.main(["distill", *args])
    assert captured[-1].use_ptp is expected


@pytest.mark.parametrize("argv,message", [
    (["distill", "--foo", "1"], "unknown option --foo"),
    (["distill", "--temprature", "4"], "did you mean --temperature?"),
    (["distill", "-a", "0.5"], "short option '-a' is not supported"),
    (["distill", "mrpc"], "unexpected argument 'mrpc'"),
    (["distill", "--use_ptp", "maybe"], "option use_ptp: expected true or false"),
    (["distill", "--batch_size", "eight"], "option batch_size: expected an integer"),
    (["distill", "--lr", "fast"], "option lr: expected a number"),
])
def test_bad_options_are_refused_before_anything_runs(captured, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    if "option " not in message:  # argument errors list the stage's valid options
        from dist_peakd.stages.distill import DistillOptions

        listing = err.split("valid options of distill:")[1]
        for f in dataclasses.fields(DistillOptions):
            assert f"--{f.name}" in listing
    assert captured == []


def test_unknown_option_in_config_file_is_refused(tmp_path, captured, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("lr: 1.0e-3\nlearning_rate: 2\n")
    with pytest.raises(SystemExit) as e:
        cli.main(["distill", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "learning_rate" in err and "valid options" in err and "'temperature'" in err
    assert captured == []


def test_unknown_stage_and_launcher_arguments(captured, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["distil", "--k", "2"])
    assert e.value.code == 2 and "'distil' is not a stage" in capsys.readouterr().err
    cli.main(["--local_rank=1", "distill", "--k", "2"])  # what the deepspeed launcher adds
    cli.main(["distill", "--local_rank=0", "--k", "3"])
    assert [o.k for o in captured] == [2, 3]
    assert capsys.readouterr().out.count("[1/1] distill: mrpc -> runs/mrpc/distill-k") == 2  # the banners
    cli.main(["finetune_teacher", "--help"])  # underscores name the stage too
    assert capsys.readouterr().out.startswith("usage: dist-peakd finetune-teacher")


def test_stage_outcome_lines_carry_its_warnings_and_an_early_stop():
    from dist_peakd.outcome import trainer_outcome

    summary = {"main_metric": "pearson", "total_steps": 6, "stage_dir": "runs/stsb/distill-x",
               "final": {"step": 4, "pearson": 0.0, "spearmanr": 0.0},
               "best": {"step": 2, "pearson": 0.0}, "stopped": {"step": 4, "by": "asha"},
               "metric_warnings": ["stsb: all 8 predictions are the same value 2.5: the model is collapsed"]}
    assert trainer_outcome("distill", summary) == [
        "[dist-peakd] distill stopped at step 4 (ASHA): pearson 0.0000, spearmanr 0.0000 (final, step 4/6); "
        "best pearson 0.0000 at step 2",
        "[dist-peakd] warning: stsb: all 8 predictions are the same value 2.5: the model is collapsed",
        f"[dist-peakd] summary: {Path('runs/stsb/distill-x') / 'summary.json'}"]


def test_model_commands_print_a_banner_and_one_outcome_line(monkeypatch, capsys, tmp_path):
    """evaluate/predict/export: the banner names the model folder and what is made of it; the end is one
    short line (plus the submission file), not the result's JSON."""
    from dist_peakd.stages import evaluate, export, predict

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "dist_peakd.json").write_text(json.dumps({"task": "mrpc", "max_length": 40}))
    model = str(tmp_path / "m")
    results = {
        "evaluate": {"model_dir": model, "task": "mrpc", "split": "dev", "rows": 40,
                     "metrics": {"f1": 0.8125, "accuracy": 0.75, "loss": 0.5}},
        "predict": {"model_dir": model, "task": "mrpc", "split": "test", "rows": 1725, "out": "p.tsv",
                    "submission": "MRPC.tsv"},
        "export": {"format": "onnx", "out": "ship", "files": ["README.md", "model.onnx", "model_int8.onnx"],
                   "bytes": 12_500_000, "max_abs_diff": 2e-6, "max_abs_diff_int8": 0.03, "verify_rows": 64}}
    for module, name in ((evaluate, "evaluate"), (predict, "predict"), (export, "export")):
        monkeypatch.setattr(module, "run", lambda opts, name=name: results[name])
    cli.main(["evaluate", "--model_dir", model])
    cli.main(["predict", "--model_dir", model, "--out", "p.tsv"])
    cli.main(["export", "--model_dir", model, "--format", "onnx", "--quantize", "int8", "--out", "ship"])
    cli.main(["predict", "--model_dir", model, "--input", str(tmp_path / "m" / "dist_peakd.json"), "--out", "p.tsv"])
    assert capsys.readouterr().out.splitlines() == [
        f"[1/1] evaluate: {model}, dev split of mrpc",
        "[dist-peakd] evaluate done: f1 0.8125, accuracy 0.7500, loss 0.5000 (dev, 40 rows)",
        f"[1/1] predict: {model}, test split of mrpc -> p.tsv",
        "[dist-peakd] predict done: 1725 rows of test -> p.tsv",
        "[dist-peakd] GLUE submission file: MRPC.tsv",
        f"[1/1] export: {model} -> ship (onnx, int8)",
        "[dist-peakd] export done: onnx -> ship (12.5 MB, 3 files); verified on 64 dev rows, max |logit diff| "
        "2e-06 (int8 0.03)",
        f"[1/1] predict: {model}, rows of {tmp_path / 'm' / 'dist_peakd.json'} -> p.tsv",
        "[dist-peakd] predict done: 1725 rows of test -> p.tsv", "[dist-peakd] GLUE submission file: MRPC.tsv"]


@pytest.mark.parametrize("argv,owners", [
    (["export", "--lr", "0.1"], ("lr", "finetune-teacher, ptp, distill, pipeline, sweep, compress")),
    (["export", "--nan_policy", "skip"], ("nan_policy", "finetune-teacher, ptp, distill, pipeline, sweep, compress")),
    (["evaluate", "--epochs=2"], ("epochs", "finetune-teacher, ptp, distill, pipeline, sweep, compress")),
    (["cache-teacher", "--batch_size", "8"], ("batch_size", "finetune-teacher, ptp, distill, pipeline, sweep, compress")),
    (["finetune-teacher", "--augment", "2"], ("augment", "cache-teacher, distill, pipeline, sweep, compress")),
    (["ptp", "--temperature", "4"], ("temperature", "distill, pipeline, sweep, compress")),
    (["distill", "--nooptimize"], ("optimize", "export")),
    (["export", "--max_eval_examples", "8"],  # export sets its rows itself (--verify_rows, the card's rows)
     ("max_eval_examples", "finetune-teacher, cache-teacher, ptp, distill, pipeline, sweep, compress, evaluate, "
                           "predict")),
])
def test_an_option_of_other_stages_is_refused_naming_the_stage(captured, capsys, argv, owners):
    """Issue 26: `dist-peakd export --lr 0.1` was accepted and ignored; now exit 2 and one line naming the
    stage and the stages the option belongs to, before anything runs."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    name, stages = owners
    assert err == f"dist-peakd {argv[0]}: error: option --{name}: not an option of {argv[0]!r} (it belongs to: {stages})\n"
    assert captured == []


def test_an_option_of_other_stages_in_a_config_file_is_refused_naming_the_stage(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lr: 1.0e-3\n")
    with pytest.raises(SystemExit) as e:
        cli.main(["export", "--config", str(cfg), "--model_dir", str(tmp_path), "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"dist-peakd export: error: config file {cfg}: option lr: not an option of "
                                       "'export' (it belongs to: finetune-teacher, ptp, distill, pipeline, sweep, "
                                       "compress)\n")


@pytest.mark.parametrize("args,line", [
    (["--batch_size", "8.5"], "the command line: option batch_size: expected an integer, got '8.5'"),
    (["--lr", "inf"], "the command line: option lr: expected a finite number, got 'inf'"),
    (["--micro_batch_size", "0"], "option micro_batch_size: must be >= 1 when given, got 0"),
    (["--warmup_ratio", "1"], "option warmup_ratio: must be in [0, 1), got 1.0"),
    (["--zero_stage", "5"], "option zero_stage: 5 is not one of [0, 1, 2, 3]"),
    (["--kl_reduction", "sum"], "option kl_reduction: 'sum' is not one of ['batchmean', 'mean_per_class']"),
    (["--unlabeled_file", "a.txt", "--augment", "-1"], "option augment: must be >= 0, got -1"),
])
def test_pydantic_checks_the_values_and_its_own_text_never_reaches_the_user(captured, capsys, args, line):
    """Issue 26: types, bounds and choices are declared with the fields and checked by pydantic; the refusal
    is the project's one line (option, what was expected, the value), exit 2."""
    with pytest.raises(SystemExit) as e:
        cli.main(["distill", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == f"dist-peakd distill: error: {line}\n"
    assert captured == []


def test_a_config_file_value_is_checked_by_the_same_declarations(tmp_path, captured, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("temperature: 0\nseed: 2\n")
    with pytest.raises(SystemExit) as e:
        cli.main(["distill", "--config", str(cfg)])
    assert e.value.code == 2
    assert capsys.readouterr().err == f"dist-peakd distill: error: config file {cfg}: option temperature: must be > 0, got 0.0\n"
    cfg.write_text("temperature: 2\nk: yes\n")
    with pytest.raises(SystemExit):
        cli.main(["distill", "--config", str(cfg)])
    assert capsys.readouterr().err == (f"dist-peakd distill: error: config file {cfg}: option k: expected an integer "
                                       "or text (quote it in a YAML file), got True\n")


@pytest.mark.parametrize("text", ["[more.txt,dump.parquet]", "more.txt,dump.parquet", '["more.txt", "dump.parquet"]'])
def test_a_list_option_takes_the_readmes_spelling(text):
    """README: `--unlabeled_file '[more.txt,dump.parquet]'` (main refused it: not JSON)."""
    from dist_peakd.schema import validate_values
    from dist_peakd.stages.distill import DistillOptions

    typed = validate_values(DistillOptions, {"unlabeled_file": text}, "the command line")
    assert typed == {"unlabeled_file": ["more.txt", "dump.parquet"]}
