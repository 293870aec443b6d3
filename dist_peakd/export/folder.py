"""What every export format shares: loading a model folder, label names, tokenizer files, atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts import apply_umask, is_disk_full, publish_dir, write_error
from ..errors import EXIT_BAD_INPUT, ArtifactWriteError, ModelConfigError, exit_code_of
from ..integrity import EXPORT_MANIFEST, verify_export, write_export_manifest
from ..layout import EXPORT_RECORD, MODEL_CONFIG

#: Keys transformers writes into tokenizer_config.json from the *loading* call (offline mode, a local
#: path); they describe the machine that saved the folder, not the tokenizer, and are dropped.
MACHINE_TOKENIZER_KEYS: tuple[str, ...] = ("local_files_only", "is_local")

#: The record a stage writes into each model folder; its ``card`` entry holds the model card's inputs.
RECORD_FILE = EXPORT_RECORD


class ExportError(ValueError):
    """A model folder cannot be exported as asked (wrong kind of folder, bad labels, failed check): exit 4."""

    exit_code = EXIT_BAD_INPUT


#: model_type of the SPS students: BERT's own and the weight-tied student of any other family.
SPS_MODEL_TYPES: tuple[str, ...] = ("sps-bert", "sps-family")


def is_sps_config(config: Any) -> bool:
    """True for an SPS student's config, whichever copy of the class made it (package or remote code)."""
    return getattr(config, "model_type", None) in SPS_MODEL_TYPES and getattr(config, "sps_schedule", None) is not None


def is_family_sps_config(config: Any) -> bool:
    """True for the config of a non-BERT (``sps-family``) SPS student."""
    return is_sps_config(config) and config.model_type == "sps-family"


def load_model_folder(model_dir: str | Path, trust_unverified: bool = False) -> tuple[nn.Module, Any]:
    """Load a folder a stage wrote (teacher or SPS student, ``best/`` or ``final/``) in fp32, eval mode.

    Returns ``(model, tokenizer)``; the tokenizer is None when the folder has none.

    Raises:
        ExportError: the folder has no ``config.json``, is not a sequence classifier, or has no trained
            classification head (a pretrained backbone: its head would be random).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from ..models import load_student  # registers sps-bert and sps-family with the Auto classes
    from ..models.loading import load_reporting

    model_dir = Path(model_dir)
    if not (model_dir / MODEL_CONFIG).is_file():
        raise ExportError(f"model_dir {str(model_dir)!r}: no config.json (expected a folder a stage wrote, "
                          "e.g. <stage>/final or <stage>/best)")
    verify_export(model_dir, trust_unverified=trust_unverified)
    config = AutoConfig.from_pretrained(str(model_dir))
    try:
        if is_sps_config(config):
            model = load_student(model_dir, trust_unverified=trust_unverified, require_head=True)
        else:
            model = load_reporting(
                lambda **extra: AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32,
                                                                                   **extra),
                str(model_dir), "model_dir", config.num_labels, require_head=True)
    except ModelConfigError as e:  # no trained head: refused, never run with a random one
        raise ExportError(str(e)) from None
    except ValueError as e:
        raise ExportError(f"model_dir {str(model_dir)!r} is not a sequence classifier ({e})") from e
    tokenizer = None
    if any((model_dir / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return model.eval(), tokenizer


def set_label_names(config: Any, label_names: Sequence[str] | None) -> None:
    """Set ``id2label`` / ``label2id`` from the task's label names (index i = class i).

    ``None`` leaves the config as it is. Raises ExportError when the count differs from ``num_labels``
    or names repeat.
    """
    if label_names is None:
        return
    names = [str(n) for n in label_names]
    if len(names) != config.num_labels:
        raise ExportError(f"label_names {names} has {len(names)} names, the model has {config.num_labels} outputs")
    if len(set(names)) != len(names):
        raise ExportError(f"label_names {names} repeat a name")
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}


def save_tokenizer(tokenizer: Any, folder: Path, max_length: int | None = None) -> None:
    """Save the tokenizer files, without the machine-specific keys of :data:`MACHINE_TOKENIZER_KEYS`,
    with ``model_max_length`` = ``max_length`` (the length the model was trained at) when given."""
    tokenizer.save_pretrained(str(folder))
    clean_tokenizer_config(folder, max_length)


def clean_tokenizer_config(folder: str | Path, max_length: int | None = None) -> None:
    """Drop :data:`MACHINE_TOKENIZER_KEYS` from ``folder/tokenizer_config.json`` (when present) and set
    its ``model_max_length`` to ``max_length`` (when given): ``tok(..., truncation=True)`` and
    ``pipeline(...)(..., truncation=True)`` then cut inputs where training and ``predict`` cut them
    (the backbone's tokenizer says 512, or 128 for MiniLM)."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    changed = any(k in data for k in MACHINE_TOKENIZER_KEYS)
    for key in MACHINE_TOKENIZER_KEYS:
        data.pop(key, None)
    if max_length is not None and data.get("model_max_length") != int(max_length):
        data["model_max_length"], changed = int(max_length), True
    if changed:
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def trained_max_length(extra_files: Mapping[str, Any] | None) -> int | None:
    """The ``max_length`` a folder's record (``extra_files[RECORD_FILE]``) says the model was trained at."""
    record = (extra_files or {}).get(RECORD_FILE)
    value = record.get("max_length") if isinstance(record, Mapping) else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def fp32_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}


def write_folder(out_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """Build an export folder beside ``out_dir`` (``.tmp-<name>``), add ``dist_peakd_files.json``, publish.

    ``write(tmp)`` fills the folder; every file then gets the umask's mode (safetensors writes 0600).
    The file manifest (size + sha256 of every file) is written last;
    the finished folder then replaces ``out_dir`` without a gap. On any error the temporary folder (and
    any parent folder made for it) is removed and an existing ``out_dir`` is left untouched; a failed
    write (disk full, ...) is :class:`~dist_peakd.errors.ArtifactWriteError` (exit 6) naming ``out_dir``.
    """
    given, out_dir = Path(out_dir), Path(out_dir).resolve()
    made = [p for p in out_dir.parents if not p.exists()]
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    existed = out_dir.exists()
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write(tmp)
        apply_umask(tmp)  # safetensors writes its file 0600 whatever the umask
        write_export_manifest(tmp)
        publish_dir(tmp, out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # innermost first; only the ones this call made, and only when empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        if _is_write_failure(e, out_dir):
            kept = f"the previous export in {given} is untouched" if existed else "nothing was written"
            raise write_error(_unwrapped(e), given, "export", kept) from e
        raise
    return given


def _is_write_failure(exc: BaseException, path: Path) -> bool:
    """An OSError, or a serializer's own error hiding a full disk; never one of the package's typed errors."""
    if isinstance(exc, OSError):
        return True
    if not isinstance(exc, Exception) or isinstance(exc, ExportError) or exit_code_of(exc) is not None:
        return False
    return is_disk_full(exc, path)


def _unwrapped(exc: BaseException) -> BaseException:
    """A write error already classified for one file of the temporary folder: its cause, so that the
    message names the export folder instead."""
    return exc.__cause__ if isinstance(exc, ArtifactWriteError) and exc.__cause__ is not None else exc


def write_card(folder: Path, card: str | None) -> None:
    if card is not None:
        (folder / "README.md").write_text(card)


def write_json_files(folder: Path, files: Mapping[str, Any] | None) -> None:
    """Write each ``name -> object`` of ``files`` as ``folder/name`` (indented JSON)."""
    for name, obj in (files or {}).items():
        (folder / name).write_text(json.dumps(obj, indent=2, default=str) + "\n")


def mark_fp32(folder: Path) -> None:
    """Record ``dtype: float32`` in ``folder/config.json``: the exported weights are fp32 whatever the
    training precision (``save_pretrained`` writes the live module's dtype, e.g. bfloat16)."""
    path = folder / MODEL_CONFIG
    data = json.loads(path.read_text())
    if data.get("dtype") != "float32":
        data["dtype"] = "float32"
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_folder_record(folder: str | Path) -> dict[str, Any]:
    """``folder/dist_peakd.json`` (empty when the folder has none)."""
    path = Path(folder) / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def update_card(folder: str | Path, **changes: Any) -> Path:
    """Re-render ``folder/README.md`` from the card inputs its record keeps, with ``changes`` (e.g.
    ``latency=[...]``), and republish the folder (manifest rewritten; built beside, swapped in).

    The weights are hard-linked into the new folder where the filesystem allows (else copied).
    """
    from .card import render_model_card

    folder = Path(folder)
    verify_export(folder)
    record = read_folder_record(folder)
    if "card" not in record:
        raise ExportError(f"{folder}: its {RECORD_FILE} holds no model card inputs (written by an older version)")
    record["card"] = json.loads(json.dumps({**record["card"], **changes}, default=str))
    card = render_model_card(**record["card"])
    rewritten = {"README.md", RECORD_FILE, EXPORT_MANIFEST}

    def write(tmp: Path) -> None:
        for path in folder.iterdir():
            if path.is_file() and path.name not in rewritten:
                try:
                    os.link(path, tmp / path.name)
                except OSError:
                    shutil.copy2(path, tmp / path.name)
        write_card(tmp, card)
        write_json_files(tmp, {RECORD_FILE: record})

    return write_folder(folder, write)
