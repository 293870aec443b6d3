"""SPS student: schedules, Q/K swap, sharing, equivalence with BERT, save/load, precision, padding."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AlbertConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
)

from dist_peakd.models import (
    VARIANTS,
    ModelConfigError,
    SPSBertConfig,
    SPSBertForSequenceClassification,
    attention_scores,
    build_student,
    load_student,
    sps_layer_forward,
    sps_schedule,
)

TINY = dict(vocab_size=120, hidden_size=32, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def tiny_student(k: int = 2, variant: str = "shuffle", seed: int = 0, dropout: float = 0.1,
                 **kw) -> SPSBertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = SPSBertConfig(**TINY, num_hidden_layers=k, sps_variant=variant, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, **kw)
    return SPSBertForSequenceClassification(cfg).eval()


def batch(b: int = 3, s: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY["vocab_size"], (b, s), generator=g)
    return ids, torch.ones_like(ids)


# ---------------------------------------------------------------- schedules

@pytest.mark.parametrize("k", [1, 2, 3])
def test_schedule_small_k_runs_twice_in_order(k: int) -> None:
    first = [(i, False) for i in range(k)]
    assert sps_schedule(k, "none") == first
    assert sps_schedule(k, "share") == first + [(i, False) for i in range(k)]
    assert sps_schedule(k, "shuffle") == first + [(i, True) for i in range(k)]


def test_schedule_exact_lists() -> None:
    assert sps_schedule(1, "shuffle") == [(0, False), (0, True)]
    assert sps_schedule(2, "shuffle") == [(0, False), (1, False), (0, True), (1, True)]
    assert sps_schedule(3, "shuffle") == [(0, False), (1, False), (2, False), (0, True), (1, True), (2, True)]
    six = [(i, False) for i in range(6)]
    assert sps_schedule(6, "shuffle") == six + [(3, True), (4, True), (5, True)]
    assert sps_schedule(6, "share") == six + [(3, False), (4, False), (5, False)]
    assert sps_schedule(6, "none") == six


def test_schedule_other_k_top_half_rule() -> None:
    assert sps_schedule(4, "shuffle") == [(0, False), (1, False), (2, False), (3, False), (2, True), (3, True)]
    assert sps_schedule(5, "share")[5:] == [(3, False), (4, False)]
    assert sps_schedule(12, "shuffle")[12:] == [(i, True) for i in range(6, 12)]


@pytest.mark.parametrize("k", [0, -1])
def test_schedule_rejects_bad_k(k: int) -> None:
    with pytest.raises(ModelConfigError, match="k"):
        sps_schedule(k, "shuffle")


def test_schedule_rejects_unknown_variant_listing_valid() -> None:
    with pytest.raises(ModelConfigError) as err:
        sps_schedule(3, "mirror")
    for v in VARIANTS:
        assert v in str(err.value)


# ---------------------------------------------------------------- Q/K swap

def _hand_layer(layer, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """A BERT layer written out by hand from given pre-softmax scores [B, h, S, S]."""
    sa, so = layer.attention.self, layer.attention.output
    b, s, hdim = x.shape
    heads = sa.num_attention_heads
    v = (x @ sa.value.weight.T + sa.value.bias).view(b, s, heads, -1).transpose(1, 2)
    ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, hdim)
    a = F.layer_norm(ctx @ so.dense.weight.T + so.dense.bias + x, (hdim,), so.LayerNorm.weight,
                     so.LayerNorm.bias, so.LayerNorm.eps)
    inter = F.gelu(a @ layer.intermediate.dense.weight.T + layer.intermediate.dense.bias)
    out = layer.output
    return F.layer_norm(inter @ out.dense.weight.T + out.dense.bias + a, (hdim,), out.LayerNorm.weight,
                        out.LayerNorm.bias, out.LayerNorm.eps)


def test_swapped_qk_transposes_score_map() -> None:
    model = tiny_student(k=1)
    layer = model.bert.encoder.layer[0]
    sa = layer.attention.self
    torch.manual_seed(3)
    x = torch.randn(2, 7, 32)
    heads, d = 4, 8
    q = (x @ sa.query.weight.T + sa.query.bias).view(2, 7, heads, d).transpose(1, 2)
    k = (x @ sa.key.weight.T + sa.key.bias).view(2, 7, heads, d).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    with torch.no_grad():
        plain = attention_scores(layer, x, swap_qk=False)
        swapped = attention_scores(layer, x, swap_qk=True)
        torch.testing.assert_close(plain, scores)
        torch.testing.assert_close(swapped, scores.transpose(-1, -2))
        assert not torch.allclose(swapped, plain, atol=1e-3)
        # The full layer with swap=True equals a hand-written layer fed the transposed scores.
        for use_sdpa in (True, False):
            torch.testing.assert_close(sps_layer_forward(layer, x, None, True, use_sdpa),
                                       _hand_layer(layer, x, scores.transpose(-1, -2)), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(sps_layer_forward(layer, x, None, False, use_sdpa),
                                       _hand_layer(layer, x, scores), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- sharing

def test_share_and_shuffle_have_plain_parameters_and_differ() -> None:
    none = tiny_student(k=3, variant="none", initializer_range=0.3)  # peaked attention: swap matters
    share = tiny_student(k=3, variant="share", seed=5)
    shuffle = tiny_student(k=3, variant="shuffle", seed=6)
    share.load_state_dict(none.state_dict())
    shuffle.load_state_dict(none.state_dict())
    names = [n for n, _ in none.named_parameters()]
    assert [n for n, _ in share.named_parameters()] == names == [n for n, _ in shuffle.named_parameters()]
    counts = {sum(p.numel() for p in m.parameters()) for m in (none, share, shuffle)}
    assert len(counts) == 1
    assert len(none.bert.encoder.layer) == len(share.bert.encoder.layer) == 3
    ids, mask = batch()
    with torch.no_grad():
        o_none, o_share, o_shuf = (m(ids, mask) for m in (none, share, shuffle))
    assert len(o_none.cls_states) == 3 and len(o_share.cls_states) == len(o_shuf.cls_states) == 6
    # The first pass is identical, the second differs (swap) and share differs from none (extra pass).
    for i in range(3):
        torch.testing.assert_close(o_share.cls_states[i], o_shuf.cls_states[i])
    assert not torch.allclose(o_share.cls_states[3], o_shuf.cls_states[3], atol=1e-2)
    assert not torch.allclose(o_share.logits, o_shuf.logits, atol=1e-3)
    assert not torch.allclose(o_none.logits, o_share.logits, atol=1e-3)


def test_shared_layer_gradient_is_sum_of_both_passes() -> None:
    shared = tiny_student(k=2, variant="shuffle", dropout=0.0)
    # Same computation with the second pass on deep-copied (unshared) layers.
    unshared = tiny_student(k=4, variant="none", dropout=0.0,
                            sps_schedule=[[0, False], [1, False], [2, True], [3, True]])
    src = shared.bert.encoder.layer
    unshared.bert.embeddings = copy.deepcopy(shared.bert.embeddings)
    unshared.bert.pooler = copy.deepcopy(shared.bert.pooler)
    unshared.classifier = copy.deepcopy(shared.classifier)
    unshared.bert.encoder.layer = torch.nn.ModuleList(copy.deepcopy(src[i]) for i in (0, 1, 0, 1))
    ids, mask = batch()
    mask[1, 6:] = 0
    labels = torch.tensor([0, 1, 1])
    out_s = shared(ids, mask, labels=labels)
    out_u = unshared(ids, mask, labels=labels)
    torch.testing.assert_close(out_s.logits, out_u.logits)
    out_s.loss.backward()
    out_u.loss.backward()
    u_layers = unshared.bert.encoder.layer
    for i in (0, 1):
        for (name, p), p1, p2 in zip(src[i].named_parameters(), u_layers[i].parameters(),
                                     u_layers[i + 2].parameters(), strict=True):
            assert p.grad is not None and p1.grad is not None and p2.grad is not None
            torch.testing.assert_close(p.grad, p1.grad + p2.grad, atol=1e-6, rtol=1e-4, msg=name)
    # Query/key of the second pass really receive gradients from the swapped roles.
    assert u_layers[2].attention.self.query.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_matches() -> None:
    a = tiny_student(k=2, dropout=0.0).train()
    b = copy.deepcopy(a)
    enable = getattr(b, "activation_checkpointing_enable", None) or b.gradient_checkpointing_enable
    enable()
    assert b.bert.gradient_checkpointing
    ids, mask = batch()
    labels = torch.tensor([1, 0, 1])
    a(ids, mask, labels=labels).loss.backward()
    b(ids, mask, labels=labels).loss.backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-6, rtol=1e-4, msg=name)


# ---------------------------------------------------------------- equivalence and loss

@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_none_student_equals_bert_classifier(attn: str) -> None:
    torch.manual_seed(0)
    cfg = BertConfig(**TINY, num_hidden_layers=3, num_labels=3)
    ref = BertForSequenceClassification(cfg).eval()
    student = tiny_student(k=3, variant="none", num_labels=3, attn_implementation=attn)
    student.load_state_dict(ref.state_dict(), strict=True)
    ids, mask = batch()
    mask[0, 5:] = 0
    mask[2, 3:] = 0
    tt = torch.zeros_like(ids)
    tt[:, 4:] = 1
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True)
        got = student(ids, mask, tt)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-4)
    for h, c in zip(want.hidden_states[1:], got.cls_states, strict=True):
        torch.testing.assert_close(c, h[:, 0], atol=1e-5, rtol=1e-4)


def test_loss_with_labels() -> None:
    model = tiny_student(k=1, num_labels=3)
    ids, mask = batch()
    labels = torch.tensor([0, 2, 1])
    out = model(ids, mask, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    reg = tiny_student(k=1, num_labels=1)
    target = torch.tensor([0.5, 1.0, -2.0])
    out = reg(ids, mask, labels=target)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), target))


def test_attention_dropout_active_in_training_only() -> None:
    model = tiny_student(k=1, dropout=0.0)
    model.bert.encoder.layer[0].attention.self.dropout.p = 0.5
    ids, mask = batch()
    with torch.no_grad():
        e1, e2 = model(ids, mask).logits, model(ids, mask).logits
        model.train()
        t1, t2 = model(ids, mask).logits, model(ids, mask).logits
    torch.testing.assert_close(e1, e2)
    assert not torch.allclose(t1, t2)


# ---------------------------------------------------------------- save / load

def test_save_and_reload_roundtrip(tmp_path: Path) -> None:
    model = tiny_student(k=2, variant="shuffle", num_labels=3)
    ids, mask = batch()
    with torch.no_grad():
        want = model(ids, mask).logits
    model.save_pretrained(tmp_path)
    for loaded in (SPSBertForSequenceClassification.from_pretrained(tmp_path),
                   AutoModelForSequenceClassification.from_pretrained(tmp_path),
                   load_student(tmp_path)):
        assert isinstance(loaded, SPSBertForSequenceClassification)
        assert loaded.config.sps_variant == "shuffle"
        assert loaded.schedule == sps_schedule(2, "shuffle")
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(ids, mask).logits, want)


def test_custom_schedule_survives_reload(tmp_path: Path) -> None:
    model = tiny_student(k=2, variant="share", sps_schedule=[[1, False], [0, True], [1, False]])
    model.save_pretrained(tmp_path)
    assert load_student(tmp_path).schedule == [(1, False), (0, True), (1, False)]
    with pytest.raises(ModelConfigError, match="outside"):
        tiny_student(k=2, sps_schedule=[[2, False]])


def test_load_student_with_new_num_labels_reinits_head(tmp_path: Path) -> None:
    ptp = tiny_student(k=2, num_labels=4)
    with torch.no_grad():
        ptp.classifier.bias.fill_(0.7)
    ptp.save_pretrained(tmp_path)
    torch.manual_seed(11)
    task = load_student(tmp_path, num_labels=2)
    torch.manual_seed(11)
    again = load_student(tmp_path, num_labels=2)
    assert task.classifier.weight.shape == (2, 32) and task.config.num_labels == 2
    assert len(task.config.id2label) == 2
    assert torch.equal(task.classifier.bias, torch.zeros(2))
    assert not torch.allclose(task.classifier.weight, ptp.classifier.weight[:2])
    torch.testing.assert_close(task.classifier.weight, again.classifier.weight)  # caller's seed
    head = {"classifier.weight", "classifier.bias"}
    want = {n: t for n, t in ptp.state_dict().items() if n not in head}
    got = {n: t for n, t in task.state_dict().items() if n not in head}
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)
    same = load_student(tmp_path, num_labels=4)
    torch.testing.assert_close(same.classifier.bias, torch.full((4,), 0.7))


# ---------------------------------------------------------------- precision and padding

def test_bf16_autocast_and_bf16_weights_are_finite() -> None:
    model = tiny_student(k=2)
    ids, mask = batch()
    mask[0, 4:] = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask)
    assert out.logits.dtype in (torch.bfloat16, torch.float32)
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(c).all() for c in out.cls_states)
    model = model.to(torch.bfloat16)
    with torch.no_grad():
        out = model(ids, mask)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_does_not_change_cls(attn: str) -> None:
    model = tiny_student(k=2, attn_implementation=attn)
    ids, _ = batch(b=2, s=8)
    single = ids[:1, :5]
    padded = ids.clone()
    padded[0, 5:] = 0
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    with torch.no_grad():
        alone = model(single, torch.ones_like(single))
        both = model(padded, mask)
    torch.testing.assert_close(both.logits[0], alone.logits[0], atol=1e-5, rtol=1e-4)
    for a, b in zip(alone.cls_states, both.cls_states, strict=True):
        torch.testing.assert_close(b[0], a[0], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- building from a backbone

def test_build_student_from_minilm_copies_bottom_layers(minilm_path: Path) -> None:
    student = build_student(str(minilm_path), k=3, variant="shuffle", num_labels=2)
    ref = BertModel.from_pretrained(str(minilm_path), dtype=torch.float32).state_dict()
    got = student.bert.state_dict()
    assert len(student.bert.encoder.layer) == 3 and student.num_effective_layers == 6
    assert student.config.hidden_size == 384 and student.config.num_attention_heads == 12
    expected = {n for n in ref if not n.startswith("encoder.") or n.split(".")[2] in {"0", "1", "2"}}
    assert set(got) == expected
    for name in expected:
        torch.testing.assert_close(got[name], ref[name], atol=0, rtol=0, msg=name)


def test_build_student_head_follows_seed_and_k_limits(tiny_bert: Path) -> None:
    torch.manual_seed(4)
    a = build_student(tiny_bert, k=4, variant="none", num_labels=3)
    torch.manual_seed(4)
    b = build_student(tiny_bert, k=4, variant="none", num_labels=3)
    torch.testing.assert_close(a.classifier.weight, b.classifier.weight)
    assert a.schedule == sps_schedule(4, "none")
    reg = build_student(tiny_bert, k=1, variant="share", num_labels=1)
    assert reg.config.problem_type == "regression" and reg.classifier.out_features == 1
    for bad_k in (0, 5):
        with pytest.raises(ModelConfigError, match="1..4"):
            build_student(tiny_bert, k=bad_k)
    with pytest.raises(ModelConfigError) as err:
        build_student(tiny_bert, k=2, variant="mirror")
    assert all(v in str(err.value) for v in VARIANTS)


def test_build_and_load_reject_wrong_checkpoints(tmp_path: Path, tiny_bert: Path) -> None:
    gpt = tmp_path / "gpt2"
    GPT2Config(n_layer=2, n_embd=32, n_head=4).save_pretrained(gpt)
    with pytest.raises(ModelConfigError) as err:
        build_student(gpt, k=1)
    assert str(gpt) in str(err.value) and "gpt2" in str(err.value) and "bert" in str(err.value)
    albert = tmp_path / "albert"  # issue 23: roberta & co. have their own SPS student now (sps-family); albert not
    AlbertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4).save_pretrained(albert)
    with pytest.raises(ModelConfigError, match="albert"):
        build_student(albert, k=1)
    with pytest.raises(ModelConfigError, match="sps-bert"):
        load_student(tiny_bert)
