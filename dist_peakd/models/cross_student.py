"""A student from another pretrained checkpoint (``--student_backbone``): the width map of its [CLS] states.

The student itself is the plain student of that checkpoint (:func:`.sps.build_student` with variant
``none``: its family's own classifier of ``d`` layers, exported as a standard folder of its family). What
this module adds is the one piece a student of another width needs: Patient-KD compares the student's
[CLS] state of effective layer ``j`` with the teacher's of layer ``j * L / E`` after an L2 normalisation,
so when the widths differ the student's states first go through one learned linear map
``W h + b`` (``W``: ``[H_teacher, H_student]``), shared by every matched layer (TinyBERT's ``W_h``).

- :class:`WidthMappedStudent` holds the student (``.student``) and the map (``.cls_map``); its forward is the
  student's, with ``cls_states`` mapped to the teacher's width. The engine trains it whole (the map is in
  the optimizer and in every checkpoint, so a resumed run restores it).
- :func:`exported_model` is what an export writes: the student alone. The map is a training device, never
  exported: ``best/``/``final/`` are plain folders of the student's family.
- Equal widths: no map, no wrapper (:func:`with_width_map` returns the student itself), as before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class WidthMappedStudent(nn.Module):
    """The student plus a learned linear map of its [CLS] states to the teacher's width (training only)."""

    def __init__(self, student: nn.Module, student_width: int, teacher_width: int) -> None:
        super().__init__()
        self.student = student
        self.cls_map = nn.Linear(int(student_width), int(teacher_width))

    @property
    def config(self) -> Any:
        return self.student.config

    @property
    def num_effective_layers(self) -> int:
        return int(self.student.num_effective_layers)

    def map_cls(self, cls_states: Any) -> tuple[torch.Tensor, ...]:
        """Each ``[B, H_student]`` state mapped to ``[B, H_teacher]`` (the map's dtype: the engine's precision)."""
        weight = self.cls_map.weight
        return tuple(self.cls_map(h.to(weight.dtype)) for h in cls_states)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.student(*args, **kwargs)
        if getattr(out, "cls_states", None) is not None:
            out["cls_states"] = self.map_cls(out.cls_states)
        return out


def with_width_map(student: nn.Module, student_width: int, teacher_width: int) -> nn.Module:
    """``student`` wrapped with a fresh map (caller's torch RNG) when the widths differ, else ``student`` itself."""
    if int(student_width) == int(teacher_width):
        return student
    return WidthMappedStudent(student, student_width, teacher_width)


def exported_model(module: nn.Module) -> nn.Module:
    """What an export of ``module`` writes: the student without its width map (any other module: itself)."""
    return module.student if isinstance(module, WidthMappedStudent) else module


def model_width(config: Any) -> int:
    """The hidden width of a model config (DistilBERT: ``dim``; an SPS family config: its family's)."""
    family = getattr(config, "family_config", None)
    if callable(family):
        config = family()
    width = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
    if width is None:
        raise ValueError(f"{type(config).__name__} has no hidden_size")
    return int(width)


__all__ = ["WidthMappedStudent", "exported_model", "model_width", "with_width_map"]
