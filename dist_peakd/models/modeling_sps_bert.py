"""SPS (Shuffled Parameter Sharing) BERT student for sequence classification.

Self-contained (imports only torch, transformers and ``configuration_sps_bert`` next to it):
dist-peakd copies this file verbatim into every exported model folder, so the folder loads with
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`` in a
process without dist-peakd.

The student owns ``k`` BERT parameter layers and runs them along an *effective-layer schedule* of
``(param_layer, swap_qk)`` pairs. In a swapped pass (``swap_qk=True``) the query is computed with the
layer's key ``Linear`` and the key with its query ``Linear`` (weights and biases), which transposes
every head's pre-softmax score matrix. Nothing else changes and no parameters are added: both passes
use the same tensors, so their gradients accumulate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertLayer, BertModel, BertPreTrainedModel

from .configuration_sps_bert import SPSBertConfig


@dataclass
class SPSSequenceClassifierOutput(SequenceClassifierOutput):
    """``SequenceClassifierOutput`` plus the [CLS] vector (position 0) after every effective layer.

    Attributes:
        loss: task loss when ``labels`` were given (cross-entropy, or MSE when ``num_labels == 1``).
        logits: ``[B, num_labels]``.
        hidden_states: with ``output_hidden_states``, the embeddings output and every effective
            layer's output (``E + 1`` tensors ``[B, S, H]``), as BERT returns them.
        cls_states: one ``[B, H]`` tensor per effective layer of the schedule, bottom to top (the
            embeddings output is not included).
    """

    cls_states: tuple[torch.FloatTensor, ...] | None = None


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


def _math_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p_drop: float, scale: float) -> Tensor:
    """What ``F.scaled_dot_product_attention`` computes on CPU when it trains with dropout (its math
    fallback), op for op, so the result and the dropout mask are the same bit for bit, minus its check
    for rows whose every key is ``-inf`` (an additive ``finfo.min`` mask never makes one): three ops over
    the ``[B, heads, S, S]`` scores per layer, the costliest part of the attention on a CPU."""
    root = math.sqrt(scale)
    scores = (q * root) @ (k.transpose(-2, -1) * root)
    if mask is not None:
        scores = scores.add_(mask)
    return F.dropout(scores.softmax(dim=-1), p=p_drop, training=True) @ v


def _use_math_attention(q: Tensor, p_drop: float) -> bool:
    """SDPA would take its math fallback: an fp32 CPU forward with dropout, outside autocast."""
    return (p_drop > 0.0 and q.device.type == "cpu" and q.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu"))


def sps_layer_forward(
    layer: BertLayer,
    hidden: Tensor,
    keep_mask: Tensor | None = None,
    swap_qk: bool = False,
    use_sdpa: bool = True,
    masks: dict[torch.dtype, Tensor] | None = None,
) -> Tensor:
    """One post-LN BERT layer computed from ``layer``'s own submodules, optionally with Q/K swapped.

    Args:
        layer: the parameter layer (a ``BertLayer``).
        hidden: ``[B, S, H]`` input.
        keep_mask: bool ``[B, 1, 1, S]``, True for real tokens (None: attend everywhere).
        swap_qk: compute the query with the key Linear and the key with the query Linear.
        use_sdpa: ``F.scaled_dot_product_attention`` (default) or the explicit softmax path.
        masks: the additive masks of ``keep_mask`` by dtype, shared by the layers of one forward
            (made once, not once per layer).
    """
    attn = layer.attention.self
    q, k, v = _qkv(layer, hidden, swap_qk)
    mask = masks.get(q.dtype) if masks is not None else None
    if mask is None:
        mask = _additive_mask(keep_mask, q.dtype)
        if masks is not None and mask is not None:
            masks[q.dtype] = mask
    p_drop = attn.dropout.p if layer.training else 0.0
    scale = 1.0 / math.sqrt(q.shape[-1])
    if use_sdpa and _use_math_attention(q, p_drop):
        ctx = _math_attention(q, k, v, mask, p_drop, scale)
    elif use_sdpa:
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


def classification_loss(logits: Tensor, labels: Tensor, num_labels: int) -> Tensor:
    """MSE for a single regression output, cross-entropy otherwise (computed in fp32)."""
    if num_labels == 1:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.float().view(-1, num_labels), labels.view(-1))


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

    def _encode(self, hidden: Tensor, keep: Tensor | None, want_hidden: bool) -> tuple[Tensor, list, list]:
        """Run the schedule; the last hidden state, per-layer [CLS] vectors, all states if asked."""
        use_sdpa = getattr(self.config, "_attn_implementation", None) != "eager"
        use_ckpt = self.training and bool(getattr(self.bert, "gradient_checkpointing", False))
        layers = self.bert.encoder.layer
        cls_states: list[Tensor] = []
        all_hidden: list[Tensor] = [hidden] if want_hidden else []
        masks: dict[torch.dtype, Tensor] = {}  # the additive mask, made by the first layer
        for layer_idx, swap in self.schedule:
            if use_ckpt:
                hidden = checkpoint(sps_layer_forward, layers[layer_idx], hidden, keep, swap, use_sdpa, masks,
                                    use_reentrant=False)
            else:
                hidden = sps_layer_forward(layers[layer_idx], hidden, keep, swap, use_sdpa, masks)
            cls_states.append(hidden[:, 0])
            if want_hidden:
                all_hidden.append(hidden)
        return hidden, cls_states, all_hidden

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SPSSequenceClassifierOutput | tuple:
        """Logits, the [CLS] vector after every effective layer, the loss when ``labels`` are given.

        ``output_hidden_states`` adds the embeddings output and every effective layer's output;
        ``return_dict=False`` returns the output's non-None fields as a tuple (``loss`` first).
        """
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(self.config, "output_hidden_states", False))
        if return_dict is None:
            return_dict = bool(getattr(self.config, "return_dict", True))
        hidden = self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids,
                                      position_ids=position_ids, inputs_embeds=inputs_embeds)
        keep = attention_mask[:, None, None, :].to(torch.bool) if attention_mask is not None else None
        hidden, cls_states, all_hidden = self._encode(hidden, keep, output_hidden_states)
        logits = self.classifier(self.dropout(self.bert.pooler(hidden)))
        loss = classification_loss(logits, labels, self.num_labels) if labels is not None else None
        out = SPSSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            cls_states=tuple(cls_states),
        )
        return out if return_dict else out.to_tuple()


__all__ = [
    "SPSBertForSequenceClassification",
    "SPSSequenceClassifierOutput",
    "attention_scores",
    "sps_layer_forward",
]
