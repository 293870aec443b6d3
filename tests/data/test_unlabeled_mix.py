"""distill on labelled + unlabeled rows, unit level: the mixed sampler, mixed batches, the split-aware teacher
lookup, the masked CE (hand-computed) and the options' refusals. End to end: tests/stages/test_unlabeled_distill.py."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dist_peakd.cache import TeacherCache, build_manifest, write_manifest, write_shard
from dist_peakd.data.collate import DynamicPaddingCollator, TokenColumns
from dist_peakd.data.mixed import MixedBatchSampler, mixed_batches, stream_rows, unlabeled_per_batch
from dist_peakd.distill import DistillLossConfig, distillation_loss
from dist_peakd.errors import ConfigError
from dist_peakd.stages.unlabeled_mix import (
    ce_weights,
    check_unlabeled_task,
    confident_rows,
    lookup_mixed,
    parse_ratio,
)


def _lengths(n, seed):
    return np.random.default_rng(seed).integers(3, 40, size=n).tolist()


# --------------------------------------------------------------------------- sampler
@pytest.mark.parametrize(("b", "ratio", "u"), [(32, 0.5, 16), (32, 0.0, 0), (8, 0.01, 1), (8, 0.99, 7),
                                               (10, 0.25, 3), (1, 0.5, 0)])
def test_unlabeled_per_batch(b, ratio, u):
    assert unlabeled_per_batch(b, ratio) == u


def test_stream_is_a_new_permutation_per_cycle():
    s = stream_rows(3, 1, 0, 7, 19)
    for c in range(2):
        assert sorted(s[7 * c:7 * c + 7].tolist()) == list(range(7))
    assert s[:7].tolist() != s[7:14].tolist() and len(s) == 19 and set(s[14:].tolist()) <= set(range(7))
    assert stream_rows(3, 1, 0, 7, 9).tolist() == s[:9].tolist()  # a prefix of the same stream
    assert stream_rows(3, 1, 1, 7, 7).tolist() != s[:7].tolist()  # another epoch, another order


@pytest.mark.parametrize(("n_l", "n_u", "b", "u"), [(10, 50, 8, 4), (50, 10, 8, 2), (13, 13, 6, 3), (1, 5, 2, 1)])
def test_mixed_batches_composition_and_coverage(n_l, n_u, b, u):
    s = MixedBatchSampler(_lengths(n_l, 0), _lengths(n_u, 1), b, u, seed=5)
    steps = max(math.ceil(n_l / (b - u)), math.ceil(n_u / u))
    assert len(s) == steps
    for epoch in (0, 1):
        batches = s.global_batches(epoch)
        assert len(batches) == steps
        for g in batches:
            assert len(g) == b and sum(i >= n_l for i in g) == u  # every batch: B-u labelled + u unlabeled
            lens = s.lengths[g]
            assert (np.diff(lens) <= 0).all()  # longest first
        seen_l = {i for g in batches for i in g if i < n_l}
        seen_u = {i for g in batches for i in g if i >= n_l}
        longer = "l" if math.ceil(n_l / (b - u)) >= math.ceil(n_u / u) else "u"
        # the longer stream is covered once per epoch (each cycle a permutation), the other repeats
        assert (seen_l == set(range(n_l))) if longer == "l" else (seen_u == set(range(n_l, n_l + n_u)))
    assert s.global_batches(0) != s.global_batches(1)
    assert MixedBatchSampler(_lengths(n_l, 0), _lengths(n_u, 1), b, u, seed=6).global_batches(0) != s.global_batches(0)


def test_mixed_ranks_split_the_same_global_batches_and_resume():
    args = (_lengths(20, 0), _lengths(70, 1), 8, 5)
    one = MixedBatchSampler(*args, seed=2)
    ranks = [MixedBatchSampler(*args, num_replicas=2, rank=r, seed=2) for r in (0, 1)]
    for epoch in (0, 3):
        one.set_epoch(epoch)
        for r in ranks:
            r.set_epoch(epoch)
        shares = [list(r) for r in ranks]
        assert [a + b for a, b in zip(*shares, strict=True)] == one.global_batches(epoch)
    # resume: a fresh sampler loaded with (epoch, step) continues with the same batches
    one.set_epoch(1)
    full = list(one)
    fresh = MixedBatchSampler(*args, seed=2)
    fresh.load_state_dict({"epoch": 1, "start_step": 4})
    assert list(fresh) == full[4:]
    with pytest.raises(ValueError, match="unlabeled rows per batch"):
        MixedBatchSampler(*args[:3], 8)


# --------------------------------------------------------------------------- batches
def _rows(n, seed, label, id0=0):
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(5, 99, size=int(rng.integers(2, 9))).tolist(),
             "token_type_ids": None, "label": label, "idx": id0 + i} for i in range(n)]


def test_mixed_batch_equals_collating_the_rows_with_the_split_flag():
    lab = [dict(r, label=i % 2) for i, r in enumerate(_rows(6, 0, 0))]
    unl = _rows(5, 1, -1)
    for r in lab + unl:
        r["token_type_ids"] = [0] * len(r["input_ids"])
    col = DynamicPaddingCollator(pad_token_id=0, pad_to_multiple_of=4)
    make = mixed_batches(lambda i: col.gather(TokenColumns.from_dataset(lab), i),
                         lambda i: col.gather(TokenColumns.from_dataset(unl), i), 6, 0)
    indices = [7, 2, 10, 0, 6, 5]
    got = make(indices)
    want = col([(lab + unl)[i] for i in indices])
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    assert got["from_unlabeled"].tolist() == [True, False, True, False, True, False]
    assert got["example_ids"].tolist() == [1, 2, 4, 0, 0, 5]  # ids overlap between the two splits
    only_u = make([8, 9])
    assert only_u["from_unlabeled"].all() and only_u["labels"].tolist() == [-1, -1]


# --------------------------------------------------------------------------- teacher lookup
C, L, H = 2, 3, 4


def _cache(root, n_train=6, n_unl=5):
    rng = np.random.default_rng(0)
    truth, records = {}, {}
    for split, n in (("train", n_train), ("dev", 3), ("unlabeled", n_unl)):
        ids = np.arange(n)
        logits = rng.standard_normal((n, C)).astype(np.float32) * 3
        cls = rng.standard_normal((n, L, H)).astype(np.float16)
        truth[split] = (logits, cls)
        records[split] = [write_shard(root, split, 0, 1, ids, logits, cls)]
    manifest = build_manifest(identity={"teacher_fingerprint": "t" * 64, "tokenizer_fingerprint": "k" * 64, "max_length": 16,
                                        "data_fingerprint": "d" * 64, "task": "sst2"}, splits=records, num_labels=C, num_layers=L, hidden_size=H,
                              teacher_dir=root, world_size=1)
    write_manifest(root, manifest)
    return TeacherCache.open(root), truth


def test_lookup_takes_each_row_from_its_own_split(tmp_path):
    cache, truth = _cache(tmp_path / "cache")
    batch = {"example_ids": torch.tensor([3, 3, 0, 4]), "from_unlabeled": torch.tensor([False, True, True, False])}
    logits, cls = lookup_mixed(cache.split("train"), cache.split("unlabeled"), batch)
    src = [("train", 3), ("unlabeled", 3), ("unlabeled", 0), ("train", 4)]
    assert torch.equal(logits, torch.from_numpy(np.stack([truth[s][0][i] for s, i in src])))
    assert torch.equal(cls, torch.from_numpy(np.stack([truth[s][1][i] for s, i in src])))


def test_confidence_filter_keeps_rows_at_or_above_the_floor(tmp_path):
    cache, truth = _cache(tmp_path / "cache")
    conf = torch.softmax(torch.from_numpy(truth["unlabeled"][0]), -1).max(-1).values.numpy()
    pool = [{"idx": i} for i in (4, 2, 0)]  # pool positions 0..2 hold unlabeled ids 4, 2, 0
    floor = float(np.sort(conf[[4, 2, 0]])[1])
    kept = confident_rows(pool, cache, floor)
    assert kept.tolist() == [p for p, i in enumerate((4, 2, 0)) if conf[i] >= floor] and len(kept) == 2
    assert confident_rows(pool, cache, 0.0).tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- the loss, by hand
def test_ce_only_on_labelled_rows_kd_and_pt_on_all_hand_computed():
    torch.manual_seed(0)
    zs, zt = torch.randn(4, C), torch.randn(4, C)
    hs, ht = torch.randn(4, 2, H), torch.randn(4, L, H)
    labels = torch.tensor([1, -1, 0, -1])  # rows 1 and 3 unlabeled: their label is never read
    batch = {"from_unlabeled": torch.tensor([False, True, False, True])}
    scale = 8 / 4  # a global batch of 8 with 4 labelled rows
    cfg = DistillLossConfig(alpha=0.7, temperature=2.0, beta=10.0)
    out = distillation_loss(zs, hs, zt, ht, labels, [(1, 2)], cfg, ce_weight=ce_weights(batch, scale))
    t = 2.0
    kd = [t * t * float((F.softmax(zt[i] / t, -1) * (F.log_softmax(zt[i] / t, -1) - F.log_softmax(zs[i] / t, -1))).sum())
          for i in range(4)]
    ce = [scale * float(F.cross_entropy(zs[i:i + 1], labels[i:i + 1])) if i in (0, 2) else 0.0 for i in range(4)]
    pt = [float((F.normalize(ht[i, 1], dim=-1) - F.normalize(hs[i, 0], dim=-1)).pow(2).mean()) for i in range(4)]
    assert float(out.terms["kd"]) == pytest.approx(sum(kd), rel=1e-5)
    assert float(out.terms["ce"]) == pytest.approx(sum(ce), rel=1e-5)
    assert float(out.terms["pt"]) == pytest.approx(sum(pt), rel=1e-5)
    total = sum(0.7 * kd[i] + 0.3 * ce[i] + 10.0 * pt[i] for i in range(4))
    assert float(out.total) == pytest.approx(total, rel=1e-5)
    # divided by the global batch (8): the CE is the mean over the 4 labelled rows of the global batch
    assert float(out.terms["ce"]) / 8 == pytest.approx(
        (float(F.cross_entropy(zs[0:1], labels[0:1])) + float(F.cross_entropy(zs[2:3], labels[2:3]))) / 4, rel=1e-5)
    # no gradient reaches the logits of unlabeled rows through the CE
    z = zs.clone().requires_grad_(True)
    distillation_loss(z, None, None, None, labels, [], DistillLossConfig(alpha=0.0, beta=0.0),
                      ce_weight=ce_weights(batch, scale)).total.backward()
    assert torch.equal(z.grad[1], torch.zeros(C)) and torch.equal(z.grad[3], torch.zeros(C)) and z.grad[0].abs().sum() > 0


def test_regression_nan_labels_do_not_reach_the_loss():
    zs, labels = torch.randn(3, 1), torch.tensor([0.5, float("nan"), 2.0])
    w = ce_weights({"from_unlabeled": torch.tensor([False, True, False])}, 1.5)
    out = distillation_loss(zs, None, None, None, labels, [], DistillLossConfig(alpha=0.0, beta=0.0),
                            is_regression=True, ce_weight=w)
    want = 1.5 * ((zs[0, 0] - 0.5) ** 2 + (zs[2, 0] - 2.0) ** 2)
    assert math.isfinite(float(out.total)) and float(out.total) == pytest.approx(float(want), rel=1e-6)


def test_without_weight_the_loss_is_bitwise_unchanged():
    torch.manual_seed(1)
    zs, zt, labels = torch.randn(5, C), torch.randn(5, C), torch.tensor([0, 1, 1, 0, 1])
    cfg = DistillLossConfig(beta=0.0)
    a = distillation_loss(zs, None, zt, None, labels, [], cfg)
    b = distillation_loss(zs, None, zt, None, labels, [], cfg,
                          ce_weight=ce_weights({"from_unlabeled": torch.zeros(5, dtype=torch.bool)}, 1.0))
    assert torch.equal(a.terms["ce"], b.terms["ce"]) and torch.equal(a.terms["kd"], b.terms["kd"])


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize("value", ["auto", "AUTO", 0, 0.5, "0.25"])
def test_ratio_accepted(value):
    assert parse_ratio(value) in ("auto", 0.0, 0.5, 0.25)


@pytest.mark.parametrize("value", [1, 1.0, -0.1, "half", True, None])
def test_ratio_refused_in_one_line(value):
    with pytest.raises(ConfigError, match=r"option unlabeled_ratio: .* is not 'auto' or a number in \[0, 1\)"):
        parse_ratio(value)


def test_task_refusals():
    reg, cls = SimpleNamespace(name="stsb", is_regression=True), SimpleNamespace(name="sst2", is_regression=False)
    with pytest.raises(ConfigError, match="option unlabeled_min_confidence: 0.9 needs a classification task"):
        check_unlabeled_task(SimpleNamespace(unlabeled_min_confidence=0.9, unlabeled_ratio="auto", augment=1), reg)
    with pytest.raises(ConfigError, match="option unlabeled_ratio: 0.5 is given but the run has no unlabeled rows"):
        check_unlabeled_task(SimpleNamespace(unlabeled_min_confidence=0.0, unlabeled_ratio=0.5), cls)
    check_unlabeled_task(SimpleNamespace(unlabeled_min_confidence=0.0, unlabeled_ratio="auto"), cls)  # defaults: fine
    check_unlabeled_task(SimpleNamespace(unlabeled_min_confidence=0.5, unlabeled_ratio=0.5,
                                         unlabeled_file=["a.txt"]), cls)


# --------------------------------------------------------------------------- the CLI: refused before any work
@pytest.mark.parametrize(("extra", "message"), [
    (["--unlabeled_ratio", "1.5"], "option unlabeled_ratio: 1.5 is not 'auto' or a number in [0, 1)"),
    (["--unlabeled_min_confidence", "2"], "option unlabeled_min_confidence: 2.0 is not a number in [0, 1]"),
    (["--unlabeled_ratio", "0.5"], "option unlabeled_ratio: 0.5 is given but the run has no unlabeled rows"),
    (["--task", "stsb", "--augment", "1", "--unlabeled_min_confidence", "0.5"],
     "option unlabeled_min_confidence: 0.5 needs a classification task"),
])
def test_cli_refusals_are_one_line_exit_2_nothing_written(tmp_path, capsys, glue_dir, extra, message):
    from reliab_helpers import run_cli

    out = tmp_path / "out"
    argv = ["distill", "--task", "sst2", "--output_dir", str(out), "--glue_dir", str(glue_dir), "--use_ptp", "False",
            "--max_train_examples", "8", "--max_eval_examples", "8", *extra]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 2, stdout + err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), sorted(out.rglob("*"))
