"""GLUE readers: the real files (official row counts, content spot checks), the strict error paths
on small hand-made TSV files, the hub path on a local hub-format parquet repository, fingerprints."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest

from dist_peakd.data import (
    DataError,
    DataLayoutError,
    EncodingError,
    LabelError,
    MalformedRowError,
    UnknownTaskError,
    data_fingerprint,
    default_glue_dir,
    glue_features,
    load_glue,
    read_glue_tsv,
    split_paths,
)

OFFICIAL_COUNTS = {
    "mrpc": {"train": 3668, "dev": 408, "test": 1725},
    "rte": {"train": 2490, "dev": 277, "test": 3000},
    "sst2": {"train": 67349, "dev": 872, "test": 1821},
    "cola": {"train": 8551, "dev": 1043, "test": 1063},
    "stsb": {"train": 5749, "dev": 1500, "test": 1379},
    "qnli": {"dev": 5463, "test": 5463},
}


@pytest.fixture(scope="module")
def real(glue_dir) -> dict[str, datasets.DatasetDict]:
    """Every real GLUE task loaded once (SST-2 train is 67k rows)."""
    return {name: load_glue(name, glue_dir) for name in OFFICIAL_COUNTS}


# ----------------------------------------------------------------------------- real data

@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_official_row_counts_and_schema(real, name):
    dsd = real[name]
    assert {k: v.num_rows for k, v in dsd.items()} == OFFICIAL_COUNTS[name]
    for split, ds in dsd.items():
        assert ds.features == glue_features(name)
        assert ds.column_names == ["idx", "text_a", "text_b", "label"]
        assert ds["idx"][:] == list(range(ds.num_rows)), split


def _labels(ds) -> list:
    return list(ds["label"][:])


@pytest.mark.parametrize(("name", "split", "expected"), [
    ("mrpc", "train", {1: 2474, 0: 1194}),
    ("mrpc", "dev", {1: 279, 0: 129}),
    ("rte", "train", {0: 1249, 1: 1241}),  # 0 = entailment
    ("rte", "dev", {0: 146, 1: 131}),
    ("sst2", "train", {1: 37569, 0: 29780}),
    ("sst2", "dev", {1: 444, 0: 428}),
    ("qnli", "dev", {1: 2761, 0: 2702}),  # 1 = not_entailment
    ("cola", "train", {1: 6023, 0: 2528}),
    ("cola", "dev", {1: 721, 0: 322}),
])
def test_label_balance_matches_sources(real, name, split, expected):
    assert Counter(_labels(real[name][split])) == expected


def test_test_splits_are_unlabelled(real):
    for name, dsd in real.items():
        labels = _labels(dsd["test"])
        if name == "stsb":
            assert all(math.isnan(x) for x in labels)
        else:
            assert set(labels) == {-1}


def test_mrpc_first_dev_row(real):
    row = real["mrpc"]["dev"][0]
    assert row["idx"] == 0 and row["label"] == 1
    assert row["text_a"] == "He said the foodservice pie business doesn't fit the company's long-term growth strategy."
    # QUOTE_NONE: the unbalanced leading double quote is part of the text
    assert row["text_b"] == '"The foodservice pie business does not fit our long-term growth strategy.'


def test_mrpc_bom_is_dropped(glue_dir):
    assert (glue_dir / "MRPC" / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbf")
    cols = read_glue_tsv("mrpc", glue_dir / "MRPC" / "train.tsv", "train")
    assert len(cols["idx"]) == 3668 and cols["label"][0] == 1
    assert cols["text_a"][0].startswith("Amrozi accused his brother")


def test_cola_headerless_and_test_header(real):
    train, dev, test = real["cola"]["train"], real["cola"]["dev"], real["cola"]["test"]
    assert train[0] == {"idx": 0, "label": 1, "text_b": "",
                        "text_a": "Our friends won't buy this analysis, let alone the next one we propose."}
    assert train[1]["text_a"] == "One more pseudo generalization and I'm giving up."
    # dev.tsv has no final newline: the last row is still read
    assert dev[1042]["text_a"] == "John talked to Bill about himself."
    assert test[0]["text_a"] == "Bill whistled past the house." and test[0]["label"] == -1


def test_sst2_trailing_spaces_kept(real):
    row = real["sst2"]["train"][0]
    assert row["text_a"] == "hide new secretions from the parental units "
    assert row["label"] == 0 and row["text_b"] == ""
    assert real["sst2"]["dev"][0]["text_a"] == "it 's a charming and often affecting journey . "


def test_stsb_scores(real):
    dev = real["stsb"]["dev"]
    assert dev[0]["text_a"] == "A man with a hard hat is dancing."
    assert dev[0]["text_b"] == "A man wearing a hard hat is dancing."
    assert dev[0]["label"] == pytest.approx(5.0) and dev[1]["label"] == pytest.approx(4.75)
    scores = np.asarray(_labels(real["stsb"]["train"]))
    assert scores.min() >= 0.0 and scores.max() <= 5.0


def test_qnli_without_train(glue_dir, real):
    assert set(real["qnli"]) == {"dev", "test"}
    row = real["qnli"]["dev"][0]
    assert row["text_a"] == "What came into force after the new constitution was herald?"
    assert row["label"] == 0  # entailment
    with pytest.raises(DataLayoutError) as ei:
        load_glue("qnli", glue_dir, splits=["train"])
    msg = str(ei.value)
    assert str(glue_dir / "QNLI" / "train.tsv") in msg and "{train,dev,test}.tsv" in msg


def test_provenance_checksums_match_sha256sums(glue_dir, real):
    sums = {}
    for line in (glue_dir / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split()
        sums[rel.removeprefix("./")] = digest
    for dsd in real.values():
        for ds in dsd.values():
            desc = json.loads(ds.info.description)
            rel = Path(desc["source"]).relative_to(glue_dir).as_posix()
            assert desc["sha256"] == sums[rel], rel


def test_splits_argument_and_aliases(glue_dir):
    dsd = load_glue("RTE", glue_dir, splits=["validation"])
    assert list(dsd) == ["dev"] and dsd["dev"].num_rows == 277
    with pytest.raises(DataLayoutError, match="unknown split 'valid'"):
        load_glue("rte", glue_dir, splits=["valid"])
    with pytest.raises(DataLayoutError, match="no split requested"):
        load_glue("rte", glue_dir, splits=[])
    assert list(load_glue("rte", glue_dir, splits="test")) == ["test"]


# ----------------------------------------------------------------------------- default dir / fingerprint

def test_default_glue_dir(monkeypatch, tmp_path, glue_dir):
    monkeypatch.setenv("DIST_PEAKD_GLUE_DIR", str(tmp_path / "g"))
    assert default_glue_dir() == tmp_path / "g"
    monkeypatch.delenv("DIST_PEAKD_GLUE_DIR")
    (tmp_path / "shared" / "glue").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert default_glue_dir().resolve() == (tmp_path / "shared" / "glue").resolve()
    monkeypatch.chdir(tmp_path)  # no ../shared/glue here: falls back to <repo>/../shared/glue
    repo = Path(__file__).resolve().parents[2]
    assert default_glue_dir() == repo.parent / "shared" / "glue"


def test_data_fingerprint(glue_dir, tmp_path):
    fp = data_fingerprint("mrpc", glue_dir)
    assert fp == data_fingerprint("MRPC", glue_dir) and len(fp) == 64
    assert fp != data_fingerprint("mrpc", glue_dir, splits=["dev"])
    assert fp != data_fingerprint("rte", glue_dir)
    # independent of the folder's location, sensitive to one changed byte
    shutil.copytree(glue_dir / "MRPC", tmp_path / "MRPC")
    assert data_fingerprint("mrpc", tmp_path) == fp
    p = tmp_path / "MRPC" / "dev.tsv"
    p.chmod(0o644)
    data = bytearray(p.read_bytes())
    data[-2:-1] = b"!"
    p.write_bytes(bytes(data))
    assert data_fingerprint("mrpc", tmp_path) != fp
    assert data_fingerprint("mrpc", tmp_path, splits=["train"]) == data_fingerprint("mrpc", glue_dir, splits=["train"])


# ----------------------------------------------------------------------------- error cases (tmp files)

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def _write(root: Path, folder: str, split: str, content: str | bytes) -> Path:
    path = root / folder / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataLayoutError) as ei:
        load_glue("mrpc", tmp_path / "nope")
    msg = str(ei.value)
    assert str(tmp_path / "nope") in msg and "MRPC/{train,dev,test}.tsv" in msg
    assert "<glue_dir>/<FOLDER>/{train,dev,test}.tsv" in msg


def test_missing_task_folder(tmp_path):
    with pytest.raises(DataLayoutError) as ei:
        load_glue("sst2", tmp_path)
    assert str(tmp_path / "SST-2") in str(ei.value) and "{train,dev,test}.tsv" in str(ei.value)


def test_missing_split_file(tmp_path):
    _write(tmp_path, "RTE", "train", RTE_HEADER + "0\ta\tb\tentailment\n")
    assert list(load_glue("rte", tmp_path)) == ["train"]  # default: the splits that exist
    with pytest.raises(DataLayoutError) as ei:
        load_glue("rte", tmp_path, splits=["train", "dev"])
    msg = str(ei.value)
    assert str(tmp_path / "RTE" / "dev.tsv") in msg
    assert f"{tmp_path}/RTE/{{train,dev,test}}.tsv" in msg
    assert ei.value.path == tmp_path / "RTE" / "dev.tsv"


def test_empty_task_folder(tmp_path):
    (tmp_path / "RTE").mkdir()
    with pytest.raises(DataLayoutError, match="no split files"):
        load_glue("rte", tmp_path)


def test_unknown_task(tmp_path):
    with pytest.raises(UnknownTaskError, match="cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli"):
        load_glue("glue-x", tmp_path)


def test_malformed_row_names_file_line_and_counts(tmp_path):
    path = _write(tmp_path, "RTE", "train", RTE_HEADER + "0\ta\tb\tentailment\n1\ta\tb\n2\ta\tb\tentailment\n")
    with pytest.raises(MalformedRowError) as ei:
        load_glue("rte", tmp_path)
    msg = str(ei.value)
    assert f"{path}:3" in msg and "expected 4" in msg and "found 3" in msg
    assert (ei.value.line, ei.value.expected, ei.value.found) == (3, 4, 3)


def test_extra_tab_is_malformed(tmp_path):
    # a stray tab inside a text must not shift columns silently
    path = _write(tmp_path, "SST-2", "dev", "sentence\tlabel\ngood\tfilm \t1\n")
    with pytest.raises(MalformedRowError, match=r"dev.tsv:2: .*expected 2 .*found 3"):
        read_glue_tsv("sst2", path, "dev")


def test_blank_line_in_the_middle_is_malformed(tmp_path):
    path = _write(tmp_path, "SST-2", "dev", "sentence\tlabel\ngood\t1\n\nbad\t0\n")
    with pytest.raises(MalformedRowError, match=r"dev.tsv:3: .*found 0"):
        read_glue_tsv("sst2", path, "dev")


def test_cola_headerless_wrong_width(tmp_path):
    path = _write(tmp_path, "CoLA", "train", "gj04\t1\t\tGood.\ngj04\t0\tBad.\n")
    with pytest.raises(MalformedRowError) as ei:
        read_glue_tsv("cola", path, "train")
    assert (ei.value.line, ei.value.expected, ei.value.found) == (2, 4, 3)


def test_label_outside_label_set(tmp_path):
    path = _write(tmp_path, "RTE", "dev", RTE_HEADER + "0\ta\tb\tentailment\n1\ta\tb\tneutral\n")
    with pytest.raises(LabelError) as ei:
        load_glue("rte", tmp_path)
    msg = str(ei.value)
    assert f"{path}:3" in msg and "'neutral'" in msg and "'entailment', 'not_entailment'" in msg


def test_binary_label_outside_set(tmp_path):
    path = _write(tmp_path, "SST-2", "train", "sentence\tlabel\ngood\t1\nbad\t2\n")
    with pytest.raises(LabelError, match=r"train.tsv:3: invalid label '2'; valid labels: '0', '1'"):
        read_glue_tsv("sst2", path, "train")


@pytest.mark.parametrize("score", ["5.5", "-0.1", "nan", "high", ""])
def test_regression_label_invalid(tmp_path, score):
    header = "index\tsentence1\tsentence2\tscore\n"
    path = _write(tmp_path, "STS-B", "train", header + "0\ta\tb\t2.5\n" + f"1\ta\tb\t{score}\n")
    with pytest.raises(LabelError, match=r"train.tsv:3: .*float score in \[0, 5\]"):
        read_glue_tsv("stsb", path, "train")


def test_empty_file(tmp_path):
    path = _write(tmp_path, "RTE", "dev", b"")
    with pytest.raises(DataLayoutError, match="is empty"):
        read_glue_tsv("rte", path, "dev")


def test_header_only_file(tmp_path):
    path = _write(tmp_path, "RTE", "dev", RTE_HEADER)
    with pytest.raises(DataLayoutError, match="no data rows"):
        read_glue_tsv("rte", path, "dev")


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = _write(tmp_path, "RTE", "dev", RTE_HEADER.encode() + b"0\ta\tb\tentailment\n1\tcaf\xe9\tb\tentailment\n")
    with pytest.raises(EncodingError) as ei:
        load_glue("rte", tmp_path)
    assert isinstance(ei.value, DataError)
    assert f"{path}:3" in str(ei.value) and "UTF-8" in str(ei.value)


def test_header_missing_text_column(tmp_path):
    path = _write(tmp_path, "RTE", "dev", "index\tpremise\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(MalformedRowError, match=r"dev.tsv:1: .*lacks column\(s\) \['sentence1'\]"):
        read_glue_tsv("rte", path, "dev")


def test_labelled_split_without_label_column(tmp_path):
    path = _write(tmp_path, "RTE", "train", "index\tsentence1\tsentence2\n0\ta\tb\n")
    with pytest.raises(MalformedRowError, match="no label column 'label'"):
        read_glue_tsv("rte", path, "train")
    # the same file is a valid test split
    assert read_glue_tsv("rte", path, "test")["label"] == [-1]


def test_crlf_bom_and_no_final_newline(tmp_path):
    content = "\ufeff" + RTE_HEADER.replace("\n", "\r\n") + "0\ta \tb\tentailment\r\n1\tc\td\tnot_entailment"
    path = _write(tmp_path, "RTE", "dev", content)
    cols = read_glue_tsv("rte", path, "dev")
    assert cols == {"idx": [0, 1], "text_a": ["a ", "c"], "text_b": ["b", "d"], "label": [0, 1]}


def test_quotes_are_plain_characters(tmp_path):
    path = _write(tmp_path, "SST-2", "dev", 'sentence\tlabel\n"a\t1\nb "quoted" c\t0\n')
    cols = read_glue_tsv("sst2", path, "dev")
    assert cols["text_a"] == ['"a', 'b "quoted" c'] and cols["label"] == [1, 0]


def test_mnli_qqp_wnli_layouts(tmp_path):
    mnli_header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
    _write(tmp_path, "MNLI", "train", mnli_header + "0\t1\t1e\tfic\tp\th\tneutral\tneutral\n")
    _write(tmp_path, "MNLI", "dev_matched", mnli_header + "0\t1\t1e\tfic\tp\th\tx\tcontradiction\n")
    _write(tmp_path, "MNLI", "dev_mismatched", mnli_header + "0\t1\t1e\tfic\tp\th\tx\tentailment\n")
    _write(tmp_path, "MNLI", "test_matched", "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\n0\t1\t1\tg\tp\th\n")
    dsd = load_glue("mnli", tmp_path)
    assert list(dsd) == ["train", "dev_matched", "dev_mismatched", "test_matched"]
    assert [dsd[s][0]["label"] for s in dsd] == [1, 2, 0, -1]
    with pytest.raises(DataLayoutError, match="test_mismatched.tsv"):
        load_glue("mnli", tmp_path, splits=["test_mismatched"])

    _write(tmp_path, "QQP", "dev", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n7\t1\t2\tq1?\tq2?\t1\n")
    assert load_glue("qqp", tmp_path)["dev"][0] == {"idx": 0, "text_a": "q1?", "text_b": "q2?", "label": 1}
    _write(tmp_path, "WNLI", "train", "index\tsentence1\tsentence2\tlabel\n0\ts1\ts2\t0\n")
    assert load_glue("wnli", tmp_path)["train"][0]["label"] == 0


# ----------------------------------------------------------------------------- hub path (local hub-format repo)

def _hub_repo(root: Path, config: str, splits: dict[str, dict], features: datasets.Features) -> Path:
    """A local folder laid out like nyu-mll/glue (parquet per config/split + README configs)."""
    lines = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for split, cols in splits.items():
        (root / config).mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(cols, features=features).to_parquet(str(root / config / f"{split}-00000-of-00001.parquet"))
        lines += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    (root / "README.md").write_text("\n".join([*lines, "---", ""]))
    return root


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def _mrpc_hub_features(names=("not_equivalent", "equivalent")) -> datasets.Features:
    return datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                              "label": datasets.ClassLabel(names=list(names)), "idx": datasets.Value("int32")})


def _as_hub(cols: dict[str, list], unlabelled: bool = False) -> dict[str, list]:
    n = len(cols["idx"])
    return {"sentence1": cols["text_a"], "sentence2": cols["text_b"],
            "label": [-1] * n if unlabelled else cols["label"], "idx": cols["idx"]}


def test_hub_path_same_schema_and_rows_as_folder(glue_dir, tmp_path, hub_cache):
    local = load_glue("mrpc", glue_dir, splits=["dev", "test"])
    dev = {k: local["dev"][k][:] for k in local["dev"].column_names}
    test = {k: local["test"][k][:] for k in local["test"].column_names}
    repo = _hub_repo(tmp_path / "glue_hub", "mrpc",
                     {"validation": _as_hub(dev), "test": _as_hub(test, unlabelled=True)}, _mrpc_hub_features())
    hub = load_glue("mrpc", hub_id=str(repo))
    assert list(hub) == ["dev", "test"]
    for split in ("dev", "test"):
        assert hub[split].features == local[split].features
        assert hub[split].to_dict() == local[split].to_dict()
    assert json.loads(hub["dev"].info.description)["hub_split"] == "validation"
    assert list(load_glue("mrpc", hub_id=str(repo), splits=["dev"])) == ["dev"]
    with pytest.raises(DataLayoutError, match="split 'train' not found in hub dataset"):
        load_glue("mrpc", hub_id=str(repo), splits=["train"])
    fp = data_fingerprint("mrpc", hub_id=str(repo))
    assert fp == data_fingerprint("mrpc", hub_id=str(repo)) and fp != data_fingerprint("mrpc", glue_dir)
    with pytest.raises(ValueError, match="not both"):
        load_glue("mrpc", glue_dir, hub_id=str(repo))


def test_hub_stsb_test_scores_become_nan(tmp_path, hub_cache):
    feats = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                               "label": datasets.Value("float32"), "idx": datasets.Value("int32")})
    repo = _hub_repo(tmp_path / "hub", "stsb", {
        "train": {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [4.5, 0.0], "idx": [0, 1]},
        "test": {"sentence1": ["e"], "sentence2": ["f"], "label": [-1.0], "idx": [0]},
    }, feats)
    dsd = load_glue("stsb", hub_id=str(repo))
    assert dsd["train"]["label"][:] == [4.5, 0.0]
    assert math.isnan(dsd["test"][0]["label"]) and dsd["test"].features == glue_features("stsb")


def test_hub_wrong_class_order_is_rejected(tmp_path, hub_cache):
    repo = _hub_repo(tmp_path / "hub", "mrpc", {
        "train": {"sentence1": ["a"], "sentence2": ["b"], "label": [1], "idx": [0]},
    }, _mrpc_hub_features(names=("equivalent", "not_equivalent")))
    with pytest.raises(DataError, match="class order"):
        load_glue("mrpc", hub_id=str(repo))


def test_hub_unlabelled_train_row_is_rejected(tmp_path, hub_cache):
    repo = _hub_repo(tmp_path / "hub", "mrpc", {
        "train": {"sentence1": ["a", "b"], "sentence2": ["b", "c"], "label": [1, -1], "idx": [0, 1]},
    }, _mrpc_hub_features())
    with pytest.raises(LabelError, match=r"train:2: invalid label -1"):
        load_glue("mrpc", hub_id=str(repo))


def test_split_paths(glue_dir):
    paths = split_paths("sst2", glue_dir)
    assert paths == {s: glue_dir / "SST-2" / f"{s}.tsv" for s in ("train", "dev", "test")}
    assert hashlib.sha256(paths["dev"].read_bytes()).hexdigest().startswith("54a9c12c77e402fc")
