"""Pea-KD loss terms: hand-computed values, weights, dtypes, gradients, the Patient-KD layer map."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dist_peakd.distill import (
    LOSS_TERMS,
    DistillLossConfig,
    distillation_loss,
    patient_layer_map,
    pt_per_example,
)

# Fixed small inputs: B=2 examples, C=3 classes, H=3 hidden, student E=3 effective layers, teacher L=4.
ZS = [[1.0, 0.5, -1.0], [0.2, -0.3, 0.8]]
ZT = [[2.0, -1.0, 0.0], [-0.5, 0.1, 1.5]]
Y = [0, 2]
S_CLS = [  # [E][B][H]
    [[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]],
    [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
    [[5.0, 5.0, 5.0], [2.0, 0.0, 1.0]],
]
T_CLS = [  # [B][L][H]
    [[9.0, 9.0, 9.0], [2.0, 1.0, 2.0], [7.0, 7.0, 7.0], [0.0, 1.0, 0.0]],
    [[9.0, 9.0, 9.0], [0.0, 4.0, 3.0], [7.0, 7.0, 7.0], [1.0, 2.0, 2.0]],
]
LAYER_MAP = [(1, 1), (2, 3)]  # deliberately hand-picked; (2, 3) matches the constant-direction teacher layer


# ----------------------------------------------------------------- plain-python reference values
def _softmax(z: list[float], t: float = 1.0) -> list[float]:
    m = max(v / t for v in z)
    e = [math.exp(v / t - m) for v in z]
    return [v / sum(e) for v in e]


def _kd_hand(zs: list[float], zt: list[float], t: float) -> float:
    ps, pt = _softmax(zs, t), _softmax(zt, t)
    return t * t * sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt, strict=True))


def _ce_hand(zs: list[float], y: int) -> float:
    return -math.log(_softmax(zs)[y])


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _pt_hand(b: int) -> float:
    sq = []
    for j, t in LAYER_MAP:
        hs, ht = _unit(S_CLS[j - 1][b]), _unit(T_CLS[b][t - 1])
        sq.extend((a - c) ** 2 for a, c in zip(ht, hs, strict=True))
    return sum(sq) / len(sq)


def _inputs(dtype: torch.dtype = torch.float32, grad: bool = False):
    zs = torch.tensor(ZS, dtype=dtype, requires_grad=grad)
    s_cls = [torch.tensor(h, dtype=dtype, requires_grad=grad) for h in S_CLS]
    zt = torch.tensor(ZT, dtype=dtype, requires_grad=grad)
    t_cls = torch.tensor(T_CLS, dtype=dtype, requires_grad=grad)
    return zs, s_cls, zt, t_cls, torch.tensor(Y)


# ----------------------------------------------------------------- layer map
@pytest.mark.parametrize("e,lt,expected", [
    (6, 12, [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]),
    (3, 12, [(1, 4), (2, 8)]),
    (6, 6, [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]),
    (1, 12, []),
    (4, 6, [(1, 2), (2, 3), (3, 5)]),            # 1.5 -> 2, 4.5 -> 5 (round half up)
    (9, 12, [(1, 1), (2, 3), (3, 4), (4, 5), (5, 7), (6, 8), (7, 9), (8, 11)]),
    (6, 1, [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]),  # 1/6 rounds to 0 -> clamped to 1
])
def test_patient_layer_map(e, lt, expected):
    assert patient_layer_map(e, lt) == expected


def test_patient_layer_map_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_student_layers"):
        patient_layer_map(0, 12)
    with pytest.raises(ValueError, match="num_teacher_layers"):
        patient_layer_map(3, 0)


# ----------------------------------------------------------------- each term by hand
@pytest.mark.parametrize("red", ["batchmean", "mean_per_class"])
def test_kd_term_by_hand(red):
    zs, _, zt, _, _ = _inputs()
    got = LOSS_TERMS["kd"](zs, zt, temperature=2.0, kl_reduction=red)
    want = [_kd_hand(ZS[b], ZT[b], 2.0) / (3 if red == "mean_per_class" else 1) for b in range(2)]
    assert got.dtype == torch.float32 and got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
def test_mean_per_class_replicates_reference_reduction_mean():
    zs, _, zt, _, _ = _inputs()
    t = 2.0
    ref = F.kl_div(F.log_softmax(zs / t, -1), F.softmax(zt / t, -1), reduction="mean") * t * t
    got = LOSS_TERMS["kd"](zs, zt, temperature=t, kl_reduction="mean_per_class").mean()
    torch.testing.assert_close(got, ref)
    ref_bm = F.kl_div(F.log_softmax(zs / t, -1), F.softmax(zt / t, -1), reduction="batchmean") * t * t
    torch.testing.assert_close(LOSS_TERMS["kd"](zs, zt, temperature=t).mean(), ref_bm)


def test_ce_term_by_hand():
    zs, _, _, _, y = _inputs()
    np.testing.assert_allclose(LOSS_TERMS["ce"](zs, y).numpy(), [_ce_hand(ZS[b], Y[b]) for b in range(2)],
                               rtol=1e-6)


def test_pt_term_by_hand():
    _, s_cls, _, t_cls, _ = _inputs()
    got = LOSS_TERMS["pt"](s_cls, t_cls, LAYER_MAP)
    np.testing.assert_allclose(got.numpy(), [_pt_hand(0), _pt_hand(1)], rtol=1e-6)
    # a sequence of [B, H] teacher tensors is accepted too
    np.testing.assert_allclose(pt_per_example(s_cls, list(t_cls.unbind(1)), LAYER_MAP).numpy(), got.numpy())


def test_pt_batch_mean_equals_spec_formula():
    g = torch.Generator().manual_seed(0)
    b, e, lt, h = 5, 6, 12, 8
    s_cls = [torch.randn(b, h, generator=g) for _ in range(e)]
    t_cls = torch.randn(b, lt, h, generator=g)
    lmap = patient_layer_map(e, lt)
    hs = np.stack([s_cls[j - 1].numpy() for j, _ in lmap], 1).astype(np.float64)   # [B, M, H]
    ht = np.stack([t_cls[:, t - 1].numpy() for _, t in lmap], 1).astype(np.float64)
    spec = np.mean((ht / np.linalg.norm(ht, axis=-1, keepdims=True)
                    - hs / np.linalg.norm(hs, axis=-1, keepdims=True)) ** 2)
    assert float(pt_per_example(s_cls, t_cls, lmap).mean()) == pytest.approx(spec, rel=1e-5)


def test_pt_zero_vector_is_guarded_and_hidden_mismatch_raises():
    s_cls = [torch.zeros(2, 3), torch.ones(2, 3)]
    t_cls = torch.ones(2, 2, 3)
    assert torch.isfinite(pt_per_example(s_cls, t_cls, [(1, 1)])).all()
    with pytest.raises(ValueError, match="hidden size"):
        pt_per_example([torch.ones(2, 4)], torch.ones(2, 2, 3), [(1, 1)])
    with pytest.raises(ValueError, match="teacher layer 3"):
        pt_per_example(s_cls, t_cls, [(1, 3)])


def test_regression_terms():
    zs, zt, y = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.5], [4.0]]), torch.tensor([1.5, 1.0])
    np.testing.assert_allclose(LOSS_TERMS["kd"](zs, zt, temperature=10.0, is_regression=True).numpy(),
                               [0.25, 4.0])
    np.testing.assert_allclose(LOSS_TERMS["ce"](zs, y, is_regression=True).numpy(), [0.25, 1.0])


# ----------------------------------------------------------------- combined loss
@pytest.mark.parametrize("red", ["batchmean", "mean_per_class"])
def test_total_weighted_by_hand(red):
    cfg = DistillLossConfig(alpha=0.7, temperature=2.0, beta=100.0, kl_reduction=red)
    zs, s_cls, zt, t_cls, y = _inputs()
    out = distillation_loss(zs, s_cls, zt, t_cls, y, LAYER_MAP, cfg)
    div = 3 if red == "mean_per_class" else 1
    kd = sum(_kd_hand(ZS[b], ZT[b], 2.0) / div for b in range(2))
    ce = sum(_ce_hand(ZS[b], Y[b]) for b in range(2))
    pt = _pt_hand(0) + _pt_hand(1)
    assert out.count == 2
    assert out.weights == {"kd": 0.7, "ce": pytest.approx(0.3), "pt": 100.0}
    assert float(out.terms["kd"]) == pytest.approx(kd, rel=1e-5)
    assert float(out.terms["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(out.terms["pt"]) == pytest.approx(pt, rel=1e-5)
    assert float(out.total) == pytest.approx(0.7 * kd + 0.3 * ce + 100.0 * pt, rel=1e-5)
    assert all(not v.requires_grad for v in out.terms.values())


def test_plain_kd_is_beta_zero():
    zs, s_cls, zt, t_cls, y = _inputs()
    out = distillation_loss(zs, s_cls, zt, t_cls, y, LAYER_MAP, DistillLossConfig(temperature=2.0, beta=0.0))
    assert float(out.terms["pt"]) == 0.0 and out.weights["pt"] == 0.0
    assert float(out.total) == pytest.approx(0.7 * float(out.terms["kd"]) + 0.3 * float(out.terms["ce"]))
    # an empty layer map (E = 1) also skips PT, whatever beta
    out = distillation_loss(zs, None, zt, None, y, [], DistillLossConfig(temperature=2.0))
    assert float(out.terms["pt"]) == 0.0


def test_no_kd_finetuning_equals_ce_sum():
    zs, _, _, _, y = _inputs()
    cfg = DistillLossConfig(alpha=0.0, beta=0.0)
    out = distillation_loss(zs, None, None, None, y, LAYER_MAP, cfg)
    want = F.cross_entropy(zs, y, reduction="sum")
    torch.testing.assert_close(out.total, want)
    assert set(out.terms) == {"kd", "ce", "pt"} and float(out.terms["kd"]) == 0.0
    # with a teacher at hand, kd is still reported but stays out of the total
    zs, s_cls, zt, t_cls, y = _inputs()
    out = distillation_loss(zs, s_cls, zt, t_cls, y, LAYER_MAP, cfg)
    torch.testing.assert_close(out.total, want)
    assert float(out.terms["kd"]) > 0.0


def test_alpha_positive_needs_teacher_logits():
    zs, _, _, _, y = _inputs()
    with pytest.raises(ValueError, match="teacher_logits"):
        distillation_loss(zs, None, None, None, y, [], DistillLossConfig())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_fp32(dtype):
    cfg = DistillLossConfig(temperature=2.0)
    ref = distillation_loss(*_rounded_inputs(dtype, torch.float32), LAYER_MAP, cfg)
    out = distillation_loss(*_inputs(dtype), LAYER_MAP, cfg)
    assert out.total.dtype == torch.float32
    torch.testing.assert_close(out.total, ref.total, rtol=1e-5, atol=1e-5)
    for k in ref.terms:
        assert out.terms[k].dtype == torch.float32
        torch.testing.assert_close(out.terms[k], ref.terms[k], rtol=1e-5, atol=1e-6)
    # and close to the full-precision inputs within the input rounding
    full = distillation_loss(*_inputs(), LAYER_MAP, cfg)
    torch.testing.assert_close(out.total, full.total, rtol=2e-2, atol=2e-2)


def _rounded_inputs(dtype: torch.dtype, to: torch.dtype):
    zs, s_cls, zt, t_cls, y = _inputs(dtype)
    return zs.to(to), [h.to(to) for h in s_cls], zt.to(to), t_cls.to(to), y


def test_gradients_reach_student_inputs_only():
    zs, s_cls, zt, t_cls, y = _inputs(grad=True)
    out = distillation_loss(zs, s_cls, zt, t_cls, y, LAYER_MAP, DistillLossConfig(temperature=2.0))
    out.total.backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    for j, _ in LAYER_MAP:
        assert s_cls[j - 1].grad is not None and s_cls[j - 1].grad.abs().sum() > 0
    assert s_cls[2].grad is None  # the top effective layer is not matched
    assert zt.grad is None and t_cls.grad is None


@pytest.mark.parametrize("kwargs,option", [
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"alpha": 1.5}, "alpha"),
    ({"alpha": -0.1}, "alpha"),
    ({"beta": -1.0}, "beta"),
    ({"kl_reduction": "sum"}, "kl_reduction"),
])
def test_config_validation_names_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        DistillLossConfig(**kwargs).validate()
    zs, s_cls, zt, t_cls, y = _inputs()
    with pytest.raises(ValueError, match=option):
        distillation_loss(zs, s_cls, zt, t_cls, y, LAYER_MAP, DistillLossConfig(**kwargs))


def test_default_config_is_paper_setting():
    cfg = DistillLossConfig()
    cfg.validate()
    assert (cfg.alpha, cfg.temperature, cfg.beta, cfg.kl_reduction) == (0.7, 10.0, 100.0, "batchmean")
