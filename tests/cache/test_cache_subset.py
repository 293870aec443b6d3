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


def _distill(root: Path, teacher: Path, cache_dir: str, name: str, tiny_bert: Path, glue_dir: Path,
             **kw) -> list[dict]:
    return _distill_run(root, teacher, cache_dir, name, tiny_bert, glue_dir, **kw)[0]


def _distill_run(root: Path, teacher: Path, cache_dir: str, name: str, tiny_bert: Path, glue_dir: Path,
                 **kw) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The logged train rows (without rates) and the final weights of a seeded tiny distillation."""
    from safetensors.torch import load_file

    from dist_peakd.config import build_options
    from dist_peakd.stages import distill

    values = dict(task="mrpc", output_dir=str(root / name), glue_dir=str(glue_dir), backbone=str(tiny_bert),
                  teacher_dir=str(teacher), teacher_cache_dir=cache_dir, max_length=40, max_train_examples=64,
                  max_eval_examples=32, batch_size=16, epochs=1, eval_batch_size=32, log_every_steps=1, k=2,
                  variant="shuffle", use_ptp=False, lr=1e-3, cache_dir=str(root / "tok"), seed=0)
    summary = distill.run(build_options(distill.DistillOptions, **{**values, **kw}))
    log = [json.loads(x) for x in (Path(summary["stage_dir"]) / "train_log.jsonl").read_text().splitlines()]
    weights = load_file(str(Path(summary["stage_dir"]) / "final" / "model.safetensors"))
    return [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in log], weights


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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
    """Every issue-16 change but fused AdamW (its own option, compared below) against the code before it:
    collation (the trainer's columnar path vs fetch + collate), cache lookup, loss, the attention's CPU
    path (vs SDPA) and the additive mask made once per forward: losses and final weights bit for bit."""
    from dist_peakd.cache.store import CacheSplit
    from dist_peakd.data import DynamicPaddingCollator
    from dist_peakd.models import modeling_sps_bert
    from dist_peakd.stages import distill

    root, teacher, dirs = caches
    kw = dict(fused_optimizer=False, log_every_steps=2)
    now, now_weights = _distill_run(root, teacher, dirs["slice"], "now", tiny_bert, glue_dir, **kw)
    monkeypatch.setattr(DynamicPaddingCollator, "__call__", ref.reference_collate)
    monkeypatch.delattr(DynamicPaddingCollator, "gather")  # the trainer then fetches rows and collates them
    monkeypatch.setattr(CacheSplit, "lookup", ref.reference_lookup)
    def reference_loss(*args, ce_weight=None, **kwargs):  # the recipe passes ce_weight=None without a pool
        assert ce_weight is None
        return ref.distillation_loss(*args, **kwargs)

    monkeypatch.setattr(distill, "distillation_loss", reference_loss)
    monkeypatch.setattr(modeling_sps_bert, "_use_math_attention", lambda q, p_drop: False)  # always SDPA
    before, before_weights = _distill_run(root, teacher, dirs["slice"], "before", tiny_bert, glue_dir, **kw)
    assert len(now) == 2 and now == before  # every logged loss term, lr and grad norm, bit for bit
    assert _same_weights(now_weights, before_weights)


@pytest.mark.slow
def test_steps_without_host_syncs_train_and_log_as_synced_steps(caches, tiny_bert, glue_dir):
    """Fused AdamW + nan_policy=stop reads the device only at logging steps (the deferred non-finite
    check); nan_policy=skip checks every step on the host. Same logs and weights, bit for bit."""
    root, teacher, dirs = caches
    kw = dict(log_every_steps=3, fused_optimizer=True)
    deferred, w_deferred = _distill_run(root, teacher, dirs["slice"], "deferred", tiny_bert, glue_dir, **kw)
    synced, w_synced = _distill_run(root, teacher, dirs["slice"], "synced", tiny_bert, glue_dir,
                                    nan_policy="skip", **kw)
    assert [r["step"] for r in deferred] == [3, 4] and deferred == synced
    assert _same_weights(w_deferred, w_synced)


@pytest.mark.slow
def test_fused_adamw_run_agrees_with_the_per_tensor_loop_to_rounding(caches, tiny_bert, glue_dir):
    """Fused AdamW (the default) rounds differently from the per-tensor loop on CPU (a few ulps per step):
    the logged terms agree to 1e-5 relative (KD, at T = 10 a difference of near-equal log-probabilities,
    to 1e-3), the final weights to 1e-5."""
    root, teacher, dirs = caches
    fused, w_fused = _distill_run(root, teacher, dirs["slice"], "fused", tiny_bert, glue_dir)
    loop, w_loop = _distill_run(root, teacher, dirs["slice"], "loop", tiny_bert, glue_dir, fused_optimizer=False)
    _assert_runs_close((fused, w_fused), (loop, w_loop), rel=1e-5, kd_rel=1e-3, abs_=1e-7, w_rtol=1e-5, w_atol=1e-6)


def _assert_runs_close(got: tuple, want: tuple, rel: float, kd_rel: float, abs_: float, w_rtol: float,
                       w_atol: float) -> None:
    """Two runs' ``(logged terms, final weights)`` agree: 4 logged steps, each term to ``rel`` (KD to
    ``kd_rel``), every weight to ``w_rtol``/``w_atol``."""
    (logs, weights), (ref_logs, ref_weights) = got, want
    assert len(logs) == len(ref_logs) == 4
    for a, b in zip(logs, ref_logs, strict=True):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=kd_rel if k == "train/kd" else rel, abs=abs_), k
    for k in ref_weights:
        torch.testing.assert_close(weights[k], ref_weights[k], rtol=w_rtol, atol=w_atol, msg=k)


@pytest.mark.slow
def test_compiled_run_agrees_with_eager(caches, tiny_bert, glue_dir):
    """``--compile`` (torch.compile of the engine's forward and the loss; dropout drawn as in eager mode)
    against the eager run, both padded to multiples of 8: inductor fuses and reorders float arithmetic,
    so the logged terms agree to 1e-4 relative (KD, a difference of near-equal log-probabilities, 1e-2)
    and the final weights to 1e-4; the summary reports the compile time."""
    root, teacher, dirs = caches
    eager, w_eager = _distill_run(root, teacher, dirs["slice"], "eager", tiny_bert, glue_dir, pad_to_multiple_of=8)
    compiled, w_compiled = _distill_run(root, teacher, dirs["slice"], "compiled", tiny_bert, glue_dir, compile=True)
    summary = json.loads((root / "compiled" / "mrpc").glob("*/summary.json").__next__().read_text())
    assert summary["compile_s"] > 0
    _assert_runs_close((compiled, w_compiled), (eager, w_eager), rel=1e-4, kd_rel=1e-2, abs_=1e-6, w_rtol=1e-4,
                       w_atol=1e-5)
