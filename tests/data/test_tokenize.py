"""Cached tokenization (real MiniLM tokenizer, small real splits) and the padding collator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from dist_peakd.data import (
    DynamicPaddingCollator,
    LengthGroupedBatchSampler,
    data_fingerprint,
    load_glue,
    tokenize_dataset,
    tokenizer_fingerprint,
)

COLUMNS = ["idx", "label", "input_ids", "token_type_ids", "length"]


@pytest.fixture(scope="module")
def tok(minilm_path):
    return AutoTokenizer.from_pretrained(str(minilm_path))


@pytest.fixture(scope="module")
def mrpc_dev(glue_dir):
    return load_glue("mrpc", glue_dir, splits=["dev"]), data_fingerprint("mrpc", glue_dir, splits=["dev"])


@pytest.fixture(scope="module")
def cola_dev(glue_dir):
    return load_glue("cola", glue_dir, splits=["dev"]), data_fingerprint("cola", glue_dir, splits=["dev"])


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir())


def test_pair_tokenization_content(tok, mrpc_dev, tmp_path):
    dsd, fp = mrpc_dev
    out, hit = tokenize_dataset(dsd, tok, 32, tmp_path, fp)
    assert not hit
    dev = out["dev"]
    assert dev.column_names == COLUMNS and dev.num_rows == 408
    assert dev["idx"][:] == list(range(408)) and dev["label"][:] == dsd["dev"]["label"][:]
    lengths = np.asarray(dev["length"][:])
    assert lengths.max() == 32 and lengths.min() < 32  # truncated, not padded
    for i in (0, 1, 407):
        row = dev[i]
        ref = tok(dsd["dev"][i]["text_a"], dsd["dev"][i]["text_b"], truncation="longest_first", max_length=32)
        assert row["input_ids"] == ref["input_ids"] and row["token_type_ids"] == ref["token_type_ids"]
        assert row["length"] == len(row["input_ids"])
        assert row["input_ids"][0] == tok.cls_token_id and row["input_ids"].count(tok.sep_token_id) == 2
        assert tok.pad_token_id not in row["input_ids"]
        assert set(row["token_type_ids"]) == {0, 1}


def test_single_sentence_tokenization(tok, cola_dev, tmp_path):
    dsd, fp = cola_dev
    out, hit = tokenize_dataset(dsd, tok, 64, tmp_path, fp)
    row = out["dev"][0]
    assert not hit and row["input_ids"] == tok("The sailors rode the breeze clear of the rocks.")["input_ids"]
    assert row["input_ids"].count(tok.sep_token_id) == 1 and set(row["token_type_ids"]) == {0}


def test_cache_hit_does_not_retokenize(tok, mrpc_dev, tmp_path, monkeypatch):
    dsd, fp = mrpc_dev
    first, hit1 = tokenize_dataset(dsd, tok, 48, tmp_path, fp)
    assert not hit1
    entries = _entries(tmp_path)
    assert len(entries) == 1 and not entries[0].startswith(".tmp")  # no temp folder left behind

    calls = []

    def spy(self, *args, **kwargs):
        calls.append(args)
        raise AssertionError("tokenizer called on a cache hit")

    with monkeypatch.context() as m:
        m.setattr(type(tok), "__call__", spy)
        second, hit2 = tokenize_dataset(dsd, tok, 48, tmp_path, fp)
    assert hit2 and calls == []
    assert second["dev"].to_dict() == first["dev"].to_dict()
    assert _entries(tmp_path) == entries


def test_cache_miss_on_changed_inputs(tok, mrpc_dev, tmp_path):
    dsd, fp = mrpc_dev
    _, hit = tokenize_dataset(dsd, tok, 32, tmp_path, fp)
    assert not hit
    out, hit = tokenize_dataset(dsd, tok, 16, tmp_path, fp)  # max_length changed
    assert not hit and max(out["dev"]["length"][:]) == 16
    _, hit = tokenize_dataset(dsd, tok, 32, tmp_path, "another-data-fingerprint")
    assert not hit
    assert len(_entries(tmp_path)) == 3
    _, hit = tokenize_dataset(dsd, tok, 16, tmp_path, fp)
    assert hit


def test_tokenizer_fingerprint(tok, minilm_path, tmp_path):
    fp = tokenizer_fingerprint(tok)
    # calling the tokenizer with other truncation settings mutates its backend state; not its identity
    tok("a b c", "d e", truncation="longest_first", max_length=5)
    tok(["x"], padding="max_length", max_length=7)
    assert tokenizer_fingerprint(tok) == fp
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(minilm_path))) == fp
    # a cased variant of the same vocabulary is a different tokenizer
    cased = tmp_path / "cased"
    shutil.copytree(minilm_path, cased, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    for p in cased.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    config = json.loads((cased / "tokenizer_config.json").read_text())
    config["do_lower_case"] = False  # transformers 5 rebuilds the normalizer from this flag
    (cased / "tokenizer_config.json").write_text(json.dumps(config))
    cased_tok = AutoTokenizer.from_pretrained(str(cased))
    assert cased_tok("Hello")["input_ids"] != tok("Hello")["input_ids"]
    assert tokenizer_fingerprint(cased_tok) != fp


def test_interrupted_write_leaves_no_cache(tok, cola_dev, tmp_path, monkeypatch):
    dsd, fp = cola_dev
    real_save = datasets.DatasetDict.save_to_disk

    def crash(self, path, *a, **k):
        real_save(self, path, *a, **k)  # the data is written ...
        raise KeyboardInterrupt  # ... but the process dies before the rename

    with monkeypatch.context() as m:
        m.setattr(datasets.DatasetDict, "save_to_disk", crash)
        with pytest.raises(KeyboardInterrupt):
            tokenize_dataset(dsd, tok, 24, tmp_path, fp)
    assert _entries(tmp_path) == []
    _, hit = tokenize_dataset(dsd, tok, 24, tmp_path, fp)
    assert not hit


def test_damaged_cache_is_rebuilt(tok, cola_dev, tmp_path):
    dsd, fp = cola_dev
    first, _ = tokenize_dataset(dsd, tok, 24, tmp_path, fp)
    (key,) = _entries(tmp_path)
    for p in (tmp_path / key).iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    again, hit = tokenize_dataset(dsd, tok, 24, tmp_path, fp)
    assert not hit and again["dev"].to_dict() == first["dev"].to_dict()


def test_bad_arguments(tok, cola_dev, tmp_path):
    dsd, fp = cola_dev
    with pytest.raises(ValueError, match="max_length"):
        tokenize_dataset(dsd, tok, 1, tmp_path, fp)
    with pytest.raises(ValueError, match="data_fingerprint"):
        tokenize_dataset(dsd, tok, 16, tmp_path, "")
    with pytest.raises(ValueError, match="lacks column"):
        tokenize_dataset(datasets.DatasetDict({"dev": dsd["dev"].remove_columns("text_b")}), tok, 16, tmp_path, fp)


# ----------------------------------------------------------------------------- collator

ROWS = [
    {"idx": 5, "label": 1, "input_ids": [101, 7, 8, 102, 9, 102], "token_type_ids": [0, 0, 0, 0, 1, 1]},
    {"idx": 2, "label": 0, "input_ids": [101, 7, 102], "token_type_ids": [0, 0, 0]},
]


def test_collator_dynamic_padding():
    batch = DynamicPaddingCollator(pad_token_id=0)(ROWS)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "example_ids"}
    assert batch["input_ids"].tolist() == [[101, 7, 8, 102, 9, 102], [101, 7, 102, 0, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long
    assert batch["example_ids"].tolist() == [5, 2]
    for k in ("input_ids", "token_type_ids", "attention_mask", "example_ids"):
        assert batch[k].dtype == torch.long


def test_collator_multiple_and_fixed_length():
    b = DynamicPaddingCollator(pad_token_id=3, pad_to_multiple_of=8)(ROWS)
    assert b["input_ids"].shape == (2, 8) and b["input_ids"][1, 3:].tolist() == [3] * 5
    b = DynamicPaddingCollator(pad_token_id=0, pad_to_length=128)(ROWS)
    assert b["input_ids"].shape == (2, 128) and int(b["attention_mask"].sum()) == 9
    with pytest.raises(ValueError, match="pad_to_length=4"):
        DynamicPaddingCollator(pad_token_id=0, pad_to_length=4)(ROWS)


def test_collator_regression_and_empty():
    rows = [dict(r, label=float(i) + 0.5) for i, r in enumerate(ROWS)]
    b = DynamicPaddingCollator(pad_token_id=0)(rows)
    assert b["labels"].dtype == torch.float32 and b["labels"].tolist() == [0.5, 1.5]
    empty = DynamicPaddingCollator(pad_token_id=0)([])
    assert empty["input_ids"].shape == (0, 0) and empty["labels"].shape == (0,)
    assert empty["example_ids"].dtype == torch.long
    assert DynamicPaddingCollator(pad_token_id=0, pad_to_length=16)([])["attention_mask"].shape == (0, 16)
    assert DynamicPaddingCollator(pad_token_id=0, is_regression=True)([])["labels"].dtype == torch.float32


def test_collator_with_dataloader_and_sampler(tok, mrpc_dev, tmp_path):
    dsd, fp = mrpc_dev
    dev = tokenize_dataset(dsd, tok, 64, tmp_path, fp)[0]["dev"]
    lengths = dev["length"][:]
    seen, empty_steps = [], 0
    for rank in range(2):
        # 408 = 11 * 37 + 1: in the last step rank 1 gets an empty share
        sampler = LengthGroupedBatchSampler(lengths, global_batch_size=37, num_replicas=2, rank=rank,
                                            shuffle=False)
        loader = torch.utils.data.DataLoader(dev, batch_sampler=sampler,
                                             collate_fn=DynamicPaddingCollator(tok.pad_token_id))
        for batch in loader:
            assert batch["attention_mask"].sum(1).tolist() == [lengths[i] for i in batch["example_ids"].tolist()]
            assert batch["input_ids"].shape[1] == max(batch["attention_mask"].sum(1).tolist(), default=0)
            seen += batch["example_ids"].tolist()
            empty_steps += batch["input_ids"].shape[0] == 0
    assert sorted(seen) == list(range(408))
    assert empty_steps == 1
