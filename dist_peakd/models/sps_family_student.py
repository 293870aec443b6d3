"""Build, load and unroll the product's SPS student of a non-BERT family (:mod:`.modeling_sps_family`).

A BERT backbone keeps its own student (``sps-bert``, :mod:`.sps`); every other family in
:data:`.configuration_sps_family.FAMILIES` gets :class:`SPSFamilyForSequenceClassification`
(``sps-family``): the family's own classifier of the ``k`` chosen backbone layers, run twice by
weight tying. :func:`sps.build_student` and :func:`sps.load_student` dispatch here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from .configuration_sps_family import FAMILIES, FamilySpec, SPSFamilyConfig, family_config_dict, family_of
from .errors import ModelConfigError
from .loading import load_reporting
from .modeling_sps_family import SPSFamilyForSequenceClassification, layer_list, set_layer_list

AutoConfig.register(SPSFamilyConfig.model_type, SPSFamilyConfig, exist_ok=True)
AutoModelForSequenceClassification.register(SPSFamilyConfig, SPSFamilyForSequenceClassification, exist_ok=True)
# save_pretrained copies configuration_sps_family.py (+ configuration_sps_bert.py, its relative import) and
# modeling_sps_family.py, and writes auto_map.
SPSFamilyConfig.register_for_auto_class("AutoConfig")
SPSFamilyForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

#: The code files a compact export of a family student carries.
FAMILY_CODE_FILES: tuple[str, ...] = ("configuration_sps_bert.py", "configuration_sps_family.py",
                                      "modeling_sps_family.py")


def is_family_backbone(config: PretrainedConfig) -> bool:
    """A non-BERT family the generic student is built for."""
    return getattr(config, "model_type", None) in FAMILIES and config.model_type != "bert"


def _select_layers(model: PreTrainedModel, source: Sequence[int]) -> PreTrainedModel:
    """Keep the encoder layers ``source`` of ``model`` (in place, in that order); the config follows."""
    spec = family_of(model.config)
    layers = layer_list(model, spec)
    if spec.first_layer_norm and source[0] != 0:
        raise ModelConfigError(
            f"layers {list(source)}: a {spec.model_type} student's bottom layer must be the backbone's layer 0 (the "
            f"family's bottom layer has no {spec.first_layer_norm.rsplit('.', 1)[-1]}, which layer {source[0]} "
            "needs); start the layer map at 0")
    set_layer_list(model, spec, torch.nn.ModuleList([layers[i] for i in source]))
    model.config.num_hidden_layers = len(source)
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = [model.config.layer_types[i] for i in source]
    return model


def student_from_classifier(model: PreTrainedModel, source: Sequence[int], variant: str) -> \
        SPSFamilyForSequenceClassification:
    """The SPS student whose parameter layers are ``model``'s layers ``source`` (``model`` is left as is).

    Raises:
        ModelConfigError: an unsupported family or unknown variant.
    """
    picked = _select_layers(copy.deepcopy(model), list(source))
    config = SPSFamilyConfig(base_config=family_config_dict(picked.config), sps_variant=variant,
                             id2label=dict(picked.config.id2label), label2id=dict(picked.config.label2id),
                             problem_type=picked.config.problem_type)
    student = SPSFamilyForSequenceClassification(config)
    student.model.load_state_dict(picked.state_dict(), strict=True)
    return student.float()


def build_family_student(backbone: str | Path, source: Sequence[int], variant: str, num_labels: int,
                         attn_implementation: str = "sdpa") -> SPSFamilyForSequenceClassification:
    """The SPS student of a family checkpoint: its embeddings, layers ``source`` and whatever head parts it
    has (the rest new, caller's torch RNG), fp32. Validation of ``k``/``source`` is the caller's.

    Raises:
        ModelConfigError: ModernBERT layers ``source`` not starting at 0 (:func:`_select_layers`).
    """
    kwargs: dict = {"num_labels": num_labels, "problem_type": "regression" if num_labels == 1 else None}
    if attn_implementation != "sdpa":  # sdpa: the family's default (sdpa where it has it; DeBERTa-v2 has not)
        kwargs["attn_implementation"] = attn_implementation
    model = load_reporting(
        lambda **extra: AutoModelForSequenceClassification.from_pretrained(
            str(backbone), dtype=torch.float32, ignore_mismatched_sizes=True, **kwargs, **extra),
        str(backbone), "student", num_labels)
    return student_from_classifier(model, source, variant)


def load_family_student(path: str | Path, config: SPSFamilyConfig, require_head: bool) -> \
        SPSFamilyForSequenceClassification:
    """A saved ``sps-family`` folder in fp32 with this package's model code (``config`` may carry a new
    label count: the head is then re-initialised)."""
    return load_reporting(
        lambda **extra: SPSFamilyForSequenceClassification.from_pretrained(
            str(path), config=config, ignore_mismatched_sizes=True, dtype=torch.float32, **extra),
        str(path), "student", config.num_labels, require_head=require_head)


def set_family_labels(config: SPSFamilyConfig, num_labels: int) -> None:
    """Give a loaded config ``num_labels`` outputs (PTP encoder -> task head)."""
    if num_labels < 1:
        raise ModelConfigError(f"num_labels must be >= 1, got {num_labels}")
    config.num_labels = num_labels
    config.problem_type = "regression" if num_labels == 1 else None


def unrolled_family_classifier(student: SPSFamilyForSequenceClassification) -> PreTrainedModel:
    """A plain classifier of the student's family with ``E`` layers computing what the student computes
    (a standard model: ``save_pretrained`` gives a folder loading with no custom code)."""
    with student.unrolled() as model:
        plain = unroll_effective(model, student.config.family_config(), student.schedule, student.family)
    return plain.eval()


def unroll_effective(model: PreTrainedModel, config: PretrainedConfig, schedule: list[tuple[int, bool]],
                     spec: FamilySpec) -> PreTrainedModel:
    """The family classifier of ``E`` layers holding the weights of ``model``'s installed effective layers.

    ``model``: a family classifier whose layer list holds the ``E`` effective layers of ``schedule``
    (twins); ``config``: its config of the ``k`` parameter layers. Layer ``e`` gets a copy of effective
    layer ``e``'s weights (query/key swapped in a swapped twin); a ``layer_types`` list (ModernBERT)
    follows the schedule; a twin's parameter-free input norm becomes the family's norm with unit weight
    and zero bias.
    """
    config = copy.deepcopy(config)
    config.num_hidden_layers = len(schedule)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i, _ in schedule]
    plain = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    state = {n: t.detach().float().cpu() for n, t in model.state_dict().items()}
    missing, unexpected = plain.load_state_dict(state, strict=False)
    left = set(missing)
    for e, twin in enumerate(layer_list(model, spec)):
        norm = twin.get_submodule(spec.first_layer_norm) if spec.first_layer_norm else None
        if isinstance(norm, torch.nn.LayerNorm) and not norm.elementwise_affine:
            target = layer_list(plain, spec)[e].get_submodule(spec.first_layer_norm)
            with torch.no_grad():
                for name, value in (("weight", 1.0), ("bias", 0.0)):
                    if getattr(target, name, None) is not None:
                        getattr(target, name).fill_(value)
                        left.discard(f"{spec.layers}.{e}.{spec.first_layer_norm}.{name}")
    if left or unexpected:
        raise ModelConfigError(f"{spec.model_type}: the unrolled model does not match the student's state "
                               f"(missing {sorted(left)[:4]}, unexpected {unexpected[:4]})")
    plain.config.architectures = [type(plain).__name__]
    return plain


__all__ = ["FAMILY_CODE_FILES", "SPSFamilyConfig", "build_family_student", "is_family_backbone", "load_family_student",
           "set_family_labels", "student_from_classifier", "unroll_effective", "unrolled_family_classifier"]
