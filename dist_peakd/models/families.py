"""Which checkpoints each role accepts: the one place that knows the supported model families.

A run has three model roles. The **backbone** (``--backbone``) is what the teacher is fine-tuned from
*and* what the SPS student copies its embeddings and bottom ``k`` layers from, so it must be a family
the student can be built from (:data:`STUDENT_BACKBONE_TYPES`). A **teacher** given with
``--teacher_dir`` may be any family the teacher code runs (:data:`TEACHER_TYPES`), as long as it
tokenizes like the backbone (the cache holds its outputs on its own token ids). The **student** is
``sps-bert`` (from a BERT backbone) or ``sps-family`` (the weight-tied student of any other family). Adding a family means extending these tuples (and the code that builds or runs it).

Everything here reads files only (``config.json``, the safetensors header): no model is built.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ..layout import MODEL_CONFIG

#: model_type values a teacher may have (loaded, fine-tuned and run by ``AutoModelForSequenceClassification``;
#: each gives ``num_hidden_layers + 1`` hidden states with [CLS] at position 0, what the teacher cache stores;
#: tests/models/test_teacher_families.py fine-tunes and caches a tiny random model of each).
TEACHER_TYPES: tuple[str, ...] = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "deberta-v2", "modernbert",
                                  "mpnet", "distilbert")
#: model_type values the SPS student can be built from: BERT (``sps-bert``, its own layer code) and every
#: family of ``configuration_sps_family.FAMILIES`` (``sps-family``, weight tying; kept equal by a test).
STUDENT_BACKBONE_TYPES: tuple[str, ...] = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "deberta-v2",
                                           "mpnet", "distilbert", "modernbert")
#: model_type of a saved SPS student (PTP encoder, distilled student) from a BERT backbone.
STUDENT_TYPE = "sps-bert"
#: model_type of a saved SPS student of any other family.
FAMILY_STUDENT_TYPE = "sps-family"
#: Prefix of the task head's weights in every supported family's sequence classifier.
HEAD_PREFIX = "classifier."
#: Weight files dist-peakd reads (safetensors: tensors only, nothing is executed when loading them).
SAFE_WEIGHTS: tuple[str, ...] = ("model.safetensors", "model.safetensors.index.json")
#: Pickle weight files: never loaded (unpickling can run arbitrary code).
PICKLE_WEIGHTS: tuple[str, ...] = ("pytorch_model.bin", "pytorch_model.bin.index.json")
#: What to use instead of an unsupported backbone.
BACKBONE_HINT = ("use a checkpoint of one of those families as --backbone (e.g. minilm, the default, "
                 "bert-base-uncased, roberta-base or microsoft/deberta-v3-base)")


def supported(role: str) -> tuple[str, ...]:
    """The model types a role accepts: ``backbone``, ``teacher`` or ``student``."""
    return {"backbone": STUDENT_BACKBONE_TYPES, "teacher": TEACHER_TYPES, "student": (STUDENT_TYPE, FAMILY_STUDENT_TYPE)}[role]


def read_model_type(folder: str | Path) -> str | None:
    """``model_type`` of ``folder/config.json`` (None when unreadable or absent)."""
    try:
        value = json.loads((Path(folder) / MODEL_CONFIG).read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def read_config(folder: str | Path) -> dict:
    try:
        data = json.loads((Path(folder) / MODEL_CONFIG).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pickle_only(folder: str | Path) -> Path | None:
    """The pickle weight file of a folder that has no safetensors weights (None otherwise)."""
    folder = Path(folder)
    if any((folder / name).is_file() for name in SAFE_WEIGHTS) or any(folder.glob("model-*.safetensors")):
        return None
    found = [folder / n for n in PICKLE_WEIGHTS if (folder / n).is_file()] + sorted(folder.glob("pytorch_model-*.bin"))
    return found[0] if found else None


def pickle_refusal(option: str, path: Path) -> str:
    """The one-line refusal of a folder whose only weights are a pickle file."""
    return (f"option {option}: {path.parent} holds its weights only as the pickle file {path}; dist-peakd reads model "
            f"weights from safetensors ({SAFE_WEIGHTS[0]}) only, since unpickling a file can run arbitrary code; "
            "convert it once where you trust it (AutoModel.from_pretrained(folder).save_pretrained(new_folder) "
            "writes model.safetensors) or use the checkpoint's safetensors release")


def weight_names(folder: str | Path) -> set[str] | None:
    """Tensor names of a folder's safetensors weights (header only; None when there are none to read)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            return set(json.loads(index.read_text()).get("weight_map", {}))
        path = folder / "model.safetensors"
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None
    return {name for name in header if name != "__metadata__"}


def has_trained_head(folder: str | Path) -> bool | None:
    """Whether the folder's weights hold a task head (``classifier.*``); None when they cannot be read."""
    names = weight_names(folder)
    if names is None:
        return None
    return any(name.startswith(HEAD_PREFIX) or f".{HEAD_PREFIX}" in f".{name}" for name in names)


def family_refusal(role: str, option: str, source: str, model_type: str | None) -> str | None:
    """None when ``model_type`` fits ``role``, else the one-line refusal (checkpoint, type, what is
    supported, what to do)."""
    if model_type in supported(role):
        return None
    head = f"option {option}: {source} has model_type {model_type!r}"
    if role == "backbone":
        teacher_note = (f"; a teacher of type {list(TEACHER_TYPES)} can be given with --teacher_dir if it "
                        "tokenizes like the backbone" if model_type in TEACHER_TYPES else "")
        return (f"{head}; the SPS student is built from the backbone's bottom layers, which dist-peakd supports for "
                f"{list(STUDENT_BACKBONE_TYPES)} checkpoints only{teacher_note}; {BACKBONE_HINT}")
    if role == "teacher":
        if model_type in (STUDENT_TYPE, FAMILY_STUDENT_TYPE):
            return (f"{head}: an SPS student (PTP encoder or distilled student), not a teacher; give the fine-tuned "
                    "teacher folder (<output_dir>/<task>/teacher/best) or leave --teacher_dir out")
        return (f"{head}; a teacher must be one of {list(TEACHER_TYPES)}; fine-tune one from a supported "
                "checkpoint (dist-peakd finetune-teacher)")
    return (f"{head}, not a PTP encoder ({STUDENT_TYPE!r} or {FAMILY_STUDENT_TYPE!r}, written by `dist-peakd ptp` to "
            "<output_dir>/<task>/ptp-k<k>-<variant>/best); leave --ptp_dir out to use this run's, or pass "
            "--use_ptp=False to start from the backbone")
