"""The teacher: any supported encoder family with a sequence-classification head (plain Hugging Face).

The families (:data:`.families.TEACHER_TYPES`) differ in what their forward takes and how attention runs;
this module hides both: :func:`uses_token_types` (BERT/ELECTRA-style segment ids only where the model has
a segment embedding of more than one type), :func:`load_teacher` (SDPA attention where the family has it,
the family's eager attention otherwise: DeBERTa-v2/v3 and MPNet).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from .errors import ModelConfigError
from .families import TEACHER_TYPES, supported
from .loading import load_reporting
from .outputs import ClassifierOutput

#: The model types a teacher may have (:data:`.families.TEACHER_TYPES`, the one list to extend).
BERT_FAMILY: tuple[str, ...] = TEACHER_TYPES


def check_bert_family(path_or_id: str | Path) -> PretrainedConfig:
    """Load the checkpoint's config and make sure its ``model_type`` is a teacher family (:data:`BERT_FAMILY`,
    the historical name of :data:`.families.TEACHER_TYPES`).

    Raises:
        ModelConfigError: naming the path, the ``model_type`` found and the accepted types.
    """
    config = AutoConfig.from_pretrained(str(path_or_id))
    model_type = getattr(config, "model_type", None)
    if model_type not in supported("teacher"):
        raise ModelConfigError(
            f"checkpoint {str(path_or_id)!r} has model_type {model_type!r}; the teacher must be an encoder "
            f"classifier of one of the supported families {list(supported('teacher'))}"
        )
    return config


def load_teacher(
    path_or_id: str | Path,
    num_labels: int,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    require_manifest: bool | None = None,
    trust_unverified: bool = False,
    require_head: bool = False,
) -> PreTrainedModel:
    """Load a teacher with ``AutoModelForSequenceClassification``.

    Works on a pretrained backbone (the head is new, drawn from the caller's torch seed) and on a
    fine-tuned teacher folder (its head is kept when it has ``num_labels`` outputs, re-initialised
    otherwise). ``num_labels == 1`` means regression (``problem_type="regression"``). Weights are
    loaded in ``dtype`` (fp32 by default; mixed precision is the trainer's business). A folder is
    checked against its file manifest first: required for a dist-peakd export (or when
    ``require_manifest``), unless ``trust_unverified``. ``require_head``: the folder must hold a trained
    head with ``num_labels`` outputs (a teacher to run, not a backbone to fine-tune), else ModelConfigError.
    """
    if num_labels < 1:
        raise ModelConfigError(f"num_labels must be >= 1, got {num_labels}")
    _verify_if_export(path_or_id, require_manifest, trust_unverified)
    config = check_bert_family(path_or_id)
    kwargs: dict = {"num_labels": num_labels}
    if num_labels == 1:
        kwargs["problem_type"] = "regression"
    attn_implementation = attention_for(config, attn_implementation)
    model = load_reporting(
        lambda **extra: AutoModelForSequenceClassification.from_pretrained(
            str(path_or_id), attn_implementation=attn_implementation, ignore_mismatched_sizes=True, dtype=dtype,
            **kwargs, **extra),
        str(path_or_id), "teacher", num_labels, require_head=require_head)
    if num_labels > 1 and model.config.problem_type == "regression":
        model.config.problem_type = None  # a saved regression head re-used for classification
    return model


def teacher_forward(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor | None = None,
) -> ClassifierOutput:
    """Run a Hugging Face classifier and return its logits and the [CLS] vector after every layer."""
    kwargs = model_inputs(model, input_ids, attention_mask, token_type_ids)
    out = model(**kwargs, output_hidden_states=True, return_dict=True)
    cls_states = tuple(h[:, 0] for h in out.hidden_states[1:])
    return ClassifierOutput(logits=out.logits, cls_states=cls_states)


def attention_for(config: PretrainedConfig, wanted: str) -> str:
    """``wanted`` (``sdpa`` by default) when the family's classifier supports it, else ``eager`` (DeBERTa-v2
    and MPNet have no SDPA path in transformers; asking for it is an error there)."""
    if wanted != "sdpa":
        return wanted
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    try:
        cls = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
    except KeyError:
        return wanted  # from_pretrained names the problem itself
    return wanted if getattr(cls, "_supports_sdpa", False) else "eager"


def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside an engine wrapper (DeepSpeed's ``.module``)."""
    while not hasattr(model, "config") or not isinstance(getattr(model, "config", None), PretrainedConfig):
        inner = getattr(model, "module", None)
        if inner is None or inner is model:
            break
        model = inner
    return model


def uses_token_types(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes ``token_type_ids`` *and* has more than one segment type to embed:
    BERT and ELECTRA (2). RoBERTa/XLM-R/CamemBERT checkpoints have ``type_vocab_size`` 1 (ids other than 0
    would index past the table), DeBERTa-v2/v3 0 (no segment embedding); DistilBERT, ModernBERT and MPNet
    take no segment ids at all. Where False, the ids are left out (the family's own default: zeros)."""
    hf = _hf_model(model)
    if "token_type_ids" not in inspect.signature(hf.forward).parameters:
        return False
    return int(getattr(hf.config, "type_vocab_size", 0) or 0) > 1


def model_inputs(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor,
                 token_type_ids: Tensor | None = None) -> dict[str, Tensor]:
    """The keyword inputs of a classifier's forward: ``token_type_ids`` only where :func:`uses_token_types`."""
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None and uses_token_types(model):
        kwargs["token_type_ids"] = token_type_ids
    return kwargs


def _verify_if_export(path_or_id: str | Path, required: bool | None = None, trust_unverified: bool = False) -> None:
    """A dist-peakd export folder is checked against its file manifest (names a corrupted file)."""
    if Path(path_or_id).is_dir():
        from ..integrity import verify_export

        verify_export(path_or_id, required=required, trust_unverified=trust_unverified)
