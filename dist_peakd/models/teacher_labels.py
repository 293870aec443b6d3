"""A fine-tuned classifier's own classes (its ``id2label``) matched onto a task's classes.

A teacher brought with ``--teacher_dir`` (a hub checkpoint, another tool's output) names its outputs in
its ``config.json``. They are matched to the task's class names:

- the same names (case-insensitive) in the same order: used as they are;
- the same names in another order: matched by name, the head's output rows reordered
  (:func:`reorder_head`) so output ``i`` is the task's class ``i`` in the cache and in every export;
- generic names only (``LABEL_0``, ``LABEL_1``, ... as transformers writes when none were given): matched
  by index when the counts agree, and said so (nothing else can be known about them);
- anything else (other names, another count): refused naming both label sets and what to do.

A regression task (one output) has nothing to match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ModelConfigError

_GENERIC = re.compile(r"^label_(\d+)$")


@dataclass(frozen=True)
class LabelMatch:
    """``order[i]``: the model output that holds the task's class ``i``; ``how``: ``same`` | ``by_name`` |
    ``by_index`` (generic names); ``note``: one line for the console (None when nothing needs saying)."""

    order: tuple[int, ...]
    how: str
    note: str | None = None

    @property
    def is_identity(self) -> bool:
        return self.order == tuple(range(len(self.order)))


def model_label_names(id2label: Mapping | None, num_labels: int) -> list[str]:
    """The model's class names by output index (``id2label`` keys may be strings in a config.json)."""
    names = {int(k): str(v) for k, v in (id2label or {}).items()}
    return [names.get(i, f"LABEL_{i}") for i in range(num_labels)]


def _listed(names: Sequence[str]) -> str:
    return "(" + ", ".join(names) + ")"


def match_labels(model_names: Sequence[str], task_names: Sequence[str], source: str, task: str) -> LabelMatch:
    """How ``model_names`` (the checkpoint's, by output) map onto ``task_names`` (the task's, by class id).

    Raises:
        ModelConfigError: another count, or names that are neither the task's nor generic; the line names
            ``source``, both label sets and what to do.
    """
    ours, theirs = [str(n) for n in model_names], [str(n) for n in task_names]
    n = len(theirs)
    fix = (f"give a teacher fine-tuned on {task}, or, if its outputs are {task}'s classes, write their names "
           f"{_listed(theirs)} in the order of its outputs into the id2label of {source}/config.json")
    if len(ours) != n:
        raise ModelConfigError(f"{source} has {len(ours)} output(s) {_listed(ours)}, {task} has {n} classes "
                               f"{_listed(theirs)}: it was trained on other classes; {fix}")
    if n == 1:
        return LabelMatch((0,), "same")
    low, want = [x.lower() for x in ours], [x.lower() for x in theirs]
    if low == want:
        return LabelMatch(tuple(range(n)), "same")
    if sorted(low) == sorted(want) and len(set(low)) == n:
        order = tuple(low.index(name) for name in want)
        moves = ", ".join(f"{theirs[i]} = its output {order[i]}" for i in range(n))
        return LabelMatch(order, "by_name", f"classes of {source} {_listed(ours)} matched to {task}'s by name: {moves}")
    generic = [_GENERIC.match(x) for x in low]
    if all(generic) and [int(m.group(1)) for m in generic] == list(range(n)):  # type: ignore[union-attr]
        return LabelMatch(tuple(range(n)), "by_index",
                          f"{source} names its classes only generically {_listed(ours)}: taken by index as {task}'s "
                          f"{_listed(theirs)} (output i = class i); if that is not their order, set id2label in its "
                          "config.json")
    raise ModelConfigError(f"{source} has classes {_listed(ours)}, {task} has {_listed(theirs)}: they cannot be "
                           f"matched by name; {fix}")


def output_layer(model: nn.Module, num_labels: int) -> nn.Linear:
    """The classifier's last linear layer (``classifier`` or ``classifier.out_proj``, per family)."""
    linears = [m for name, m in model.named_modules()
               if (name == "classifier" or name.startswith("classifier.")) and isinstance(m, nn.Linear)]
    if not linears or linears[-1].out_features != num_labels:
        raise ModelConfigError(f"{type(model).__name__}: no classifier output layer with {num_labels} outputs")
    return linears[-1]


@torch.no_grad()
def reorder_head(model: nn.Module, match: LabelMatch) -> nn.Module:
    """Reorder the output rows of the classifier so output ``i`` is the task's class ``i`` (in place)."""
    if match.is_identity:
        return model
    layer = output_layer(model, len(match.order))
    index = torch.tensor(match.order, device=layer.weight.device)
    layer.weight.copy_(layer.weight.index_select(0, index))
    if layer.bias is not None:
        layer.bias.copy_(layer.bias.index_select(0, index))
    return model
