"""Pea-KD distillation loss: KD + CE + Patient-KD, as per-example fp32 terms.

Every term returns PER-EXAMPLE losses ``[B]`` computed in fp32 (whatever the input dtype), so a
batch-mean loss is the engine's sum over examples divided by the global batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..loss_output import LossOutput

KL_REDUCTIONS = ("batchmean", "mean_per_class")
NORM_EPS = 1e-12


def _f32(x: Tensor) -> Tensor:
    """``x`` in fp32 (no operator call when it already is: every call costs host time per step)."""
    return x if x.dtype == torch.float32 else x.float()


def _const(x: Tensor) -> Tensor:
    """``x`` detached (no operator call when it has no autograd history)."""
    return x.detach() if x.requires_grad else x


def patient_layer_map(num_student_layers: int, num_teacher_layers: int) -> list[tuple[int, int]]:
    """Patient-KD pairs ``(student effective layer j, teacher layer)``, both 1-based.

    Student layers ``j = 1..E-1`` (the last one is covered by KD) are matched to teacher layer
    ``j * L / E``. Where that is not an integer it is rounded half up (``floor(j*L/E + 1/2)``,
    computed exactly with integers) and clamped to ``[1, L]``; several student layers may then share
    a teacher layer (``E > L``). ``E = 1`` gives ``[]``.
    """
    e, lt = int(num_student_layers), int(num_teacher_layers)
    if e < 1 or e != num_student_layers:
        raise ValueError(f"num_student_layers must be a positive integer, got {num_student_layers!r}")
    if lt < 1 or lt != num_teacher_layers:
        raise ValueError(f"num_teacher_layers must be a positive integer, got {num_teacher_layers!r}")
    return [(j, min(lt, max(1, (2 * j * lt + e) // (2 * e)))) for j in range(1, e)]


# ---------------------------------------------------------------------------- per-example terms
def kd_per_example(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float,
                   kl_reduction: str = "batchmean", is_regression: bool = False) -> Tensor:
    """Per-example KD loss ``[B]`` (fp32; the teacher side is detached).

    Classification: ``T^2 * sum_c p_t (log p_t - log p_s)`` with ``p = softmax(z / T)``, so its batch
    mean is the batch-mean KL. ``kl_reduction="mean_per_class"`` also divides by the number of
    classes (the reference code's ``reduction='mean'``). Regression (one output): the squared error
    between the student and teacher predictions, with no temperature and no ``T^2``.
    """
    if kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"option kl_reduction: {kl_reduction!r} is not one of {list(KL_REDUCTIONS)}")
    zs = _f32(student_logits)
    zt = _f32(_const(teacher_logits))
    if zs.shape != zt.shape:
        raise ValueError(f"student logits {tuple(zs.shape)} and teacher logits {tuple(zt.shape)} differ")
    if is_regression:
        return (zs.reshape(len(zs), -1) - zt.reshape(len(zt), -1)).pow(2).sum(-1)
    t = float(temperature)
    if t <= 0:
        raise ValueError(f"option temperature must be > 0, got {temperature!r}")
    kl = F.kl_div(F.log_softmax(zs / t, dim=-1), F.log_softmax(zt / t, dim=-1), reduction="none",
                  log_target=True).sum(-1)
    loss = kl * (t * t)
    if kl_reduction == "mean_per_class":
        loss = loss / zs.shape[-1]
    return loss


def ce_per_example(student_logits: Tensor, labels: Tensor, *, is_regression: bool = False) -> Tensor:
    """Per-example task loss ``[B]`` (fp32): cross-entropy with the gold labels, MSE for regression."""
    zs = _f32(student_logits)
    labels = _const(labels)
    if is_regression:
        return (zs.reshape(len(zs), -1).squeeze(-1) - _f32(labels).reshape(-1)).pow(2)
    target = labels if labels.dtype == torch.long and labels.dim() == 1 else labels.long().reshape(-1)
    return F.cross_entropy(zs, target, reduction="none")


def _layer_index(layers: Sequence[int]) -> slice | list[int]:
    """0-based ``layers`` as a slice when they are consecutive (a view, no gather), else the list."""
    if all(b == a + 1 for a, b in zip(layers, layers[1:], strict=False)):
        return slice(layers[0], layers[-1] + 1)
    return list(layers)


def pt_per_example(student_cls: Tensor | Sequence[Tensor], teacher_cls: Tensor | Sequence[Tensor],
                   layer_map: Sequence[tuple[int, int]], *, eps: float = NORM_EPS) -> Tensor:
    """Per-example Patient-KD loss ``[B]`` (fp32; the teacher side is detached).

    For each example, the mean over (matched layers, hidden dims) of ``(n(h_t) - n(h_s))^2`` with
    ``n(v) = v / max(||v||_2, eps)``; its batch mean is the spec's mean over (batch, layers, dims).

    Args:
        student_cls: ``[B, E, H]`` (one [CLS] vector per student effective layer, bottom to top), or
            a sequence of ``E`` ``[B, H]`` tensors.
        teacher_cls: ``[B, L_t, H]`` as stored in the teacher cache (any float dtype), or a sequence
            of ``[B, H]`` tensors.
        layer_map: 1-based ``(student layer, teacher layer)`` pairs (``patient_layer_map``).

    Matched layers that are consecutive are taken as slices (views), not gathered.
    """
    if not layer_map:
        raise ValueError("pt: empty layer map (nothing to match)")
    if not torch.is_tensor(teacher_cls):
        teacher_cls = torch.stack(list(teacher_cls), dim=1)
    if teacher_cls.dim() != 3:
        raise ValueError(f"pt: teacher_cls must be [B, L_t, H], got shape {tuple(teacher_cls.shape)}")
    stacked = torch.is_tensor(student_cls)
    if stacked and student_cls.dim() != 3:
        raise ValueError(f"pt: student_cls must be [B, E, H] or a list of [B, H], got shape {tuple(student_cls.shape)}")
    n_s, n_t = (student_cls.shape[1] if stacked else len(student_cls)), teacher_cls.shape[1]
    for j, t in layer_map:
        if not (1 <= j <= n_s):
            raise ValueError(f"pt: student layer {j} out of range 1..{n_s}")
        if not (1 <= t <= n_t):
            raise ValueError(f"pt: teacher layer {t} out of range 1..{n_t}")
    if stacked:
        hs = _f32(student_cls[:, _layer_index([j - 1 for j, _ in layer_map])])
    else:
        hs = torch.stack([_f32(student_cls[j - 1]) for j, _ in layer_map], dim=1)  # [B, M, H]
    ht = _f32(_const(teacher_cls)[:, _layer_index([t - 1 for _, t in layer_map])])
    if ht.device != hs.device:
        ht = ht.to(hs.device)
    if hs.shape[-1] != ht.shape[-1]:
        raise ValueError(f"pt: student hidden size {hs.shape[-1]} != teacher hidden size {ht.shape[-1]}; "
                         "Patient-KD here has no projection, so the sizes must match")
    if hs.shape[0] != ht.shape[0]:
        raise ValueError(f"pt: student batch {hs.shape[0]} != teacher batch {ht.shape[0]}")
    diff = F.normalize(ht, p=2.0, dim=-1, eps=eps) - F.normalize(hs, p=2.0, dim=-1, eps=eps)
    return diff.pow(2).mean(dim=(1, 2))


LOSS_TERMS: dict[str, Callable[..., Tensor]] = {
    "kd": kd_per_example,
    "ce": ce_per_example,
    "pt": pt_per_example,
}


def _masked_ce(zs: Tensor, labels: Tensor, weight: Tensor, is_regression: bool) -> Tensor:
    """``weight_i * ce_i``, exactly 0 where ``weight_i == 0`` (that row's label is never read)."""
    has = _const(weight).to(zs.device) != 0
    safe = torch.where(has, labels.to(zs.device), torch.zeros_like(labels, device=zs.device))
    ce = ce_per_example(zs, safe, is_regression=is_regression)
    return torch.where(has, ce * _f32(_const(weight).to(zs.device)), torch.zeros_like(ce))


# ---------------------------------------------------------------------------- combined loss
@dataclass
class DistillLossConfig:
    """Weights of ``alpha*KD + (1-alpha)*CE + beta*PT``; paper setting alpha 0.7, T 10, beta 100.

    ``kl_reduction``: ``"batchmean"`` (correct batch-mean KL, default) or ``"mean_per_class"``
    (also divides by the number of classes, exactly as the reference code).
    """

    alpha: float = 0.7
    temperature: float = 10.0
    beta: float = 100.0
    kl_reduction: str = "batchmean"

    def __post_init__(self) -> None:
        self.validate()  # once, when the run's loss is configured (not once per micro-batch)

    def validate(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"option temperature must be > 0, got {self.temperature!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"option alpha must be in [0, 1], got {self.alpha!r}")
        if not self.beta >= 0:
            raise ValueError(f"option beta must be >= 0, got {self.beta!r}")
        if self.kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"option kl_reduction: {self.kl_reduction!r} is not one of {list(KL_REDUCTIONS)}")


def distillation_loss(student_logits: Tensor, student_cls: Sequence[Tensor] | None,
                      teacher_logits: Tensor | None, teacher_cls: Tensor | None, labels: Tensor,
                      layer_map: Sequence[tuple[int, int]], cfg: DistillLossConfig,
                      is_regression: bool = False, ce_weight: Tensor | None = None) -> LossOutput:
    """Pea-KD loss of one micro-batch: ``total = sum_i [alpha*kd_i + (1-alpha)*ce_i + beta*pt_i]``.

    ``ce_weight`` (optional, ``[B]``): ``ce_i`` becomes ``w_i * ce_i``, and exactly 0 where ``w_i == 0`` (rows
    without a hard label: their label may be -1 or NaN, it is replaced before the CE is computed). With
    ``w_i = B_global / n_labelled`` on labelled rows the engine's division by the global batch size makes the
    CE the mean over the labelled rows of the global batch (unlabeled text, docs/UNLABELED.md).

    ``cfg`` was validated when it was made. All terms are computed in fp32. Every term is reported in ``terms`` (detached per-term sums),
    even with weight 0; a term with weight 0 never enters ``total`` (so it cannot turn it NaN) and is
    computed without grad. KD is not computed (reported 0) when ``alpha == 0`` and ``teacher_logits``
    is None; PT is not computed (reported 0) when ``beta == 0`` or ``layer_map`` is empty.
    """
    zs = _f32(student_logits)
    batch = zs.shape[0]
    w = {"kd": float(cfg.alpha), "ce": 1.0 - float(cfg.alpha), "pt": float(cfg.beta)}

    def term(name: str, fn: Callable[[], Tensor]) -> Tensor:
        if w[name] == 0.0:
            with torch.no_grad():
                return fn()
        return fn()

    per: dict[str, Tensor | None] = {}  # None: not computed (reported as 0)
    if teacher_logits is None:
        if w["kd"] != 0.0:
            raise ValueError(f"teacher_logits is required when alpha = {cfg.alpha} > 0")
        per["kd"] = None
    else:
        per["kd"] = term("kd", lambda: kd_per_example(zs, teacher_logits, temperature=cfg.temperature,
                                                      kl_reduction=cfg.kl_reduction,
                                                      is_regression=is_regression))
    if ce_weight is None:
        per["ce"] = term("ce", lambda: ce_per_example(zs, labels, is_regression=is_regression))
    else:
        per["ce"] = term("ce", lambda: _masked_ce(zs, labels, ce_weight, is_regression))
    if w["pt"] == 0.0 or not layer_map:
        per["pt"] = None
    else:
        if student_cls is None or teacher_cls is None:
            raise ValueError(f"student_cls and teacher_cls are required when beta = {cfg.beta} > 0")
        per["pt"] = pt_per_example(student_cls, teacher_cls, layer_map)

    # sum_i of the weighted terms, accumulated in the same order as before (kd, ce, pt)
    total: Tensor | None = None
    for name, values in per.items():
        if values is not None and w[name] != 0.0:
            total = w[name] * values if total is None else total + w[name] * values
    total_sum = total.sum() if total is not None else zs.new_zeros(())
    zero = zs.new_zeros(())
    terms = {k: (v.detach().sum() if v is not None else zero) for k, v in per.items()}
    return LossOutput(total=total_sum, terms=terms, count=batch, weights=w)
