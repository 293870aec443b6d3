"""Bad own data is refused before any training, each error naming the file, the row and the column."""

from __future__ import annotations

import datasets
import pytest
from own_data_helpers import hub_folder, three_class_rows, write_table

from dist_peakd.data import (
    ColumnError,
    DataError,
    DataFileError,
    DataOptionError,
    DataOptions,
    DataValueError,
    MalformedRowError,
    MaxLengthError,
    check_max_length,
    load_data,
)


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    datasets.disable_progress_bars()


def _load(tmp_path, splits=None, task="own", **kw):
    return load_data(DataOptions(task=task, **kw), splits, cache_dir=str(tmp_path / "hf"))


def _good(tmp_path, name="train.csv"):
    return write_table(tmp_path / name, three_class_rows(30))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_missing_text_column_lists_the_files_columns(tmp_path, fmt):
    train = write_table(tmp_path / f"train.{fmt}", [{"review": "x", "label": "a"}, {"review": "y", "label": "b"}])
    with pytest.raises(ColumnError) as e:
        _load(tmp_path, train_file=str(train), dev_file=str(train), text_columns="text")
    msg = str(e.value)
    assert str(train) in msg and "no column 'text' (option text_columns)" in msg and "'review', 'label'" in msg


def test_missing_label_column_in_train_and_dev(tmp_path):
    train = _good(tmp_path)
    with pytest.raises(ColumnError, match=r"train\.csv: no column 'y' \(option label_column\); its columns: 'text', 'label'"):
        _load(tmp_path, train_file=str(train), label_column="y")
    dev = write_table(tmp_path / "dev.csv", [{"text": "x"}])
    with pytest.raises(ColumnError, match=r"dev\.csv: no column 'label' \(option label_column\)"):
        _load(tmp_path, train_file=str(train), dev_file=str(dev))
    # a test file may lack labels
    data = _load(tmp_path, ["train", "test"], train_file=str(train), test_file=str(dev))
    assert data.splits["test"]["label"][:] == [-1]


@pytest.mark.parametrize(("content", "row", "line", "what"), [
    ('text,label\nfine,a\n,b\nok,a\n', 1, 3, "empty text"),
    ('text,label\nfine,a\nok,b\n"   ",a\n', 2, 4, "empty text"),
    ('text,label\nfine,a\n"two\nlines",b\n"",a\n', 2, 5, "empty text"),
])
def test_empty_text_names_file_row_line_and_column(tmp_path, content, row, line, what):
    train = tmp_path / "train.csv"
    train.write_text(content)
    with pytest.raises(DataValueError) as e:
        _load(tmp_path, train_file=str(train), dev_file=str(train))
    assert str(e.value).startswith(f"{train}: row index {row} (line {line}), column 'text': {what}")
    assert (e.value.row, e.value.column) == (row, "text")


def test_null_text_in_jsonl_and_second_text_column(tmp_path):
    train = write_table(tmp_path / "train.jsonl", [{"a": "x", "b": "y", "label": 0}, {"a": None, "b": "y", "label": 1}])
    with pytest.raises(DataValueError, match=r"train\.jsonl: row index 1, column 'a': null text"):
        _load(tmp_path, train_file=str(train), dev_file=str(train), text_columns="a,b")
    train = write_table(tmp_path / "t2.jsonl", [{"a": "x", "b": "y", "label": 0}, {"a": "z", "b": "", "label": 1}])
    with pytest.raises(DataValueError, match=r"t2\.jsonl: row index 1, column 'b': empty text"):
        _load(tmp_path, train_file=str(train), dev_file=str(train), text_columns="a,b")


def test_non_text_column_is_refused(tmp_path):
    train = write_table(tmp_path / "train.jsonl", [{"text": 5, "label": "a"}, {"text": 6, "label": "b"}])
    with pytest.raises(ColumnError, match=r"column 'text' holds int64 values, expected text"):
        _load(tmp_path, train_file=str(train), dev_file=str(train))


def test_dev_or_test_label_outside_the_train_set(tmp_path):
    train = _good(tmp_path)
    dev = write_table(tmp_path / "dev.csv", [{"text": "x", "label": "cat"}, {"text": "y", "label": "horse"}])
    with pytest.raises(DataValueError) as e:
        _load(tmp_path, train_file=str(train), dev_file=str(dev))
    assert str(e.value) == (f"{dev}: row index 1 (line 3), column 'label': label 'horse' is not in the label set of "
                            f"the train split {train} ('bird', 'cat', 'dog')")
    test = write_table(tmp_path / "test.jsonl", [{"text": "x", "label": "cow"}])
    with pytest.raises(DataValueError, match=r"test\.jsonl: row index 0, column 'label': label 'cow' is not in"):
        _load(tmp_path, ["train", "test"], train_file=str(train), test_file=str(test))


def test_train_label_outside_given_labels_and_empty_label(tmp_path):
    train = _good(tmp_path)
    with pytest.raises(DataValueError, match=r"row index 2 \(line 4\), column 'label': label 'bird' is not in the "
                                             r"--labels \('cat', 'dog'\)"):
        _load(tmp_path, train_file=str(train), labels="cat,dog")
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nx,a\ny,\nz,b\n")
    with pytest.raises(DataValueError, match=r"row index 1 \(line 3\), column 'label': empty label"):
        _load(tmp_path, train_file=str(bad), dev_file=str(bad))


@pytest.mark.parametrize(("fmt", "value", "what"), [
    ("csv", "nan", "NaN/inf regression target 'nan'"),
    ("csv", "inf", "NaN/inf regression target 'inf'"),
    ("csv", "", "empty regression target"),
    ("csv", "high", "regression target 'high' is not a number"),
    ("jsonl", None, "empty regression target"),
    ("parquet", float("nan"), "NaN/inf regression target nan"),
])
def test_nan_regression_target(tmp_path, fmt, value, what):
    rows = [{"text": f"t{i}", "score": float(i) + 0.5} for i in range(4)]
    rows[2]["score"] = value
    if fmt == "csv":
        rows = [{"text": r["text"], "score": "" if r["score"] is None else str(r["score"])} for r in rows]
    train = write_table(tmp_path / f"train.{fmt}", rows)
    with pytest.raises(DataValueError) as e:
        _load(tmp_path, train_file=str(train), dev_file=str(train), label_column="score", problem="regression")
    assert f"{train}: row index 2" in str(e.value) and f"column 'score': {what}" in str(e.value)


@pytest.mark.parametrize("name", ["train.txt", "train.xlsx", "train", "train.csv.gz"])
def test_unknown_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text("text,label\na,b\n")
    with pytest.raises(DataOptionError, match=r"option train_file: .*unknown extension .*expected one of "
                                              r"\.csv, \.tsv, \.json, \.jsonl, \.parquet"):
        _load(tmp_path, train_file=str(path))
    with pytest.raises(DataOptionError, match="option dev_file: "):
        _load(tmp_path, train_file=str(_good(tmp_path)), dev_file=str(path))


def test_missing_file(tmp_path):
    with pytest.raises(DataFileError, match=r"nope\.csv: does not exist or is not a file \(option dev_file\)"):
        _load(tmp_path, train_file=str(_good(tmp_path)), dev_file=str(tmp_path / "nope.csv"))


@pytest.mark.parametrize(("name", "content", "what"), [
    ("dev.csv", "text,label\n", "has a header ('text', 'label') but no data rows"),
    ("dev.tsv", "text\tlabel\n\n\n", "has a header ('text', 'label') but no data rows"),
    ("dev.csv", "", "is empty"),
    ("dev.jsonl", "", "is empty"),
    ("dev.json", "[]", "has no data rows"),
    ("dev.jsonl", "\n", "has no data rows"),
])
def test_split_with_zero_rows(tmp_path, name, content, what):
    dev = tmp_path / name
    dev.write_text(content)
    with pytest.raises(DataFileError) as e:
        _load(tmp_path, train_file=str(_good(tmp_path)), dev_file=str(dev))
    assert str(e.value).startswith(f"{dev}: {what}")


def test_zero_row_parquet_and_hub_split(tmp_path):
    empty = tmp_path / "dev.parquet"
    datasets.Dataset.from_dict({"text": [], "label": []},
                               features=datasets.Features({"text": datasets.Value("string"),
                                                           "label": datasets.Value("string")})).to_parquet(str(empty))
    with pytest.raises(DataFileError, match=r"dev\.parquet: has no data rows"):
        _load(tmp_path, train_file=str(_good(tmp_path)), dev_file=str(empty))
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
    repo = hub_folder(tmp_path / "hub", "default", {"train": {"text": ["a", "b"], "label": [0, 1]},
                                                    "validation": {"text": [], "label": []}}, feats)
    with pytest.raises(DataFileError, match=r"hub' \(config None\): has a split with zero rows \(.*\"validation\""):
        _load(tmp_path, hub_dataset=str(repo))


def test_more_than_two_text_columns(tmp_path):
    with pytest.raises(DataOptionError, match=r"option text_columns: at most two text columns .* got 3: a, b, c"):
        _load(tmp_path, train_file=str(_good(tmp_path)), text_columns="a,b,c")
    with pytest.raises(DataOptionError, match="option text_columns: at most two"):
        _load(tmp_path, train_file=str(_good(tmp_path)), text_columns=("a", "b", "c"))


@pytest.mark.parametrize(("content", "line", "what"), [
    ("text,label\na,b\nc,d,e\n", 3, "row index 1 has 3 fields, the header has 2"),
    ("text,label\na,b\nc\n", 3, "row index 1 has 1 fields, the header has 2"),
    ("text,label\nx,y,z\nq,r\n", 2, "row index 0 has 3 fields"),  # pandas would shift it into an index
])
def test_field_count_mismatch_names_the_line(tmp_path, content, line, what):
    path = tmp_path / "train.csv"
    path.write_text(content)
    with pytest.raises(MalformedRowError, match=rf"train\.csv:{line}: malformed row: {what}"):
        _load(tmp_path, train_file=str(path))


def test_tsv_with_a_tab_too_many(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\na\tb\nc\td\te\n")
    with pytest.raises(MalformedRowError, match=r"train\.tsv:3: malformed row: row index 1 has 3 fields"):
        _load(tmp_path, train_file=str(path))


def test_invalid_utf8_and_duplicate_header(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"text,label\nok,a\nbad \xff,b\n")
    with pytest.raises(DataFileError, match=r"train\.csv: line 3: not valid UTF-8 \(byte 0xff"):
        _load(tmp_path, train_file=str(path))
    path.write_text("text,text,label\na,b,c\n")
    with pytest.raises(DataFileError, match=r"column name\(s\) \['text'\] appear more than once"):
        _load(tmp_path, train_file=str(path))


def test_unreadable_json(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": \n')
    with pytest.raises(DataFileError, match=r"train\.jsonl: cannot be read as JSON"):
        _load(tmp_path, train_file=str(path))


def test_label_problems(tmp_path):
    one = write_table(tmp_path / "one.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}])
    with pytest.raises(DataError, match=r"one\.csv: column 'label' has a single label \('x',\) in the train split"):
        _load(tmp_path, train_file=str(one))
    with pytest.raises(DataOptionError, match=r"option problem: binary needs 2 labels; .* has 3: bird, cat, dog"):
        _load(tmp_path, train_file=str(_good(tmp_path)), problem="binary")
    with pytest.raises(DataOptionError, match=r"option positive_label: applies to binary problems, not multiclass"):
        _load(tmp_path, train_file=str(_good(tmp_path)), positive_label="cat")
    two = write_table(tmp_path / "two.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}] * 5)
    with pytest.raises(DataOptionError, match=r"option positive_label: 'z' is not a label"):
        _load(tmp_path, train_file=str(two), positive_label="z")
    with pytest.raises(DataOptionError, match=r"option metric: metric 'pearson' is not defined for binary"):
        _load(tmp_path, train_file=str(two), metric="pearson")
    with pytest.raises(DataOptionError, match=r"option dev_fraction: cannot carve a dev split from a train split of 1"):
        _load(tmp_path, train_file=str(write_table(tmp_path / "single.csv", [{"text": "a", "label": "x"}])),
              labels="x,y")


@pytest.mark.parametrize(("kw", "match"), [
    ({"task": "mrpc", "train_file": "x.csv"}, r"option train_file: 'mrpc' is a GLUE task"),
    ({"task": "SST-2", "text_columns": "a"}, r"option text_columns: 'SST-2' is a GLUE task"),
    ({"task": "mine"}, r"option task: 'mine' is not a GLUE task .*give --train_file"),
    ({"task": "bad/name", "train_file": "x.csv"}, r"option task: 'bad/name' is neither a GLUE task"),
    ({"task": "mine", "train_file": "x.csv", "hub_dataset": "org/ds"}, r"option hub_dataset: give either"),
    ({"task": "mine", "dev_file": "x.csv"}, r"option train_file: required"),
    ({"task": "mine", "train_file": "x.csv", "dev_split": "dev"}, r"option dev_split: applies to --hub_dataset"),
    ({"task": "mine", "train_file": "x.csv", "dev_fraction": 1.0}, r"option dev_fraction: must be a number in \(0, 1\)"),
    ({"task": "mine", "train_file": "x.csv", "dev_fraction": 0}, r"option dev_fraction"),
    ({"task": "mine", "train_file": "x.csv", "problem": "ranking"}, r"option problem: 'ranking' is not one of"),
    ({"task": "mine", "train_file": "x.csv", "labels": "a"}, r"option labels: need at least two distinct"),
    ({"task": "mine", "train_file": "x.csv", "labels": "a,b,a"}, r"option labels: need at least two distinct"),
    ({"task": "mine", "train_file": "x.csv", "labels": "a,,b"}, r"option labels: empty name"),
    ({"task": "mine", "train_file": "x.csv", "labels": "a,b", "problem": "regression"}, r"option labels: class labels"),
    ({"task": "mine", "train_file": "x.csv", "labels": "a,b,c", "problem": "binary"}, r"option labels: --problem binary"),
    ({"task": "mine", "train_file": "x.csv", "positive_label": "a", "problem": "regression"}, r"option positive_label"),
    ({"task": "mine", "train_file": "x.csv", "labels": "a,b", "positive_label": "c"}, r"option positive_label: 'c'"),
    ({"task": "mine", "train_file": "x.csv", "text_columns": "y", "label_column": "y"}, r"option label_column: 'y'"),
    ({"task": "mine", "train_file": "x.csv", "metric": "bleu"}, r"option metric: unknown metric 'bleu'"),
    ({"task": "mnli", "hub_config": "x"}, r"option hub_config: needs --hub_dataset"),
])
def test_bad_options_are_refused_before_reading(tmp_path, kw, match):
    with pytest.raises(DataOptionError, match=match):
        DataOptions(**kw).validate()


def test_hub_split_not_found_lists_the_splits(tmp_path):
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
    repo = hub_folder(tmp_path / "hub", "default", {"train": {"text": ["a", "b"], "label": [0, 1]}}, feats)
    with pytest.raises(DataOptionError, match=r"option dev_split: hub dataset .* has no split 'validation'; its splits: train"):
        _load(tmp_path, hub_dataset=str(repo), dev_split="validation")
    with pytest.raises(DataOptionError, match=r"option test_split: .* no split 'test'"):
        _load(tmp_path, ["train", "test"], hub_dataset=str(repo))
    with pytest.raises(DataFileError, match=r"hub dataset .*nothing.* cannot be loaded"):
        _load(tmp_path, hub_dataset=str(tmp_path / "nothing"))


def test_max_length_against_the_backbone(tiny_bert):
    from transformers import BertConfig, RobertaConfig

    assert check_max_length(512, tiny_bert) == 512
    with pytest.raises(MaxLengthError) as e:
        check_max_length(4096, tiny_bert)
    assert str(e.value).startswith("option max_length: 4096 exceeds the backbone's max_position_embeddings 512 of ")
    with pytest.raises(MaxLengthError, match=r"514 \(512 usable: positions start after the padding index\)"):
        check_max_length(513, RobertaConfig(max_position_embeddings=514, pad_token_id=1))
    assert check_max_length(128, BertConfig(max_position_embeddings=128)) == 128
    with pytest.raises(DataOptionError, match="option max_length: must be an integer >= 2"):
        check_max_length(1, tiny_bert)
