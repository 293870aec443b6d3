"""Issue 16: a teacher cache built on the full splits serves a run on a subset by example id, and a
seeded tiny distillation logs the same losses with the optimised data/cache/loss code as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import perf_reference as ref
import pytest
import torch

from dist_peakd.cache import CacheMismatchError, TeacherCache, build_manifest, write_manifest, write_shard

IDENTITY = {"teacher_fingerprint": "t" * 64, "tokenizer_fingerprint": "k" * 64, "max_length": 40,
            "data_fingerprint": "full" * 16, "task": "mrpc"}


@pytest.fixture()
def full_cache(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    records = {}
    for split, n in (("train", 100), ("dev", 20)):
        ids = np.arange(n)
        records[split] = [write_shard(tmp_path, split, 0, 1, ids, rng.standard_normal((n, 2)).astype(np.float32),
                                      rng.standard_normal((n, 3, 4)).astype(np.float16))]
    write_manifest(tmp_path, build_manifest(identity=IDENTITY, splits=records, num_labels=2, num_layers=3,
                                            hidden_size=4, teacher_dir=tmp_path, world_size=1))
    return tmp_path


def _subset_expected(**changes) -> dict:
    exp = dict(IDENTITY, data_fingerprint="slice" * 12, source_data_fingerprint=IDENTITY["data_fingerprint"],
               rows={"train": 50, "dev": 10}, ids={"train": list(range(50)), "dev": list(range(10))})
    exp.update(changes)
    return exp


def test_full_cache_serves_a_subset_by_id(full_cache):
    cache = TeacherCache.open(full_cache, _subset_expected())
    assert cache.subset
    logits, _ = cache.split("train").lookup([49, 0])
    assert logits.shape == (2, 2)
    exact = TeacherCache.open(full_cache, dict(IDENTITY, rows={"train": 100, "dev": 20},
                                               ids={"train": list(range(100))}))
    assert not exact.subset


def test_subset_with_ids_outside_the_cache_is_refused_naming_them(full_cache):
    with pytest.raises(CacheMismatchError, match=r"ids\[train\]") as info:
        TeacherCache.open(full_cache, _subset_expected(ids={"train": [3, 100, 250], "dev": [0]}))
    assert info.value.differences[0][0] == "ids[train]" and "2 of the run's 3 ids missing" in info.value.differences[0][1]
    assert "[100, 250]" in str(info.value)


@pytest.mark.parametrize("field,value", [("source_data_fingerprint", "other" * 13), ("tokenizer_fingerprint", "x"),
                                         ("teacher_fingerprint", "y"), ("max_length", 64), ("task", "rte")])
def test_subset_still_needs_the_same_source_tokenizer_teacher_and_length(full_cache, field, value):
    with pytest.raises(CacheMismatchError) as info:
        TeacherCache.open(full_cache, _subset_expected(**{field: value}))
    fields = [d[0] for d in info.value.differences]
    if field == "source_data_fingerprint":  # not the source of this run's rows: the exact checks apply
        assert fields == ["data_fingerprint", "rows[train]", "rows[dev]"]
    else:
        assert fields == [field]


def test_without_a_source_fingerprint_a_slice_is_refused_as_before(full_cache):
    expected = _subset_expected()
    del expected["source_data_fingerprint"]
    with pytest.raises(CacheMismatchError, match="data_fingerprint"):
        TeacherCache.open(full_cache, expected)


# ----------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def caches(tmp_path_factory, tiny_bert, glue_dir):
    """A tiny teacher, a cache of full MRPC train + dev and one of a 64/32-row slice."""
    from transformers import AutoTokenizer

    from dist_peakd.config import build_options
    from dist_peakd.models import load_teacher
    from dist_peakd.stages import cache_teacher

    root = tmp_path_factory.mktemp("subset")
    teacher = root / "teacher"
    torch.manual_seed(0)
    model = load_teacher(tiny_bert, 2)
    with torch.no_grad():  # confident logits (~1), as a fine-tuned teacher has: the KD term is then
        model.classifier.weight.mul_(300.0)  # not at fp32's noise floor (near-uniform softmaxes)
    model.save_pretrained(str(teacher))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(teacher))
    out = {}
    for name, sliced in (("full", {}), ("slice", {"max_train_examples": 64, "max_eval_examples": 32})):
        opts = build_options(cache_teacher.CacheTeacherOptions, task="mrpc", output_dir=str(root / name),
                             glue_dir=str(glue_dir), teacher_dir=str(teacher), max_length=40,
                             cache_dir=str(root / "tok"), **sliced)
        out[name] = cache_teacher.run(opts)["cache_dir"]
    return root, teacher, out


def _distill(root: Path, teacher: Path, cache_dir: str, name: str, tiny_bert: Path, glue_dir: Path) -> list[dict]:
    from dist_peakd.config import build_options
    from dist_peakd.stages import distill

    opts = build_options(distill.DistillOptions, task="mrpc", output_dir=str(root / name), glue_dir=str(glue_dir),
                         backbone=str(tiny_bert), teacher_dir=str(teacher), teacher_cache_dir=cache_dir,
                         max_length=40, max_train_examples=64, max_eval_examples=32, batch_size=16, epochs=1,
                         eval_batch_size=32, log_every_steps=1, k=2, variant="shuffle", use_ptp=False, lr=1e-3,
                         cache_dir=str(root / "tok"), seed=0)
    summary = distill.run(opts)
    log = [json.loads(x) for x in (Path(summary["stage_dir"]) / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in log]


@pytest.mark.slow
def test_full_cache_serves_a_sliced_distillation(caches, tiny_bert, glue_dir):
    root, teacher, dirs = caches
    assert TeacherCache.open(dirs["full"]).manifest["splits"]["train"]["rows"] == 3668
    from_full = _distill(root, teacher, dirs["full"], "from-full", tiny_bert, glue_dir)
    from_slice = _distill(root, teacher, dirs["slice"], "from-slice", tiny_bert, glue_dir)
    assert len(from_full) == len(from_slice) == 4
    # The two caches ran the teacher on differently composed (length-sorted) batches, so padded
    # lengths and fp32 matmul blocking differ and a teacher logit may differ in its last bits (here
    # <= 7e-7 on values up to 2.2). Every logged value then agrees to float rounding (rel 1e-5),
    # except KD: at T = 10 it is T^2 times the sum of differences of log-probabilities near log(1/2)
    # that agree to ~1e-4, so a few ulps on a teacher logit move it by ~1e-4 relative (rel 1e-3).
    for a, b in zip(from_full, from_slice, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-3 if k == "train/kd" else 1e-5, abs=1e-7), k
    full, sliced = TeacherCache.open(dirs["full"]).split("train"), TeacherCache.open(dirs["slice"]).split("train")
    ids = sliced.ids
    assert torch.allclose(full.lookup(ids)[0], sliced.lookup(ids)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_seeded_run_logs_the_same_losses_as_the_previous_implementations(caches, tiny_bert, glue_dir, monkeypatch):
    from dist_peakd.cache.store import CacheSplit
    from dist_peakd.data import DynamicPaddingCollator
    from dist_peakd.stages import distill

    root, teacher, dirs = caches
    now = _distill(root, teacher, dirs["slice"], "now", tiny_bert, glue_dir)
    monkeypatch.setattr(DynamicPaddingCollator, "__call__", ref.reference_collate)
    monkeypatch.setattr(CacheSplit, "lookup", ref.reference_lookup)
    monkeypatch.setattr(distill, "distillation_loss", ref.distillation_loss)
    before = _distill(root, teacher, dirs["slice"], "before", tiny_bert, glue_dir)
    assert len(now) == 4 and now == before  # every logged loss term, lr and grad norm, bit for bit
