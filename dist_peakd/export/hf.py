"""Hugging Face folders: the compact SPS export (custom code) and the plain, unrolled export.

Compact: ``k`` parameter layers + the custom code (``configuration_sps_bert.py`` /
``modeling_sps_bert.py`` for a BERT student; ``configuration_sps_bert.py``,
``configuration_sps_family.py``, ``modeling_sps_family.py`` for any other family) + ``auto_map``; loads
with ``AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)``. Plain: a
standard folder of the student's family (``bert``, ``roberta``, ``deberta-v2``, ...) of ``E`` effective
layers (second-pass layers are copies with query/key swapped, weight and bias); loads with
``AutoModelForSequenceClassification`` or any runtime of that family, at the same compute and ``E - k``
more layers of weights on disk.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from ..layout import MODEL_CONFIG
from .folder import (
    ExportError,
    fp32_state_dict,
    is_family_sps_config,
    is_sps_config,
    mark_fp32,
    save_tokenizer,
    set_label_names,
    trained_max_length,
    write_card,
    write_folder,
    write_json_files,
)

#: SPS-only config keys that a plain BertConfig must not carry.
_SPS_ONLY_KEYS = ("sps_variant", "sps_schedule", "auto_map", "architectures", "model_type",
                  "transformers_version")


CODE_FILES: tuple[str, ...] = ("configuration_sps_bert.py", "modeling_sps_bert.py")
#: The code files of a non-BERT (``sps-family``) student's compact folder.
FAMILY_CODE_FILES: tuple[str, ...] = ("configuration_sps_bert.py", "configuration_sps_family.py",
                                      "modeling_sps_family.py")


def code_files(config: Any) -> tuple[str, ...]:
    """The custom-code files a compact export of a student with ``config`` carries."""
    return FAMILY_CODE_FILES if is_family_sps_config(config) else CODE_FILES


def _check_code_files(folder: Path, config: Any) -> None:
    missing = [name for name in code_files(config) if not (folder / name).is_file()]
    auto_map = json.loads((folder / MODEL_CONFIG).read_text()).get("auto_map") or {}
    if missing or "AutoModelForSequenceClassification" not in auto_map:
        raise ExportError(f"the SPS export lacks its custom code ({missing or 'auto_map'}); load the model with "
                          "dist_peakd.models (which registers the classes for save_pretrained) before exporting")


def export_compact(
    model: nn.Module,
    out_dir: str | Path,
    tokenizer: Any = None,
    label_names: Sequence[str] | None = None,
    card: str | None = None,
    extra_files: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (SPS student or plain HF classifier) as a self-contained HF folder.

    Writes ``config.json`` (``id2label``/``label2id`` from ``label_names``, else the model's own; for a
    student also ``auto_map`` and the guarded ``num_hidden_layers``, see
    :mod:`..models.configuration_sps_bert`), ``model.safetensors`` (fp32), for a student
    ``configuration_sps_bert.py`` and ``modeling_sps_bert.py``, the tokenizer files (without
    machine-specific keys), ``README.md`` when ``card`` is given, each of ``extra_files``
    (name -> JSON-able object) and ``dist_peakd_files.json``. The model itself is not changed or
    copied (the trainer exports the live module, under ZeRO-3 inside a parameter gather). The
    folder is built beside ``out_dir`` and published over it only when complete.
    """
    config = copy.deepcopy(model.config)
    set_label_names(config, label_names)
    state = fp32_state_dict(model)

    def write(tmp: Path) -> None:
        saved_config = model.config
        model.config = config
        try:
            model.save_pretrained(str(tmp), state_dict=state)
        finally:
            model.config = saved_config
        mark_fp32(tmp)
        if is_sps_config(config):
            _check_code_files(tmp, config)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp, trained_max_length(extra_files))
        write_card(tmp, card)
        write_json_files(tmp, extra_files)

    return write_folder(out_dir, write)


def plain_bert_config(config: Any) -> BertConfig:
    """The ``BertConfig`` of the unrolled student: every BERT field of ``config``, ``E`` layers."""
    data = {k: v for k, v in config.to_dict().items() if k not in _SPS_ONLY_KEYS}
    data["num_hidden_layers"] = len(config.sps_schedule)
    data.pop("num_labels", None)
    plain = BertConfig(**data)
    plain.architectures = ["BertForSequenceClassification"]
    return plain


def _swap_query_key(layer: nn.Module) -> None:
    attn = layer.attention.self
    attn.query, attn.key = attn.key, attn.query


def unroll_student(model: nn.Module) -> nn.Module:
    """The SPS student as a plain classifier of ``E`` effective layers (``BertForSequenceClassification``;
    for an ``sps-family`` student its own family's class, :func:`~..models.sps_family_student.unrolled_family_classifier`).

    Effective layer ``j = (i, swap)`` is a copy of parameter layer ``i``; with ``swap`` its query and
    key ``Linear`` modules (weight and bias) trade places. Embeddings, pooler and head are copied.
    """
    if not is_sps_config(model.config):
        raise ExportError(f"unroll_student needs an SPS student, got {type(model).__name__}")
    if is_family_sps_config(model.config):  # a family student: its own family's classifier of E layers
        from ..models.sps_family_student import unrolled_family_classifier

        return unrolled_family_classifier(model).float().eval()
    plain = BertForSequenceClassification(plain_bert_config(model.config))
    plain.bert.embeddings.load_state_dict(model.bert.embeddings.state_dict())
    plain.bert.pooler.load_state_dict(model.bert.pooler.state_dict())
    plain.classifier.load_state_dict(model.classifier.state_dict())
    layers = []
    for param_layer, swap in model.config.sps_schedule:
        layer = copy.deepcopy(model.bert.encoder.layer[int(param_layer)])
        if swap:
            _swap_query_key(layer)
        layers.append(layer)
    target = plain.bert.encoder.layer
    for j, layer in enumerate(layers):
        target[j].load_state_dict(layer.state_dict())
    return plain.float().eval()


def export_plain(
    model: nn.Module,
    out_dir: str | Path,
    tokenizer: Any = None,
    label_names: Sequence[str] | None = None,
    card: str | None = None,
    extra_files: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a standard HF folder without custom code.

    An SPS student is unrolled (:func:`unroll_student`) into a ``bert`` folder of ``E`` layers; a
    plain classifier (the teacher) is written as itself. Same files as :func:`export_compact`
    minus the code files and ``auto_map``.
    """
    plain = unroll_student(model) if is_sps_config(model.config) else copy.deepcopy(model).float().cpu().eval()
    set_label_names(plain.config, label_names)
    if is_sps_config(model.config) and label_names is None:
        plain.config.id2label = dict(model.config.id2label)
        plain.config.label2id = dict(model.config.label2id)

    def write(tmp: Path) -> None:
        plain.save_pretrained(str(tmp), state_dict=fp32_state_dict(plain))
        mark_fp32(tmp)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp, trained_max_length(extra_files))
        write_card(tmp, card)
        write_json_files(tmp, extra_files)

    return write_folder(out_dir, write)
