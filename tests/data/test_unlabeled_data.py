"""Issue 25: unlabeled text sources (.txt, tables, a hub folder), deduplication against every labelled split
and within the pool, and the one-line refusals of bad input (file and line named, nothing written)."""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import pytest
from own_data_helpers import hub_folder, write_table
from reliab_helpers import run_cli

from dist_peakd.data import load_data
from dist_peakd.data.unlabeled import load_unlabeled
from dist_peakd.data.unlabeled_read import MAX_TEXT_CHARS

TRAIN = [{"text": f"train sentence number {i}", "label": "pos" if i % 2 else "neg"} for i in range(20)]
DEV = [{"text": f"dev sentence number {i}", "label": "pos" if i % 2 else "neg"} for i in range(6)]
TEST = [{"text": f"test sentence number {i}", "label": "pos" if i % 2 else "neg"} for i in range(4)]


@pytest.fixture
def own(tmp_path):
    """Own single-text data (train/dev/test CSV) and its options."""
    files = {role: write_table(tmp_path / f"{role}.csv", rows) for role, rows in
             (("train", TRAIN), ("dev", DEV), ("test", TEST))}
    return dict(task="own", train_file=str(files["train"]), dev_file=str(files["dev"]),
                test_file=str(files["test"]), output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "tok"))


def _pool(opts: dict, **kw):
    from dist_peakd.stages.cache_teacher import CacheTeacherOptions  # a stage that takes the pool's options

    run = CacheTeacherOptions(**{**opts, **kw})
    cache = run.layout().datasets_cache
    return load_unlabeled(run, load_data(run, ["train", "dev"], cache_dir=str(cache)), cache)


def test_dedup_against_dev_test_train_and_within_the_pool(own, tmp_path, capsys):
    new = [f"a fresh unlabeled text {i}" for i in range(5)]
    planted = ["DEV sentence   number 2", " dev sentence number 5", "test sentence number 1", "Train sentence number 7"]
    rows = [{"text": t, "label": "pos"} for t in [new[0], planted[0], new[1], planted[1], new[2], planted[2], new[0],
                                                   new[3], planted[3], new[4], new[3].upper()]]
    pool_file = write_table(tmp_path / "pool.csv", rows)
    pool = _pool(own, unlabeled_file=str(pool_file))
    out = capsys.readouterr().out
    assert pool.rows["text_a"] == new and pool.rows["idx"] == list(range(5)) and pool.rows["label"] == [-1] * 5
    assert pool.rows["line"] == [2, 4, 6, 9, 11] and set(pool.rows["source"]) == {"pool.csv"}
    record = pool.sources[0]
    assert (record["rows_read"], record["kept"], record["dropped_labelled_duplicates"],
            record["dropped_pool_duplicates"]) == (11, 5, 4, 2)
    assert "5 kept of 11 read from 1 source(s); dropped 4 equal to a labelled train/dev/test row and 2 repeated" in out
    assert f"{pool_file}: column 'label' ignored" in out
    # the same inputs: the same pool, read back (same fingerprint); another file: another fingerprint
    assert _pool(own, unlabeled_file=str(pool_file)).fingerprint == pool.fingerprint
    txt = tmp_path / "pool.txt"
    txt.write_text("\n".join(new) + "\n\n   \n")
    other = _pool(own, unlabeled_file=[str(pool_file), str(txt)])
    assert other.fingerprint != pool.fingerprint and other.rows.num_rows == 5
    assert other.sources[1]["dropped_pool_duplicates"] == 5 and other.sources[1]["dropped_blank_lines"] == 2


def test_pairs_from_txt_jsonl_and_a_hub_folder(tmp_path):
    pair = [{"q1": f"question {i}?", "q2": f"other question {i}?", "label": i % 2} for i in range(12)]
    train = write_table(tmp_path / "train.jsonl", pair)
    opts = dict(task="pairs", train_file=str(train), text_columns="q1,q2", output_dir=str(tmp_path / "out"),
                cache_dir=str(tmp_path / "tok"))
    txt = tmp_path / "pool.txt"
    txt.write_text("new question a?\tnew question b?\nquestion 3?\tother question 3?\n")
    jsonl = write_table(tmp_path / "pool.jsonl", [{"q1": "jsonl q1", "q2": "jsonl q2"}])
    features = datasets.Features({"q1": datasets.Value("string"), "q2": datasets.Value("string")})
    hub = hub_folder(tmp_path / "hub", "default", {"train": {"q1": ["hub q1"], "q2": ["hub q2"]}}, features)
    pool = _pool(opts, unlabeled_file=[str(txt), str(jsonl)], unlabeled_hub_dataset=str(hub))
    assert list(zip(pool.rows["text_a"], pool.rows["text_b"], strict=True)) == [
        ("new question a?", "new question b?"), ("jsonl q1", "jsonl q2"), ("hub q1", "hub q2")]
    assert pool.sources[0]["dropped_labelled_duplicates"] == 1  # question 3 is a train (or carved dev) pair


BAD = {
    "empty": ("pool.txt", b"", r"pool.txt: is empty \(option unlabeled_file\)", 4),
    "wrong_columns": ("pool.csv", b"sentence,label\nhello,pos\n",
                      r"pool.csv: no column 'text' \(option unlabeled_file: expected text column\(s\) \['text'\].*"
                      r"its columns: 'sentence', 'label'", 4),
    "binary": ("pool.txt", b"fine text\nalso fine\n\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", r"pool.txt:3: not valid UTF-8", 4),
    "nul": ("pool.txt", b"fine\nbin\x00ary\n", r"pool.txt: row index 1 \(line 2\), column 'text': NUL character", 4),
    "over_long": ("pool.txt", b"fine\nfine too\n" + b"x" * (MAX_TEXT_CHARS + 1) + b"\n",
                  r"pool.txt: row index 2 \(line 3\), column 'text': text of 100,001 characters, over the limit", 4),
    "empty_cell": ("pool.csv", b"text\nfine\n\"  \"\n", r"pool.csv: row index 1 \(line 3\), column 'text': empty text", 4),
    "missing": (None, None, r"pool.txt: does not exist or is not a file \(option unlabeled_file\)", 4),
    "extension": ("pool.docx", b"hello\n", r"option unlabeled_file: .*pool.docx: unknown extension '.docx'", 2),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_unlabeled_input_is_one_line_naming_file_and_line_and_writes_nothing(case, own, tmp_path, tiny_bert,
                                                                                capsys):
    name, content, message, code = BAD[case]
    path = tmp_path / (name or "pool.txt")
    if content is not None:
        path.write_bytes(content)
    opts = dict(own, backbone=str(tiny_bert), teacher_dir=str(tmp_path / "no_teacher"), unlabeled_file=str(path))
    exit_code, _, err = run_cli(["cache-teacher", *[f"--{k}={v}" for k, v in opts.items()]], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("Generating ")]  # datasets' bars
    assert exit_code == code and len(lines) == 1, err
    assert re.search(message, lines[0]) and lines[0].startswith("dist-peakd cache-teacher: error: "), lines[0]
    assert not (tmp_path / "out").exists()  # no run folder, no data.json, no cache
    assert not (tmp_path / "tok" / "hf_datasets" / "unlabeled").exists()  # no pool written


@pytest.mark.parametrize("case", ["binary", "all_duplicates"])
def test_pipeline_refuses_a_bad_pool_before_the_teacher_trains(case, own, tmp_path, tiny_bert, capsys):
    """The pipeline reads and checks the pool first: a bad one costs seconds, not a trained teacher."""
    path = tmp_path / "pool.txt"
    if case == "binary":
        path.write_bytes(b"fine text\n\x89PNG\r\n\x1a\n\x00\xff\xfe")
    else:  # every row is a labelled train/dev row: nothing left to learn from
        path.write_text("train sentence number 3\nDev sentence number 1\n")
    opts = dict(own, backbone=str(tiny_bert), unlabeled_file=str(path), max_length=32, batch_size=8)
    exit_code, _, err = run_cli(["pipeline", *[f"--{k}={v}" for k, v in opts.items()]], capsys)
    expected = "not valid UTF-8" if case == "binary" else "no unlabeled row is left after deduplication"
    assert exit_code == 4 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "own" / "teacher").exists()  # the teacher never started


def test_options_are_checked_up_front():
    from dist_peakd.data import DataOptions
    from dist_peakd.data.errors import DataOptionError

    base = dict(task="sst2")
    assert DataOptions(**base, unlabeled_file="a.txt").unlabeled_files() == ("a.txt",)
    assert DataOptions(**base, unlabeled_file=["a.txt", "b.parquet"]).validate().has_unlabeled
    assert not DataOptions(**base).has_unlabeled and DataOptions(**base, augment=2).has_unlabeled
    for kw, match in (({"unlabeled_file": ["a.txt", "a.txt"]}, "given twice"), ({"augment": -1}, "augment"),
                      ({"augment_seed": -2}, "augment_seed"), ({"unlabeled_hub_dataset": " "}, "unlabeled_hub")):
        with pytest.raises(DataOptionError, match=match):
            DataOptions(**base, **kw).validate()


def test_augment_rows_join_the_pool_through_the_contract(own, monkeypatch, tmp_path):
    """--augment plumbing with a trivial stand-in for u2's augment_text (the real one: dist_peakd/data/augment.py)."""
    import sys
    import types

    def stand_in(text, n, rng):
        return [f"{text} variant {j} {int(rng.integers(10))}" for j in range(n)]

    module = types.ModuleType("dist_peakd.data.augment")
    module.augment_text = stand_in
    monkeypatch.setitem(sys.modules, "dist_peakd.data.augment", module)
    pool = _pool(own, augment=2, seed=5, max_train_examples=3)
    assert pool.rows.num_rows == 6 and set(pool.rows["source"]) == {"augment"}
    assert pool.rows["line"] == [0, 0, 1, 1, 2, 2]  # the train row each variant came from
    assert pool.rows["text_a"][0].startswith("train sentence number 0 variant 0")
    again = _pool(own, augment=2, seed=5, max_train_examples=3)
    assert again.rows["text_a"] == pool.rows["text_a"] and again.fingerprint == pool.fingerprint
    assert _pool(own, augment=2, seed=6, max_train_examples=3).fingerprint != pool.fingerprint
    assert Path(pool.rows.cache_files[0]["filename"]).is_file()  # on disk, memory-mapped


def test_only_stages_that_read_the_pool_compare_its_options(tmp_path):
    """A teacher or PTP folder made without --unlabeled_file is reused when it is added; distill's is not."""
    import dataclasses
    import json
    from typing import ClassVar

    from dist_peakd.config import RunOptions, UnlabeledOptions
    from dist_peakd.stages.stage_folder import options_differences

    @dataclasses.dataclass
    class Takes(UnlabeledOptions, RunOptions):  # has the pool's options, does not read them (issue 26: the
        pass                                    # teacher and PTP stages no longer even take them)

    @dataclasses.dataclass
    class Reads(Takes):
        uses_unlabeled: ClassVar[bool] = True

    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(Takes(task="sst2"))))
    opts = Takes(task="sst2", unlabeled_file=["a.txt"], augment=2)
    assert options_differences(tmp_path, opts) == []

    diffs = options_differences(tmp_path, Reads(task="sst2", unlabeled_file=["a.txt"], augment=2))
    assert diffs == ["augment: 0 -> 2", "unlabeled_file: None -> ['a.txt']"]
    assert options_differences(tmp_path, RunOptions(task="sst2", seed=4)) == ["seed: 0 -> 4"]
