"""``--k auto``: the student depth that halves the teacher's compute.

An SPS student with ``k <= 3`` parameter layers runs ``2k`` effective layers, so half the depth of an
``L``-layer teacher, rounded up to a whole parameter layer, is ``k = ceil(L / 4)``: 2 for the embedded
6-layer MiniLM teacher (4 effective layers), 3 for a 12-layer BERT-base (6 effective layers, the
paper's setting). A ``none`` student runs each layer once: ``k = ceil(L / 2)``.

``auto`` is resolved before a stage claims its folder, and the resolved integer is what the folder
name, ``stage_options.json`` and the summary hold: a run with ``--k auto`` and one with the same ``--k``
written out share their stage folders (and a sweep's resume sees the same options).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .. import console
from ..layout import MODEL_CONFIG
from .depth_rules import AUTO, auto_k, normalise_k

__all__ = ["AUTO", "auto_k", "normalise_k"]


def teacher_depth(opts: Any) -> tuple[int, str]:
    """Layer count of the teacher this run distils from, and which folder said so: the teacher
    folder (``--teacher_dir`` or ``teacher/best``) when it exists, else the backbone it is
    fine-tuned from."""
    from transformers import AutoConfig

    from .common import resolve_backbone

    teacher = opts.layout().teacher
    source = str(teacher) if (Path(teacher) / MODEL_CONFIG).is_file() else resolve_backbone(opts.backbone)
    return int(AutoConfig.from_pretrained(source).num_hidden_layers), source


def resolve_k(opts: Any) -> tuple[Any, dict[str, Any] | None]:
    """``opts`` with ``k`` an integer, and how ``auto`` was resolved (None when ``k`` was given). A plain
    student (``--student plain``): its ``--depth`` resolved instead, and ``k = depth`` (:mod:`.student_kind`)."""
    if getattr(opts, "student", "sps") == "plain":
        return resolve_plain(opts)
    k = normalise_k(opts.k)
    if k != AUTO:
        return (opts if k == opts.k else dataclasses.replace(opts, k=k)), None
    layers, source = teacher_depth(opts)
    k = auto_k(layers, opts.variant)
    note = {"requested": AUTO, "k": k, "teacher_layers": layers, "teacher": source,
            "rule": "ceil(L/2)" if opts.variant == "none" else "ceil(L/4)"}
    return dataclasses.replace(opts, k=k), note


def with_k_resolved(opts: Any) -> Any:
    """``opts`` with ``--k auto`` resolved when the options have a ``k`` (others as they are): what a
    command's banner shows, so it names the folder the stage writes (``distill-k2-...``, never
    ``distill-kauto-...``). The stage resolves ``k`` again itself and announces it."""
    return resolve_k(opts)[0] if hasattr(opts, "k") else opts


def describe_resolution(note: dict[str, Any] | None) -> str | None:
    """``--k auto: k=2 (ceil(L/4) of the 6-layer teacher ...)`` (None when k was given)."""
    if note is None:
        return None
    if "text" in note:  # a rule of its own (a cross student's depth)
        return str(note["text"])
    name = note.get("option", "k")
    return (f"--{name} auto: {name}={note['k']} ({note['rule']} of the {note['teacher_layers']}-layer teacher "
            f"{note['teacher']})")


def announce_k(note: dict[str, Any] | None, dist_info: Any) -> None:
    """Print how ``auto`` was resolved (rank 0; nothing when k was given)."""
    if note is not None and dist_info.is_main:
        console.info(describe_resolution(note))


def resolve_plain(opts: Any) -> tuple[Any, dict[str, Any] | None]:
    """A plain student's options with ``depth`` an integer (``auto``: ``ceil(L_teacher / 2)``), checked against the
    backbone with its layer map, and ``k = depth``, ``variant = none`` (what the SPS machinery builds and
    names); how ``auto`` was resolved (None when the depth was given)."""
    from .cross_student import depth_note, is_cross
    from .student_kind import backbone_layers, layer_indices

    if is_cross(opts):  # the student's checkpoint named (one line) before its depth is read
        from .common import check_model_source
        from .cross_student import OPTION, student_source

        check_model_source(student_source(opts), OPTION)
    depth, note = normalise_k(opts.depth, "depth"), None
    if depth == AUTO and is_cross(opts):  # issue 23 item 4: a student from another checkpoint: all its layers
        depth = backbone_layers(opts)
        note = depth_note(opts, depth)
    elif depth == AUTO:
        teacher_layers, source = teacher_depth(opts)
        depth = auto_k(teacher_layers, "none")
        note = {"requested": AUTO, "k": depth, "teacher_layers": teacher_layers, "teacher": source,
                "rule": "ceil(L/2)", "option": "depth"}
    layer_indices(opts.layer_map, depth, backbone_layers(opts))
    return dataclasses.replace(opts, depth=depth, k=depth, variant="none"), note
