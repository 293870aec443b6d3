"""Preflight of ``--student_backbone`` (:mod:`.cross_student`): the student checkpoint and the label set.

Called by :func:`.preflight.check_models` for every student stage of a run whose student comes from another
checkpoint, before anything trains or is written; every refusal is one line (exit 2) naming the checkpoints.
For such a run :func:`.preflight.check_models` also stops comparing the teacher's (or the cache's) tokenizer
and width with ``--backbone``'s: the student tokenizes the text itself and maps its width.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..layout import CACHE_MANIFEST, MODEL_CONFIG
from .common import load_tokenizer_or_refuse
from .cross_student import OPTION, student_source


def check_cross_student(opts: Any, stage: str, task: Any = None) -> None:
    """Refuse a student checkpoint the run cannot use: not a model folder / hub id, a family a student cannot be
    built from, no usable tokenizer, a tokenizer whose ids exceed its embeddings, ``--max_length`` beyond its
    positions; and a teacher (cache) whose label set is not the task's (``task`` known)."""
    from transformers import AutoConfig

    from ..data import check_max_length
    from ..integrity import verify_export
    from ..models.families import supported
    from .common import check_model_source

    source = check_model_source(student_source(opts), OPTION)
    if Path(source).is_dir():  # a dist-peakd export is checked against its manifest before it is read
        verify_export(source, trust_unverified=bool(getattr(opts, "trust_unverified", False)))
    config = AutoConfig.from_pretrained(source)
    model_type = getattr(config, "model_type", None)
    if model_type not in supported("backbone"):
        raise ConfigError(f"option {OPTION}: {source} has model_type {model_type!r}; a student is built from a "
                          f"pretrained checkpoint of type {list(supported('backbone'))}")
    _check_tokenizer(source, config)
    check_max_length(opts.max_length, source)  # names the student's checkpoint and its limit
    if task is not None:
        check_label_set(opts, task, source)


def _check_tokenizer(source: str, config: Any) -> None:
    """The student's own tokenizer: present, with a vocabulary, emitting no id beyond its embedding table."""
    needs = "the student tokenizes the text itself: its folder needs its tokenizer files"
    tokenizer = load_tokenizer_or_refuse(OPTION, source, needs)
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > int(vocab):
        raise ConfigError(f"option {OPTION}: the tokenizer in {source} has {len(tokenizer)} tokens, its model's "
                          f"embeddings {vocab} (vocab_size): they do not belong together (ids past the embedding "
                          "table); give a checkpoint with its own tokenizer")


def check_label_set(opts: Any, task: Any, source: str) -> None:
    """Logit KD compares the teacher's classes with the student's (the task's): the cache's class count and the
    teacher's class names (its folder, else the one the cache records) must be the task's, by name or, generic
    ``LABEL_i`` names, by index (:func:`~dist_peakd.models.teacher_labels.match_labels`)."""
    from ..models import ModelConfigError
    from ..models.families import read_config
    from ..models.teacher_labels import match_labels, model_label_names

    layout = opts.layout()
    cache_dir = Path(layout.teacher_cache)
    try:
        manifest = json.loads((cache_dir / CACHE_MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = None
    manifest = manifest if isinstance(manifest, dict) else {}
    names = task.id2label()
    task_labels = [names[i] for i in range(task.num_labels)]
    cached = manifest.get("num_labels")
    if cached is not None and int(cached) != task.num_labels:
        raise ConfigError(f"option {OPTION}: the teacher cache {cache_dir} (teacher {manifest.get('teacher_dir')}) "
                          f"has {cached} classes; the student {source} is trained on task {task.name!r} with "
                          f"{task.num_labels} {task_labels}: logit KD needs one label set; build the cache for this "
                          "task (dist-peakd cache-teacher) or give this task's teacher")
    teacher = Path(layout.teacher)
    if not (teacher / MODEL_CONFIG).is_file() and manifest.get("teacher_dir"):
        teacher = Path(str(manifest["teacher_dir"]))
    if not (teacher / MODEL_CONFIG).is_file():
        return
    config = read_config(teacher)
    id2label = config.get("id2label") if isinstance(config.get("id2label"), dict) else None
    outputs = len(id2label) if id2label else config.get("num_labels")
    if outputs is None:
        return
    try:
        match_labels(model_label_names(id2label, int(outputs)), task_labels, str(teacher), task.name)
    except ModelConfigError as e:
        raise ConfigError(f"option {OPTION}: {e} (the student {source} is trained on the task's classes: logit KD "
                          "needs the teacher's to be the same)") from None
