"""The encoder families a family-generic SPS student can be built from: one table of per-family facts.

Every supported family is one :class:`FamilySpec` row in :data:`FAMILIES`, keyed by the
``model_type`` of its ``config.json``. A row says where the encoder layers live in the family's
``AutoModelForSequenceClassification`` and where each layer keeps its query/key projections, so
that :mod:`.sps_generic` can build the second (query/key-swapped) pass by weight tying, with no
per-family forward code. Adding a family is adding a row (and a tiny config in
``tests/test_sps_families.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig

from .errors import ModelConfigError


@dataclass(frozen=True)
class FamilySpec:
    """Per-family facts, paths relative to the family's ``*ForSequenceClassification`` / one layer.

    Attributes:
        model_type: ``config.model_type``.
        layers: dotted path of the encoder's layer ``nn.ModuleList`` in the classifier.
        qk_pairs: ``(query, key)`` dotted paths of separate projection ``Linear`` modules inside one
            layer; the second pass ties each query's weight/bias to the key's and back.
        optional_qk_pairs: pairs that a config may not build (DeBERTa-v2's ``pos_query_proj`` /
            ``pos_key_proj`` exist only with ``share_att_key=False``); swapped when both exist.
        fused_qkv: dotted path of a fused ``[Q; K; V]`` ``Linear`` (rows in that order), if any.
        first_layer_norm: dotted path of the input norm that the family leaves out (``nn.Identity``)
            in its bottom layer only because the embeddings end with a norm (ModernBERT
            ``attn_norm``); a re-run of that layer higher up gets a parameter-free LayerNorm there.
        token_type_ids: the classifier's forward takes ``token_type_ids``.
    """

    model_type: str
    layers: str
    qk_pairs: tuple[tuple[str, str], ...] = ()
    optional_qk_pairs: tuple[tuple[str, str], ...] = ()
    fused_qkv: str | None = None
    first_layer_norm: str | None = None
    token_type_ids: bool = True


_BERT_QK = (("attention.self.query", "attention.self.key"),)

#: Every family an SPS student can be built from, by ``model_type``.
FAMILIES: dict[str, FamilySpec] = {
    spec.model_type: spec
    for spec in (
        FamilySpec("bert", "bert.encoder.layer", _BERT_QK),
        FamilySpec("roberta", "roberta.encoder.layer", _BERT_QK),
        FamilySpec("xlm-roberta", "roberta.encoder.layer", _BERT_QK),
        FamilySpec("camembert", "roberta.encoder.layer", _BERT_QK),
        FamilySpec("electra", "electra.encoder.layer", _BERT_QK),
        FamilySpec(
            "deberta-v2", "deberta.encoder.layer",
            (("attention.self.query_proj", "attention.self.key_proj"),),
            optional_qk_pairs=(("attention.self.pos_query_proj", "attention.self.pos_key_proj"),),
        ),
        FamilySpec("mpnet", "mpnet.encoder.layer", (("attention.attn.q", "attention.attn.k"),),
                   token_type_ids=False),
        FamilySpec("distilbert", "distilbert.transformer.layer", (("attention.q_lin", "attention.k_lin"),),
                   token_type_ids=False),
        FamilySpec("modernbert", "model.layers", fused_qkv="attn.Wqkv", first_layer_norm="attn_norm",
                   token_type_ids=False),
    )
}

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(FAMILIES)


def family_of(config: PretrainedConfig, source: str = "model") -> FamilySpec:
    """The :class:`FamilySpec` of ``config``.

    Raises:
        ModelConfigError: the ``model_type`` has no row, naming ``source``, the type and the supported ones.
    """
    model_type = getattr(config, "model_type", None)
    spec = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if spec is None:
        raise ModelConfigError(
            f"{source} has model_type {model_type!r}; an SPS student can be built from one of "
            f"{list(SUPPORTED_FAMILIES)}"
        )
    return spec


def layer_list(model: nn.Module, spec: FamilySpec) -> nn.ModuleList:
    """The encoder's layer ``ModuleList`` of a family classifier."""
    layers = model.get_submodule(spec.layers)
    if not isinstance(layers, nn.ModuleList):
        raise ModelConfigError(f"{spec.model_type}: {spec.layers!r} is a {type(layers).__name__}, not a ModuleList")
    return layers


def set_layer_list(model: nn.Module, spec: FamilySpec, layers: nn.ModuleList) -> None:
    """Replace the encoder's layer ``ModuleList``."""
    parent, _, name = spec.layers.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, layers)


def qk_pairs_present(layer: nn.Module, spec: FamilySpec) -> list[tuple[str, str]]:
    """The ``(query, key)`` module paths of ``layer`` to swap: the required pairs, plus each optional
    pair whose two modules both exist."""
    pairs = list(spec.qk_pairs)
    for q_path, k_path in spec.optional_qk_pairs:
        if _has_submodule(layer, q_path) and _has_submodule(layer, k_path):
            pairs.append((q_path, k_path))
    return pairs


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


__all__ = ["FAMILIES", "SUPPORTED_FAMILIES", "FamilySpec", "family_of", "layer_list", "qk_pairs_present",
           "set_layer_list"]
