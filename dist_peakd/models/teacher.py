"""The teacher: any BERT-family encoder with a sequence-classification head (plain Hugging Face)."""

from __future__ import annotations

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
    """Load the checkpoint's config and make sure its ``model_type`` is one of :data:`BERT_FAMILY`.

    Raises:
        ModelConfigError: naming the path, the ``model_type`` found and the accepted types.
    """
    config = AutoConfig.from_pretrained(str(path_or_id))
    model_type = getattr(config, "model_type", None)
    if model_type not in supported("teacher"):
        raise ModelConfigError(
            f"checkpoint {str(path_or_id)!r} has model_type {model_type!r}; the teacher must be a "
            f"BERT-family encoder, one of {list(supported('teacher'))}"
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
    check_bert_family(path_or_id)
    kwargs: dict = {"num_labels": num_labels}
    if num_labels == 1:
        kwargs["problem_type"] = "regression"
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
    kwargs: dict = {"input_ids": input_ids, "attention_mask": attention_mask, "output_hidden_states": True}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    out = model(**kwargs, return_dict=True)
    cls_states = tuple(h[:, 0] for h in out.hidden_states[1:])
    return ClassifierOutput(logits=out.logits, cls_states=cls_states)


def _verify_if_export(path_or_id: str | Path, required: bool | None = None, trust_unverified: bool = False) -> None:
    """A dist-peakd export folder is checked against its file manifest (names a corrupted file)."""
    if Path(path_or_id).is_dir():
        from ..artifacts import verify_export

        verify_export(path_or_id, required=required, trust_unverified=trust_unverified)
