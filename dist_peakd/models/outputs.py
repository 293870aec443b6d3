"""Output container shared by the teacher and the SPS student."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class ClassifierOutput:
    """Logits plus the [CLS] vector (position 0) after every (effective) encoder layer.

    Attributes:
        logits: ``[B, num_labels]``.
        cls_states: one ``[B, H]`` tensor per encoder layer (teacher) or per effective layer of the
            SPS schedule (student), bottom to top; the embeddings output is not included.
        loss: task loss when ``labels`` were given to the student's ``forward`` (CE, or MSE when
            ``num_labels == 1``), else ``None``.
    """

    logits: Tensor
    cls_states: tuple[Tensor, ...]
    loss: Tensor | None = None
