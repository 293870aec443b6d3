"""Own data through the real stages: MRPC as CSV / JSONL == ``--task mrpc``; a synthetic 3-class set
through the whole pipeline; a regression set through teacher -> cache -> distill (PTP refused)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from own_data_helpers import FORMATS, three_class_rows, write_table

from dist_peakd import cli
from dist_peakd.config import build_options
from dist_peakd.data import DataOptions, load_data

pytestmark = pytest.mark.slow

TINY = ["--max_length", "40", "--batch_size", "16", "--eval_batch_size", "32", "--epochs", "1",
        "--log_every_steps", "1", "--seed", "0", "--lr", "1e-3"]
TIMING = ("train/samples_per_s", "train/tokens_per_s")
TOKEN_COLUMNS = ("idx", "label", "input_ids", "token_type_ids", "length")


def _run_cli(argv: list[str]) -> None:
    """``dist-peakd <argv>`` in this process (fire, option coercion, validation, the guarded stage)."""
    from reliab_helpers import stage_argv  # one run's options, each stage given those it takes (issue 26)

    cli.main(stage_argv([str(a) for a in argv]))


def _train_log(stage_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (stage_dir / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _summary(stage_dir: Path) -> dict:
    summary = json.loads((stage_dir / "summary.json").read_text())
    summary.pop("stage_dir")
    return summary


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tokenized_rows(stage_dir: Path, opts_cls, tokenizer_dir: Path) -> dict:
    """The tokenized train/dev rows the stage trained on (its stage_options.json -> prepare_data, a cache hit)."""
    from dist_peakd.stages.common import load_tokenizer, prepare_data

    values = json.loads((stage_dir / "stage_options.json").read_text())
    data = prepare_data(build_options(opts_cls, **values), load_tokenizer(str(tokenizer_dir)))
    assert data.cache_hit  # the very rows the stage tokenized
    return {split: {c: ds[c][:] for c in TOKEN_COLUMNS} for split, ds in (("train", data.train), ("dev", data.dev))}


# ------------------------------------------------------------------------------ MRPC equivalence
N_TRAIN, N_DEV = 48, 32


@pytest.fixture(scope="module")
def mrpc_files(tmp_path_factory, glue_dir):
    """MRPC's first 48 train / 32 dev rows as CSV (s1, s2, quality) and JSONL (first, second, gold: int)."""
    root = tmp_path_factory.mktemp("mrpc_files")
    glue = load_data(DataOptions(task="mrpc", glue_dir=str(glue_dir)), ["train", "dev"])
    files = {}
    for split, n in (("train", N_TRAIN), ("dev", N_DEV)):
        ds = glue.splits[split].select(range(n))
        rows = list(zip(ds["text_a"], ds["text_b"], ds["label"], strict=True))
        files[("csv", split)] = write_table(root / f"{split}.csv", [
            {"s1": a, "s2": b, "quality": glue.task.labels[y]} for a, b, y in rows])
        files[("jsonl", split)] = write_table(root / f"{split}.jsonl", [
            {"gold": y, "second": b, "first": a} for a, b, y in rows])
    return files


@pytest.fixture(scope="module")
def mrpc_runs(tmp_path_factory, tiny_bert, glue_dir, mrpc_files):
    """finetune-teacher three times through the CLI: --task mrpc (sliced) and the same rows as CSV / JSONL."""
    out = tmp_path_factory.mktemp("mrpc_runs")
    common = ["--output_dir", out, "--backbone", tiny_bert, "--cache_dir", out / "tok", *TINY]
    _run_cli(["finetune-teacher", "--task", "mrpc", "--glue_dir", glue_dir, "--max_train_examples", N_TRAIN,
              "--max_eval_examples", N_DEV, *common])
    _run_cli(["finetune-teacher", "--task", "mrpc_csv", "--train_file", mrpc_files[("csv", "train")],
              "--dev_file", mrpc_files[("csv", "dev")], "--text_columns", "s1,s2", "--label_column", "quality",
              "--metric", "f1", *common])
    _run_cli(["finetune-teacher", "--task", "mrpc_jsonl", "--train_file", mrpc_files[("jsonl", "train")],
              "--dev_file", mrpc_files[("jsonl", "dev")], "--text_columns", "first,second", "--label_column", "gold",
              "--metric", "f1", *common])
    return {name: out / name / "teacher" for name in ("mrpc", "mrpc_csv", "mrpc_jsonl")}


def test_mrpc_as_csv_and_jsonl_trains_exactly_like_the_glue_task(mrpc_runs, tiny_bert):
    from dist_peakd.stages.finetune_teacher import FinetuneTeacherOptions

    glue = mrpc_runs["mrpc"]
    expected_rows = _tokenized_rows(glue, FinetuneTeacherOptions, tiny_bert)
    assert len(expected_rows["train"]["idx"]) == N_TRAIN and len(expected_rows["dev"]["idx"]) == N_DEV
    expected_log, expected_summary = _train_log(glue), _summary(glue)
    assert len(expected_log) == 3 and all(r["train/ce"] > 0 for r in expected_log)  # 48 rows / 16 = 3 steps
    assert expected_summary["main_metric"] == "f1" and set(expected_summary["final"]) == {"step", "f1", "accuracy", "loss"}
    for name in ("mrpc_csv", "mrpc_jsonl"):
        own = mrpc_runs[name]
        assert _tokenized_rows(own, FinetuneTeacherOptions, tiny_bert) == expected_rows, name
        assert _train_log(own) == expected_log, name           # teacher losses, lr, grad norms, step by step
        summary = _summary(own)
        # the same warnings, named after each run's task and labels
        assert len(summary.pop("metric_warnings")) == len(expected_summary["metric_warnings"])
        # the same trivial baseline, its class named by each run's labels ("1" / "equivalent")
        unnamed = lambda block: {k: v for k, v in block.items() if k not in ("class", "label")}  # noqa: E731
        assert unnamed(summary.pop("baseline")) == unnamed(expected_summary["baseline"]), name
        assert summary == {k: v for k, v in expected_summary.items() if k not in ("metric_warnings", "baseline")}, name
        for folder in ("best", "final"):                       # the very same weights
            assert _sha256(own / folder / "model.safetensors") == _sha256(glue / folder / "model.safetensors")
        config = json.loads((own / "final" / "config.json").read_text())
        assert config["id2label"] == {"0": "0", "1": "1"}  # own data: its labels
        record = json.loads((own.parent / "data.json").read_text())
        assert record["task"]["labels"] == ["0", "1"] and record["sources"]["train"]["rows"] == N_TRAIN
    glue_config = json.loads((glue / "final" / "config.json").read_text())
    assert glue_config["id2label"] == {"0": "not_equivalent", "1": "equivalent"}


# ------------------------------------------------------------------------------ 3 classes, end to end
@pytest.fixture(scope="module")
def animals(tmp_path_factory):
    """The synthetic 3-class set (bird / cat / dog, tricky texts) in every format."""
    root = tmp_path_factory.mktemp("animals")
    train, dev = three_class_rows(60), three_class_rows(24)
    return {fmt: (write_table(root / f"train.{fmt}", train), write_table(root / f"dev.{fmt}", dev))
            for fmt in FORMATS}


def test_three_classes_read_alike_in_every_format(animals, tiny_bert, tmp_path):
    """Every format gives the stages the same tokenized rows (the pipeline below runs on two of them)."""
    from dist_peakd.stages.common import load_tokenizer, prepare_data
    from dist_peakd.stages.finetune_teacher import FinetuneTeacherOptions

    tokenizer = load_tokenizer(str(tiny_bert))
    seen = {}
    for fmt, (train, dev) in animals.items():
        opts = build_options(FinetuneTeacherOptions, task=f"animals_{fmt}", train_file=str(train), dev_file=str(dev),
                             output_dir=str(tmp_path), backbone=str(tiny_bert), max_length=40)
        data = prepare_data(opts, tokenizer)
        assert data.task.labels == ("bird", "cat", "dog") and data.task.metrics == ("accuracy", "macro_f1")
        seen[fmt] = {split: {c: ds[c][:] for c in TOKEN_COLUMNS} for split, ds in (("train", data.train),
                                                                                    ("dev", data.dev))}
    first = seen.pop("csv")
    assert len(first["train"]["idx"]) == 60
    assert all(rows == first for rows in seen.values())


@pytest.mark.parametrize("fmt, dev", [("jsonl", "carved"), ("parquet", "file")])
def test_three_class_pipeline_end_to_end(animals, tiny_bert, tmp_path, capsys, fmt, dev):
    train, dev_file = animals[fmt]
    out = tmp_path / "out"
    data_args = ["--task", "animals", "--train_file", train]
    data_args += ["--dev_fraction", "0.25"] if dev == "carved" else ["--dev_file", dev_file]
    _run_cli(["pipeline", *data_args, "--output_dir", out, "--backbone", tiny_bert, "--k", "2", "--teacher_epochs",
              "1", "--ptp_epochs", "1", "--teacher_lr", "1e-3", "--ptp_lr", "1e-3", "--latency_repeats", "1", *TINY])
    task_dir = out / "animals"
    result = json.loads((task_dir / "pipeline_summary.json").read_text())
    assert result["task"] == "animals" and result["metrics"] == ["accuracy", "macro_f1"]
    teacher, student = result["rows"]
    for row in (teacher, student):
        assert 0 <= row["final"]["accuracy"] <= 1 and 0 <= row["final"]["macro_f1"] <= 1
    ptp = json.loads((task_dir / "ptp-k2-shuffle" / "summary.json").read_text())
    n_train = 45 if dev == "carved" else 60
    assert sum(ptp["histogram"]["train"].values()) == n_train  # PTP: 4 classes from a 3-class teacher
    assert json.loads((task_dir / "ptp-k2-shuffle" / "best" / "config.json").read_text())["id2label"] == {
        "0": "confident_correct", "1": "unconfident_correct", "2": "confident_wrong", "3": "unconfident_wrong"}
    student_dir = Path(result["student_dir"])
    config = json.loads((student_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "bird", "1": "cat", "2": "dog"}
    card = json.loads((student_dir / "dist_peakd.json").read_text())
    assert card["data"]["labels"] == ["bird", "cat", "dog"] and card["data"]["problem"] == "multiclass"
    record = json.loads((task_dir / "data.json").read_text())
    if dev == "carved":
        assert record["sources"]["dev"]["carved_from"] == "train" and record["sources"]["dev"]["rows"] == 15
    cache = json.loads((task_dir / "teacher_cache" / "manifest.json").read_text())
    assert cache["splits"]["train"]["rows"] == n_train and cache["num_labels"] == 3
    # usable outside dist-peakd: plain transformers loads the teacher with the labels
    from transformers import AutoModelForSequenceClassification

    teacher_model = AutoModelForSequenceClassification.from_pretrained(str(task_dir / "teacher" / "best"))
    assert teacher_model.config.id2label == {0: "bird", 1: "cat", 2: "dog"}
    assert "| student |" in capsys.readouterr().out


# ------------------------------------------------------------------------------ regression
def _scores(n: int) -> list[dict]:
    words = ("awful", "poor", "fine", "good", "great")
    return [{"review": f"a {words[i % 5]} film, take {i}", "stars": round((i % 5) * 1.0 + 0.25 * (i % 3), 2)}
            for i in range(n)]


def test_regression_runs_teacher_cache_distill_and_refuses_ptp(tiny_bert, tmp_path, capsys):
    train = write_table(tmp_path / "train.csv", _scores(48))
    dev = write_table(tmp_path / "dev.jsonl", _scores(16))
    out = tmp_path / "out"
    args = ["--task", "stars", "--train_file", train, "--dev_file", dev, "--text_columns", "review",
            "--label_column", "stars", "--output_dir", out, "--backbone", tiny_bert, *TINY]
    _run_cli(["finetune-teacher", *args])
    _run_cli(["cache-teacher", *args])
    with pytest.raises(SystemExit) as refused:
        _run_cli(["ptp", "--k", "2", *args])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "option task: PTP is defined for classification tasks only; stars is regression" in err
    assert "--use_ptp=False" in err and not (out / "stars" / "ptp-k2-shuffle").exists()
    _run_cli(["distill", "--k", "2", "--use_ptp", "false", "--run_name", "student", *args])
    task_dir = out / "stars"
    record = json.loads((task_dir / "data.json").read_text())
    assert record["task"]["problem"] == "regression" and record["task"]["labels"] is None
    student = json.loads((task_dir / "student" / "summary.json").read_text())
    assert student["main_metric"] == "pearson" and set(student["final"]) == {"step", "pearson", "spearmanr", "loss"}
    assert isinstance(student["metric_warnings"], list)
    config = json.loads((task_dir / "student" / "final" / "config.json").read_text())
    assert config["id2label"] == {"0": "stars"}
    assert json.loads((task_dir / "teacher_cache" / "manifest.json").read_text())["num_labels"] == 1


def test_collapsed_predictions_are_reported_beside_the_metrics(tiny_bert, tmp_path, capsys):
    """Issue 17 item 6: degenerate dev data (constant targets: pearson/spearmanr read 0.0) is flagged."""
    rows = _scores(32)
    dev = [dict(r, stars=2.0) for r in _scores(8)]  # constant dev labels: pearson/spearmanr undefined
    train = write_table(tmp_path / "train.parquet", rows)
    dev_file = write_table(tmp_path / "dev.parquet", dev)
    out = tmp_path / "out"
    _run_cli(["finetune-teacher", "--task", "flat", "--train_file", train, "--dev_file", dev_file,
              "--text_columns", "review", "--label_column", "stars", "--output_dir", out, "--backbone", tiny_bert,
              *TINY])
    printed = capsys.readouterr().out
    summary = json.loads((out / "flat" / "teacher" / "summary.json").read_text())
    assert any("all 8 labels are the same value 2" in w for w in summary["metric_warnings"])
    assert "[dist-peakd] warning: flat: all 8 labels are the same value 2" in printed


# ------------------------------------------------------------------------------ a sweep on own data
def test_sweep_on_own_data_ranks_trials_by_the_chosen_metric(animals, tiny_bert, tmp_path, monkeypatch):
    """The sweep: own files (relative paths: trials run elsewhere), --metric macro_f1 for ranking and best/."""
    import csv

    from dist_peakd.stages.sweep import SweepOptions
    from dist_peakd.stages.sweep import run as run_sweep
    from dist_peakd.sweep.cluster import init_ray, shutdown_ray

    train, dev = animals["csv"]
    monkeypatch.chdir(train.parent)  # relative file names, as a user would type them
    opts = build_options(SweepOptions, task="animals", train_file=train.name, dev_file=dev.name, metric="macro_f1",
                         output_dir=str(tmp_path / "out"), backbone=str(tiny_bert), max_length=40, batch_size=16,
                         eval_batch_size=32, epochs=1, teacher_epochs=1, ptp_epochs=1, lr=1e-3, teacher_lr=1e-3,
                         ptp_lr=1e-3, k=2, sweep_name="own", scheduler="fifo", space={"temperature": [2, 8]})
    started = init_ray(None, num_cpus=2)
    try:
        result = run_sweep(opts)
    finally:
        shutdown_ray(started)
    sweep_dir = tmp_path / "out" / "animals" / "sweep-own"
    with open(sweep_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}
    assert result["metric"] == "macro_f1"
    assert result["best"]["macro_f1_final"] == max(float(r["macro_f1_final"]) for r in rows)
    for r in rows:
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert summary["main_metric"] == "macro_f1" and set(summary["final"]) == {"step", "accuracy", "macro_f1", "loss"}
        config = json.loads((Path(r["run_dir"]) / "stage_options.json").read_text())
        assert config["train_file"] == str(train) and config["use_ptp"] is True


# ------------------------------------------------------------------------------ evaluate / predict / export
def test_evaluate_predict_export_of_an_own_data_model(animals, tiny_bert, tmp_path):
    """An own-data teacher: evaluate from --model_dir alone (the data options its record holds) equals the
    stage's dev metrics, and with the files given again; predict names the own classes; every export's
    id2label holds the own labels."""
    from dist_peakd.stages import evaluate, export, predict

    train, _ = animals["jsonl"]
    out = tmp_path / "out"
    _run_cli(["finetune-teacher", "--task", "animals", "--train_file", train, "--dev_fraction", "0.25",
              "--output_dir", out, "--backbone", tiny_bert, *TINY])
    folder = out / "animals" / "teacher" / "final"
    want = {k: v for k, v in _summary(folder.parent)["final"].items() if k != "step"}
    common = dict(output_dir=str(out), cache_dir=str(out / "tok"), eval_batch_size=32, model_dir=str(folder))
    alone = evaluate.run(build_options(evaluate.EvaluateOptions, **common))
    assert alone["task"] == "animals" and alone["rows"] == 15 and alone["metrics"] == want
    given = evaluate.run(build_options(evaluate.EvaluateOptions, task="animals", train_file=str(train),
                                       dev_fraction=0.25, **common))
    assert given["metrics"] == want
    texts = write_table(tmp_path / "new.csv", [{"text": "a small dog barks"}, {"text": "the cat sleeps"}])
    preds = tmp_path / "preds.jsonl"
    predict.run(build_options(predict.PredictOptions, input=str(texts), out=str(preds), **common))
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 2 and all(set(r["probabilities"]) == {"bird", "cat", "dog"} for r in rows)
    assert all(r["label"] in ("bird", "cat", "dog") for r in rows)
    dev = predict.run(build_options(predict.PredictOptions, split="dev", out=str(tmp_path / "dev.tsv"), **common))
    assert dev["rows"] == 15 and dev["submission"] is None  # no GLUE submission file for own data
    assert (tmp_path / "dev.tsv").read_text().splitlines()[0] == "index\tlabel\tp_bird\tp_cat\tp_dog"
    for fmt in ("hf", "plain"):
        export.run(build_options(export.ExportOptions, format=fmt, out=str(tmp_path / fmt), **common))
        config = json.loads((tmp_path / fmt / "config.json").read_text())
        assert config["id2label"] == {"0": "bird", "1": "cat", "2": "dog"}, fmt
        assert config["label2id"] == {"bird": 0, "cat": 1, "dog": 2}, fmt
