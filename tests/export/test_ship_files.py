"""Issue 27 items 6/7: what a user ships. Every file a stage / export writes follows the umask (safetensors and
``mkstemp`` write 0600); exported tokenizers carry the trained length, so ``pipeline()`` with truncation
gives ``predict``'s probabilities; the model card of a subset run says so, with the trivial baseline and
the class skew of the predictions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from own_data_helpers import three_class_rows, write_table
from transformers import AutoTokenizer

from dist_peakd import cli
from dist_peakd.config import build_options
from dist_peakd.export import export_compact, export_plain
from dist_peakd.models import build_student

MAX_LENGTH = 24
N_DEV, N_EVAL = 20, 12
TINY = ["--max_length", MAX_LENGTH, "--batch_size", "16", "--eval_batch_size", "32", "--epochs", "1",
        "--log_every_steps", "1", "--seed", "0", "--lr", "1e-3"]
LONG_TEXT = " ".join(["the dog and the cat and the bird walked home slowly"] * 6)


def _modes(root: Path) -> dict[str, int]:
    """Permission bits of every regular file under ``root`` (relative path -> mode)."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")
            if p.is_file() and not p.is_symlink()}


def _wrong_modes(root: Path, umask: int) -> dict[str, str]:
    want = 0o666 & ~umask
    return {name: oct(mode) for name, mode in _modes(root).items() if mode != want}


@pytest.fixture()
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.fixture(scope="module")
def animals(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("animals_files")
    rows = three_class_rows(60)
    return write_table(root / "train.csv", rows[:40]), write_table(root / "dev.csv", rows[40:40 + N_DEV])


def _teacher(out: Path, animals: tuple[Path, Path], backbone: Path, *extra) -> Path:
    train, dev = animals
    cli.main([str(a) for a in ["finetune-teacher", "--task", "animals", "--train_file", train, "--dev_file", dev,
                               "--output_dir", out, "--backbone", backbone, "--cache_dir", out / "tok", *TINY,
                               *extra]])
    return out / "animals" / "teacher"


@pytest.fixture(scope="module")
def subset_teacher(tmp_path_factory, animals, tiny_bert) -> Path:
    """An own-data teacher trained under umask 002, scored on the first N_EVAL of N_DEV dev rows."""
    old = os.umask(0o002)
    try:
        return _teacher(tmp_path_factory.mktemp("subset"), animals, tiny_bert, "--max_eval_examples", N_EVAL)
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------ item 1: the umask
def test_every_file_a_stage_writes_follows_the_umask(subset_teacher):
    """umask 002: group-writable 0664 everywhere (model.safetensors and data.json were 0600)."""
    run_dir = subset_teacher.parent.parent
    assert (run_dir / "animals" / "data.json").is_file() and (subset_teacher / "final" / "model.safetensors").is_file()
    assert _wrong_modes(run_dir, 0o002) == {}


@pytest.mark.parametrize("umask", [0o022, 0o002], indirect=True)
def test_every_file_an_export_writes_follows_the_umask(umask, tmp_path, tiny_bert):
    torch.manual_seed(0)
    student = build_student(tiny_bert, k=2, variant="shuffle", num_labels=2).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    export_compact(student, tmp_path / "compact", tokenizer=tok)
    export_plain(student, tmp_path / "plain", tokenizer=tok)
    assert stat.S_IMODE((tmp_path / "compact" / "model.safetensors").stat().st_mode) == 0o666 & ~umask
    assert _wrong_modes(tmp_path, umask) == {}


@pytest.mark.parametrize("umask", [0o022, 0o002], indirect=True)
def test_the_export_command_and_data_record_follow_the_umask(umask, tmp_path, animals, tiny_bert):
    from dist_peakd.stages import export

    teacher = _teacher(tmp_path / "run", animals, tiny_bert)
    for fmt in ("hf", "plain"):
        export.run(build_options(export.ExportOptions, format=fmt, out=str(tmp_path / "ship" / fmt),
                                 model_dir=str(teacher / "best"), output_dir=str(tmp_path / "run"),
                                 cache_dir=str(tmp_path / "run" / "tok")))
    assert _wrong_modes(tmp_path, umask) == {}


# ------------------------------------------------------------------------------ item 2: the trained length
def _pipeline_probabilities(folder: Path, text: str) -> dict[str, float]:
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(folder), device="cpu")
    return {r["label"]: r["score"] for r in clf(text, top_k=None, truncation=True)}


def test_stage_folders_carry_the_trained_length_and_pipeline_gives_predicts_outputs(subset_teacher, tmp_path):
    from dist_peakd.stages import predict

    for which in ("best", "final"):
        tok = AutoTokenizer.from_pretrained(str(subset_teacher / which))
        assert tok.model_max_length == MAX_LENGTH, which
        assert len(tok(LONG_TEXT)["input_ids"]) > MAX_LENGTH  # the text is cut: the length matters
    texts = write_table(tmp_path / "long.jsonl", [{"text": LONG_TEXT}])
    out = tmp_path / "preds.jsonl"
    run_dir = subset_teacher.parent.parent
    predict.run(build_options(predict.PredictOptions, input=str(texts), out=str(out), output_dir=str(run_dir),
                              cache_dir=str(run_dir / "tok"), model_dir=str(subset_teacher / "final")))
    want = json.loads(out.read_text().splitlines()[0])["probabilities"]
    got = _pipeline_probabilities(subset_teacher / "final", LONG_TEXT)
    assert set(got) == set(want) and max(abs(got[k] - want[k]) for k in want) < 1e-6, (got, want)


def test_exports_carry_the_trained_length(subset_teacher, tmp_path):
    """hf and plain (the ONNX export saves its tokenizer through the same save_tokenizer(..., trained
    max_length of the record); its graph export takes a minute on a shared CPU, so it is not run here)."""
    from dist_peakd.stages import export

    run_dir = subset_teacher.parent.parent
    for fmt in ("hf", "plain"):
        export.run(build_options(export.ExportOptions, format=fmt, out=str(tmp_path / fmt),
                                 model_dir=str(subset_teacher / "best"), output_dir=str(run_dir),
                                 cache_dir=str(run_dir / "tok")))
        assert AutoTokenizer.from_pretrained(str(tmp_path / fmt)).model_max_length == MAX_LENGTH, fmt
    want = _pipeline_probabilities(subset_teacher / "best", LONG_TEXT)
    got = _pipeline_probabilities(tmp_path / "plain", LONG_TEXT)
    assert max(abs(got[k] - want[k]) for k in want) < 1e-6


# ------------------------------------------------------------------------------ item 7: the card of a real run
def _dev_gold(animals) -> list[str]:
    import csv

    with open(animals[1], newline="") as f:
        return [row["label"] for row in csv.DictReader(f)]


def test_stage_card_labels_the_subset_and_states_baseline_and_skew(subset_teacher, animals):
    from collections import Counter

    from dist_peakd.export.card import parse_card_metadata

    card = (subset_teacher / "final" / "README.md").read_text()
    assert f"## Dev metrics (dev subset: first {N_EVAL} of {N_DEV} rows)" in card
    dataset = parse_card_metadata(card)["model-index"][0]["results"][0]["dataset"]
    assert f"first {N_EVAL} of {N_DEV} rows" in dataset["name"] and "validation" not in json.dumps(dataset)
    gold = Counter(_dev_gold(animals)[:N_EVAL])  # the rows the card's metrics are of
    majority, count = sorted(gold.items(), key=lambda kv: (-kv[1], ["bird", "cat", "dog"].index(kv[0])))[0]
    section = card[card.index("## Limitations"):card.index("## How to load")]
    assert f"always the most frequent gold class of those rows, `{majority}`): accuracy {count / N_EVAL:.4f}" in section
    for name in ("bird", "cat", "dog"):
        assert f"| {gold[name] / N_EVAL:.4f} |" in section.split(f"| {name} |")[1].split("\n")[0] + "|", name
    record = json.loads((subset_teacher / "final" / "dist_peakd.json").read_text())
    shares = record["card"]["limitations"]["predicted_share"]
    assert set(shares) == {"bird", "cat", "dog"} and sum(shares.values()) == pytest.approx(1.0)
    assert str(subset_teacher.parent.parent) not in card.split("## How it was made")[0]  # no local path above


@pytest.fixture(scope="module")
def student_of_subset_teacher(subset_teacher, tiny_bert) -> Path:
    run_dir = subset_teacher.parent.parent
    train = json.loads((subset_teacher / "stage_options.json").read_text())["train_file"]
    dev = json.loads((subset_teacher / "stage_options.json").read_text())["dev_file"]
    args = ["--task", "animals", "--train_file", train, "--dev_file", dev, "--output_dir", run_dir, "--backbone",
            tiny_bert, "--cache_dir", run_dir / "tok", *TINY, "--max_eval_examples", N_EVAL]
    from reliab_helpers import stage_argv  # the run's options, those cache-teacher takes (issue 26)

    cli.main(stage_argv([str(a) for a in ["cache-teacher", *args]]))
    cli.main([str(a) for a in ["distill", "--k", "1", "--use_ptp", "false", "--run_name", "student", *args]])
    return run_dir / "animals" / "student"


def test_student_card_names_its_teacher_by_name_and_fingerprint(student_of_subset_teacher, subset_teacher):
    from dist_peakd.cache import teacher_fingerprint

    card = (student_of_subset_teacher / "final" / "README.md").read_text()
    fingerprint = teacher_fingerprint(subset_teacher / "best")  # the run's teacher: teacher/best
    assert "distilled from the teacher `dist-peakd-animals-teacher-best` (fingerprint " in card
    assert f"fingerprint `sha256:{fingerprint[:16]}`" in card
    assert str(subset_teacher) not in card.split("## How it was made")[0]
    section = card[card.index("## Limitations"):card.index("## How to load")]
    inputs = json.loads((student_of_subset_teacher / "final" / "dist_peakd.json").read_text())["card"]
    main = inputs["limitations"]["main_metric"]
    model, teacher = inputs["dev_metrics"]["final"][main], inputs["dev_metrics"]["teacher"][main]
    base = inputs["limitations"]["baseline"]["metrics"][main]
    assert f"The teacher scores {main} {teacher:.4f}" in section
    if teacher > base:  # the share of the teacher's gain over the baseline the student keeps
        assert f"keeps **{(model - base) / (teacher - base):.1%}** of the teacher's gain" in section
    else:
        assert "no better than the baseline" in section


def test_onnx_card_carries_the_int8_dev_metrics_next_to_fp32(subset_teacher, tmp_path):
    pytest.importorskip("onnxruntime")
    from dist_peakd.export.card import _fmt
    from dist_peakd.stages import evaluate, export

    run_dir = subset_teacher.parent.parent
    common = dict(output_dir=str(run_dir), cache_dir=str(run_dir / "tok"))
    out = tmp_path / "onnx"
    result = export.run(build_options(export.ExportOptions, format="onnx", quantize="int8", out=str(out),
                                      verify_rows=4, model_dir=str(subset_teacher / "best"), **common))
    card = (out / "README.md").read_text()
    header = next(line for line in card.splitlines() if line.startswith("| metric |"))
    assert header == "| metric | best | onnx fp32 | onnx int8 |"
    accuracy_row = next(line for line in card.splitlines() if line.startswith("| accuracy |")).split(" | ")
    for i, (graph, column) in enumerate((("model.onnx", "onnx fp32"), ("model_int8.onnx", "onnx int8"))):
        # the same rows as the card's PyTorch column: the run's first N_EVAL dev rows
        want = evaluate.run(build_options(evaluate.EvaluateOptions, model_dir=str(out), onnx_file=graph,
                                          max_eval_examples=N_EVAL, **common))
        assert result["dev_metrics"][column] == pytest.approx(want["metrics"], abs=1e-6)
        assert accuracy_row[2 + i].strip(" |") == _fmt(want["metrics"]["accuracy"]), column
    assert "## Dev metrics (dev subset: first" in card
    assert AutoTokenizer.from_pretrained(str(out)).model_max_length == MAX_LENGTH  # item 6: the ONNX folder too


def test_pipeline_latency_in_the_card_names_the_machine_and_threads(student_of_subset_teacher, tmp_path):
    import shutil

    from dist_peakd.export.card_limits import cpu_name
    from dist_peakd.stages.pipeline import add_latency_to_card

    folder = tmp_path / "final"
    shutil.copytree(student_of_subset_teacher / "final", folder)
    add_latency_to_card(folder, [{"model": "teacher", "latency_ms": 4.0}, {"model": "student", "latency_ms": 2.0}],
                        batch=8, device=torch.device("cpu"))
    card = (folder / "README.md").read_text()
    section = card[card.index("## Measured latency"):card.index("## Limitations")]
    assert "| model | runtime | batch | seq | median_ms | machine | threads |" in section
    row = next(line for line in section.splitlines() if line.startswith("| student |"))
    assert f"| {cpu_name()} (CPU, {os.cpu_count()} logical cores) | {torch.get_num_threads()} |" in row
    assert "were not recorded" not in section
