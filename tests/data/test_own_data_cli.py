"""Bad own data through the CLI: each refused before any training with its exit code and a message
naming the file, row and column (or the option), and nothing of the run written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from own_data_helpers import write_table

from dist_peakd import cli

RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
GOOD = [{"text": f"a {w} film number {i}", "label": w} for i, w in enumerate(["good", "bad"] * 6)]


def _rows(**changes: dict) -> list[dict]:
    """GOOD with some rows replaced: ``changes`` maps "row<i>" to the new row."""
    rows = [dict(r) for r in GOOD]
    for key, row in changes.items():
        rows[int(key.removeprefix("row"))] = row
    return rows


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _refused(argv: list[str], out: Path, capsys) -> tuple[int, str]:
    """Run ``dist-peakd <argv>`` in this process; return (exit code, stderr); check nothing of the run exists."""
    with pytest.raises(SystemExit) as exc:
        cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert not (out / "reviews").exists(), f"the refused run wrote {sorted((out / 'reviews').rglob('*'))}"
    if out.exists():  # at most the parse cache of the input files, never a stage folder
        assert {p.name for p in out.iterdir()} <= {".token_cache"}, sorted(out.iterdir())
        assert not [p for p in (out / ".token_cache").glob("*") if p.name != "hf_datasets"]
    return exc.value.code, err.strip().splitlines()[-1]


@pytest.fixture()
def run(tmp_path, tiny_bert, capsys):
    """``run(stage, files..., extra args)`` -> (exit code, the error line) of a refused own-data run."""
    out = tmp_path / "out"

    def refused(*args: object, stage: str = "finetune-teacher", task: str = "reviews") -> tuple[int, str]:
        training = ["--epochs", "1", "--batch_size", "4"] if stage != "cache-teacher" else []  # it trains nothing
        argv = [stage, "--task", task, "--output_dir", out, "--backbone", tiny_bert, *training, *args]
        return _refused(argv, out, capsys)

    return refused


def test_missing_column_lists_the_files_columns(run, tmp_path):
    train = write_table(tmp_path / "train.csv", GOOD)
    code, err = run("--train_file", train, "--text_columns", "body")
    assert code == 4
    assert err == (f"dist-peakd finetune-teacher: error: {train}: no column 'body' (option text_columns); "
                   "its columns: 'text', 'label'")
    code, err = run("--train_file", train, "--label_column", "stars", stage="cache-teacher")
    assert code == 4 and f"{train}: no column 'stars' (option label_column); its columns: 'text', 'label'" in err


def test_empty_and_null_texts_name_file_row_and_column(run, tmp_path):
    train = write_table(tmp_path / "train.csv", _rows(row3={"text": "   ", "label": "bad"}))
    code, err = run("--train_file", train)
    assert code == 4 and err.endswith(f"{train}: row index 3 (line 5), column 'text': empty text ('   ')")
    train = _write_jsonl(tmp_path / "train.jsonl", ['{"text": "fine", "label": "good"}',
                                                    '{"text": null, "label": "bad"}'])
    code, err = run("--train_file", train)
    assert code == 4 and err.endswith(f"{train}: row index 1, column 'text': null text (a missing value)")


def test_dev_label_outside_the_train_labels(run, tmp_path):
    train = write_table(tmp_path / "train.csv", GOOD)
    dev = write_table(tmp_path / "dev.tsv", _rows(row4={"text": "a fishy film", "label": "fish"})[:6])
    code, err = run("--train_file", train, "--dev_file", dev)
    assert code == 4
    assert err.endswith(f"{dev}: row index 4 (line 6), column 'label': label 'fish' is not in the label set of the "
                        f"train split {train} ('bad', 'good')")
    code, err = run("--train_file", train, "--dev_file", write_table(tmp_path / "dev.csv", GOOD[:4]),
                    "--labels", "good,meh", stage="distill")
    assert code == 4 and "column 'label': label 'bad' is not in the --labels ('good', 'meh')" in err


def test_nan_regression_target(run, tmp_path):
    rows = [{"text": f"take {i}", "score": f"{i / 4:.2f}"} for i in range(8)]
    rows[5]["score"] = "nan"
    train = write_table(tmp_path / "train.csv", rows)
    code, err = run("--train_file", train, "--label_column", "score", "--problem", "regression", stage="ptp")
    assert code == 4 and err.endswith(f"{train}: row index 5 (line 7), column 'score': NaN/inf regression target "
                                      "'nan'")
    train = _write_jsonl(tmp_path / "train.jsonl", ['{"text": "a", "score": 1.5}', '{"text": "b", "score": NaN}'])
    code, err = run("--train_file", train, "--label_column", "score")
    assert code == 4 and err.endswith(f"{train}: row index 1, column 'score': NaN/inf regression target nan")


def test_unknown_extension_and_too_many_text_columns_are_option_errors(run, tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("text,label\nhi,good\n")
    code, err = run("--train_file", train)
    assert code == 2 and err == (f"dist-peakd finetune-teacher: error: option train_file: {train}: unknown extension "
                                 "'.txt'; expected one of .csv, .tsv, .json, .jsonl, .parquet")
    code, err = run("--train_file", write_table(tmp_path / "t.csv", GOOD), "--text_columns", "a,b,c", stage="pipeline")
    assert code == 2 and err.endswith("option text_columns: at most two text columns (a single text or a pair), "
                                      "got 3: a, b, c")


def test_split_with_zero_rows(run, tmp_path):
    train = write_table(tmp_path / "train.csv", GOOD)
    dev = tmp_path / "dev.csv"
    dev.write_text("text,label\n")
    code, err = run("--train_file", train, "--dev_file", dev)
    assert code == 4 and err.endswith(f"{dev}: has a header ('text', 'label') but no data rows")
    empty = tmp_path / "dev.jsonl"
    empty.write_text("")
    code, err = run("--train_file", train, "--dev_file", empty)
    assert code == 4 and err.endswith(f"{empty}: is empty (option dev_file)")


def test_max_length_above_the_backbone_is_refused_naming_both_numbers(run, tmp_path, tiny_bert):
    train = write_table(tmp_path / "train.csv", GOOD)
    code, err = run("--train_file", train, "--max_length", "4096")
    assert code == 2
    assert err == (f"dist-peakd finetune-teacher: error: option max_length: 4096 exceeds the backbone's "
                   f"max_position_embeddings 512 of {tiny_bert}; use --max_length 512 or less (longer texts are "
                   "truncated to it)")
    code, err = run("--max_length", "4096", stage="distill", task="mrpc")  # GLUE too, before anything is read
    assert code == 2 and "option max_length: 4096 exceeds the backbone's max_position_embeddings 512" in err


def test_changed_data_under_the_same_run_is_refused(tmp_path, tiny_bert, capsys):
    """data.json: a later stage reading other files than the run's first one is refused (exit 4)."""
    from dist_peakd.config import build_options
    from dist_peakd.stages.common import load_run_data
    from dist_peakd.stages.finetune_teacher import FinetuneTeacherOptions

    out = tmp_path / "out"
    train = write_table(tmp_path / "train.csv", GOOD)
    opts = build_options(FinetuneTeacherOptions, task="reviews", train_file=str(train), output_dir=str(out),
                         backbone=str(tiny_bert))
    load_run_data(opts)
    assert (out / "reviews" / "data.json").is_file()
    write_table(train, _rows(row0={"text": "another text", "label": "good"}))
    with pytest.raises(SystemExit) as exc:
        cli.main(["cache-teacher", "--task", "reviews", "--train_file", str(train), "--output_dir", str(out),
                  "--backbone", str(tiny_bert)])
    err = capsys.readouterr().err
    assert exc.value.code == 4
    assert "data.json: the data differ from the ones this run started with (train.sha256: " in err
    assert not (out / "reviews" / "teacher_cache").exists()


@pytest.mark.slow
def test_console_script_exit_code_and_one_line_error(tmp_path, tiny_bert):
    """The installed ``dist-peakd`` in a fresh process: exit 4, one line naming file, row and column."""
    train = write_table(tmp_path / "train.csv", _rows(row2={"text": "", "label": "good"}))
    exe = Path(sys.executable).parent / "dist-peakd"
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}  # not this process's group
    proc = subprocess.run([str(exe), "finetune-teacher", "--task", "reviews", "--train_file", str(train),
                           "--output_dir", str(tmp_path / "out"), "--backbone", str(tiny_bert)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (f"dist-peakd finetune-teacher: error: {train}: row index 2 "
                                                    "(line 4), column 'text': empty text ('')")
    assert "Traceback" not in proc.stderr and not (tmp_path / "out" / "reviews").exists()
