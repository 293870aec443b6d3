"""SPS (Shuffled Parameter Sharing) BERT student: builders and loading, as specified in docs/method.md.

The model itself lives in two self-contained files that every export folder carries verbatim
(HF custom-code convention, ``auto_map`` in ``config.json``): :mod:`.configuration_sps_bert`
(``SPSBertConfig``, the schedule rules) and :mod:`.modeling_sps_bert`
(``SPSBertForSequenceClassification``, the Q/K-swapped layer). This module re-exports them,
registers ``sps-bert`` with the Auto classes and marks both classes for ``save_pretrained`` to copy
their code and write ``auto_map``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertModel,
    PreTrainedConfig,
)

from .configuration_sps_bert import VARIANTS, SPSBertConfig, check_variant, sps_schedule
from .errors import ModelConfigError
from .families import supported
from .loading import load_reporting
from .modeling_sps_bert import (
    SPSBertForSequenceClassification,
    SPSSequenceClassifierOutput,
    attention_scores,
    sps_layer_forward,
)
from .modeling_sps_family import SPSFamilyForSequenceClassification
from .sps_family_student import (
    SPSFamilyConfig,
    build_family_student,
    is_family_backbone,
    load_family_student,
    set_family_labels,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "VARIANTS",
    "SPSBertConfig",
    "SPSBertForSequenceClassification",
    "SPSFamilyConfig",
    "SPSFamilyForSequenceClassification",
    "SPSSequenceClassifierOutput",
    "attention_scores",
    "build_student",
    "load_student",
    "sps_layer_forward",
    "sps_schedule",
]

ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("sdpa", "eager")

AutoConfig.register(SPSBertConfig.model_type, SPSBertConfig, exist_ok=True)
AutoModelForSequenceClassification.register(SPSBertConfig, SPSBertForSequenceClassification, exist_ok=True)
# save_pretrained copies configuration_sps_bert.py / modeling_sps_bert.py and writes auto_map.
SPSBertConfig.register_for_auto_class("AutoConfig")
SPSBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")


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
    layers: Sequence[int] | None = None,
) -> SPSBertForSequenceClassification | SPSFamilyForSequenceClassification:
    """An SPS student initialised from a *pretrained* backbone (path or hub id).

    A BERT backbone gives :class:`SPSBertForSequenceClassification` (``sps-bert``, below); any other
    family of :data:`.configuration_sps_family.FAMILIES` its own classifier run by weight tying
    (:class:`SPSFamilyForSequenceClassification`, ``sps-family``; :mod:`.sps_family_student`), with the same
    embeddings / layers / new-head rules.

    Embeddings, the bottom ``k`` encoder layers and the pooler are copied from
    ``BertModel.from_pretrained(backbone)`` (fp32); the classifier head is new, drawn from the
    caller's torch RNG. ``num_labels == 1`` means regression. ``layers``: the backbone layers
    (0-based, ``k`` of them, strictly increasing) parameter layers ``0..k-1`` copy instead of the
    bottom ``k`` (a plain student's layer map).

    Raises:
        ModelConfigError: backbone of an unsupported model_type; ``k`` outside ``1..backbone layers``;
            unknown ``variant``; unsupported ``attn_implementation``; ``layers`` not ``k`` increasing
            indices of the backbone.
    """
    base_cfg = _checked_backbone(backbone, k, variant, num_labels, attn_implementation)
    n_layers = base_cfg.num_hidden_layers
    schedule = sps_schedule(k, variant)
    source = _source_layers(layers, k, n_layers, backbone)
    if is_family_backbone(base_cfg):  # every other family: the weight-tied student of its own classifier
        return build_family_student(backbone, source, variant, num_labels, attn_implementation)

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
    student.bert.load_state_dict(_mapped_state(pretrained.state_dict(), source), strict=True)
    del pretrained
    return student


def _checked_backbone(backbone: str | Path, k: int, variant: str, num_labels: int,
                      attn_implementation: str) -> PreTrainedConfig:
    """The backbone's config once the variant, attention, label count, family and ``k`` are checked."""
    check_variant(variant)
    _check_attn(attn_implementation)
    if num_labels < 1:
        raise ModelConfigError(f"num_labels must be >= 1, got {num_labels}")
    base_cfg = AutoConfig.from_pretrained(str(backbone))
    model_type = getattr(base_cfg, "model_type", None)
    if model_type not in supported("backbone"):
        raise ModelConfigError(
            f"student backbone {str(backbone)!r} has model_type {model_type!r}; the SPS student is built "
            f"from a pretrained checkpoint of type {list(supported('backbone'))}"
        )
    n_layers = base_cfg.num_hidden_layers
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_layers:
        raise ModelConfigError(f"k must be an integer in 1..{n_layers} (layers of {str(backbone)!r}), got {k!r}")
    return base_cfg


def _source_layers(layers: Sequence[int] | None, k: int, n_layers: int, backbone: str | Path) -> list[int]:
    """The backbone layers the student's ``k`` layers copy: ``layers`` checked, else the bottom ``k``."""
    source = list(range(k)) if layers is None else [int(i) for i in layers]
    if len(source) != k or any(not 0 <= i < n_layers for i in source) or sorted(set(source)) != source:
        raise ModelConfigError(f"layers {list(layers or [])!r}: expected {k} strictly increasing indices in "
                               f"0..{n_layers - 1} (layers of {str(backbone)!r})")
    return source


def _mapped_state(state: dict[str, torch.Tensor], source: list[int]) -> dict[str, torch.Tensor]:
    """The backbone's weights with encoder layer ``source[j]`` renamed to layer ``j`` (other layers dropped)."""
    wanted = {f"encoder.layer.{i}.": f"encoder.layer.{j}." for j, i in enumerate(source)}
    out = {}
    for name, tensor in state.items():
        prefix = next((p for p in wanted if name.startswith(p)), None)
        if prefix is not None:
            out[wanted[prefix] + name[len(prefix):]] = tensor
        elif not name.startswith("encoder."):
            out[name] = tensor
    return out


def load_student(
    path: str | Path,
    num_labels: int | None = None,
    attn_implementation: str = "sdpa",
    trust_unverified: bool = False,
    require_head: bool = False,
) -> SPSBertForSequenceClassification | SPSFamilyForSequenceClassification:
    """Load a saved SPS student folder (fp32); its schedule and variant come from its config.

    When ``num_labels`` differs from the saved head (e.g. a PTP encoder with a 4-way head loaded for
    a 2-class task), the classifier is re-initialised fresh (caller's torch RNG) and every other
    weight is kept. A dist-peakd export is checked against its file manifest first (one without it
    is refused unless ``trust_unverified``). The model code is this package's, never the folder's
    ``modeling_sps_bert.py``. ``require_head``: the folder's own trained head must be loaded (evaluate,
    predict, export), else ModelConfigError.

    Raises:
        ModelConfigError: the folder is not an ``sps-bert`` or ``sps-family`` checkpoint.
    """
    _check_attn(attn_implementation)
    from .teacher import _verify_if_export

    _verify_if_export(path, trust_unverified=trust_unverified)
    config = AutoConfig.from_pretrained(str(path))
    if isinstance(config, SPSFamilyConfig):
        if num_labels is not None and num_labels != config.num_labels:
            set_family_labels(config, num_labels)
        return load_family_student(path, config, require_head)
    if not isinstance(config, SPSBertConfig):
        raise ModelConfigError(
            f"{str(path)!r} has model_type {getattr(config, 'model_type', None)!r}, not a saved SPS student "
            f"({SPSBertConfig.model_type!r} or {SPSFamilyConfig.model_type!r}); build one from a backbone with "
            "build_student"
        )
    if num_labels is not None and num_labels != config.num_labels:
        if num_labels < 1:
            raise ModelConfigError(f"num_labels must be >= 1, got {num_labels}")
        config.num_labels = num_labels
        config.problem_type = "regression" if num_labels == 1 else None
    return load_reporting(
        lambda **extra: SPSBertForSequenceClassification.from_pretrained(
            str(path), config=config, ignore_mismatched_sizes=True, dtype=torch.float32,
            attn_implementation=attn_implementation, **extra),
        str(path), "student", config.num_labels, require_head=require_head)
