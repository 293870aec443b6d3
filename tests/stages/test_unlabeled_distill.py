"""distill on labelled + unlabeled rows, end to end on an SST-2 slice with a tiny teacher: the pool reaches the
batches with its own teacher outputs, CE ignores it while KD / Patient-KD use it (hand-computed on a real mixed
batch), --unlabeled_ratio 0 is bitwise the labelled-only run, resume equals uninterrupted, 2 ranks equal 1 rank
(the real deepspeed launcher), PTP ignores the pool. Units: tests/data/test_unlabeled_mix.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dist_peakd.cache import TeacherCache
from dist_peakd.config import build_options
from dist_peakd.errors import StopRequested
from dist_peakd.stages import cache_teacher, distill

N_TRAIN, N_DEV, MAXLEN = 24, 16, 32
TEXTS = ["a gripping and tender film", "dull , lifeless and far too long", "the cast is terrific",
         "one of the worst movies of the year", "a quiet , moving portrait of a family", "it never finds its footing",
         "sharp writing and a great score", "a mess from start to finish", "warm , funny and wise",
         "the plot makes no sense at all", "beautifully shot and acted", "boring", "an instant classic",
         "i want those two hours back", "clever , brisk and surprising", "flat jokes and a tired premise",
         "a joy to watch", "painfully slow", "smart and heartfelt", "nothing new here"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_bert_nodropout) -> Path:
    from transformers import AutoTokenizer

    from dist_peakd.models import load_teacher

    out = tmp_path_factory.mktemp("u_teacher") / "best"
    torch.manual_seed(0)
    load_teacher(tiny_bert_nodropout, 2).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_bert_nodropout)).save_pretrained(str(out))
    return out


def _common(out: Path, teacher: Path, glue_dir: Path, backbone: Path, **kw) -> dict:
    return dict(task="sst2", output_dir=str(out), glue_dir=str(glue_dir), teacher_dir=str(teacher),
                backbone=str(backbone), max_length=MAXLEN, max_train_examples=N_TRAIN, max_eval_examples=N_DEV,
                cache_dir=str(out.parent / "tok"), **kw)


def _student(**kw) -> dict:
    return {**dict(use_ptp=False, k=1, variant="shuffle", batch_size=8, eval_batch_size=16, epochs=2,
                   log_every_steps=1, lr=1e-3, seed=4), **kw}


@pytest.fixture(scope="module")
def pool(tmp_path_factory, teacher, glue_dir, tiny_bert_nodropout):
    """One output folder with a cache over train + dev + a 20-line unlabeled file, one without the pool."""
    root = tmp_path_factory.mktemp("u_pool")
    text = root / "pool.txt"
    text.write_text("\n".join(TEXTS) + "\n")
    with_pool, without = root / "with", root / "without"
    cache_teacher.run(build_options(cache_teacher.CacheTeacherOptions,
                                    **_common(with_pool, teacher, glue_dir, tiny_bert_nodropout),
                                    unlabeled_file=[str(text)], cache_batch_size=8))
    cache_teacher.run(build_options(cache_teacher.CacheTeacherOptions,
                                    **_common(without, teacher, glue_dir, tiny_bert_nodropout), cache_batch_size=8))
    return SimpleNamespace(root=root, text=text, with_pool=with_pool, without=without)


def _distill(p, out: Path, teacher, glue_dir, backbone, pool_file=True, **kw) -> dict:
    extra = {"unlabeled_file": [str(p.text)]} if pool_file else {}
    return distill.run(build_options(distill.DistillOptions, **_common(out, teacher, glue_dir, backbone),
                                     **_student(**kw), **extra))


def _losses(stage: Path) -> list[float]:
    return [json.loads(x)["train/loss"] for x in (stage / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def mixed(pool, teacher, glue_dir, tiny_bert_nodropout):
    summary = _distill(pool, pool.with_pool, teacher, glue_dir, tiny_bert_nodropout, unlabeled_ratio=0.5,
                       run_name="mixed")
    return summary, pool.with_pool / "sst2" / "mixed"


def test_mixed_run_states_rows_ratio_and_uses_the_pool(pool, mixed):
    summary, stage = mixed
    cache = TeacherCache.open(pool.with_pool / "sst2" / "teacher_cache")
    n_pool = len(cache.split("unlabeled"))
    assert 0 < n_pool <= len(TEXTS)
    u = summary["unlabeled"]
    assert u["rows_used"] == u["pool_rows"] == n_pool and u["ratio"] == 0.5 and u["unlabeled_per_batch"] == 4
    assert u["ce"] == "mean over the labelled rows of each global batch" and u["ptp"].startswith("not used")
    # 4 labelled + 4 unlabeled rows a step: an epoch is max(24/4, 20/4) = 6 steps
    assert summary["steps_per_epoch"] == max(-(-N_TRAIN // 4), -(-n_pool // 4)) and summary["total_steps"] == 12
    assert len(_losses(stage)) == 12
    card = (stage / "final" / "README.md").read_text()
    assert f"on {N_TRAIN} labelled + {n_pool} unlabeled rows" in card and "CE on the labelled rows only" in card


def test_loss_of_a_real_mixed_batch_by_hand(pool, teacher, glue_dir, tiny_bert_nodropout):
    """The objective on a real mixed batch = the loss computed by hand from each row's own cache split."""
    from dist_peakd.distill import DistillLossConfig, distillation_loss, patient_layer_map
    from dist_peakd.models import build_student
    from dist_peakd.stages.common import load_tokenizer, prepare_data
    from dist_peakd.stages.unlabeled_mix import ce_weights, mixed_trainer_data, plan_unlabeled

    opts = build_options(distill.DistillOptions, **_common(pool.with_pool, teacher, glue_dir, tiny_bert_nodropout),
                         **_student(unlabeled_ratio=0.5), unlabeled_file=[str(pool.text)])
    tok = load_tokenizer(opts.backbone)
    data = prepare_data(opts, tok, unlabeled=True)
    cache = TeacherCache.open(pool.with_pool / "sst2" / "teacher_cache")
    plan = plan_unlabeled(opts, data, cache)
    td = mixed_trainer_data(data, tok, opts, SimpleNamespace(rank=0, world_size=1), plan)
    indices = td.train_sampler.global_batches(0)[0]
    batch = td.batches_of(td.train_rows)(indices)
    fu = batch["from_unlabeled"]
    assert fu.sum() == 4 and (~fu).sum() == 4 and (batch["labels"][fu] == -1).all()
    torch.manual_seed(0)
    model = build_student(str(tiny_bert_nodropout), k=1, variant="shuffle", num_labels=2).eval()
    layer_map = patient_layer_map(model.num_effective_layers, cache.num_layers)
    cfg = DistillLossConfig(alpha=0.7, temperature=10.0, beta=100.0)
    run_ = SimpleNamespace(data=data, cache=cache)
    hooked = distill.teacher_outputs(run_, plan)(batch)
    with torch.no_grad():
        s = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  token_type_ids=batch["token_type_ids"])
    # the recipe's loss call (distill.train), on the batch the trainer's batch hook made
    out = distillation_loss(s.logits, s.cls_states, hooked["teacher_logits"], hooked["teacher_cls"], hooked["labels"],
                            layer_map, cfg, is_regression=False, ce_weight=ce_weights(hooked, plan.ce_scale))
    kd = ce = pt = kd_labelled = 0.0
    for i in range(8):
        split = "unlabeled" if fu[i] else "train"
        zt, ht = (x[0] for x in cache.split(split).lookup([int(batch["example_ids"][i])]))
        assert torch.equal(hooked["teacher_logits"][i], zt)
        zs = s.logits[i]
        kd_i = 100.0 * float((F.softmax(zt / 10, -1) * (F.log_softmax(zt / 10, -1) - F.log_softmax(zs / 10, -1))).sum())
        kd += kd_i
        kd_labelled += 0.0 if fu[i] else kd_i
        if not fu[i]:  # CE only on labelled rows, weighted B / n_labelled = 8 / 4
            ce += 2.0 * float(F.cross_entropy(zs[None], batch["labels"][i:i + 1]))
        pt += float(np.mean([float((F.normalize(ht[t - 1].float(), dim=-1)
                                    - F.normalize(s.cls_states[j - 1][i], dim=-1)).pow(2).mean())
                             for j, t in layer_map]))
    assert float(out.terms["kd"]) == pytest.approx(kd, rel=1e-4, abs=1e-8)
    assert abs(kd_labelled - kd) > 1e-6  # the pool's rows carry KD (a labelled-only sum would differ)
    assert float(out.terms["ce"]) == pytest.approx(ce, rel=1e-4)
    assert float(out.terms["pt"]) == pytest.approx(pt, rel=1e-4)
    assert float(out.total) == pytest.approx(0.7 * kd + 0.3 * ce + 100.0 * pt, rel=1e-4)
    assert pt > 0 and ce > 0


def test_ratio_zero_is_bitwise_the_run_without_a_pool(pool, teacher, glue_dir, tiny_bert_nodropout):
    a = _distill(pool, pool.with_pool, teacher, glue_dir, tiny_bert_nodropout, unlabeled_ratio=0, run_name="r0")
    b = _distill(pool, pool.without, teacher, glue_dir, tiny_bert_nodropout, pool_file=False, run_name="r0")
    assert "unlabeled" not in a and "unlabeled" not in b
    assert _losses(pool.with_pool / "sst2" / "r0") == _losses(pool.without / "sst2" / "r0")
    assert a["final"] == b["final"] and a["total_steps"] == b["total_steps"] == 2 * -(-N_TRAIN // 8)


def test_resume_equals_uninterrupted(pool, mixed, teacher, glue_dir, tiny_bert_nodropout):
    full, full_stage = mixed
    with pytest.raises(StopRequested):  # mid-epoch 1 (6 steps an epoch)
        _distill(pool, pool.with_pool, teacher, glue_dir, tiny_bert_nodropout, unlabeled_ratio=0.5,
                 run_name="resumed", stop_after_steps=4)
    resumed = _distill(pool, pool.with_pool, teacher, glue_dir, tiny_bert_nodropout, unlabeled_ratio=0.5,
                       run_name="resumed")
    assert _losses(pool.with_pool / "sst2" / "resumed") == _losses(full_stage)
    assert resumed["final"] == full["final"] and resumed["history"] == full["history"]


def test_min_confidence_filter_is_applied_and_stated(pool, teacher, glue_dir, tiny_bert_nodropout):
    cache = TeacherCache.open(pool.with_pool / "sst2" / "teacher_cache")
    conf = torch.softmax(cache.split("unlabeled").logits(), -1).max(-1).values
    floor = float(conf.median())
    summary = _distill(pool, pool.with_pool, teacher, glue_dir, tiny_bert_nodropout, unlabeled_ratio=0.5,
                       unlabeled_min_confidence=floor, run_name="conf", epochs=1)
    assert summary["unlabeled"]["rows_used"] == int((conf >= floor).sum()) < len(conf)
    assert summary["unlabeled"]["dropped_low_confidence"] == len(conf) - summary["unlabeled"]["rows_used"]


def test_ptp_ignores_the_pool(pool, teacher, glue_dir, tiny_bert_nodropout):
    """PTP learns from the labelled train rows only: it does not take the pool's options (issue 26: refused,
    before, accepted and ignored), and the pool in its teacher cache changes nothing."""
    from dist_peakd.errors import ConfigError
    from dist_peakd.stages import ptp

    common = dict(_common(pool.with_pool, teacher, glue_dir, tiny_bert_nodropout), k=1, variant="shuffle",
                  batch_size=8, epochs=1)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['unlabeled_file'\]"):
        build_options(ptp.PTPOptions, **common, unlabeled_file=[str(pool.text)])
    summary = ptp.run(build_options(ptp.PTPOptions, **common))
    hist = summary["histogram"]
    assert sorted(hist) == sorted(["train", "validation" if "validation" in hist else "dev"])
    assert sum(hist["train"].values()) == N_TRAIN  # the train rows only: the teacher-labelled pool has no right / wrong


def _launch(ranks: int, p, teacher: Path, glue_dir: Path, backbone: Path, name: str) -> subprocess.CompletedProcess:
    deepspeed = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    options = {**_common(p.with_pool, teacher, glue_dir, backbone), **_student(unlabeled_ratio=0.5, run_name=name),
               "unlabeled_file": str(p.text)}
    cmd = [deepspeed, "--num_gpus", str(ranks), "--master_port", str(29800 + ranks + os.getpid() % 100),
           "--module", "dist_peakd.cli", "distill", *[x for k, v in options.items() for x in (f"--{k}", str(v))]]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.launcher
@pytest.mark.slow
def test_two_ranks_equal_one_rank_with_unlabeled_rows(pool, teacher, glue_dir, tiny_bert_nodropout):
    for ranks in (1, 2):
        proc = _launch(ranks, pool, teacher, glue_dir, tiny_bert_nodropout, f"ranks{ranks}")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stage = pool.with_pool / "sst2"
    one, two = _losses(stage / "ranks1"), _losses(stage / "ranks2")
    assert len(one) == len(two) == 12
    for a, b in zip(one, two, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    s1, s2 = (json.loads((stage / n / "summary.json").read_text()) for n in ("ranks1", "ranks2"))
    assert s1["unlabeled"] == s2["unlabeled"] and s2["unlabeled"]["rows_used"] > 0
    assert s1["final"]["accuracy"] == pytest.approx(s2["final"]["accuracy"], abs=1e-9)
