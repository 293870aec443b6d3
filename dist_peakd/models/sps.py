"""SPS (Shuffled Parameter Sharing) BERT student, as specified in docs/method.md.

The student owns ``k`` BERT parameter layers and runs them along an *effective-layer schedule* of
``(param_layer, swap_qk)`` pairs. In a swapped pass (``swap_qk=True``) the query is computed with the
layer's key ``Linear`` and the key with its query ``Linear`` (weights and biases), which transposes
every head's pre-softmax score matrix. Nothing else changes and no parameters are added: both passes
use the same tensors, so their gradients accumulate.
"""

from __future__ import annotations

import logging
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertModel,
    PreTrainedConfig,
)
from transformers.models.bert.modeling_bert import BertLayer, BertPreTrainedModel

from .errors import ModelConfigError
from .outputs import ClassifierOutput

logger = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("none", "share", "shuffle")
ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("sdpa", "eager")
STUDENT_BACKBONE_TYPES: tuple[str, ...] = ("bert",)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ModelConfigError(f"unknown SPS variant {variant!r}; valid variants: {list(VARIANTS)}")


def sps_schedule(k: int, variant: str) -> list[tuple[int, bool]]:
    """Effective-layer schedule ``[(param_layer, swap_qk), ...]`` (0-based) of a ``k``-layer student.

    - ``none``: ``L1..Lk`` once (a plain k-layer BERT), any ``k >= 1``.
    - ``share`` / ``shuffle`` (``swap_qk`` is True in the second pass only for ``shuffle``):
        - ``k <= 3`` (paper): ``L1..Lk`` then ``L1..Lk`` again, same order -> ``2k`` effective layers.
        - ``k >= 4`` (paper for ``k = 6``; our rule for the other ``k``): ``L1..Lk`` then the **top
          half** ``L(k - k//2 + 1)..Lk`` reused once, in order -> ``k + k//2`` effective layers.
          k=4: L1..L4, L3*, L4*; k=5: L1..L5, L4*, L5*; k=6: L1..L6, L4*, L5*, L6* (paper);
          k=12: L1..L12, L7*..L12*.

    Raises:
        ModelConfigError: ``k < 1`` or an unknown variant.
    """
    _check_variant(variant)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ModelConfigError(f"k (number of student parameter layers) must be an integer >= 1, got {k!r}")
    first = [(i, False) for i in range(k)]
    if variant == "none":
        return first
    swap = variant == "shuffle"
    reused = range(k) if k <= 3 else range(k - k // 2, k)
    return first + [(i, swap) for i in reused]


def _normalise_schedule(schedule: Any, num_layers: int) -> list[list[int | bool]]:
    """Validate a schedule against ``num_layers`` and return it in its JSON form ``[[int, bool], ...]``."""
    out: list[list[int | bool]] = []
    try:
        pairs = [(entry[0], entry[1]) for entry in schedule]
    except (TypeError, IndexError, KeyError) as err:
        raise ModelConfigError(f"sps_schedule must be a list of [param_layer, swap_qk] pairs, got {schedule!r}") from err
    if not pairs:
        raise ModelConfigError("sps_schedule is empty")
    for layer, swap in pairs:
        if isinstance(layer, bool) or int(layer) != layer or not 0 <= int(layer) < num_layers:
            raise ModelConfigError(
                f"sps_schedule entry {[layer, swap]!r} refers to a parameter layer outside 0..{num_layers - 1}"
            )
        out.append([int(layer), bool(swap)])
    return out


class SPSBertConfig(BertConfig):
    """``BertConfig`` of an SPS student; ``num_hidden_layers`` is the number of *parameter* layers ``k``.

    Extra fields (saved in ``config.json``): ``sps_variant`` (one of :data:`VARIANTS`) and
    ``sps_schedule`` (``[[param_layer, swap_qk], ...]``, 0-based; derived from ``num_hidden_layers``
    and ``sps_variant`` with :func:`sps_schedule` when not given).
    """

    model_type = "sps-bert"

    sps_variant: str = "shuffle"
    sps_schedule: list | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        _check_variant(self.sps_variant)
        if self.sps_schedule is None:
            self.sps_schedule = [[i, s] for i, s in sps_schedule(self.num_hidden_layers, self.sps_variant)]
        else:
            self.sps_schedule = _normalise_schedule(self.sps_schedule, self.num_hidden_layers)
        super().__post_init__(**kwargs)

    @property
    def schedule(self) -> list[tuple[int, bool]]:
        """The schedule as ``(param_layer, swap_qk)`` tuples."""
        return [(int(i), bool(s)) for i, s in self.sps_schedule]


# --------------------------------------------------------------------------------------------------
# One effective layer, re-using a BertLayer's submodules
# --------------------------------------------------------------------------------------------------


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``[B, S, H] -> [B, heads, S, H/heads]``."""
    b, s, h = x.shape
    return x.view(b, s, num_heads, h // num_heads).transpose(1, 2)


def _qkv(layer: BertLayer, hidden: Tensor, swap_qk: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per-head query, key, value of ``layer``; with ``swap_qk`` the query/key Linears swap roles."""
    attn = layer.attention.self
    q_lin, k_lin = (attn.key, attn.query) if swap_qk else (attn.query, attn.key)
    n = attn.num_attention_heads
    return _split_heads(q_lin(hidden), n), _split_heads(k_lin(hidden), n), _split_heads(attn.value(hidden), n)


def attention_scores(layer: BertLayer, hidden: Tensor, swap_qk: bool = False) -> Tensor:
    """Pre-softmax, unmasked scores ``q k^T / sqrt(d)`` of ``layer`` on ``hidden``: ``[B, heads, S, S]``."""
    q, k, _ = _qkv(layer, hidden, swap_qk)
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])


def _additive_mask(keep: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Bool keep-mask ``[B, 1, 1, S]`` -> additive mask in ``dtype`` (0 kept, finfo.min padded)."""
    if keep is None:
        return None
    return (~keep).to(dtype) * torch.finfo(dtype).min


def sps_layer_forward(
    layer: BertLayer,
    hidden: Tensor,
    keep_mask: Tensor | None = None,
    swap_qk: bool = False,
    use_sdpa: bool = True,
) -> Tensor:
    """One post-LN BERT layer computed from ``layer``'s own submodules, optionally with Q/K swapped.

    Args:
        layer: the parameter layer (a ``BertLayer``).
        hidden: ``[B, S, H]`` input.
        keep_mask: bool ``[B, 1, 1, S]``, True for real tokens (None: attend everywhere).
        swap_qk: compute the query with the key Linear and the key with the query Linear.
        use_sdpa: ``F.scaled_dot_product_attention`` (default) or the explicit softmax path.
    """
    attn = layer.attention.self
    q, k, v = _qkv(layer, hidden, swap_qk)
    mask = _additive_mask(keep_mask, q.dtype)
    p_drop = attn.dropout.p if layer.training else 0.0
    scale = 1.0 / math.sqrt(q.shape[-1])
    if use_sdpa:
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop, scale=scale)
    else:
        scores = (q @ k.transpose(-1, -2)) * scale
        if mask is not None:
            scores = scores + mask
        probs = F.dropout(scores.softmax(dim=-1), p=p_drop, training=layer.training)
        ctx = probs @ v
    b, _, s, _ = ctx.shape
    ctx = ctx.transpose(1, 2).reshape(b, s, -1)

    so = layer.attention.output
    attn_out = so.LayerNorm(so.dropout(so.dense(ctx)) + hidden)
    inter = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(attn_out))
    out = layer.output
    return out.LayerNorm(out.dropout(out.dense(inter)) + attn_out)


# --------------------------------------------------------------------------------------------------
# The student
# --------------------------------------------------------------------------------------------------


class SPSBertForSequenceClassification(BertPreTrainedModel):
    """BERT classifier whose ``k`` encoder layers run along ``config.sps_schedule``.

    Parameter layout is exactly ``BertForSequenceClassification`` with ``k`` layers (``bert.*``,
    ``classifier.*``), so a ``none`` student equals a k-layer BERT classifier numerically.
    """

    config_class = SPSBertConfig
    config: SPSBertConfig

    def __init__(self, config: SPSBertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=True)
        drop = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(drop)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @property
    def schedule(self) -> list[tuple[int, bool]]:
        """The effective-layer schedule ``[(param_layer, swap_qk), ...]``."""
        return self.config.schedule

    @property
    def num_effective_layers(self) -> int:
        return len(self.config.sps_schedule)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> ClassifierOutput:
        """Logits and the [CLS] vector after every effective layer (plus the task loss if ``labels``)."""
        hidden = self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        keep = None
        if attention_mask is not None:
            keep = attention_mask[:, None, None, :].to(torch.bool)
        use_sdpa = getattr(self.config, "_attn_implementation", None) != "eager"
        use_ckpt = self.training and bool(getattr(self.bert, "gradient_checkpointing", False))
        layers = self.bert.encoder.layer
        cls_states: list[Tensor] = []
        for layer_idx, swap in self.schedule:
            if use_ckpt:
                hidden = checkpoint(sps_layer_forward, layers[layer_idx], hidden, keep, swap, use_sdpa,
                                    use_reentrant=False)
            else:
                hidden = sps_layer_forward(layers[layer_idx], hidden, keep, swap, use_sdpa)
            cls_states.append(hidden[:, 0])
        pooled = self.bert.pooler(hidden)
        logits = self.classifier(self.dropout(pooled))

        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float().view(-1, self.num_labels), labels.view(-1))
        return ClassifierOutput(logits=logits, cls_states=tuple(cls_states), loss=loss)


AutoConfig.register(SPSBertConfig.model_type, SPSBertConfig, exist_ok=True)
AutoModelForSequenceClassification.register(SPSBertConfig, SPSBertForSequenceClassification, exist_ok=True)


# --------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------

_BERT_OWN_FIELDS = {f.name for f in fields(BertConfig)} - {f.name for f in fields(PreTrainedConfig)}


def _check_attn(attn_implementation: str) -> None:
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ModelConfigError(
            f"attn_implementation {attn_implementation!r} not supported by the SPS student; "
            f"use one of {list(ATTN_IMPLEMENTATIONS)}"
        )


def build_student(
    backbone: str | Path,
    k: int,
    variant: str = "shuffle",
    num_labels: int = 2,
    attn_implementation: str = "sdpa",
) -> SPSBertForSequenceClassification:
    """An SPS student initialised from a *pretrained* BERT backbone (path or hub id).

    Embeddings, the bottom ``k`` encoder layers and the pooler are copied from
    ``BertModel.from_pretrained(backbone)`` (fp32); the classifier head is new, drawn from the
    caller's torch RNG. ``num_labels == 1`` means regression.

    Raises:
        ModelConfigError: backbone not of model_type ``bert``; ``k`` outside ``1..backbone layers``;
            unknown ``variant``; unsupported ``attn_implementation``.
    """
    _check_variant(variant)
    _check_attn(attn_implementation)
    if num_labels < 1:
        raise ModelConfigError(f"num_labels must be >= 1, got {num_labels}")
    base_cfg = AutoConfig.from_pretrained(str(backbone))
    model_type = getattr(base_cfg, "model_type", None)
    if model_type not in STUDENT_BACKBONE_TYPES:
        raise ModelConfigError(
            f"student backbone {str(backbone)!r} has model_type {model_type!r}; the SPS student is built "
            f"from a pretrained checkpoint of type {list(STUDENT_BACKBONE_TYPES)}"
        )
    n_layers = base_cfg.num_hidden_layers
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_layers:
        raise ModelConfigError(f"k must be an integer in 1..{n_layers} (layers of {str(backbone)!r}), got {k!r}")
    schedule = sps_schedule(k, variant)

    own = {name: getattr(base_cfg, name) for name in _BERT_OWN_FIELDS if hasattr(base_cfg, name)}
    own["num_hidden_layers"] = k
    config = SPSBertConfig(
        **own,
        sps_variant=variant,
        sps_schedule=[[i, s] for i, s in schedule],
        num_labels=num_labels,
        problem_type="regression" if num_labels == 1 else None,
        attn_implementation=attn_implementation,
    )
    student = SPSBertForSequenceClassification(config)

    pretrained, info = BertModel.from_pretrained(
        str(backbone), add_pooling_layer=True, dtype=torch.float32, output_loading_info=True
    )
    if any(key.startswith("pooler.") for key in info.get("missing_keys", ())):
        logger.warning("backbone %s has no pooler weights: the student's pooler is randomly initialised", backbone)
    wanted = {f"encoder.layer.{i}." for i in range(k)}
    state = {
        name: tensor
        for name, tensor in pretrained.state_dict().items()
        if not name.startswith("encoder.") or any(name.startswith(p) for p in wanted)
    }
    student.bert.load_state_dict(state, strict=True)
    del pretrained
    return student


def load_student(
    path: str | Path,
    num_labels: int | None = None,
    attn_implementation: str = "sdpa",
) -> SPSBertForSequenceClassification:
    """Load a saved SPS student folder (fp32); its schedule and variant come from its config.

    When ``num_labels`` differs from the saved head (e.g. a PTP encoder with a 4-way head loaded for
    a 2-class task), the classifier is re-initialised fresh (caller's torch RNG) and every other
    weight is kept.

    Raises:
        ModelConfigError: the folder is not an ``sps-bert`` checkpoint.
    """
    _check_attn(attn_implementation)
    from .teacher import _verify_if_export

    _verify_if_export(path)
    config = AutoConfig.from_pretrained(str(path))
    if not isinstance(config, SPSBertConfig):
        raise ModelConfigError(
            f"{str(path)!r} has model_type {getattr(config, 'model_type', None)!r}, not a saved SPS student "
            f"({SPSBertConfig.model_type!r}); build one from a backbone with build_student"
        )
    if num_labels is not None and num_labels != config.num_labels:
        if num_labels < 1:
            raise ModelConfigError(f"num_labels must be >= 1, got {num_labels}")
        config.num_labels = num_labels
        config.problem_type = "regression" if num_labels == 1 else None
    return SPSBertForSequenceClassification.from_pretrained(
        str(path),
        config=config,
        ignore_mismatched_sizes=True,
        dtype=torch.float32,
        attn_implementation=attn_implementation,
    )
