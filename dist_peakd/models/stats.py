"""Parameter and FLOP accounting for teachers and SPS students (SPS saves parameters, not compute)."""

from __future__ import annotations

from typing import Any

from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameter elements (shared tensors are counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flops_per_token(
    hidden: int,
    intermediate: int,
    num_effective_layers: int,
    seq_len: int,
    num_heads: int | None = None,
) -> float:
    """Forward FLOPs per token of a post-LN Transformer encoder (1 multiply-add = 2 FLOPs).

    Per effective layer::

        2 * (4 * H^2 + 2 * H * I)   # Q, K, V, attention-output projections + the two FFN matmuls
      + 2 * 2 * seq_len * H         # scores q k^T and the probs @ v product

    Embedding lookups, biases, LayerNorms, softmax, activations and the pooler/classifier (run once
    per sequence, not per token) are ignored. ``num_heads`` does not change the count (the score
    matmuls total ``seq_len * H`` multiply-adds per token whatever the split); when given it is only
    checked to divide ``hidden``.
    """
    if num_heads is not None and (num_heads < 1 or hidden % num_heads):
        raise ValueError(f"hidden size {hidden} is not divisible by num_heads={num_heads}")
    per_layer = 2 * (4 * hidden * hidden + 2 * hidden * intermediate) + 2 * 2 * seq_len * hidden
    return float(num_effective_layers * per_layer)


def _family_layers(model: nn.Module) -> nn.Module | None:
    """The encoder layer list of a non-BERT family student (its inner classifier's) or of a plain classifier
    of a family in the table whose encoder is not at ``<base>.encoder`` (DistilBERT, ModernBERT)."""
    from .configuration_sps_family import FAMILIES

    config = getattr(model, "config", None)
    inner = getattr(model, "model", None) if getattr(config, "model_type", None) == "sps-family" else None
    target, spec = (inner, FAMILIES.get(config.base_model_type)) if inner is not None else \
        (model, FAMILIES.get(getattr(config, "model_type", None)))
    if spec is None:
        return None
    try:
        return target.get_submodule(spec.layers)
    except AttributeError:
        return None


def _encoder_parameters(model: nn.Module) -> int:
    layers = _family_layers(model)
    if layers is not None and getattr(model.config, "model_type", None) != "bert":
        return count_parameters(layers)
    base = getattr(model, "base_model", model)
    for name in ("encoder", "transformer", "layers"):  # BERT-like / DistilBERT / ModernBERT
        encoder = getattr(base, name, None)
        if isinstance(encoder, nn.Module):
            return count_parameters(encoder)
    return sum(p.numel() for name, p in model.named_parameters() if ".encoder." in f".{name}")


def model_stats(model: nn.Module, seq_len: int = 128) -> dict[str, Any]:
    """Size and cost summary of a teacher (HF BERT-family classifier) or an SPS student.

    Keys: ``parameters`` (all, distinct), ``encoder_parameters`` (the transformer layers only),
    ``num_parameter_layers`` (distinct layers), ``num_effective_layers`` (layers actually run: the
    schedule length for a student, the layer count for a teacher), ``flops_per_token`` (see
    :func:`flops_per_token`, over the effective layers) and ``forward_gflops_per_sequence``
    (``flops_per_token * seq_len / 1e9``).

    The plain (unrolled) export of a student is a BERT of ``E`` layers: the same ``flops_per_token``,
    ``E`` parameter layers and ``E - k`` more layers of parameters than the compact student.
    """
    config = model.config
    num_param_layers = int(config.num_hidden_layers)
    # Duck-typed on the config: the class may be the package's or a trust_remote_code copy of it.
    schedule = getattr(config, "sps_schedule", None)
    num_effective = len(schedule) if schedule else num_param_layers
    fpt = flops_per_token(
        hidden=config.hidden_size,
        intermediate=getattr(config, "intermediate_size", None) or config.hidden_dim,  # DistilBERT: hidden_dim
        num_effective_layers=num_effective,
        seq_len=seq_len,
        num_heads=config.num_attention_heads,
    )
    return {
        "parameters": count_parameters(model),
        "encoder_parameters": _encoder_parameters(model),
        "num_parameter_layers": num_param_layers,
        "num_effective_layers": num_effective,
        "flops_per_token": fpt,
        "forward_gflops_per_sequence": fpt * seq_len / 1e9,
    }
