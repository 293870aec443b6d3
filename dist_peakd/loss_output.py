"""What a loss function returns for one micro-batch: the contract between the loss terms and the engine.

A leaf module, so that :mod:`dist_peakd.distill` (the loss terms) and :mod:`dist_peakd.engine` (which
backpropagates and logs them) share the type without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossOutput:
    """What a stage's loss function returns for one micro-batch.

    ``total`` is the SUM over the micro-batch's examples of the weighted per-example loss (a scalar
    tensor with grad); ``terms`` holds each unweighted term's sum (detached) for logging; ``weights``
    the weight applied to each term (logged once per run).
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    count: int
    weights: dict[str, float] = field(default_factory=dict)
