"""``--k auto``: the student depth that halves the teacher's compute.

An SPS student with ``k <= 3`` parameter layers runs ``2k`` effective layers, so half the depth of an
``L``-layer teacher, rounded up to a whole parameter layer, is ``k = ceil(L / 4)``: 2 for the embedded
6-layer MiniLM teacher (4 effective layers), 3 for a 12-layer BERT-base (6 effective layers, the
paper's setting). A ``none`` student runs each layer once: ``k = ceil(L / 2)``.

``auto`` is resolved before a stage claims its folder, and the resolved integer is what the folder
name, ``config.json`` and the summary hold: a run with ``--k auto`` and one with the same ``--k``
written out share their stage folders (and a sweep's resume sees the same options).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError

AUTO = "auto"


def auto_k(teacher_layers: int, variant: str) -> int:
    """The ``--k auto`` depth for an ``teacher_layers``-layer teacher (see the module docstring)."""
    if teacher_layers < 1:
        raise ConfigError(f"option k: auto needs a teacher with >= 1 layer, got {teacher_layers}")
    per_layer = 1 if variant == "none" else 2
    return max(1, math.ceil(teacher_layers / (2 * per_layer)))


def normalise_k(value: Any) -> int | str:
    """``"auto"`` or an integer >= 1 (``"3"`` from a config file becomes 3); anything else is refused."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if text.isdigit():
            value = int(text)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"option k: student depth must be 'auto' or an integer >= 1, got {value!r}")
    return value


def teacher_depth(opts: Any) -> tuple[int, str]:
    """Layer count of the teacher this run distils from, and which folder said so: the teacher
    folder (``--teacher_dir`` or ``teacher/best``) when it exists, else the backbone it is
    fine-tuned from."""
    from transformers import AutoConfig

    from .common import resolve_backbone

    teacher = opts.layout().teacher
    source = str(teacher) if (Path(teacher) / "config.json").is_file() else resolve_backbone(opts.backbone)
    return int(AutoConfig.from_pretrained(source).num_hidden_layers), source


def resolve_k(opts: Any) -> tuple[Any, dict[str, Any] | None]:
    """``opts`` with ``k`` an integer, and how ``auto`` was resolved (None when ``k`` was given)."""
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
    return (f"--k auto: k={note['k']} ({note['rule']} of the {note['teacher_layers']}-layer teacher "
            f"{note['teacher']})")


def announce_k(note: dict[str, Any] | None, dist_info: Any) -> None:
    """Print how ``auto`` was resolved (rank 0; nothing when k was given)."""
    if note is not None and dist_info.is_main:
        print(f"[dist-peakd] {describe_resolution(note)}", flush=True)
