"""Issue 27 item 2 (+ 6, 7): own data is never silently wrong.

A ``nan``/``inf`` target is refused wherever it comes from (never a class of its own); the data summary
says why a label column was read as classes; the parse cache (HF ``datasets``' Arrow files) is verified
like the tokenization cache; ``predict --input`` checks its texts as training does and takes ``text`` /
``text_pair``; CSV/TSV fields longer than the csv module's default limit are read.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest
from own_data_helpers import FORMATS, hub_folder, write_table

from dist_peakd import cli
from dist_peakd.config import RunOptions, build_options
from dist_peakd.data import ColumnError, DataOptions, DataValueError, Task, load_data
from dist_peakd.data.readers import read_glue_tsv
from dist_peakd.errors import ArtifactCorruptError, exit_code_of
from dist_peakd.integrity import EXPORT_MANIFEST


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    datasets.disable_progress_bars()


def _load(tmp_path, splits=None, **kw):
    return load_data(DataOptions(task=kw.pop("task", "own"), **kw), splits, cache_dir=str(tmp_path / "hf"))


def _scores(fmt: str, bad: str | None = None, n: int = 6) -> list[dict]:
    """Regression rows (0.5, 1.5, ...); ``bad`` replaces row 3's score (text formats: as written)."""
    rows = [{"text": f"sentence {i}", "score": float(i) + 0.5} for i in range(n)]
    if bad is not None:
        rows[3]["score"] = float(bad)
    if fmt in ("csv", "tsv"):
        rows = [{"text": r["text"], "score": bad if (i == 3 and bad is not None) else str(r["score"])}
                for i, r in enumerate(rows)]
    return rows


# ------------------------------------------------------------------------------ (a) non-finite targets
@pytest.mark.parametrize("role", ["train", "dev", "test"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_non_finite_target_is_refused_in_every_format_and_split(tmp_path, fmt, role):
    """One nan/inf cell: refused naming the file, row (CSV/TSV: line) and column; never a 3-class problem."""
    bad = {"train": "nan", "dev": "inf", "test": "-inf"}[role]
    if fmt in ("csv", "tsv") and role == "train":
        bad = "NaN"
    good = write_table(tmp_path / f"good.{fmt}", _scores(fmt))
    broken = write_table(tmp_path / f"broken.{fmt}", _scores(fmt, bad))
    files = {f"{r}_file": str(broken if r == role else good) for r in ("train", "dev", "test")}
    with pytest.raises(DataValueError) as e:
        _load(tmp_path, ["train", "dev", "test"], label_column="score", **files)
    msg = str(e.value)
    line = " (line 5)" if fmt in ("csv", "tsv") else ""
    assert msg.startswith(f"{broken}: row index 3{line}, column 'score': "), msg
    # JSON arrays (json.loads -> pandas) turn NaN/Infinity into a null: refused as a missing target
    assert ("NaN/inf regression target" in msg) or (fmt == "json" and "empty regression target" in msg), msg
    assert exit_code_of(e.value) == 4


def test_the_reported_case_nan_in_a_csv_regression_column_is_not_three_classes(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,score\nthe first one,0.5\nthe second one,1.5\nthe third one,nan\nthe fourth,0.5\n")
    with pytest.raises(DataValueError, match=r"train\.csv: row index 2 \(line 4\), column 'score': NaN/inf "
                                             r"regression target 'nan'"):
        _load(tmp_path, train_file=str(train), label_column="score")


@pytest.mark.parametrize("kw", [{}, {"problem": "multiclass"}])
def test_nan_among_integer_labels_is_refused_not_a_class(tmp_path, kw):
    train = tmp_path / "train.csv"
    train.write_text("text,label\nalpha,0\nbeta,1\ngamma,NaN\ndelta,1\nepsilon,0\n")
    with pytest.raises(DataValueError, match=r"train\.csv: row index 2 \(line 4\), column 'label': NaN/inf label "
                                             r"'NaN' in a column of numbers"):
        _load(tmp_path, train_file=str(train), **kw)


def test_inf_in_a_float_column_read_as_classes_is_refused(tmp_path):
    rows = [{"text": f"t{i}", "label": float(i % 2)} for i in range(6)]
    rows[4]["label"] = float("inf")
    train = write_table(tmp_path / "train.parquet", rows)
    with pytest.raises(DataValueError, match=r"row index 4, column 'label': NaN/inf label inf"):
        _load(tmp_path, train_file=str(train), problem="multiclass")


def test_a_class_named_nan_among_words_stays_a_class(tmp_path):
    """Not a numeric column: 'nan' is a word like the others (e.g. a grandmother), read as a class, and the
    summary says why."""
    rows = [{"text": f"t{i}", "label": w} for i, w in enumerate(["cat", "dog", "nan"] * 3)]
    data = _load(tmp_path, train_file=str(write_table(tmp_path / "train.csv", rows)))
    assert data.task.labels == ("cat", "dog", "nan")
    assert "read as 3 classes ('cat', 'dog', 'nan') because its values are not all numbers (e.g. 'cat')" \
        in data.summary()


@pytest.mark.parametrize(("labels", "kw", "says"), [
    (["0", "1", "2"], {}, "read as 3 classes ('0', '1', '2') because every value is an integer (for scores pass "
                          "--problem regression)"),
    (["a", "b"], {}, "read as 2 classes ('a', 'b') because its values are not all numbers (e.g. 'a')"),
    (["1", "2"], {"labels": "2,1"}, "read as 2 classes ('2', '1') because --labels lists 2"),
    (["0.5", "1.5"], {}, "read as regression targets because its values are numbers, not all integers"),
    (["0.5", "1.5"], {"problem": "multiclass"}, "read as 2 classes ('0.5', '1.5') because --problem multiclass"),
])
def test_the_summary_says_why_a_column_was_read_as_it_was(tmp_path, labels, kw, says):
    rows = [{"text": f"text {i}", "label": labels[i % len(labels)]} for i in range(12)]
    data = _load(tmp_path, train_file=str(write_table(tmp_path / "train.csv", rows)), **kw)
    assert says in data.summary()
    assert data.summary().endswith("; train 11 rows, dev 1 rows (carved from train)")


def test_each_stage_prints_the_data_summary_once(tmp_path, capsys):
    from dist_peakd.stages.common import load_run_data

    rows = [{"text": f"text {i}", "label": ["0", "1"][i % 2]} for i in range(10)]
    train = write_table(tmp_path / "train.csv", rows)
    opts = build_options(RunOptions, task="digits", train_file=str(train), output_dir=str(tmp_path / "out"))
    load_run_data(opts, check_run=False)
    load_run_data(opts, check_run=False)
    out = [line for line in capsys.readouterr().out.splitlines() if "read as" in line]
    assert out == ["[dist-peakd] data digits: label column 'label' read as 2 classes ('0', '1') because every value "
                   "is an integer (for scores pass --problem regression); train 9 rows, dev 1 rows (carved from "
                   "train)"]


def test_a_nan_target_through_the_cli_is_exit_4_and_writes_no_run(tmp_path, tiny_bert, capsys):
    train = tmp_path / "scores.csv"
    train.write_text("text,score\nthe first one,0.5\nthe second one,1.5\nthe third one,nan\nthe fourth,2.5\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        cli.main(["finetune-teacher", "--task", "scores", "--train_file", str(train), "--label_column", "score",
                  "--output_dir", str(out), "--backbone", str(tiny_bert), "--epochs", "1"])
    assert e.value.code == 4
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"{train}: row index 2 (line 4), column 'score': NaN/inf regression target 'nan'")
    assert not (out / "scores").exists()


# ------------------------------------------------------------------------------ (b) the parse cache
def _flip(arrow: Path, old: bytes, new: bytes) -> None:
    data = bytearray(arrow.read_bytes())
    at = data.find(old)
    assert at >= 0 and len(old) == len(new)
    data[at:at + len(old)] = new
    arrow.write_bytes(bytes(data))


def _folder(parent: Path) -> Path:
    (folder,) = [p for p in parent.iterdir() if p.is_dir()]
    return folder


def _pos_neg(tmp_path) -> Path:
    rows = [{"text": f"review number {i}", "label": "pos" if i % 3 else "neg"} for i in range(12)]
    return write_table(tmp_path / "reviews.csv", rows)


def test_a_flipped_label_in_the_parse_cache_is_refused(tmp_path):
    train = _pos_neg(tmp_path)
    first = _load(tmp_path, train_file=str(train))
    folder = _folder(tmp_path / "hf" / "dist_peakd_files")
    assert folder.is_dir() and (folder / EXPORT_MANIFEST).is_file()
    arrow = next(folder.rglob("*.arrow"))
    _flip(arrow, b"neg", b"pos")
    with pytest.raises(ArtifactCorruptError) as e:
        _load(tmp_path, train_file=str(train))
    assert str(e.value) == (f"corrupted artifact: {arrow}: sha256 differs from the recorded one (corrupted bytes) "
                            f"(parse cache of {train}; delete {folder} and rerun: it is parsed again)")
    assert exit_code_of(e.value) == 4
    # the advice works: deleted, the file is parsed again and reads as it did
    import shutil

    shutil.rmtree(folder)
    again = _load(tmp_path, train_file=str(train))
    assert again.splits["train"]["label"][:] == first.splits["train"]["label"][:]


def test_a_parse_cache_without_its_record_is_parsed_again(tmp_path):
    """An unverifiable folder (an older version's, or its record removed) is never read as it is."""
    train = _pos_neg(tmp_path)
    first = _load(tmp_path, train_file=str(train))
    folder = _folder(tmp_path / "hf" / "dist_peakd_files")
    (folder / EXPORT_MANIFEST).unlink()
    _flip(next(folder.rglob("*.arrow")), b"neg", b"pos")
    again = _load(tmp_path, train_file=str(train))
    assert again.splits["train"]["label"][:] == first.splits["train"]["label"][:]
    assert (folder / EXPORT_MANIFEST).is_file()


def test_a_truncated_parse_cache_file_is_refused(tmp_path):
    train = _pos_neg(tmp_path)
    _load(tmp_path, train_file=str(train))
    arrow = next((tmp_path / "hf").rglob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-40])
    with pytest.raises(ArtifactCorruptError, match=r"csv-train\.arrow: has \d+ bytes, expected \d+"):
        _load(tmp_path, train_file=str(train))


def test_the_next_stage_refuses_a_flipped_parse_cache(tmp_path, tiny_bert, capsys):
    """Through the CLI: the parse cache a first stage left under the run's token cache, flipped, stops the
    next stage with exit 4 naming the file; no stage folder is made (it never trains on the flipped label)."""
    train = _pos_neg(tmp_path)
    out = tmp_path / "out"
    load_data(DataOptions(task="reviews", train_file=str(train)), cache_dir=str(out / ".token_cache" / "hf_datasets"))
    arrow = next((out / ".token_cache" / "hf_datasets").rglob("*.arrow"))
    _flip(arrow, b"neg", b"pos")
    with pytest.raises(SystemExit) as e:
        cli.main(["finetune-teacher", "--task", "reviews", "--train_file", str(train), "--output_dir", str(out),
                  "--backbone", str(tiny_bert), "--epochs", "1"])
    assert e.value.code == 4
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"corrupted artifact: {arrow}: sha256 differs" in last and "parse cache of" in last
    assert not (out / "reviews").exists()


def test_a_flipped_hub_parse_cache_is_refused(tmp_path):
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    cols = {"text": [f"t{i}" for i in range(8)], "label": [i % 2 for i in range(8)]}
    hub = hub_folder(tmp_path / "hub", "default", {"train": cols, "validation": cols}, features)
    _load(tmp_path, hub_dataset=str(hub), hub_config="default")
    folder = _folder(tmp_path / "hf" / "dist_peakd_hub")
    arrow = sorted(folder.rglob("*train*.arrow"))[0]
    data = bytearray(arrow.read_bytes())
    data[-200] ^= 0xFF
    arrow.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptError, match=rf"{arrow.name}: sha256 differs .*parse cache of hub dataset"):
        _load(tmp_path, hub_dataset=str(hub), hub_config="default")


# ------------------------------------------------------------------------------ (c) predict --input texts
PAIR = Task(name="pairs", text_columns=("first", "second"), label_column="label", labels=("no", "yes"),
            metrics=("accuracy",), main_metric="accuracy", problem="binary")
SINGLE = Task(name="single", text_columns=("review",), label_column="label", labels=("no", "yes"),
              metrics=("accuracy",), main_metric="accuracy", problem="binary")


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(("value", "error", "says"), [
    (None, DataValueError, "row index 1, column 'text': null text (a missing value)"),
    ("  ", DataValueError, "row index 1, column 'text': empty text ('  ')"),
])
def test_predict_input_refuses_a_null_or_blank_text(tmp_path, value, error, says):
    from dist_peakd.stages.predict import _input_texts

    path = _jsonl(tmp_path / "in.jsonl", [{"text": "fine"}, {"text": value}, {"text": "also fine"}])
    with pytest.raises(error) as e:
        _input_texts(path, SINGLE)
    assert str(e.value) == f"{path}: {says}" and exit_code_of(e.value) == 4


@pytest.mark.parametrize("value", [[1, 2], 7])
def test_predict_input_refuses_numbers_and_lists_as_texts(tmp_path, value):
    """Not ``str(value)``: a column of numbers or lists is refused naming the file and the column."""
    from dist_peakd.stages.predict import _input_texts

    path = _jsonl(tmp_path / "in.jsonl", [{"first": "fine", "second": value}] * 3)
    with pytest.raises(ColumnError) as e:
        _input_texts(path, PAIR)
    assert str(e.value).startswith(f"{path}: column 'second' holds ") and "expected text (option input)" in str(e.value)
    assert exit_code_of(e.value) == 4


@pytest.mark.parametrize(("value", "says"), [(5, "int value 5"), (["x"], "list value ['x']")])
def test_predict_input_refuses_a_number_or_list_among_texts(tmp_path, value, says):
    from dist_peakd.stages.predict import _input_texts

    path = _jsonl(tmp_path / "in.jsonl", [{"text": "fine"}, {"text": "fine too"}, {"text": value}])
    with pytest.raises(DataValueError) as e:
        _input_texts(path, SINGLE)
    assert str(e.value) == f"{path}: row index 2, column 'text': {says} where a text is expected"


def test_predict_input_takes_text_and_text_pair(tmp_path):
    from dist_peakd.stages.predict import _input_texts

    pairs = _jsonl(tmp_path / "p.jsonl", [{"text": "a cat", "text_pair": "a feline", "id": 3}])
    assert _input_texts(pairs, PAIR) == (["a cat"], ["a feline"])
    single = write_table(tmp_path / "s.csv", [{"text": "so good"}, {"text": "so bad"}])
    assert _input_texts(str(single), SINGLE) == (["so good", "so bad"], ["", ""])
    other = _jsonl(tmp_path / "o.jsonl", [{"text": "only one"}])
    with pytest.raises(Exception, match=r"needs \['first', 'second'\] or \['text_a', 'text_b'\] or "
                                        r"\['text', 'text_pair'\]"):
        _input_texts(other, PAIR)


def test_predict_with_text_and_text_pair_equals_the_tasks_own_columns(tmp_path, tiny_bert):
    """End to end on a saved 2-class MRPC model: the same pairs under ``text``/``text_pair`` and under the
    hub's ``sentence1``/``sentence2`` give the same predictions (both texts are used: swapping them differs)."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from dist_peakd.stages import predict

    model_dir = tmp_path / "model"
    model = BertForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2)
    model.save_pretrained(str(model_dir))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(model_dir))
    a = ["the cat sat on the mat", "stocks fell sharply today", "he plays the guitar"]
    b = ["a dog barked twice", "markets dropped on monday", "she sings in a choir"]
    files = {"pipeline": [{"text": x, "text_pair": y} for x, y in zip(a, b, strict=True)],
             "hub": [{"sentence1": x, "sentence2": y} for x, y in zip(a, b, strict=True)],
             "swapped": [{"text": y, "text_pair": x} for x, y in zip(a, b, strict=True)]}
    got = {}
    for name, rows in files.items():
        out = tmp_path / f"{name}.jsonl"
        predict.run(build_options(predict.PredictOptions, task="mrpc", model_dir=str(model_dir), max_length=32,
                                  input=_jsonl(tmp_path / f"{name}-in.jsonl", rows), out=str(out),
                                  output_dir=str(tmp_path / "run"), trust_unverified=True))
        got[name] = [json.loads(line)["probabilities"] for line in out.read_text().splitlines()]
    assert len(got["pipeline"]) == 3 and got["pipeline"] == got["hub"]
    assert got["swapped"] != got["pipeline"]


# ------------------------------------------------------------------------------ item 6: long CSV/TSV fields
@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_a_200000_character_field_is_read(tmp_path, fmt):
    long = "word " * 40_000  # 200,000 characters, over the csv module's 131,072 default
    rows = [{"text": long.strip() + " end", "label": "a"}, {"text": "short", "label": "b"}] * 2
    path = write_table(tmp_path / f"train.{fmt}", rows)
    limit = csv.field_size_limit()
    data = _load(tmp_path, ["train", "dev"], train_file=str(path), dev_file=str(path))
    assert data.splits["train"]["text_a"][0] == long.strip() + " end"
    assert len(data.splits["dev"]["text_a"][0]) == 200_003
    assert csv.field_size_limit() == limit  # raised for the read only


def test_a_long_field_is_truncated_by_tokenization(tmp_path, tiny_bert):
    from transformers import AutoTokenizer

    from dist_peakd.data import tokenize_dataset

    rows = [{"text": "word " * 40_000, "label": "a"}, {"text": "short text", "label": "b"}]
    path = write_table(tmp_path / "train.tsv", rows)
    data = _load(tmp_path, ["train", "dev"], train_file=str(path), dev_file=str(path))
    tokenized, _ = tokenize_dataset(data.splits, AutoTokenizer.from_pretrained(str(tiny_bert)), 16,
                                    tmp_path / "tok", data.fingerprint)
    assert tokenized["train"]["length"][:] == [16, 4]


def test_glue_tsv_reader_reads_a_long_field(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\n" + "x" * 200_000 + "\t1\nshort\t0\n")
    cols = read_glue_tsv("sst2", path, "train")
    assert len(cols["text_a"][0]) == 200_000 and cols["label"] == [1, 0]
