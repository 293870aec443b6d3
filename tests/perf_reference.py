"""The implementations before the host-overhead work (issue 16), kept verbatim as test references.

tests/engine/test_perf_equivalence.py checks that the optimised collator, cache lookup and loss give the
same tensors (bit for bit) as these, and that a seeded tiny distillation run logs the same losses
with these patched in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dist_peakd.distill.losses import KL_REDUCTIONS, NORM_EPS, DistillLossConfig
from dist_peakd.loss_output import LossOutput


# ---------------------------------------------------------------------------- collate (DynamicPaddingCollator.__call__)
def reference_collate(self: Any, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    regression = self.is_regression
    if regression is None:
        regression = bool(rows) and self._label_is_float(rows[0]["label"])
    ids = [np.asarray(r["input_ids"], dtype=np.int64) for r in rows]
    length = self._target_length(max((len(x) for x in ids), default=0))
    n = len(rows)
    # filled in numpy (one slice assignment per row), handed to torch without a copy
    input_ids = np.full((n, length), self.pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros((n, length), dtype=np.int64)
    attention_mask = np.zeros((n, length), dtype=np.int64)
    for i, (r, seq) in enumerate(zip(rows, ids, strict=True)):
        k = len(seq)
        if k:
            input_ids[i, :k] = seq
            attention_mask[i, :k] = 1
            tt = r.get("token_type_ids")
            if tt is not None:
                if len(tt) != k:
                    raise ValueError(f"row {i}: token_type_ids has {len(tt)} entries, input_ids {k}")
                token_type_ids[i, :k] = np.asarray(tt, dtype=np.int64)
    label_dtype = torch.float32 if regression else torch.long
    labels = torch.tensor([float(r["label"]) if regression else int(r["label"]) for r in rows], dtype=label_dtype)
    example_ids = torch.tensor([int(r["idx"]) for r in rows], dtype=torch.long)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "token_type_ids": torch.from_numpy(token_type_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "labels": labels,
        "example_ids": example_ids,
    }


# ---------------------------------------------------------------------------- cache (CacheSplit)
def reference_positions(self: Any, example_ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(shard, row)`` arrays for ``example_ids``; ``KeyError`` naming the unknown id(s)."""
    q = np.asarray(example_ids.cpu() if torch.is_tensor(example_ids) else example_ids, dtype=np.int64)
    q = q.reshape(-1)
    pos = np.minimum(np.searchsorted(self.ids, q), max(len(self.ids) - 1, 0))
    found = (self.ids[pos] == q) if len(self.ids) else np.zeros(len(q), bool)
    if not found.all():
        missing = q[~found]
        raise KeyError(f"example id(s) {missing[:10].tolist()} not in teacher cache split {self.name!r} "
                       f"({len(self.ids)} rows{', ids ' + str(self.ids[0]) + '..' + str(self.ids[-1]) if len(self.ids) else ''})")
    return self._shard[pos], self._row[pos]


def reference_gather(self: Any, which: int, example_ids: Any) -> np.ndarray:
    shard, row = reference_positions(self, example_ids)
    template = self._shards[0][which] if self._shards else np.zeros((0,), np.float32)
    out = np.empty((len(row), *template.shape[1:]), dtype=template.dtype)
    for s in np.unique(shard):
        mask = shard == s
        rows = row[mask]
        srt = np.argsort(rows, kind="stable")  # read each shard front to back
        block = self._shards[int(s)][which][rows[srt]]
        dest = np.flatnonzero(mask)[srt]
        out[dest] = block
    return out


def reference_lookup(self: Any, example_ids: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits ``float32 [B, C]`` and [CLS] states ``float16 [B, L, H]`` for ``example_ids``.

    Rows come back in the order of ``example_ids`` (a list, NumPy array or tensor of ints).
    """
    return torch.from_numpy(reference_gather(self, 1, example_ids)), torch.from_numpy(reference_gather(self, 2, example_ids))


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
    zs = student_logits.float()
    zt = teacher_logits.detach().float()
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
    zs = student_logits.float()
    if is_regression:
        return (zs.reshape(len(zs), -1).squeeze(-1) - labels.detach().float().reshape(-1)).pow(2)
    return F.cross_entropy(zs, labels.detach().long().reshape(-1), reduction="none")


def pt_per_example(student_cls: Sequence[Tensor], teacher_cls: Tensor | Sequence[Tensor],
                   layer_map: Sequence[tuple[int, int]], *, eps: float = NORM_EPS) -> Tensor:
    """Per-example Patient-KD loss ``[B]`` (fp32; the teacher side is detached).

    For each example, the mean over (matched layers, hidden dims) of ``(n(h_t) - n(h_s))^2`` with
    ``n(v) = v / max(||v||_2, eps)``; its batch mean is the spec's mean over (batch, layers, dims).

    Args:
        student_cls: one ``[B, H]`` [CLS] vector per student effective layer, bottom to top.
        teacher_cls: ``[B, L_t, H]`` as stored in the teacher cache (any float dtype), or a sequence
            of ``[B, H]`` tensors.
        layer_map: 1-based ``(student layer, teacher layer)`` pairs (``patient_layer_map``).
    """
    if not layer_map:
        raise ValueError("pt: empty layer map (nothing to match)")
    if not torch.is_tensor(teacher_cls):
        teacher_cls = torch.stack(list(teacher_cls), dim=1)
    if teacher_cls.dim() != 3:
        raise ValueError(f"pt: teacher_cls must be [B, L_t, H], got shape {tuple(teacher_cls.shape)}")
    n_s, n_t = len(student_cls), teacher_cls.shape[1]
    for j, t in layer_map:
        if not (1 <= j <= n_s):
            raise ValueError(f"pt: student layer {j} out of range 1..{n_s}")
        if not (1 <= t <= n_t):
            raise ValueError(f"pt: teacher layer {t} out of range 1..{n_t}")
    hs = torch.stack([student_cls[j - 1].float() for j, _ in layer_map], dim=1)  # [B, M, H]
    ht = teacher_cls.detach()[:, [t - 1 for _, t in layer_map]].float().to(hs.device)
    if hs.shape[-1] != ht.shape[-1]:
        raise ValueError(f"pt: student hidden size {hs.shape[-1]} != teacher hidden size {ht.shape[-1]}; "
                         "Patient-KD here has no projection, so the sizes must match")
    if hs.shape[0] != ht.shape[0]:
        raise ValueError(f"pt: student batch {hs.shape[0]} != teacher batch {ht.shape[0]}")
    diff = F.normalize(ht, p=2.0, dim=-1, eps=eps) - F.normalize(hs, p=2.0, dim=-1, eps=eps)
    return diff.pow(2).mean(dim=(1, 2))




def distillation_loss(student_logits: Tensor, student_cls: Sequence[Tensor] | None,
                      teacher_logits: Tensor | None, teacher_cls: Tensor | None, labels: Tensor,
                      layer_map: Sequence[tuple[int, int]], cfg: DistillLossConfig,
                      is_regression: bool = False) -> LossOutput:
    """Pea-KD loss of one micro-batch: ``total = sum_i [alpha*kd_i + (1-alpha)*ce_i + beta*pt_i]``.

    All terms are computed in fp32. Every term is reported in ``terms`` (detached per-term sums),
    even with weight 0; a term with weight 0 never enters ``total`` (so it cannot turn it NaN) and is
    computed without grad. KD is not computed (reported 0) when ``alpha == 0`` and ``teacher_logits``
    is None; PT is not computed (reported 0) when ``beta == 0`` or ``layer_map`` is empty.
    """
    cfg.validate()
    zs = student_logits.float()
    batch = zs.shape[0]
    zero = zs.new_zeros(batch)
    w = {"kd": float(cfg.alpha), "ce": 1.0 - float(cfg.alpha), "pt": float(cfg.beta)}

    def term(name: str, fn: Callable[[], Tensor]) -> Tensor:
        if w[name] == 0.0:
            with torch.no_grad():
                return fn()
        return fn()

    per: dict[str, Tensor] = {}
    if teacher_logits is None:
        if w["kd"] != 0.0:
            raise ValueError(f"teacher_logits is required when alpha = {cfg.alpha} > 0")
        per["kd"] = zero.detach()
    else:
        per["kd"] = term("kd", lambda: kd_per_example(zs, teacher_logits, temperature=cfg.temperature,
                                                      kl_reduction=cfg.kl_reduction,
                                                      is_regression=is_regression))
    per["ce"] = term("ce", lambda: ce_per_example(zs, labels, is_regression=is_regression))
    if w["pt"] == 0.0 or not layer_map:
        per["pt"] = zero.detach()
    else:
        if student_cls is None or teacher_cls is None:
            raise ValueError(f"student_cls and teacher_cls are required when beta = {cfg.beta} > 0")
        per["pt"] = pt_per_example(student_cls, teacher_cls, layer_map)

    total = zero
    for name, values in per.items():
        if w[name] != 0.0:
            total = total + w[name] * values
    return LossOutput(total=total.sum(), terms={k: v.detach().sum() for k, v in per.items()},
                      count=batch, weights=w)
