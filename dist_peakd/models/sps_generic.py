"""A family-generic SPS student: Shuffled Parameter Sharing as weight tying (docs/method.md).

The student is the family's own ``AutoModelForSequenceClassification`` whose encoder layer list holds
one module per *effective* layer of the schedule ``[(param_layer, swap_qk), ...]``:

- the first ``k`` entries are the ``k`` parameter layers (the bottom ``k`` of the source model);
- every later entry is a *twin* of its parameter layer: a structural copy whose parameters are the
  parameter layer's own ``Parameter`` objects (no new tensors). In a swapped twin each query
  projection's weight and bias are the key projection's, and each key's the query's (the pairs in
  :data:`.families.FAMILIES`); a fused ``[Q; K; V]`` projection (ModernBERT ``Wqkv``) is replaced by
  :class:`SwappedQKLinear`, which reads the shared weight with its Q and K row blocks swapped.

So the family's HF forward and attention kernels run unchanged, ``parameters()`` holds exactly the
``k``-layer model's tensors and the gradients of both passes accumulate in them. ``state_dict()``
lists every effective layer (the unrolled form): :func:`unrolled_classifier` turns it into a plain
``E``-layer model of the family, :func:`compact_state_dict` keeps the ``k`` parameter layers.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from .configuration_sps_bert import sps_schedule
from .errors import ModelConfigError
from .loading import load_reporting
from .modeling_sps_bert import classification_loss
from .modeling_sps_family import SwappedQKLinear, effective_layers, make_twin, swap_qk_rows
from .outputs import ClassifierOutput
from .sps_families import FamilySpec, family_of, layer_list, set_layer_list
from .sps_family_student import unroll_effective


def truncate_classifier(model: PreTrainedModel, k: int, spec: FamilySpec) -> PreTrainedModel:
    """Keep the bottom ``k`` encoder layers of ``model`` (in place); the config says ``k`` layers."""
    layers = layer_list(model, spec)
    set_layer_list(model, spec, nn.ModuleList(list(layers)[:k]))
    model.config.num_hidden_layers = k
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = list(model.config.layer_types[:k])
    return model


class SPSFamilyStudent(nn.Module):
    """An SPS student of any family in :data:`.families.FAMILIES` (see the module docstring).

    Attributes:
        model: the family's classifier; its config describes the ``k`` parameter layers, its encoder
            layer list holds the ``E`` effective layers.
        family: the family's :class:`~.families.FamilySpec`.
        schedule: ``[(param_layer, swap_qk), ...]`` (0-based), one entry per effective layer.
        variant: ``none``, ``share`` or ``shuffle``.
    """

    def __init__(self, model: PreTrainedModel, variant: str) -> None:
        super().__init__()
        self.family = family_of(model.config)
        k = model.config.num_hidden_layers
        if len(layer_list(model, self.family)) != k:
            raise ModelConfigError(f"the classifier holds {len(layer_list(model, self.family))} layers, "
                                   f"its config says {k}")
        self.variant = variant
        self.schedule: list[tuple[int, bool]] = sps_schedule(k, variant)
        self.model = model
        effective = effective_layers(list(layer_list(model, self.family)), self.schedule, self.family, model.config)
        set_layer_list(model, self.family, nn.ModuleList(effective))

    @property
    def config(self) -> PretrainedConfig:
        """The family config of the ``k`` parameter layers."""
        return self.model.config

    @property
    def k(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def num_effective_layers(self) -> int:
        return len(self.schedule)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None,
                **kwargs) -> ClassifierOutput:
        """Logits, the [CLS] vector (position 0) after every effective layer, the loss with ``labels``.

        ``token_type_ids`` is passed on only to families whose forward takes it.
        """
        if token_type_ids is not None and self.family.token_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                         return_dict=True, **kwargs)
        cls_states = tuple(h[:, 0] for h in out.hidden_states[1:])
        loss = classification_loss(out.logits, labels, self.config.num_labels) if labels is not None else None
        return ClassifierOutput(logits=out.logits, cls_states=cls_states, loss=loss)


def _check_k(k: int, n_layers: int, source: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_layers:
        raise ModelConfigError(f"k must be an integer in 1..{n_layers} (layers of {source}), got {k!r}")


def sps_from_classifier(model: PreTrainedModel, k: int, variant: str = "shuffle",
                        source: str = "model") -> SPSFamilyStudent:
    """An SPS student from the bottom ``k`` layers of a family classifier (embeddings and head kept).

    ``model`` itself is left untouched (the student works on a deep copy).

    Raises:
        ModelConfigError: unsupported family, ``k`` out of range, unknown variant.
    """
    spec = family_of(model.config, source)
    sps_schedule(1, variant)  # unknown variant: refused before any copy
    _check_k(k, len(layer_list(model, spec)), source)
    return SPSFamilyStudent(truncate_classifier(copy.deepcopy(model), k, spec), variant)


def build_family_student(backbone: str | Path, k: int, variant: str = "shuffle", num_labels: int = 2,
                         attn_implementation: str | None = None) -> SPSFamilyStudent:
    """An SPS student from a pretrained checkpoint of a supported family (path or hub id), in fp32.

    Embeddings, the bottom ``k`` layers and whatever head parts the checkpoint has are loaded; the
    rest of the head is new (caller's torch RNG). ``num_labels == 1`` means regression.

    Raises:
        ModelConfigError: unsupported family (before any weight is read), ``k`` out of range, unknown
            variant, ``num_labels < 1``.
    """
    if num_labels < 1:
        raise ModelConfigError(f"num_labels must be >= 1, got {num_labels}")
    sps_schedule(1, variant)
    config = AutoConfig.from_pretrained(str(backbone))
    family_of(config, f"student backbone {str(backbone)!r}")
    _check_k(k, config.num_hidden_layers, repr(str(backbone)))
    kwargs: dict = {"num_labels": num_labels, "problem_type": "regression" if num_labels == 1 else None}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = load_reporting(
        lambda **extra: AutoModelForSequenceClassification.from_pretrained(
            str(backbone), dtype=torch.float32, ignore_mismatched_sizes=True, **kwargs, **extra),
        str(backbone), "student", num_labels)
    spec = family_of(model.config)
    return SPSFamilyStudent(truncate_classifier(model, k, spec), variant)


def compact_state_dict(student: SPSFamilyStudent) -> dict[str, Tensor]:
    """The ``k``-layer state (what a compact checkpoint stores): the unrolled twins left out."""
    prefix = student.family.layers + "."
    out = {}
    for name, tensor in student.model.state_dict().items():
        if name.startswith(prefix) and int(name[len(prefix):].split(".", 1)[0]) >= student.k:
            continue
        out[name] = tensor
    return out


def unrolled_classifier(student: SPSFamilyStudent) -> PreTrainedModel:
    """A plain classifier of the student's family with ``E`` layers computing what the student computes
    (:func:`.sps_family_student.unroll_effective` on the student's installed twins)."""
    return unroll_effective(student.model, student.config, student.schedule, student.family).train(student.training)


__all__ = [
    "SPSFamilyStudent",
    "SwappedQKLinear",
    "build_family_student",
    "compact_state_dict",
    "make_twin",
    "sps_from_classifier",
    "swap_qk_rows",
    "truncate_classifier",
    "unrolled_classifier",
]
