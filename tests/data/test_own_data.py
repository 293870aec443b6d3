"""Own data through load_data: every format, MRPC equivalence with the GLUE path, labels, regression,
hub datasets, the carved dev split, fingerprints and the run's data record."""

from __future__ import annotations

import json
import os
import shutil

import datasets
import numpy as np
import pytest
from own_data_helpers import FORMATS, TRICKY_TEXTS, hub_folder, three_class_rows, write_table

from dist_peakd.data import (
    DataError,
    DataOptions,
    check_data_record,
    get_task,
    glue_features,
    load_data,
    split_names,
    tokenize_dataset,
)
from dist_peakd.metrics import compute_metrics

TOKEN_COLUMNS = ("idx", "label", "input_ids", "token_type_ids", "length")


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def tok(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))


def _own(tmp_path, name="own", **kw):
    return load_data(DataOptions(task=name, **kw), cache_dir=str(tmp_path / "hf"))


def _tokenized(data, tok, tmp_path, max_length=128):
    out, _ = tokenize_dataset(data.splits, tok, max_length, tmp_path / "tok", data.fingerprint,
                              is_pair=data.task.is_pair)
    return {s: {c: out[s][c][:] for c in TOKEN_COLUMNS} for s in out}


def _mrpc_rows(glue, split, n, names):
    ds = glue.splits[split].select(range(n))
    labels = glue.task.labels
    return [{names[0]: a, names[1]: b, names[2]: labels[y]} for a, b, y in
            zip(ds["text_a"], ds["text_b"], ds["label"], strict=True)]


def test_mrpc_csv_and_jsonl_tokenize_exactly_like_the_glue_path(glue_dir, tmp_path, tok):
    glue = load_data(DataOptions(task="mrpc", glue_dir=str(glue_dir)), ["train", "dev"])
    n = {"train": 160, "dev": 80}
    glue.splits = datasets.DatasetDict({s: glue.splits[s].select(range(k)) for s, k in n.items()})
    # CSV with a BOM and GLUE-like names; JSONL with other names and integer labels
    csv_rows = {s: _mrpc_rows(glue, s, k, ("sentence1", "sentence2", "label")) for s, k in n.items()}
    for s in n:
        write_table(tmp_path / f"csv/{s}.csv", csv_rows[s], bom=True)
        write_table(tmp_path / f"jsonl/{s}.jsonl", [{"first": r["sentence1"], "second": r["sentence2"],
                                                     "gold": int(r["label"])} for r in csv_rows[s]])
    as_csv = _own(tmp_path, "mrpc_csv", train_file=str(tmp_path / "csv/train.csv"),
                  dev_file=str(tmp_path / "csv/dev.csv"), text_columns="sentence1,sentence2")
    as_jsonl = _own(tmp_path, "mrpc_jsonl", train_file=str(tmp_path / "jsonl/train.jsonl"),
                    dev_file=str(tmp_path / "jsonl/dev.jsonl"), text_columns=("first", "second"), label_column="gold")
    expected = _tokenized(glue, tok, tmp_path / "g")
    assert expected["train"]["input_ids"][0][:3] == tok(glue.splits["train"][0]["text_a"])["input_ids"][:3]
    for own in (as_csv, as_jsonl):
        assert own.task.labels == ("0", "1") and own.task.problem == "binary" and own.task.positive_label == "1"
        assert own.task.is_pair and own.task.num_labels == 2 and not own.task.is_glue
        for split in ("train", "dev"):
            assert own.splits[split].features == glue.splits[split].features
            assert own.splits[split].to_dict() == glue.splits[split].to_dict()
        assert _tokenized(own, tok, tmp_path / own.task.name) == expected
        # same dev metrics for the same predictions (GLUE MRPC: f1 of class 1 + accuracy)
        y = np.asarray(own.splits["dev"]["label"])
        pred = np.where(np.arange(len(y)) % 3 == 0, 1 - y, y)
        assert compute_metrics(own.task, pred, y) == {k: compute_metrics("mrpc", pred, y)[k] for k in ("accuracy", "f1")}
    assert as_csv.fingerprint != glue.fingerprint


@pytest.mark.parametrize("fmt", FORMATS)
def test_three_class_set_in_every_format(tmp_path, tok, fmt):
    rows = three_class_rows()
    dev = three_class_rows(12)
    train = write_table(tmp_path / f"train.{fmt}", rows)
    dev_file = write_table(tmp_path / f"dev.{fmt}", dev)
    test_file = write_table(tmp_path / f"test.{fmt}", [{"text": r["text"]} for r in dev[:5]])
    data = load_data(DataOptions(task="animals", train_file=str(train), dev_file=str(dev_file),
                                 test_file=str(test_file)), ["train", "dev", "test"], cache_dir=str(tmp_path / "hf"))
    task = data.task
    assert task.labels == ("bird", "cat", "dog") and task.problem == "multiclass"
    assert task.metrics == ("accuracy", "macro_f1") and task.main_metric == "accuracy" and task.positive_label is None
    assert list(data.splits) == ["train", "dev", "test"]
    train_ds = data.splits["train"]
    assert train_ds["text_a"][:] == [r["text"] for r in rows]  # byte-exact, NA/null/007 included
    assert train_ds["label"][:] == [task.labels.index(r["label"]) for r in rows]
    assert train_ds["idx"][:] == list(range(len(rows))) and set(train_ds["text_b"][:]) == {""}
    assert data.splits["test"]["label"][:] == [-1] * 5
    assert data.sources["train"]["format"] == ("json" if fmt == "jsonl" else fmt)
    tokenized = _tokenized(data, tok, tmp_path)
    assert len(tokenized["train"]["input_ids"]) == len(rows) and tokenized["dev"]["label"] == data.splits["dev"]["label"][:]
    # every format gives the same rows
    reference = tmp_path / "ref" / "train.csv"
    write_table(reference, rows)
    ref = load_data(DataOptions(task="animals", train_file=str(reference), dev_file=str(dev_file)),
                    cache_dir=str(tmp_path / "hf"))
    assert ref.splits["train"].to_dict() == train_ds.to_dict()
    assert all(any(t.endswith(extra) for t in train_ds["text_a"][:]) for extra in TRICKY_TEXTS)


def test_csv_quoting_multiline_and_crlf(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b'text,label\r\n"line one\nline two",a\r\n"say ""hi""",b\r\n\r\nplain,a\r\n')
    data = _own(tmp_path, train_file=str(path), dev_file=str(path))
    assert data.splits["train"]["text_a"][:] == ["line one\nline two", 'say "hi"', "plain"]


def test_tsv_quotes_are_plain_characters(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text('text\tlabel\n"opening quote\ta\nmiddle "q" here\tb\n')
    data = _own(tmp_path, train_file=str(path), dev_file=str(path))
    assert data.splits["train"]["text_a"][:] == ['"opening quote', 'middle "q" here']


def test_integer_labels_sort_numerically_and_given_labels_set_the_order(tmp_path):
    rows = [{"text": f"t{i}", "label": v} for i, v in enumerate([10, 2, 1, 2, 10, 1])]
    train = write_table(tmp_path / "train.jsonl", rows)
    data = _own(tmp_path, train_file=str(train), dev_file=str(train))
    assert data.task.labels == ("1", "2", "10") and data.splits["train"]["label"][:] == [2, 1, 0, 1, 2, 0]
    given = _own(tmp_path, train_file=str(train), dev_file=str(train), labels="10,2,1")
    assert given.task.labels == ("10", "2", "1") and given.splits["train"]["label"][:] == [0, 1, 2, 1, 0, 2]
    # fire parses --labels 10,2,1 into a tuple of ints
    assert _own(tmp_path, train_file=str(train), dev_file=str(train), labels=(10, 2, 1)).task.labels == ("10", "2", "1")
    csv_train = write_table(tmp_path / "train.csv", rows)
    assert _own(tmp_path, train_file=str(csv_train), dev_file=str(csv_train)).task.labels == ("1", "2", "10")


def test_binary_positive_label_and_metric_choice(tmp_path):
    rows = [{"text": f"t{i}", "label": "spam" if i % 3 == 0 else "ham"} for i in range(30)]
    train = write_table(tmp_path / "train.csv", rows)
    data = _own(tmp_path, train_file=str(train), dev_file=str(train))
    assert data.task.labels == ("ham", "spam") and data.task.positive_label == "spam" and data.task.positive_index == 1
    chosen = _own(tmp_path, train_file=str(train), dev_file=str(train), positive_label="ham", metric="f1")
    assert chosen.task.positive_index == 0 and chosen.task.main_metric == "f1"
    mcc = _own(tmp_path, train_file=str(train), dev_file=str(train), metric="matthews")
    assert mcc.task.metrics == ("accuracy", "f1", "matthews") and mcc.task.main_metric == "matthews"
    assert data.fingerprint == chosen.fingerprint == mcc.fingerprint  # metric choices do not change the rows
    assert data.task.id2label() == {0: "ham", 1: "spam"}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_regression_dataset_loads(tmp_path, fmt):
    scores = [0.5, 3.25, 4.0, 1.75, 2.0, 5.0, 0.0, 2.5, 3.5, 1.0]
    rows = [{"a": f"first {i}", "b": f"second {i}", "score": s} for i, s in enumerate(scores)]
    train = write_table(tmp_path / f"train.{fmt}", rows)
    data = _own(tmp_path, "scores", train_file=str(train), text_columns="a,b", label_column="score")
    task = data.task
    assert task.problem == "regression" and task.is_regression and task.labels is None and task.num_labels == 1
    assert task.metrics == ("pearson", "spearmanr") and task.main_metric == "pearson"
    assert data.splits["train"].features == glue_features("stsb")
    got = sorted(data.splits["train"]["label"][:] + data.splits["dev"]["label"][:])
    assert got == sorted(scores) and len(data.splits["dev"]) == 1  # carved: round(0.1 * 10)


def test_explicit_regression_with_integer_scores(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 5} for i in range(20)]
    train = write_table(tmp_path / "train.csv", rows)
    assert _own(tmp_path, train_file=str(train), dev_file=str(train)).task.problem == "multiclass"
    data = _own(tmp_path, train_file=str(train), dev_file=str(train), problem="regression")
    assert data.task.is_regression and data.splits["train"]["label"][:5] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_carved_dev_split_is_stratified_seeded_and_recorded(tmp_path):
    rows = [{"text": f"t{i}", "label": lab} for i, lab in enumerate(["a"] * 60 + ["b"] * 30 + ["c"] * 10)]
    rows = [rows[(i * 37) % 100] for i in range(100)]  # interleave the classes
    train = write_table(tmp_path / "train.jsonl", rows)
    first = _own(tmp_path, train_file=str(train), dev_fraction=0.2)
    again = _own(tmp_path, train_file=str(train), dev_fraction=0.2)
    assert first.splits["dev"].to_dict() == again.splits["dev"].to_dict() and first.fingerprint == again.fingerprint
    dev, tr = first.splits["dev"], first.splits["train"]
    assert np.bincount(dev["label"][:]).tolist() == [12, 6, 2] and len(tr) == 80
    assert sorted(dev["idx"][:] + tr["idx"][:]) == list(range(100)) and dev["idx"][:] == sorted(dev["idx"][:])
    assert first.dev_ids == tuple(dev["idx"][:])
    assert all(rows[i]["text"] == t for i, t in zip(dev["idx"][:], dev["text_a"][:], strict=True))  # ids kept
    record = first.sources["dev"]
    assert record["carved_from"] == "train" and record["rows"] == 20 and record["dev_fraction"] == 0.2
    other_seed = _own(tmp_path, train_file=str(train), dev_fraction=0.2, split_seed=1)
    assert other_seed.dev_ids != first.dev_ids and other_seed.fingerprint != first.fingerprint
    assert _own(tmp_path, train_file=str(train), dev_fraction=0.3).fingerprint != first.fingerprint
    # a dev-only load (evaluate) carves the same rows
    assert _own_only_dev(tmp_path, train).to_dict() == dev.to_dict()


def _own_only_dev(tmp_path, train):
    return load_data(DataOptions(task="own", train_file=str(train), dev_fraction=0.2), ["dev"],
                     cache_dir=str(tmp_path / "hf")).splits["dev"]


def test_fingerprint_covers_content_and_choices_not_location_or_name(tmp_path):
    rows = [{"x": f"left {i}", "y": f"right {i}", "label": "pq"[i % 2], "copy": "pq"[i % 2]} for i in range(20)]
    train = write_table(tmp_path / "a/train.csv", rows)
    base = _own(tmp_path, train_file=str(train), dev_file=str(train), text_columns="x,y").fingerprint
    moved = tmp_path / "b/train.csv"
    moved.parent.mkdir()
    shutil.copy(train, moved)
    assert _own(tmp_path, "renamed", train_file=str(moved), dev_file=str(moved), text_columns="x,y").fingerprint == base
    assert _own(tmp_path, train_file=str(train), dev_file=str(train), text_columns="y,x").fingerprint != base
    assert _own(tmp_path, train_file=str(train), dev_file=str(train), text_columns="x").fingerprint != base
    assert _own(tmp_path, train_file=str(train), dev_file=str(train), text_columns="x,y",
                labels="q,p").fingerprint != base
    copy = _own(tmp_path, train_file=str(train), dev_file=str(train), text_columns="x,y", label_column="copy")
    assert copy.splits["train"].to_dict() == _own(tmp_path, train_file=str(train), dev_file=str(train),
                                                  text_columns="x,y").splits["train"].to_dict()
    assert copy.fingerprint != base  # same rows, another column choice: recorded all the same
    stat = train.stat()
    rows[3]["x"] = "left X"  # same size, and the old mtime restored below (as `cp -p` / rsync -a would)
    write_table(train, rows)
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = _own(tmp_path, train_file=str(train), dev_file=str(train), text_columns="x,y")
    assert changed.fingerprint != base
    assert changed.splits["train"]["text_a"][3] == "left X"  # the HF cache does not serve the old file


def test_data_record_written_once_then_checked(tmp_path):
    rows = three_class_rows(30)
    train = write_table(tmp_path / "train.csv", rows)
    record = tmp_path / "run" / "data.json"
    data = _own(tmp_path, train_file=str(train))
    assert check_data_record(record, data) is True
    saved = json.loads(record.read_text())
    assert saved["task"]["labels"] == ["bird", "cat", "dog"] and saved["sources"]["dev"]["rows"] == 3
    assert check_data_record(record, _own(tmp_path, train_file=str(train))) is False
    dev_only = load_data(DataOptions(task="own", train_file=str(train)), ["dev"], cache_dir=str(tmp_path / "hf"))
    assert check_data_record(record, dev_only) is False
    rows[0]["text"] = "edited"
    write_table(train, rows)
    with pytest.raises(DataError, match=r"differ from the ones this run started with \(.*train\.sha256"):
        check_data_record(record, _own(tmp_path, train_file=str(train)))
    assert json.loads(record.read_text()) == saved


def _review_features(names=("negative", "neutral", "positive")):
    return datasets.Features({"review": datasets.Value("string"), "stars": datasets.ClassLabel(names=list(names))})


def test_hub_dataset_with_class_labels_validation_and_unlabelled_test(tmp_path):
    repo = hub_folder(tmp_path / "hub", "en", {
        "train": {"review": [f"r{i}" for i in range(12)], "stars": [i % 3 for i in range(12)]},
        "validation": {"review": ["v0", "v1"], "stars": [2, 0]},
        "test": {"review": ["t0", "t1"], "stars": [-1, -1]},
    }, _review_features())
    data = load_data(DataOptions(task="reviews", hub_dataset=str(repo), hub_config="en", text_columns="review",
                                 label_column="stars"), ["train", "dev", "test"], cache_dir=str(tmp_path / "hf"))
    assert data.task.labels == ("negative", "neutral", "positive")  # ClassLabel order, not sorted
    assert data.splits["dev"]["label"][:] == [2, 0] and data.splits["test"]["label"][:] == [-1, -1]
    assert data.sources["dev"]["hub_split"] == "validation" and data.sources["train"]["hub_config"] == "en"
    named = load_data(DataOptions(task="reviews", hub_dataset=str(repo), hub_config="en", text_columns="review",
                                  label_column="stars", dev_split="train", train_split="validation"),
                      cache_dir=str(tmp_path / "hf"))
    assert named.splits["train"]["text_a"][:] == ["v0", "v1"] and len(named.splits["dev"]) == 12
    with pytest.raises(DataError, match=r"hub\[en\]/test: row index 0, column 'stars': empty label"):
        load_data(DataOptions(task="reviews", hub_dataset=str(repo), hub_config="en", text_columns="review",
                              label_column="stars", dev_split="test"), cache_dir=str(tmp_path / "hf"))


def test_hub_dataset_without_dev_split_is_carved(tmp_path):
    repo = hub_folder(tmp_path / "hub", "default", {
        "train": {"review": [f"r{i}" for i in range(20)], "stars": [i % 2 * 2 for i in range(20)]},
    }, _review_features())
    data = load_data(DataOptions(task="reviews", hub_dataset=str(repo), text_columns="review", label_column="stars"),
                     cache_dir=str(tmp_path / "hf"))
    assert data.sources["dev"]["carved_from"] == "train" and len(data.splits["dev"]) == 2
    assert data.task.labels == ("negative", "neutral", "positive") and data.task.problem == "multiclass"


def test_glue_through_load_data_is_unchanged(glue_dir):
    from dist_peakd.data import data_fingerprint, load_glue

    data = load_data(DataOptions(task="MRPC", glue_dir=str(glue_dir)), ["train", "dev"])
    assert data.task.is_glue and data.task.name == "mrpc" and list(data.splits) == ["train", "dev"]
    assert data.fingerprint == data_fingerprint("mrpc", glue_dir, splits=["train", "dev"])
    assert data.splits["dev"].to_dict() == load_glue("mrpc", glue_dir, splits=["dev"])["dev"].to_dict()
    assert data.sources["dev"]["sha256"] and "file" in data.sources["dev"]
    chosen = load_data(DataOptions(task="mrpc", glue_dir=str(glue_dir), metric="accuracy"), ["dev"])
    assert chosen.task.main_metric == "accuracy" and chosen.task.metrics == ("f1", "accuracy")
    assert split_names(get_task("mnli"), ["train", "dev"]) == ["train", "dev_matched"]
    assert split_names(get_task("mnli"), ["dev_mismatched", "test"]) == ["dev_mismatched", "test_matched"]
    assert split_names(get_task("sst2"), None) == ["train", "dev"]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl"])
def test_utf8_bom_is_dropped(tmp_path, fmt):
    rows = three_class_rows(12)
    plain = write_table(tmp_path / f"plain/train.{fmt}", rows)
    bom = write_table(tmp_path / f"bom/train.{fmt}", rows, bom=True)
    assert bom.read_bytes().startswith(b"\xef\xbb\xbf")
    a, b = (_own(tmp_path, train_file=str(p), dev_file=str(p)) for p in (plain, bom))
    assert a.splits["train"].to_dict() == b.splits["train"].to_dict() and a.task == b.task
