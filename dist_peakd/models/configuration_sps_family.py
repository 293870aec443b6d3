"""Configuration of the SPS student of any supported encoder family, and the per-family table.

Self-contained (imports only transformers, huggingface_hub and ``configuration_sps_bert`` next to it):
dist-peakd copies this file, ``configuration_sps_bert.py`` and ``modeling_sps_family.py`` verbatim
into every exported folder of a non-BERT SPS student, so the folder loads with
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`` in a process
without dist-peakd.

Every supported family is one :class:`FamilySpec` row in :data:`FAMILIES`, keyed by the ``model_type``
of its ``config.json``: where the encoder layers live in the family's
``AutoModelForSequenceClassification`` and where each layer keeps its query/key projections, so that
the second (query/key-swapped) pass is built by weight tying, with no per-family forward code.

:class:`SPSFamilyConfig` (``model_type`` ``sps-family``) holds the family's own config of the ``k``
parameter layers (``base_config``, a dict with its ``model_type``), the variant and the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PretrainedConfig

from .configuration_sps_bert import ModelConfigError, check_variant, normalise_schedule, sps_schedule


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
        onnx_optimizer: the ``model_type`` onnxruntime's transformer optimizer fuses this family's graph
            as (None: the export keeps the plain graph).
    """

    model_type: str
    layers: str
    qk_pairs: tuple[tuple[str, str], ...] = ()
    optional_qk_pairs: tuple[tuple[str, str], ...] = ()
    fused_qkv: str | None = None
    first_layer_norm: str | None = None
    token_type_ids: bool = True
    onnx_optimizer: str | None = None


_BERT_QK = (("attention.self.query", "attention.self.key"),)

#: Every family an SPS student can be built from, by ``model_type``.
FAMILIES: dict[str, FamilySpec] = {
    spec.model_type: spec
    for spec in (
        FamilySpec("bert", "bert.encoder.layer", _BERT_QK, onnx_optimizer="bert"),
        FamilySpec("roberta", "roberta.encoder.layer", _BERT_QK, onnx_optimizer="bert"),
        FamilySpec("xlm-roberta", "roberta.encoder.layer", _BERT_QK, onnx_optimizer="bert"),
        FamilySpec("camembert", "roberta.encoder.layer", _BERT_QK, onnx_optimizer="bert"),
        FamilySpec("electra", "electra.encoder.layer", _BERT_QK, onnx_optimizer="bert"),
        FamilySpec(
            "deberta-v2", "deberta.encoder.layer",
            (("attention.self.query_proj", "attention.self.key_proj"),),
            optional_qk_pairs=(("attention.self.pos_query_proj", "attention.self.pos_key_proj"),),
        ),
        FamilySpec("mpnet", "mpnet.encoder.layer", (("attention.attn.q", "attention.attn.k"),),
                   token_type_ids=False),
        FamilySpec("distilbert", "distilbert.transformer.layer", (("attention.q_lin", "attention.k_lin"),),
                   token_type_ids=False, onnx_optimizer="bert"),
        FamilySpec("modernbert", "model.layers", fused_qkv="attn.Wqkv", first_layer_norm="attn_norm",
                   token_type_ids=False),
    )
}

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(FAMILIES)


def family_of(config: Any, source: str = "model") -> FamilySpec:
    """The :class:`FamilySpec` of ``config`` (a config object or a ``model_type`` string).

    Raises:
        ModelConfigError: the ``model_type`` has no row, naming ``source``, the type and the supported ones.
    """
    model_type = config if isinstance(config, str) else getattr(config, "model_type", None)
    spec = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if spec is None:
        raise ModelConfigError(
            f"{source} has model_type {model_type!r}; an SPS student can be built from one of "
            f"{list(SUPPORTED_FAMILIES)}"
        )
    return spec


#: The family config fields mirrored at the top of :class:`SPSFamilyConfig` (what size/FLOP counts and
#: exporters read); read through the family config's own attribute map (DistilBERT ``dim`` ...).
_MIRRORED = ("hidden_size", "num_attention_heads", "vocab_size")


@strict(accept_kwargs=True)
class SPSFamilyConfig(PretrainedConfig):
    """Config of an SPS student of a family in :data:`FAMILIES`.

    Fields: ``base_config`` (the family config of the ``k`` parameter layers, as a dict with its
    ``model_type``), ``sps_variant``, ``sps_schedule`` (``[[param_layer, swap_qk], ...]``, 0-based;
    derived from ``k`` and the variant when not given). ``num_hidden_layers`` (``k``), ``hidden_size``,
    ``num_attention_heads``, ``intermediate_size``, ``vocab_size`` and ``base_model_type`` are copied
    from ``base_config`` on construction. Labels (``id2label``, ``problem_type``) live here.
    """

    model_type = "sps-family"

    base_config: dict | None = None
    base_model_type: str | None = None
    num_hidden_layers: int = 1
    hidden_size: int = 0
    num_attention_heads: int = 0
    intermediate_size: int = 0
    vocab_size: int = 0
    sps_variant: str = "shuffle"
    sps_schedule: list | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if not isinstance(self.base_config, dict) or "model_type" not in self.base_config:
            raise ModelConfigError("sps-family config: base_config must be the family config as a dict with its "
                                   f"model_type, got {type(self.base_config).__name__}")
        base = self.family_config_only()
        self.base_model_type = family_of(base, "sps-family base_config").model_type
        self.num_hidden_layers = int(base.num_hidden_layers)
        for name in _MIRRORED:
            setattr(self, name, int(getattr(base, name)))
        self.intermediate_size = int(getattr(base, "intermediate_size", None) or base.hidden_dim)
        check_variant(self.sps_variant)
        if self.sps_schedule is None:
            self.sps_schedule = [[i, s] for i, s in sps_schedule(self.num_hidden_layers, self.sps_variant)]
        else:
            self.sps_schedule = normalise_schedule(self.sps_schedule, self.num_hidden_layers)
        super().__post_init__(**kwargs)

    def family_config_only(self) -> PretrainedConfig:
        """The family's config object of the ``k`` parameter layers, without this config's labels."""
        data = dict(self.base_config)
        return AutoConfig.for_model(data.pop("model_type"), **data)

    def family_config(self) -> PretrainedConfig:
        """The family's config object of the ``k`` parameter layers, with this config's labels."""
        base = self.family_config_only()
        base.id2label, base.label2id = dict(self.id2label), dict(self.label2id)
        base.problem_type = self.problem_type
        return base

    @property
    def schedule(self) -> list[tuple[int, bool]]:
        """The schedule as ``(param_layer, swap_qk)`` tuples."""
        return [(int(i), bool(s)) for i, s in self.sps_schedule]

    @property
    def num_effective_layers(self) -> int:
        return len(self.sps_schedule)


def family_config_dict(config: PretrainedConfig) -> dict[str, Any]:
    """A family config as the ``base_config`` dict (labels left out: they live in :class:`SPSFamilyConfig`)."""
    data = config.to_dict()
    for key in ("id2label", "label2id", "problem_type", "architectures", "transformers_version", "auto_map",
                "_name_or_path", "dtype", "torch_dtype", "num_labels"):
        data.pop(key, None)
    data["model_type"] = config.model_type
    return data


__all__ = ["FAMILIES", "SUPPORTED_FAMILIES", "FamilySpec", "SPSFamilyConfig", "family_config_dict", "family_of"]
